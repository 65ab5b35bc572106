"""The network behind ``model.predict``: a PyTorch checkpoint or its ONNX export.

Both take aligned RGB uint8 crops ``[B, S, S, 3]`` and return ``(probabilities, intensities)``:
sigmoid probabilities ``[B, K]`` and, for a model with an intensity head (issue 13), the
predicted intensities ``[B, J]`` for the head's J AUs (:func:`intensity_au_ids`; else None).
A model's forward may return the logits alone, a ``(logits, intensities)`` tuple, or a dict
with ``logits`` and ``intensity``/``intensities``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from pipeline.validation import ValidationError

from ..engine.checkpoint import CheckpointError, load_checkpoint, load_for_inference
from ..engine.validation import check_onnx_meta
from ..nets.transforms import VGGFACE2, to_model_input

#: ONNX metadata key holding the checkpoint's metadata (JSON).
ONNX_META_KEY = "tranet_meta"


def split_outputs(out: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(logits, intensities or None)`` from whatever the model's forward returned."""
    if isinstance(out, dict):
        intensity = out.get("intensity", out.get("intensities"))
        return out["logits"], intensity
    if isinstance(out, (tuple, list)):
        return out[0], (out[1] if len(out) > 1 else None)
    return out, None


class ProbabilityModel(torch.nn.Module):
    """uint8 RGB crops -> (probabilities, [intensities]): the whole network as exported."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        # The transform recorded with the checkpoint (the one its backbone's weights expect);
        # an ONNX export bakes it into the graph. Modules without one get VGGFace2's, as before.
        self.transform = getattr(model, "input_transform", VGGFACE2)

    def forward(self, images: torch.Tensor) -> Any:
        x = to_model_input(images, self.transform)
        if getattr(self.model, "has_intensity", False):
            # TRA-Net's intensity head (model.train --task intensity|both): every AU it
            # estimates (config.intensity_aus, DISFA's 12), clipped to FACS's 0-5.
            logits, intensity = self.model(x, with_intensity=True)
            intensity = intensity.clamp(0.0, 5.0)
        else:
            logits, intensity = split_outputs(self.model(x))
        probabilities = torch.sigmoid(logits.float())
        return probabilities if intensity is None else (probabilities, intensity.float())


class TorchBackend:
    """A checkpoint loaded once with :func:`load_for_inference`."""

    name = "torch"

    def __init__(self, checkpoint: Path, device: str = "cpu") -> None:
        self.device = torch.device(device)
        if self.device.type == "cuda":
            # Face batches keep one shape: tune the convolutions once. Process-wide (torch has
            # no per-model switch); prediction does not need bit-reproducible kernels.
            torch.backends.cudnn.benchmark = True
        state = load_checkpoint(checkpoint, map_location="cpu")
        model, self.meta = load_for_inference(checkpoint, device=self.device, state=state)
        self.meta["selected"] = "metrics" in state   # best.pt carries its selection metrics
        self.net = ProbabilityModel(model).eval()
        self.has_intensity = bool(getattr(model, "has_intensity", False))
        # torch's threads as model.predict set them for this run (recorded in its summary)
        self.threads = torch.get_num_threads()

    @torch.inference_mode()
    def __call__(self, aligned: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
        batch = torch.from_numpy(np.stack(aligned)).to(self.device)
        out = self.net(batch)
        if isinstance(out, tuple):
            return out[0].cpu().numpy(), out[1].cpu().numpy()
        return out.cpu().numpy(), None


def default_network_threads(cores: int | None = None) -> int:
    """The network's CPU threads when ``--threads`` is not given (onnxruntime and PyTorch alike):
    every physical core. On an idle 2-core machine two threads ran the full model faster than one
    in every backend although ``model.predict``'s reader thread (decode, dlib, alignment) shares
    the cores (ONNX fp32 19.5 vs 12.3 frames/s, int8 32.1 vs 30.3, PyTorch 14.1 vs 9.1;
    docs/benchmarks.md); on a busy machine one thread did better: ``--threads 1`` there."""
    if cores is None:
        cores = physical_cores()
    return max(1, int(cores))


def physical_cores() -> int:
    """Physical cores this process may use (logical CPUs when psutil cannot tell)."""
    try:
        logical = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        logical = os.cpu_count() or 1
    try:
        import psutil

        ratio = (psutil.cpu_count(logical=True) or 1) // (psutil.cpu_count(logical=False) or 1)
    except ImportError:
        ratio = 1
    return max(1, logical // max(1, ratio))


class OnnxBackend:
    """An ONNX file written by ``python -m model.export``, run by onnxruntime on the CPU."""

    name = "onnx"

    def __init__(self, path: Path, threads: int | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError as err:
            raise CheckpointError(f"{path}: --backend onnx needs onnxruntime "
                                  f"(pip install 'tranet-au[onnx]')") from err
        refuse_torch_file(path)
        options = ort.SessionOptions()
        #: intra-op threads the session runs with (recorded in predict_summary.json)
        self.threads = int(threads) if threads else default_network_threads()
        options.intra_op_num_threads = self.threads
        # An int8 graph makes onnxruntime warn about unused constants the quantiser left behind.
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), options,
                                                providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime raises its own exception types
            raise CheckpointError(f"{path}: not a readable ONNX model ({_ort_reason(err)})") from err
        self.path = Path(path)
        self.meta = read_onnx_meta(self.session, path)
        check_onnx_graph(self.session, self.meta, path)
        self.input_name = self.session.get_inputs()[0].name
        # a second output is the intensity head's (see model.inference.onnx_export)
        self.has_intensity = len(self.session.get_outputs()) > 1

    def __call__(self, aligned: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
        try:
            outputs = self.session.run(None, {self.input_name: np.stack(aligned)})
        except Exception as err:  # onnxruntime's own types: a graph that is not what it claims
            raise CheckpointError(f"{self.path}: the ONNX model failed on a batch of aligned "
                                  f"faces ({_ort_reason(err)})") from err
        return outputs[0], (outputs[1] if len(outputs) > 1 else None)


#: What ``model.predict`` reads from an export's metadata before anything else.
REQUIRED_META = ("au_ids", "image_size", "nose_target", "chin_target")
#: How a PyTorch checkpoint begins: a zip archive (torch.save) or a bare pickle (legacy).
_TORCH_MAGIC = (b"PK\x03\x04", b"\x80\x02", b"\x80\x04")


def refuse_torch_file(path: Path) -> None:
    """A CheckpointError for a PyTorch checkpoint given to ``--backend onnx`` (onnxruntime would
    only say that protobuf parsing failed)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return  # onnxruntime says what is wrong with the path
    if head.startswith(_TORCH_MAGIC):
        raise CheckpointError(f"{path}: a PyTorch checkpoint, not an ONNX model; use "
                              f"--backend torch for it (or export it with python -m model.export)")


