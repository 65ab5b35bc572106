"""A parametric 2-D face for the synthetic DISFA twin: 66-point shape model and renderer.

The shape lives in *canonical face units*: the face is one unit wide (jaw point 0 to 16), the
origin is the midpoint of nose root and nose tip (the alignment's nose point), +y points down.
An identity reshapes the template, each AU adds a FACS-placed displacement scaled by its
intensity, and a pose (roll, yaw, scale, translation) maps the result to pixels.

The renderer draws the face with OpenCV primitives from the same shape plus texture cues
(wrinkles, teeth, the dark open mouth), so every AU is visible both in the landmarks and in
the pixels, and the two never disagree.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Sequence

import cv2
import numpy as np

from .disfa import ALL_AUS

N_POINTS = 66

#: DISFA/iBUG mean shape (66 points, canonical units), taken from one real DISFA frame's
#: AAM landmarks, de-rolled on the eye line and mirror-symmetrised. Eyes are re-opened
#: below (AAM eye contours hug narrow, relaxed lids).
_TEMPLATE = np.array([
    [-0.5, -0.0886], [-0.4903, 0.046], [-0.4749, 0.1796], [-0.4528, 0.3125], [-0.4052, 0.4383],
    [-0.3338, 0.5519], [-0.2422, 0.6497], [-0.132, 0.7247], [0.0, 0.7348], [0.132, 0.7247],
    [0.2422, 0.6497], [0.3338, 0.5519], [0.4052, 0.4383], [0.4528, 0.3125], [0.4749, 0.1796],
    [0.4903, 0.046], [0.5, -0.0886], [-0.4194, -0.2496], [-0.3439, -0.2714], [-0.2648, -0.2705],
    [-0.1884, -0.2516], [-0.1159, -0.2173], [0.1159, -0.2173], [0.1884, -0.2516],
    [0.2648, -0.2705], [0.3439, -0.2714], [0.4194, -0.2496], [0.0, -0.1737], [0.0, -0.0578],
    [0.0, 0.0581], [0.0, 0.1737], [-0.1079, 0.2304], [-0.0543, 0.242], [0.0, 0.2512],
    [0.0543, 0.242], [0.1079, 0.2304], [-0.3559, -0.1038], [-0.2863, -0.0983],
    [-0.2161, -0.1002], [-0.148, -0.0993], [-0.2175, -0.0774], [-0.29, -0.0753],
    [0.148, -0.0993], [0.2161, -0.1002], [0.2863, -0.0983], [0.3559, -0.1038], [0.29, -0.0753],
    [0.2175, -0.0774], [-0.212, 0.371], [-0.1427, 0.3587], [-0.0699, 0.3531], [0.0, 0.3712],
    [0.0699, 0.3531], [0.1427, 0.3587], [0.212, 0.371], [0.1566, 0.4319], [0.0822, 0.4673],
    [0.0, 0.4719], [-0.0822, 0.4673], [-0.1566, 0.4319], [-0.1079, 0.3979], [0.0, 0.4066],
    [0.1079, 0.3979], [0.1079, 0.3986], [0.0, 0.4064], [-0.1079, 0.3986],
])

#: Index of each point's left-right mirror partner (for symmetric identities and flips).
MIRROR = np.array(
    list(range(16, -1, -1)) + list(range(26, 16, -1)) + [27, 28, 29, 30] + [35, 34, 33, 32, 31]
    + [45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40]
    + [54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55] + [62, 61, 60, 65, 64, 63]
)

# Landmark groups in DISFA's 66-point order (image-left = subject's right).
JAW = list(range(0, 17))
BROWS = list(range(17, 27))
NOSE = list(range(27, 36))
EYES = list(range(36, 48))
UPPER_LIDS = [37, 38, 43, 44]
LOWER_LIDS = [40, 41, 46, 47]
OUTER_LIP = list(range(48, 60))
INNER_LIP = list(range(60, 66))
MOUTH = OUTER_LIP + INNER_LIP
LIP_CORNERS = [48, 54]

#: Deformation per integer intensity 0..5, as a fraction of the AU's full displacement.
#: The step from 2 to 3 is the largest, so the detection threshold (C = 3) sits on a clear
#: visual edge instead of in a continuum.
INTENSITY_GAIN = np.array([0.0, 0.14, 0.32, 0.70, 0.86, 1.0])
#: Texture (wrinkle, crease) darkness per intensity, with the same 2 -> 3 jump.
TEXTURE_GAIN = np.array([0.0, 0.06, 0.22, 0.72, 0.88, 1.0])


def _eye_template(shape: np.ndarray) -> np.ndarray:
    """Open the template's eyes: AAM contours of a relaxed subject are very narrow."""
    out = shape.copy()
    for eye in (list(range(36, 42)), list(range(42, 48))):
        corner_y = (out[eye[0], 1] + out[eye[3], 1]) / 2
        for i in eye[1:3]:
            out[i, 1] = corner_y - 0.042
        for i in eye[4:6]:
            out[i, 1] = corner_y + 0.028
    return out


