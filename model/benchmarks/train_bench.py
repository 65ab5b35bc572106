"""Speed and size of TRA-Net against its SENet-50 backbone, measured in one run on the same batch.

``python -m model.bench`` times, for each preset asked for:

* a training step (forward, branch BCE loss, backward, SGD step) of TRA-Net and of the "senet50"
  variant (the backbone alone with its global-pool + FC head, same frozen blocks) on the SAME
  batch, steps interleaved so that both see the same machine load; the ratio of the two;
* inference (eval mode, ``torch.inference_mode``) images/s of both;
* the non-view ATen ops of one training step of both, fp32 and autocast (``op_count``: the
  host's work a step, which bounds a GPU step at the paper's batch).

Times are medians over the timed steps after warm-up (CPU timings on a shared machine are noisy;
the median is robust to another process stealing a core for one step). On CUDA
(``--device cuda``) it synchronises before reading the clock, turns cudnn.benchmark on and uses
batches of 64 (full) / 128 (small) unless told otherwise; ``--amp`` is the trainer's mixed
precision (``model.engine.precision``: bfloat16 where supported, else float16 + GradScaler) and
``--no-channels-last`` times the NCHW layout. For the whole GPU picture (loader, trainer, syncs)
use ``python -m model.gpu_report``.

``--flops`` also reports parameters and GFLOPs (``torch.utils.flop_counter.FlopCounterMode``,
one forward pass, a multiply-add counted as 2 FLOPs) of every variant at ``--flops-size``.

``--backbone senet50 timm:resnet50 timm:convnext_tiny ...`` instead compares TRA-Net (full preset)
on each backbone beside SENet-50, in one run on the same batch, steps interleaved: parameters
(all / trainable with the backbone's default frozen blocks), GFLOPs at ``--flops-size`` and
train/inference images/s at ``--full-size`` with ``--full-batch``.
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from pipeline.cli import HelpFormatter
from ..cli import CommandError, check_device, handle_errors
from ..engine.cast_once import autocast_forward
from ..engine.losses import region_bce_criterion
from ..engine.precision import Precision, choose_precision
from ..nets.tranet import VARIANTS, TRANet, TRANetConfig, build_model
from .op_count import count_train_step_ops

log = logging.getLogger("model.bench")


@dataclass
class BenchConfig:
    presets: list[str] = field(default_factory=lambda: ["full", "small"])
    full_batch: int | None = None    # 4 on CPU, 64 on CUDA
    small_batch: int | None = None   # 32 on CPU, 128 on CUDA
    full_size: int = 224
    small_size: int = 112
    steps: int = 4
    warmup: int = 2
    threads: int | None = None
    device: str = "auto"
    amp: bool = False
    channels_last: bool = True
    flops: bool = True
    flops_size: int = 224
    backbone: list[str] | None = None
    out: str | None = None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m model.bench", description=__doc__,
                                formatter_class=HelpFormatter)
    d = BenchConfig()
    p.add_argument("--presets", nargs="+", default=d.presets, choices=["full", "small"],
                   help="model sizes to time (default: both)")
    p.add_argument("--full-batch", type=int, default=d.full_batch,
                   help="batch for the full preset (default 4 on CPU, 64 on CUDA)")
    p.add_argument("--small-batch", type=int, default=d.small_batch,
                   help="batch for the small preset (default 32 on CPU, 128 on CUDA)")
    p.add_argument("--full-size", type=int, default=d.full_size, help="input size for the full preset")
    p.add_argument("--small-size", type=int, default=d.small_size, help="input size for the small preset")
    p.add_argument("--steps", type=int, default=d.steps, help="timed steps per model (median reported)")
    p.add_argument("--warmup", type=int, default=d.warmup, help="untimed steps first (allocator, oneDNN)")
    p.add_argument("--threads", type=int, default=d.threads, help="torch CPU threads (default: torch's)")
    p.add_argument("--device", default=d.device,
                   help="'cpu', 'cuda', 'cuda:N' or 'auto' (cuda when available; default auto)")
    p.add_argument("--amp", action="store_true",
                   help="mixed precision as the trainer's --amp (default off: float32)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction,
                   default=d.channels_last,
                   help="channels_last memory format (default on; --no-channels-last for NCHW)")
    p.add_argument("--no-flops", dest="flops", action="store_false",
                   help="skip the parameter/GFLOP table of every variant")
    p.add_argument("--flops-size", type=int, default=d.flops_size, help="input size of the GFLOP count")
    p.add_argument("--backbone", nargs="+", default=None, metavar="NAME",
                   help="compare TRA-Net on these backbones (senet50, timm:<model>...) beside "
                        "SENet-50 instead of timing the presets (default: off)")
    p.add_argument("--out", default=d.out, help="also write the results as JSON to this file")
    return p


def _parse_args(argv: list[str] | None = None) -> BenchConfig:
    return BenchConfig(**vars(build_parser().parse_args(argv)))


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(all parameters, trainable parameters)."""
    total = sum(p.numel() for p in model.parameters())
    return total, sum(p.numel() for p in model.parameters() if p.requires_grad)


