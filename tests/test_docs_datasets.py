"""The dataset guides say what the code and the manifests hold: docs/datasets.md's counts are the
folds manifests', its AU sets and cross-dataset subjects are the adapters' facts, docs/disfa-plus.md
names DISFA+'s subjects and label rule, and every peer figure on BP4D (docs/bp4d.md) cites a
source and says how the model was selected."""
from __future__ import annotations

import json
import re
from pathlib import Path

from pipeline.datasets.bp4d import facts as bp4d
from pipeline.datasets.disfa import facts as disfa
from pipeline.datasets.disfa_plus import facts as disfa_plus

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
MANIFESTS = ROOT / "data_manifests"


def section(page: str, heading: str) -> str:
    """The text under a '## heading' up to the next '## '."""
    text = (DOCS / page).read_text()
    start = text.index(f"## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start:] if end < 0 else text[start:end]


def table_rows(text: str) -> dict[str, list[str]]:
    """First cell -> the other cells, for every Markdown table row (header rule skipped)."""
    rows = {}
    for line in text.splitlines():
        if line.startswith("|") and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            rows[cells[0]] = cells[1:]
    return rows


def au_list(aus: tuple[int, ...] | list[int]) -> str:
    return ", ".join(str(a) for a in sorted(aus))


def test_datasets_page_counts_are_the_manifests() -> None:
    text = section("datasets.md", "Folds and counts to expect")
    bp4d_folds = json.loads((MANIFESTS / "bp4d_folds.json").read_text())
    disfa_folds = json.loads((MANIFESTS / "disfa_folds.json").read_text())
    jaa = bp4d_folds["drop_lists"]["jaa"]
    expected = [*bp4d_folds["kept_frames_per_part"], bp4d_folds["total_frames"],
                *jaa["kept_frames_per_part"], jaa["total_frames"],
                *disfa_folds["kept_frames_per_part"], sum(disfa_folds["kept_frames_per_part"])]
    missing = [f"{n:,}" for n in expected if f"{n:,}" not in text]
    assert missing == [], f"docs/datasets.md lacks the manifests' counts {missing}"
    tested = {f["fold"]: f["test_part"] for f in bp4d_folds["folds"]}
    assert (f"fold 1 tests part{tested[1]}, fold 2 part{tested[2]}, fold 3 part{tested[3]}"
            in text)


def test_datasets_page_aus_are_the_adapters() -> None:
    rows = table_rows(section("datasets.md", "At a glance"))
    assert rows["AUs coded"][0] == au_list(disfa.ALL_AUS)
    assert rows["AUs coded"][2] == au_list(disfa_plus.AUS)
    assert rows["AUs evaluated"][0].endswith(au_list(disfa.EVAL_AUS))
    assert rows["AUs evaluated"][1].endswith(au_list(bp4d.EVAL_AUS))


def test_cross_dataset_protocols_are_the_facts() -> None:
    rows = table_rows(section("datasets.md", "Cross-dataset protocols"))
    disfa_only = sorted(set(disfa.SUBJECTS) - set(disfa_plus.SUBJECTS))
    assert len(disfa_only) == 18
    assert re.findall(r"SN0\d\d", rows["DISFA -> DISFA+"][0]) == disfa_only
    shared = au_list(set(bp4d.EVAL_AUS) & set(disfa.ALL_AUS))
    for pair in ("BP4D -> DISFA+", "BP4D -> DISFA"):
        assert shared in rows[pair][1], pair
    readme = (ROOT / "README.md").read_text()
    assert "(docs/datasets.md)" in readme, "the README's task list links the datasets page"


def test_disfa_plus_guide_names_its_subjects_rule_and_counts() -> None:
    text = (DOCS / "disfa-plus.md").read_text()
    assert ", ".join(disfa_plus.SUBJECTS) in text
    assert f"intensity >= {disfa_plus.DEFAULT_THRESHOLD}" in text
    assert "57,150" in text and "57,668" in text


def test_every_peer_figure_on_bp4d_cites_a_source_and_a_selection_rule() -> None:
    text = section("bp4d.md", "Published results on BP4D")
    rows = {k: v for k, v in table_rows(text).items() if k != "method"}
    assert len(rows) >= 15, "the peers' BP4D figures"
    defined = dict(re.findall(r"^- \[([a-z])\] [^\n]*?(https://\S+)", text, re.M))
    for method, (paper, figure, selection) in rows.items():
        number = re.match(r'"?(\d+(?:\.\d)?)%?"? ', figure)
        assert number and 40 <= float(number.group(1)) <= 100, (method, figure)
        cited = re.findall(r"\[([a-z])\]", figure)
        assert cited and all(c in defined for c in cited), (method, figure, sorted(defined))
        assert paper and selection, method
    assert {"ME-GraphAU, ResNet-50", "ME-GraphAU, Swin-B", "JAA-Net", "ARL"} <= set(rows)
    assert "(bp4d.md#published-results-on-bp4d)" in section("model.md", "Published results on BP4D")
