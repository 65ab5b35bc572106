"""Speed and size of the alignment pipeline, measured in one run on one machine.

    python -m pipeline.bench                 # ~1-2 minutes on 2 cores
    python -m pipeline.bench --frames 600 --json bench.json

On a synthetic twin at the release's frame size (1024x768, MJPG, from ``pipeline.synth``):

* decode-only rate of a video (sequential ``cv2.VideoCapture``, one thread) vs the full
  alignment job on one core (labels, landmarks, warp, JPEG, shard) - target >= 0.8x;
* two subjects with ``--jobs 2`` vs the same two subjects one after the other - target >= 1.7x
  (needs two idle cores; the pool is warmed first so worker start-up is not counted);
* shard bytes per 224x224 frame at the default encoding (JPEG q90) - target <= 32 KB - and its
  PSNR against ``--encoding raw``, also for the real DISFA fixture frame when present;
* ``ShardReader.image`` decode rate on one core - target >= 2,000 frames/s;

then projects the one-core and N-job times to the full release (130,814 left-camera frames).
Every ratio compares numbers measured in this run, so they hold on the machine that ran it.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import cv2
import h5py
import numpy as np

from .align import AlignConfig, align_subject
from .aligner.plan import plan_jobs
from .aligner.video import open_video
from .cli import HelpFormatter, CommandError, check_out_dir, handle_errors, int_range
from .alignment import AlignmentConfig, align_face
from .datasets.disfa.facts import SUBJECTS, n_frames
from .datasets.disfa import discover
from .shards import DEFAULT_JPEG_QUALITY, ShardReader, encode_jpeg, decode_jpeg

log = logging.getLogger("pipeline.bench")  # not __name__: run with -m it is __main__

RELEASE_FRAMES = sum(n_frames(s) for s in SUBJECTS)  # 130,814
TARGETS = {"align_vs_decode": 0.8, "two_jobs_speedup": 1.7, "bytes_per_frame": 32 * 1024,
           "reader_fps": 2000.0}
REAL_FIXTURE = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "disfa_sn002"


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0 ** 2 / mse))


class _Clock:
    """Wall time and this process's CPU time. On a busy machine the CPU-time rate is what one
    idle core would give; the wall-clock rate is what this run got."""

    def __enter__(self) -> "_Clock":
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu


def decode_only_fps(video: Path) -> tuple[float, float, int]:
    """Frames per second (wall, CPU) of a plain sequential decode (what alignment cannot beat).

    Decodes into one reused buffer, as the alignment job does: the fastest plain decode, so the
    ratio is not flattered by allocation costs only the baseline would pay."""
    cap = open_video(video, threads=1)
    count, buffer = 0, None
    with _Clock() as clock:
        while True:
            ok, frame = cap.read(buffer)
            if not ok:
                break
            buffer = frame
            count += 1
    cap.release()
    return count / clock.wall, count / clock.cpu, count


def _align_jobs(root: Path, out: Path, subjects: Sequence[str], jobs: int, encoding: str = "jpeg"
                ) -> tuple[float, int, float]:
    """Wall seconds, frames and this process's CPU seconds for aligning ``subjects`` with
    ``jobs`` workers (fresh output)."""
    from joblib import Parallel, delayed

    shutil.rmtree(out, ignore_errors=True)
    cfg = AlignConfig(disfa_root=str(root), out=str(out), subjects=list(subjects), jobs=jobs,
                      encoding=encoding, force=True)
    work = plan_jobs(cfg, discover(root))
    with _Clock() as clock:
        if jobs == 1:
            rows = [align_subject(job) for job in work]
        else:
            rows = Parallel(n_jobs=jobs)(delayed(align_subject)(job) for job in work)
    failed = [r for r in rows if r["status"] != "ok"]
    if failed:
        raise RuntimeError(f"alignment failed during the benchmark: {failed}")
    return clock.wall, sum(r["frames_read"] for r in rows), clock.cpu


def _warm_pool(jobs: int) -> None:
    """Start joblib's reusable worker pool (and import the pipeline in it) before timing."""
    from joblib import Parallel, delayed

    Parallel(n_jobs=jobs)(delayed(_noop)() for _ in range(jobs * 2))


def _noop() -> int:
    from . import align  # noqa: F401  (imports cv2, h5py in the worker)

    return os.getpid()


