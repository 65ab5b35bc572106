"""Evaluate trained checkpoints on a fold's held-out subjects.

    python -m model.evaluate --checkpoint runs/fold1/best.pt --shards SHARDS --manifest FOLDS --fold 1
    python -m model.evaluate --checkpoint runs/fold{1,2,3}/best.pt --shards SHARDS --manifest FOLDS

Per AU: sigmoid >= 0.5, TP/FP/TN/FN pooled over every frame of every test subject of the fold,
F1 and accuracy, and their unweighted means. With one checkpoint per fold, the table also gives
the mean over folds (how the papers report DISFA). Labels use the threshold the checkpoint was
trained with, re-derived from the shards' raw intensities; every report names that threshold
and how the model was selected.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Sequence


from pipeline.cli import CommandError, check_out_dir, int_range, remove_stale_temp_files

from .cli import device_arg, handle_errors
from .engine.checkpoint import CheckpointError
from .engine.data import DataError
from .engine.evaluator import evaluate_checkpoint, mean_over_folds, results_rows  # noqa: F401
from .evaluation.records import markdown_table, write_csv, write_json

log = logging.getLogger("model.evaluate")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m model.evaluate",
                                description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", nargs="+", required=True,
                   help="best.pt of one run, or one per fold")
    p.add_argument("--shards", required=True, help="folder of aligned shards")
    p.add_argument("--manifest", required=True, help="folds.json")
    p.add_argument("--fold", type=int, nargs="+", default=None,
                   help="fold of each checkpoint (default: the fold each was trained on)")
    p.add_argument("--split", default="test", choices=["test", "val", "train"])
    p.add_argument("--variant", default=None,
                   help="refuse checkpoints of any other variant (e.g. tranet)")
    p.add_argument("--out", default=None,
                   help="folder for evaluation_<split>.{json,csv,md} (default: the first checkpoint's)")
    p.add_argument("--batch-size", type=int_range(1), default=128, help="frames per forward pass")
    p.add_argument("--workers", type=int_range(0), default=None,
                   help="DataLoader worker processes (default: from the CPU count, at most 8)")
    p.add_argument("--device", type=device_arg, default="auto",
                   help="auto (cuda when torch sees one, else cpu), cpu, cuda or cuda:N")
    p.add_argument("--amp", default="auto", choices=["auto", "on", "off"],
                   help="mixed precision (model.engine.precision); auto = as the run was trained")
    p.add_argument("--allow-seen", action="store_true",
                   help="evaluate even on subjects the checkpoint was trained or selected on "
                        "(refused without it; the report then says so)")
    p.add_argument("--cameras", nargs="+", default=["left"], choices=["left", "right"],
                   help="cameras whose shards are evaluated")
    return p


@handle_errors("model.evaluate")
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.fold is not None and len(args.fold) != len(args.checkpoint):
        log.error("give one --fold per --checkpoint (%d folds, %d checkpoints)",
                  len(args.fold), len(args.checkpoint))
        return 1
    folds = args.fold or [None] * len(args.checkpoint)
    out = Path(args.out) if args.out else Path(args.checkpoint[0]).parent
    if args.out:
        check_out_dir(out)
    results = []
    try:
        for ckpt, fold in zip(args.checkpoint, folds):
            results.append(evaluate_checkpoint(
                ckpt, args.shards, args.manifest, fold, split=args.split, variant=args.variant,
                batch_size=args.batch_size, workers=args.workers, device=args.device,
                cameras=args.cameras, amp=None if args.amp == "auto" else args.amp == "on",
                allow_seen=args.allow_seen))
    except (DataError, CheckpointError) as err:
        raise CommandError(str(err)) from err
    except ValueError as err:
        log.error("%s", err)
        return 1
    variants = {r["variant"] for r in results}
    if len(variants) > 1:
        log.error("checkpoints of different variants %s cannot be averaged; pass --variant",
                  sorted(variants))
        return 1
    notes = sorted({r["protocol"] for r in results})
    header, rows = results_rows(results)
    summary = {"split": args.split, "protocol": notes, "results": results,
               "mean_over_folds": mean_over_folds(results) if len(results) > 1 else None}
    remove_stale_temp_files(check_out_dir(out))
    stem = f"evaluation_{args.split}"
    write_json(out / f"{stem}.json", summary)
    write_csv(out / f"{stem}.csv", ["protocol", *header], [[" / ".join(notes), *r] for r in rows])
    text = (f"# Evaluation on the {args.split} subjects ({results[0]['variant']})\n\n"
            + "\n".join(f"Protocol: {n}" for n in notes) + "\n\n" + markdown_table(header, rows)
            + "\n")
    (out / f"{stem}.md").write_text(text)
    print(text)
    print(f"saved {out / stem}.{{json,csv,md}}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
