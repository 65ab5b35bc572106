"""Speed of ``model.predict`` end to end on a synthetic 640x360 video with a real face:
PyTorch, onnxruntime on the fp32 export and on the int8 export, for the small preset and the
full model in one run, at the network thread counts asked for.

    python -m model.predict_bench              # small + full; torch, onnx, onnx-int8
    python -m model.predict_bench --presets full --backends onnx onnx-int8 --threads 1 2
    python -m model.predict_bench --presets small --backends torch --frames 300
    python -m model.predict_bench --presets full --backends torch --device cuda

The video is skimage's astronaut photograph (a real face, so dlib behaves as on real footage)
cropped to her head and moved across a textured background; the checkpoint is an untrained
model of each preset (weights do not change the speed), exported to ONNX for the onnx backend
and quantised (``model.export --int8``, calibrated on the video's own faces) for onnx-int8.
Reports the processing speed (frames processed per second, end to end), per-stage milliseconds
per frame (``network`` is where the backends differ), and the video's own frame rate for the
real-time comparison. ``--device cuda`` runs the torch backend's network on the GPU (decoding,
dlib's face search and landmarks, and the alignment stay on the CPU, as in ``model.predict``),
after one untimed pass over the video (CUDA start-up and cudnn's kernel search happen once per
process, not per frame).
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from pipeline.cli import HelpFormatter, int_range, positive_float

from ..cli import CommandError, device_arg, handle_errors
from ..inference.batch import run_predict
from ..inference.predictor import PredictConfig
from .synthetic import make_face_video, make_untrained_checkpoint

log = logging.getLogger("model.predict_bench")

#: What --backends compares.
BACKENDS = ("torch", "onnx", "onnx-int8")


def run_benchmark(preset: str, image_size: int, frames: int, detect_every: int,
                  detect_width: int, batch_size: int, threads: int | None, workdir: Path,
                  fps: float = 25.0, backend: str = "torch", device: str = "cpu"
                  ) -> dict[str, Any]:
    video = workdir / "bench_640x360.avi"
    if not video.exists():
        make_face_video(video, n_frames=frames, fps=fps)
    ckpt = workdir / f"{preset}_{image_size}.pt"
    if not ckpt.exists():
        make_untrained_checkpoint(ckpt, preset, image_size)
    model = bench_model(ckpt, backend, video)
    out = workdir / f"out_{preset}_{backend}_{detect_every}_{threads}"
    cfg = PredictConfig(checkpoint=model, out=out, videos=[video],
                        backend="torch" if backend == "torch" else "onnx", device=device,
                        batch_size=batch_size, threads=threads,
                        detect_every=detect_every, detect_width=detect_width, progress=False)
    if device.startswith("cuda"):
        # Untimed pass first: CUDA's context, lazily loaded kernels and cudnn.benchmark's search
        # cost seconds once per process, which a 100-frame timing would spread over its frames.
        run_predict(dataclasses.replace(cfg, out=cfg.out.with_name(cfg.out.name + "_warmup")))
    summary = run_predict(cfg)
    result = summary["inputs"][0]
    return {"preset": preset, "backend": backend, "device": device_name(backend, device),
            "image_size": image_size, "video": "640x360",
            "video_fps": fps, "detect_every": detect_every, "detect_width": detect_width,
            "batch_size": batch_size, "threads": summary["threads"], "cpu_count": os.cpu_count(),
            "frames": result["frames"], "faces_found": result["faces_found"],
            "processing_fps": result["processing_fps"],
            "real_time": result["processing_fps"] >= fps,
            "network_ms_per_frame": result["ms_per_frame"]["network"],
            # CPU time of all threads per frame: the work itself, whatever else runs on the machine.
            "cpu_ms_per_frame": result["cpu_ms_per_frame"],
            "ms_per_frame": result["ms_per_frame"]}


#: Faces of the benchmark video an int8 export is calibrated on (its speed does not depend on
#: how many; the video is what it will run on).
BENCH_CALIBRATION_FACES = 32


def bench_model(ckpt: Path, backend: str, video: Path) -> Path:
    """The file ``model.predict`` runs for ``backend``: the checkpoint (torch), its ONNX export
    (onnx) or its int8 export calibrated on the benchmark video (onnx-int8); made once."""
    if backend == "torch":
        return ckpt
    from ..inference.onnx_export import export_onnx

    fp32 = ckpt.with_suffix(".onnx")
    if not fp32.exists():
        export_onnx(ckpt, fp32)
    if backend == "onnx":
        return fp32
    from ..inference.calibration_faces import faces_from_inputs
    from ..inference.quantize import quantize_export

    int8 = ckpt.with_name(f"{ckpt.stem}_int8.onnx")
    if not int8.exists():
        faces, record = faces_from_inputs(fp32, [video], BENCH_CALIBRATION_FACES)
        quantize_export(fp32, int8, faces, record)
    return int8


def device_name(backend: str, device: str) -> str:
    """Where the network ran: 'cpu', or the GPU's name for the torch backend on CUDA."""
    if backend != "torch" or not device.startswith("cuda"):
        return "cpu"
    import torch

    return torch.cuda.get_device_name(torch.device(device))


