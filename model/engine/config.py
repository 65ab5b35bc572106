"""The configuration of one training run (``TrainConfig``) and the protocol line reports carry."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..evaluation.metrics import PROBABILITY_THRESHOLD
from ..evaluation.paper_tables import C_LEVEL
from ..nets.backbones import parse_backbone
from .validation import TRAIN_FIELDS, check_task_options, check_train_values


@dataclass
class TrainConfig:
    """One training run. Defaults are the paper's values where the paper gives one."""

    shards: str
    manifest: str
    fold: int
    out: str
    variant: str = "tranet"
    preset: str = "full"
    backbone: str = "senet50"
    frozen_blocks: int | None = None
    input_transform: str = "auto"
    epochs: int = 100
    batches_per_epoch: int = 100
    batch_size: int = 64              # per process (per GPU); a recipe's is global (below)
    lr: float = 0.001
    lr_scaling: str = "none"          # "linear": lr * world (the global batch over the per-GPU one)
    lr_schedule: str = "constant"
    momentum: float = 0.9
    weight_decay: float = 0.001
    patience: int = 10
    select_on: str = "val"
    tune_threshold: str | None = None
    au_weights: bool = False
    sampler: str = "weighted"
    flip: bool = True
    jitter_scale: float = 0.0
    jitter_degrees: float = 0.0
    jitter_shift: float = 0.0
    threshold: int | None = None
    cameras: list[str] = field(default_factory=lambda: ["left"])
    image_size: int | None = None
    eval_batches: int | None = None
    eval_batch_size: int = 128
    workers: int | None = None        # None: from the CPU count (data.default_workers)
    device: str = "auto"
    amp: bool = False
    channels_last: bool = False
    compile: bool = False
    #: One CUDA graph a training step (``graph_step``): "auto" = on where CUDA and static shapes.
    cuda_graphs: str = "auto"
    sync_bn: bool = True
    decoder_se: str = "residual"
    pretrained: str | None = None
    seed: int = 0
    resume: str | None = None
    threads: int | None = None
    #: Decode the fold's frames into memory once when they take at most this many MB (0: never).
    cache_frames_mb: int = 2048
    quiet: bool = False
    plot_every: int = 1
    #: Evaluate on the selection split every N epochs and at the last; early stopping's
    #: patience and the best epoch count evaluated epochs only.
    eval_every: int = 1
    task: str = "occurrence"
    intensity_weight: float = 4.0
    intensity_loss: str = "mse"       # or "ordinal" (losses.branch_ordinal_loss)
    #: The named recipe the run started from: {"name", "source", "settings"} (see ``recipes``).
    recipe: dict[str, Any] | None = None
    #: Train on every subject of the manifest, none held out, for a fixed number of epochs
    #: (the deployable model; ``all_subjects``), with the recipe and metrics of a crossval run.
    all_subjects: bool = False
    #: Train on shards of several datasets in one run (refused by default: the manifest's
    #: dataset only); each keeps its own label rule, and AUs a dataset does not code are masked.
    mix_datasets: bool = False
    from_crossval: str | None = None

    def __post_init__(self) -> None:
        # One table (engine.validation) checks types and ranges, whoever built the config:
        # the command line, a recipe, a checkpoint's train_config on --resume, a test.
        known = {k: v for k, v in self.__dict__.items() if k in TRAIN_FIELDS}
        for name, value in check_train_values(known, "training option").items():
            setattr(self, name, list(value) if name == "cameras" else value)
        parse_backbone(self.backbone)  # a BackboneError (ValueError) names the problem
        if self.tune_threshold == "test" and self.select_on != "test":
            raise ValueError("--tune-threshold test tunes on the test subjects; it is only allowed "
                             "with --select-on test (the paper's leaky protocol), where it is "
                             "labelled as such; use --tune-threshold val")
        if self.tune_threshold == "val" and self.select_on == "test":
            raise ValueError("--tune-threshold val with --select-on test: under the paper's protocol "
                             "the validation subjects train too, so none are left to tune on; use "
                             "--tune-threshold test (labelled as leaky) or --select-on val")
        # Task rules: an intensity option left at its default is no option given.
        check_task_options(self.task, {"tune_threshold": self.tune_threshold, **{
            name: getattr(self, name) for name in ("intensity_loss", "intensity_weight")
            if getattr(self, name) != getattr(TrainConfig, name)}})
        if self.from_crossval and not self.all_subjects:
            raise ValueError("--from-crossval gives an --all-subjects run its recipe and metrics; "
                             "add --all-subjects")
        if self.recipe and self.recipe.get("requires_pretrained") and not self.pretrained \
                and not self.resume:
            raise ValueError(f"--recipe {self.recipe['name']} trains from VGGFace2 SENet-50 weights: "
                             "pass --pretrained senet50_ft_weight.pkl, or without that file "
                             "--backbone timm:legacy_seresnet50 --pretrained hub (ImageNet "
                             "weights; docs/backbones.md, 'Backbone weights')")