TEMPLATE = _eye_template(_TEMPLATE)


def _au_displacements() -> dict[int, np.ndarray]:
    """Full-intensity (5) displacement of every landmark for each AU, canonical units.

    Only the points FACS attributes to the AU move; everything else stays at zero so tests can
    check that, e.g., AU12 leaves the brows alone.
    """
    d = {au: np.zeros((N_POINTS, 2)) for au in ALL_AUS}

    def move(au: int, idx: int, dx: float, dy: float) -> None:
        # Write the point and its mirror partner (dx mirrored), keeping AUs bilateral.
        d[au][idx] += (dx, dy)
        j = MIRROR[idx]
        if j != idx:
            d[au][j] += (-dx, dy)

    _move_upper_face(move)
    _move_lower_face(move)
    return d


def _move_upper_face(move) -> None:
    """Brows, lids, cheeks and nose: AU1, 2, 4, 5, 6, 9."""
    # AU1 inner brow raiser: inner brow ends up, outer ends nearly still.
    for i, w in zip((21, 20, 19, 18, 17), (1.0, 0.8, 0.45, 0.15, 0.0)):
        move(1, i, 0.0, -0.12 * w)
    # AU2 outer brow raiser: outer brow ends up, inner nearly still.
    for i, w in zip((17, 18, 19, 20, 21), (1.0, 0.85, 0.5, 0.2, 0.03)):
        move(2, i, 0.0, -0.12 * w)
    # AU4 brow lowerer: brows down, inner ends drawn together; upper lids slightly covered.
    for i, w in zip((21, 20, 19, 18, 17), (1.0, 0.9, 0.75, 0.6, 0.45)):
        move(4, i, 0.05 * w * (i >= 20), 0.065 * w)
    for i in (37, 38):
        move(4, i, 0.0, 0.008)
    # AU5 upper lid raiser.
    for i in (37, 38):
        move(5, i, 0.0, -0.04)
    # AU6 cheek raiser: lower lids pushed up, eye corners lifted, outer brow pulled down a bit.
    for i in (40, 41):
        move(6, i, 0.0, -0.024)
    move(6, 36, 0.0, -0.008)
    move(6, 17, 0.0, 0.012)
    for i in (2, 3):
        move(6, i, -0.008, -0.012)
    # AU9 nose wrinkler: nostrils and wings up and out, upper lip up, inner brows down.
    for i, (dx, dy) in zip((31, 32, 33), ((-0.014, -0.045), (-0.006, -0.05), (0.0, -0.045))):
        move(9, i, dx, dy)
    move(9, 30, 0.0, -0.03)
    move(9, 29, 0.0, -0.015)
    for i, w in zip((48, 49, 50, 51, 60, 61), (0.4, 0.8, 1.0, 1.0, 0.6, 0.7)):
        move(9, i, 0.0, -0.028 * w)
    for i in (21, 20):
        move(9, i, 0.01, 0.02)
    for i in (40, 41):
        move(9, i, 0.0, -0.008)