#: (label, model.predict options) compared by :func:`postprocess_effect`.
POSTPROCESS_VARIANTS = [("none", {}), ("calibrate", {"calibrate": True}),
                        ("smooth 5", {"smooth": 5}), ("smooth 9", {"smooth": 9}),
                        ("calibrate + smooth 5", {"calibrate": True, "smooth": 5})]


def postprocess_effect(demo: Path) -> list[dict[str, Any]]:
    """Mean F1 on a finished ``model.demo``'s held-out raw twin videos, with and without
    ``--calibrate`` / ``--smooth``: the demo's ``model.predict`` CSVs (no post-processing) are
    post-processed as ``model.predict`` would and scored against the twin's labels, pooled over
    all frames of a fold's videos (a frame without a face counts as 'absent')."""
    from pipeline.datasets.disfa import discover, read_labels
    from pipeline.shards import binarize

    from ..evaluation.metrics import confusion_counts, metrics_from_counts
    from ..inference.csv_format import read_predictions
    from ..inference.postprocess import postprocess

    report = json.loads((demo / "demo_summary.json").read_text())
    layout = discover(demo / "disfa_twin")
    counts: dict[str, list[Any]] = {label: [] for label, _ in POSTPROCESS_VARIANTS}
    videos = 0
    for entry in report["predict"]:
        summary = json.loads((Path(entry["out"]) / "predict_summary.json").read_text())
        au_ids = [int(a) for a in summary["checkpoint"]["au_ids"]]
        threshold = int(summary["checkpoint"]["threshold"])
        fold = {label: 0 for label in counts}
        for subject, result in zip(entry["subjects"], summary["inputs"]):
            table = read_predictions(result["csv"])
            truth = binarize(read_labels(layout.subjects[subject]), au_ids, threshold)
            videos += 1
            for label, options in POSTPROCESS_VARIANTS:
                done = postprocess(table, au_ids, summary["decision_threshold"], **options)
                decided = done[[f"AU{a:02d}_c" for a in au_ids]].astype(float).fillna(0)
                fold[label] = fold[label] + confusion_counts(
                    decided.to_numpy(np.float32), truth, from_logits=False)
        for label in counts:
            counts[label].append(metrics_from_counts(fold[label], au_ids).as_dict())
    return [{"variant": label, "options": options,
             "mean_f1": float(np.mean([m["mean_f1"] for m in counts[label]])),
             "f1_per_au": np.mean([m["f1"] for m in counts[label]], axis=0).tolist(),
             "au_ids": counts[label][0]["au_ids"], "videos": videos}
            for label, options in POSTPROCESS_VARIANTS]


