"""Which leading backbone blocks a run freezes: only those ``--pretrained`` filled (the paper
freezes blocks 1-2 to keep VGGFace2 features), what a resumed run recorded, or what
``--frozen-blocks`` asks for; and the warning for a full-preset run from scratch."""
from __future__ import annotations

import logging
from typing import Any

import torch

from .config import TrainConfig
from ..nets.backbones import default_frozen_blocks
from ..nets.tranet import config_from_record

log = logging.getLogger("model.train")

#: A full-preset training step on a 2-core CPU (model.bench, idle machine): images per second.
CPU_FULL_PRESET_IMAGES_PER_SECOND = 4.7


def freeze_pretrained_blocks(model: torch.nn.Module, cfg: TrainConfig,
                             resume_state: dict[str, Any] | None,
                             report: dict[str, Any] | None) -> dict[str, Any]:
    """Freeze the leading blocks (``--frozen-blocks``, else the backbone's default) only as far
    as ``--pretrained`` filled them (``report``: what ``load_pretrained`` loaded).

    The paper freezes blocks 1-2 to keep VGGFace2 features; a random block frozen would only be
    crippled, so without weights nothing is frozen unless ``--frozen-blocks`` asks for it.
    Returns what config.json records.
    """
    wanted = (cfg.frozen_blocks if cfg.frozen_blocks is not None
              else default_frozen_blocks(cfg.backbone, model.config.preset_spec.frozen_blocks))
    if resume_state is not None:
        blocks = config_from_record(resume_state["model_config"]).resolved_frozen_blocks
        reason = "as recorded by the run being resumed"
    elif report is not None:
        missing = set(report.get("missing", []))
        loaded = {f"backbone.{n}" for n, _ in model.backbone.named_parameters() if n not in missing}
        blocks = _loaded_leading_blocks(model, wanted, loaded)
        reason = (f"loaded from {cfg.pretrained}; the pretrained leading blocks are frozen"
                  if blocks else f"{cfg.pretrained} did not fill the leading blocks")
    elif cfg.frozen_blocks:
        blocks = wanted
        reason = "--frozen-blocks without pretrained weights: random blocks frozen as asked"
    else:
        blocks = 0
        reason = ("no pretrained weights: every layer starts random and is trained (freezing "
                  "only protects pretrained features)")
        _warn_from_scratch(cfg)
    model.set_frozen_blocks(blocks)
    frozen = {n: p.numel() for n, p in model.named_parameters() if not p.requires_grad}
    log.info("frozen: %s (%d parameters): %s", _block_names(blocks), sum(frozen.values()), reason)
    return {"frozen_blocks": blocks, "blocks": _block_names(blocks), "reason": reason,
            "frozen_parameters": sum(frozen.values()), "parameter_names": sorted(frozen)}


def _loaded_leading_blocks(model: torch.nn.Module, wanted: int, loaded: set[str]) -> int:
    """The largest n <= wanted whose first n blocks' parameters all came from the weight file."""
    names = {id(p): n for n, p in model.named_parameters()}
    for blocks in range(wanted, 0, -1):
        model.set_frozen_blocks(blocks)
        if all(names[id(p)] in loaded for m in model.frozen_modules() for p in m.parameters()):
            return blocks
    return 0


def _block_names(blocks: int) -> str:
    return ("nothing", "block 1 (stem)", "blocks 1-2 (stem + stride-4 stage)",
            "blocks 1-3 (stem + stride-4 and stride-8 stages)",
            "blocks 1-4 (stem + stride-4, 8 and 16 stages)")[blocks]


def _warn_from_scratch(cfg: TrainConfig) -> None:
    if cfg.preset != "full":
        return
    minutes = cfg.batches_per_epoch * cfg.batch_size / CPU_FULL_PRESET_IMAGES_PER_SECOND / 60
    log.warning("the full preset without --pretrained trains SENet-50 from scratch, which the "
                "paper's recipe (lr %g) does not expect; on a CPU it runs ~%.1f images/s "
                "(2 cores), i.e. ~%.0f min an epoch of %d x %d frames: use a GPU, the VGGFace2 "
                "weights (--pretrained), or --recipe cpu-demo", cfg.lr,
                CPU_FULL_PRESET_IMAGES_PER_SECOND, minutes, cfg.batches_per_epoch, cfg.batch_size)