def _move_lower_face(move) -> None:
    """Lips, chin and jaw: AU12, 15, 17, 20, 25, 26."""
    # AU12 lip corner puller: corners up and out, lips follow; inner lip corners too.
    move(12, 48, -0.05, -0.058)
    for i, w in ((49, 0.45), (59, 0.5), (50, 0.12), (58, 0.15), (60, 0.55), (65, 0.55)):
        move(12, i, -0.05 * w, -0.058 * w)
    for i in (40, 41):
        move(12, i, 0.0, -0.006)
    # AU15 lip corner depressor.
    move(15, 48, 0.012, 0.05)
    for i, w in ((49, 0.4), (59, 0.45), (60, 0.45), (65, 0.45)):
        move(15, i, 0.012 * w, 0.05 * w)
    # AU17 chin raiser: chin and lower lip pushed up, lower lip protrudes upwards in the middle.
    for i, w in ((8, 1.0), (7, 0.8), (6, 0.4), (5, 0.1)):
        move(17, i, 0.0, -0.04 * w)
    for i, w in ((57, 1.0), (58, 0.9), (59, 0.5), (64, 0.8), (65, 0.6)):
        move(17, i, 0.0, -0.032 * w)
    move(17, 48, 0.0, 0.012)
    # AU20 lip stretcher: corners pulled sideways, lips flattened.
    move(20, 48, -0.07, 0.012)
    for i, w in ((49, 0.45), (59, 0.5), (60, 0.5), (65, 0.5)):
        move(20, i, -0.07 * w, 0.004)
    move(20, 51, 0.0, 0.008)
    move(20, 57, 0.0, -0.01)
    for i in (4, 5):
        move(20, i, -0.01, 0.0)
    # AU25 lips part: lower lip drops away from the upper one (teeth show).
    for i, w in ((57, 1.0), (58, 0.9), (59, 0.55), (64, 1.0), (65, 0.85)):
        move(25, i, 0.0, 0.06 * w)
    for i, w in ((51, 1.0), (50, 0.9), (49, 0.5), (61, 1.0), (60, 0.85)):
        move(25, i, 0.0, -0.018 * w)
    # AU26 jaw drop: the mandible (jaw contour, chin, lower lip) goes down.
    for i, w in ((8, 1.0), (7, 0.97), (6, 0.88), (5, 0.72), (4, 0.5), (3, 0.25), (2, 0.06)):
        move(26, i, 0.0, 0.15 * w)
    for i, w in ((57, 0.9), (58, 0.85), (59, 0.55), (64, 0.95), (65, 0.8), (48, 0.2)):
        move(26, i, 0.0, 0.15 * w)


AU_DISPLACEMENT: dict[int, np.ndarray] = _au_displacements()


@dataclass(frozen=True)
class Identity:
    """Per-subject appearance. Geometry in canonical units, colours BGR 0-255."""

    width: float = 1.0          # horizontal stretch of the whole face
    jaw_length: float = 1.0     # vertical stretch below the nose point
    forehead: float = 0.62      # forehead height (hairline above the nose point)
    eye_size: float = 1.0
    eye_spacing: float = 1.0
    brow_height: float = 0.0    # extra offset of the brows (negative = higher)
    brow_thickness: float = 0.028
    nose_width: float = 1.0
    mouth_width: float = 1.0
    lip_thickness: float = 1.0
    expressiveness: float = 1.0  # scales every AU displacement (people differ)
    skin: tuple[float, float, float] = (150.0, 175.0, 215.0)
    hair: tuple[float, float, float] = (30.0, 40.0, 60.0)
    brow: tuple[float, float, float] = (35.0, 45.0, 60.0)
    lips: tuple[float, float, float] = (105.0, 110.0, 185.0)
    iris: tuple[float, float, float] = (70.0, 90.0, 80.0)
    background: tuple[float, float, float] = (120.0, 130.0, 140.0)
    clothes: tuple[float, float, float] = (90.0, 60.0, 40.0)
    long_hair: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


#: Skin tones (BGR) from light to dark, jittered per subject.
_SKIN_TONES = np.array([
    (175, 200, 235), (150, 180, 225), (125, 160, 205), (100, 135, 185), (75, 105, 150),
    (55, 80, 120),
])


