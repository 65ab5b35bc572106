"""A parametric 2-D face for the synthetic DISFA twin: the 66-point shape model.

The shape lives in *canonical face units*: the face is one unit wide (jaw point 0 to 16), the
origin is the midpoint of nose root and nose tip (the alignment's nose point), +y points down.
An identity reshapes the template, each AU adds a FACS-placed displacement scaled by its
intensity, and a pose (roll, yaw, scale, translation) maps the result to pixels.

``face_render`` draws the face from this same shape (plus texture cues: wrinkles, teeth, the
dark open mouth), so every AU shows both in the landmarks and in the pixels, and the two never
disagree.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from ..datasets.disfa.facts import ALL_AUS

N_POINTS = 66
#: BP4D's AUs beyond DISFA's 12 (lid tightener, upper lip raiser, dimpler, lip tightener, lip
#: pressor), drawn so a BP4D twin's labels are learnable too.
EXTRA_AUS: tuple[int, ...] = (7, 10, 14, 23, 24)
#: Every AU the renderer can show (DISFA's 12 first, so their drawing order never changes).
RENDER_AUS: tuple[int, ...] = tuple(ALL_AUS) + EXTRA_AUS

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
    d = {au: np.zeros((N_POINTS, 2)) for au in RENDER_AUS}

    def move(au: int, idx: int, dx: float, dy: float) -> None:
        # Write the point and its mirror partner (dx mirrored), keeping AUs bilateral.
        d[au][idx] += (dx, dy)
        j = MIRROR[idx]
        if j != idx:
            d[au][j] += (-dx, dy)

    _move_upper_face(move)
    _move_lower_face(move)
    _move_bp4d_extra(move)
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


def _move_bp4d_extra(move) -> None:
    """BP4D's AU7, 10, 14, 23, 24, each on points apart from the DISFA AUs' main motions."""
    # AU7 lid tightener: lower lids straighten upwards, upper lids come down a little; the
    # cheeks stay (unlike AU6), so the eye narrows from below without crow's feet.
    for i in (40, 41):
        move(7, i, 0.0, -0.032)
    for i in (37, 38):
        move(7, i, 0.0, 0.012)
    # AU10 upper lip raiser: the middle of the upper lip goes up (teeth show), the nose wings a
    # little; the nose bridge stays (unlike AU9).
    for i, w in ((51, 1.0), (50, 0.95), (49, 0.6), (61, 0.9), (60, 0.6), (48, 0.15)):
        move(10, i, 0.0, -0.05 * w)
    move(10, 31, 0.0, -0.012)
    # AU14 dimpler: corners pulled back into the cheeks (a little out, a little up) without
    # AU12's lift; the dimple itself is texture.
    move(14, 48, -0.05, -0.012)
    for i, w in ((49, 0.35), (59, 0.35), (60, 0.45), (65, 0.45)):
        move(14, i, -0.05 * w, -0.006 * w)
    # AU23 lip tightener: the red of the lips narrows (outer contour towards the lip line) and
    # the mouth gets narrower.
    move(23, 48, 0.032, 0.0)
    for i, w in ((51, 1.0), (50, 0.9), (49, 0.6)):
        move(23, i, 0.008 * (i != 51), 0.016 * w)
    for i, w in ((57, 1.0), (58, 0.9), (59, 0.6)):
        move(23, i, 0.008 * (i != 57), -0.02 * w)
    for i in (60, 65):
        move(23, i, 0.015, 0.0)
    # AU24 lip pressor: the lips pressed flat together (both contours towards the lip line,
    # corners in place); the bulges above and below the lips are texture.
    for i, w in ((51, 1.0), (50, 0.8), (49, 0.45)):
        move(24, i, 0.0, 0.012 * w)
    for i, w in ((57, 1.0), (58, 0.8), (59, 0.45)):
        move(24, i, 0.0, -0.014 * w)
    for i, w in ((7, 0.4), (8, 0.6)):
        move(24, i, 0.0, -0.01 * w)


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


def au_intensities(aus: Sequence[float] | dict[int, float]) -> dict[int, float]:
    """{AU: intensity} over ``RENDER_AUS`` (absent AUs 0) from the 12 DISFA intensities in
    ``ALL_AUS`` order or from an {au: intensity} dict naming any of ``RENDER_AUS``."""
    if isinstance(aus, dict):
        unknown = set(aus) - set(RENDER_AUS)
        if unknown:
            raise ValueError(f"unknown AUs {sorted(unknown)}; the twin draws {list(RENDER_AUS)}")
        return {au: float(aus.get(au, 0)) for au in RENDER_AUS}
    return {**dict(zip(ALL_AUS, au_vector(aus))), **{au: 0.0 for au in EXTRA_AUS}}


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
    """66x2 shape of ``identity`` showing the AU intensities (see :func:`au_intensities`)."""
    a = au_intensities(aus12)
    shape = identity_shape(identity)
    au1 = gain(a[1])
    for au, value in a.items():  # DISFA's 12 in their old order, then EXTRA_AUS
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

