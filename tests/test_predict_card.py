"""model.predict says what model it runs: the card's summary, a twin-trained model's warning in
the log, every sidecar and every plot title (torch and ONNX), a card-less checkpoint named as
such; a checkpoint given to the wrong backend is refused in one line naming the right one."""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from model.cards import CARD_KEY, TWIN_WARNING, ModelCard
from model.engine.checkpoint import load_checkpoint, save_checkpoint
from model.inference import batch as batch_module
from model.inference.card_notice import NO_CARD_WARNING, TWIN_TITLE
from model.predict import main
from model.benchmarks.synthetic import astronaut_head, make_face_video, make_untrained_checkpoint

AUS = [1, 2, 4, 6, 9, 12, 25, 26]


def _with_card(path: Path, source: str | None) -> Path:
    path = make_untrained_checkpoint(path, "small", 64, au_ids=AUS)
    if source is not None:
        state = load_checkpoint(path)
        state[CARD_KEY] = ModelCard(data={"dataset": "DISFA", "source": source,
                                          "subjects": [1, 2, 3]}).to_dict()
        save_checkpoint(path, state)
    return path


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("ck")
    return {name: _with_card(base / f"{name}.pt", source)
            for name, source in (("twin", "twin"), ("release", "release"), ("none", None))}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("in")
    video = make_face_video(base / "clip.avi", 3, size=(320, 300), fps=10.0)
    folder = base / "shots"
    folder.mkdir()
    for i, shift in enumerate((0, 20)):
        canvas = np.full((320, 400, 3), 120, np.uint8)
        canvas[20:300, 40 + shift:320 + shift] = astronaut_head()
        cv2.imwrite(str(folder / f"{i}.png"), cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR))
    single = base / "one.png"
    shutil.copy(folder / "0.png", single)
    return {"video": video, "folder": folder, "single": single}


@pytest.fixture
def titles(monkeypatch) -> list[str]:
    """Every plot title predict asks for (the figures are still drawn)."""
    seen: list[str] = []
    for name in ("save_bar_plot", "save_image_chart", "save_timeline_plot"):
        original = getattr(batch_module, name)

        def spy(*args, _original=original, **kwargs):
            # the title: each plot function's last positional string (after any axis label)
            seen.append(kwargs.get("title") or [a for a in args if isinstance(a, str)][-1])
            return _original(*args, **kwargs)
        monkeypatch.setattr(batch_module, name, spy)
    return seen


def _run(checkpoint: Path, inputs: dict[str, Path], out: Path, *extra: str) -> int:
    return main(["--checkpoint", str(checkpoint), "--video", str(inputs["video"]), "--images",
                 str(inputs["folder"]), str(inputs["single"]), "--out", str(out), "--plot",
                 "--overlay", "--no-progress", *extra])


def _red_banner(overlay_jpg: Path) -> bool:
    """Whether the bottom strip of an overlay frame holds the banner's red text."""
    strip = cv2.imread(str(overlay_jpg))[-10:].reshape(-1, 3).astype(int)   # BGR
    dark = strip.mean() < 80          # the darkened strip (the test images' canvas is grey 120)
    red = ((strip[:, 2] - strip[:, 1]) > 50).sum() > 20
    return bool(dark and red)


def test_twin_model_warns_in_log_sidecars_and_plot_titles(checkpoints, inputs, tmp_path, caplog,
                                                          titles, capsys) -> None:
    with caplog.at_level(logging.INFO):
        assert _run(checkpoints["twin"], inputs, tmp_path / "out") == 0
    assert f"note: {TWIN_WARNING}" in capsys.readouterr().out  # again at the end of the run
    assert _red_banner(tmp_path / "out" / "shots_overlay" / "0.jpg")
    assert TWIN_WARNING in caplog.text
    assert "model card: TRA-Net" in caplog.text and "twin (synthetic) 3 subjects" in caplog.text
    sidecars = sorted((tmp_path / "out").glob("*.meta.json"))
    assert [p.name for p in sidecars] == ["clip.meta.json", "one.meta.json", "shots.meta.json"]
    for side in sidecars:
        meta = json.loads(side.read_text())
        assert meta["trained_on_twin"] is True and meta["notes"] == [TWIN_WARNING]
        assert "twin (synthetic)" in meta["model_card"]
    assert len(titles) == 3  # timeline, per-image chart, single-image bars
    assert all(t.startswith(TWIN_TITLE) for t in titles), titles


def test_release_model_and_cardless_checkpoint(checkpoints, inputs, tmp_path, caplog,
                                               titles) -> None:
    with caplog.at_level(logging.INFO):
        assert _run(checkpoints["release"], inputs, tmp_path / "rel") == 0
    assert "model card: TRA-Net" in caplog.text
    assert TWIN_WARNING not in caplog.text and NO_CARD_WARNING not in caplog.text
    meta = json.loads((tmp_path / "rel" / "clip.meta.json").read_text())
    assert meta["trained_on_twin"] is False and meta["notes"] == []
    assert not any(TWIN_TITLE in t for t in titles)
    assert not _red_banner(tmp_path / "rel" / "shots_overlay" / "0.jpg")
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert main(["--checkpoint", str(checkpoints["none"]), "--video", str(inputs["video"]),
                     "--out", str(tmp_path / "none"), "--no-progress"]) == 0
    assert NO_CARD_WARNING in caplog.text
    meta = json.loads((tmp_path / "none" / "clip.meta.json").read_text())
    assert meta["model_card"] is None and meta["notes"] == [NO_CARD_WARNING]


def test_onnx_export_carries_the_card(checkpoints, inputs, tmp_path, caplog) -> None:
    pytest.importorskip("onnxruntime")
    from model.export import main as export_main

    onnx = tmp_path / "twin.onnx"
    assert export_main(["--checkpoint", str(checkpoints["twin"]), "--out", str(onnx)]) == 0
    import onnx as onnx_lib

    props = {p.key: p.value for p in onnx_lib.load(str(onnx)).metadata_props}
    assert TWIN_WARNING in props["model_card"]  # the card as Markdown, for other tools
    with caplog.at_level(logging.WARNING):
        assert main(["--checkpoint", str(onnx), "--video", str(inputs["video"]), "--out",
                     str(tmp_path / "o"), "--no-progress"]) == 0
    assert TWIN_WARNING in caplog.text
    meta = json.loads((tmp_path / "o" / "clip.meta.json").read_text())
    assert meta["backend"] == "onnx" and meta["trained_on_twin"] is True
    # an export under a .pt name, given to torch: one line naming the right backend
    renamed = tmp_path / "exported.pt"
    shutil.copy(onnx, renamed)
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        assert main(["--checkpoint", str(renamed), "--backend", "torch", "--video",
                     str(inputs["video"]), "--out", str(tmp_path / "o2"), "--no-progress"]) == 2
    assert "exported.pt: an ONNX model, not a PyTorch checkpoint; use --backend onnx" in caplog.text
    assert not (tmp_path / "o2").exists()
