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
import contextlib
import json
import logging
import os
import platform
import sys
import tempfile
import time
import traceback
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from .bench import make_infer_step, make_train_step

from pipeline.cli import HelpFormatter
log = logging.getLogger("model.gpu_report")

STAGES = ("environment", "ceiling_train", "ceiling_infer", "trainer_epoch", "loader",
          "end_to_end", "predict", "compile")


@dataclass
class ReportConfig:
    out: str
    deadline: float = 420.0
    device: str = "auto"
    small: bool = False
    stages: list[str] = field(default_factory=lambda: list(STAGES))
    measure_seconds: float | None = None   # timed seconds per measurement (default by mode)

    @property
    def preset(self) -> str:
        return "small" if self.small else "full"

    @property
    def size(self) -> int:
        return 32 if self.small else 224

    @property
    def batches(self) -> tuple[int, int]:
        return (2, 4) if self.small else (64, 128)

    @property
    def warmup(self) -> int:
        return 1 if self.small else 3

    @property
    def min_steps(self) -> int:
        return 1 if self.small else 3

    @property
    def seconds(self) -> float:
        return self.measure_seconds or (0.2 if self.small else 2.0)


# ------------------------------------------------------------------------------------------------
# The report: JSON lines, the deadline, one stage at a time


class Report:
    """Appends one JSON object a line to ``gpu_report.jsonl`` (flushed and fsynced per record)."""

    def __init__(self, cfg: ReportConfig, device: torch.device) -> None:
        self.cfg, self.device = cfg, device
        self.dir = Path(cfg.out)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "gpu_report.jsonl"
        self.run = uuid.uuid4().hex[:8]
        self.start = time.monotonic()
        self.stage = ""
        self._file = self.path.open("a", encoding="utf-8")

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def remaining(self) -> float:
        return self.cfg.deadline - self.elapsed()

    def write(self, **record: Any) -> None:
        line = {"run": self.run, "stage": self.stage, "t": round(self.elapsed(), 2), **record}
        self._file.write(json.dumps(line, default=_jsonable) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()

    def run_stage(self, name: str, fn: Callable[["Report"], None], min_seconds: float) -> None:
        """Run one stage; write its closing line: ok, error (with the traceback) or skipped."""
        self.stage = name
        left = self.remaining()
        if left < min_seconds:
            self.write(kind="stage", status="skipped",
                       reason=f"{left:.0f} s left before the deadline, the stage needs "
                              f"~{min_seconds:.0f} s")
            return
        t0 = time.monotonic()
        try:
            fn(self)
        except Exception as err:  # one stage's failure must not cost the others
            self.write(kind="stage", status="error", error=f"{type(err).__name__}: {err}",
                       traceback=traceback.format_exc()[-4000:],
                       seconds=time.monotonic() - t0)
            log.warning("stage %s failed: %s", name, err)
        else:
            self.write(kind="stage", status="ok", seconds=time.monotonic() - t0)
        finally:
            _free_device_memory(self.device)
            with contextlib.suppress(Exception):
                write_summary(self.path, self.dir / "gpu_report.md", self.run)

    def skip(self, what: dict[str, Any], reason: str) -> None:
        self.write(**{"kind": "measurement", **what, "status": "skipped", "reason": reason})

    def out_of_time(self, reserve: float) -> bool:
        return self.remaining() < reserve


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def _free_device_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step: Callable[[], Any], device: torch.device, seconds: float, warmup: int = 2,
               min_steps: int = 3, max_steps: int = 200) -> dict[str, float]:
    """Throughput timing: ``warmup`` untimed calls, then calls until ``seconds`` have passed
    (at least ``min_steps``); one synchronisation at each end, so queued work overlaps as in
    training. Returns seconds per step and the steps timed."""
    t0 = time.perf_counter()
    for _ in range(warmup):
        step()
    sync(device)
    warm = time.perf_counter() - t0
    n, t0 = 0, time.perf_counter()
    while n < min_steps or (time.perf_counter() - t0 < seconds and n < max_steps):
        step()
        n += 1
        if n % 5 == 0:
            sync(device)  # bound the queue so the clock check means something
    sync(device)
    total = time.perf_counter() - t0
    return {"step_s": total / n, "steps": n, "warmup_s": warm}


@contextlib.contextmanager
def cudnn_benchmark(on: bool) -> Iterator[None]:
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = on
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = previous


