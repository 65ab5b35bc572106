"""The twin's face renderer: head, brows, eyes, nose, mouth and wrinkles drawn from the shape
model, so every AU shows in the pixels exactly as in the landmarks; backgrounds and noise."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

from .canvas import _SHIFT, _Canvas, _arc, _ip, _mix, _scaled, _smooth_closed, _smooth_open
from .face_shape import (TEXTURE_GAIN, Identity, Pose, apply_pose, au_intensities,
                         canonical_shape, gain, landmark_depth)
def head_outline(shape: np.ndarray, identity: Identity) -> np.ndarray:
    """Closed face contour: the jaw plus a forehead arc up to the hairline."""
    left, right = shape[0], shape[16]
    cx = (left[0] + right[0]) / 2
    cy = (left[1] + right[1]) / 2
    rx = (right[0] - left[0]) / 2
    forehead = _arc((cx, cy), (rx, identity.forehead), 0, -180, 15)[1:-1]
    return np.concatenate([shape[:17], forehead])


@dataclass
class _Outline:
    """The head's silhouette parts: canonical units, except the body already in pixels."""

    head: np.ndarray
    hair_back: np.ndarray
    neck: np.ndarray
    shoulders_px: np.ndarray


def _outline(canon: np.ndarray, identity: Identity, pose: Pose) -> _Outline:
    head = head_outline(canon, identity)
    hair_c = (0.0, float(canon[[0, 16], 1].mean()) - 0.05)
    hair_r = (0.56 * identity.width + 0.03, identity.forehead + 0.14)
    hair_back = _arc(hair_c, hair_r, 0, 360, 40)
    if identity.long_hair:
        hair_back = np.concatenate([_arc(hair_c, hair_r, -180, 0, 24),
                                    [[hair_r[0] + 0.02, 0.75], [-hair_r[0] - 0.02, 0.75]]])
    neck = np.array([[-0.22, 0.45], [0.22, 0.45], [0.25, 1.05], [-0.25, 1.05]])
    shoulders = _arc((0.0, 1.55), (1.05, 0.55), 180, 360, 24)
    # The torso barely follows the head's roll and turn.
    body_pose = Pose(pose.center, pose.scale, 0.2 * pose.roll, 0.3 * pose.yaw)
    return _Outline(head, hair_back, neck, apply_pose(shoulders, body_pose))


def _crop_box(img: np.ndarray, outline: _Outline, pose: Pose
              ) -> tuple[int, int, int, int] | None:
    """Pixel box (x0, y0, x1, y1) around everything drawn, inside ``img``; None if empty."""
    everything = np.concatenate([
        apply_pose(np.concatenate([outline.hair_back, outline.neck, outline.head]), pose),
        outline.shoulders_px])
    h, w = img.shape[:2]
    pad = 4 + pose.scale * 0.05
    x0 = int(max(0, np.floor(everything[:, 0].min() - pad)))
    y0 = int(max(0, np.floor(everything[:, 1].min() - pad)))
    x1 = int(min(w, np.ceil(everything[:, 0].max() + pad)))
    y1 = int(min(h, np.ceil(everything[:, 1].max() + pad)))
    return None if x1 <= x0 or y1 <= y0 else (x0, y0, x1, y1)


@dataclass
class _Face:
    """What every drawing step of :func:`render_face` shares."""

    cv: _Canvas
    identity: Identity
    canon: np.ndarray  # canonical landmarks [66, 2]
    zl: np.ndarray  # their depth
    a: dict[int, float]  # AU -> intensity
    t: dict[int, float]  # AU -> texture (wrinkle) strength

    @property
    def skin(self) -> tuple[float, float, float]:
        return self.identity.skin

    @property
    def head_cy(self) -> float:
        return float(self.canon[[0, 16], 1].mean())

    def landmarks(self, idx) -> tuple[np.ndarray, np.ndarray]:
        """A landmark subset with its depth."""
        idx = list(idx)
        return self.canon[idx], self.zl[idx]

    def crease(self, pts, strength: float, units: float = 0.011, smooth: bool = True) -> None:
        """A skin fold drawn darker the stronger it is; too faint ones are left out."""
        if strength <= 0.01:
            return
        pts = _smooth_open(np.asarray(pts, float)) if smooth else pts
        self.cv.line(pts, _mix(self.skin, _scaled(self.skin, 0.32), strength), units)


