"""Export a trained checkpoint to ONNX (dynamic batch, metadata included).

    python -m model.export --checkpoint runs/fold1/best.pt --out model.onnx
    python -m model.predict --checkpoint model.onnx --backend onnx --video clip.mp4 --out preds/

The command: it parses options and calls ``model.inference.onnx_export.export_onnx``. Needs the
optional extra ``pip install 'tranet-au[onnx]'`` (onnx, onnxruntime).
"""
from __future__ import annotations

import argparse
import logging
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Sequence

from pipeline.cli import CommandError, HelpFormatter, check_out_dir, int_range

from .cli import handle_errors
from pipeline.folder_lock import FolderLock

from .inference.onnx_export import DEFAULT_OPSET, MAX_OPSET, MIN_OPSET, export_onnx

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
    return parser


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
    try:
        import onnx  # noqa: F401  (export_onnx needs it; checked before the slow part)
    except ImportError as err:
        raise CommandError(f"ONNX export needs the onnx package (pip install "
                           f"'tranet-au[onnx]'): {err}") from err
    # One writer per output file: its lock beside it (check_out_file made sure the folder is
    # writable); a file another run finished meanwhile is not overwritten without --force.
    lock = FolderLock.for_file(out) if out.parent.is_dir() else nullcontext()
    with lock:
        if out.exists() and not args.force:
            raise CommandError(f"--out {out}: exists; --force overwrites it")
        meta = export_onnx(args.checkpoint, out, args.opset)
    log.info("wrote %s (%d AUs, input %dx%d uint8 RGB)", out, len(meta["au_ids"]),
             meta["image_size"], meta["image_size"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
