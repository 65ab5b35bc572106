"""Synthesize a DISFA twin: the release's layout, naming quirks and file formats, with
parametric faces whose AUs are known exactly.

    python -m pipeline.synth --out data/disfa_twin --n-subjects 3 --frames 300 --preview

DISFA is licensed and cannot ship with the project, so every tool is developed and tested on
this twin. It reproduces what loaders trip over in the real release (see DISFA_FACTS.md):
``Video_RightCamera`` (singular), ``_comp``/``_Comp`` and ``LeftVideo``/``leftVideo``, two
landmark naming schemes (``SN001_0000_lm.mat`` 0-based and ``l0NNNN_lm.mat`` 1-based), a
missing landmark file, varying landmark sub-folder names, 1-based ``frame,intensity`` label
lines, MATLAB 1-based landmark coordinates and tracking failures listed in
``Error_LOG_Sheet.csv``.

Frame counts: ``--frames N`` gives every subject N frames, except that asking for the real
length or more (``--frames 4845`` or ``--frames real``) gives the release's own counts
(4845; SN010 4844) and then the corrupted-landmark ranges are exactly the release's.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Sequence

from ..cli import (HelpFormatter, check_out_dir, handle_errors, int_range, positive_float,
                   remove_stale_temp_files)
from ..datasets.disfa import facts as disfa
from .config import DEFAULT_FRAMES, MIN_FPS, SynthConfig
from .disfa_plus_layout import summary_lines as disfa_plus_summary, synthesize_disfa_plus
from .preview import make_preview
from .writer import synthesize

# --------------------------------------------------------------------------- CLI

LAYOUTS = ("disfa", "disfa+", "bp4d")


def _frames_arg(text: str) -> int:
    if text.strip().lower() == "real":
        return disfa.FRAMES_PER_SUBJECT
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("frames must be >= 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m pipeline.synth", description=__doc__.split("\n\n")[0],
        formatter_class=HelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="folder to write the twin into")
    p.add_argument("--layout", choices=LAYOUTS, default="disfa",
                   help="whose release layout to write: disfa (videos), disfa+ (image "
                        "folders per trial, 0-based 000.jpg, AU<N>.txt files) or bp4d (both "
                        "release variants; docs/twin.md)")
    who = p.add_mutually_exclusive_group()
    who.add_argument("--subjects", nargs="+", help="subjects to write (e.g. SN001 SN031 or 1 31)")
    who.add_argument("--n-subjects", type=int, default=3,
                     help="write the first N of the release's 27 subjects")
    p.add_argument("--frames", type=_frames_arg, default=DEFAULT_FRAMES,
                   help="frames per subject; 'real' or >= 4845 gives the release's counts "
                        "(4845, SN010 4844) and its exact Error_LOG ranges")
    p.add_argument("--seed", type=int, default=0, help="base seed (each subject derives its own)")
    p.add_argument("--width", type=int_range(32, 4096), default=None,
                   help=f"frame width, 32..4096 (default {disfa.FRAME_SIZE[0]}; bp4d 260)")
    p.add_argument("--height", type=int_range(24, 4096), default=None,
                   help=f"frame height, 24..4096 (default {disfa.FRAME_SIZE[1]}; bp4d 348)")
    p.add_argument("--fps", type=video_fps, default=disfa.FPS,
                   help=f"video frame rate (>= {MIN_FPS:g})")
    p.add_argument("--jobs", type=int_range(1), default=1, help="subjects rendered in parallel")
    p.add_argument("--no-right-camera", action="store_true",
                   help="skip the right-camera videos (faster; the pipeline uses the left)")
    p.add_argument("--jpeg-quality", type=int_range(1, 100), default=90, help="MJPG quality 1-100")
    p.add_argument("--preview", action="store_true",
                   help="also save OUT/preview.png: frames with landmarks, AUs, an AU gallery")
    p.add_argument("--bp4d-variant", choices=("fera", "full", "both"), default="both",
                   help="bp4d: the FERA 2015 subset's layout, the full release's, or both "
                        "(subjects alternate)")
    p.add_argument("--tasks", type=int_range(1, 8), default=2,
                   help="bp4d: tasks (sequences) per subject; --frames is split over them")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def video_fps(text: str) -> float:
    """An argparse ``type`` for --fps: a finite rate the video writer accepts (>= MIN_FPS)."""
    value = positive_float(text)
    if value < MIN_FPS:
        raise argparse.ArgumentTypeError(f"must be >= {MIN_FPS:g} (the lowest rate OpenCV's "
                                         f"MJPG/AVI writer accepts), got {text}")
    return value


def config_from_args(args: argparse.Namespace) -> SynthConfig:
    return SynthConfig(
        subjects=tuple(args.subjects) if args.subjects else None,
        n_subjects=args.n_subjects, frames=args.frames, seed=args.seed,
        width=args.width or disfa.FRAME_SIZE[0], height=args.height or disfa.FRAME_SIZE[1],
        fps=args.fps, jobs=args.jobs, right_camera=not args.no_right_camera,
        jpeg_quality=args.jpeg_quality, preview=args.preview)


def _bp4d(args: argparse.Namespace) -> int:
    from .bp4d_layout import run_from_args  # only this layout needs it

    try:
        return run_from_args(args)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


@handle_errors("pipeline.synth")
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    if args.layout == "bp4d":
        return _bp4d(args)
    try:
        cfg = config_from_args(args)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    remove_stale_temp_files(check_out_dir(args.out))
    if args.layout == "disfa+":
        return _main_disfa_plus(args, cfg)
    summary = synthesize(args.out, cfg)
    print(f"{'subject':8} {'frames':>6} {'bad':>5} {'fps':>7}  left video")
    for subject, info in summary["subjects"].items():
        print(f"{subject:8} {info['frames']:6d} {info['bad_frames']:5d} "
              f"{info['frames_per_second']:7.1f}  {info['plan']['left_name']}")
    print(f"wrote {summary['out']} in {summary['seconds']:.1f} s "
          f"({summary['frames_per_second'] or 0} rendered frames/s overall)")
    if args.preview:
        print(f"preview: {make_preview(args.out)}")
    if summary["failed"]:
        for subject, error in summary["failed"].items():
            print(f"FAILED {subject}: {error}", file=sys.stderr)
        return 1
    return 0


def _main_disfa_plus(args: argparse.Namespace, cfg: SynthConfig) -> int:
    if args.preview:
        print("error: --preview draws the DISFA layout only (not --layout disfa+)",
              file=sys.stderr)
        return 2
    try:
        summary = synthesize_disfa_plus(args.out, cfg)
    except ValueError as err:  # a subject DISFA+ does not have
        print(f"error: {err}", file=sys.stderr)
        return 2
    print("\n".join(disfa_plus_summary(summary)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
