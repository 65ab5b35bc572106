"""Train TRA-Net (or an ablation) on one fold of aligned DISFA shards.

    python -m model.train --shards SHARDS --manifest SHARDS/folds.json --fold 1 --out runs/fold1
    python -m model.train --shards SHARDS --manifest SHARDS/folds.json --all-subjects \
        --from-crossval runs/crossval --out runs/deploy      # the model to use on new videos

The paper's recipe is the default: batches of 64 drawn by the weighted random sampler, 100
batches an epoch, random horizontal flips, SGD (momentum 0.9, weight decay 0.001, lr 0.001), the
sum of the mean BCE of the three AU groups (upper, middle, lower; the same loss for every
variant), evaluation after every epoch and early stopping after 10 epochs
without a better mean F1. Unlike the paper, the model is selected on the fold's validation
subjects; ``--select-on test`` reproduces the paper's (optimistic) protocol and every report then
says so.

``--task intensity|both`` adds DISFA's 0-5 intensity of the 12 coded AUs (a regression head
beside each branch's occurrence FC); loss, sampler and selection score follow the task
(docs/disfa.md, "AU intensity").

This module is the command: it parses options and calls ``model.engine.trainer.train``.

Outputs in ``--out``: config.json, metrics.csv, metrics.json, loss.png, mean_f1.png,
per_au_f1.png, last.pt, best.pt, results.json and results.md (test metrics of best.pt), and
MODEL_CARD.md (every checkpoint carries the same card: docs/model-card.md).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import torch.distributed as dist

from pipeline.cli import CommandError, HelpFormatter, remove_stale_temp_files
from pipeline.folder_lock import FolderLock
from pipeline.validation import arg_type

from .cli import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK, device_arg, handle_errors, setup_logging
from .engine.all_subjects import all_subjects_config
from .engine.checkpoint import CheckpointError
from .engine.config import TrainConfig, protocol_note  # noqa: F401
from .engine.options import config_from_args
from .engine.data import DataError
from .engine.recipes import recipe_names
from .engine.run_folder import TRAIN_RUN_FILES, RunFolder
from .engine.validation import TRAIN_FIELDS
from .weights.precheck import check_pretrained_option
from .weights.vggface2 import WeightsError
from .engine.fold_data import load_data  # noqa: F401  (re-exported)
from .engine.stopping import NonFiniteLossError, StopRequest  # noqa: F401
from .engine.trainer import train
from .evaluation.run_report import run_markdown
from .nets.backbones import MAX_FROZEN_BLOCKS
from .nets.transforms import TRANSFORMS
from .nets.tranet import PRESETS, VARIANTS

log = logging.getLogger("model.train")


def _field(name: str) -> Callable[[str], Any]:
    """The argparse type of a training option: its row of the one validation table."""
    return arg_type(TRAIN_FIELDS[name])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m model.train", description=__doc__.split("\n\n")[0],
        formatter_class=HelpFormatter)
    p.add_argument("--shards", help="folder of aligned shards (SN001_left.h5 ...); required "
                   "unless --resume")
    p.add_argument("--manifest", help="folds.json written by pipeline.build_folds; required "
                   "unless --resume")
    p.add_argument("--fold", type=int, help="fold number (from 1); required unless --resume")
    p.add_argument("--out", help="run folder (created); required unless --resume")
    p.add_argument("--variant", default="tranet", choices=list(VARIANTS),
                   help="model variant: TRA-Net or a Table 2 ablation")
    p.add_argument("--resume", default=None, metavar="RUN",
                   help="continue RUN (its last.pt) exactly where it stopped")
    p.add_argument("--fresh", action="store_true",
                   help="start over in an --out that already holds a run made by this tool; the "
                        "old run is replaced once the new one has started (without it such an "
                        "--out is refused)")
    p.add_argument("--all-subjects", action="store_true",
                   help="train the deployable model: every subject of --manifest, none held out, "
                        "a fixed number of epochs, the last one kept (refused with --fold)")
    p.add_argument("--from-crossval", default=None, metavar="DIR",
                   help="with --all-subjects: the model.crossval --out whose recipe to train and "
                        "whose pooled metrics the card carries (as the recipe's, not this "
                        "model's); epochs: the median of its folds' best epochs unless --epochs")
    add_training_options(p)
    return p


def add_model_options(p: argparse.ArgumentParser, d: TrainConfig) -> None:
    """The network: preset, backbone, its frozen blocks, initial weights and input transform."""
    p.add_argument("--preset", default=d.preset, choices=list(PRESETS),
                   help="full = SENet-50 backbone; small = reduced CPU model (from scratch); with "
                        "a timm backbone it sets only the branch width")
    p.add_argument("--backbone", default=d.backbone,
                   help="senet50 (VGGFace2 layout, the paper's) or timm:<model> for any timm model "
                        "with stride-8/16/32 maps, e.g. timm:resnet50, timm:convnext_tiny, "
                        "timm:efficientnet_b0, timm:resnet50.tv_in1k (needs the timm extra)")
    p.add_argument("--frozen-blocks", type=int, default=None, choices=range(MAX_FROZEN_BLOCKS + 1),
                   metavar="N", help="leading backbone blocks to freeze: 1 = stem, 2 = + the "
                   "stride-4 stage (the paper's), 3 and 4 = + the stride-8/16 stages; None = "
                   "the backbone's default: senet50 full 2, small 0, timm backbones 2")
    p.add_argument("--input-transform", default=d.input_transform,
                   choices=["auto", *TRANSFORMS],
                   help="how frames are normalised: auto follows the weights (VGGFace2 file: BGR "
                        "0-255 minus the VGGFace2 mean; ImageNet weights: RGB 0-1 mean/std); "
                        "recorded in the checkpoint for evaluate/predict")
    p.add_argument("--pretrained", default=None, metavar="FILE|hub",
                   help="backbone weights: the VGGFace2 file senet50_ft_weight.pkl, a torch "
                        "state_dict of the backbone, or 'hub' to let timm download its published "
                        "weights (fails at once offline, naming the file to bring); None = random "
                        "init. Checked before any data is read; a file's sha256 and size are "
                        "logged and recorded in config.json (docs/backbones.md, 'Backbone weights')")


def add_training_options(p: argparse.ArgumentParser) -> None:
    """The recipe and runtime options (shared with model.crossval and model.demo)."""
    d = TrainConfig(shards="", manifest="", fold=1, out="")
    p.add_argument("--recipe", default=None, metavar="NAME|FILE",
                   help=f"start from a named recipe ({', '.join(recipe_names())}; "
                        "model/recipes/*.json) or a recipe file you edited; options given here "
                        "override it; recorded in config.json (default: none, i.e. the values "
                        "shown here)")
    add_model_options(p, d)
    add_optimiser_options(p, d)
    p.add_argument("--select-on", default=d.select_on, choices=["val", "test"],
                   help="split for early stopping / best.pt; 'test' is the paper's protocol "
                        "(optimistic) and is labelled so in every report")
    p.add_argument("--task", default=d.task, choices=["occurrence", "intensity", "both"],
                   help="occurrence = the paper's detector (default); intensity = regress the "
                        "0-5 intensities of DISFA's 12 AUs (a head beside each branch's FC); both "
                        "= the two heads together. Sampler and early-stopping score follow it")
    p.add_argument("--intensity-weight", type=_field("intensity_weight"),
                   default=d.intensity_weight,
                   help="with --task both: loss = BCE + this x the intensity loss "
                        "(--intensity-loss; default 4, which brings the MSE of intensity / 5 of "
                        "an untrained head to the BCE's scale)")
    p.add_argument("--intensity-loss", default=d.intensity_loss, choices=["mse", "ordinal"],
                   help="with --task intensity|both: mse = squared error of intensity / 5 "
                        "(default); ordinal = all-threshold logistic loss on the same scalar "
                        "(mean BCE of 'intensity > k + 0.5', k = 0..4, temperature 0.5; see "
                        "docs/disfa.md for the comparison). Part of the recipe: --resume "
                        "keeps the run's")
    p.add_argument("--au-weights", default="off", choices=["on", "off"],
                   help="weight each AU's BCE by the fold's per-AU weights (sum K)")
    p.add_argument("--sampler", default=d.sampler, choices=["weighted", "uniform"],
                   help="weighted = the paper's sampler (model.sampler); uniform for comparison")
    p.add_argument("--mix-datasets", action="store_true",
                   help="train on shards of several datasets (DISFA, DISFA+, BP4D) in one run; "
                        "refused without it. Each keeps its label rule; uncoded AUs are masked")
    p.add_argument("--no-flip", dest="flip", action="store_false",
                   help="turn off the random horizontal flip (on by default, as in the paper)")
    p.add_argument("--jitter-scale", type=_field("jitter_scale"), default=d.jitter_scale,
                   help="alignment jitter (model.augment): random scale 1 +- this (default 0, "
                        "the paper's recipe; ~0.05 makes a model tolerant of dlib-aligned faces)")
    p.add_argument("--jitter-degrees", type=_field("jitter_degrees"), default=d.jitter_degrees,
                   help="alignment jitter: random rotation +- this many degrees (default 0)")
    p.add_argument("--jitter-shift", type=_field("jitter_shift"), default=d.jitter_shift,
                   help="alignment jitter: random shift +- this fraction of the size (default 0)")
    p.add_argument("--tune-threshold", default=None, choices=["val", "test"],
                   help="after selection, tune a per-AU decision threshold (F1-optimal) on the "
                        "validation subjects, store it in best.pt for model.predict and report "
                        "the test F1 at it beside 0.5; 'test' only with --select-on test, "
                        "labelled as leakage (default: off, sigmoid >= 0.5)")
    p.add_argument("--threshold", type=_field("threshold"), default=None,
                   help="positive label = intensity >= this (FACS letter A-E or 1-5); default: the "
                        "manifest's")
    p.add_argument("--cameras", nargs="+", default=d.cameras, choices=["left", "right", "frontal"],
                   help="cameras whose shards are used (DISFA+ and BP4D have one, frontal, which "
                        "the default means there)")
    p.add_argument("--image-size", type=_field("image_size"), default=None,
                   help="network input size; frames are resized on the fly when the shards "
                        "differ (default: the shards' size)")
    add_evaluation_options(p, d)


def add_optimiser_options(p: argparse.ArgumentParser, d: TrainConfig) -> None:
    """How long and how fast the run trains: epochs, batches, SGD, patience."""
    p.add_argument("--epochs", type=_field("epochs"), default=d.epochs,
                   help="maximum number of epochs")
    p.add_argument("--batches-per-epoch", type=_field("batches_per_epoch"),
                   default=d.batches_per_epoch,
                   help="optimiser steps that make one epoch (the sampler draws with replacement, "
                        "so an epoch is a number of batches, not a pass over the data)")
    p.add_argument("--batch-size", type=_field("batch_size"), default=d.batch_size,
                   help="frames per optimiser step PER PROCESS (per GPU); under torchrun the "
                        "global batch is this times the process count (printed and recorded)")
    p.add_argument("--lr", type=_field("lr"), default=d.lr, help="SGD learning rate")
    p.add_argument("--lr-scaling", default=d.lr_scaling, choices=["none", "linear"],
                   help="none: --lr whatever the process count; linear: --lr times the process "
                        "count (for the larger global batch)")
    p.add_argument("--lr-schedule", default=d.lr_schedule, choices=["constant", "cosine"],
                   help="constant (the paper) or cosine decay to 0 over --epochs, stepped "
                        "every batch")
    p.add_argument("--momentum", type=_field("momentum"), default=d.momentum, help="SGD momentum")
    p.add_argument("--weight-decay", type=_field("weight_decay"), default=d.weight_decay,
                   help="SGD weight decay (L2 penalty)")
    p.add_argument("--patience", type=_field("patience"), default=d.patience,
                   help="stop after this many epochs without a better mean F1")


def add_evaluation_options(p: argparse.ArgumentParser, d: TrainConfig) -> None:
    """How each epoch is evaluated, the decoder's SE form and the seed."""
    p.add_argument("--eval-batches", type=_field("eval_batches"), default=None,
                   help="per-epoch evaluation on at most this many batches, spread evenly over "
                        "the split (final test evaluation always uses every frame)")
    p.add_argument("--eval-every", type=_field("eval_every"), default=d.eval_every,
                   help="evaluate on the selection split every N epochs and always at the last "
                        "(default 1); early stopping's --patience and the best epoch count "
                        "evaluated epochs only")
    p.add_argument("--eval-batch-size", type=_field("eval_batch_size"), default=d.eval_batch_size,
                   help="frames per forward pass when evaluating")
    p.add_argument("--decoder-se", default=d.decoder_se, choices=["residual", "plain"],
                   help="the decoder's SE gates: residual = the paper's Eq. 3 (O = S*U + U), "
                        "plain = S*U")
    p.add_argument("--seed", type=_field("seed"), default=d.seed,
                   help="seed of the initial weights, the sampler and the augmentation")
    add_runtime_options(p, d)


