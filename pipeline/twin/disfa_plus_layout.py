"""The DISFA+ twin (``pipeline.synth --layout disfa+``): DISFA+'s release layout and quirks
(DISFAPLUS_FACTS.md) with the DISFA twin's learnable faces.

    OUT/Images/SN001/<trial>/000.jpg ... + TimeStamp.txt       (0-based, 3-digit frame names)
    OUT/Labels/SN001/<trial>/AU1.txt ... AU26.txt              (two header lines, '000.jpg  3')
    OUT/FaceLandmarks/SN001/<trial>_FaceCropped.mat            (FaceImg_CropResize: imgID,
                                                                ImgCropped, LndPntCropped [49])
    OUT/synth_truth.json

Quirks a reader must survive: the second subject (else the only one) is nested twice
(``Labels/SN003/SN003/...``, ``FaceLandmarks/SN003/SN003/...``); every image folder holds a
``TimeStamp.txt``; AU files list in string order (AU1, AU12, AU15, ...), so only the AU
number maps a file to its column; the first subject's first trial's ``AU17.txt`` lacks one
frame (a reader keeping frames listed in all 12 files drops exactly that one). Trial names are
the release's (misspellings included) and mean nothing to a reader.
"""
from __future__ import annotations

import io
import json
import logging
import time
from dataclasses import asdict
from pathlib import Path

import cv2
import numpy as np
import scipy.io

from ..datasets.disfa_plus import facts as dplus
from .config import SYNTH_VERSION, TRUTH_JSON, SynthConfig
from .episodes import au_schedule, pose_track
from .face_render import background_image, noise_bank, render_frame
from .face_shape import face_shape, sample_identity
from .writer import _atomic_write

log = logging.getLogger("pipeline.synth")

#: Trial names seen in the release (DISFAPLUS_FACTS.md "Trials"), used in this order.
TRIALS = ("A1_AU1_TrailNo_1", "A9_AU4_5x_TrailNo_1", "B2_AU6_TrailNo_2",
          "Y_HappyDescribed_TrailNo_1", "Z_SupriseText_TrailNo_2")
#: Frames per trial the twin aims at (the release averages ~89).
FRAMES_PER_TRIAL = 10
CROP_SIZE = 200  # the crops' size per one anonymous source (UNVERIFIED)
#: The 49 points: DISFA's 66 without the jaw (iBUG-68 less the jaw and inner-mouth corners).
POINTS_49 = list(range(17, 66))
MISSING_AU = 17  # the AU file that lacks one frame


def disfa_plus_subjects(cfg: SynthConfig) -> list[str]:
    """The DISFA+ subjects to write (release order); a ValueError naming a non-DISFA+ one."""
    if cfg.subjects:
        wrong = [s for s in cfg.subjects if s not in dplus.SUBJECTS]
        if wrong:
            raise ValueError(f"--subjects: {', '.join(wrong)} not in DISFA+ "
                             f"({', '.join(dplus.SUBJECTS)})")
        return sorted(set(cfg.subjects), key=dplus.SUBJECTS.index)
    if cfg.n_subjects > len(dplus.SUBJECTS):
        raise ValueError(f"--n-subjects: DISFA+ has {len(dplus.SUBJECTS)} subjects, "
                         f"not {cfg.n_subjects}")
    return list(dplus.SUBJECTS[: cfg.n_subjects])


