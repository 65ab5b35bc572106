"""docs/predict.md's own-video path runs as written: its ``<!-- own-video -->`` block, with a
checkpoint really trained on the synthetic twin (pipeline.align on a twin root, model.train)
and a clip this test makes, warns that the model's outputs on real faces mean nothing - in the
log and in the CSV's sidecar."""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from _disfa_fixtures import write_release
from model.cards import TWIN_WARNING
from model.engine.config import TrainConfig
from model.benchmarks.synthetic import make_face_video
from model.train import train
from pipeline.align import AlignConfig, run_align
from pipeline.twin import TRUTH_JSON
from test_docs import ROOT, _commands
from trainer_fixtures import write_manifest

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest: tiny models, one thread

MARKER = "<!-- own-video -->"
SUBJECTS = ["SN001", "SN002", "SN003", "SN004"]


def own_video_commands() -> list[str]:
    """The commands of docs/predict.md's own-video block (exactly one such block)."""
    text = (ROOT / "docs" / "predict.md").read_text()
    blocks = re.findall(re.escape(MARKER) + r"\s*\n```[a-z]*\n(.*?)```", text, re.S)
    assert len(blocks) == 1, f"docs/predict.md: expected one {MARKER} block, found {len(blocks)}"
    return _commands(blocks[0])


@pytest.fixture(scope="module")
def twin_checkpoint(tmp_path_factory) -> Path:
    """best.pt of one short run on shards aligned from a twin root (the marker file that
    pipeline.synth writes), so its card says the twin, as a user's twin run's would."""
    base = tmp_path_factory.mktemp("twin")
    release = write_release(base / "root", {s: 10 for s in SUBJECTS}, width=64, height=48)
    (release.root / TRUTH_JSON).write_text("{}")
    shards = base / "shards"
    run_align(AlignConfig(disfa_root=str(release.root), out=str(shards), size=32,
                          encoding="raw"))
    manifest = write_manifest(base / "folds.json", shards,
                              [(SUBJECTS[:2], SUBJECTS[2:3], SUBJECTS[3:])], 32)
    out = base / "run"
    train(TrainConfig(shards=str(shards), manifest=str(manifest), fold=1, out=str(out),
                      preset="small", epochs=1, batches_per_epoch=2, batch_size=4, workers=0,
                      quiet=True, eval_batch_size=32, plot_every=100))
    return next(out.rglob("best.pt"))


def test_own_video_path_warns_of_a_twin_model_in_log_and_sidecar(twin_checkpoint,
                                                                tmp_path) -> None:
    clip = make_face_video(tmp_path / "my_clip.avi", 6, size=(320, 300), fps=10.0)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    commands = own_video_commands()
    assert any("model.predict" in c and "--video" in c for c in commands)
    for command in commands:
        command = re.sub(r"--checkpoint \S+", f"--checkpoint {shlex.quote(str(twin_checkpoint))}",
                         command).replace("my_clip.mp4", shlex.quote(str(clip)))
        command = command.replace("python -m", f"{sys.executable} -m")
        done = subprocess.run(command, shell=True, cwd=tmp_path, env=env, capture_output=True,
                              text=True)
        assert done.returncode == 0, f"{command}\n{done.stderr[-3000:]}"
        assert TWIN_WARNING in done.stderr, done.stderr[-3000:]
        out = tmp_path / shlex.split(command.split("--out", 1)[1])[0]
        sidecar = json.loads((out / "my_clip.meta.json").read_text())
        assert sidecar["trained_on_twin"] is True
        assert TWIN_WARNING in sidecar["notes"]