def add_runtime_options(p: argparse.ArgumentParser, d: TrainConfig) -> None:
    """Where and how the run executes: loader, device, precision, layout, DDP, threads, progress."""
    p.add_argument("--workers", type=_field("workers"), default=d.workers,
                   help="DataLoader worker processes per training process (default: the CPU "
                        "cores this process may use, shared among the node's processes, minus "
                        "one, at most 8)")
    p.add_argument("--device", type=device_arg, default=d.device,
                   help="auto, cpu, cuda or cuda:N")
    p.add_argument("--amp", action="store_true",
                   help="mixed precision: bfloat16 where the device supports it (CPU, CUDA "
                        "compute capability >= 8.0), else float16 with a GradScaler")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the model (slow first steps; off by default)")
    p.add_argument("--cuda-graphs", default=d.cuda_graphs, choices=["auto", "on", "off"],
                   help="capture each training step (forward, loss, backward, fused SGD) as one "
                        "CUDA graph: auto = on on a CUDA device with batches of one size, off "
                        "under torchrun (DDP) and with fp16; on = refuse where it cannot run")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction,
                   default=d.channels_last,
                   help="run the model and its inputs in the channels_last memory format (faster "
                        "on CPUs with oneDNN and on tensor cores; same numbers)")
    p.add_argument("--no-sync-bn", dest="sync_bn", action="store_false",
                   help="under DDP on CUDA, BatchNorm statistics are synchronised over the "
                        "processes (SyncBatchNorm) by default; this keeps them per process")
    p.add_argument("--threads", type=_field("threads"), default=None,
                   help="torch CPU threads per process")
    p.add_argument("--cache-frames-mb", type=_field("cache_frames_mb"), default=d.cache_frames_mb,
                   help="decode the training and selection frames into memory once, before the "
                        "first epoch, when they take at most this many MB in each training "
                        "process (0: never; may change on --resume); the demo's 64-pixel twin "
                        "fits, a real DISFA fold at 224 px (~13 GB) does not")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--plot-every", type=_field("plot_every"), default=d.plot_every,
                   help="redraw the PNG curves every N epochs (always at the end)")