def trial_lengths(frames: int) -> dict[str, int]:
    """Trial -> frames: ``frames`` per subject split over up to 5 trials of ~10 frames."""
    n_trials = int(min(len(TRIALS), max(1, frames // FRAMES_PER_TRIAL)))
    sizes = [len(a) for a in np.array_split(np.arange(frames), n_trials)]
    return dict(zip(TRIALS, sizes))


def _label_text(subject: str, trial: str, au: int, values: dict[int, int]) -> str:
    head = f"{subject} {trial} AU{au}\nImage\tIntensity\n"  # header content is UNVERIFIED
    return head + "".join(f"{f:03d}.jpg     {v}\n" for f, v in values.items())


def _crop(frame: np.ndarray, pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A square face crop resized to CROP_SIZE and the 49 points in its 1-based pixels."""
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    half = 0.6 * float(max(hi - lo))
    cx, cy = (lo + hi) / 2
    x0, y0 = int(max(0, cx - half)), int(max(0, cy - half))
    x1 = int(min(frame.shape[1], cx + half))
    y1 = int(min(frame.shape[0], cy + half))
    crop = cv2.resize(frame[y0:y1, x0:x1], (CROP_SIZE, CROP_SIZE), interpolation=cv2.INTER_AREA)
    scale = np.array([CROP_SIZE / max(1, x1 - x0), CROP_SIZE / max(1, y1 - y0)])
    return crop[:, :, ::-1].copy(), (pts[POINTS_49] - [x0, y0]) * scale + 1.0


def _mat_bytes(cells: list[dict]) -> bytes:
    array = np.empty((1, len(cells)), dtype=object)
    for i, cell in enumerate(cells):
        array[0, i] = cell
    buf = io.BytesIO()
    scipy.io.savemat(buf, {"FaceImg_CropResize": array})
    data = bytearray(buf.getvalue())
    data[:116] = b"MATLAB 5.0 MAT-file, Created by: pipeline.synth (DISFA+ twin)".ljust(116)
    return bytes(data)  # a fixed header: reruns are byte-identical


def _write_trial(out: Path, sub_path: str, trial: str, frames: list[np.ndarray],
                 landmarks: list[np.ndarray], cfg: SynthConfig) -> None:
    """The images, TimeStamp.txt and _FaceCropped.mat of one trial."""
    subject = sub_path.split("/")[0]
    images = out / "Images" / subject / trial
    images.mkdir(parents=True, exist_ok=True)
    cells = []
    for f, (frame, pts) in enumerate(zip(frames, landmarks)):
        ok, jpg = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, cfg.jpeg_quality])
        if not ok:
            raise RuntimeError(f"OpenCV cannot encode {images / f'{f:03d}.jpg'}")
        _atomic_write(images / f"{f:03d}.jpg", jpg.tobytes())
        crop, crop_pts = _crop(frame, pts)
        cells.append({"imgID": f"{f:03d}.jpg", "ImgCropped": crop, "LndPntCropped": crop_pts})
    stamps = "".join(f"{f / cfg.fps:.6f}\n" for f in range(len(frames)))
    _atomic_write(images / "TimeStamp.txt", stamps.encode())
    lm_dir = out / "FaceLandmarks" / sub_path
    lm_dir.mkdir(parents=True, exist_ok=True)
    _atomic_write(lm_dir / f"{trial}_FaceCropped.mat", _mat_bytes(cells))


def _write_labels(out: Path, sub_path: str, trial: str, intensity: np.ndarray,
                  missing: int | None) -> None:
    """The 12 AU files, written in string order (AU1, AU12, ...) as a listing returns them."""
    subject = sub_path.split("/")[0]
    folder = out / "Labels" / sub_path / trial
    folder.mkdir(parents=True, exist_ok=True)
    for au in sorted(dplus.AUS, key=lambda a: f"AU{a}.txt"):
        col = intensity[:, dplus.AUS.index(au)]
        values = {f: int(v) for f, v in enumerate(col) if not (au == MISSING_AU and f == missing)}
        _atomic_write(folder / f"AU{au}.txt", _label_text(subject, trial, au, values).encode())


def synthesize_subject(out: Path, cfg: SynthConfig, subject: str, nested: bool,
                       first: bool) -> dict:
    """Render one subject's trials (one AU schedule and head track across them)."""
    rngs = {name: np.random.default_rng(np.random.SeedSequence([cfg.seed, int(subject[2:]), k]))
            for k, name in enumerate(("identity", "schedule", "pose", "render"))}
    identity = sample_identity(rngs["identity"])
    n = int(cfg.frames)
    intensity = au_schedule(n, rngs["schedule"], cfg.fps)
    poses = pose_track(n, rngs["pose"], cfg.width, cfg.height, cfg.fps)
    background = background_image(cfg.width, cfg.height, identity, rngs["render"])
    noise = noise_bank(cfg.width, cfg.height, rngs["render"])
    sub_path = f"{subject}/{subject}" if nested else subject
    trials, start = {}, 0
    for k, (trial, size) in enumerate(trial_lengths(n).items()):
        idx = range(start, start + size)
        start += size
        frames = [render_frame(background, identity, intensity[i], poses[i],
                               poses[i].scale * 0.004, noise[i % len(noise)]) for i in idx]
        pts = [face_shape(identity, intensity[i], poses[i]) for i in idx]
        missing = size // 2 if first and k == 0 else None
        _write_trial(out, sub_path, trial, frames, pts, cfg)
        _write_labels(out, sub_path, trial, intensity[idx.start:idx.stop], missing)
        trials[trial] = {"frames": size, "missing_in_au17": missing,
                         "intensity": intensity[idx.start:idx.stop].tolist()}
    return {"subject": subject, "frames": n, "double_nested": nested, "trials": trials,
            "identity": identity.to_dict(),
            "positives_ge2": {str(au): int((intensity[:, c] >= dplus.DEFAULT_THRESHOLD).sum())
                              for c, au in enumerate(dplus.AUS)}}


def synthesize_disfa_plus(out: Path, cfg: SynthConfig) -> dict:
    """Write the DISFA+ twin under ``out`` and ``synth_truth.json``; returns the summary."""
    subjects = disfa_plus_subjects(cfg)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    nested = subjects[1] if len(subjects) > 1 else subjects[0]
    results = {}
    for k, subject in enumerate(subjects):
        log.info("DISFA+ twin: %s", subject)
        results[subject] = synthesize_subject(out, cfg, subject, subject == nested, k == 0)
    n_frames = sum(r["frames"] for r in results.values())
    truth = {
        "layout": "disfa+", "version": SYNTH_VERSION,
        "config": {k: v for k, v in asdict(cfg).items() if k not in ("jobs", "preview")},
        "subjects": results,
        "quirks": {"double_nested": nested, "timestamp_files": True,
                   "au_file_missing_a_frame": {"subject": subjects[0], "trial": TRIALS[0],
                                               "au": MISSING_AU}},
        "expected": {"sequences": sum(len(r["trials"]) for r in results.values()),
                     "labelled_frames": n_frames - 1, "dropped_not_in_all_12": 1},
    }
    _atomic_write(out / TRUTH_JSON, json.dumps(truth, indent=1, sort_keys=True).encode())
    return {"out": str(out), "subjects": results, "failed": {}, "expected": truth["expected"],
            "seconds": round(time.perf_counter() - start, 3)}


def summary_lines(summary: dict) -> list[str]:
    """The command's final table for a DISFA+ twin."""
    lines = [f"{'subject':8} {'frames':>6} {'trials':>6}  nested"]
    for subject, info in summary["subjects"].items():
        lines.append(f"{subject:8} {info['frames']:6d} {len(info['trials']):6d}  "
                     f"{'yes' if info['double_nested'] else 'no'}")
    exp = summary["expected"]
    lines.append(f"wrote DISFA+ twin {summary['out']} in {summary['seconds']:.1f} s: "
                 f"{exp['sequences']} trials, {exp['labelled_frames']} frames in all 12 AU files")
    return lines
