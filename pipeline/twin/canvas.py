"""Drawing primitives of the twin's renderer: anti-aliased, depth-sorted OpenCV shapes."""
from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import cv2
import numpy as np

from .face_shape import Pose, _depth, apply_pose

def _mix(a: Sequence[float], b: Sequence[float], t: float) -> tuple[float, float, float]:
    t = float(np.clip(t, 0.0, 1.0))
    return tuple(float(a[k] * (1 - t) + b[k] * t) for k in range(3))


def _scaled(color: Sequence[float], f: float) -> tuple[float, float, float]:
    return tuple(float(np.clip(c * f, 0, 255)) for c in color)


_SHIFT = 3  # sub-pixel bits for cv2 drawing
_ONE = 1 << _SHIFT


def _ip(points: np.ndarray) -> np.ndarray:
    return np.round(np.asarray(points) * _ONE).astype(np.int32).reshape(-1, 1, 2)


def _arc(center: Sequence[float], radii: Sequence[float], a0: float, a1: float,
         n: int = 12) -> np.ndarray:
    t = np.radians(np.linspace(a0, a1, n))
    return np.stack([center[0] + radii[0] * np.cos(t), center[1] + radii[1] * np.sin(t)], axis=1)


@lru_cache(maxsize=256)
def _chaikin_matrix(n_points: int, n_sub: int, closed: bool) -> np.ndarray:
    """Chaikin corner cutting as one linear map (cached): the shapes are re-smoothed every
    frame, so a matrix product beats re-running the subdivision loop."""
    m = np.eye(n_points)
    for _ in range(n_sub):
        k = m.shape[0]
        if closed:
            nxt = np.roll(m, -1, axis=0)
            m = np.stack([0.75 * m + 0.25 * nxt, 0.25 * m + 0.75 * nxt], axis=1).reshape(2 * k, -1)
        else:
            q = 0.75 * m[:-1] + 0.25 * m[1:]
            r = 0.25 * m[:-1] + 0.75 * m[1:]
            m = np.concatenate([m[:1], np.stack([q, r], axis=1).reshape(-1, n_points), m[-1:]])
    return m


def _smooth_closed(points: np.ndarray, n_sub: int = 3) -> np.ndarray:
    """Rounded closed polygon (Chaikin corner cutting) instead of a faceted one."""
    pts = np.asarray(points, dtype=float)
    return _chaikin_matrix(len(pts), n_sub, True) @ pts


def _smooth_open(points: np.ndarray, n_sub: int = 2) -> np.ndarray:
    pts = np.asarray(points, dtype=float)
    return _chaikin_matrix(len(pts), n_sub, False) @ pts


class _Canvas:
    """Collects drawing ops in canonical space, then maps all their points to pixels with a
    single pose transform and draws them in order (per-op transforms dominated the cost)."""

    def __init__(self, img: np.ndarray, pose: Pose, offset: tuple[int, int]):
        self.img = img
        self.pose = pose
        self.offset = np.array(offset, dtype=float)
        self.px = pose.scale  # pixels per canonical unit
        self.ops: list[tuple] = []

    def width(self, units: float) -> int:
        return max(1, int(round(units * self.px)))

    def _add(self, kind: str, pts, depth, *args) -> None:
        pts = np.asarray(pts, dtype=float).reshape(-1, 2)
        z = None if depth is None else np.broadcast_to(np.asarray(depth, float), (len(pts),))
        self.ops.append((kind, pts, z, args))

    def fill(self, pts, color, depth=None) -> None:
        self._add("fill", pts, depth, color)

    def line(self, pts, color, units: float, depth=None, closed: bool = False) -> None:
        self._add("line", pts, depth, color, self.width(units), closed)

    def iris(self, outline, center, depth: float, radius_units: float, color) -> None:
        """Iris + pupil at ``center``, clipped to the closed ``outline`` (the eye opening)."""
        self._add("iris", np.concatenate([outline, [center]]), depth, radius_units, color)

    def flush(self) -> None:
        if not self.ops:
            return
        sizes = [len(op[1]) for op in self.ops]
        pts_all = np.concatenate([op[1] for op in self.ops])
        z_all = _depth(pts_all)  # default depth; ops that carry their own overwrite it
        start = 0
        for (_, pts, z, _), n in zip(self.ops, sizes):
            if z is not None:
                z_all[start:start + n] = z
            start += n
        px = apply_pose(pts_all, self.pose, z_all) - self.offset
        start = 0
        for (kind, _, _, args), n in zip(self.ops, sizes):
            pts = px[start:start + n]
            start += n
            if kind == "fill":
                cv2.fillPoly(self.img, [_ip(pts)], args[0], cv2.LINE_AA, _SHIFT)
            elif kind == "line":
                cv2.polylines(self.img, [_ip(pts)], args[2], args[0], args[1], cv2.LINE_AA,
                              _SHIFT)
            else:
                _draw_iris(self.img, pts[:-1], pts[-1], args[0] * self.px, args[1])
        self.ops.clear()



def _draw_iris(img: np.ndarray, poly: np.ndarray, center: np.ndarray, radius: float,
               color: Sequence[float]) -> None:
    """Iris and pupil (pixel coords), clipped to the eye opening through a mask on its box."""
    bx0, by0 = np.floor(poly.min(axis=0)).astype(int) - 1
    bx1, by1 = np.ceil(poly.max(axis=0)).astype(int) + 2
    h, w = img.shape[:2]
    bx0, by0, bx1, by1 = max(bx0, 0), max(by0, 0), min(bx1, w), min(by1, h)
    if bx1 <= bx0 or by1 <= by0:
        return
    roi = img[by0:by1, bx0:bx1]
    mask = np.zeros(roi.shape[:2], np.uint8)
    cv2.fillPoly(mask, [_ip(poly - [bx0, by0])], 255, cv2.LINE_AA, _SHIFT)
    layer = roi.copy()
    c = tuple(_ip(center - [bx0, by0])[0, 0])
    cv2.circle(layer, c, int(round(radius * _ONE)), color, -1, cv2.LINE_AA, _SHIFT)
    cv2.circle(layer, c, int(round(radius * 0.45 * _ONE)), (15, 15, 15), -1, cv2.LINE_AA, _SHIFT)
    alpha = (mask.astype(np.float32) / 255.0)[..., None]
    roi[:] = (layer * alpha + roi * (1 - alpha)).astype(np.uint8)