def count_gflops(model: torch.nn.Module, size: int) -> float:
    """Forward GFLOPs of one ``size`` x ``size`` image (FlopCounterMode; a MAC = 2 FLOPs)."""
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model.eval()(torch.zeros(1, 3, size, size))
    return counter.get_total_flops() / 1e9


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_train_step(model: TRANet, x: torch.Tensor, y: torch.Tensor,
                     precision: Precision) -> Callable[[], None]:
    """Forward, region BCE, backward, SGD step: the trainer's step minus the data (also timed by
    model.gpu_report)."""
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9,
                          weight_decay=1e-3)
    scaler = precision.grad_scaler()
    criterion = region_bce_criterion(model.config.au_ids)  # the trainer's loss, every variant

    def step() -> None:
        logits = autocast_forward(model, precision, x)  # as the trainer: weights cast once
        loss = criterion(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    return step


def make_infer_step(model: TRANet, x: torch.Tensor, precision: Precision) -> Callable[[], None]:
    def step() -> None:
        with torch.inference_mode():
            autocast_forward(model, precision, x)
    return step


def _time_interleaved(steps: dict[str, Callable[[], None]], n: int, warmup: int,
                      device: torch.device) -> tuple[dict[str, float], dict[str, float]]:
    """Median wall and process-CPU seconds per call of each step; calls alternate so all see
    the same load. CPU seconds (all threads) are what the step costs even when other processes
    share the cores and stretch the wall time."""
    wall: dict[str, list[float]] = {k: [] for k in steps}
    cpu: dict[str, list[float]] = {k: [] for k in steps}
    for i in range(warmup + n):
        for name, fn in steps.items():
            _sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            _sync(device)
            if i >= warmup:
                wall[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)
    return ({k: statistics.median(v) for k, v in wall.items()},
            {k: statistics.median(v) for k, v in cpu.items()})


def bench_preset(preset: str, batch: int, size: int, cfg: BenchConfig, device: torch.device) -> dict:
    """Train/inference images/s of TRA-Net and the senet50 variant of one preset, same batch."""
    torch.manual_seed(0)
    precision = choose_precision(device, cfg.amp)
    models = {v: build_model(TRANetConfig(variant=v, preset=preset, image_size=size,
                                          channels_last=cfg.channels_last)).to(device)
              for v in ("tranet", "senet50")}
    x = torch.randn(batch, 3, size, size, device=device)
    y = (torch.rand(batch, len(models["tranet"].config.au_ids), device=device) > 0.7).float()
    for m in models.values():
        m.train()
    train, train_cpu = _time_interleaved(
        {k: make_train_step(m, x, y, precision) for k, m in models.items()},
        cfg.steps, cfg.warmup, device)
    for m in models.values():
        m.eval()
    infer, infer_cpu = _time_interleaved(
        {k: make_infer_step(m, x, precision) for k, m in models.items()},
        cfg.steps, cfg.warmup, device)
    result = {"preset": preset, "batch": batch, "size": size, "device": str(device),
              "precision": precision.name, "channels_last": cfg.channels_last}
    for k in models:
        result[f"{k}_train_img_s"] = batch / train[k]
        result[f"{k}_infer_img_s"] = batch / infer[k]
        result[f"{k}_train_cpu_s_per_img"] = train_cpu[k] / batch
        result[f"{k}_infer_cpu_s_per_img"] = infer_cpu[k] / batch
    result["train_step_ratio"] = train["tranet"] / train["senet50"]
    result["train_step_ratio_cpu_time"] = train_cpu["tranet"] / train_cpu["senet50"]
    result["infer_ratio"] = infer["tranet"] / infer["senet50"]
    result.update(step_op_counts(preset))
    return result


def step_op_counts(preset: str) -> dict[str, int]:
    """Non-view ATen ops of one training step (CPU count, ``benchmarks.op_count``) of TRA-Net
    and the backbone, float32 and autocast: the host's work a step, whatever the device."""
    return {f"{variant}_step_ops_{name}": count_train_step_ops(variant, preset, amp=amp).total
            for variant in ("tranet", "senet50") for name, amp in (("fp32", False), ("autocast", True))}


def flops_table(size: int, preset: str = "full") -> list[dict]:
    """Parameters and forward GFLOPs of every variant."""
    rows = []
    for variant in VARIANTS:
        model = build_model(TRANetConfig(variant=variant, preset=preset, image_size=size))
        total, trainable = count_parameters(model)
        rows.append({"variant": variant, "preset": preset, "size": size, "params_M": total / 1e6,
                     "trainable_params_M": trainable / 1e6, "gflops": count_gflops(model, size)})
    return rows


def bench_backbones(backbones: list[str], cfg: BenchConfig, device: torch.device) -> list[dict]:
    """TRA-Net (full preset) on each backbone, SENet-50 first: size, GFLOPs, train/infer img/s on
    the same batch with the steps interleaved."""
    names = list(dict.fromkeys(["senet50", *backbones]))
    batch, size = cfg.full_batch, cfg.full_size
    precision = choose_precision(device, cfg.amp)
    models = {}
    for name in names:
        torch.manual_seed(0)
        models[name] = build_model(TRANetConfig(backbone=name, image_size=size,
                                                channels_last=cfg.channels_last)).to(device)
    x = torch.randn(batch, 3, size, size, device=device)
    y = (torch.rand(batch, len(models["senet50"].config.au_ids), device=device) > 0.7).float()
    rows = {}
    for name, model in models.items():
        total, trainable = count_parameters(model)
        rows[name] = {"backbone": name, "batch": batch, "size": size, "device": str(device),
                      "precision": precision.name, "params_M": total / 1e6,
                      "trainable_params_M": trainable / 1e6,
                      "frozen_blocks": model.config.resolved_frozen_blocks,
                      "gflops": count_gflops(model, cfg.flops_size), "flops_size": cfg.flops_size}
        model.train()
    train, _ = _time_interleaved({k: make_train_step(m, x, y, precision) for k, m in models.items()},
                                 cfg.steps, cfg.warmup, device)
    for model in models.values():
        model.eval()
    infer, _ = _time_interleaved({k: make_infer_step(m, x, precision) for k, m in models.items()},
                                 cfg.steps, cfg.warmup, device)
    for name, row in rows.items():
        row.update(train_img_s=batch / train[name], infer_img_s=batch / infer[name],
                   train_vs_senet50=train["senet50"] / train[name])
    return list(rows.values())


def print_backbones(rows: list[dict], device: torch.device, threads: int, steps: int) -> None:
    r0 = rows[0]
    print(f"\nTRA-Net by backbone ({device}, {threads} threads, {r0['precision']}, "
          f"batch {r0['batch']} at "
          f"{r0['size']}x{r0['size']}, median of {steps} steps; GFLOPs at {r0['flops_size']})")
    print(f"{'backbone':<28} {'params M':>9} {'trainable M':>11} {'GFLOPs':>7} "
          f"{'train img/s':>11} {'infer img/s':>11} {'train speed vs SENet-50':>23}")
    for r in rows:
        print(f"{r['backbone']:<28} {r['params_M']:>9.2f} {r['trainable_params_M']:>11.2f} "
              f"{r['gflops']:>7.2f} {r['train_img_s']:>11.2f} {r['infer_img_s']:>11.2f} "
              f"{r['train_vs_senet50']:>22.2f}x")


def print_speed(results: dict, device: torch.device, cfg: BenchConfig) -> None:
    """The presets' speed table, then the parameter/GFLOP table when counted."""
    print(f"\nSpeed ({device}, {results['threads']} threads, "
          f"{choose_precision(device, cfg.amp).name}, channels_last {cfg.channels_last}; "
          f"median of {cfg.steps} steps)")
    print(f"{'preset':<6} {'batch':>5} {'size':>4} | {'train img/s TRA-Net':>19} {'backbone':>9} "
          f"{'ratio':>6} {'ratio(cpu s)':>12} | {'infer img/s TRA-Net':>19} {'backbone':>9}")
    for r in results["speed"]:
        print(f"{r['preset']:<6} {r['batch']:>5} {r['size']:>4} | {r['tranet_train_img_s']:>19.1f} "
              f"{r['senet50_train_img_s']:>9.1f} {r['train_step_ratio']:>6.2f} "
              f"{r['train_step_ratio_cpu_time']:>12.2f} | "
              f"{r['tranet_infer_img_s']:>19.1f} {r['senet50_infer_img_s']:>9.1f}")
    for r in results["speed"]:
        if "tranet_step_ops_fp32" in r:
            print(f"ops a training step, {r['preset']}: TRA-Net {r['tranet_step_ops_fp32']} fp32, "
                  f"{r['tranet_step_ops_autocast']} autocast; backbone {r['senet50_step_ops_fp32']} "
                  f"fp32, {r['senet50_step_ops_autocast']} autocast (non-view ATen ops of the GPU's step, "
                  "counted on CPU)")
    if device.type == "cpu":
        print("(ratio = TRA-Net step time / backbone step time on the same batch; 'cpu s' uses "
              "process CPU seconds, robust to other processes sharing the cores)")
    if results["flops"]:
        print(f"\n{'variant':<20} {'preset':<6} {'size':>4} {'params M':>9} {'trainable M':>11} {'GFLOPs':>7}")
        for r in results["flops"]:
            print(f"{r['variant']:<20} {r['preset']:<6} {r['size']:>4} {r['params_M']:>9.2f} "
                  f"{r['trainable_params_M']:>11.2f} {r['gflops']:>7.2f}")


@handle_errors("model.bench")
def main(argv: list[str] | None = None) -> dict:
    cfg = _parse_args(argv)
    check_device(cfg.device)
    if cfg.out and Path(cfg.out).is_dir():
        raise CommandError(f"--out {cfg.out}: is a folder; give a JSON file name")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if cfg.device == "auto" else cfg.device))
    if device.type == "cuda":
        if device.index is None:  # set_device needs an index; "cuda" is the current GPU
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True  # fixed-size input, as in training
    gpu = device.type == "cuda"
    cfg.full_batch = cfg.full_batch or (64 if gpu else 4)
    cfg.small_batch = cfg.small_batch or (128 if gpu else 32)
    log.info("device %s, %d CPU threads, precision %s", device, torch.get_num_threads(),
             choose_precision(device, cfg.amp).name)
    results: dict = {"config": asdict(cfg), "torch": torch.__version__, "threads": torch.get_num_threads(),
                     "speed": [], "flops": []}
    if cfg.backbone:
        log.info("timing TRA-Net on %s beside senet50", ", ".join(cfg.backbone))
        results["backbones"] = bench_backbones(cfg.backbone, cfg, device)
        print_backbones(results["backbones"], device, results["threads"], cfg.steps)
        _write_json(cfg.out, results)
        return results
    for preset in cfg.presets:
        batch, size = ((cfg.full_batch, cfg.full_size) if preset == "full"
                       else (cfg.small_batch, cfg.small_size))
        log.info("timing preset %s: batch %d at %dx%d", preset, batch, size, size)
        results["speed"].append(bench_preset(preset, batch, size, cfg, device))
    if cfg.flops:
        log.info("counting parameters and FLOPs of every variant at %d", cfg.flops_size)
        results["flops"] = flops_table(cfg.flops_size) + flops_table(cfg.small_size, "small")

    print_speed(results, device, cfg)
    _write_json(cfg.out, results)
    return results


def _write_json(out: str | None, results: dict) -> None:
    if out:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(results, indent=2))
        tmp.replace(path)


if __name__ == "__main__":
    main()