def peak_memory(device: torch.device) -> dict[str, float]:
    if device.type != "cuda":
        return {}
    return {"peak_mem_gib": torch.cuda.max_memory_allocated(device) / 2**30}


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


# ------------------------------------------------------------------------------------------------
# Stage 1: environment


def stage_environment(report: Report) -> None:
    device = report.device
    info: dict[str, Any] = {
        "device": str(device), "python": platform.python_version(), "torch": torch.__version__,
        "cuda_runtime": torch.version.cuda, "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "mode": "small" if report.cfg.small else "full", "deadline_s": report.cfg.deadline,
        "preset": report.cfg.preset, "image_size": report.cfg.size,
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gib=props.total_memory / 2**30,
                    capability=f"{props.major}.{props.minor}", sm_count=props.multi_processor_count,
                    gpu_count=torch.cuda.device_count(),
                    tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
                    tf32_cudnn=torch.backends.cudnn.allow_tf32)
    from .engine.precision import choose_precision
    info["amp_choice"] = choose_precision(device, amp=True).name
    info["libraries"] = _library_versions()
    report.write(kind="environment", **info)


def _library_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in ("numpy", "cv2", "h5py", "scipy", "timm", "onnxruntime", "tqdm", "dlib"):
        try:
            module = __import__(name)
            versions[name] = str(getattr(module, "__version__", "?"))
        except Exception:
            versions[name] = None
    with contextlib.suppress(Exception):
        import onnxruntime
        versions["onnxruntime_providers"] = ",".join(onnxruntime.get_available_providers())
    return versions


# ------------------------------------------------------------------------------------------------
# Stages 2-3: the model's ceiling on device-resident data


@dataclass(frozen=True)
class StepSetting:
    precision: str        # bf16 / fp16 / fp32
    channels_last: bool
    batch: int
    cudnn_benchmark: bool

    def label(self) -> dict[str, Any]:
        return asdict(self)


