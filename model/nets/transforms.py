"""The one conversion from images to the network's input, matching the VGGFace2 SENet-50 weights.

Those weights were trained on Caffe-style input: BGR channel order, 0-255 scale, minus the
per-channel dataset mean (B, G, R) = (91.4953, 103.8827, 131.0912), no division by a std.
Every caller (training, evaluation, prediction, demos) goes through :func:`to_model_input`.
"""
from __future__ import annotations

import functools

import numpy as np
import torch

#: VGGFace2 mean in B, G, R order (0-255 scale), as the released weights expect.
VGGFACE2_MEAN_BGR: tuple[float, float, float] = (91.4953, 103.8827, 131.0912)


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


def to_model_input(images_uint8_rgb: torch.Tensor | np.ndarray) -> torch.Tensor:
    """RGB uint8 ``[B,H,W,3]`` or ``[B,3,H,W]`` (or one image) -> float32 ``[B,3,H,W]`` BGR minus mean.

    The result keeps the input's device and is contiguous in NCHW.
    """
    if isinstance(images_uint8_rgb, np.ndarray):
        images_uint8_rgb = torch.from_numpy(np.ascontiguousarray(images_uint8_rgb))
    if images_uint8_rgb.dtype != torch.uint8:
        raise TypeError(f"expected uint8 RGB images (0-255), got dtype {images_uint8_rgb.dtype}")
    x = _as_nchw(images_uint8_rgb).flip(1).to(torch.float32)  # RGB -> BGR
    return (x - _mean(x.device, torch.float32)).contiguous()


@functools.lru_cache(maxsize=None)
def _mean(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    # Made once per device: building it every call copies it host -> device each batch.
    # A normal tensor even when first asked for under torch.inference_mode (it is cached).
    with torch.inference_mode(False):
        return torch.tensor(VGGFACE2_MEAN_BGR, dtype=dtype, device=device)[None, :, None, None]


def from_model_input(x: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`to_model_input` (for visualisation): -> RGB uint8 ``[B,H,W,3]``."""
    bgr = x + _mean(x.device, x.dtype)
    return bgr.flip(1).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()
