"""The network behind ``model.predict``: a PyTorch checkpoint or its ONNX export.

Both take aligned RGB uint8 crops ``[B, S, S, 3]`` and return ``(probabilities, intensities)``:
sigmoid probabilities ``[B, K]`` and, for a model with an intensity head (issue 13), the
predicted intensities ``[B, J]`` for the head's J AUs (:func:`intensity_au_ids`; else None).
A model's forward may return the logits alone, a ``(logits, intensities)`` tuple, or a dict
with ``logits`` and ``intensity``/``intensities``.
"""
from __future__ import annotations

import json
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

    @torch.inference_mode()
    def __call__(self, aligned: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
        batch = torch.from_numpy(np.stack(aligned)).to(self.device)
        out = self.net(batch)
        if isinstance(out, tuple):
            return out[0].cpu().numpy(), out[1].cpu().numpy()
        return out.cpu().numpy(), None


class OnnxBackend:
    """An ONNX file written by ``python -m model.export``, run by onnxruntime on the CPU."""

    name = "onnx"

    def __init__(self, path: Path, threads: int | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError as err:
            raise CheckpointError(f"{path}: --backend onnx needs onnxruntime "
                                  f"(pip install 'tranet-au[onnx]')") from err
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
        try:
            self.session = ort.InferenceSession(str(path), options,
                                                providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime raises its own exception types
            raise CheckpointError(f"{path}: not a readable ONNX model ({err})") from err
        props = self.session.get_modelmeta().custom_metadata_map
        if ONNX_META_KEY not in props:
            raise CheckpointError(f"{path}: ONNX model lacks '{ONNX_META_KEY}' metadata "
                                  f"(export it with python -m model.export)")
        try:  # the same table as a checkpoint's values, before anything is sized from them
            self.meta = json.loads(props[ONNX_META_KEY])
            check_onnx_meta(self.meta, path)
        except json.JSONDecodeError as err:
            raise CheckpointError(f"{path}: '{ONNX_META_KEY}' metadata is not JSON "
                                  f"({err})") from err
        except ValidationError as err:
            raise CheckpointError(str(err)) from err
        self.input_name = self.session.get_inputs()[0].name
        # a second output is the intensity head's (see model.inference.onnx_export)
        self.has_intensity = len(self.session.get_outputs()) > 1

    def __call__(self, aligned: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
        outputs = self.session.run(None, {self.input_name: np.stack(aligned)})
        return outputs[0], (outputs[1] if len(outputs) > 1 else None)


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
    return TorchBackend(Path(path), device)
