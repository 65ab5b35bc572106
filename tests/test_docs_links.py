"""The guides stay short and their links lead somewhere: every page of docs/ is at most 15 KB
(a researcher reads one in ten minutes), and every relative link in docs/ and README.md names a
file that exists and, for a Markdown file, a heading it has (GitHub's anchor rules)."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAX_GUIDE_BYTES = 15 * 1024
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def pages(root: Path = ROOT) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def anchors(path: Path) -> set[str]:
    """GitHub's heading ids: lower case, punctuation but '-' and '_' dropped, spaces -> '-',
    a repeated id suffixed -1, -2, ..."""
    seen: dict[str, int] = {}
    out = set()
    for heading in re.findall(r"^#{1,6} (.+?)\s*$", FENCE.sub("", path.read_text()), re.M):
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)       # a link keeps its text
        slug = re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def broken_links(files: list[Path]) -> list[str]:
    """'FILE: TARGET (why)' for every relative link that leads nowhere."""
    bad = []
    for page in files:
        for target in LINK.findall(FENCE.sub("", page.read_text())):
            if re.match(r"[a-z][a-z0-9+.-]*:", target):     # http:, https:, mailto:
                continue
            name, _, anchor = target.partition("#")
            dest = (page.parent / name).resolve() if name else page
            if not dest.exists():
                bad.append(f"{page.name}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                bad.append(f"{page.name}: {target} (no such heading)")
    return bad


def test_every_guide_is_at_most_15_kb() -> None:
    big = {p.name: p.stat().st_size for p in (ROOT / "docs").glob("*.md")
           if p.stat().st_size > MAX_GUIDE_BYTES}
    assert big == {}, f"guides over {MAX_GUIDE_BYTES} bytes: split them by reader task"


def test_every_relative_link_in_the_docs_leads_to_a_file_and_heading() -> None:
    assert broken_links(pages()) == []


def test_broken_links_are_found(tmp_path: Path) -> None:
    """The checker itself: a missing file and a missing heading are reported, good links not."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# A page\n\n## Size and cost (`model.bench`)\n")
    (tmp_path / "README.md").write_text(
        "[ok](docs/a.md) [ok](docs/a.md#size-and-cost-modelbench) [web](https://x.org/y.md)\n"
        "[gone](docs/b.md) [no heading](docs/a.md#speed)\n```\n[in code](docs/c.md)\n```\n")
    assert broken_links(pages(tmp_path)) == ["README.md: docs/b.md (no such file)",
                                             "README.md: docs/a.md#speed (no such heading)"]
