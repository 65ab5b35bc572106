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
import csv
import hashlib
import io
import json
import logging
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import scipy.io

from .cli import HelpFormatter
from . import disfa
from .cli import (check_out_dir, handle_errors, int_range, positive_float,
                  remove_stale_temp_files)
from .disfa import ALL_AUS, SUBJECTS, FrameRange
from .synth_face import (Identity, Pose, background_image, face_shape, noise_bank,
                         render_face, render_frame, sample_identity)

log = logging.getLogger("pipeline.synth")  # not __name__: run with -m it is __main__

SYNTH_VERSION = 1
LEFT_DIR = "Videos_LeftCamera"
RIGHT_DIR = "Video_RightCamera"
LABEL_DIR = "ActionUnit_Labels"
LANDMARK_DIR = "Landmark_Points"
ERROR_LOG = "Error_LOG_Sheet.csv"
TRUTH_JSON = "synth_truth.json"
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


# --------------------------------------------------------------------------- AU episodes


@dataclass(frozen=True)
class Expression:
    """A facial event: AUs that rise and fall together. ``members`` holds (au, factor, prob):
    the AU joins with probability ``prob`` at ``factor`` times the event's apex intensity."""

    name: str
    region: str  # "upper" or "lower": the two independent timelines
    weight: float
    members: tuple[tuple[int, float, float], ...]


EXPRESSIONS: tuple[Expression, ...] = (
    Expression("brows_up", "upper", 3.0, ((1, 1.0, 1.0), (2, 0.95, 0.9), (5, 0.7, 0.35))),
    Expression("inner_brow", "upper", 1.0, ((1, 1.0, 1.0), (4, 0.7, 0.35))),
    Expression("outer_brow", "upper", 0.5, ((2, 1.0, 1.0),)),
    Expression("frown", "upper", 3.0, ((4, 1.0, 1.0), (6, 0.6, 0.15))),
    Expression("eyes_wide", "upper", 0.4, ((5, 1.0, 1.0), (1, 0.7, 0.5), (2, 0.7, 0.5))),
    Expression("smile", "lower", 4.0, ((12, 1.0, 1.0), (6, 0.9, 0.8), (25, 0.8, 0.45))),
    Expression("talk", "lower", 3.0, ((25, 1.0, 1.0), (26, 0.9, 0.7))),
    Expression("jaw_drop", "lower", 1.0, ((26, 1.0, 1.0), (25, 1.0, 1.0))),
    Expression("lips_part", "lower", 1.5, ((25, 1.0, 1.0),)),
    Expression("disgust", "lower", 1.5, ((9, 1.0, 1.0), (4, 0.6, 0.4), (17, 0.5, 0.3),
                                         (25, 0.6, 0.3))),
    Expression("sad_mouth", "lower", 0.6, ((15, 1.0, 1.0), (17, 0.8, 0.6))),
    Expression("chin_raise", "lower", 0.5, ((17, 1.0, 1.0),)),
    Expression("stretch", "lower", 0.4, ((20, 1.0, 1.0), (25, 0.6, 0.5))),
    Expression("cheek_raise", "lower", 0.3, ((6, 1.0, 1.0),)),
)
#: Events every twin starts with (in random order), AUs forced to apex >= 3, so even a short
#: twin shows each of the 8 evaluated AUs above the C threshold.
COVERAGE = {"upper": (("brows_up", (1, 2)), ("frown", (4,))),
            "lower": (("smile", (12, 6)), ("disgust", (9,)), ("talk", (25, 26)))}
#: Apex intensity distribution of ordinary events (A..E).
APEX_P = np.array([0.12, 0.20, 0.26, 0.24, 0.18])


def _episode_envelope(onset: int, apex: int, offset: int) -> np.ndarray:
    up = np.arange(1, onset + 1) / onset
    down = np.arange(offset - 1, -1, -1) / offset
    return np.concatenate([up, np.ones(apex), down])