def is_onnx_file(path: Path) -> bool:
    """Whether ``path`` is an ONNX model: named ``.onnx``, or a protobuf ``ModelProto`` that
    opens with its ``ir_version`` field (tag 0x08) followed by another field, not torch's zip."""
    if Path(path).suffix.lower() == ".onnx":
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(3)
    except OSError:
        return False
    return len(head) == 3 and head[0] == 0x08 and head[1] < 0x80 and head[2] in (0x12, 0x1a,
                                                                                  0x22, 0x3a)


def check_backend(path: Path, backend: str | None) -> str:
    """The backend for ``path``: ``backend`` if it fits the file, the file's own when none was
    asked for; a CheckpointError naming the file and the right option when they disagree."""
    onnx = is_onnx_file(path)
    if backend == "torch" and onnx:
        raise CheckpointError(f"{path}: an ONNX model, not a PyTorch checkpoint; use "
                              f"--backend onnx (or leave --backend out)")
    if backend == "onnx":
        refuse_torch_file(path)
    return backend or ("onnx" if onnx else "torch")


def read_onnx_meta(session: Any, path: Path) -> dict[str, Any]:
    """The checkpoint metadata stored by ``model.export`` (a CheckpointError if absent, not a
    JSON object, holding a value the validation table refuses, or lacking an entry prediction
    needs)."""
    props = session.get_modelmeta().custom_metadata_map
    if ONNX_META_KEY not in props:
        raise CheckpointError(f"{path}: ONNX model lacks '{ONNX_META_KEY}' metadata "
                              f"(export it with python -m model.export)")
    try:
        meta = json.loads(props[ONNX_META_KEY])
    except ValueError as err:
        raise CheckpointError(f"{path}: its '{ONNX_META_KEY}' metadata is not JSON ({err})") from err
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: its '{ONNX_META_KEY}' metadata is a JSON "
                              f"{type(meta).__name__}, not an object")
    try:  # the same table as a checkpoint's values, before anything is sized from them
        check_onnx_meta(meta, path)
    except ValidationError as err:
        raise CheckpointError(str(err)) from err
    missing = [key for key in REQUIRED_META if key not in meta]
    if missing:
        raise CheckpointError(f"{path}: its '{ONNX_META_KEY}' metadata lacks {missing}")
    return meta