def ceiling_settings(cfg: ReportConfig, train: bool) -> list[StepSetting]:
    """The default (bf16, channels_last, batch 64, benchmark on) first, then one change each."""
    small, large = cfg.batches
    base = StepSetting("bf16", True, small, True)
    settings = [base, StepSetting("bf16", True, large, True), StepSetting("fp16", True, small, True),
                StepSetting("fp32", True, small, True), StepSetting("bf16", False, small, True),
                StepSetting("bf16", True, small, False), StepSetting("fp32", False, small, False)]
    if not train:
        settings.insert(2, StepSetting("bf16", True, large * 2, True))
    else:
        # A batch of 8 costs the GPU little: its step time is the host's (launch) overhead floor.
        settings.append(StepSetting("bf16", True, max(small // 8, 1), True))
    return settings[:1] if cfg.small else settings


def _build(cfg: ReportConfig, device: torch.device, channels_last: bool, preset: str | None = None,
           size: int | None = None):
    from .nets.tranet import TRANetConfig, build_model

    torch.manual_seed(0)
    model = build_model(TRANetConfig(preset=preset or cfg.preset, image_size=size or cfg.size,
                                     channels_last=channels_last))
    return model.to(device)


def _inputs(model, batch: int, size: int, device: torch.device, channels_last: bool):
    x = torch.randn(batch, 3, size, size, device=device) * 60
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = (torch.rand(batch, len(model.config.au_ids), device=device) > 0.7).float()
    return x, y


def measure_ceiling(report: Report, train: bool) -> None:
    from .engine.precision import choose_precision

    cfg, device = report.cfg, report.device
    for setting in ceiling_settings(cfg, train):
        what = {"kind": "measurement", **setting.label()}
        if report.out_of_time(reserve=10 if not cfg.small else 1):
            report.skip(what, "deadline")
            continue
        try:
            precision = choose_precision(device, amp=setting.precision != "fp32",
                                         dtype=setting.precision)
            with cudnn_benchmark(setting.cudnn_benchmark):
                model = _build(cfg, device, setting.channels_last)
                model.train(train)
                x, y = _inputs(model, setting.batch, cfg.size, device, setting.channels_last)
                step = (make_train_step(model, x, y, precision) if train
                        else make_infer_step(model, x, precision))
                reset_peak(device)
                timing = time_steps(step, device, cfg.seconds, cfg.warmup, cfg.min_steps)
            report.write(**what, status="ok", images_per_s=setting.batch / timing["step_s"],
                         **timing, **peak_memory(device))
        except Exception as err:
            report.write(**what, status="error", error=f"{type(err).__name__}: {err}")
        finally:
            model = step = x = y = None  # noqa: F841  (free device memory before the next)
            _free_device_memory(device)


def stage_ceiling_train(report: Report) -> None:
    measure_ceiling(report, train=True)


def stage_ceiling_infer(report: Report) -> None:
    measure_ceiling(report, train=False)


# ------------------------------------------------------------------------------------------------
# Stage 4: the trainer's own train_one_epoch on in-memory batches


def stage_trainer_epoch(report: Report) -> None:
    from .engine.precision import choose_precision

    cfg, device = report.cfg, report.device
    batches = 2 if cfg.small else 30
    for amp in ((True,) if cfg.small else (True, False)):
        what = {"kind": "measurement", "amp": amp,
                "precision": choose_precision(device, amp).name, "batches": batches,
                "batch": cfg.batches[0]}
        if report.out_of_time(reserve=15 if not cfg.small else 1):
            report.skip(what, "deadline")
            continue
        report.write(**what, status="ok", **run_trainer_epoch(cfg, device, amp, batches))


def run_trainer_epoch(cfg: ReportConfig, device: torch.device, amp: bool,
                      batches: int) -> dict[str, Any]:
    """Two calls of ``train_one_epoch`` (the first warms up cudnn and the allocator); the second
    is timed and its host syncs counted (``model.engine.sync_count``)."""
    from .engine import trainer
    from .engine.sync_count import count_host_syncs

    run = trainer_fixture(cfg, device, amp, batches)
    trainer.train_one_epoch(**run)
    run["acc"] = trainer.EpochAccumulator()
    sync(device)
    with cudnn_benchmark(True), count_host_syncs(device) as syncs:
        t0 = time.perf_counter()
        trainer.train_one_epoch(**run)
        sync(device)
        seconds = time.perf_counter() - t0
    return {"images_per_s": batches * cfg.batches[0] / seconds, "seconds": seconds,
            "syncs": syncs.total, "syncs_per_step": syncs.total / batches,
            "sync_kinds": dict(syncs.by_kind), "sync_method": syncs.method,
            "loss_mean": run["acc"].loss_sum / max(run["acc"].batches, 1)}


def trainer_fixture(cfg: ReportConfig, device: torch.device, amp: bool,
                    batches: int) -> dict[str, Any]:
    """The keyword arguments of ``train_one_epoch``: model, optimiser, schedule and a list of
    pinned uint8 batches standing in for the DataLoader."""
    from .engine import trainer
    from .engine.config import TrainConfig
    from .engine.distributed import DistInfo
    from .engine.losses import region_bce_criterion
    from .engine.precision import choose_precision

    train_cfg = TrainConfig(shards="", manifest="", fold=1, out="", preset=cfg.preset,
                            batches_per_epoch=batches, batch_size=cfg.batches[0], amp=amp,
                            channels_last=True, quiet=True, device=str(device))
    model = _build(cfg, device, channels_last=True)
    precision = choose_precision(device, amp)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4,
                                momentum=0.9, weight_decay=1e-3)
    gen = torch.Generator().manual_seed(0)
    pin = device.type == "cuda"
    distinct = []
    for _ in range(min(batches, 4)):
        images = torch.randint(0, 256, (cfg.batches[0], cfg.size, cfg.size, 3), generator=gen,
                               dtype=torch.uint8)
        targets = (torch.rand(cfg.batches[0], len(model.config.au_ids),
                              generator=gen) > 0.7).float()
        if pin:
            images, targets = images.pin_memory(), targets.pin_memory()
        distinct.append((images, targets, torch.arange(cfg.batches[0])))
    return dict(model=model, optimizer=optimizer,
                criterion=region_bce_criterion(model.config.au_ids),
                loader=[distinct[i % len(distinct)] for i in range(batches)], device=device,
                epoch=1, cfg=train_cfg, scaler=precision.grad_scaler(),
                scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0),
                acc=trainer.EpochAccumulator(), stop=trainer.StopRequest(),
                info=DistInfo())


# ------------------------------------------------------------------------------------------------
# Stage 5: the loader alone, on shards written here


SUBJECTS = ("SN001", "SN002", "SN003", "SN004")
SMALL_FRAMES = 16  # frames a subject in the test mode


def synth_shards(root: Path, frames: int, size: int, seed: int = 0) -> tuple[Path, Path]:
    """Shards of smooth random frames (JPEG sizes near aligned faces', not noise) and a one-fold
    folds.json (train SN001-2, val SN003, test SN004), written with pipeline.shards' writer."""
    import cv2

    from pipeline.disfa import ALL_AUS, EVAL_AUS
    from pipeline.shards import ShardWriter, shard_name

    from .engine.sampler import au_weights_from_labels

    rng = np.random.default_rng(seed)
    shards = root / "shards"
    train_labels = []
    for subject in SUBJECTS:
        with ShardWriter(shards / shard_name(subject, "left"), size) as writer:
            for start in range(0, frames, 64):
                k = min(64, frames - start)
                coarse = rng.integers(0, 256, (k, 12, 12, 3), dtype=np.uint8)
                images = np.stack([cv2.resize(c, (size, size), interpolation=cv2.INTER_CUBIC)
                                   for c in coarse])
                intensity = rng.choice(6, (k, len(ALL_AUS)), p=[.6, .1, .1, .1, .05, .05])
                writer.append_many(images, range(start, start + k), intensity.astype(np.uint8),
                                   rng.uniform(0, size, (k, 66, 2)))
                if subject in SUBJECTS[:2]:
                    train_labels.append(intensity[:, [ALL_AUS.index(a) for a in EVAL_AUS]] >= 3)
            writer.commit(subject=subject, camera="left", threshold=3, au_ids=EVAL_AUS,
                          nose_target=(size / 2, size * 0.55), chin_target=(size / 2, size * 0.9),
                          n_source_frames=frames, config={"gpu_report": "synthetic"})
    manifest = root / "folds.json"
    manifest.write_text(json.dumps({
        "scheme": "kfold", "au_ids": list(EVAL_AUS), "threshold": 3, "image_size": size,
        "shards_dir": str(shards), "config": {"gpu_report": "synthetic"},
        "folds": [{"fold": 1, "train": list(SUBJECTS[:2]), "val": [SUBJECTS[2]],
                   "test": [SUBJECTS[3]],
                   "au_weights": au_weights_from_labels(np.concatenate(train_labels)).tolist()}]}))
    return shards, manifest


def loader_settings(cfg: ReportConfig) -> list[dict[str, Any]]:
    cpus = os.cpu_count() or 1
    counts = [1] if cfg.small else [w for w in (1, 2, 4, 8) if w <= max(cpus, 1)]
    settings = [{"workers": w, "flip": True, "jitter": True} for w in counts]
    if not cfg.small:
        settings.append({"workers": counts[-1], "flip": True, "jitter": False})
        settings.append({"workers": counts[-1], "flip": False, "jitter": False})
    return settings


def stage_loader(report: Report) -> None:
    cfg = report.cfg
    frames = SMALL_FRAMES if cfg.small else 512
    t0 = time.perf_counter()
    shards, _ = ensure_shards(report, frames)
    report.write(kind="shards", frames_per_subject=frames, subjects=len(SUBJECTS),
                 write_s=time.perf_counter() - t0, bytes_per_frame=_jpeg_bytes(shards, frames))
    for setting in loader_settings(cfg):
        what = {"kind": "measurement", **setting, "batch": cfg.batches[0]}
        if report.out_of_time(reserve=10 if not cfg.small else 1):
            report.skip(what, "deadline")
            continue
        report.write(**what, status="ok", **time_loader(report, shards, **setting))


def ensure_shards(report: Report, frames: int) -> tuple[Path, Path]:
    """Synthetic shards under OUT/data (written once per run folder)."""
    root = report.dir / "data"
    manifest = root / "folds.json"
    if manifest.exists() and (root / "shards").is_dir():
        return root / "shards", manifest
    return synth_shards(root, frames, report.cfg.size)


def _jpeg_bytes(shards: Path, frames: int) -> float:
    return sum(p.stat().st_size for p in shards.glob("*.h5")) / (frames * len(SUBJECTS))


def time_loader(report: Report, shards: Path, workers: int, flip: bool,
                jitter: bool) -> dict[str, Any]:
    """Frames/s of the training DataLoader (weighted sampler, flip/jitter as asked, pinned
    memory on CUDA); the first batch (worker start-up) is timed apart."""
    from torch.utils.data import DataLoader

    from pipeline.disfa import EVAL_AUS
    from pipeline.shards import ShardReader

    from .engine.augment import AlignmentJitter
    from .engine.data import ShardFrames, collate_frames, single_threaded_opencv
    from .engine.sampler import WeightedFrameSampler

    cfg = report.cfg
    readers = [ShardReader(p) for p in sorted(shards.glob("*.h5"))]
    aug = AlignmentJitter(0.05, 5.0, 0.03) if jitter else None
    dataset = ShardFrames(readers, EVAL_AUS, 3, jitter=aug)
    batches = 2 if cfg.small else 40
    batch = cfg.batches[0]
    sampler = WeightedFrameSampler(np.ones(len(dataset)), batch * (batches + 1), seed=1,
                                   flip=flip, jitter=jitter)
    single_threaded_opencv(workers)
    loader = DataLoader(dataset, batch_size=batch, sampler=sampler, num_workers=workers,
                        collate_fn=collate_frames, pin_memory=report.device.type == "cuda")
    t0 = time.perf_counter()
    it = iter(loader)
    next(it)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    n = sum(len(images) for images, _, _ in it)
    seconds = time.perf_counter() - t0
    return {"frames_per_s": n / seconds, "frames": n, "first_batch_s": first}


# ------------------------------------------------------------------------------------------------
# Stage 6: two short epochs through the trainer's code path


def stage_end_to_end(report: Report) -> None:
    from .engine.config import TrainConfig
    from .engine.trainer import train

    cfg = report.cfg
    _, manifest = ensure_shards(report, SMALL_FRAMES if cfg.small else 512)
    batches = 1 if cfg.small else 30
    out = Path(tempfile.mkdtemp(prefix="e2e-", dir=report.dir))
    train_cfg = TrainConfig(shards=str(manifest.parent / "shards"), manifest=str(manifest), fold=1,
                            out=str(out), preset=cfg.preset, epochs=2, batches_per_epoch=batches,
                            batch_size=cfg.batches[0], eval_batches=1 if cfg.small else 8,
                            eval_batch_size=cfg.batches[1], amp=True, quiet=True,
                            device=str(report.device), plot_every=2,
                            workers=min(8, os.cpu_count() or 1) if not cfg.small else 1)
    t0 = time.perf_counter()
    summary = train(train_cfg)
    wall = time.perf_counter() - t0
    history = summary_history(out)
    train_s = [row["seconds"] for row in history]
    report.write(kind="measurement", status="ok", epochs=len(history), batches=batches,
                 batch=cfg.batches[0], wall_s=wall, train_s_per_epoch=train_s,
                 train_images_per_s=[batches * cfg.batches[0] / s for s in train_s],
                 run_status=summary.get("status"), workers=train_cfg.workers,
                 config=asdict(train_cfg))


def summary_history(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.json"
    payload = json.loads(path.read_text()) if path.exists() else {}
    return payload.get("epochs", []) if isinstance(payload, dict) else payload


# ------------------------------------------------------------------------------------------------
# Stage 7: torch.compile


#: torch.compile modes tried, in order: "default" fuses kernels; "reduce-overhead" adds CUDA
#: graphs, which removes the per-kernel launch cost that bounds the eager step at batch 64.
COMPILE_MODES = ("default", "reduce-overhead")


def stage_compile(report: Report) -> None:
    cfg = report.cfg
    if cfg.small:
        # Even dynamo's tracing alone (backend "eager") takes ~15 s of CPU for this model.
        report.write(kind="measurement", status="skipped", reason="not run in the test mode")
        return
    for mode in COMPILE_MODES:
        what = {"kind": "measurement", "mode": mode, "batch": cfg.batches[0]}
        if report.out_of_time(reserve=45):
            report.skip(what, "deadline")
            continue
        try:
            report.write(**what, status="ok", **time_compiled(report, mode))
        except Exception as err:
            report.write(**what, status="error", error=f"{type(err).__name__}: {err}"[:1000])
        finally:
            torch._dynamo.reset()
            _free_device_memory(report.device)


def time_compiled(report: Report, mode: str) -> dict[str, Any]:
    """First-step (compile) seconds and steady images/s of the compiled training step."""
    from .engine.precision import choose_precision

    cfg, device = report.cfg, report.device
    precision = choose_precision(device, amp=True)
    with cudnn_benchmark(True):
        model = _build(cfg, device, channels_last=True)
        x, y = _inputs(model, cfg.batches[0], cfg.size, device, True)
        step = make_train_step(torch.compile(model, mode=mode), x, y, precision)
        t0 = time.perf_counter()
        step()
        sync(device)
        compile_s = time.perf_counter() - t0
        timing = time_steps(step, device, cfg.seconds, cfg.warmup, cfg.min_steps)
    return {"precision": precision.name, "first_step_s": compile_s,
            "images_per_s": cfg.batches[0] / timing["step_s"], **timing}


# ------------------------------------------------------------------------------------------------
# Stage 8: predict-sized inference


def stage_predict(report: Report) -> None:
    cfg = report.cfg
    presets = [("small", 112)] if cfg.small else [("small", 112), ("full", 224)]
    sizes = (1,) if cfg.small else (1, 2, 4, 8, 16)
    for preset, size in presets:
        if cfg.small:
            size = cfg.size
        model = _build(cfg, report.device, channels_last=True, preset=preset, size=size).eval()
        for batch in sizes:
            for engine, fn in predict_engines(report, model, batch, size):
                what = {"kind": "measurement", "preset": preset, "size": size, "batch": batch,
                        "engine": engine}
                if report.out_of_time(reserve=5 if not cfg.small else 0.5):
                    report.skip(what, "deadline")
                    continue
                try:
                    timing = time_steps(fn, report.device, cfg.seconds / 2, cfg.warmup,
                                        cfg.min_steps)
                    report.write(**what, status="ok", images_per_s=batch / timing["step_s"],
                                 ms_per_batch=1000 * timing["step_s"], steps=timing["steps"])
                except Exception as err:
                    report.write(**what, status="error", error=f"{type(err).__name__}: {err}")


def predict_engines(report: Report, model, batch: int, size: int):
    """(name, step) pairs: torch fp32, torch with the AMP choice, onnxruntime per provider."""
    from .engine.precision import choose_precision

    device = report.device
    x = torch.randn(batch, 3, size, size, device=device) * 60
    engines = []
    for amp in (False, True):
        precision = choose_precision(device, amp)
        engines.append((f"torch-{precision.name}", make_infer_step(model, x, precision)))
    try:
        engines.extend(onnx_engines(report, model, x))
    except Exception as err:  # an exporter or provider problem must not cost the torch rows
        report.write(kind="measurement", status="error", engine="onnxruntime", batch=len(x),
                     error=f"{type(err).__name__}: {err}"[:500])
    return engines


def onnx_engines(report: Report, model, x: torch.Tensor) -> list[tuple[str, Callable[[], Any]]]:
    """onnxruntime sessions of the model (exported once per preset and size) per provider."""
    try:
        import onnxruntime as ort
    except ImportError:
        return []
    path = report.dir / f"tranet-{model.config.preset}-{x.shape[-1]}.onnx"
    if not path.exists():
        export_onnx(model, x, path)
    feed = {"images": x.float().cpu().numpy()}
    engines = []
    for provider in ("CUDAExecutionProvider", "CPUExecutionProvider"):
        if provider not in ort.get_available_providers():
            continue
        try:
            session = ort.InferenceSession(str(path), providers=[provider])
        except Exception as err:
            report.write(kind="measurement", status="error", engine=provider,
                         error=f"{type(err).__name__}: {err}"[:500])
            continue
        engines.append((f"onnxruntime-{provider.replace('ExecutionProvider', '')}",
                        lambda s=session: s.run(None, feed)))
    return engines


def export_onnx(model, x: torch.Tensor, path: Path) -> None:
    import warnings

    cpu_model = _copy_to_cpu(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kwargs = dict(input_names=["images"], output_names=["logits"],
                      dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}})
        try:
            torch.onnx.export(cpu_model, (x[:1].float().cpu(),), str(path), dynamo=False,
                              **kwargs)
        except TypeError:  # torch without the dynamo switch
            torch.onnx.export(cpu_model, (x[:1].float().cpu(),), str(path), **kwargs)


def _copy_to_cpu(model):
    import copy

    return copy.deepcopy(model).cpu().float().eval()


# ------------------------------------------------------------------------------------------------
# The Markdown summary


def read_records(path: Path, run: str | None = None) -> list[dict[str, Any]]:
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            record = json.loads(line)
            if run is None or record.get("run") == run:
                records.append(record)
    if run is None and records:
        last = records[-1]["run"]
        records = [r for r in records if r.get("run") == last]
    return records


HIDDEN = {"run", "stage", "t", "kind", "traceback", "config", "sync_method", "libraries"}


def write_summary(jsonl: Path, md: Path, run: str | None = None) -> Path:
    """DIR/gpu_report.md: the environment, then one table per stage, from the JSON lines."""
    records = read_records(jsonl, run)
    lines = ["# GPU report", ""]
    env = next((r for r in records if r.get("kind") == "environment"), None)
    if env:
        lines += [f"- {k}: {_fmt(v)}" for k, v in env.items() if k not in HIDDEN]
        lines += [f"- libraries: {_fmt(env.get('libraries'))}", ""]
    lines += headline(records) + [""]
    for stage in STAGES[1:]:
        rows = [r for r in records if r.get("stage") == stage and r.get("kind") != "stage"]
        closing = [r for r in records if r.get("stage") == stage and r.get("kind") == "stage"]
        status = closing[-1] if closing else {"status": "not reached (killed or still running)"}
        lines += [f"## {stage}", "", f"status: {status.get('status')}"
                  + (f" ({status.get('reason') or status.get('error')})"
                     if status.get("reason") or status.get("error") else ""), ""]
        lines += _table(rows) + [""]
    tmp = md.with_name(f".{md.name}.tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tmp.replace(md)
    return md


GOAL_TRAIN_IMAGES_PER_S = 1500  # full TRA-Net at 224 with --amp on one H100/H200


def headline(records: list[dict[str, Any]]) -> list[str]:
    """The figures that answer the issue's questions, each with the row it comes from."""
    ok = [r for r in records if r.get("kind") == "measurement" and r.get("status") == "ok"]

    def best(stage: str, key: str, **match: Any) -> dict[str, Any] | None:
        rows = [r for r in ok if r.get("stage") == stage and key in r
                and all(r.get(k) == v for k, v in match.items())]
        return max(rows, key=lambda r: r[key]) if rows else None

    lines = ["## Headline", ""]
    default = best("ceiling_train", "images_per_s", precision="bf16", channels_last=True,
                   cudnn_benchmark=True, batch=64)
    top = best("ceiling_train", "images_per_s")
    for label, row in (("model ceiling, bf16, batch 64", default),
                       ("model ceiling, best setting", top)):
        if row:
            verdict = "meets" if row["images_per_s"] >= GOAL_TRAIN_IMAGES_PER_S else "misses"
            lines.append(f"- {label}: {row['images_per_s']:.0f} training images/s "
                         f"({verdict} the {GOAL_TRAIN_IMAGES_PER_S} goal; precision "
                         f"{row['precision']}, batch {row['batch']})")
    trainer = best("trainer_epoch", "images_per_s", amp=True)
    if trainer:
        lines.append(f"- trainer's train_one_epoch (--amp, in-memory batches): "
                     f"{trainer['images_per_s']:.0f} images/s, "
                     f"{trainer['syncs_per_step']:.2f} host syncs a step")
    loader = best("loader", "frames_per_s", flip=True, jitter=True)
    if loader:
        lines.append(f"- loader (flip + jitter): up to {loader['frames_per_s']:.0f} frames/s "
                     f"with {loader['workers']} workers")
    e2e = best("end_to_end", "wall_s")
    if e2e and e2e.get("train_images_per_s"):
        lines.append(f"- two epochs through the trainer: {_fmt(e2e['train_images_per_s'])} "
                     f"training images/s, {e2e['wall_s']:.1f} s in all")
    compiled = best("compile", "images_per_s")
    if compiled:
        lines.append(f"- torch.compile ({compiled['mode']}): {compiled['images_per_s']:.0f} "
                     f"training images/s after {compiled['first_step_s']:.0f} s compiling")
    return lines if len(lines) > 2 else lines + ["- nothing measured yet"]


def _table(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return []
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in HIDDEN and k not in columns]
    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    out += ["| " + " | ".join(_fmt(row.get(c, "")) for c in columns) + " |" for row in rows]
    return out


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1000 else f"{value:.0f}"
    if isinstance(value, list):
        return ", ".join(_fmt(v) for v in value)
    if isinstance(value, dict):
        return "; ".join(f"{k}={_fmt(v)}" for k, v in value.items())
    return str(value).replace("|", "/").replace("\n", " ")


# ------------------------------------------------------------------------------------------------
# The command


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


if __name__ == "__main__":
    sys.exit(main())
