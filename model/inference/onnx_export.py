"""Export a checkpoint to ONNX for ``model.predict --backend onnx``.

The exported graph is the whole network as ``model.predict`` runs it: aligned RGB uint8 crops
``[batch, S, S, 3]`` (dynamic batch) -> sigmoid probabilities ``[batch, K]`` (and intensities
``[batch, J]``, every AU of the intensity head, for a model with one). The checkpoint's
metadata (AU list, label and decision thresholds, the alignment/transform its training frames
went through, and the model card) is stored as JSON under the ONNX metadata key ``tranet_meta``,
so the ONNX file alone is enough to predict; the card is also stored as Markdown under
``model_card``, for people and tools that open the file.
TorchScript-based exporter (``dynamo=False``): it needs no onnxscript.
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch

from pipeline.cli import CommandError
from .backends import ONNX_META_KEY, ProbabilityModel, split_outputs
from ..cards.card import CARD_KEY, card_of
from ..engine.checkpoint import load_checkpoint, load_for_inference
from ..nets.transforms import to_model_input

DEFAULT_OPSET = 17
#: 11 is the first opset whose Resize matches torch's interpolation (at 10 the graph exports but
#: computes other numbers; below, operators are missing); 20 is the TorchScript exporter's last.
MIN_OPSET, MAX_OPSET = 11, 20


class ExportError(CommandError):
    """A checkpoint that cannot be exported as asked (an opset out of range or too old for it)."""


def export_onnx(checkpoint: Path, out: Path, opset: int = DEFAULT_OPSET) -> dict[str, Any]:
    """Write ``out`` (atomically); returns the metadata stored in it. A failed write (disk full)
    is an OSError naming ``out``; the previous ``out`` stays as it was."""
    import onnx

    if not MIN_OPSET <= int(opset) <= MAX_OPSET:
        raise ExportError(f"--opset {opset}: must be {MIN_OPSET}..{MAX_OPSET}")
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
        _write_graph(model, meta, example, outputs, tmp, opset)
        os.replace(tmp, out)
    except OSError as err:  # name the file asked for, not the temporary one
        raise OSError(err.errno, err.strerror or str(err), str(out)) from err
    except torch.onnx.errors.OnnxExporterError as err:  # an operator this opset lacks
        raise ExportError(f"{checkpoint}: cannot be exported at --opset {opset}: "
                          f"{str(err).splitlines()[0]}") from err
    finally:
        tmp.unlink(missing_ok=True)
    return meta


def _write_graph(model: torch.nn.Module, meta: dict[str, Any], example: torch.Tensor,
                 outputs: list[str], tmp: Path, opset: int) -> None:
    import onnx

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
    card = card_of(meta)  # also under its own key, as Markdown: for people and other tools
    if card is not None:
        entry = graph.metadata_props.add()
        entry.key, entry.value = CARD_KEY, card.to_markdown()
    onnx.save(graph, str(tmp))
