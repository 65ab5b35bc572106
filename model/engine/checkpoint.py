"""Checkpoint files: one dict saved atomically, validated on load, rebuildable for inference."""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from pipeline.cli import CommandError
from pipeline.validation import ValidationError

from .validation import check_checkpoint_record

CHECKPOINT_FORMAT = "tranet-au-checkpoint"
CHECKPOINT_VERSION = 1


class CheckpointError(CommandError, RuntimeError):
    """A file is not a readable checkpoint of this toolkit, or does not fit the model asked for."""


def save_checkpoint(path: Path | str, payload: dict[str, Any]) -> Path:
    """Write ``payload`` (plus the format tag) to ``path`` through a temp file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    data = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **payload}
    try:
        _save_keeping_errno(data, tmp)
        os.replace(tmp, path)
    except OSError as err:  # name the checkpoint, not its temporary file ("disk full: last.pt")
        raise OSError(err.errno, err.strerror or str(err), str(path)) from err
    finally:
        tmp.unlink(missing_ok=True)
    return path


class _ErrnoKeepingFile:
    """A file for ``torch.save`` that remembers the OSError of a failed write: torch's writer
    turns it into ``RuntimeError('[enforce fail ...] unexpected pos ...')``, losing the errno."""

    def __init__(self, raw: Any) -> None:
        self.raw, self.error = raw, None

    def write(self, data: Any) -> int:
        try:
            return self.raw.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self) -> None:
        self.raw.flush()


def _save_keeping_errno(data: dict[str, Any], tmp: Path) -> None:
    """``torch.save`` to ``tmp``; a full disk is an OSError (ENOSPC), not torch's RuntimeError.
    fsync: a delayed-allocation file system reports a full disk only then, and the rename that
    follows must not replace a good checkpoint with a short one."""
    with open(tmp, "wb") as raw:
        sink = _ErrnoKeepingFile(raw)
        try:
            torch.save(data, sink)
        except RuntimeError:
            if sink.error is not None:
                raise sink.error from None
            raise
        raw.flush()
        os.fsync(raw.fileno())


def load_checkpoint(path: Path | str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and check a checkpoint; anything else is a ``CheckpointError`` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        # weights_only: a checkpoint holds tensors and plain containers, never code.
        data = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises many types for corrupt or foreign files
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(err).__name__}: {err})") from err
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a {CHECKPOINT_FORMAT} file (a bare state_dict or "
                              "another tool's checkpoint?)")
    if data.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path}: checkpoint version {data.get('version')} is not supported "
                              f"(this toolkit reads version {CHECKPOINT_VERSION})")
    for key in ("model", "model_config", "data"):
        if key not in data:
            raise CheckpointError(f"{path}: checkpoint has no '{key}' entry")
    try:  # every recorded value, before a model is built or a frame prepared from it
        check_checkpoint_record(data, path)
    except ValidationError as err:
        raise CheckpointError(str(err)) from err
    return data


def check_compatible(
    data: dict[str, Any],
    path: Path | str,
    *,
    variant: str | None = None,
    au_ids: Sequence[int] | None = None,
    image_size: int | None = None,
) -> None:
    """Refuse a checkpoint trained as another variant, on other AUs or at another input size."""
    config = data.get("model_config", {})
    if variant is not None and config.get("variant") != variant:
        raise CheckpointError(f"{path}: checkpoint is variant '{config.get('variant')}', "
                              f"not '{variant}'")
    if au_ids is not None and [int(a) for a in data["data"].get("au_ids", [])] != \
            [int(a) for a in au_ids]:
        raise CheckpointError(f"{path}: checkpoint predicts AUs {data['data'].get('au_ids')}, "
                              f"expected {list(au_ids)}")
    if image_size is not None and int(data["data"].get("image_size", -1)) != int(image_size):
        raise CheckpointError(f"{path}: checkpoint expects {data['data'].get('image_size')}-pixel "
                              f"input, got {image_size}")


def capture_rng_state() -> dict[str, Any]:
    """Every global random stream training touches, in a ``weights_only``-loadable form."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached": float(np_state[4])},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        # This process's own GPU only: saving every visible GPU's stream would make a resume
        # with fewer GPUs fail (and touching the others creates a context on each).
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuple(state["python"]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached"]))
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available():
        if isinstance(cuda, (list, tuple)):  # older checkpoints: every visible GPU's stream
            index = torch.cuda.current_device()
            cuda = cuda[index] if index < len(cuda) else None
        if cuda is not None:
            torch.cuda.set_rng_state(cuda)


def check_shapes(model: torch.nn.Module, weights: dict[str, Any], path: Path | str) -> None:
    """A CheckpointError naming the first tensor whose shape differs from the model's (torch's
    own error lists every mismatch in a traceback)."""
    expected = model.state_dict()
    for name, value in weights.items():
        if name in expected and hasattr(value, "shape") and value.shape != expected[name].shape:
            raise CheckpointError(f"{path}: tensor '{name}' has shape {tuple(value.shape)}, the "
                                  f"model expects {tuple(expected[name].shape)}")


def _as_tuple(value: Any) -> Any:
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


def check_regions(data: dict[str, Any], path: Path | str) -> None:
    """The checkpoint's recorded AU regions (``data.regions``, #26) are the ones its branches
    are rebuilt with here; a toolkit that moved an AU would route it to another branch's
    weights. Checkpoints without the record predate any change (DISFA's regions)."""
    from ..nets.tranet import REGION_OF_AU

    recorded = data.get("regions") or {}
    moved = [f"AU{a} {r} -> {REGION_OF_AU.get(int(a), 'none')}" for a, r in recorded.items()
             if REGION_OF_AU.get(int(a)) != r]
    if moved:
        raise CheckpointError(f"{path}: trained with other AU regions than this toolkit's "
                              f"({', '.join(moved)}); use the toolkit version that made it")


def load_for_inference(
    path: Path | str, device: str | torch.device = "cpu", state: dict[str, Any] | None = None
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild the model a checkpoint was trained as, load its weights, return it in eval mode.

    ``meta`` carries what inference needs to prepare frames as the training shards were:
    ``au_ids``, ``threshold``, ``image_size``, ``nose_target``, ``chin_target``, plus the model and
    training configurations. The model's ``input_transform`` is the one recorded in the checkpoint
    (checkpoints from before backbones were selectable have none: VGGFace2's, as then).
    ``state``: the file's contents when the caller has already loaded them with
    :func:`load_checkpoint` (``path`` then only names it in messages).
    """
    from ..nets.backbones import BackboneError
    from ..nets.tranet import build_model, config_from_record

    data = state if state is not None else load_checkpoint(path, map_location="cpu")
    try:
        config = config_from_record(data["model_config"])
        model = build_model(config)
    except BackboneError as err:  # first: a BackboneError is a ValueError too
        raise CheckpointError(f"{path}: its backbone cannot be built here: {err}") from err
    except (TypeError, ValueError) as err:  # ValueError: an unknown variant, preset, AU...
        raise CheckpointError(f"{path}: model_config does not describe a TRA-Net model ({err})") from err
    check_regions(data["data"], path)
    check_shapes(model, data["model"], path)
    missing, unexpected = model.load_state_dict(data["model"], strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not fit variant '{config.variant}' "
                              f"(missing {list(missing)[:5]}, unexpected {list(unexpected)[:5]})")
    meta = {**data["data"], "model_config": data["model_config"],
            "train_config": data.get("train_config", {}), "epoch": data.get("epoch"),
            "decision_thresholds": data.get("decision_thresholds"),
            "pretrained": data.get("pretrained"),
            "model_card": data.get("model_card"),  # model.cards.card.CARD_KEY (predict warns)
            "input_transform": model.input_transform.as_dict()}
    return model.to(device).eval(), meta