def au_schedule(n: int, rng: np.random.Generator, fps: float = disfa.FPS) -> np.ndarray:
    """Integer intensities [n, 12] (ALL_AUS order) from onset-apex-offset episodes on an
    upper-face and a lower-face timeline."""
    out = np.zeros((n, len(ALL_AUS)), dtype=np.uint8)
    by_name = {e.name: e for e in EXPRESSIONS}
    k = fps / disfa.FPS  # durations below are in 20-fps frames
    for region in ("upper", "lower"):
        pool = [e for e in EXPRESSIONS if e.region == region]
        weights = np.array([e.weight for e in pool])
        coverage = list(COVERAGE[region])
        order = rng.permutation(len(coverage))
        queue = [coverage[i] for i in order]
        t = int(rng.integers(0, int(12 * k) + 1))
        while t < n:
            if queue:
                name, forced = queue.pop(0)
                expr, apex = by_name[name], int(rng.integers(3, 6))
            else:
                expr = pool[rng.choice(len(pool), p=weights / weights.sum())]
                forced, apex = (), int(rng.choice(5, p=APEX_P)) + 1
            onset = int(rng.integers(4, 11) * k)
            hold = int(rng.integers(14, 41) * k)
            offset = int(rng.integers(5, 15) * k)
            for au, factor, prob in expr.members:
                joins = au in forced or rng.random() < prob
                level = apex if au in forced else int(np.clip(round(apex * factor
                                                                    + rng.normal(0, 0.4)), 0, 5))
                if not joins or level == 0:
                    continue
                delay = int(rng.integers(0, 4))
                env = _episode_envelope(max(1, onset), max(1, hold - delay), max(1, offset))
                values = np.rint(env * level).astype(np.uint8)
                start = t + delay
                stop = min(n, start + len(values))
                if stop > start:
                    col = ALL_AUS.index(au)
                    out[start:stop, col] = np.maximum(out[start:stop, col],
                                                      values[: stop - start])
            # at least a frame: durations scaled to a very low rate round to 0 (an endless loop)
            t += max(1, onset + hold + offset + int(rng.integers(6, 41) * k))
    return out


# --------------------------------------------------------------------------- head motion


def pose_track(n: int, rng: np.random.Generator, width: int, height: int,
               fps: float = disfa.FPS, yaw_offset: float = 0.0,
               base: dict | None = None) -> list[Pose]:
    """Smooth head motion: sums of slow sinusoids for roll (|roll| <= 15 deg), yaw, scale and
    translation around a per-subject resting placement."""
    t = np.arange(n) / fps
    if base is None:
        base = {"scale": rng.uniform(0.25, 0.29), "cx": rng.uniform(-0.04, 0.04),
                "cy": rng.uniform(-0.03, 0.03), "roll": rng.uniform(-3, 3)}

    def wave(amplitudes: Sequence[float]) -> np.ndarray:
        sig = np.zeros(n)
        for amp in amplitudes:
            freq, phase = rng.uniform(0.03, 0.35), rng.uniform(0, 2 * np.pi)
            sig += amp * np.sin(2 * np.pi * freq * t + phase)
        return sig

    roll = np.clip(base["roll"] + wave([rng.uniform(3, 7), rng.uniform(1, 3), 1.0]), -15, 15)
    yaw = yaw_offset + wave([rng.uniform(2, 5), 1.5])
    scale = width * base["scale"] * (1 + wave([0.03, 0.015]))
    cx = width * (0.5 + base["cx"] + wave([0.025, 0.01]))
    cy = height * (0.47 + base["cy"] + wave([0.02, 0.008]))
    return [Pose((float(cx[i]), float(cy[i])), float(scale[i]), float(roll[i]), float(yaw[i]))
            for i in range(n)]


# --------------------------------------------------------------------------- landmark files


