"""The twin's AU episodes, head motion and landmark-tracking failures, drawn per subject."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..datasets.disfa import facts as disfa
from ..datasets.disfa.facts import ALL_AUS
from .face_shape import Pose


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

