"""Commands run with ``python -m`` log under their package name, never ``__main__``."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _entry_points() -> list[Path]:
    return [p for folder in ("model", "pipeline") for p in sorted((ROOT / folder).rglob("*.py"))
            if 'if __name__ == "__main__"' in p.read_text()]


def _logger_names(path: Path) -> list[str]:
    """The argument of every ``logging.getLogger(...)`` call, as source text."""
    return [ast.unparse(node.args[0]) if node.args else ""
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Call) and ast.unparse(node.func) == "logging.getLogger"]


def test_entry_points_name_their_loggers_after_the_package():
    entry = _entry_points()
    assert len(entry) >= 10
    found = {p.relative_to(ROOT).as_posix(): _logger_names(p) for p in entry}
    wrong = {k: v for k, v in found.items() if "__name__" in v}
    assert wrong == {}
    for path, names in found.items():  # a literal name matches the module (or its package)
        module = path[:-3].replace("/", ".")
        for name in names:
            if name.startswith(("'", '"')):
                assert module.startswith(name.strip("'\"").rsplit(".", 1)[0]), (path, name)