def explicit_options(parser: argparse.ArgumentParser, argv: Sequence[str]) -> set[str]:
    """Names of the options the command line actually gave (for the resume rules)."""
    probe = argparse.ArgumentParser(add_help=False)
    for action in parser._actions:
        if action.option_strings and action.dest != "help":
            kwargs = {"dest": action.dest, "default": argparse.SUPPRESS}
            if action.nargs == 0:
                kwargs["action"] = "store_const"
                kwargs["const"] = True
            else:
                kwargs["nargs"] = action.nargs
            probe.add_argument(*action.option_strings, **kwargs)
    return set(vars(probe.parse_known_args(list(argv))[0]))


#: What a run folder holds; their presence means --out is a run already.
RUN_FILES = TRAIN_RUN_FILES


def prepare_out(out: str, fresh: bool) -> RunFolder:
    """Refuse an --out that holds a run (a typo must not overwrite days of training) unless
    --fresh; lock it (one writer) and remove temporary files of killed runs. Removes nothing:
    a --fresh run is built beside the old one, which it replaces once it started cleanly."""
    folder = RunFolder(out, "model.train", fresh=fresh, tools=("model.crossval",),
                       legacy_files=RUN_FILES)
    folder.open()  # a live writer is named first: its run is not one to resume
    path = Path(out)
    existing = [name for name in RUN_FILES if (path / name).exists()]
    if existing and not fresh:
        folder.close()
        raise CommandError(f"--out {out} already holds a run ({', '.join(existing[:3])}...); "
                           f"continue it with --resume {out}, or replace it with --fresh")
    remove_stale_temp_files(path)
    return folder