def corrupt_landmarks(pts: np.ndarray, rng: np.random.Generator, progress: float,
                      mode: str, direction: np.ndarray, face_px: float) -> np.ndarray:
    """Tracking-failure landmarks: a drift away from the face, or a collapse to a small blob
    off the face. ``progress`` (0..1) runs across the bad range."""
    center = pts.mean(axis=0)
    if mode == "drift":
        shift = direction * face_px * (0.35 + 0.45 * progress)
        ang = np.radians(20 * progress)
        rot = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
        return (pts - center) @ rot.T * 1.1 + center + shift
    anchor = center + direction * face_px * 0.45
    return anchor + (pts - center) * 0.3 + rng.normal(0, face_px * 0.01, pts.shape)


def savemat_bytes(pts_1based: np.ndarray) -> bytes:
    """A MATLAB v5 file holding ``pts``, with a fixed header so reruns are byte-identical
    (scipy stamps the creation time into the 116-byte header text otherwise)."""
    buf = io.BytesIO()
    scipy.io.savemat(buf, {"pts": np.asarray(pts_1based, dtype=np.float64)})
    data = bytearray(buf.getvalue())
    text = b"MATLAB 5.0 MAT-file, Platform: posix, Created by: pipeline.synth (DISFA twin)"
    data[:116] = text.ljust(116, b" ")
    return bytes(data)


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


# --------------------------------------------------------------------------- one subject


def _streams(seed: tuple[int, int]) -> dict[str, np.random.Generator]:
    """Independent RNG streams per purpose: adding frames never changes the identity, etc."""
    names = ("identity", "schedule", "pose_left", "pose_right", "render", "landmarks",
             "background")
    seqs = np.random.SeedSequence(list(seed)).spawn(len(names))
    return {name: np.random.default_rng(s) for name, s in zip(names, seqs)}


@dataclass
class SubjectTwin:
    """Everything about one subject that can be computed without rendering pixels."""

    plan: SubjectPlan
    identity: Identity
    intensity: np.ndarray  # [n, 12] uint8
    poses_left: list[Pose]
    poses_right: list[Pose]

    def landmarks_true(self, frame0: int) -> np.ndarray:
        """Correct left-camera landmarks (0-based pixels)."""
        return face_shape(self.identity, self.intensity[frame0], self.poses_left[frame0])


def build_subject(plan: SubjectPlan, cfg: SynthConfig) -> SubjectTwin:
    rngs = _streams(plan.seed)
    identity = sample_identity(rngs["identity"])
    intensity = au_schedule(plan.n_frames, rngs["schedule"], cfg.fps)
    base = {"scale": rngs["pose_left"].uniform(0.25, 0.29),
            "cx": rngs["pose_left"].uniform(-0.04, 0.04),
            "cy": rngs["pose_left"].uniform(-0.03, 0.03), "roll": rngs["pose_left"].uniform(-3, 3)}
    left = pose_track(plan.n_frames, rngs["pose_left"], cfg.width, cfg.height, cfg.fps,
                      0.0, base)
    right_base = dict(base, cx=base["cx"] - 0.06, scale=base["scale"] * 0.95)
    right = pose_track(plan.n_frames, rngs["pose_right"], cfg.width, cfg.height, cfg.fps,
                       -28.0, right_base)
    return SubjectTwin(plan, identity, intensity, left, right)


def subject_landmarks(twin: SubjectTwin) -> tuple[np.ndarray, np.ndarray]:
    """(written landmarks [n,66,2] 0-based with tracker jitter and failures, bad mask [n])."""
    plan = twin.plan
    rng = _streams(plan.seed)["landmarks"]
    n = plan.n_frames
    pts = np.stack([twin.landmarks_true(i) for i in range(n)])
    face_px = np.array([p.scale for p in twin.poses_left])
    pts += rng.normal(0, 1, pts.shape) * (face_px * 0.0015)[:, None, None]
    bad = disfa.bad_frame_mask(plan.bad_ranges, n)
    for rng_range in plan.bad_ranges:
        mode = "drift" if rng.random() < 0.5 else "collapse"
        ang = rng.uniform(0, 2 * np.pi)
        direction = np.array([np.cos(ang), np.sin(ang)])
        span = max(1, len(rng_range) - 1)
        for frame1 in range(rng_range.first, min(rng_range.last, n) + 1):
            i = frame1 - 1
            pts[i] = corrupt_landmarks(pts[i], rng, (frame1 - rng_range.first) / span, mode,
                                       direction, face_px[i])
    return pts, bad


