"""Every folder or file the guides tell a user to write (``--out X``) is ignored by git, so a
clone that followed them shows a clean ``git status``."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GUIDES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _outputs() -> set[str]:
    """Relative ``--out`` targets in the guides; upper-case placeholders (OUT, DIR) are not paths."""
    found = set()
    for guide in GUIDES:
        for target in re.findall(r"--out[ =]+([A-Za-z0-9_./-]+)", guide.read_text()):
            if not target.startswith("/") and not target.split("/")[0].isupper():
                found.add(target.rstrip("/"))
    return found


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(),
                    reason="needs a git checkout")
def test_every_guide_output_is_ignored():
    outputs = sorted(_outputs())
    assert {"data/disfa_twin", "shards", "preds", "runs/f1"} <= set(outputs), outputs
    probes = [f"{out}/probe.bin" for out in outputs]  # a file written inside the output
    done = subprocess.run(["git", "check-ignore", "--no-index", "--stdin"], cwd=ROOT, text=True,
                          input="\n".join(probes) + "\n", capture_output=True)
    ignored = set(done.stdout.split())
    missing = [p for p in probes if p not in ignored]
    assert missing == [], missing
