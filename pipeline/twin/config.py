"""The twin's plan: its configuration and, per subject, the layout quirks and bad-frame ranges.

Frame counts: ``--frames N`` gives every subject N frames, except that asking for the real
length or more (``--frames 4845`` or ``--frames real``) gives the release's own counts
(4845; SN010 4844) and then the corrupted-landmark ranges are exactly the release's.
"""
from __future__ import annotations

import hashlib
import math
import json
from dataclasses import asdict, dataclass, field

from ..datasets.disfa import facts as disfa
from ..datasets.disfa.facts import SUBJECTS, FrameRange
from ..origin import TWIN_MARKER

SYNTH_VERSION = 1
LEFT_DIR = "Videos_LeftCamera"
RIGHT_DIR = "Video_RightCamera"
LABEL_DIR = "ActionUnit_Labels"
LANDMARK_DIR = "Landmark_Points"
ERROR_LOG = "Error_LOG_Sheet.csv"
TRUTH_JSON = TWIN_MARKER  # its presence tells pipeline.align that a root is the twin
TMP_DIR = ".synth_tmp"
PARTS_DIR = ".synth_parts"
#: The lowest --fps: OpenCV's own MJPG/AVI writer asserts fps >= 1 (the FFMPEG backend takes
#: less, but not every OpenCV build has it); at 0.1 the AU schedule used to loop for ever.
MIN_FPS = 1.0
#: The frame whose landmark file the release lacks (SN031, l0 scheme, 1-based).
MISSING_FRAME_REAL = 3631
DEFAULT_FRAMES = 300


# --------------------------------------------------------------------------- configuration


@dataclass
class SynthConfig:
    """Everything that decides the twin's content (recorded in ``synth_truth.json``)."""

    subjects: tuple[str, ...] | None = None  # explicit subjects; None -> first n_subjects
    n_subjects: int = 3
    frames: int = DEFAULT_FRAMES  # per subject; >= 4845 means the release's real counts
    seed: int = 0
    width: int = disfa.FRAME_SIZE[0]
    height: int = disfa.FRAME_SIZE[1]
    fps: float = disfa.FPS
    jobs: int = 1
    right_camera: bool = True
    jpeg_quality: int = 90
    preview: bool = False

    def __post_init__(self) -> None:
        if self.subjects is not None:
            self.subjects = tuple(normalize_subject(s) for s in self.subjects)
        if self.frames < 1:
            raise ValueError(f"frames must be >= 1, got {self.frames}")
        if self.width < 32 or self.height < 24:
            raise ValueError(f"frame size {self.width}x{self.height} is too small (min 32x24)")
        if not (self.fps >= MIN_FPS and math.isfinite(self.fps)):  # see MIN_FPS
            raise ValueError(f"fps must be a finite number >= {MIN_FPS:g}, got {self.fps}")
        if self.width > 4096 or self.height > 4096:
            raise ValueError(f"frame size {self.width}x{self.height} is too large (max 4096)")
        if self.jobs < 1 or not 1 <= self.jpeg_quality <= 100:
            raise ValueError("jobs must be >= 1 and jpeg_quality 1..100")
        if not 1 <= self.n_subjects <= len(SUBJECTS):
            raise ValueError(f"n_subjects must be 1..{len(SUBJECTS)}, got {self.n_subjects}")

    @classmethod
    def tiny(cls, **overrides) -> "SynthConfig":
        """A fast twin for tests: 160x120 frames, 2 subjects, 40 frames."""
        base = dict(n_subjects=2, frames=40, width=160, height=120)
        base.update(overrides)
        return cls(**base)

    def fingerprint(self) -> str:
        """Hash of the content-deciding fields (not jobs/preview) to make reruns resume."""
        content = asdict(self)
        for key in ("jobs", "preview"):
            content.pop(key)
        content["version"] = SYNTH_VERSION
        return hashlib.sha1(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]