def _print_postprocess(rows: list[dict[str, Any]]) -> None:
    aus = " ".join(f"AU{a:<4}" for a in rows[0]["au_ids"])
    print(f"{'variant':<22} {'mean F1':>7}  {aus}   ({rows[0]['videos']} held-out videos, "
          "F1 in %)")
    for r in rows:
        print(f"{r['variant']:<22} {100 * r['mean_f1']:>7.1f}  "
              + " ".join(f"{100 * v:<6.1f}" for v in r["f1_per_au"]))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m model.predict_bench", description=__doc__.split("\n\n")[0],
        formatter_class=HelpFormatter)
    parser.add_argument("--presets", "--preset", nargs="+", choices=("small", "full"),
                        default=["small", "full"], help="model presets to time")
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS),
                        help="network runtimes to compare: PyTorch, onnxruntime on the fp32 "
                             "export, onnxruntime on the int8 export (model.export --int8, "
                             "calibrated on the benchmark video)")
    parser.add_argument("--image-size", type=int_range(32, 1024), default=224,
                        help="aligned face size")
    parser.add_argument("--frames", type=int_range(1), default=100,
                        help="length of the synthetic video")
    parser.add_argument("--fps", type=positive_float, default=25.0, help="the video's frame rate")
    parser.add_argument("--detect-every", type=int, nargs="+", default=[5],
                        help="values of model.predict --detect-every to compare")
    parser.add_argument("--detect-width", type=int, default=640,
                        help="model.predict --detect-width: frames wider than this are downscaled for face "
                             "detection")
    parser.add_argument("--batch-size", type=int, default=16, help="faces per network call")
    parser.add_argument("--device", type=device_arg, default="cpu",
                        help="torch device for the network, e.g. cuda (the onnx backend always "
                             "runs on the CPU)")
    parser.add_argument("--threads", type=int_range(1), nargs="+", default=[None],
                        help="network threads to compare (default: model.predict's, the "
                             "physical cores)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--postprocess-demo", type=Path, default=None, metavar="DEMO_DIR",
                        help="instead of speed: F1 with/without --calibrate and --smooth on the "
                             "held-out raw videos of a finished model.demo folder")
    return parser


@handle_errors("model.predict_bench")
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.json and args.json.is_dir():
        raise CommandError(f"--json {args.json}: is a folder; give a JSON file name")
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    if args.postprocess_demo:
        rows = postprocess_effect(args.postprocess_demo)
        _print_postprocess(rows)
        if args.json:
            args.json.write_text(json.dumps(rows, indent=2))
        return 0
    rows = []
    with tempfile.TemporaryDirectory(prefix="predict_bench_") as tmp:
        for preset in args.presets:
            for backend in args.backends:
                for every, threads in itertools.product(args.detect_every, args.threads):
                    rows.append(run_benchmark(preset, args.image_size, args.frames, every,
                                              args.detect_width, args.batch_size, threads,
                                              Path(tmp), args.fps, backend, args.device))
    devices = sorted({r["device"] for r in rows})
    print(f"network on: {', '.join(devices)}; {os.cpu_count()} CPU cores")
    print(f"{'preset':<6} {'backend':<9} {'threads':>7} {'size':>4} {'every':>5} {'proc fps':>8} "
          f"{'net ms':>7} {'video':>6} {'cpu ms':>7}  ms/frame per stage (reader stages "
          "overlap the network)")
    for r in rows:
        stages = " ".join(f"{k}={v}" for k, v in r["ms_per_frame"].items())
        print(f"{r['preset']:<6} {r['backend']:<9} {r['threads']:>7} {r['image_size']:>4} "
              f"{r['detect_every']:>5} "
              f"{r['processing_fps']:>8.1f} {r['network_ms_per_frame']:>7.1f} "
              f"{r['video_fps']:>6g} {r['cpu_ms_per_frame']:>7.1f}  {stages}  "
              f"(faces {r['faces_found']}/{r['frames']})")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
