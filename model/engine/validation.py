"""The training and model fields of the one validation (``pipeline.validation``), the checks of a
checkpoint's and an ONNX file's records, and the task rules (issue 22, items 4 and 8).

``TRAIN_FIELDS`` is the table every source of a training setting goes through: the command line
(``model.train``'s argparse types), recipes, ``TrainConfig`` itself (so a checkpoint's recorded
train_config on ``--resume`` too). ``check_checkpoint_record`` and ``check_onnx_meta`` refuse a
crafted file with one line naming it and the field before anything is built from it.
``TASK_RULES`` lists the options that apply only to some tasks.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from pipeline.validation import (DATA_FIELDS, MAX_IMAGE_SIZE, Field, ValidationError,
                                 check_au_list, check_fields, check_value)

from ..nets.backbones import MAX_FROZEN_BLOCKS
from ..nets.decoder import SE_KINDS
from ..nets.transforms import TRANSFORMS
from ..nets.tranet import PRESETS, VARIANTS

TASKS = ("occurrence", "intensity", "both")
#: Generous ceilings: far beyond any sensible run, low enough that a typo or a crafted file
#: cannot ask for an absurd allocation or a run of years.
MAX_EPOCHS = 100_000
MAX_BATCH = 65_536

#: Every TrainConfig setting a user or a file can give (paths and the recipe record aside).
TRAIN_FIELDS: dict[str, Field] = {
    "image_size": Field(int, DATA_FIELDS["image_size"].low, MAX_IMAGE_SIZE, optional=True),
    "threshold": Field(int, parse=DATA_FIELDS["threshold"].parse, optional=True,
                       what=DATA_FIELDS["threshold"].what),
    "fold": Field(int, 0, 1000),
    "variant": Field(str, choices=tuple(VARIANTS)),
    "preset": Field(str, choices=tuple(PRESETS)),
    "backbone": Field(str, what="senet50 or timm:<model>"),
    "frozen_blocks": Field(int, 0, MAX_FROZEN_BLOCKS, optional=True),
    "input_transform": Field(str, choices=("auto", *TRANSFORMS)),
    "epochs": Field(int, 1, MAX_EPOCHS),
    "batches_per_epoch": Field(int, 1, 1_000_000),
    "batch_size": Field(int, 1, MAX_BATCH),
    "lr": Field(float, 0, low_open=True),   # 1e12 makes the NaN test's loss
    "lr_scaling": Field(str, choices=("none", "linear")),
    "lr_schedule": Field(str, choices=("constant", "cosine")),
    "momentum": Field(float, 0, 1),
    "weight_decay": Field(float, 0, 1),
    "patience": Field(int, 1, MAX_EPOCHS),
    "select_on": Field(str, choices=("val", "test")),
    "tune_threshold": Field(str, choices=("val", "test"), optional=True),
    "au_weights": Field(bool),
    "sampler": Field(str, choices=("weighted", "uniform")),
    "flip": Field(bool),
    "mix_datasets": Field(bool),
    "jitter_scale": Field(float, 0, 0.5),
    "jitter_degrees": Field(float, 0, 180),
    "jitter_shift": Field(float, 0, 0.5),
    "cameras": Field(list, item=Field(str, choices=("left", "right", "frontal")),
                     what="a list of cameras (left, right; frontal: DISFA+, BP4D)"),
    "eval_batches": Field(int, 1, 1_000_000, optional=True),
    "eval_batch_size": Field(int, 1, MAX_BATCH),
    "workers": Field(int, 0, 256, optional=True),
    "device": Field(str),
    "amp": Field(bool),
    "channels_last": Field(bool),
    "compile": Field(bool),
    "cuda_graphs": Field(str, choices=("auto", "on", "off")),
    "sync_bn": Field(bool),
    "decoder_se": Field(str, choices=tuple(SE_KINDS)),
    "pretrained": Field(str, optional=True),
    "seed": Field(int, 0, 2**32 - 1),
    "resume": Field(str, optional=True),
    "threads": Field(int, 1, 1024, optional=True),
    "cache_frames_mb": Field(int, 0, 1 << 30),
    "quiet": Field(bool),
    "eval_every": Field(int, 1, MAX_EPOCHS),
    "plot_every": Field(int, 1),            # the demo gives 10^6: never mid-run
    "task": Field(str, choices=TASKS),
    "intensity_weight": Field(float, 0, 1000, low_open=True),
    "intensity_loss": Field(str, choices=("mse", "ordinal")),
}

#: A checkpoint's or an ONNX export's model_config: what rebuilding the network reads.
MODEL_FIELDS: dict[str, Field] = {
    "variant": TRAIN_FIELDS["variant"],
    "preset": TRAIN_FIELDS["preset"],
    "backbone": TRAIN_FIELDS["backbone"],
    "image_size": DATA_FIELDS["image_size"],
    "frozen_blocks": TRAIN_FIELDS["frozen_blocks"],
    "decoder_se": TRAIN_FIELDS["decoder_se"],
    "branch_width": Field(int, 1, 4096, optional=True),
    "fc_hidden": Field(int, 1, 4096, optional=True),
    "reduction": Field(int, 1, 1024),
    "decoder_kernel": Field(int, 1, 15),
    "channels_last": Field(bool),
    "center": Field(list, item=Field(float, 0, 1), what="(x, y) fractions of the image"),
}

#: A checkpoint's ``data`` entry / an ONNX file's metadata: how frames are prepared.
FRAME_FIELDS: dict[str, Field] = {
    "image_size": DATA_FIELDS["image_size"],
    "threshold": DATA_FIELDS["threshold"],
    "nose_target": Field(list, item=Field(float, 0, MAX_IMAGE_SIZE), what="(x, y) pixels"),
    "chin_target": Field(list, item=Field(float, 0, MAX_IMAGE_SIZE), what="(x, y) pixels"),
}


def check_train_values(values: Mapping[str, Any], source: str) -> dict[str, Any]:
    """``values`` (TrainConfig settings) checked by :data:`TRAIN_FIELDS`, normalised."""
    return check_fields(values, TRAIN_FIELDS, source)


def check_model_record(record: Any, source: str) -> None:
    """A recorded model_config: a mapping whose known fields and AU lists are valid."""
    if not isinstance(record, Mapping):
        raise ValidationError(f"{source}: model_config must be a mapping, got "
                              f"{type(record).__name__}")
    check_fields(record, MODEL_FIELDS, f"{source}: model_config")
    if "au_ids" in record:
        check_au_list("au_ids", record["au_ids"], f"{source}: model_config")
    if "intensity_aus" in record:
        check_au_list("intensity_aus", record["intensity_aus"], f"{source}: model_config",
                      allow_empty=True)


def check_frame_record(record: Any, source: str) -> None:
    """A checkpoint's ``data`` entry or an ONNX file's metadata: size, threshold, AUs, targets."""
    if not isinstance(record, Mapping):
        raise ValidationError(f"{source}: data must be a mapping, got {type(record).__name__}")
    check_fields({k: v for k, v in record.items() if k in FRAME_FIELDS}, FRAME_FIELDS, source)
    if "au_ids" in record:
        check_au_list("au_ids", record["au_ids"], source)
    alignment = record.get("alignment") or {}
    if not isinstance(alignment, Mapping):
        raise ValidationError(f"{source}: alignment must be a mapping")
    if alignment.get("source_image_size") is not None:
        check_value("alignment.source_image_size", alignment["source_image_size"],
                    DATA_FIELDS["image_size"], source)


def check_checkpoint_record(data: Mapping[str, Any], path: Path | str) -> None:
    """Every value a checkpoint records, before a model is built or a frame prepared from it."""
    source = str(path)
    check_frame_record(data["data"], source)
    check_model_record(data["model_config"], source)
    train_config = data.get("train_config")
    if train_config is not None:
        if not isinstance(train_config, Mapping):
            raise ValidationError(f"{source}: train_config must be a mapping")
        check_train_values(train_config, f"{source}: train_config")


def check_onnx_meta(meta: Any, path: Path | str) -> None:
    """An ONNX export's ``tranet_meta``: the same fields as a checkpoint's."""
    source = str(path)
    check_frame_record(meta, source)
    if meta.get("model_config") is not None:
        check_model_record(meta["model_config"], source)
    if meta.get("train_config") is not None:
        check_train_values(meta["train_config"], f"{source}: train_config")


# --------------------------------------------------------------------------- task rules

#: option -> (the tasks it applies to, what it acts on). One table for train and predict.
TASK_RULES: dict[str, tuple[tuple[str, ...], str]] = {
    "tune_threshold": (("occurrence", "both"), "tunes the occurrence head's decision thresholds"),
    "decision_threshold": (("occurrence", "both"), "is the occurrence head's decision threshold"),
    "calibrate": (("occurrence", "both"), "calibrates the occurrence head's probabilities"),
    "test_camera": (("occurrence", "both"), "reports the occurrence F1 on another camera"),
    "intensity_loss": (("intensity", "both"), "is the intensity head's loss"),
    "intensity_weight": (("both",), "weighs the intensity loss against the occurrence BCE"),
}
_WHY_NOT = {"occurrence": "trains no intensity head", "intensity": "trains no occurrence head"}


def check_task_options(task: str, given: Mapping[str, Any], source: str = "") -> None:
    """Refuse each option in ``given`` (name -> value; None/False = not given) that cannot apply
    to ``task``, naming both; ``source``: the checkpoint the task was read from, if any."""
    for name, value in given.items():
        if value is None or value is False or name not in TASK_RULES:
            continue
        tasks, acts_on = TASK_RULES[name]
        if task not in tasks:
            why = _WHY_NOT.get(task, "has a single head")
            option = f"--{name.replace('_', '-')}"
            applies = f"it applies to --task {' or '.join(tasks)}"
            if source:
                raise ValidationError(f"{source}: trained with --task {task}, which {why}; "
                                      f"{option} {acts_on} ({applies})")
            raise ValidationError(f"{option} {acts_on}; --task {task} {why} ({applies})")
