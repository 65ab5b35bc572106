"""What ``model.predict`` writes: the per-frame CSV, the AU timeline plot and the overlay drawing.

CSV columns follow OpenFace 2 where a counterpart exists (``frame`` 1-based, ``timestamp`` in
seconds, ``success``, ``AU01_c`` for the 0/1 decision, ``x_0..x_67``/``y_0..y_67`` landmarks), so
analysis code written for OpenFace output reads it; ``AU01_p`` is our sigmoid probability
(OpenFace's ``AU01_r`` is an intensity, which this detector does not estimate).
"""
from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np


def au_name(au: int) -> str:
    """OpenFace's zero-padded AU label: 1 -> "AU01"."""
    return f"AU{int(au):02d}"


def csv_columns(au_ids: Sequence[int], with_file: bool, with_landmarks: bool) -> list[str]:
    """The CSV header for these AUs (see README_predict for each column's meaning)."""
    columns = ["frame"] + (["file"] if with_file else []) + [
        "timestamp", "face_found", "success", "detector_score",
        "face_x", "face_y", "face_w", "face_h"]
    columns += [f"{au_name(a)}_p" for a in au_ids] + [f"{au_name(a)}_c" for a in au_ids]
    if with_landmarks:
        columns += [f"x_{i}" for i in range(68)] + [f"y_{i}" for i in range(68)]
    return columns


def _fmt(value: float, digits: int) -> str:
    return "" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


class PredictionCsv:
    """Rows streamed to a temp file that replaces ``path`` only on :meth:`commit`.

    A crash or a failed input therefore never leaves a truncated CSV that looks complete.
    """

    def __init__(self, path: Path, au_ids: Sequence[int], with_file: bool = False,
                 with_landmarks: bool = False) -> None:
        self.path = Path(path)
        self.au_ids = list(au_ids)
        self.with_file = with_file
        self.with_landmarks = with_landmarks
        self.columns = csv_columns(self.au_ids, with_file, with_landmarks)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        self._handle = open(self._tmp, "w", newline="", encoding="utf-8")
        self._writer = csv.writer(self._handle)
        self._writer.writerow(self.columns)
        self.rows = 0

    def write(self, index: int, timestamp: float, name: str, face: Any,
              probabilities: np.ndarray | None, decisions: np.ndarray | None) -> None:
        """One frame. ``face`` is a FaceResult or None; AU columns stay empty without a face."""
        row: list[str | int] = [index] + ([name] if self.with_file else []) + [_fmt(timestamp, 4)]
        k = len(self.au_ids)
        if face is None:
            row += [0, 0, "", "", "", "", ""] + [""] * (2 * k)
            if self.with_landmarks:
                row += [""] * 136
        else:
            x, y, w, h = face.box
            row += [1, 1, _fmt(face.score, 3), _fmt(x, 1), _fmt(y, 1), _fmt(w, 1), _fmt(h, 1)]
            if probabilities is None or decisions is None:
                raise ValueError(f"frame {index}: a face without predictions")
            row += [_fmt(float(p), 4) for p in probabilities] + [int(d) for d in decisions]
            if self.with_landmarks:
                pts = face.landmarks68
                row += [_fmt(v, 1) for v in pts[:, 0]] + [_fmt(v, 1) for v in pts[:, 1]]
        self._writer.writerow(row)
        self.rows += 1

    def commit(self) -> Path:
        self._handle.close()
        os.replace(self._tmp, self.path)
        return self.path

    def discard(self) -> None:
        self._handle.close()
        self._tmp.unlink(missing_ok=True)


def save_timeline_plot(path: Path, x: np.ndarray, probabilities: np.ndarray, au_ids: Sequence[int],
                       threshold: float, x_label: str, title: str) -> Path:
    """One strip per AU: the probability over time, the decision threshold, no-face gaps shaded.

    ``probabilities`` is ``[N, K]`` with NaN rows for frames without a face.
    """
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on servers or in CI
    import matplotlib.pyplot as plt

    k = len(au_ids)
    fig, axes = plt.subplots(k, 1, figsize=(10, 0.9 * k + 1.2), sharex=True, squeeze=False)
    no_face = np.isnan(probabilities).all(axis=1) if len(probabilities) else np.zeros(0, bool)
    for row, (ax, au) in enumerate(zip(axes[:, 0], au_ids)):
        ax.plot(x, probabilities[:, row], lw=0.9, color="tab:blue")
        ax.axhline(threshold, color="tab:red", lw=0.6, ls="--")
        if no_face.any():
            ax.fill_between(x, 0, 1, where=no_face, color="0.85", step="mid", lw=0)
        ax.set_ylim(-0.02, 1.02)
        ax.set_yticks([0, 1])
        ax.set_ylabel(au_name(au), rotation=0, ha="right", va="center")
    axes[-1, 0].set_xlabel(x_label)
    axes[0, 0].set_title(f"{title}  (dashed: decision threshold {threshold:g}; grey: no face)",
                         fontsize=9)
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.png")
    try:
        fig.savefig(tmp, dpi=100)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return path


_ACTIVE = (40, 220, 40)
_IDLE = (170, 170, 170)


def draw_overlay(rgb: np.ndarray, face: Any, probabilities: np.ndarray | None,
                 decisions: np.ndarray | None, au_ids: Sequence[int]) -> np.ndarray:
    """A copy of the frame with the face box, the 68 landmarks and a panel of AU probabilities
    (active AUs in green)."""
    canvas = np.ascontiguousarray(rgb).copy()
    scale = max(0.4, canvas.shape[0] / 720)  # text and dots readable from 360p to 1080p
    thickness = max(1, round(scale * 1.5))
    if face is None:
        cv2.putText(canvas, "no face", (10, int(30 * scale)), cv2.FONT_HERSHEY_SIMPLEX,
                    0.8 * scale, (230, 60, 60), thickness, cv2.LINE_AA)
        return canvas
    x, y, w, h = (int(round(v)) for v in face.box)
    cv2.rectangle(canvas, (x, y), (x + w, y + h), (60, 160, 255), thickness)
    for px, py in face.landmarks68:
        cv2.circle(canvas, (int(round(px)), int(round(py))), max(1, round(2 * scale)),
                   (255, 220, 0), -1, cv2.LINE_AA)
    if probabilities is None or decisions is None:
        return canvas
    line = int(22 * scale)
    bar = int(60 * scale)
    panel_h = line * len(au_ids) + line // 2
    shade = canvas[:panel_h, : int(150 * scale)]
    shade[:] = (shade * 0.45).astype(np.uint8)  # darken behind the text for contrast
    for i, (au, p, d) in enumerate(zip(au_ids, probabilities, decisions)):
        colour = _ACTIVE if d else _IDLE
        top = line * (i + 1)
        cv2.putText(canvas, au_name(au), (6, top), cv2.FONT_HERSHEY_SIMPLEX, 0.5 * scale,
                    colour, thickness, cv2.LINE_AA)
        x0 = int(60 * scale)
        cv2.rectangle(canvas, (x0, top - line // 2), (x0 + int(bar * float(p)), top - 2), colour, -1)
    return canvas
