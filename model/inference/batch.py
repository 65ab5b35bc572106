"""Batch runs of ``model.predict``: which inputs, one job each, in parallel, resumable.

Inputs: ``--video`` takes video files, folders (searched recursively for ``--glob`` or common
video endings) and list files (``.txt``/``.lst``: one path a line, ``#`` comments, relative to
the list); ``--images`` takes folders (every folder holding images is one sequence, one CSV)
and loose image files (one CSV together). A rerun skips inputs whose CSV is complete (its
sidecar says so) unless ``--force``; a failed input does not stop the others.
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Iterable

import cv2
import numpy as np
import torch

from ..evaluation.optional_plots import warn_no_plots
from .output import (au_name, draw_banner, draw_overlay, save_bar_plot, save_image_chart,
                     save_timeline_plot, write_table)
from . import workers
from .backends import default_network_threads
from .naming import (fingerprint, owner_path, prepare_parent, relative_name, resume_state,
                     settle_clashes)
from .predictor import AUPredictor, FaceRow, PredictConfig
from .video_io import IMAGE_SUFFIXES, ImageFrames, InputError, OverlayVideoWriter, VideoFrames

log = logging.getLogger(__name__)

SUMMARY_NAME = "predict_summary.json"
VIDEO_SUFFIXES = frozenset({".avi", ".mp4", ".mov", ".mkv", ".m4v", ".webm", ".mpg", ".mpeg",
                            ".wmv", ".flv"})
LIST_SUFFIXES = frozenset({".txt", ".lst"})


@dataclass
class Job:
    kind: str            # "video" | "images"
    name: str            # output path inside OUT without ".csv" (POSIX; may hold folders)
    source: Path         # the video, the directory, or the first loose image
    files: list[Path] = field(default_factory=list)

    def fingerprint(self) -> dict[str, Any] | None:
        return fingerprint(self.source, self.files)


def _read_list(path: Path) -> list[Path]:
    """The paths a list file names; :class:`InputError` for a file that is not a text list."""
    data = path.read_bytes()
    try:
        if b"\0" in data:
            raise UnicodeDecodeError("utf-8", data, data.index(b"\0"), data.index(b"\0") + 1,
                                     "NUL byte")
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise InputError(f"{path}: not a text list of paths (binary bytes at offset {err.start}); "
                         "a list file holds one path a line") from None
    lines = [line.strip() for line in text.splitlines()]
    return [(path.parent / line) if not Path(line).is_absolute() else Path(line)
            for line in lines if line and not line.startswith("#")]


def check_glob(glob: str | None) -> None:
    """``--glob`` is matched inside each folder: a path (absolute, or climbing out) is refused."""
    if glob is not None and (Path(glob).is_absolute() or ".." in Path(glob).parts or not glob):
        raise InputError(f"--glob {glob!r}: must be a file pattern matched inside the given "
                         "folders, such as '*.mp4' or 'day*/*.avi', not a path")


def expand_videos(paths: Iterable[Path], glob: str | None) -> list[Path]:
    """Video files from files, folders (recursive) and list files, in the order given."""
    return [video for video, _ in _video_inputs(paths, glob)]


def _video_inputs(paths: Iterable[Path], glob: str | None,
                  lists: tuple[Path, ...] = (), root: Path | None = None
                  ) -> list[tuple[Path, Path | None]]:
    """``(video, root)``: each video with the folder its output name is relative to (the folder
    searched, or a list file's folder; none for a file named directly)."""
    check_glob(glob)
    found: list[tuple[Path, Path | None]] = []
    for path in map(Path, paths):
        if path.is_dir():
            pattern = glob or "*"
            found += [(p, path) for p in sorted(path.rglob(pattern)) if p.is_file()
                      and (glob or p.suffix.lower() in VIDEO_SUFFIXES)]
        elif path.suffix.lower() in LIST_SUFFIXES and path.is_file():
            if path.resolve() in lists:   # a list naming itself, directly or through others
                chain = " -> ".join(str(p) for p in (*lists, path.resolve()))
                raise InputError(f"{path}: list file names itself ({chain})")
            found += _video_inputs(_read_list(path), glob, (*lists, path.resolve()), path.parent)
        else:
            found.append((path, root))  # missing files fail later, the others still processed
    return found


def _image_folders(root: Path, glob: str | None) -> list[tuple[Path, list[Path]]]:
    """Every folder under ``root`` (itself included) that holds images, with its images."""
    folders: dict[Path, list[Path]] = {}
    check_glob(glob)
    for p in sorted(root.rglob(glob or "*")):
        if p.is_file() and (glob or p.suffix.lower() in IMAGE_SUFFIXES):
            folders.setdefault(p.parent, []).append(p)
    return sorted(folders.items())


def plan_jobs(cfg: PredictConfig) -> list[Job]:
    """One job per video, per image folder, and one for all loose image files, each named by
    its input's path (see :mod:`model.inference.naming`)."""
    jobs = [Job("video", relative_name(p, root), p) for p, root in _video_inputs(cfg.videos,
                                                                                 cfg.glob)]
    loose = [p for p in cfg.images if not p.is_dir()]
    for root in (p for p in cfg.images if p.is_dir()):
        folders = _image_folders(root, cfg.glob)
        top = root.resolve().name or "images"
        if not folders:
            jobs.append(Job("images", top, root, []))
        for folder, files in folders:
            name = PurePosixPath(top, *folder.relative_to(root).parts).as_posix()
            jobs.append(Job("images", name, folder, files))
    if loose:
        stem = cfg.images_name or (loose[0].stem if len(loose) == 1 else "images")
        if Path(stem).is_absolute() or ".." in Path(stem).parts:
            raise InputError(f"--images-name {stem!r}: must be a name inside --out, not a path "
                             "out of it")
        jobs.append(Job("images", stem, loose[0], loose))
    names = settle_clashes([j.name for j in jobs], [j.source for j in jobs], cfg.out)
    for job, name in zip(jobs, names):
        job.name = name
    return jobs


def _open_frames(job: Job, cfg: PredictConfig) -> tuple[Any, int | None, dict[str, Any]]:
    if job.kind == "video":
        source = VideoFrames(job.source, default_fps=cfg.fps or 30.0, max_pixels=cfg.max_pixels)
        return source, source.declared_frames, {"video_fps": source.fps, "width": source.width,
                                                 "height": source.height}
    if not job.files:
        raise InputError(f"{job.source}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return ImageFrames(job.files, fps=cfg.fps, max_pixels=cfg.max_pixels), len(job.files), {}


class _Overlay:
    """``--overlay``: each frame drawn with its faces into a video or a folder of JPEGs."""

    def __init__(self, predictor: AUPredictor, job: Job, source: Any, out: Path) -> None:
        self.au_ids, self.threshold = predictor.au_ids, predictor.threshold
        self.has_occurrence = predictor.has_occurrence
        self.label_faces = predictor.cfg.faces == "all"
        # a twin model's overlay says so on every frame: frames get shown without their sidecar
        self.banner = "TWIN-TRAINED MODEL: meaningless on real faces" \
            if predictor.card.trained_on_twin else None
        self.writer = self.folder = None
        if job.kind == "video":
            self.writer = OverlayVideoWriter(out / f"{job.name}_overlay.avi", source.fps,
                                             (source.width, source.height))
            self.path = self.writer.path
        else:
            self.folder = self.path = out / f"{job.name}_overlay"
            self.folder.mkdir(parents=True, exist_ok=True)

    def __call__(self, rows: list[FaceRow]) -> None:
        picture = rows[0].frame.image
        found = [row for row in rows if row.found is not None]
        if not found:  # a tracked face lost in this frame is no reason to say "no face"
            picture = draw_overlay(picture, None, None, None, self.au_ids)
        for row in found:
            probabilities = row.probabilities if self.has_occurrence else None
            decisions = None if probabilities is None else probabilities >= self.threshold
            picture = draw_overlay(picture, row.found.face, probabilities, decisions, self.au_ids,
                                   face_id=row.face_id if self.label_faces else None)
        if self.banner is not None:
            picture = draw_banner(picture, self.banner)  # a copy: draw_overlay made one
        if self.writer is not None:
            self.writer.write(picture)
        else:
            target = self.folder / f"{Path(rows[0].frame.name).stem}.jpg"
            cv2.imwrite(str(target), cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))

    def close(self, keep: bool) -> None:
        if self.writer is not None:
            self.writer.close(keep=keep)


def _plot(predictor: AUPredictor, table: Any, job: Job, out: Path) -> Path:
    p_cols = [f"{au_name(a)}_p" for a in predictor.au_ids]
    if job.kind == "images" and len(table) == 1:   # one image, one face: a bar chart
        return save_bar_plot(out / f"{job.name}_bars.png",
                             table.reindex(columns=p_cols).to_numpy(float)[0],
                             predictor.au_ids, predictor.threshold, predictor.card.title(job.name))
    if job.kind == "images":   # unrelated stills: one bar group per image (per face)
        return save_image_chart(out / f"{job.name}_images.png", _image_labels(table, predictor),
                                table.reindex(columns=p_cols).to_numpy(float), predictor.au_ids,
                                predictor.threshold,
                                predictor.card.title(f"{job.name}: {len(table)} image(s)/face(s)"))
    first = table.sort_values(["frame", "face_id"]).drop_duplicates("frame")
    stamps = first["timestamp"].to_numpy(float)
    use_time = bool(np.isfinite(stamps).all()) and len(stamps) > 0
    r_cols = [f"{au_name(a)}_r" for a in predictor.au_ids]
    intensities = (first.reindex(columns=r_cols).to_numpy(float)
                   if any(c in first.columns for c in r_cols) else None)
    return save_timeline_plot(
        out / f"{job.name}_timeline.png", stamps if use_time else first["frame"].to_numpy(),
        first.reindex(columns=p_cols).to_numpy(float), predictor.au_ids, predictor.threshold,
        "time (s)" if use_time else "frame",
        predictor.card.title(f"{job.name}: {int(first['face_found'].sum())}/{len(first)} "
                             "frames with a face"),
        intensities=intensities)


def _image_labels(table: Any, predictor: AUPredictor) -> list[str]:
    """Each row's image file name, with its face_id under ``--faces all``."""
    names = (table["file"].astype(str) if "file" in table.columns
             else table["frame"].astype(str)).tolist()
    if predictor.cfg.faces != "all":
        return names
    return [f"{n} #{i}" if found else f"{n} (no face)"
            for n, i, found in zip(names, table["face_id"], table["face_found"])]


def run_job(predictor: AUPredictor, job: Job, cfg: PredictConfig) -> dict[str, Any]:
    """One input -> its CSV (+ sidecar, plot, overlay); the result row of the summary."""
    csv_path = cfg.out / f"{job.name}.csv"
    result: dict[str, Any] = {"input": str(job.source), "kind": job.kind, "csv": str(csv_path)}
    current = job.fingerprint()
    if _skipped(job, csv_path, current, cfg):
        return {**result, "status": "skipped"}
    prepare_parent(csv_path)
    source, total, info = _open_frames(job, cfg)
    result.update(info)
    overlay = _Overlay(predictor, job, source, cfg.out) if cfg.overlay else None
    ok = False
    try:
        # Images are usually unrelated stills: each searched whole, down to --min-face.
        table, stats = predictor.run_sequence(source, total, job.name, overlay,
                                              still=job.kind == "images")
        if stats["frames"] == 0:
            raise InputError(f"{job.source}: no frame could be read")
        write_table(table, csv_path, {"input": str(job.source), "source": current,
                                      **predictor.describe(), "frames": stats["frames"]},
                    cfg.csv_format)
        ok = True
    finally:
        if isinstance(source, VideoFrames):
            source.close()
        if overlay is not None:
            overlay.close(keep=ok)
    result.update(status="ok", **stats)
    if overlay is not None:
        result["overlay"] = str(overlay.path)
    if job.kind == "images" and source.failures:
        result["bad_files"] = [{"file": str(p), "error": e} for p, e in source.failures]
        result["status"] = "partial"
    if cfg.plot:
        try:
            result["plot"] = str(_plot(predictor, table, job, cfg.out))
        except ImportError as err:  # no matplotlib: one warning, the CSV stands
            warn_no_plots(log, err)
    return result


def _skipped(job: Job, csv_path: Path, current: dict[str, Any] | None,
             cfg: PredictConfig, quiet: bool = False) -> bool:
    """Whether a rerun leaves this input's CSV as it is (logging why, unless ``quiet``)."""
    if not cfg.skip_existing:
        return False
    state = resume_state(csv_path, current)
    if state == "stale" and cfg.keep_changed and current is not None \
            and owner_path(csv_path) == current["path"]:
        state = "changed"   # --skip-existing: this very input's CSV, from an older version
    if quiet or state == "missing":
        return state in ("done", "foreign", "changed")
    if state == "done":
        log.info("%s: %s is complete, skipped (--force redoes it)", job.source, csv_path)
    elif state == "foreign":  # our writes are atomic: a CSV without its sidecar is someone else's
        log.warning("%s: %s exists but was not written by a finished model.predict run; "
                    "left alone (--force overwrites it)", job.source, csv_path)
    elif state == "changed":
        log.info("%s: %s was made from an older version of this input; kept (--skip-existing)",
                 job.source, csv_path)
    else:
        log.info("%s: %s was made from another input or an older version of this one; redone",
                 job.source, csv_path)
    return state in ("done", "foreign", "changed")


def _safe_run(predictor: AUPredictor, job: Job, cfg: PredictConfig) -> dict[str, Any]:
    try:
        return run_job(predictor, job, cfg)
    except (InputError, OSError) as err:
        log.error("%s", err)
        return {"input": str(job.source), "kind": job.kind, "status": "failed",
                "error": str(err)}


_WORKER: AUPredictor | None = None


def _worker_init(cfg: PredictConfig, threads: int, notices: Any) -> None:
    global _WORKER
    workers.worker_setup(notices)
    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    _WORKER = AUPredictor(cfg)


def _worker_run(job: Job) -> dict[str, Any]:
    assert _WORKER is not None
    workers.report_start(job.name)
    return _safe_run(_WORKER, job, _WORKER.cfg)


def _lost(job: Job, reason: str) -> dict[str, Any]:
    return {"input": str(job.source), "kind": job.kind, "status": "failed", "error": reason}


def _run_parallel(cfg: PredictConfig, jobs: list[Job]) -> list[dict[str, Any]]:
    """``--jobs N``: N worker processes, each with its own loaded network and face finder; a
    worker that dies fails only the input it was processing."""
    threads = max(1, (cfg.threads or default_network_threads()) // cfg.jobs)
    worker_cfg = PredictConfig(**{**cfg.__dict__, "progress": False})
    names = [j.name for j in jobs]
    done = workers.run_pool(names, jobs, _worker_run, cfg.jobs, _worker_init,
                            (worker_cfg, threads), _lost)
    return [done[name] for name in names]


def run_predict(cfg: PredictConfig) -> dict[str, Any]:
    """Predict every input of ``cfg``; one failed input does not stop the others.

    Returns the summary (also written to ``OUT/predict_summary.json``); ``summary["failed"]``
    counts inputs that failed entirely or in part. A checkpoint or predictor problem raises
    (:class:`CheckpointError`, :class:`PredictorNotFoundError`): nothing could run.
    """
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads or default_network_threads())
    try:
        predictor = AUPredictor(cfg)
        cfg.out.mkdir(parents=True, exist_ok=True)
        jobs = plan_jobs(cfg)
        start = time.perf_counter()
        todo = [j for j in jobs
                if not _skipped(j, cfg.out / f"{j.name}.csv", j.fingerprint(), cfg, quiet=True)]
        if cfg.jobs > 1 and len(todo) > 1:
            done = dict(zip((j.name for j in todo), _run_parallel(cfg, todo)))
            results = [done.get(j.name) or _safe_run(predictor, j, cfg) for j in jobs]
        else:
            results = [_safe_run(predictor, job, cfg) for job in jobs]
        elapsed = time.perf_counter() - start
    finally:
        torch.set_num_threads(previous_threads)
    return _write_summary(cfg, predictor, results, elapsed)


def _write_summary(cfg: PredictConfig, predictor: AUPredictor, results: list[dict[str, Any]],
                   elapsed: float) -> dict[str, Any]:
    frames = sum(r.get("frames", 0) for r in results if r["status"] != "skipped")
    summary = {
        "config": cfg.to_json(),
        "checkpoint": {k: v for k, v in predictor.meta.items() if k != "train_config"},
        "meaning": predictor.describe(),
        "decision_threshold": np.asarray(predictor.threshold).tolist(),
        "preprocess": predictor.preprocess.describe(),
        "au_columns": [au_name(a) for a in predictor.au_ids],
        "inputs": results,
        "frames": frames,
        "faces_found": sum(r.get("faces_found", 0) for r in results),
        "seconds": round(elapsed, 3),
        "processing_fps": round(frames / elapsed, 2) if elapsed > 0 and frames else None,
        "failed": sum(r["status"] in ("failed", "partial") for r in results),
        # the network's intra-op threads in this process (--threads, else the backend's default)
        "threads": getattr(predictor.backend, "threads", None),
    }
    path = cfg.out / SUMMARY_NAME
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(summary, indent=2, default=str))
    os.replace(tmp, path)
    return summary
