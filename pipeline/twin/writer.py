"""Writing the twin in the release's layout: videos, label files, landmark .mat files and the
error log, one subject at a time (in parallel), then ``synth_truth.json``."""
from __future__ import annotations

import csv
import io
import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import scipy.io

from ..datasets.disfa import facts as disfa
from ..datasets.disfa.facts import ALL_AUS, SUBJECTS
from .config import (ERROR_LOG, LABEL_DIR, LANDMARK_DIR, LEFT_DIR, PARTS_DIR, RIGHT_DIR,
                     SYNTH_VERSION, TMP_DIR, TRUTH_JSON, SubjectPlan, SynthConfig, plan_subjects)
from .episodes import au_schedule, corrupt_landmarks, pose_track
from .face_render import background_image, noise_bank, render_frame
from .face_shape import Identity, Pose, face_shape, sample_identity

log = logging.getLogger("pipeline.synth")  # the command's name, as before the split


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
    _atomic_write(out / TRUTH_JSON, json.dumps(_truth(summary), indent=1,
                                               sort_keys=True).encode())
    return summary


def _truth(summary: dict) -> dict:
    """The summary less what varies between identical runs (timings, jobs, preview)."""
    truth = dict(summary)
    truth.pop("seconds")
    truth.pop("frames_per_second")
    truth["subjects"] = {s: {k: v for k, v in r.items() if k not in ("seconds",
                                                                       "frames_per_second")}
                         for s, r in summary["subjects"].items()}
    truth["config"] = {k: v for k, v in truth["config"].items() if k not in ("jobs", "preview")}
    return truth


# --------------------------------------------------------------------------- preview