def render_face(img: np.ndarray, identity: Identity, aus12: Sequence[float] | dict[int, float],
                pose: Pose, shape: np.ndarray | None = None) -> tuple[int, int, int, int]:
    """Draw the face in place on ``img`` (BGR uint8). Returns the touched box (x0, y0, x1, y1).

    ``aus12``: DISFA's 12 intensities in ``ALL_AUS`` order, or ``{au: intensity}`` naming any
    of ``face_shape.RENDER_AUS`` (DISFA's 12 and BP4D's 7, 10, 14, 23, 24), e.g.
    ``{7: 3.0, 12: 2.0}``; AUs left out are 0. ``shape`` is the canonical shape (computed from
    identity and AUs when omitted).
    Drawing happens on the face's bounding crop only, which keeps full-size frames fast.
    The steps below queue their shapes back to front; ``flush`` draws them in that order.
    """
    a = au_intensities(aus12)
    canon = canonical_shape(identity, a) if shape is None else shape
    outline = _outline(canon, identity, pose)
    box = _crop_box(img, outline, pose)
    if box is None:
        return (0, 0, 0, 0)
    x0, y0, x1, y1 = box
    crop = img[y0:y1, x0:x1]
    face = _Face(cv=_Canvas(crop, pose, (x0, y0)), identity=identity, canon=canon,
                 zl=landmark_depth(canon), a=a,
                 t={au: gain(v, TEXTURE_GAIN) for au, v in a.items()})
    cv2.fillPoly(crop, [_ip(outline.shoulders_px - [x0, y0])], identity.clothes, cv2.LINE_AA,
                 _SHIFT)
    _draw_head(face, outline)
    _draw_forehead(face)
    _draw_brows(face)
    _draw_eyes(face)
    _draw_eye_creases(face)
    _draw_nose(face)
    _draw_mouth_creases(face)
    _draw_mouth(face.cv, canon, face.zl, identity, a)  # dark interior, teeth, lips on top
    _draw_bp4d_textures(face)  # queues nothing at intensity 0: DISFA frames stay as they were
    _draw_chin_and_jaw(face)
    face.cv.flush()
    return box


def _draw_head(face: _Face, outline: _Outline) -> None:
    """Hair behind the head, neck, ears, the face, the hairline fringe and the cheeks."""
    cv, identity, skin, a = face.cv, face.identity, face.skin, face.a
    cv.fill(outline.hair_back, identity.hair)
    cv.fill(outline.neck, _scaled(skin, 0.8))
    for sx in (-1, 1):
        ear = _arc((sx * (0.5 * identity.width + 0.015), 0.03), (0.05, 0.11), 0, 360, 16)
        cv.fill(ear, _scaled(skin, 0.88))
    cv.fill(_smooth_closed(outline.head, 2), skin)
    # Hairline fringe: a band of hair between the head top and the hairline.
    top = _arc((0.0, face.head_cy), (0.5 * identity.width + 0.005, identity.forehead + 0.005),
               -180, 0, 20)
    hairline = _arc((0.0, face.head_cy), (0.47 * identity.width, identity.forehead - 0.13),
                    0, -180, 20)
    cv.fill(np.concatenate([top, hairline]), identity.hair)
    # Soft cheeks (raised by AU6 and AU12).
    lift = 0.05 * gain(a[6]) + 0.025 * gain(a[12])
    for sx in (-1, 1):
        cheek = _arc((sx * 0.27, 0.2 - lift), (0.1, 0.07), 0, 360, 18)
        cv.fill(cheek, _mix(skin, (skin[0] * 0.9, skin[1] * 0.9, min(255, skin[2] * 1.05)),
                            0.5 + 0.5 * gain(a[6])))


def _draw_forehead(face: _Face) -> None:
    """AU1/AU2 forehead wrinkles (AU1 central, AU2 lateral) and the AU4 glabella furrows."""
    t = face.t
    brow_top = float(face.canon[17:27, 1].min())
    # The lowest point of the fringe, plus a margin.
    hairline_y = face.head_cy - face.identity.forehead + 0.17
    for k in range(3):
        # Lines stack upwards from the brows and stop at the hairline (raised brows climb).
        y = max(brow_top - 0.07 - 0.045 * k, hairline_y + 0.03 * (2 - k))
        face.crease([[-0.17, y + 0.01], [0.0, y - 0.006], [0.17, y + 0.01]],
                    t[1] * (1 - 0.2 * k), 0.014)
        for sx in (-1, 1):
            face.crease([[sx * 0.19, y + 0.012], [sx * 0.29, y + 0.0], [sx * 0.39, y + 0.018]],
                        t[2] * (1 - 0.2 * k), 0.014)
    for sx in (-1, 1):  # AU4: vertical furrows between the brows
        x = sx * 0.035
        face.crease([[x, -0.26], [x * 1.3, -0.2], [x, -0.15]], t[4], 0.015)