def shard_image_stats(shard: Path, raw_shard: Path) -> dict[str, float]:
    """Bytes per stored frame (the images dataset on disk) and PSNR of JPEG vs raw frames."""
    with h5py.File(shard, "r") as f:
        n = f["images"].shape[0]
    # The whole file per frame (JPEG bytes live in HDF5's heap, metadata included): an upper
    # bound on what one frame costs on disk.
    per_frame = shard.stat().st_size / max(n, 1)
    jpeg, raw = ShardReader(shard), ShardReader(raw_shard)
    step = max(1, len(jpeg) // 50)
    values = [psnr(jpeg.image(i), raw.image(i)) for i in range(0, len(jpeg), step)]
    return {"frames": n, "bytes_per_frame": per_frame, "psnr_db": float(np.mean(values))}


def reader_fps(shard: Path) -> tuple[float, float]:
    """``ShardReader.image`` frames per second (wall, CPU) over the whole shard."""
    reader = ShardReader(shard)
    reader.image(0)  # open the file
    with _Clock() as clock:
        for i in range(len(reader)):
            reader.image(i)
    return len(reader) / clock.wall, len(reader) / clock.cpu


def real_frame_jpeg(quality: int = DEFAULT_JPEG_QUALITY) -> dict[str, float] | None:
    """JPEG size and PSNR of the real SN002 frame aligned to 224 (textures of a real face)."""
    image_path, lm_path = REAL_FIXTURE / "frame0000.jpg", REAL_FIXTURE / "frame0000_lm66.txt"
    if not image_path.is_file():
        return None
    image = cv2.cvtColor(cv2.imread(str(image_path)), cv2.COLOR_BGR2RGB)
    aligned, _, _ = align_face(image, np.loadtxt(lm_path, comments="#"), AlignmentConfig())
    data = encode_jpeg(aligned, quality)
    return {"bytes": int(data.size), "psnr_db": psnr(decode_jpeg(data), aligned)}


def _projection(results: dict[str, Any], stats: dict[str, Any], jobs: int, align_fps: float
                ) -> dict[str, float]:
    """The measured rates scaled to the whole release (hours to align, GB of shards)."""
    return {
        "release_frames": RELEASE_FRAMES,
        "one_core_hours": RELEASE_FRAMES / align_fps / 3600,
        f"{jobs}_jobs_hours": RELEASE_FRAMES / results["parallel_fps"] / 3600,
        "shards_gb": RELEASE_FRAMES * stats["bytes_per_frame"] / 1e9,
        "reader_seconds_per_epoch_one_core": RELEASE_FRAMES / results["reader_fps"],
    }


def run_bench(frames: int, workdir: Path, jobs: int = 2, repeat: int = 3) -> dict[str, Any]:
    """Measure everything ``repeat`` times, interleaved, and keep each figure's best run: other
    processes only ever slow a run down, so the best is the closest to this code's speed."""
    from .twin import SynthConfig, synthesize

    cv2.setNumThreads(1)
    twin = workdir / "twin"
    subjects = [f"SN{n:03d}" for n in (1, 2, 3, 4)][:jobs]
    t0 = time.perf_counter()
    synthesize(twin, SynthConfig(subjects=tuple(subjects), frames=frames, right_camera=False,
                                 jobs=jobs))
    synth_s = time.perf_counter() - t0
    layout = discover(twin)
    video = layout.subjects[subjects[0]].videos["left"]
    results: dict[str, Any] = {"frames_per_subject": frames, "frame_size": list(
        (int(cv2.VideoCapture(str(video)).get(cv2.CAP_PROP_FRAME_WIDTH)),
         int(cv2.VideoCapture(str(video)).get(cv2.CAP_PROP_FRAME_HEIGHT)))),
        "synth_seconds": round(synth_s, 1), "cpu_count": os.cpu_count(),
        "load_before": os.getloadavg()[0]}

    decode_only_fps(video)  # warm the file cache
    _warm_pool(jobs)
    runs: dict[str, list[float]] = {k: [] for k in (
        "decode_fps", "decode_cpu_fps", "align_fps", "align_cpu_fps", "seq_s", "par_s")}
    for _ in range(repeat):
        dec_fps, dec_cpu_fps, _ = decode_only_fps(video)
        one_s, one_n, one_cpu = _align_jobs(twin, workdir / "one", subjects[:1], 1)
        seq_s, seq_n, _ = _align_jobs(twin, workdir / "seq", subjects, 1)
        par_s, par_n, _ = _align_jobs(twin, workdir / "par", subjects, jobs)
        for key, value in (("decode_fps", dec_fps), ("decode_cpu_fps", dec_cpu_fps),
                           ("align_fps", one_n / one_s), ("align_cpu_fps", one_n / one_cpu),
                           ("seq_s", seq_s), ("par_s", par_s)):
            runs[key].append(value)
    align_fps = max(runs["align_fps"])
    seq_s, par_s = min(runs["seq_s"]), min(runs["par_s"])
    results.update(
        repeat=repeat, runs=runs,
        decode_fps=max(runs["decode_fps"]), align_fps_one_core=align_fps,
        align_vs_decode=align_fps / max(runs["decode_fps"]),
        decode_cpu_fps=max(runs["decode_cpu_fps"]), align_cpu_fps=max(runs["align_cpu_fps"]),
        align_vs_decode_cpu=max(runs["align_cpu_fps"]) / max(runs["decode_cpu_fps"]),
        jobs=jobs, sequential_seconds=seq_s, parallel_seconds=par_s,
        two_jobs_speedup=seq_s / par_s, parallel_fps=seq_n / par_s)

    _align_jobs(twin, workdir / "raw", subjects[:1], 1, encoding="raw")
    name = f"{subjects[0]}_left.h5"
    stats = shard_image_stats(workdir / "one" / name, workdir / "raw" / name)
    results.update(bytes_per_frame=stats["bytes_per_frame"], psnr_db=stats["psnr_db"],
                   raw_bytes_per_frame=(workdir / "raw" / name).stat().st_size / stats["frames"])
    results["real_frame_jpeg"] = real_frame_jpeg()
    readings = [reader_fps(workdir / "one" / name) for _ in range(repeat)]
    results["reader_fps"] = max(r[0] for r in readings)
    results["reader_cpu_fps"] = max(r[1] for r in readings)
    results["projection"] = _projection(results, stats, jobs, align_fps)
    results["load_after"] = os.getloadavg()[0]
    results["targets"] = {k: {"target": v, "value": results[k],
                              "met": results[k] <= v if k == "bytes_per_frame" else results[k] >= v}
                          for k, v in TARGETS.items()}
    return results


def format_results(r: dict[str, Any]) -> str:
    p = r["projection"]
    lines = [
        f"twin: {r['jobs']} subjects x {r['frames_per_subject']} frames, "
        f"{r['frame_size'][0]}x{r['frame_size'][1]} MJPG; {r['cpu_count']} CPUs; "
        f"best of {r['repeat']} runs",
        f"decode only (1 thread)       {r['decode_fps']:8.1f} frames/s   "
        f"(CPU time: {r['decode_cpu_fps']:.1f})",
        f"align, one job, one core     {r['align_fps_one_core']:8.1f} frames/s   "
        f"ratio {r['align_vs_decode']:.2f} (target >= {TARGETS['align_vs_decode']}; "
        f"CPU time: {r['align_cpu_fps']:.1f}, ratio {r['align_vs_decode_cpu']:.2f})",
        f"{r['jobs']} subjects sequential       {r['sequential_seconds']:8.2f} s",
        f"{r['jobs']} subjects, --jobs {r['jobs']}        {r['parallel_seconds']:8.2f} s   "
        f"speed-up {r['two_jobs_speedup']:.2f} (target >= {TARGETS['two_jobs_speedup']})",
        f"shard bytes / 224px frame    {r['bytes_per_frame'] / 1024:8.1f} KB  (JPEG q"
        f"{DEFAULT_JPEG_QUALITY}; raw {r['raw_bytes_per_frame'] / 1024:.1f} KB; target <= 32 KB)"
        f"  PSNR vs raw {r['psnr_db']:.1f} dB",
    ]
    if r.get("real_frame_jpeg"):
        lines.append(f"real SN002 frame, aligned    {r['real_frame_jpeg']['bytes'] / 1024:8.1f} KB"
                     f"  PSNR {r['real_frame_jpeg']['psnr_db']:.1f} dB")
    lines += [
        f"ShardReader.image, one core  {r['reader_fps']:8.1f} frames/s (target >= "
        f"{TARGETS['reader_fps']:.0f}; CPU time: {r['reader_cpu_fps']:.1f})",
        f"full release ({p['release_frames']:,} frames): one core {p['one_core_hours']:.2f} h, "
        f"--jobs {r['jobs']} {p[str(r['jobs']) + '_jobs_hours']:.2f} h, shards "
        f"{p['shards_gb']:.2f} GB, one reader pass {p['reader_seconds_per_epoch_one_core']:.0f} s",
        f"load average {r['load_before']:.1f} before, {r['load_after']:.1f} after"
        + ("  (busy machine: other processes share the cores, so the ratios are pessimistic)"
           if max(r["load_before"], r["load_after"]) > 0.5 * r["cpu_count"] else ""),
        "targets: " + ", ".join(f"{k} {'met' if t['met'] else 'MISSED'}"
                                for k, t in r["targets"].items()),
    ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(formatter_class=HelpFormatter, prog="python -m pipeline.bench",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int_range(1), default=300,
                   help="frames per synthetic subject (default: 300)")
    p.add_argument("--jobs", type=int_range(1), default=2,
                   help="parallel jobs to compare (default: 2)")
    p.add_argument("--repeat", type=int_range(1), default=3,
                   help="measure each figure this many times and keep the best (default: 3)")
    p.add_argument("--workdir", type=Path,
                   help="where the twin and shards go (default: a temporary folder, removed)")
    p.add_argument("--json", type=Path, help="also write the results here as JSON")
    return p


@handle_errors("pipeline.bench")
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.workdir:
        check_out_dir(args.workdir, "--workdir")
    if args.json and args.json.is_dir():
        raise CommandError(f"--json {args.json}: is a folder, not a file")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="align_bench_"))
    try:
        results = run_bench(args.frames, workdir, args.jobs, args.repeat)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print(format_results(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
