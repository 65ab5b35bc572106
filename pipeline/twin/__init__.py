"""The synthetic DISFA twin: a release in DISFA's layout, with parametric faces whose AUs are
known exactly (DISFA is licensed, so every tool is developed and tested on it).

``config``      what to write: SynthConfig and, per subject, the plan (quirks, bad ranges)
``episodes``    AU episodes, head motion, landmark-tracking failures
``face_shape``  the 66-point shape model: identity, AU displacements, pose
``canvas``, ``face_render``  the renderer that draws the same shape in pixels
``writer``      videos, label files, landmark .mat files, error log, ``synth_truth.json``
``preview``     ``OUT/preview.png``
``command``     ``python -m pipeline.synth``

The real pipeline (``pipeline.datasets``, ``pipeline.align``) never imports this package: it
reads the twin as it reads the release.
"""
from .command import build_parser, main
from .config import (DEFAULT_FRAMES, ERROR_LOG, MIN_FPS, TMP_DIR, TRUTH_JSON, SubjectPlan,
                     SynthConfig, frames_for, plan_subjects, scaled_bad_ranges)
from .episodes import au_schedule
from .preview import make_preview
from .writer import build_subject, synthesize

__all__ = ["DEFAULT_FRAMES", "ERROR_LOG", "MIN_FPS", "TMP_DIR", "TRUTH_JSON", "SubjectPlan",
           "SynthConfig", "au_schedule", "build_parser", "build_subject", "frames_for", "main",
           "make_preview", "plan_subjects", "scaled_bad_ranges", "synthesize"]
