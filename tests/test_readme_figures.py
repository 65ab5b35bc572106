"""The README's twin figures are what the code produces (issue #21, item 14).

The README block must be the rendering of docs/demo_figures.json (the reference run's figures),
and ``model.readme_figures`` must tell a run whose figures differ from one that matches."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from model import readme_figures as command
from model.evaluation import readme_figures as rf
from model.evaluation.intensity import IntensityAccumulator
from model.evaluation.metrics import MetricAccumulator

ROOT = Path(__file__).resolve().parent.parent
AUS = [1, 2, 4, 6, 9, 12, 25, 26]


def test_readme_block_is_the_rendering_of_the_reference_figures():
    figures = json.loads((ROOT / "docs" / "demo_figures.json").read_text())
    block = rf.readme_block((ROOT / "README.md").read_text())
    assert block == rf.render(figures), (
        "README.md's demo-figures block differs from docs/demo_figures.json: run the demo and "
        "`python -m model.readme_figures runs/demo/demo_summary.json --write`")


def _fold_result(fold: int, rng: np.random.Generator) -> dict:
    subjects = [f"SN{fold}{k:02d}" for k in range(3)]
    groups = np.repeat(np.arange(3), 40)
    targets = torch.as_tensor(rng.random((120, len(AUS))) < 0.3, dtype=torch.float32)
    logits = torch.as_tensor(rng.normal(size=(120, len(AUS))), dtype=torch.float32) + 3 * targets - 1.5
    occurrence = MetricAccumulator(AUS, subjects)
    occurrence.update(logits, targets, groups=groups)
    intensity = IntensityAccumulator(AUS, AUS, subjects)
    codes = torch.as_tensor(rng.integers(0, 6, (120, len(AUS))), dtype=torch.float32)
    intensity.update(codes + torch.as_tensor(rng.normal(0, 0.7, codes.shape)), codes, groups)
    return {"fold": fold, "metrics": occurrence.compute().as_dict(),
            "intensity": intensity.compute().as_dict()}


def fake_summary(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    results = [_fold_result(fold, rng) for fold in (1, 2, 3)]
    predict = [{"fold": r["fold"], "faces_found": 600, "frames": 600,
                "metrics": r["metrics"], "intensity": r["intensity"]} for r in results]
    return {"protocol": "labels intensity >= 3", "results": results, "predict": predict,
            "wall_seconds": {"twin": 20.0, "total": 300.0}, "threads": 2, "cpu_count": 2}


def test_render_shows_every_fold_and_the_mean_with_its_interval():
    figures = rf.figures_from_summary(fake_summary())
    text = rf.render(figures)
    mean = figures["occurrence"]["mean"]
    assert text.startswith(rf.BEGIN) and text.endswith(rf.END)
    assert f"**{100 * mean['mean_f1']:.1f}** [{100 * mean['mean_f1_ci'][0]:.1f}," in text
    assert mean["mean_f1_ci"][0] < mean["mean_f1"] < mean["mean_f1_ci"][1]
    for fold in figures["occurrence"]["folds"]:
        assert f"| {fold['fold']} | {100 * fold['f1'][0]:.1f} |" in text
    assert "through `model.predict`" in text and "1,800 of 1,800" in text


def _write_readme(tmp_path: Path, figures: dict) -> tuple[Path, Path]:
    readme = tmp_path / "README.md"
    readme.write_text(f"# Title\n\nbefore\n\n{rf.render(figures)}\n\nafter\n")
    reference = tmp_path / "figures.json"
    reference.write_text(json.dumps(figures))
    return readme, reference


def test_check_passes_for_the_same_figures_and_ignores_wall_time(tmp_path, capsys):
    summary = fake_summary()
    readme, reference = _write_readme(tmp_path, rf.figures_from_summary(summary))
    summary["wall_seconds"] = {"twin": 99.0, "total": 999.0}
    path = tmp_path / "demo_summary.json"
    path.write_text(json.dumps(summary))
    assert command.main([str(path), "--readme", str(readme), "--figures", str(reference)]) == 0
    assert "equal" in capsys.readouterr().out


def test_check_fails_for_other_figures_and_write_adopts_them(tmp_path, capsys):
    readme, reference = _write_readme(tmp_path, rf.figures_from_summary(fake_summary(0)))
    other = tmp_path / "other.json"
    other.write_text(json.dumps(fake_summary(1)))
    args = [str(other), "--readme", str(readme), "--figures", str(reference)]
    assert command.main(args) == 1
    out = capsys.readouterr().out
    assert "occurrence.mean.mean_f1" in out and "differ" in out
    assert command.main(args + ["--write", "--machine", "idle"]) == 0
    text = readme.read_text()
    assert "on 2 cores, idle (" in text and json.loads(reference.read_text())["machine"] == "idle"
    assert text.startswith("# Title\n\nbefore") and text.endswith("after\n")
    assert command.main(args) == 0


def test_a_hand_edited_readme_block_fails_the_check(tmp_path, capsys):
    summary = fake_summary()
    readme, reference = _write_readme(tmp_path, rf.figures_from_summary(summary))
    readme.write_text(readme.read_text().replace("| 1 |", "| 1 | 99.9 |", 1))
    path = tmp_path / "demo_summary.json"
    path.write_text(json.dumps(summary))
    assert command.main([str(path), "--readme", str(readme), "--figures", str(reference)]) == 1
    assert "not the rendering" in capsys.readouterr().out


@pytest.mark.parametrize("content, message", [("{", "not a JSON file"), ("{}", "not a model.demo")])
def test_bad_summary_is_one_line(tmp_path, capsys, content, message):
    path = tmp_path / "demo_summary.json"
    path.write_text(content)
    assert command.main([str(path)]) == 2
    assert message in capsys.readouterr().err