def sample_identity(rng: np.random.Generator) -> Identity:
    """Draw a plausible, distinct person."""
    skin = _SKIN_TONES[rng.integers(len(_SKIN_TONES))] + rng.normal(0, 6, 3)
    hair_dark = rng.uniform(0.05, 0.55)
    hair = np.array([40, 55, 75]) * hair_dark * 2 + rng.normal(0, 5, 3)
    brow = np.minimum(hair * 0.8, skin * 0.45) + 5
    lips = skin * np.array([0.72, 0.68, 0.95]) + rng.normal(0, 5, 3)
    bg = rng.uniform(60, 200) + rng.normal(0, 25, 3)
    return Identity(
        width=float(rng.uniform(0.9, 1.08)),
        jaw_length=float(rng.uniform(0.92, 1.1)),
        forehead=float(rng.uniform(0.56, 0.68)),
        eye_size=float(rng.uniform(1.05, 1.3)),
        eye_spacing=float(rng.uniform(0.94, 1.06)),
        brow_height=float(rng.uniform(-0.02, 0.02)),
        brow_thickness=float(rng.uniform(0.022, 0.036)),
        nose_width=float(rng.uniform(0.85, 1.2)),
        mouth_width=float(rng.uniform(0.88, 1.12)),
        lip_thickness=float(rng.uniform(0.8, 1.3)),
        expressiveness=float(rng.uniform(0.92, 1.08)),
        skin=tuple(float(v) for v in np.clip(skin, 30, 245)),
        hair=tuple(float(v) for v in np.clip(hair, 5, 120)),
        brow=tuple(float(v) for v in np.clip(brow, 5, 120)),
        lips=tuple(float(v) for v in np.clip(lips, 20, 230)),
        iris=tuple(float(v) for v in rng.uniform(30, 110, 3)),
        background=tuple(float(v) for v in np.clip(bg, 20, 235)),
        long_hair=bool(rng.random() < 0.4),
        clothes=tuple(float(v) for v in rng.uniform(20, 220, 3)),
    )


@dataclass(frozen=True)
class Pose:
    """Head pose and placement: ``center`` (x, y) pixels of the nose point, ``scale`` = face
    width in pixels, ``roll`` in-plane degrees (positive = clockwise on screen), ``yaw`` degrees
    (out-of-plane turn, foreshortens the face)."""

    center: tuple[float, float] = (512.0, 384.0)
    scale: float = 280.0
    roll: float = 0.0
    yaw: float = 0.0


def identity_shape(identity: Identity) -> np.ndarray:
    """The neutral 66-point shape of ``identity`` in canonical units."""
    s = TEMPLATE.copy()
    s[:, 0] *= identity.width
    below = s[:, 1] > 0
    s[below, 1] *= identity.jaw_length
    for eye in (list(range(36, 42)), list(range(42, 48))):
        c = s[eye].mean(axis=0)
        c_new = np.array([c[0] * identity.eye_spacing, c[1]])
        s[eye] = c_new + (s[eye] - c) * identity.eye_size
    s[BROWS, 1] += identity.brow_height
    s[BROWS, 0] *= identity.eye_spacing
    nose_lower = list(range(31, 36))
    s[nose_lower, 0] *= identity.nose_width
    mouth_c = s[MOUTH].mean(axis=0)
    s[MOUTH, 0] = mouth_c[0] + (s[MOUTH, 0] - mouth_c[0]) * identity.mouth_width
    # Thicker lips: outer contour moves away from the (closed) inner line.
    upper, lower = [49, 50, 51, 52, 53], [55, 56, 57, 58, 59]
    s[upper, 1] -= (identity.lip_thickness - 1) * 0.02
    s[lower, 1] += (identity.lip_thickness - 1) * 0.025
    return s


def au_vector(aus: Sequence[float] | dict[int, float]) -> np.ndarray:
    """12 intensities in ``ALL_AUS`` order from a sequence or an {au: intensity} dict."""
    if isinstance(aus, dict):
        unknown = set(aus) - set(ALL_AUS)
        if unknown:
            raise ValueError(f"unknown AUs {sorted(unknown)}; DISFA has {list(ALL_AUS)}")
        return np.array([float(aus.get(au, 0)) for au in ALL_AUS])
    vec = np.asarray(aus, dtype=float)
    if vec.shape != (len(ALL_AUS),):
        raise ValueError(f"expected {len(ALL_AUS)} AU intensities, got shape {vec.shape}")
    return vec


def gain(intensity: float, table: np.ndarray = INTENSITY_GAIN) -> float:
    """Deformation gain of a (possibly fractional) intensity 0-5, interpolated in ``table``."""
    return float(np.interp(np.clip(intensity, 0.0, 5.0), np.arange(6), table))