def check_onnx_graph(session: Any, meta: dict[str, Any], path: Path) -> None:
    """Refuse a graph that is not ``model.export``'s (another model's, with copied metadata):
    uint8 ``[batch, S, S, 3]`` in, ``[batch, K]`` probabilities out."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    problem = None
    if len(inputs) != 1 or inputs[0].type != "tensor(uint8)" or len(inputs[0].shape) != 4 \
            or inputs[0].shape[3] != 3:
        problem = "input " + ", ".join(f"{i.name} {i.type} {i.shape}" for i in inputs)
    elif not 1 <= len(outputs) <= 2 or any(len(o.shape) != 2 for o in outputs):
        problem = "output " + ", ".join(f"{o.name} {o.type} {o.shape}" for o in outputs)
    elif isinstance(inputs[0].shape[1], int) and inputs[0].shape[1:3] != [meta["image_size"]] * 2:
        problem = f"input {inputs[0].shape} for image_size {meta['image_size']}"
    elif isinstance(outputs[0].shape[1], int) and outputs[0].shape[1] != len(meta["au_ids"]):
        problem = f"{outputs[0].shape[1]} probabilities for {len(meta['au_ids'])} AUs"
    if problem:
        raise CheckpointError(f"{path}: not a graph written by python -m model.export ({problem}; "
                              f"expected uint8 [batch, S, S, 3] in, [batch, K] out)")


def _ort_reason(err: Exception) -> str:
    """onnxruntime's message without its code prefix and repeated path, on one line."""
    text = " ".join(str(err).split())
    return text.split("failed:", 1)[-1].strip() if "failed:" in text else text


def intensity_au_ids(meta: dict[str, Any], width: int | None = None) -> list[int]:
    """The AUs of a backend's intensity output: the head's ``intensity_aus`` (model config);
    ``width`` (the output's columns) tells them from older exports that kept only the
    occurrence AUs'."""
    au_ids = [int(a) for a in meta["au_ids"]]
    head = [int(a) for a in (meta.get("model_config") or {}).get("intensity_aus") or ()]
    if width is None or width == len(head):
        return head or au_ids
    if width == len(au_ids):
        return au_ids
    raise CheckpointError(f"intensity output has {width} columns; the model's intensity AUs are "
                          f"{head}, its occurrence AUs {au_ids}")


def load_backend(path: Path, backend: str = "torch", device: str = "cpu",
                 threads: int | None = None) -> TorchBackend | OnnxBackend:
    """The network in ``path`` (``.pt`` checkpoint for torch, ``.onnx`` for onnx)."""
    if backend == "onnx" or Path(path).suffix.lower() == ".onnx":
        return OnnxBackend(Path(path), threads)
    if backend != "torch":
        raise ValueError(f"backend must be torch or onnx, got {backend!r}")
    if is_onnx_file(path):  # an export under another name: onnxruntime, not torch.load
        return OnnxBackend(Path(path), threads)
    return TorchBackend(Path(path), device)