#: Options that change how a run executes, not what it learns: a finished or interrupted run may
#: be reused under other values of these (``recipe_differences``).
RUNTIME_OPTIONS = ("device", "workers", "eval_batch_size", "resume", "out", "shards", "threads",
                   "quiet", "plot_every", "channels_last", "compile", "recipe", "cache_frames_mb",
                   "cuda_graphs")
#: What a recorded train_config without an option meant (runs made before the option existed).
LEGACY_TRAIN_CONFIG: dict[str, Any] = {"decoder_se": "plain", "intensity_loss": "mse"}


def recipe_differences(cfg: TrainConfig, recorded: dict[str, Any]) -> list[str]:
    """``--option value (run has value)`` for each training setting ``cfg`` changes in a recorded
    run's train_config (runtime options aside)."""
    defaults = TrainConfig(shards="", manifest="", fold=1, out="")
    out = []
    for f in dataclasses.fields(TrainConfig):
        if f.name in RUNTIME_OPTIONS or (f.name == "batch_size" and _same_global(cfg, recorded)):
            continue
        theirs = recorded.get(f.name, LEGACY_TRAIN_CONFIG.get(f.name, getattr(defaults, f.name)))
        mine = getattr(cfg, f.name)
        if _normal(mine) != _normal(theirs):
            out.append(differs(f.name, mine, theirs))
    return out


def differs(name: str, mine: Any, theirs: Any) -> str:
    """``--option mine (run has theirs)``; a threshold of None reads as what it means."""
    def shown(value: Any) -> str:
        return "the manifest's threshold" if name == "threshold" and value is None else repr(value)
    return f"--{name.replace('_', '-')} {shown(mine)} (run has {shown(theirs)})"


def _same_global(cfg: TrainConfig, recorded: dict[str, Any]) -> bool:
    """Both hold the same recipe global batch (the recorded batch_size is a torchrun share)."""
    theirs = (recorded.get("recipe") or {}).get(GLOBAL_BATCH)
    return holds_global_batch(cfg) and theirs == cfg.recipe[GLOBAL_BATCH]


