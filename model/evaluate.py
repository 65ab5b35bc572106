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
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from .checkpoint import CheckpointError, check_compatible, load_checkpoint, load_for_inference
from .data import (DataError, ShardFrames, check_consistent, collate_frames, fold_spec,
                   open_shards)
from .records import markdown_table, write_csv, write_json
from .train import evaluate, protocol_note

log = logging.getLogger("model.evaluate")


def evaluate_checkpoint(
    checkpoint: Path | str,
    shards: Path | str,
    manifest: Path | str,
    fold: int | None = None,
    *,
    split: str = "test",
    variant: str | None = None,
    batch_size: int = 128,
    workers: int = 0,
    device: str = "cpu",
    cameras: Sequence[str] = ("left",),
) -> dict[str, Any]:
    """Metrics of one checkpoint on one fold's ``split`` subjects, with the protocol it used.

    Checks before evaluating: the checkpoint is readable and of ``variant`` (if given), it
    predicts the manifest's AUs, and the shards agree with the manifest and with the
    checkpoint's input geometry.
    """
    checkpoint = Path(checkpoint)
    state = load_checkpoint(checkpoint)
    fold = int(fold if fold is not None else state["data"].get("fold", 0))
    spec = fold_spec(manifest, fold)
    check_compatible(state, checkpoint, variant=variant, au_ids=spec.au_ids)
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be train, val or test, got {split!r}")
    subjects = spec.subjects[split]
    if not subjects:
        raise DataError(f"{spec.manifest} fold {fold}: no {split} subjects")
    readers = open_shards(shards, subjects, cameras, f"{spec.manifest} fold {fold}")
    geometry = check_consistent(readers, spec)
    data = state["data"]
    size = int(data["image_size"])
    scale = size / geometry["image_size"]
    for key in ("nose_target", "chin_target"):
        if key in data and not np.allclose(np.asarray(geometry[key]) * scale, data[key], atol=0.5):
            raise DataError(f"{readers[0].path}: aligned {key} {geometry[key]} (at "
                            f"{geometry['image_size']} px) does not match {checkpoint}'s "
                            f"{data[key]} (at {size} px); realign the frames as the model was "
                            "trained")
    threshold = int(data.get("threshold", spec.threshold))
    dataset = ShardFrames(readers, spec.au_ids, threshold, size)
    if len(dataset) == 0:
        raise DataError(f"{spec.manifest} fold {fold}: the {split} subjects {subjects} have no frames")
    if split != "test":
        log.info("evaluating on the %s split of fold %d", split, fold)

    model, meta = load_for_inference(checkpoint, device=device, state=state)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                        collate_fn=collate_frames)
    train_cfg = meta.get("train_config", {})
    metrics = evaluate(model, loader, torch.device(device), list(spec.au_ids),
                       channels_last=False, desc=f"fold {fold} {split}",
                       quiet=not sys.stderr.isatty())
    select_on = train_cfg.get("select_on", "val")
    return {
        "checkpoint": str(checkpoint), "fold": fold, "split": split, "subjects": subjects,
        "variant": meta["model_config"].get("variant"), "epoch": meta.get("epoch"),
        "threshold": threshold, "select_on": select_on,
        "protocol": protocol_note(select_on, threshold), "metrics": metrics.as_dict(),
    }


def mean_over_folds(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Unweighted mean of per-fold F1/accuracy (the papers' convention)."""
    f1 = np.mean([r["metrics"]["f1"] for r in results], axis=0)
    acc = np.mean([r["metrics"]["accuracy"] for r in results], axis=0)
    return {"au_ids": results[0]["metrics"]["au_ids"], "f1": f1.tolist(), "accuracy": acc.tolist(),
            "mean_f1": float(f1.mean()), "mean_accuracy": float(acc.mean()),
            "folds": [r["fold"] for r in results]}


def _pct(values: Sequence[float]) -> list[str]:
    return [f"{100 * v:.1f}" for v in values]


def results_rows(results: Sequence[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """One F1 row and one accuracy row per fold, plus the mean over folds."""
    aus = results[0]["metrics"]["au_ids"]
    header = ["fold", "metric", *[f"AU{a}" for a in aus], "Avg"]
    rows = []
    for r in results:
        m = r["metrics"]
        rows.append([r["fold"], "F1", *_pct(m["f1"]), f"{100 * m['mean_f1']:.1f}"])
        rows.append([r["fold"], "accuracy", *_pct(m["accuracy"]), f"{100 * m['mean_accuracy']:.1f}"])
    if len(results) > 1:
        mean = mean_over_folds(results)
        rows.append(["mean", "F1", *_pct(mean["f1"]), f"{100 * mean['mean_f1']:.1f}"])
        rows.append(["mean", "accuracy", *_pct(mean["accuracy"]),
                     f"{100 * mean['mean_accuracy']:.1f}"])
    return header, rows


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
                   help="folder for evaluation.{json,csv,md} (default: the first checkpoint's)")
    p.add_argument("--batch-size", type=int, default=128, help="frames per forward pass")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--cameras", nargs="+", default=["left"], choices=["left", "right"],
                   help="cameras whose shards are evaluated")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.fold is not None and len(args.fold) != len(args.checkpoint):
        log.error("give one --fold per --checkpoint (%d folds, %d checkpoints)",
                  len(args.fold), len(args.checkpoint))
        return 1
    folds = args.fold or [None] * len(args.checkpoint)
    results = []
    try:
        for ckpt, fold in zip(args.checkpoint, folds):
            results.append(evaluate_checkpoint(
                ckpt, args.shards, args.manifest, fold, split=args.split, variant=args.variant,
                batch_size=args.batch_size, workers=args.workers, device=args.device,
                cameras=args.cameras))
    except (DataError, CheckpointError, ValueError) as err:
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
    out = Path(args.out) if args.out else Path(args.checkpoint[0]).parent
    out.mkdir(parents=True, exist_ok=True)
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
