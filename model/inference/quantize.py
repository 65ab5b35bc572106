"""Static int8 quantisation of an ONNX export (``python -m model.export --int8``).

onnxruntime.quantization's ``quantize_static`` in QDQ format: int8 weights (a scale per output
channel, so a filter of small weights keeps its resolution), uint8 activations whose
ranges come from calibration faces: aligned uint8 crops prepared exactly as ``model.predict``
prepares them (see :mod:`model.inference.calibration_faces`). The graph's outputs stay float:
the nodes that write ``probabilities``/``intensities`` are left unquantised, so a probability is
not rounded to 1/255. The export's ``tranet_meta`` gains ``precision: int8`` and a
``quantization`` record of what it was calibrated on; the model card key is kept.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from pipeline.cli import CommandError

from .backends import ONNX_META_KEY
from .calibration_faces import DEFAULT_CALIBRATION_FACES

log = logging.getLogger(__name__)

#: Faces per calibration batch: onnxruntime collects activation ranges batch by batch.
CALIBRATION_BATCH = 16


class QuantizeError(CommandError):
    """An export that cannot be quantised as asked (no calibration faces, a broken graph)."""


def _batches(faces: np.ndarray, input_name: str) -> Iterator[dict[str, np.ndarray]]:
    for start in range(0, len(faces), CALIBRATION_BATCH):
        yield {input_name: np.ascontiguousarray(faces[start:start + CALIBRATION_BATCH])}


def _output_nodes(graph: Any) -> list[str]:
    """Names of the nodes that write a graph output (kept in float)."""
    outputs = {o.name for o in graph.output}
    return [n.name for n in graph.node if outputs & set(n.output)]


def quantize_export(fp32: Path, out: Path, faces: np.ndarray, calibration: dict[str, Any],
                    per_channel: bool = True) -> dict[str, Any]:
    """Write ``out``, the int8 twin of the ONNX export ``fp32``, calibrated on ``faces``
    (uint8 ``[N, S, S, 3]``); ``calibration`` (what the faces are) is recorded in its metadata.
    Returns the metadata written. ``out`` is replaced atomically."""
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                          QuantType, quantize_static)

    if faces.ndim != 4 or len(faces) == 0:
        raise QuantizeError("no calibration faces: int8 needs at least one aligned face")
    source = onnx.load(str(fp32))
    props = {p.key: p.value for p in source.metadata_props}
    input_name = source.graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = _batches(faces, input_name)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        with tempfile.TemporaryDirectory(prefix="tranet_int8_") as work:
            prepared = Path(work) / "fp32.onnx"
            _unshare_biases(source)
            onnx.save(source, str(prepared))
            quantize_static(str(prepared), str(tmp), Reader(), quant_format=QuantFormat.QDQ,
                            per_channel=per_channel, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax,
                            nodes_to_exclude=_output_nodes(source.graph))
        meta = json.loads(props[ONNX_META_KEY])
        meta.update(precision="int8", quantization={
            "method": "onnxruntime static, QDQ, MinMax", "weights": "int8 per channel"
            if per_channel else "int8 per tensor", "activations": "uint8",
            "calibration": calibration})
        props[ONNX_META_KEY] = json.dumps(meta, default=str)
        _write_props(tmp, props)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return meta


def _write_props(path: Path, props: dict[str, str]) -> None:
    """Set the ONNX file's metadata to ``props`` (quantize_static does not carry it over)."""
    import onnx

    model = onnx.load(str(path))
    del model.metadata_props[:]
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))


def export_int8(checkpoint: Path, out: Path, opset: int, calibration: Sequence[Path] = (),
                shards: Path | None = None, faces: int = DEFAULT_CALIBRATION_FACES,
                predictor: Path | None = None) -> dict[str, Any]:
    """``model.export --int8``: the fp32 export (a temporary file beside ``out``), calibration
    faces from ``calibration`` inputs, ``shards`` or (neither given) a synthetic twin, then
    :func:`quantize_export` into ``out``. Returns the int8 export's metadata."""
    from .calibration_faces import (check_inputs, faces_from_inputs, faces_from_shards,
                                    faces_from_twin)
    from .onnx_export import export_onnx

    check_inputs(calibration)
    out = Path(out)
    fp32 = out.with_name(f".{out.name}.fp32-{os.getpid()}.onnx")
    try:
        meta = export_onnx(checkpoint, fp32, opset)
        if calibration:
            crops, record = faces_from_inputs(fp32, calibration, faces, predictor)
        elif shards is not None:
            crops, record = faces_from_shards(shards, int(meta["image_size"]), faces)
        else:
            crops, record = faces_from_twin(fp32, faces, predictor)
        if crops.shape[1] != int(meta["image_size"]):
            raise QuantizeError(f"calibration faces are {crops.shape[1]} px, the model takes "
                                f"{meta['image_size']} px")
        log.info("calibrating int8 ranges on %d face(s) (%s)", len(crops), record["source"])
        with _quiet_root_logger():
            return quantize_export(fp32, out, crops, record)
    finally:
        fp32.unlink(missing_ok=True)


@contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """onnxruntime.quantization logs advice on the root logger ('consider pre-processing':
    measured, it changes nothing here); only its errors are let through."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _unshare_biases(model: Any) -> int:
    """Give every Conv/Gemm a bias initializer of its own; returns how many were made.

    The exporter stores equal constants once and hands them to later users through Identity
    nodes (an untrained model's batch-norm-folded biases are all zero). An int8 bias is scaled
    by its own layer's input and weight scales, so the quantiser leaves a shared one in float
    and onnxruntime cannot fuse that layer into QLinearConv (measured on the untrained full
    model: 75 of its 114 convolutions stayed float, and int8 was slower than fp32)."""
    from onnx import numpy_helper

    initializers = {i.name: i for i in model.graph.initializer}
    identities = {n.output[0]: n.input[0] for n in model.graph.node
                  if n.op_type == "Identity" and n.input[0] in initializers}
    seen: set[str] = set()
    made = 0
    for index, node in enumerate(model.graph.node):
        if node.op_type not in ("Conv", "Gemm") or len(node.input) < 3:
            continue
        name = identities.get(node.input[2], node.input[2])
        if name not in initializers:
            continue
        if name in seen or node.input[2] != name:
            copy = numpy_helper.from_array(numpy_helper.to_array(initializers[name]),
                                           f"{name}__bias{index}")
            model.graph.initializer.append(copy)
            node.input[2] = copy.name
            made += 1
        seen.add(name)
    return made
