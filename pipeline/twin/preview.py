"""``OUT/preview.png``: sampled twin frames with their landmarks and AUs, and an AU gallery."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import cv2
import json

import numpy as np
import scipy.io

from ..datasets.disfa import facts as disfa
from ..datasets.disfa.facts import ALL_AUS, FrameRange
from .config import ERROR_LOG, LABEL_DIR, LANDMARK_DIR, LEFT_DIR, TRUTH_JSON, SubjectPlan
from .face_render import render_face
from .face_shape import Identity, Pose
from .writer import _atomic_write
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

