"""The recipe line every table, CSV and plot carries beside the protocol line.

A number means little without how the model was made: a 4-epoch from-scratch run on the
reduced preset must not sit beside the paper's 59.0 unlabelled. The line is built from what
the run recorded (its checkpoint or ``config.json``: ``train_config``, ``model_config``,
``data``) and from the folds manifest, read defensively: keys a run does not record (older
runs, other options) are left out or said to be unknown rather than guessed.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

#: The full preset's backbone when a run does not name one.
DEFAULT_BACKBONES = {"full": "SENet-50", "small": "reduced SENet (small preset)"}


def _backbone(train_config: dict[str, Any], model_config: dict[str, Any], preset: str) -> str:
    """``senet50`` (the built-in SENet-50, reduced under the small preset) or ``timm:<name>``."""
    name = model_config.get("backbone") or train_config.get("backbone")
    if not name or name == "senet50":
        return DEFAULT_BACKBONES.get(preset, f"{preset} preset")
    return str(name)


def _weights(train_config: dict[str, Any], report: Any) -> str:
    """Where the backbone's initial weights came from: ``--pretrained`` (a file or ``hub``), with
    the load report's source and format where the run recorded one."""
    source = train_config.get("pretrained") or train_config.get("weights")
    report = report if isinstance(report, dict) else {}
    if not source and not report.get("source"):
        return "from scratch"
    if str(source) == "hub" or report.get("format") == "hub":
        origin = report.get("source")
        return f"weights timm hub ({origin})" if origin else "weights timm hub"
    name = Path(str(source or report["source"])).name
    return f"weights {name} ({report['format']})" if report.get("format") else f"weights {name}"


def _transform(model_config: dict[str, Any]) -> str:
    value = model_config.get("input_transform")
    name = value.get("name") if isinstance(value, dict) else value
    return f"; input {name}" if name else ""


def recorded_manifest(record: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    """(the folds manifest the run recorded, read now; its path): None when the run named no
    manifest or the file is gone or unreadable (read as plain JSON: only names are needed)."""
    path = (record.get("train_config") or {}).get("manifest")
    if not path:
        return None, None
    try:
        manifest = json.loads(Path(str(path)).read_text())
    except (OSError, ValueError):
        return None, str(path)
    return (manifest if isinstance(manifest, dict) else None), str(path)


def folds_phrase(manifest: dict[str, Any] | None, path: str | None = None) -> str:
    """The folds scheme and missing subjects; ``path``: the manifest the run recorded, named
    when it cannot be read now ("folds: not recorded" only when there is none)."""
    if not manifest:
        return (f"folds from {Path(path).name} (not readable now)" if path
                else "folds: not recorded")
    scheme = str(manifest.get("scheme", "?"))
    name = {"disfa3": "standard 3-fold (disfa3)", "kfold": "k-fold"}.get(scheme, scheme)
    missing = list(manifest.get("missing_subjects") or [])
    return f"folds {name}, " + (f"missing subjects {', '.join(map(str, missing))}" if missing
                                 else "no missing subjects")


def recipe_line(record: dict[str, Any], manifest: dict[str, Any] | None = None) -> str:
    """``record`` holds ``train_config``, ``model_config``, ``data`` and ``pretrained`` (the
    weights' load report; any may be missing)."""
    tc = record.get("train_config") or {}
    mc = record.get("model_config") or {}
    data = record.get("data") or {}
    preset = mc.get("preset") or tc.get("preset") or "?"
    backbone = _backbone(tc, mc, preset)
    epochs = ""
    if record.get("epochs_run") is not None:
        epochs = f"; epochs run {record['epochs_run']} of {tc.get('epochs', '?')} max"
    elif record.get("epoch") is not None:
        epochs = f"; best epoch {record['epoch']} of {tc.get('epochs', '?')} max"
    size = data.get("image_size", tc.get("image_size") or "?")
    threshold = data.get("threshold", tc.get("threshold"))
    path = None
    if manifest is None:  # callers without one (the training log): the manifest the run names
        manifest, path = recorded_manifest(record)
    return (f"variant {mc.get('variant') or tc.get('variant') or '?'}; preset {preset}; "
            f"backbone {backbone}, {_weights(tc, record.get('pretrained'))}{_transform(mc)}; "
            f"image {size} px; label threshold "
            f"{threshold if threshold is not None else '?'}; selection on "
            f"{tc.get('select_on', '?')}{epochs}; {folds_phrase(manifest, path)}")


def recipe_lines(records: Iterable[dict[str, Any]], manifest: dict[str, Any] | None = None
                 ) -> list[str]:
    """Distinct recipe lines of several runs, in first-seen order."""
    return list(dict.fromkeys(recipe_line(r, manifest) for r in records))

