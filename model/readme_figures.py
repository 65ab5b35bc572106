"""Check (or update) the README's twin figures against a run of the main job.

    python -m model.demo --out runs/demo
    python -m model.readme_figures runs/demo/demo_summary.json            # exit 1 if they differ
    python -m model.readme_figures runs/demo/demo_summary.json --write    # adopt the run's figures

The README's results block is rendered from ``docs/demo_figures.json`` (one reference run's
figures; see :mod:`model.evaluation.readme_figures`). Without ``--write`` the run's figures are
compared with that file and the README block with its rendering; every difference is printed
(wall times are reported, never compared). With ``--write`` both files take the run's figures.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from pipeline.cli import CommandError, HelpFormatter, atomic_write_text

from .cli import EXIT_ERROR, EXIT_OK, handle_errors
from .evaluation import readme_figures as rf

ROOT = Path(__file__).resolve().parent.parent


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m model.readme_figures", description=__doc__,
                                formatter_class=HelpFormatter)
    p.add_argument("summary", type=Path, help="demo_summary.json of a model.demo run")
    p.add_argument("--readme", type=Path, default=ROOT / "README.md",
                   help="the README holding the figures block")
    p.add_argument("--figures", type=Path, default=ROOT / "docs" / "demo_figures.json",
                   help="the reference figures the README block is rendered from")
    p.add_argument("--write", action="store_true",
                   help="write the run's figures into --figures and the README block")
    p.add_argument("--machine", default=None, metavar="TEXT",
                   help="with --write: how busy the machine was during the run, shown beside "
                        "its wall time (e.g. 'idle', 'busy: other jobs running')")
    return p


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CommandError(f"{path}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CommandError(f"{path}: not a JSON file ({err})") from None


@handle_errors("model.readme_figures")
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run = rf.figures_from_summary(_read_json(args.summary))
    except (KeyError, TypeError, IndexError) as err:
        raise CommandError(f"{args.summary}: not a model.demo summary (missing {err})") from None
    if not args.readme.is_file():
        raise CommandError(f"--readme {args.readme}: no such file")
    readme = args.readme.read_text()
    try:
        block = rf.readme_block(readme)
    except ValueError as err:
        raise CommandError(f"--readme {args.readme}: {err}") from None
    if args.write:
        if args.machine:
            run["machine"] = args.machine
        atomic_write_text(args.figures, json.dumps(run, indent=1) + "\n")
        atomic_write_text(args.readme, readme.replace(block, rf.render(run)))
        print(f"wrote {args.figures} and the block in {args.readme}")
        return EXIT_OK
    reference = _read_json(args.figures)
    problems = rf.differences(reference, run)
    if block != rf.render(reference):
        problems.append(f"{args.readme}'s block is not the rendering of {args.figures}")
    wall = run.get("wall_seconds", {}).get("total")
    print(f"this run: mean F1 {100 * run['occurrence']['mean']['mean_f1']:.1f}, "
          f"wall {wall} s (reference {reference.get('wall_seconds', {}).get('total')} s)")
    if problems:
        print(f"{len(problems)} figure(s) differ from {args.figures}:")
        print("\n".join(f"  {line}" for line in problems))
        return EXIT_ERROR
    print(f"the figures equal {args.figures} and the README block")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
