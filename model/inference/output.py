"""What ``model.predict`` writes: the per-frame CSV and its sidecar, the AU plots, the overlay.

The CSV's columns and its formats (OpenFace 2.2's, or plain) are ``model.inference.csv_format``'s;
every column is described in docs/predict.md.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np
import pandas as pd

from .csv_format import DEFAULT_FORMAT, au_name, to_text

#: Sidecar next to each CSV: ``<stem>.csv`` -> ``<stem>.meta.json``.
SIDECAR_SUFFIX = ".meta.json"


def sidecar_path(csv_path: Path) -> Path:
    return Path(csv_path).with_name(Path(csv_path).stem + SIDECAR_SUFFIX)


def _atomic_write(path: Path, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_table(table: pd.DataFrame, csv_path: Path, meta: dict[str, Any],
                fmt: str = DEFAULT_FORMAT) -> Path:
    """The CSV in format ``fmt``, then its sidecar (which marks the CSV complete: a rerun skips
    such inputs)."""
    text = to_text(table, fmt)
    _atomic_write(csv_path, lambda tmp: tmp.write_text(text))
    meta = {**meta, "csv_format": fmt, "rows": int(len(table)),
            "csv_bytes": Path(csv_path).stat().st_size,
            "complete": True}
    _atomic_write(sidecar_path(csv_path),
                  lambda tmp: tmp.write_text(json.dumps(meta, indent=2, default=str)))
    return Path(csv_path)


def is_complete(csv_path: Path) -> bool:
    """Whether ``csv_path`` was fully written by a finished run (its sidecar says so)."""
    side = sidecar_path(csv_path)
    if not (Path(csv_path).is_file() and side.is_file()):
        return False
    try:
        meta = json.loads(side.read_text())
    except (OSError, ValueError):
        return False
    return bool(meta.get("complete")) and meta.get("csv_bytes") == Path(csv_path).stat().st_size


def save_bar_plot(path: Path, probabilities: np.ndarray, au_ids: Sequence[int],
                  threshold: float | Sequence[float],
                  title: str) -> Path:
    """One bar per AU (a single image): the probability and the decision threshold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(0.6 * len(au_ids) + 2, 3))
    values = np.nan_to_num(np.asarray(probabilities, dtype=float), nan=0.0)
    per_au = np.broadcast_to(np.asarray(threshold, dtype=np.float64), (len(au_ids),))
    colours = ["tab:green" if v >= c else "0.6" for v, c in zip(values, per_au)]
    names = [au_name(a) for a in au_ids]
    ax.bar(names, values, color=colours)
    ax.scatter(names, per_au, marker="_", s=300, color="tab:red", zorder=3)
    ax.set_ylim(0, 1)
    ax.set_ylabel("probability")
    ax.set_title(f"{title}  (red: decision threshold {_fmt_threshold(per_au)})", fontsize=9)
    fig.tight_layout()
    return _save_figure(fig, path)


