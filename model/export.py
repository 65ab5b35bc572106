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

from pipeline.cli import FailureError, HelpFormatter
from pipeline.folder_lock import FolderLock
from .engine.checkpoint import CheckpointError

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
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset version")
    parser.add_argument("--force", action="store_true", help="overwrite an existing --out file")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.out.exists() and not args.force:
        log.error("%s exists; --force overwrites it", args.out)
        return 2
    try:
        from .inference.onnx_export import export_onnx

        # One writer per output file (its lock beside it, where the folder exists).
        lock = FolderLock.for_file(args.out) if args.out.parent.is_dir() else nullcontext()
        with lock:
            if args.out.exists() and not args.force:  # written by a run that just finished
                log.error("%s exists; --force overwrites it", args.out)
                return 2
            meta = export_onnx(args.checkpoint, args.out, args.opset)
    except FailureError as err:  # a live writer of the same file
        log.error("%s", err)
        return err.exit_code
    except ImportError as err:
        log.error("ONNX export needs the onnx package (pip install 'tranet-au[onnx]'): %s", err)
        return 2
    except CheckpointError as err:
        log.error("%s", err)
        return 2
    log.info("wrote %s (%d AUs, input %dx%d uint8 RGB)", args.out, len(meta["au_ids"]),
             meta["image_size"], meta["image_size"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