def _draw_brows(face: _Face) -> None:
    """Thick brows tapering towards the temples."""
    for brow in (list(range(17, 22)), list(range(22, 27))):
        pts, _ = face.landmarks(brow)
        bt = face.identity.brow_thickness
        thick = np.linspace(0.55, 1.0, 5) if brow[0] == 17 else np.linspace(1.0, 0.55, 5)
        upper = pts - np.stack([np.zeros(5), bt * thick * 0.5], axis=1)
        lower = pts + np.stack([np.zeros(5), bt * thick * 0.5], axis=1)
        face.cv.fill(np.concatenate([_smooth_open(upper), _smooth_open(lower)[::-1]]),
                     face.identity.brow)


def _draw_eyes(face: _Face) -> None:
    """Socket shadow, sclera, iris clipped to the eye opening, lash lines, lid crease."""
    cv, skin = face.cv, face.skin
    for eye in (list(range(36, 42)), list(range(42, 48))):
        pts, z = face.landmarks(eye)
        outline = _smooth_closed(pts, 2)
        zz = np.full(len(outline), z.mean())
        socket = pts.mean(axis=0) + (outline - pts.mean(axis=0)) * [1.25, 1.9]
        cv.fill(socket, _scaled(skin, 0.86), np.full(len(socket), z.mean()))
        cv.fill(outline, (235, 238, 240), zz)
        eye_w = float(np.linalg.norm(pts[3] - pts[0]))
        cv.iris(outline, pts.mean(axis=0) + [0, -0.004], float(z.mean()), 0.24 * eye_w,
                face.identity.iris)
        cv.line(_smooth_open(pts[[0, 1, 2, 3]]), (25, 25, 30), 0.011,
                np.full(len(_smooth_open(pts[[0, 1, 2, 3]])), z.mean()))
        cv.line(_smooth_open(pts[[3, 4, 5, 0]]), _mix(skin, (40, 40, 50), 0.5), 0.005,
                np.full(len(_smooth_open(pts[[3, 4, 5, 0]])), z.mean()))
        # Upper lid crease (moves with AU5: more lid show at rest, less when raised).
        lid = pts[[0, 1, 2, 3]] - [0, 0.03 - 0.012 * gain(face.a[5])]
        face.crease(lid, 0.45)


def _draw_eye_creases(face: _Face) -> None:
    """AU6: crow's feet at the outer eye corners and a furrow under the lower lid."""
    canon, t6 = face.canon, face.t[6]
    for outer, lower_ids in ((36, (41, 40)), (45, (46, 47))):
        sx = -1 if outer == 36 else 1
        c = canon[outer]
        for ang in (-25, 0, 25):
            r = np.radians(ang)
            start = c + [sx * 0.02, 0]
            end = start + [sx * 0.07 * np.cos(r), 0.07 * np.sin(r)]
            face.crease([start, (start + end) / 2 + [0, -0.006], end], t6, 0.012)
        lo = canon[list(lower_ids)]
        face.crease(np.array([canon[outer], lo[0], lo[1]]) + [0, 0.035], t6 * 0.9, 0.01)


def _draw_nose(face: _Face) -> None:
    """Nose wings and nostrils, the AU9 bridge wrinkles and the nasolabial folds."""
    canon, t = face.canon, face.t
    face.crease(canon[[27, 28, 29]] + [-0.045, 0.0], 0.18)
    for idx in ((31, 32), (35, 34)):
        pts = canon[list(idx)]
        wing = _arc(pts[0] + [0.0, -0.02], (0.03, 0.028), -100 if idx[0] == 31 else -80,
                    120 if idx[0] == 31 else -300, 10)
        face.crease(wing, 0.35, 0.009, smooth=False)
        nostril = _arc(pts[1] + [0.0, -0.004], (0.018, 0.009), 0, 360, 10)
        face.cv.fill(nostril, _scaled(face.skin, 0.35), np.full(len(nostril), face.zl[idx[1]]))
    face.crease(canon[[31, 32, 33, 34, 35]] + [0, 0.004], 0.25, 0.006)
    for k in range(3):
        y = float(canon[28, 1]) + 0.042 * k - 0.03
        face.crease([[-0.07, y + 0.012], [0.0, y - 0.006], [0.07, y + 0.012]],
                    t[9] * (1 - 0.15 * k), 0.013)
    # Nasolabial folds: deepen with AU12, AU9 and AU6.
    fold = max(t[12], 0.8 * t[9], 0.5 * t[6], 0.9 * t[10], 0.15)
    for wing, corner in ((31, 48), (35, 54)):
        sx = -1 if wing == 31 else 1
        w_pt, c_pt = canon[wing], canon[corner]
        pts = np.array([w_pt + [sx * 0.03, -0.01], (w_pt + c_pt) / 2 + [sx * 0.06, 0.0],
                        c_pt + [sx * 0.035, 0.05]])
        face.crease(pts, fold, 0.014)