def _normal(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


#: Key of a recipe record (``TrainConfig.recipe``) whose batch size came from the recipe: that
#: batch is the global one, split over the torchrun processes (``hold_global_batch``).
GLOBAL_BATCH = "global_batch"


def holds_global_batch(cfg: TrainConfig) -> bool:
    """Whether the run's batch size is a recipe's global batch (not a per-process --batch-size)."""
    return bool((cfg.recipe or {}).get(GLOBAL_BATCH))


def hold_global_batch(cfg: TrainConfig, world: int) -> TrainConfig:
    """``cfg`` with the per-process batch of a recipe's global batch over ``world`` processes.

    A recipe describes one training (the paper's 64 frames a step), so under torchrun its batch
    is split, not multiplied; a global batch the processes do not divide is refused. An explicit
    ``--batch-size`` is per process, as in torchvision's and timm's references (unchanged here).
    """
    if not holds_global_batch(cfg):
        return cfg
    total = int(cfg.recipe[GLOBAL_BATCH])
    if total % world:
        raise ValueError(f"--recipe {cfg.recipe.get('name')}: its global batch of {total} does not "
                         f"divide over {world} processes; run {_divisors(total)} processes, or "
                         f"give --batch-size (per process: the global batch is it x {world})")
    return dataclasses.replace(cfg, batch_size=total // world)


def world_bound(cfg: TrainConfig) -> str:
    """What of the run the process count fixes ('' if nothing): the linearly scaled learning
    rate, or a recipe's global batch (its per-process share is stored; resuming on another
    count would train another global batch)."""
    if cfg.lr_scaling == "linear" and not holds_global_batch(cfg):
        return "--lr-scaling linear (the learning rate)"
    if holds_global_batch(cfg):
        return f"recipe {cfg.recipe.get('name')}'s global batch of {cfg.recipe[GLOBAL_BATCH]}"
    return ""


def _divisors(n: int) -> str:
    counts = [str(d) for d in range(1, min(n, 16) + 1) if n % d == 0]
    return ", ".join(counts[:-1]) + f" or {counts[-1]}" if len(counts) > 1 else counts[0]


def batch_record(cfg: TrainConfig, world: int) -> dict[str, Any]:
    """What config.json says of the batch: per process, processes, global, who set it, the lr."""
    set_by = (f"recipe {cfg.recipe.get('name')} (global batch, split over the processes)"
              if holds_global_batch(cfg) else "--batch-size (per process)")
    return {"per_process": cfg.batch_size, "processes": world, "global": cfg.batch_size * world,
            "set_by": set_by, "lr_rule": cfg.lr_scaling, "base_lr": cfg.lr,
            "lr": effective_lr(cfg, world)}


def effective_lr(cfg: TrainConfig, world: int) -> float:
    """The learning rate the optimiser uses: ``--lr``, times the process count under
    ``--lr-scaling linear`` (Goyal et al.'s rule for a global batch ``world`` times larger).
    A recipe's global batch does not grow with the processes, so its lr is not scaled."""
    scaled = cfg.lr_scaling == "linear" and not holds_global_batch(cfg)
    return cfg.lr * world if scaled else cfg.lr


def protocol_note(select_on: str, threshold: int, all_subjects: bool = False,
                  labels: str | None = None) -> str:
    """One line every report carries: how labels, decisions and model selection were made.
    ``labels``: the label rule in words where it is not DISFA's (``evaluation.label_rules``)."""
    selection = ("trained on EVERY subject for a fixed number of epochs, no model selection, "
                 "no held-out subject (its metrics can only come from a crossval of the recipe)"
                 if all_subjects else
                 "model selected on the TEST subjects, trained on every other subject (the paper's "
                 "protocol; optimistic, test-set leakage)" if select_on == "test" else
                 "model selected on the held-out validation subjects (test subjects unseen)")
    # The paper says only "C-level"; say so, and which intensity this run took it to be.
    rule = labels or f"positive at {C_LEVEL}, here FACS intensity >= {threshold}"
    return (f"labels: {rule}; "
            f"decision: sigmoid >= {PROBABILITY_THRESHOLD}; "
            f"{selection}; F1/accuracy pooled over all frames of the split")


def threshold_note(tuned_on: str) -> str:
    """How tuned decision thresholds were chosen, said as plainly as the protocol line."""
    where = ("the TEST subjects (leakage: optimistic, as the paper's selection)" if tuned_on == "test"
             else "the held-out validation subjects (test subjects unseen)")
    return f"decision: per-AU F1-optimal sigmoid thresholds tuned on {where}"