def _render_stream(twin: SubjectTwin, cfg: SynthConfig, camera: str):
    """Yield BGR frames of one camera."""
    rngs = _streams(twin.plan.seed)
    bg_rng = rngs["background"]
    render_rng = rngs["render"]
    # Both cameras draw from the same streams in a fixed order, so left never depends on right.
    if camera == "right":
        bg_rng = np.random.default_rng(np.random.SeedSequence([*twin.plan.seed, 2]))
        render_rng = np.random.default_rng(np.random.SeedSequence([*twin.plan.seed, 3]))
    background = background_image(cfg.width, cfg.height, twin.identity, bg_rng)
    noise = noise_bank(cfg.width, cfg.height, render_rng)
    base_blur = render_rng.uniform(0.003, 0.005)
    poses = twin.poses_left if camera == "left" else twin.poses_right
    for i in range(twin.plan.n_frames):
        blur = poses[i].scale * base_blur * render_rng.uniform(0.7, 1.3)
        bright = 1.0 + render_rng.normal(0, 0.02)
        yield render_frame(background, twin.identity, twin.intensity[i], poses[i], blur,
                           noise[int(render_rng.integers(len(noise)))], bright)


def _write_video(path: Path, frames, cfg: SynthConfig) -> int:
    tmp = path.parent.parent / TMP_DIR / path.name  # same filesystem, outside the layout
    tmp.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"MJPG"), cfg.fps,
                             (cfg.width, cfg.height))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write MJPG/AVI to {tmp}")
    writer.set(cv2.VIDEOWRITER_PROP_QUALITY, cfg.jpeg_quality)
    count = 0
    try:
        for frame in frames:
            writer.write(frame)
            count += 1
    finally:
        writer.release()
    path.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, path)
    return count


def write_labels(out: Path, subject: str, intensity: np.ndarray) -> list[Path]:
    """``ActionUnit_Labels/SN0xx/SN0xx_auK.txt``: ``frame,intensity`` lines, 1-based."""
    folder = out / LABEL_DIR / subject
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for col, au in enumerate(ALL_AUS):
        text = "".join(f"{i + 1},{int(v)}\n" for i, v in enumerate(intensity[:, col]))
        path = folder / f"{subject}_au{au}.txt"
        _atomic_write(path, text.encode())
        paths.append(path)
    return paths


def write_landmarks(out: Path, plan: SubjectPlan, pts0: np.ndarray) -> Path:
    """One .mat per frame (MATLAB 1-based coordinates), built in a temp folder then moved."""
    final = out / LANDMARK_DIR / plan.subject
    tmp = out / TMP_DIR / f"{plan.subject}_landmarks"
    shutil.rmtree(tmp, ignore_errors=True)
    sub = tmp / plan.landmark_subdir
    sub.mkdir(parents=True)
    for i in range(plan.n_frames):
        if plan.missing_frame is not None and i + 1 == plan.missing_frame:
            continue
        (sub / plan.landmark_name(i)).write_bytes(savemat_bytes(pts0[i] + 1.0))
    shutil.rmtree(final, ignore_errors=True)
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, final)
    return final / plan.landmark_subdir


