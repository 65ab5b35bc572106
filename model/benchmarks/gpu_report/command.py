"""One command that measures the GPU path and leaves a report, made for a bare lent GPU machine.

    PYTHONPATH=. python3 -m model.gpu_report --out OUT/gpu --deadline 420

Needs torch, numpy, h5py and OpenCV only (tqdm, matplotlib, pandas, scipy, onnxruntime, pynvml,
dlib are used when present; a missing one is recorded with the reason). Every result is a JSON
line in ``OUT/gpu_report.jsonl``, flushed as soon as it is measured, so a run that is killed
still leaves what it measured. The run ends within 10 % of ``--deadline`` (seconds from the
start): before each measurement its cost is estimated from the one before it (the same setting
at the smaller batch, scaled) and the measurement is skipped, with the estimate and the time
left, when it would not fit; a step that is being timed stops at the deadline. An error in one
measurement or stage is recorded and the next still runs. Stages, in priority order:

1. ``environment``   GPU, torch/CUDA/cuDNN versions, CPU count, libraries (and why one is missing);
   ``pilot``         one training step at batch 8, which later costs are estimated from;
2. ``end_to_end``    three short epochs through ``model.engine.trainer.train`` (model.train's
                     path): epoch wall time with and without evaluation and checkpoints, the
                     share of the training time spent waiting for data;
3. ``ceiling_train`` the training step on device-resident data (full TRA-Net at 224): bf16 and
                     fp32 at batch 64 and 128, then fp16, NCHW, cudnn.benchmark off, batch 8;
                     host ms and GPU ms a step, GPU utilisation (NVML);
4. ``trainer_epoch`` the trainer's ``train_one_epoch`` on in-memory batches, bf16 and fp32 (and
                     its ``cuda_graphs`` off/on where the build has it), host syncs counted;
5. ``graphs``        the training step captured whole in one CUDA graph, bf16/fp32, batch 64/128;
6. ``loader``        the DataLoader alone on shards it writes, 1/2/4/8/16 workers (capped by the
                     CPU count), in frames/s;
7. ``ceiling_infer`` the inference step, as stage 2;
8. ``predict``       predict-sized inference, torch and onnxruntime where installed;
9. ``compile``       ``torch.compile`` of the training step at batch 64 and 128.

``gpu_report.md`` (a summary of the JSON lines, with the issue's targets marked met / not met /
not measured) is rewritten after every stage. ``--device cpu --small`` is a seconds-long test
mode (small preset, 32-pixel inputs, batches 2 and 4).
"""
from __future__ import annotations

import argparse
import logging

import torch

from pipeline.cli import HelpFormatter

from ...cli import CommandError, check_device, handle_errors
from .ceiling import stage_ceiling_infer, stage_ceiling_train, stage_pilot
from .compiled import stage_compile
from .config import STAGES, ReportConfig
from .end_to_end import stage_end_to_end
from .environment import stage_environment
from .graphs import stage_graphs
from .loader import stage_loader
from .predict import stage_predict
from .report import Report, process_start
from .summary import write_summary
from .trainer_stages import stage_trainer_epoch

log = logging.getLogger("model.gpu_report")


#: Time a stage needs at least (seconds) before it is started, in full mode (x 0.05 in --small).
MIN_SECONDS = {"environment": 0, "pilot": 5, "ceiling_train": 20, "ceiling_infer": 10,
               "trainer_epoch": 15, "graphs": 15, "loader": 15, "end_to_end": 30, "compile": 60,
               "predict": 15}
STAGE_FUNCTIONS = {"environment": stage_environment, "pilot": stage_pilot,
                   "ceiling_train": stage_ceiling_train, "ceiling_infer": stage_ceiling_infer,
                   "trainer_epoch": stage_trainer_epoch, "graphs": stage_graphs,
                   "loader": stage_loader, "end_to_end": stage_end_to_end,
                   "compile": stage_compile, "predict": stage_predict}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m model.gpu_report", description=__doc__,
                                formatter_class=HelpFormatter)
    p.add_argument("--out", required=True,
                   help="folder for gpu_report.jsonl (appended), gpu_report.md and the shards it "
                        "writes (created)")
    p.add_argument("--deadline", type=float, default=420.0,
                   help="seconds from the start within which the run ends (+10 %%; default 420)")
    p.add_argument("--device", default="auto", help="cuda, cuda:N, cpu or auto (default: cuda "
                   "when torch sees one)")
    p.add_argument("--small", action="store_true",
                   help="test mode: small preset, 32-pixel inputs, short timings (default off)")
    p.add_argument("--stages", nargs="+", default=list(STAGES), choices=list(STAGES),
                   help="stages to run, in the fixed priority order (default: all)")
    p.add_argument("--measure-seconds", type=float, default=None,
                   help="timed seconds per measurement (default 2, or 0.2 with --small)")
    return p


def resolve(name: str) -> torch.device:
    check_device(name)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if device.index is None:  # set_device needs an index; "cuda" is the current GPU
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)  # so nothing lands on GPU 0 by default
    return device


@handle_errors("model.gpu_report")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for option, value in (("--deadline", args.deadline), ("--measure-seconds",
                                                           args.measure_seconds)):
        if value is not None and not value > 0:
            raise CommandError(f"{option} {value:g}: must be a positive number of seconds")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = ReportConfig(out=args.out, deadline=args.deadline, device=args.device, small=args.small,
                       stages=args.stages, measure_seconds=args.measure_seconds)
    device = resolve(cfg.device)
    report = Report(cfg, device, start=process_start())
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
