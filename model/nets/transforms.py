"""The one conversion from images to the network's input; which one follows the backbone's weights.

Two conventions matter here:

* :data:`VGGFACE2` for the VGGFace2 SENet-50 weights, trained on Caffe-style input: BGR channel
  order, 0-255 scale, minus the per-channel dataset mean (B, G, R) = (91.4953, 103.8827,
  131.0912), no division by a std.
* :data:`IMAGENET` for ImageNet weights (timm, torchvision): RGB, 0-1 scale, minus the ImageNet
  mean and divided by its std. A timm backbone takes the mean/std its own ``pretrained_cfg`` names
  (most are ImageNet's; some models use 0.5/0.5), see :func:`transform_from_mean_std`.

The transform a model was trained with is part of its configuration (``TRANetConfig.input_transform``),
so it travels in every checkpoint and evaluation/prediction apply it without being told. Every
caller (training, evaluation, prediction, demos) goes through :func:`to_model_input`.
"""
from __future__ import annotations

import functools
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch

#: VGGFace2 mean in B, G, R order (0-255 scale), as the released weights expect.
VGGFACE2_MEAN_BGR: tuple[float, float, float] = (91.4953, 103.8827, 131.0912)
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class InputTransform:
    """RGB uint8 -> network input: reorder channels, divide by ``divisor``, subtract ``mean``,
    divide by ``std``. ``mean``/``std`` are in the transform's channel order and scale."""

    name: str
    channels: str
    divisor: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __post_init__(self) -> None:
        if self.channels not in ("RGB", "BGR"):
            raise ValueError(f"input transform channels must be RGB or BGR, got {self.channels!r}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0 or self.divisor <= 0:
            raise ValueError(f"input transform needs 3 means, 3 positive stds and a positive "
                             f"divisor, got mean={self.mean} std={self.std} divisor={self.divisor}")
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        object.__setattr__(self, "divisor", float(self.divisor))

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (lists for tuples); :func:`resolve_transform` reads it back."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


VGGFACE2 = InputTransform("vggface2", "BGR", 1.0, VGGFACE2_MEAN_BGR, (1.0, 1.0, 1.0))
IMAGENET = InputTransform("imagenet", "RGB", 255.0, IMAGENET_MEAN, IMAGENET_STD)
#: Named transforms a user can pick (``model.train --input-transform``).
TRANSFORMS: dict[str, InputTransform] = {"vggface2": VGGFACE2, "imagenet": IMAGENET}


def transform_from_mean_std(mean: Sequence[float], std: Sequence[float]) -> InputTransform:
    """The RGB 0-1 transform of a timm ``pretrained_cfg`` (named ``imagenet`` when it is that)."""
    mean3, std3 = tuple(float(v) for v in mean), tuple(float(v) for v in std)
    if np.allclose(mean3, IMAGENET_MEAN) and np.allclose(std3, IMAGENET_STD):
        return IMAGENET
    return InputTransform("rgb01", "RGB", 255.0, mean3, std3)


def resolve_transform(value: str | Mapping[str, Any] | InputTransform | None,
                      default: InputTransform = VGGFACE2) -> InputTransform:
    """A name from :data:`TRANSFORMS`, a recorded ``as_dict()``, a transform, or None (default)."""
    if value is None:
        return default
    if isinstance(value, InputTransform):
        return value
    if isinstance(value, str):
        if value not in TRANSFORMS:
            raise ValueError(f"unknown input transform {value!r}; choose one of {sorted(TRANSFORMS)}")
        return TRANSFORMS[value]
    try:
        return InputTransform(**dict(value))
    except TypeError as err:
        raise ValueError(f"not an input transform description: {dict(value)} ({err})") from err


def _as_nchw(images: torch.Tensor) -> torch.Tensor:
    if images.dim() == 3:  # a single image
        images = images.unsqueeze(0)
    if images.dim() != 4:
        raise ValueError(f"expected images [B,H,W,3] or [B,3,H,W], got shape {tuple(images.shape)}")
    if images.shape[-1] == 3 and images.shape[1] != 3:
        return images.permute(0, 3, 1, 2)
    if images.shape[1] == 3:
        # [B,3,H,3] is ambiguous only for 3-pixel-wide images; channels-first wins then.
        return images
    raise ValueError(f"no RGB channel axis of size 3 in images of shape {tuple(images.shape)}")


def _per_channel(values: Sequence[float], like: torch.Tensor) -> torch.Tensor:
    return _cached_per_channel(tuple(float(v) for v in values), like.device, like.dtype)


@functools.lru_cache(maxsize=None)
def _cached_per_channel(values: tuple[float, ...], device: torch.device,
                        dtype: torch.dtype) -> torch.Tensor:
    # Made once per (values, device, dtype): building it every call copies it host -> device
    # each batch. A normal tensor even when first asked for under torch.inference_mode (it is
    # cached and later used outside it).
    with torch.inference_mode(False):
        return torch.tensor(values, dtype=dtype, device=device)[None, :, None, None]


def to_model_input(images_uint8_rgb: torch.Tensor | np.ndarray,
                   transform: InputTransform = VGGFACE2) -> torch.Tensor:
    """RGB uint8 ``[B,H,W,3]`` or ``[B,3,H,W]`` (or one image) -> float32 ``[B,3,H,W]`` as
    ``transform`` says (default: BGR minus the VGGFACE2 mean).

    The result keeps the input's device and is contiguous in NCHW.
    """
    if isinstance(images_uint8_rgb, np.ndarray):
        images_uint8_rgb = torch.from_numpy(np.ascontiguousarray(images_uint8_rgb))
    if images_uint8_rgb.dtype != torch.uint8:
        raise TypeError(f"expected uint8 RGB images (0-255), got dtype {images_uint8_rgb.dtype}")
    x = _as_nchw(images_uint8_rgb)
    if transform.channels == "BGR":
        x = x.flip(1)
    x = x.to(torch.float32)
    # Skipping the identity steps keeps the VGGFace2 input bit-identical to "x - mean".
    if transform.divisor != 1.0:
        x = x / transform.divisor
    x = x - _per_channel(transform.mean, x)
    if any(s != 1.0 for s in transform.std):
        x = x / _per_channel(transform.std, x)
    return x.contiguous()


def from_model_input(x: torch.Tensor, transform: InputTransform = VGGFACE2) -> torch.Tensor:
    """Inverse of :func:`to_model_input` (for visualisation): -> RGB uint8 ``[B,H,W,3]``."""
    x = (x * _per_channel(transform.std, x) + _per_channel(transform.mean, x)) * transform.divisor
    if transform.channels == "BGR":
        x = x.flip(1)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()