def _required_or_placeholders(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """A new run needs --shards/--manifest/--fold/--out; a resumed one takes them from its record."""
    if not args.resume:
        if args.all_subjects and args.fold is None:
            args.fold = 1  # a placeholder: an --all-subjects run holds no fold out
        missing = [f"--{n}" for n in ("shards", "manifest", "fold", "out") if getattr(args, n) is None]
        if missing:
            parser.error(f"the following arguments are required: {', '.join(missing)}")
        return
    # Placeholders: the stored configuration of the run supplies what was not given.
    for name, placeholder in (("shards", ""), ("manifest", ""), ("fold", 0), ("out", "")):
        if getattr(args, name) is None:
            setattr(args, name, placeholder)


def open_run_folder(args: argparse.Namespace) -> RunFolder | None:
    """The run folder, locked by its one writer (rank 0); None on other ranks."""
    if int(os.environ.get("RANK", "0")) != 0:
        return None
    if not args.resume:
        return prepare_out(args.out, args.fresh)
    if not Path(args.resume).is_dir():
        return None
    folder = RunFolder(args.resume, "model.train", option="--resume")
    folder.lock = FolderLock(args.resume).acquire()
    return folder


@handle_errors("model.train")
def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    _required_or_placeholders(args, parser)
    setup_logging(args.quiet, int(os.environ.get("RANK", "0")))
    folder = None
    try:
        explicit = explicit_options(parser, argv)
        cfg = config_from_args(args, explicit)
        if cfg.all_subjects and not args.resume:
            cfg = all_subjects_config(cfg, explicit)
        if not cfg.resume:  # before any frame is read or the run folder exists (a resume keeps its)
            check_pretrained_option(cfg.pretrained, cfg.backbone)
        folder = open_run_folder(args)
        summary = train(cfg, explicit=explicit, stage=folder)
    except (DataError, CheckpointError, WeightsError) as err:
        raise CommandError(str(err)) from err  # the shared handler: one line, exit 2
    except CommandError:
        raise  # a ValidationError (also a ValueError): the shared handler, exit 2
    except ValueError as err:
        log.error("%s", err)
        return EXIT_ERROR
    except NonFiniteLossError as err:
        log.error("%s", err)
        return EXIT_ERROR
    except KeyboardInterrupt:
        log.error("aborted")
        return EXIT_INTERRUPTED
    finally:
        if folder is not None:
            folder.close()
        if dist.is_initialized():
            dist.destroy_process_group()
    if summary["status"] == "interrupted":
        return EXIT_INTERRUPTED
    if summary.get("all_subjects") and int(os.environ.get("RANK", "0")) == 0:
        print(f"run folder: {summary['run_dir']} (best.pt: the last epoch; MODEL_CARD.md)")
    elif ("test" in summary or "test_intensity" in summary) and int(os.environ.get("RANK", "0")) == 0:
        print(f"\n{run_markdown(f'Fold {cfg.fold}, {cfg.variant}', summary, summary['protocol'])}")
        print(f"run folder: {summary['run_dir']} (metrics.csv, metrics.json, *.png, best.pt)")
    elif summary.get("training_only") and int(os.environ.get("RANK", "0")) == 0:
        print(f"run folder: {summary['run_dir']} (best.pt selected on the validation subjects; "
              f"no test subjects here: score it with model.evaluate on {summary['test_manifest']})")
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
