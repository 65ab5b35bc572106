"""Where a release root's frames come from: the DISFA release, or the synthetic twin.

Every shard records it (``data_source``), so a model card can say what a model was trained on.
The twin marks its root with ``TWIN_MARKER``; the marker's name lives here, not in
``pipeline.twin``, so that reading and aligning a release never imports the twin.
"""
from __future__ import annotations

from pathlib import Path

#: The file ``pipeline.synth`` writes at the root of every twin (its ground truth).
TWIN_MARKER = "synth_truth.json"


def data_origin(root: Path | str) -> dict[str, str]:
    """What every shard records of where its frames came from: the synthetic twin when the root
    holds ``pipeline.synth``'s marker file, the DISFA release otherwise; and the root's name."""
    root = Path(root)
    twin = (root / TWIN_MARKER).is_file()
    return {"data_source": "twin" if twin else "release", "release_root": root.resolve().name}