def _draw_mouth_creases(face: _Face) -> None:
    """AU15 depressor creases below the mouth corners; AU20 lateral stretch lines."""
    for corner in (48, 54):
        sx = -1 if corner == 48 else 1
        c = face.canon[corner]
        face.crease([c + [sx * 0.01, 0.02], c + [sx * 0.02, 0.08]], face.t[15], 0.01)
        face.crease([c + [sx * 0.025, -0.01], c + [sx * 0.085, 0.0]], face.t[20] * 0.9, 0.008)


def _draw_bp4d_textures(face: _Face) -> None:
    """AU7's bulge under the lower lids, AU14's dimples, AU23's lip wrinkles, AU24's bulges."""
    canon, t = face.canon, face.t
    for lower in ((36, 41, 40, 39), (42, 47, 46, 45)):
        face.crease(canon[list(lower)] + [0, 0.02], t[7] * 0.8, 0.009)
    for corner in (48, 54):
        sx = -1 if corner == 48 else 1
        c = canon[corner]
        face.crease([c + [sx * 0.03, -0.045], c + [sx * 0.055, 0.0], c + [sx * 0.03, 0.045]],
                    t[14], 0.022)
        face.crease([c + [sx * 0.05, -0.015], c + [sx * 0.065, 0.0], c + [sx * 0.05, 0.015]],
                    t[14], 0.018)  # the dimple's pit
    if t[23] > 0.01:
        # Vertical puckering lines across both lips (drawn over the lips, so in lip colour).
        dark = _mix(face.identity.lips, _scaled(face.identity.lips, 0.4), t[23])
        for upper, lower in ((49, 59), (50, 58), (51, 57), (52, 56), (53, 55)):
            face.cv.line([canon[upper] + [0, 0.006], canon[lower] - [0, 0.006]], dark, 0.008)
    upper_mid, lower_mid = canon[[49, 50, 51, 52, 53]], canon[[59, 58, 57, 56, 55]]
    face.crease(upper_mid - [0, 0.03], t[24] * 0.9, 0.012)
    face.crease(lower_mid + [0, 0.035], t[24], 0.014)


def _draw_chin_and_jaw(face: _Face) -> None:
    """AU17 chin boss dimpling and mentolabial furrow; the jaw line shading (moves with AU26)."""
    canon, t17 = face.canon, face.t[17]
    chin = canon[8]
    lip_bottom = canon[57]
    furrow_y = (lip_bottom[1] * 0.6 + chin[1] * 0.4)
    dip = furrow_y - 0.01 * (1 + t17)
    face.crease([[-0.07, furrow_y + 0.01], [0.0, dip], [0.07, furrow_y + 0.01]],
                0.15 + 0.75 * t17, 0.012)
    if t17 > 0.05:
        rng = np.random.default_rng(17)
        dots = rng.uniform([-0.06, 0.0], [0.06, 0.06], size=(10, 2))
        for d in dots:
            blob = _arc(chin + [d[0], d[1] - 0.1], (0.01, 0.008), 0, 360, 8)
            face.cv.fill(blob, _mix(face.skin, _scaled(face.skin, 0.32), 0.6 * t17))
    face.crease(canon[3:14] + [0, -0.01], 0.25, 0.01)



