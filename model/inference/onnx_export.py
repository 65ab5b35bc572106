"""Export a checkpoint to ONNX for ``model.predict --backend onnx``.

The exported graph is the whole network as ``model.predict`` runs it: aligned RGB uint8 crops
``[batch, S, S, 3]`` (dynamic batch) -> sigmoid probabilities ``[batch, K]`` (and intensities
``[batch, J]``, every AU of the intensity head, for a model with one). The checkpoint's
metadata (AU list, label and decision thresholds, the alignment/transform its training frames
went through) is stored as JSON under the ONNX metadata key ``tranet_meta``, so the ONNX file
alone is enough to predict.
TorchScript-based exporter (``dynamo=False``): it needs no onnxscript.
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch

from .backends import ONNX_META_KEY, ProbabilityModel, split_outputs
from ..engine.checkpoint import load_checkpoint, load_for_inference
from ..nets.transforms import to_model_input

DEFAULT_OPSET = 17


def export_onnx(checkpoint: Path, out: Path, opset: int = DEFAULT_OPSET) -> dict[str, Any]:
    """Write ``out`` (atomically); returns the metadata stored in it."""
    import onnx

    state = load_checkpoint(checkpoint, map_location="cpu")
    model, meta = load_for_inference(checkpoint, state=state)
    meta = {**meta, "selected": "metrics" in state, "source_checkpoint": str(checkpoint)}
    size = int(meta["image_size"])
    example = torch.zeros(2, size, size, 3, dtype=torch.uint8)
    with torch.no_grad():
        _, intensity = split_outputs(model(to_model_input(example, model.input_transform)))
    outputs = ["probabilities"] + (["intensities"] if intensity is not None else [])
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        with warnings.catch_warnings():
            # The input layout is fixed (NHWC uint8): the tracer's shape checks are constants.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.simplefilter("ignore", DeprecationWarning)  # dynamo=False is deliberate
            torch.onnx.export(ProbabilityModel(model).eval(), (example,), str(tmp),
                              input_names=["images"], output_names=outputs,
                              opset_version=opset, dynamo=False,
                              dynamic_axes={n: {0: "batch"} for n in ["images", *outputs]})
        graph = onnx.load(str(tmp))
        entry = graph.metadata_props.add()
        entry.key, entry.value = ONNX_META_KEY, json.dumps(meta, default=str)
        onnx.save(graph, str(tmp))
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return meta
