"""End-to-end demo on the synthetic DISFA twin (no licensed data needed).

    python -m model.demo --out runs/demo

Runs the whole chain the real data takes, on a small twin made on the spot:

1. synthesize a DISFA twin (``pipeline.synth``; release layout, quirks and Error_LOG included),
2. align it into shards (``pipeline.align``, dropping the frames the twin's Error_LOG lists),
3. build subject-independent folds with validation subjects (``pipeline.build_folds``, kfold),
4. train the small CPU preset of TRA-Net from scratch on each fold (``model.train --task both``:
   occurrence and 0-5 intensity from one model; early stopping on the validation subjects), the
   folds side by side in separate processes (``--train-jobs``; on a CPU this small model keeps one
   thread as busy as two, so three folds at once on two cores finish well before three in turn),
   with each fold's frames decoded into memory once (``model.train --cache-frames-mb``'s
   default budget),
5. evaluate each best.pt on its fold's held-out test subjects (``model.evaluate``) and print the
   occurrence table and the intensity table (ICC(3,1), Pearson r, MAE) with the mean over folds,
6. run ``model.predict`` with that checkpoint on the raw videos of some of those test subjects
   (dlib finds the faces and landmarks, as on a user's own recording; no AAM landmarks) and
   score its CSV (``AUxx_c`` decisions and ``AUxx_r`` intensities) against the twin's labels:
   the numbers a user of ``model.predict`` gets.

The defaults (27 subjects x 200 frames, 3 folds) take about six minutes on two idle CPU cores
and reach a mean F1 above 0.9 on the held-out subjects, through the shards and through
``model.predict`` alike. Every stage resumes: rerunning the
command reuses what is already there; a folder made with other settings is refused, naming them
(``--fresh`` starts over).
Wall times per stage and the result go to ``OUT/demo_summary.json`` and ``OUT/demo.md``.

``--dataset bp4d`` runs the chain on a BP4D twin instead (``model.demo_datasets``: JAA
alignment, BP4D's 12 AUs, occurrence only, no ``model.predict`` stage; docs/bp4d.md).

The demo trains with the ``cpu-demo`` recipe (``model/recipes/cpu-demo.json``, also
``model.train --recipe cpu-demo``), which departs from the paper's recipe where a from-scratch CPU
model needs it: a higher learning rate with cosine decay (0.05 instead of a constant 0.001, which
assumes a pretrained backbone), 32 epochs at most, 64-pixel frames, and alignment jitter
(``model.augment``), without which the model trained on AAM-aligned frames loses much of its F1
on dlib-aligned ones. A training run recorded with other settings is refused, not reused. The labels keep the toolkit's default threshold
(intensity >= 3).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from pipeline.cli import HelpFormatter, int_range
from .cli import CommandError, handle_errors
from .engine.run_folder import RunFolder
from .demo_datasets import (DEMO_RECIPE, add_dataset_options, default_help, prepare_bp4d,
                            resolve_dataset_options)
from .demo_predict import predict_and_score
from .demo_report import (build_report, demo_markdown, print_intensity_summary,
                          print_occurrence_summary)

log = logging.getLogger("model.demo")


#: The training recipe of the demo (model/recipes/cpu-demo.json); its settings are the defaults
#: of the demo's training options.
RECIPE = DEMO_RECIPE


def build_parser() -> argparse.ArgumentParser:
    from .engine.recipes import load_recipe

    r = load_recipe(RECIPE).settings
    p = argparse.ArgumentParser(prog="python -m model.demo", description=__doc__.split("\n\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--out", type=Path, required=True,
                   help="demo folder: disfa_twin/ (or bp4d_twin/), shards/, folds.json, runs/, "
                        "demo.md")
    twin = add_dataset_options(p)
    twin.add_argument("--seed", type=int, default=0, help="twin, folds and training seed")
    pipe = p.add_argument_group("pipeline")
    pipe.add_argument("--size", type=int, default=r["image_size"],
                      help="aligned frame size (the network's input size too)")
    pipe.add_argument("--k", type=int, default=3, help="number of kfold folds")
    pipe.add_argument("--val-subjects", type=int, default=2,
                      help="validation subjects held out of each fold's training subjects")
    pipe.add_argument("--folds", type=int, nargs="+", default=None,
                      help="folds to train and evaluate (default: all --k folds; each fold is "
                           "one training run, trained side by side with the others, see "
                           "--train-jobs)")
    tr = p.add_argument_group(f"training (defaults: the {RECIPE} recipe, model/recipes/{RECIPE}.json)")
    tr.add_argument("--epochs", type=int, default=None,
                    help="maximum epochs " + default_help("epochs"))
    tr.add_argument("--patience", type=int, default=None,
                    help="early stopping on the validation subjects " + default_help("patience"))
    tr.add_argument("--batches-per-epoch", type=int, default=r["batches_per_epoch"],
                    help="optimiser steps that make one epoch")
    tr.add_argument("--batch-size", type=int, default=r["batch_size"],
                    help="frames per optimiser step")
    tr.add_argument("--lr", type=float, default=r["lr"], help="SGD learning rate (from scratch)")
    tr.add_argument("--lr-schedule", default=r["lr_schedule"], choices=["constant", "cosine"],
                    help="cosine decay to 0 over --epochs, or constant (the paper)")
    tr.add_argument("--jitter-scale", type=float, default=r["jitter_scale"],
                    help="alignment jitter: scale 1 +- this (0 = the paper's recipe)")
    tr.add_argument("--jitter-degrees", type=float, default=r["jitter_degrees"],
                    help="alignment jitter: rotation +- degrees")
    tr.add_argument("--jitter-shift", type=float, default=r["jitter_shift"],
                    help="alignment jitter: shift +- this fraction of the frame size")
    tr.add_argument("--task", default=None, choices=["occurrence", "intensity", "both"],
                    help="what the model learns (model.train --task): both = occurrence and "
                         "0-5 intensity from one model; bp4d: occurrence only "
                         + default_help("task"))
    p.add_argument("--predict-subjects", type=int, default=None,
                   help="test subjects per fold whose videos go through model.predict (0: skip; "
                        "disfa only) " + default_help("predict_subjects"))
    p.add_argument("--jobs", type=int, default=2, help="processes for synthesis and alignment")
    p.add_argument("--train-jobs", type=int_range(1), default=None,
                   help="folds trained at once, each in its own process with its share of the "
                        "threads (default: every fold asked for; 1 trains them one after another). "
                        "On a CPU the small model keeps one thread as busy as two, so folds side "
                        "by side finish sooner than folds in turn")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads in all (None: one per core)")
    p.add_argument("--fresh", action="store_true",
                   help="start over: replace OUT (only a demo folder this tool made) once every "
                        "option is checked")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


class DemoInterrupted(RuntimeError):
    """A stage was stopped (Ctrl-C / SIGTERM) after saving its state; rerun to continue."""


class Stopwatch:
    """Wall time per stage, in order; ``planned`` stages in all (for "stage k of N")."""

    def __init__(self, planned: int = 0) -> None:
        self.stages: dict[str, float] = {}
        self.planned = planned
        self._start = time.perf_counter()

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        k = len(self.stages) + 1
        log.info("== stage %d of %d: %s (%.0fs so far)", k, max(self.planned, k), name,
                 time.perf_counter() - self._start)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.stages[name] = round(time.perf_counter() - t0, 2)

    @property
    def total(self) -> float:
        return round(time.perf_counter() - self._start, 2)


def run_demo(args: argparse.Namespace) -> dict[str, Any]:
    """Every stage in order (each resumes), OUT locked; returns the report also written to OUT."""
    out: Path = args.out
    resolve_dataset_options(args)
    check_demo_options(args)  # every option is checked before anything is touched
    with RunFolder(out, "model.demo", fresh=args.fresh, legacy_files=DEMO_FILES) as folder:
        # A --fresh demo starts beside the old one; the swap comes once its settings are written
        # (the stages record paths, so they run in OUT itself).
        check_demo_settings(folder.path, args)
        folder.commit()
        return _run_stages(args, out)


def _run_stages(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    from .evaluation.records import write_json

    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    watch = Stopwatch(planned_stages(args))
    data = (prepare_bp4d if args.dataset == "bp4d" else prepare_data)(args, out, watch)
    folds = args.folds or [f["fold"] for f in data["manifest"]["folds"]]
    runs = train_folds(args, out, data, folds, watch)
    results, predictions = [], []
    for fold in folds:
        result, predicted = score_fold(args, out, data, fold, watch)
        results.append(result)
        if predicted is not None:
            predictions.append(predicted)
    report = build_report(args, watch, data, folds, results, runs, predictions)
    write_json(out / "demo_summary.json", report)
    (out / "demo.md").write_text(demo_markdown(report))
    return report


def planned_stages(args: argparse.Namespace) -> int:
    """synthesize, align, folds, train; then evaluate (and predict) each fold."""
    folds = len(args.folds or range(args.k))
    return 4 + folds * (2 if args.predict_subjects > 0 else 1)


def prepare_data(args: argparse.Namespace, out: Path, watch: Stopwatch) -> dict[str, Any]:
    """Steps 1-3: the twin, its shards and the folds manifest."""
    from pipeline.align import AlignConfig, run_align
    from pipeline.build_folds import FoldConfig, build_folds, write_folds
    from pipeline.twin import ERROR_LOG, SynthConfig, synthesize

    twin, shards = out / "disfa_twin", out / "shards"
    with watch.stage("synthesize"):
        synth = synthesize(twin, SynthConfig(n_subjects=args.n_subjects, frames=args.frames,
                                             seed=args.seed, width=args.frame_width,
                                             height=args.frame_height, jobs=args.jobs,
                                             right_camera=False))
        if synth.get("failed"):
            raise RuntimeError(f"synthesis failed for {synth['failed']}")
        log.info("twin: %d subjects x %d frames in %s", len(synth["subjects"]), args.frames, twin)
    with watch.stage("align"):
        align = run_align(AlignConfig(disfa_root=str(twin), out=str(shards), size=args.size,
                                      jobs=args.jobs, error_log=str(twin / ERROR_LOG)))
        if align.get("failed"):
            raise RuntimeError(f"alignment failed for {align['failed']}")
    with watch.stage("folds"):
        manifest = build_folds(shards, FoldConfig(scheme="kfold", k=args.k, seed=args.seed,
                                                  val_subjects=args.val_subjects))
        manifest_path = write_folds(manifest, out)
    return {"twin": twin, "shards": shards, "synth": synth, "align": align,
            "manifest": manifest, "manifest_path": manifest_path}


def train_folds(args: argparse.Namespace, out: Path, data: dict[str, Any], folds: Sequence[int],
                watch: Stopwatch) -> list[dict[str, Any]]:
    """Step 4: train every fold (resuming or reusing earlier runs), ``--train-jobs`` at once."""
    threads = args.threads or os.cpu_count() or 1
    jobs = max(1, min(args.train_jobs or len(folds), len(folds)))
    per_job = max(1, threads // jobs)
    configs = [fold_config(args, data["shards"], data["manifest_path"], fold,
                           out / "runs" / f"fold{fold}", threads=per_job,
                           quiet=args.quiet or jobs > 1)
               for fold in folds]
    label = ", ".join(map(str, folds))
    if jobs > 1:
        label += f" ({jobs} at once, {per_job} thread{'s' if per_job > 1 else ''} each)"
    with watch.stage(f"train fold{'s' if len(folds) > 1 else ''} {label}"):
        if jobs == 1:
            summaries = [_train_fold(cfg) for cfg in configs]
        else:
            summaries = _train_in_processes(configs, jobs)
    for fold, summary in zip(folds, summaries):
        if summary.get("status") != "finished":
            raise DemoInterrupted(f"training of fold {fold} was stopped")
    return summaries


def _train_fold(cfg: Any) -> dict[str, Any]:
    from .crossval import run_fold

    start = time.perf_counter()
    summary = run_fold(cfg)
    return {**summary, "train_seconds": round(time.perf_counter() - start, 2)}


def _train_in_processes(configs: Sequence[Any], jobs: int) -> list[dict[str, Any]]:
    """Each fold in a fresh (spawned) process; its log lines carry its fold. The first fold to
    fail (or Ctrl-C) stops the others: they get SIGTERM, save last.pt and end (a rerun resumes)."""
    import multiprocessing
    from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"))
    futures = [pool.submit(_train_fold_in_worker, cfg, os.getpid()) for cfg in configs]
    try:
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        failed = [f for f in futures if f in done and f.exception() is not None]
        if failed:
            raise failed[0].exception()  # the finally below stops the folds still training
        return [f.result() for f in futures]
    except BrokenProcessPool as err:
        raise RuntimeError(f"a fold's training process died ({err}); rerun the same command to "
                           "resume the folds") from None
    except KeyboardInterrupt:
        # A terminal's Ctrl-C reached the workers too: they stop within a batch. A second signal
        # would make them abort without saving, so SIGTERM only those still running after 10 s
        # (the Ctrl-C went to this process alone).
        wait(futures, timeout=10)
        raise
    finally:
        if not all(f.done() for f in futures):
            _stop_workers(pool, futures)
        pool.shutdown(wait=True, cancel_futures=True)


def _stop_workers(pool: Any, futures: Sequence[Any]) -> None:
    """SIGTERM to the fold processes still training (the trainer saves last.pt and stops)."""
    import signal

    for future in futures:
        future.cancel()  # those not started yet
    # The pool keeps its processes in a private dict; reading it is the only way to reach them.
    for process in list(getattr(pool, "_processes", {}).values()):
        if process.is_alive():
            os.kill(process.pid, signal.SIGTERM)


def _train_fold_in_worker(cfg: Any, parent: int) -> dict[str, Any]:
    _stop_when_orphaned(parent)
    logging.basicConfig(level=logging.INFO, force=True, datefmt="%H:%M:%S",
                        format=f"%(asctime)s %(levelname)s [fold {cfg.fold}] %(name)s: %(message)s")
    summary = _train_fold(cfg)  # the trainer sets cfg.threads
    if os.getppid() != parent:
        os._exit(1)  # stopped because the demo died: last.pt is saved, nobody awaits the result
    return summary


def _stop_when_orphaned(parent: int, poll_seconds: float = 1.0, grace_seconds: float = 60.0
                        ) -> None:
    """If the demo process dies (``kill PID``, a scheduler's SIGTERM) its fold workers would train
    on with nobody to report to; a watcher thread sends this worker SIGTERM instead, which the trainer answers by
    saving last.pt and stopping (a rerun of the demo resumes there); the worker then ends itself
    (its result has nobody to go to: sending it would block forever), or the watcher ends it after
    ``grace_seconds`` if the trainer does not return. Ctrl-C reaches every process of the
    terminal's group and needs no help. ``parent``: the demo's pid, as the demo gave it (read
    here, it could already be init's if the demo died before this worker started)."""
    import signal
    import threading

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_seconds)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(grace_seconds)
        os._exit(1)

    threading.Thread(target=watch, name="orphan-watch", daemon=True).start()


def score_fold(args: argparse.Namespace, out: Path, data: dict[str, Any], fold: int,
               watch: Stopwatch) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Steps 5-6 for one trained fold: evaluate best.pt on the test shards, model.predict."""
    from .evaluate import evaluate_checkpoint

    run_dir = out / "runs" / f"fold{fold}"
    with watch.stage(f"evaluate fold {fold}"):
        result = evaluate_checkpoint(run_dir / "best.pt", data["shards"], data["manifest_path"],
                                     fold, split="test")
    test_subjects = result["subjects"][: args.predict_subjects]
    predicted = None
    if test_subjects:
        with watch.stage(f"predict fold {fold}"):
            predicted = {"fold": fold, **predict_and_score(
                run_dir / "best.pt", data["twin"], test_subjects,
                out / "predictions" / f"fold{fold}", quiet=args.quiet)}
    return result, predicted


def fold_config(args: argparse.Namespace, shards: Path, manifest: Path, fold: int, run_dir: Path,
                threads: int | None = None, quiet: bool | None = None):
    """The training run of one fold: the cpu-demo recipe with the demo's options on top."""
    from .engine.recipes import config_with_recipe

    return config_with_recipe(
        RECIPE, shards=str(shards), manifest=str(manifest), fold=fold, out=str(run_dir),
        image_size=args.size, epochs=args.epochs, patience=args.patience,
        batches_per_epoch=args.batches_per_epoch, batch_size=args.batch_size, lr=args.lr,
        lr_schedule=args.lr_schedule, seed=args.seed, workers=0, jitter_scale=args.jitter_scale,
        jitter_degrees=args.jitter_degrees, jitter_shift=args.jitter_shift,
        quiet=args.quiet if quiet is None else quiet, threads=threads,
        plot_every=1_000_000, task=args.task)


#: Demo options that make the twin, the shards and the folds; the training ones are checked per
#: run against its config.json (``model.engine.cross_validation.check_same_recipe``).
#: What a demo folder holds (a folder made before run markers is recognised by these).
DEMO_FILES = ("disfa_twin", "bp4d_twin", "shards", "folds.json", "runs", "predictions", "demo.md",
              "demo_summary.json", "demo_settings.json")
#: Options that count things: each must be >= 1.
COUNT_OPTIONS = ("n_subjects", "frames", "frame_width", "frame_height", "size", "k", "epochs",
                 "batches_per_epoch", "batch_size", "jobs")


def check_demo_options(args: argparse.Namespace) -> None:
    """Refuse options that cannot make a demo (CommandError naming the option), before any
    folder is touched."""
    for name in COUNT_OPTIONS:
        if getattr(args, name) < 1:
            raise CommandError(f"--{name.replace('_', '-')} must be >= 1, "
                               f"got {getattr(args, name)}")
    if args.k > args.n_subjects:
        raise CommandError(f"--k {args.k}: more folds than subjects "
                           f"(--n-subjects {args.n_subjects})")
    wrong = [f for f in (args.folds or []) if not 1 <= f <= args.k]
    if wrong:
        raise CommandError(f"--folds {' '.join(map(str, wrong))}: folds are 1..{args.k} (--k)")


DATA_SETTINGS = ("dataset", "n_subjects", "frames", "frame_width", "frame_height", "seed", "size",
                 "k", "val_subjects")


def check_demo_settings(out: Path, args: argparse.Namespace) -> None:
    """Refuse to reuse a demo folder made with other twin/pipeline settings (``--fresh`` redoes
    it); record them in ``OUT/demo_settings.json`` the first time."""
    import json

    from .evaluation.records import write_json

    mine = {k: getattr(args, k) for k in DATA_SETTINGS}
    path = out / "demo_settings.json"
    if not path.is_file():
        write_json(path, mine)
        return
    theirs = {"dataset": "disfa", **json.loads(path.read_text())}  # older folders: DISFA's
    differing = [f"--{k.replace('_', '-')} {mine[k]!r} (it has {theirs[k]!r})"
                 for k in DATA_SETTINGS if k in theirs and theirs[k] != mine[k]]
    if differing:
        raise ValueError(f"{out} holds a demo made with other settings: {'; '.join(differing)}. "
                         "Rerun with --fresh to redo it, or choose another --out")


@handle_errors("model.demo")
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    from .engine.checkpoint import CheckpointError
    from .engine.data import DataError

    if args.out.exists() and not args.out.is_dir():
        raise CommandError(f"--out {args.out}: exists and is a file, not a folder")
    try:
        report = run_demo(args)
    except (KeyboardInterrupt, DemoInterrupted) as err:
        log.error("interrupted (%s); rerun the same command to continue", err or "Ctrl-C")
        return 130
    except (DataError, CheckpointError, ValueError, RuntimeError) as err:
        log.error("%s (after changing demo settings, rerun with --fresh)", err)
        return 1
    print("\n" + demo_markdown(report))
    print_occurrence_summary(report)
    print_intensity_summary(report)
    print(f"total {report['wall_seconds']['total']:.0f} s; summary: "
          f"{args.out / 'demo_summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
