"""One command that measures the GPU path and leaves a report, made for a bare lent GPU machine.

    PYTHONPATH=. python3 -m model.gpu_report --out OUT/gpu --deadline 420

Needs torch, numpy, h5py and OpenCV only (no dlib, no network, no installed package); every
result is a JSON line in ``OUT/gpu_report.jsonl``, flushed as soon as it is measured, so a run
that is killed still leaves what it measured. Stages run in priority order and each checks the
time left before ``--deadline`` (seconds from the start), recording a skip and its reason when
too little remains; an error in one stage is recorded and the next stage still runs:

1. ``environment``   GPU, torch/CUDA/cuDNN versions, CPU count, library versions;
2. ``ceiling_train`` the model's training step on device-resident data (full TRA-Net at 224):
                     bf16 / fp16 / fp32, channels_last on/off, batch 64/128, cudnn.benchmark;
3. ``ceiling_infer`` the same for inference;
4. ``trainer_epoch`` the trainer's own ``train_one_epoch`` on in-memory batches, syncs counted;
5. ``loader``        the DataLoader alone on shards it writes (pipeline.shards), 1/2/4/8 workers,
                     flip and jitter on, in frames/s;
6. ``end_to_end``    two short epochs through ``model.engine.trainer.train`` (model.train's path);
7. ``predict``       predict-sized inference (batch 1-16, small and full presets), torch and
                     onnxruntime (CUDA and CPU providers) where installed;
8. ``compile``       ``torch.compile`` of the training step (last: its compile time is unbounded).

``gpu_report.md`` (a Markdown summary of the JSON lines) is rewritten after every stage.
``--device cpu --small`` is a seconds-long test mode (small preset, tiny inputs).
"""
from __future__ import annotations

import argparse
import logging

import torch

from pipeline.cli import HelpFormatter

from .ceiling import stage_ceiling_infer, stage_ceiling_train, stage_compile
from .config import STAGES, ReportConfig
from .environment import stage_environment
from .loader import stage_loader
from .predict import stage_predict
from .report import Report
from .summary import write_summary
from .trainer_stages import stage_end_to_end, stage_trainer_epoch

log = logging.getLogger("model.gpu_report")


#: Time a stage needs at least (seconds) before it is started, in full mode.
MIN_SECONDS = {"environment": 0, "ceiling_train": 20, "ceiling_infer": 10, "trainer_epoch": 15,
               "loader": 15, "end_to_end": 30, "compile": 60, "predict": 15}
STAGE_FUNCTIONS = {"environment": stage_environment, "ceiling_train": stage_ceiling_train,
                   "ceiling_infer": stage_ceiling_infer, "trainer_epoch": stage_trainer_epoch,
                   "loader": stage_loader, "end_to_end": stage_end_to_end,
                   "compile": stage_compile, "predict": stage_predict}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m model.gpu_report", description=__doc__,
                                formatter_class=HelpFormatter)
    p.add_argument("--out", required=True,
                   help="folder for gpu_report.jsonl (appended), gpu_report.md and the shards it "
                        "writes (created)")
    p.add_argument("--deadline", type=float, default=420.0,
                   help="seconds from the start by which every stage must be done (default 420)")
    p.add_argument("--device", default="auto", help="cuda, cuda:N, cpu or auto (default: cuda "
                   "when torch sees one)")
    p.add_argument("--small", action="store_true",
                   help="test mode: small preset, 64-pixel inputs, short timings (default off)")
    p.add_argument("--stages", nargs="+", default=list(STAGES), choices=list(STAGES),
                   help="stages to run, in the fixed priority order (default: all)")
    p.add_argument("--measure-seconds", type=float, default=None,
                   help="timed seconds per measurement (default 2, or 0.2 with --small)")
    return p


def resolve(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit(f"--device {name}: torch sees no CUDA device")
        if device.index is None:  # set_device needs an index; "cuda" is the current GPU
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)  # so nothing lands on GPU 0 by default
    return device


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = ReportConfig(out=args.out, deadline=args.deadline, device=args.device, small=args.small,
                       stages=args.stages, measure_seconds=args.measure_seconds)
    device = resolve(cfg.device)
    report = Report(cfg, device)
    scale = 0.05 if cfg.small else 1.0
    try:
        for name in STAGES:
            if name in cfg.stages:
                log.info("stage %s (%.0f s left)", name, report.remaining())
                report.run_stage(name, STAGE_FUNCTIONS[name], MIN_SECONDS[name] * scale)
        report.stage = "done"
        report.write(kind="done", seconds=report.elapsed())
    finally:
        report.close()
        md = write_summary(report.path, report.dir / "gpu_report.md", report.run)
    print(f"wrote {report.path} and {md}")
    return 0