def normalize_subject(name: str) -> str:
    text = str(name).strip().upper()
    if text.isdigit():
        text = f"SN{int(text):03d}"
    if text not in SUBJECTS:
        raise ValueError(f"unknown subject {name!r}; DISFA has {', '.join(SUBJECTS)}")
    return text


def chosen_subjects(cfg: SynthConfig) -> list[str]:
    """The subjects to write, in release order."""
    if cfg.subjects:
        return sorted(set(cfg.subjects), key=SUBJECTS.index)
    return list(SUBJECTS[: cfg.n_subjects])


def uses_real_counts(frames: int) -> bool:
    """Asking for the release's length (or more) means 'the release's own counts'."""
    return frames >= disfa.FRAMES_PER_SUBJECT


def frames_for(subject: str, frames: int) -> int:
    """Frames the twin writes for ``subject``: ``frames``, or the real count in real mode."""
    return disfa.n_frames(subject) if uses_real_counts(frames) else int(frames)


def scaled_bad_ranges(subject: str, n: int, frames: int) -> list[FrameRange]:
    """The release's Error_LOG ranges for ``subject``: exact in real-count mode, otherwise
    rescaled to ``n`` frames (at least one frame each) so short twins keep tracking failures."""
    real = disfa.bad_frame_ranges().get(subject, [])
    if uses_real_counts(frames):
        return list(real)
    total = disfa.n_frames(subject)
    out: list[FrameRange] = []
    for rng in real:
        first = min(n, int(round((rng.first - 1) * n / total)) + 1)
        last = min(n, max(first, int(round(rng.last * n / total))))
        if out and first <= out[-1].last + 1:  # scaling can make neighbours touch
            out[-1] = FrameRange(out[-1].first, max(out[-1].last, last))
        else:
            out.append(FrameRange(first, last))
    return out


@dataclass
class SubjectPlan:
    """Names, quirks and seeds of one subject's files (decided up front, deterministically)."""

    subject: str
    n_frames: int
    seed: tuple[int, int]
    left_name: str
    right_name: str
    landmark_subdir: str
    landmark_scheme: str  # "sn" (SN001_0000_lm.mat, 0-based) or "l0" (l0NNNN_lm.mat, 1-based)
    missing_frame: int | None  # 1-based frame without a landmark file
    bad_ranges: list[FrameRange] = field(default_factory=list)

    def landmark_name(self, frame0: int) -> str:
        if self.landmark_scheme == "l0":
            return f"l0{frame0 + 1:04d}_lm.mat"
        return f"{self.subject}_{frame0:04d}_lm.mat"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["bad_ranges"] = [[r.first, r.last] for r in self.bad_ranges]
        return d


def plan_subjects(cfg: SynthConfig) -> list[SubjectPlan]:
    """Per-subject naming quirks: SN031 (else the last subject) uses the l0 scheme in a
    ``frame_lm`` folder and lacks one landmark file; the second subject (else the only one)
    has a lower-case ``leftVideo..._Comp.avi``."""
    subjects = chosen_subjects(cfg)
    l0_subject = "SN031" if "SN031" in subjects else subjects[-1]
    quirk_subject = subjects[1] if len(subjects) > 1 else subjects[0]
    plans = []
    for subject in subjects:
        n = frames_for(subject, cfg.frames)
        l0 = subject == l0_subject
        if l0:
            missing = MISSING_FRAME_REAL if n >= MISSING_FRAME_REAL else max(1, (n + 1) // 2)
        else:
            missing = None
        left = (f"leftVideo{subject}_Comp.avi" if subject == quirk_subject
                else f"LeftVideo{subject}_comp.avi")
        plans.append(SubjectPlan(
            subject=subject, n_frames=n, seed=(int(cfg.seed), int(subject[2:])),
            left_name=left, right_name=f"RightVideo{subject}_Comp.avi",
            landmark_subdir="frame_lm" if l0 else "tmp_frame_lm",
            landmark_scheme="l0" if l0 else "sn", missing_frame=missing,
            bad_ranges=scaled_bad_ranges(subject, n, cfg.frames),
        ))
    return plans