def synthesize_subject(out: Path, cfg: SynthConfig, plan: SubjectPlan) -> dict:
    """Write all files of one subject; returns its summary (also stored as a resume marker)."""
    cv2.setNumThreads(1)  # one subject per core; joblib provides the parallelism
    start = time.perf_counter()
    twin = build_subject(plan, cfg)
    n_video = _write_video(out / LEFT_DIR / plan.left_name, _render_stream(twin, cfg, "left"), cfg)
    n_right = 0
    if cfg.right_camera:
        n_right = _write_video(out / RIGHT_DIR / plan.right_name,
                               _render_stream(twin, cfg, "right"), cfg)
    write_labels(out, plan.subject, twin.intensity)
    pts, bad = subject_landmarks(twin)
    lm_dir = write_landmarks(out, plan, pts)
    seconds = time.perf_counter() - start
    summary = {
        "subject": plan.subject, "frames": plan.n_frames, "video_frames": n_video,
        "right_frames": n_right, "seconds": round(seconds, 3),
        "frames_per_second": round((n_video + n_right) / max(seconds, 1e-9), 2),
        "landmark_dir": str(lm_dir.relative_to(out)), "bad_frames": int(bad.sum()),
        "positives_c": {str(au): int((twin.intensity[:, c] >= disfa.DEFAULT_THRESHOLD).sum())
                        for c, au in enumerate(ALL_AUS)},
        "identity": twin.identity.to_dict(), "plan": plan.to_dict(),
        "fingerprint": cfg.fingerprint(),
    }
    marker = out / PARTS_DIR / f"{plan.subject}.json"
    marker.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(marker, json.dumps(summary, indent=1, sort_keys=True).encode())
    return summary


def _done(out: Path, cfg: SynthConfig, plan: SubjectPlan) -> dict | None:
    marker = out / PARTS_DIR / f"{plan.subject}.json"
    if not marker.exists():
        return None
    try:
        summary = json.loads(marker.read_text())
    except json.JSONDecodeError:
        return None
    if summary.get("fingerprint") != cfg.fingerprint():
        return None
    # A marker only counts while the files it describes are still there.
    needed = [out / LEFT_DIR / plan.left_name, out / LABEL_DIR / plan.subject,
              out / LANDMARK_DIR / plan.subject / plan.landmark_subdir]
    if cfg.right_camera:
        needed.append(out / RIGHT_DIR / plan.right_name)
    return summary if all(p.exists() for p in needed) else None


def write_error_log(out: Path, plans: Sequence[SubjectPlan]) -> Path:
    """``Error_LOG_Sheet.csv`` (subject,first_frame,last_frame; 1-based inclusive)."""
    buf = io.StringIO()
    buf.write("# Synthetic twin: frames whose landmarks were corrupted (1-based, inclusive)\n")
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["subject", "first_frame", "last_frame"])
    for plan in plans:
        for rng in plan.bad_ranges:
            writer.writerow([plan.subject, rng.first, rng.last])
    path = out / ERROR_LOG
    _atomic_write(path, buf.getvalue().encode())
    return path


def synthesize(out: Path, config: SynthConfig) -> dict:
    """Write the twin under ``out``; subjects already written with the same config are kept.
    Returns a summary dict (also saved, with identities, as ``out/synth_truth.json``)."""
    from joblib import Parallel, delayed

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plans = plan_subjects(config)
    start = time.perf_counter()
    results: dict[str, dict] = {}
    todo = []
    for plan in plans:
        done = _done(out, config, plan)
        if done is not None:
            log.info("%s: already written with this config, kept", plan.subject)
            results[plan.subject] = done
        else:
            todo.append(plan)
    failures: dict[str, str] = {}
    if todo:
        jobs = max(1, min(config.jobs, len(todo)))

        def run(plan: SubjectPlan) -> tuple[str, dict | None, str | None]:
            try:
                return plan.subject, synthesize_subject(out, config, plan), None
            except Exception as err:  # one failed subject must not stop the others
                return plan.subject, None, f"{type(err).__name__}: {err}"

        if jobs == 1:
            from tqdm import tqdm
            outcomes = [run(p) for p in tqdm(todo, desc="synth subjects", unit="subject",
                                             disable=True if len(todo) < 2 else None)]
        else:
            outcomes = Parallel(n_jobs=jobs)(delayed(run)(p) for p in todo)
        for subject, summary, error in outcomes:
            if summary is not None:
                results[subject] = summary
            else:
                failures[subject] = error or "unknown error"
                log.error("%s failed: %s", subject, error)
    error_log = write_error_log(out, [p for p in plans if p.subject in results])
    shutil.rmtree(out / TMP_DIR, ignore_errors=True)
    elapsed = time.perf_counter() - start
    rendered = sum(results[p.subject]["video_frames"] + results[p.subject]["right_frames"]
                   for p in todo if p.subject in results)
    summary = {
        "out": str(out), "config": asdict(config), "version": SYNTH_VERSION,
        "subjects": {s: results[s] for s in sorted(results, key=SUBJECTS.index)},
        "failed": failures, "error_log": str(error_log), "seconds": round(elapsed, 3),
        "rendered_frames": rendered,
        "frames_per_second": round(rendered / elapsed, 2) if rendered else None,
    }
    truth = dict(summary)
    truth.pop("seconds")
    truth.pop("frames_per_second")
    truth["subjects"] = {s: {k: v for k, v in r.items() if k not in ("seconds",
                                                                       "frames_per_second")}
                         for s, r in summary["subjects"].items()}
    truth["config"] = {k: v for k, v in truth["config"].items() if k not in ("jobs", "preview")}
    _atomic_write(out / TRUTH_JSON, json.dumps(truth, indent=1, sort_keys=True).encode())
    return summary