def canonical_shape(identity: Identity, aus12: Sequence[float] | dict[int, float]) -> np.ndarray:
    """66x2 shape of ``identity`` showing the AU intensities, canonical units."""
    vec = au_vector(aus12)
    shape = identity_shape(identity)
    au1 = gain(vec[ALL_AUS.index(1)])
    for au, value in zip(ALL_AUS, vec):
        if value > 0:
            disp = AU_DISPLACEMENT[au]
            if au == 4 and au1 > 0:
                # 1+4 (the "sad" brow): the inner raise wins vertically, so AU1 stays
                # visible while AU4 still knits the brows together.
                disp = disp.copy()
                disp[BROWS, 1] *= 1.0 - 0.6 * au1
            shape = shape + disp * (gain(value) * identity.expressiveness)
    return shape


def _depth(points: np.ndarray) -> np.ndarray:
    """Approximate depth (towards the camera) of canonical points: a cylinder-like head."""
    x = points[:, 0]
    return 0.5 * np.sqrt(np.clip(1.0 - (x / 0.62) ** 2, 0.0, 1.0))


_NOSE_DEPTH = {27: 0.04, 28: 0.08, 29: 0.13, 30: 0.2, 31: 0.07, 32: 0.11, 33: 0.14, 34: 0.11,
               35: 0.07}


def landmark_depth(shape: np.ndarray) -> np.ndarray:
    z = _depth(shape)
    for i, extra in _NOSE_DEPTH.items():
        z[i] += extra
    return z


def apply_pose(points: np.ndarray, pose: Pose, depth: np.ndarray | None = None) -> np.ndarray:
    """Map canonical points to pixel coordinates (0-based, x right, y down)."""
    pts = np.asarray(points, dtype=float)
    z = _depth(pts) if depth is None else depth
    yaw = np.radians(pose.yaw)
    x = pts[:, 0] * np.cos(yaw) + z * np.sin(yaw)
    y = pts[:, 1]
    roll = np.radians(pose.roll)
    c, s = np.cos(roll), np.sin(roll)
    out = np.empty_like(pts)
    out[:, 0] = pose.center[0] + pose.scale * (c * x - s * y)
    out[:, 1] = pose.center[1] + pose.scale * (s * x + c * y)
    return out


def face_shape(identity: Identity, aus_intensity12: Sequence[float] | dict[int, float],
               pose: Pose) -> np.ndarray:
    """The 66x2 landmarks (0-based pixel x, y) of ``identity`` showing the AUs in ``pose``."""
    shape = canonical_shape(identity, aus_intensity12)
    return apply_pose(shape, pose, landmark_depth(shape))


# ----------------------------------------------------------------------------- rendering


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


def render_face(img: np.ndarray, identity: Identity, aus12: Sequence[float], pose: Pose,
                shape: np.ndarray | None = None) -> tuple[int, int, int, int]:
    """Draw the face in place on ``img`` (BGR uint8). Returns the touched box (x0, y0, x1, y1).

    ``shape`` is the canonical shape (computed from identity and AUs when omitted).
    Drawing happens on the face's bounding crop only, which keeps full-size frames fast.
    The steps below queue their shapes back to front; ``flush`` draws them in that order.
    """
    aus = au_vector(aus12)
    a = dict(zip(ALL_AUS, aus))
    canon = canonical_shape(identity, aus) if shape is None else shape
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
    fold = max(t[12], 0.8 * t[9], 0.5 * t[6], 0.15)
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


def render_frame(background: np.ndarray, identity: Identity, aus12: Sequence[float],
                 pose: Pose, blur_sigma: float = 1.0,
                 noise: tuple[np.ndarray, np.ndarray] | None = None,
                 brightness: float = 1.0) -> np.ndarray:
    """A full BGR frame: backdrop, face, defocus blur on the face box, sensor noise."""
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


__all__ = [
    "ALL_AUS", "AU_DISPLACEMENT", "INTENSITY_GAIN", "TEXTURE_GAIN", "Identity", "Pose", "MIRROR",
    "TEMPLATE", "apply_pose", "au_vector", "background_image", "canonical_shape", "face_shape",
    "gain", "head_outline", "identity_shape", "landmark_depth", "noise_bank", "render_face",
    "render_frame", "sample_identity",
]