def _draw_mouth(cv: _Canvas, canon: np.ndarray, zl: np.ndarray, identity: Identity,
                a: dict[int, float]) -> None:
    upper_inner = canon[[60, 61, 62]]
    lower_inner = canon[[63, 64, 65]]
    l_corner, r_corner = canon[48], canon[54]
    opening = float(np.mean(lower_inner[::-1, 1] - upper_inner[:, 1]))
    z = np.full(16, float(zl[[48, 54, 61]].mean()))
    if opening > 0.004:
        mouth = np.concatenate([[l_corner], upper_inner, [r_corner], lower_inner])
        cv.fill(mouth, (35, 25, 55), np.full(len(mouth), z[0]))
        # Upper teeth hang from the upper lip; lower teeth show once the mouth is wide open.
        t_up = min(opening * 0.55, 0.035)
        inset = 0.35
        ul = l_corner * inset + upper_inner[0] * (1 - inset)
        ur = r_corner * inset + upper_inner[2] * (1 - inset)
        top = np.concatenate([[ul], upper_inner, [ur]])
        teeth = np.concatenate([top, (top + [0, t_up])[::-1]])
        cv.fill(teeth, (225, 232, 236), np.full(len(teeth), z[0]))
        if opening > 0.07:
            t_lo = min((opening - 0.07) * 0.5, 0.025)
            bot = np.concatenate([[ul + [0, opening]], lower_inner[::-1], [ur + [0, opening]]])
            bot[:, 1] = np.minimum(bot[:, 1], np.interp(bot[:, 0], lower_inner[::-1, 0],
                                                        lower_inner[::-1, 1]))
            lteeth = np.concatenate([bot, (bot - [0, t_lo])[::-1]])
            cv.fill(lteeth, (205, 212, 218), np.full(len(lteeth), z[0]))
        jaw = gain(a[26], TEXTURE_GAIN)
        if opening > 0.03 and jaw > 0.05:
            # The tongue shows at the back of a mouth opened by the jaw (AU26), not by the lips.
            mid = (upper_inner[1] + lower_inner[1]) / 2
            half = (0.12 + 0.2 * jaw) * float(r_corner[0] - l_corner[0])
            tongue = _arc(mid + [0, 0.45 * opening], (half, 0.35 * opening * jaw), 180, 360, 12)
            cv.fill(tongue, (80, 70, 150), np.full(len(tongue), z[0]))
    upper_lip = np.concatenate([canon[48:55], canon[[62, 61, 60]]])
    lower_lip = np.concatenate([canon[[54, 55, 56, 57, 58, 59, 48]], canon[[65, 64, 63]]])
    lips_color = identity.lips
    cv.fill(upper_lip, _scaled(lips_color, 0.92), np.full(len(upper_lip), z[0]))
    cv.fill(lower_lip, lips_color, np.full(len(lower_lip), z[0]))
    cv.line(np.concatenate([[l_corner], upper_inner, [r_corner]]), _scaled(lips_color, 0.55),
            0.006, np.full(5, z[0]))


def background_image(width: int, height: int, identity: Identity,
                     rng: np.random.Generator) -> np.ndarray:
    """A static, softly lit backdrop (per subject; the camera does not move)."""
    base = np.array(identity.background, dtype=np.float32)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    gx, gy = rng.uniform(-0.25, 0.25, 2)
    light = 1.0 + gx * (xx / width - 0.5) + gy * (yy / height - 0.5)
    img = base[None, None, :] * light[..., None]
    # A few big out-of-focus blobs (furniture, wall texture).
    for _ in range(4):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        r = rng.uniform(0.1, 0.35) * width
        blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))
        img += blob[..., None] * rng.normal(0, 25, 3).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def noise_bank(width: int, height: int, rng: np.random.Generator, n: int = 4,
               sigma: float = 4.0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Pre-drawn sensor-noise fields as (add, subtract) uint8 pairs: per-frame noise then costs
    two saturating adds instead of a fresh full-frame Gaussian draw."""
    bank = []
    for _ in range(n):
        luma = rng.standard_normal((height, width, 1), dtype=np.float32) * sigma
        noise = luma + rng.standard_normal((height, width, 3), dtype=np.float32) * (sigma * 0.4)
        pos = np.clip(noise, 0, 255).astype(np.uint8)
        neg = np.clip(-noise, 0, 255).astype(np.uint8)
        bank.append((pos, neg))
    return bank


def render_frame(background: np.ndarray, identity: Identity,
                 aus12: Sequence[float] | dict[int, float], pose: Pose, blur_sigma: float = 1.0,
                 noise: tuple[np.ndarray, np.ndarray] | None = None,
                 brightness: float = 1.0) -> np.ndarray:
    """A full BGR frame: backdrop, face, defocus blur on the face box, sensor noise
    (``aus12`` as in :func:`render_face`: 12 DISFA intensities or ``{au: intensity}``)."""
    frame = background.copy()
    x0, y0, x1, y1 = render_face(frame, identity, aus12, pose)
    if x1 > x0 and y1 > y0:
        crop = frame[y0:y1, x0:x1]
        if blur_sigma > 0.2:
            cv2.GaussianBlur(crop, (0, 0), blur_sigma, dst=crop)
        if abs(brightness - 1.0) > 1e-3:
            cv2.convertScaleAbs(crop, dst=crop, alpha=brightness)
    if noise is not None:
        cv2.add(frame, noise[0], dst=frame)
        cv2.subtract(frame, noise[1], dst=frame)
    return frame