# --------------------------------------------------------------------------- preview


def _read_frame(video: Path, frame0: int) -> np.ndarray | None:
    cap = cv2.VideoCapture(str(video))
    try:
        cap.set(cv2.CAP_PROP_POS_FRAMES, frame0)
        ok, frame = cap.read()
        return frame if ok else None
    finally:
        cap.release()


def _label(img: np.ndarray, lines: Sequence[str]) -> None:
    for k, text in enumerate(lines):
        y = 14 + 14 * k
        cv2.putText(img, text, (4, y), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(img, text, (4, y), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1,
                    cv2.LINE_AA)


def au_gallery(identity: Identity, size: int = 150, levels: Sequence[int] = (2, 3, 5)
               ) -> np.ndarray:
    """One identity, frontal: a row per intensity level, neutral then each AU alone."""
    tiles_rows = []
    for level in levels:
        row = []
        for au in (None, *ALL_AUS):
            aus = {au: level} if au else {}
            canvas = np.full((size, size, 3), 200, np.uint8)
            pose = Pose((size / 2, size * 0.42), size * 0.48, 0.0, 0.0)
            render_face(canvas, identity, [aus.get(a, 0) for a in ALL_AUS], pose)
            _label(canvas, [f"AU{au}={level}" if au else "neutral"])
            row.append(canvas)
        tiles_rows.append(np.concatenate(row, axis=1))
    return np.concatenate(tiles_rows, axis=0)


def make_preview(out: Path, path: Path | None = None, per_subject: int = 6,
                 thumb: tuple[int, int] = (256, 192)) -> Path:
    """Contact sheet of the written twin: per subject, frames where different AUs peak, with
    the .mat landmarks (red when the Error_LOG marks the frame) and the active AUs."""
    out = Path(out)
    truth = json.loads((out / TRUTH_JSON).read_text())
    bad_log = disfa.read_bad_frame_csv(out / ERROR_LOG)
    rows = []
    for subject, info in list(truth["subjects"].items())[:4]:
        plan = info["plan"]
        labels = np.stack([np.loadtxt(out / LABEL_DIR / subject / f"{subject}_au{au}.txt",
                                      delimiter=",", dtype=int, ndmin=2)[:, 1]
                           for au in ALL_AUS], axis=1)
        picks = [int(np.argmin(labels.sum(axis=1)))]
        for au in (12, 1, 4, 26, 9, 6, 2, 25):
            frame0 = int(np.argmax(labels[:, ALL_AUS.index(au)]))
            if frame0 not in picks and len(picks) < per_subject:
                picks.append(frame0)
        bad = list(bad_log.get(subject, []))
        if bad:
            picks.append(bad[0].first - 1)
        tiles = []
        for frame0 in picks[: per_subject + 1]:
            img = _read_frame(out / LEFT_DIR / plan["left_name"], frame0)
            if img is None:
                continue
            sp = SubjectPlan(**{**plan, "bad_ranges": [FrameRange(*r) for r in
                                                       plan["bad_ranges"]]})
            mat = out / LANDMARK_DIR / subject / plan["landmark_subdir"] / sp.landmark_name(frame0)
            is_bad = any(frame0 + 1 in r for r in bad)
            if mat.exists():
                pts = scipy.io.loadmat(mat)["pts"] - 1.0
                color = (0, 0, 255) if is_bad else (0, 255, 0)
                for x, y in pts:
                    cv2.circle(img, (int(round(x)), int(round(y))),
                               max(1, _dot_radius(img)), color, -1, cv2.LINE_AA)
            img = cv2.resize(img, thumb, interpolation=cv2.INTER_AREA)
            active = [f"{au}:{v}" for au, v in zip(ALL_AUS, labels[frame0]) if v > 0]
            _label(img, [f"{subject} f{frame0 + 1}{' BAD LM' if is_bad else ''}",
                         " ".join(active[:6]), " ".join(active[6:])])
            tiles.append(img)
        while len(tiles) < per_subject + 1:
            tiles.append(np.zeros((thumb[1], thumb[0], 3), np.uint8))
        rows.append(np.concatenate(tiles, axis=1))
    sheet = np.concatenate(rows, axis=0)
    first = next(iter(truth["subjects"].values()))
    gallery = au_gallery(Identity(**{k: tuple(v) if isinstance(v, list) else v
                                     for k, v in first["identity"].items()}))
    width = max(sheet.shape[1], gallery.shape[1])
    pad = lambda im: np.pad(im, ((0, 0), (0, width - im.shape[1]), (0, 0)))  # noqa: E731
    sheet = np.concatenate([pad(sheet), pad(gallery)], axis=0)
    path = Path(path) if path else out / "preview.png"
    ok, data = cv2.imencode(".png", sheet)
    if not ok:
        raise RuntimeError(f"could not encode preview {path}")
    _atomic_write(path, data.tobytes())
    return path


def _dot_radius(img: np.ndarray) -> int:
    return max(1, int(round(img.shape[1] / 300)))


# --------------------------------------------------------------------------- CLI


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
    who = p.add_mutually_exclusive_group()
    who.add_argument("--subjects", nargs="+", help="subjects to write (e.g. SN001 SN031 or 1 31)")
    who.add_argument("--n-subjects", type=int, default=3,
                     help="write the first N of the release's 27 subjects")
    p.add_argument("--frames", type=_frames_arg, default=DEFAULT_FRAMES,
                   help="frames per subject; 'real' or >= 4845 gives the release's counts "
                        "(4845, SN010 4844) and its exact Error_LOG ranges")
    p.add_argument("--seed", type=int, default=0, help="base seed (each subject derives its own)")
    p.add_argument("--width", type=int_range(32, 4096), default=disfa.FRAME_SIZE[0],
                   help="frame width, 32..4096")
    p.add_argument("--height", type=int_range(24, 4096), default=disfa.FRAME_SIZE[1],
                   help="frame height, 24..4096")
    p.add_argument("--fps", type=video_fps, default=disfa.FPS,
                   help=f"video frame rate (>= {MIN_FPS:g})")
    p.add_argument("--jobs", type=int_range(1), default=1, help="subjects rendered in parallel")
    p.add_argument("--no-right-camera", action="store_true",
                   help="skip the right-camera videos (faster; the pipeline uses the left)")
    p.add_argument("--jpeg-quality", type=int_range(1, 100), default=90, help="MJPG quality 1-100")
    p.add_argument("--preview", action="store_true",
                   help="also save OUT/preview.png: frames with landmarks, AUs, an AU gallery")
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
        n_subjects=args.n_subjects, frames=args.frames, seed=args.seed, width=args.width,
        height=args.height, fps=args.fps, jobs=args.jobs, right_camera=not args.no_right_camera,
        jpeg_quality=args.jpeg_quality, preview=args.preview)


@handle_errors("pipeline.synth")
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = config_from_args(args)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    remove_stale_temp_files(check_out_dir(args.out))
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


if __name__ == "__main__":
    sys.exit(main())
