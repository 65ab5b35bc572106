"""Optional libraries: the report needs only torch, numpy, h5py and OpenCV; anything else is
imported through here, and a failed import is a reason to record, never an exception."""
from __future__ import annotations

import importlib
from types import ModuleType

#: Libraries the report or the trainer path it runs may use when present.
OPTIONAL = ("tqdm", "matplotlib", "pandas", "scipy", "onnxruntime", "pynvml", "timm", "dlib")


def optional_import(name: str) -> tuple[ModuleType | None, str | None]:
    """(module, None), or (None, why it could not be imported)."""
    try:
        return importlib.import_module(name), None
    except Exception as err:  # ImportError, or a broken install raising anything else
        return None, f"{name} not importable ({type(err).__name__}: {err})"[:300]


def library_report() -> tuple[dict[str, str | None], dict[str, str]]:
    """(name -> version or None, name -> why it is missing) for the required and optional
    libraries."""
    versions: dict[str, str | None] = {}
    missing: dict[str, str] = {}
    for name in ("numpy", "cv2", "h5py", *OPTIONAL):
        module, why = optional_import(name)
        versions[name] = None if module is None else str(getattr(module, "__version__", "?"))
        if why is not None:
            missing[name] = why
    return versions, missing
