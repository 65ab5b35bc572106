"""``--pretrained hub``: let timm fetch a backbone's published weights, or say at once what to bring.

timm downloads into the user's own caches (Hugging Face hub or torch.hub) under the licence of each
model card. On a machine without network that would stall in retries, so before asking timm we
check, in this order: are the weights already in the local cache (then timm loads them from
there); is ``HF_HUB_OFFLINE`` set; does the weights' host accept a TCP connection within a few
seconds. If not, :class:`HubUnavailableError` names the file to make on a machine with network and
pass as ``--pretrained FILE`` instead.
"""
from __future__ import annotations

import os
import socket
import threading
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlparse

import torch

from ..nets.backbones import TimmBackbone, import_timm
from .vggface2 import WeightsError

#: Seconds to wait for the weights' host before calling the machine offline.
PROBE_TIMEOUT_S = 3.0
DEFAULT_HF_ENDPOINT = "https://huggingface.co"
_HUB_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")


class HubUnavailableError(WeightsError):
    """The hub cannot be reached and the weights are not cached; the message says what to bring."""


def hub_offline_by_env() -> bool:
    """True when the user told the Hugging Face libraries to stay offline."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


def host_reachable(host: str, port: int = 443, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether ``host:port`` accepts a TCP connection within ``timeout`` seconds (DNS included:
    the probe runs in a thread that is abandoned when the time is up)."""
    answer: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                answer.append(True)
        except OSError:
            answer.append(False)

    thread = threading.Thread(target=probe, name="hub-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(answer and answer[0])


def hf_endpoint() -> str:
    """The Hugging Face endpoint huggingface_hub will use (``HF_ENDPOINT`` or its default)."""
    try:
        from huggingface_hub import constants
        return constants.ENDPOINT
    except ImportError:
        return os.environ.get("HF_ENDPOINT", DEFAULT_HF_ENDPOINT)


def weights_location(cfg: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """(Hugging Face repo id, URL) where timm would fetch the weights of ``cfg`` from."""
    return cfg.get("hf_hub_id") or None, cfg.get("url") or None


def cached_weights(repo: str | None, url: str | None, filename: str | None = None) -> str | None:
    """Path of the weights in the local Hugging Face or torch.hub cache, if they are there."""
    if repo:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:
            try_to_load_from_cache = None
        if try_to_load_from_cache is not None:
            for name in ((filename,) if filename else ()) + _HUB_FILES:
                found = try_to_load_from_cache(repo, name)
                if isinstance(found, str):
                    return found
    if url:
        candidate = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name
        if candidate.is_file():
            return str(candidate)
    return None


def bring_instead(model_name: str) -> str:
    """The message part that names the file to make elsewhere and pass as --pretrained FILE."""
    stem = model_name.replace("/", "_")
    return (f"on a machine with network run: python -c \"import timm, torch; torch.save(timm."
            f"create_model('{model_name}', pretrained=True).state_dict(), '{stem}.pth')\" and "
            f"pass --pretrained {stem}.pth here")


def check_hub_reachable(backbone: TimmBackbone) -> str:
    """Where the weights come from (``hf-hub:<repo>`` or the URL); raises at once if they can be
    neither downloaded nor found in the cache."""
    repo, url = weights_location(backbone.pretrained_cfg)
    name = backbone.model_name
    if not repo and not url:
        raise WeightsError(f"--pretrained hub: timm publishes no weights for {name!r}; train from "
                           "scratch (no --pretrained) or pass a state_dict file")
    where = f"hf-hub:{repo}" if repo else url
    if cached_weights(repo, url, backbone.pretrained_cfg.get("hf_hub_filename")):
        return where
    if hub_offline_by_env():
        raise HubUnavailableError(f"--pretrained hub: HF_HUB_OFFLINE is set and {where} is not in "
                                  f"the local cache; {bring_instead(name)}")
    host = urlparse(hf_endpoint() if repo else url).hostname
    if not host or not host_reachable(host):
        raise HubUnavailableError(f"--pretrained hub: cannot reach {host} within "
                                  f"{PROBE_TIMEOUT_S:.0f} s (offline?) and {where} is not in the "
                                  f"local cache; {bring_instead(name)}")
    return where


def hub_cached_file(backbone: TimmBackbone) -> str | None:
    """The local file timm's published weights of ``backbone`` are cached in (None: not cached)."""
    repo, url = weights_location(backbone.pretrained_cfg)
    return cached_weights(repo, url, backbone.pretrained_cfg.get("hf_hub_filename"))


def fetch_hub_state_dict(backbone: TimmBackbone) -> tuple[dict[str, torch.Tensor], str]:
    """The full timm model's published weights (``timm.create_model(name, pretrained=True)``)."""
    where = check_hub_reachable(backbone)
    timm = import_timm()
    try:
        model = timm.create_model(backbone.model_name, pretrained=True)
    except Exception as err:  # network, hub and format errors come in many types
        raise HubUnavailableError(f"--pretrained hub: timm could not fetch {where} "
                                  f"({type(err).__name__}: {err}); "
                                  f"{bring_instead(backbone.model_name)}") from err
    return model.state_dict(), where
