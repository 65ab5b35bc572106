"""``get_adapter(name)``: the image-folder adapter of a dataset (``pipeline.align --dataset``).

The adapter modules are imported only when asked for, so reading DISFA never imports BP4D's
or DISFA+'s code. DISFA is not here: its videos go through ``pipeline.align``'s own path.
"""
from __future__ import annotations

import importlib

from .base import DatasetAdapter
from .disfa import ReleaseError
from .registry import dataset_info

#: Dataset name -> (module, class) of its adapter; each class takes no arguments.
ADAPTERS: dict[str, tuple[str, str]] = {
    "bp4d": ("pipeline.datasets.bp4d.adapter", "BP4DAdapter"),
    "disfa+": ("pipeline.datasets.disfa_plus.adapter", "DisfaPlusAdapter"),
}


def get_adapter(name: str) -> DatasetAdapter:
    """A new adapter for dataset ``name`` ("bp4d", "disfa+"); a ``ReleaseError`` (one line,
    exit code 2 through the command handler) for a name without one."""
    dataset_info(name)  # a ValueError naming the choices for an unknown dataset
    if name not in ADAPTERS:
        raise ReleaseError(f"dataset {name!r} has no image-folder adapter; it is read by "
                           f"pipeline.align's own path (choose from {', '.join(ADAPTERS)})")
    module_name, class_name = ADAPTERS[name]
    try:
        module = importlib.import_module(module_name)
        cls = getattr(module, class_name)
    except (ImportError, AttributeError) as err:
        raise ReleaseError(f"dataset {name!r}: its adapter {module_name}.{class_name} cannot "
                           f"be loaded ({err})") from err
    adapter = cls()
    if getattr(adapter, "info", None) is None or adapter.info.name != name:
        raise ReleaseError(f"{module_name}.{class_name} does not describe dataset {name!r}")
    return adapter