def _save_figure(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.png")
    try:
        fig.savefig(tmp, dpi=100)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return path


def _fmt_threshold(values: np.ndarray) -> str:
    return f"{values[0]:g}" if np.all(values == values[0]) else "per AU, tuned"


def save_timeline_plot(path: Path, x: np.ndarray, probabilities: np.ndarray, au_ids: Sequence[int],
                       threshold: float | Sequence[float], x_label: str, title: str,
                       intensities: np.ndarray | None = None) -> Path:
    """One strip per AU: the probability over time, the decision threshold (one, or one per AU
    when tuned), no-face gaps shaded, and, with ``intensities``, the 0-5 intensity on a right
    axis of the same strip.

    ``probabilities`` is ``[N, K]`` with NaN rows for frames without a face; ``intensities``
    ``[N, K]`` likewise, with NaN columns for AUs the intensity head does not cover.
    """
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on servers or in CI
    import matplotlib.pyplot as plt

    k = len(au_ids)
    fig, axes = plt.subplots(k, 1, figsize=(10, 0.9 * k + 1.2), sharex=True, squeeze=False)
    no_face = np.isnan(probabilities).all(axis=1) if len(probabilities) else np.zeros(0, bool)
    per_au = np.broadcast_to(np.asarray(threshold, dtype=np.float64), (k,))
    for row, (ax, au) in enumerate(zip(axes[:, 0], au_ids)):
        ax.plot(x, probabilities[:, row], lw=0.9, color="tab:blue")
        ax.axhline(per_au[row], color="tab:red", lw=0.6, ls="--")
        if no_face.any():
            ax.fill_between(x, 0, 1, where=no_face, color="0.85", step="mid", lw=0)
        ax.set_ylim(-0.02, 1.02)
        ax.set_yticks([0, 1])
        ax.set_ylabel(au_name(au), rotation=0, ha="right", va="center")
        if intensities is not None and not np.isnan(intensities[:, row]).all():
            _intensity_strip(ax, x, intensities[:, row])
    axes[-1, 0].set_xlabel(x_label)
    legend = "blue: probability" + ("; orange: intensity 0-5, right axis"
                                    if intensities is not None else "")
    axes[0, 0].set_title(f"{title}\n{legend}; dashed: decision threshold "
                         f"{_fmt_threshold(per_au)}; grey: no face", fontsize=9)
    fig.tight_layout()
    return _save_figure(fig, path)


#: Above this many images (or faces), the per-image chart is a heat map: bars would be slivers.
MAX_BAR_GROUPS = 40


def save_image_chart(path: Path, labels: Sequence[str], probabilities: np.ndarray,
                     au_ids: Sequence[int], threshold: float | Sequence[float],
                     title: str) -> Path:
    """An image folder's chart: one group of AU bars per image (per face with ``--faces all``),
    not a timeline - the images are unrelated, a line between them would mean nothing.
    ``probabilities`` is ``[N, K]``, a NaN row for an image without a face. Above
    :data:`MAX_BAR_GROUPS` images, a heat map (image x AU) of the same numbers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = np.asarray(probabilities, dtype=float).reshape(len(labels), len(au_ids))
    per_au = np.broadcast_to(np.asarray(threshold, dtype=np.float64), (len(au_ids),))
    names = [au_name(a) for a in au_ids]
    if len(labels) > MAX_BAR_GROUPS:
        fig, ax = plt.subplots(figsize=(0.5 * len(au_ids) + 3, min(0.18 * len(labels) + 2, 60)))
        shown = ax.imshow(np.ma.masked_invalid(values), aspect="auto", vmin=0, vmax=1,
                          cmap="viridis", interpolation="nearest")
        ax.set_xticks(range(len(names)), names)
        ax.set_yticks(range(len(labels)), labels, fontsize=6)
        fig.colorbar(shown, ax=ax, label="probability (blank: no face)")
        ax.set_title(f"{title}\n(decision threshold {_fmt_threshold(per_au)})", fontsize=9)
    else:
        fig, ax = plt.subplots(figsize=(min(0.1 * len(labels) * len(au_ids) + 3, 40), 3.6))
        width = 0.8 / len(au_ids)
        centres = np.arange(len(labels))
        colours = plt.get_cmap("tab20")(np.linspace(0, 1, max(len(au_ids), 2)))
        for k, name in enumerate(names):
            where = centres - 0.4 + (k + 0.5) * width
            ax.bar(where, np.nan_to_num(values[:, k]), width, color=colours[k], label=name)
            ax.scatter(where, np.full(len(labels), per_au[k]), marker="_", s=40,
                       color="tab:red", zorder=3)
        ax.set_xticks(centres, labels, rotation=30, ha="right", fontsize=7)
        ax.set_ylim(0, 1)
        ax.set_ylabel("probability")
        ax.legend(ncol=min(len(names), 8), fontsize=6, loc="upper center",
                  bbox_to_anchor=(0.5, -0.35))
        ax.set_title(f"{title}\n(one bar group per image; red: decision threshold "
                     f"{_fmt_threshold(per_au)})", fontsize=9)
    fig.tight_layout()
    return _save_figure(fig, path)


def _intensity_strip(ax: Any, x: np.ndarray, values: np.ndarray) -> None:
    right = ax.twinx()
    right.plot(x, values, lw=0.9, color="tab:orange")
    right.set_ylim(-0.1, 5.1)
    right.set_yticks([0, 5])
    right.tick_params(labelsize=7, colors="tab:orange")


_ACTIVE = (40, 220, 40)
_IDLE = (170, 170, 170)


def draw_overlay(rgb: np.ndarray, face: Any, probabilities: np.ndarray | None,
                 decisions: np.ndarray | None, au_ids: Sequence[int],
                 face_id: int | None = None) -> np.ndarray:
    """A copy of the frame with the face box, the 68 landmarks and a panel of AU probabilities
    (active AUs in green). With ``face_id`` (``--faces all``) the box is labelled with it and
    the panel sits beside this face, so several faces' panels do not pile up in one corner."""
    canvas = np.ascontiguousarray(rgb).copy()
    scale = max(0.4, canvas.shape[0] / 720)  # text and dots readable from 360p to 1080p
    thickness = max(1, round(scale * 1.5))
    if face is None:
        cv2.putText(canvas, "no face", (10, int(30 * scale)), cv2.FONT_HERSHEY_SIMPLEX,
                    0.8 * scale, (230, 60, 60), thickness, cv2.LINE_AA)
        return canvas
    x, y, w, h = (int(round(v)) for v in face.box)
    cv2.rectangle(canvas, (x, y), (x + w, y + h), (60, 160, 255), thickness)
    if face_id is not None:
        cv2.putText(canvas, f"face {face_id}", (x, max(int(16 * scale), y - 4)),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.6 * scale, (60, 160, 255), thickness, cv2.LINE_AA)
    for px, py in face.landmarks68:
        cv2.circle(canvas, (int(round(px)), int(round(py))), max(1, round(2 * scale)),
                   (255, 220, 0), -1, cv2.LINE_AA)
    if probabilities is None or decisions is None:
        return canvas
    line = int(22 * scale)
    size = (int(150 * scale), line * len(au_ids) + line // 2)   # panel width, height
    origin = (0, 0) if face_id is None else panel_origin((x, y, w, h), size, canvas.shape)
    _draw_panel(canvas, origin, size, probabilities, decisions, au_ids, scale, thickness)
    return canvas


def draw_banner(rgb: np.ndarray, text: str) -> np.ndarray:
    """``text`` in red on a dark strip along the bottom of the frame (in place; returned)."""
    scale = max(0.4, rgb.shape[0] / 720)
    height = int(28 * scale)
    strip = rgb[-height:]
    strip[:] = (strip * 0.3).astype(np.uint8)
    cv2.putText(rgb, text, (6, rgb.shape[0] - int(9 * scale)), cv2.FONT_HERSHEY_SIMPLEX,
                0.5 * scale, (255, 70, 70), max(1, round(scale * 1.5)), cv2.LINE_AA)
    return rgb


def panel_origin(box: tuple[int, int, int, int], size: tuple[int, int],
                 shape: tuple[int, ...]) -> tuple[int, int]:
    """Top-left corner of a face's panel: right of its box, else left of it, kept in frame."""
    x, y, w, _ = box
    gap = 4
    left = x + w + gap if x + w + gap + size[0] <= shape[1] else x - gap - size[0]
    left = int(min(max(left, 0), max(shape[1] - size[0], 0)))
    top = int(min(max(y, 0), max(shape[0] - size[1], 0)))
    return left, top


def _draw_panel(canvas: np.ndarray, origin: tuple[int, int], size: tuple[int, int],
                probabilities: np.ndarray, decisions: np.ndarray, au_ids: Sequence[int],
                scale: float, thickness: int) -> None:
    left, top0 = origin
    line = int(22 * scale)
    shade = canvas[top0:top0 + size[1], left:left + size[0]]
    shade[:] = (shade * 0.45).astype(np.uint8)  # darken behind the text for contrast
    for i, (au, p, d) in enumerate(zip(au_ids, probabilities, decisions)):
        colour = _ACTIVE if d else _IDLE
        top = top0 + line * (i + 1)
        cv2.putText(canvas, au_name(au), (left + 6, top), cv2.FONT_HERSHEY_SIMPLEX, 0.5 * scale,
                    colour, thickness, cv2.LINE_AA)
        x0 = left + int(60 * scale)
        cv2.rectangle(canvas, (x0, top - line // 2), (x0 + int(60 * scale * float(p)), top - 2),
                      colour, -1)
