"""What CI installs: constraints.txt pins every requirement inside setup.cfg's ranges, the README's
test command and .ci/run install with it, and .ci/run fails when either of its two runs fails."""
from __future__ import annotations

import configparser
import os
import stat
import subprocess
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]


def _requirements() -> list[Requirement]:
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    lines = (cfg["options"]["install_requires"].splitlines()
             + cfg["options.extras_require"]["test"].splitlines())
    return [Requirement(line) for line in lines if line.strip()]


def _pins(python: str) -> list[tuple[str, str]]:
    """(name, version) of each pin in constraints.txt that applies on Python ``python``."""
    pins = []
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            req = Requirement(line)
            spec = list(req.specifier)
            assert len(spec) == 1 and spec[0].operator == "==", f"not an exact pin: {line}"
            if req.marker is None or req.marker.evaluate({"python_version": python}):
                pins.append((canonicalize_name(req.name), spec[0].version))
    return pins


@pytest.mark.parametrize("python", ["3.10", "3.11", "3.12", "3.13"])
def test_constraints_pin_every_requirement_inside_setup_cfg(python):
    pins = dict(_pins(python))
    assert len(pins) == len(_pins(python)), "a package pinned twice for one Python"
    for req in _requirements():
        name = canonicalize_name(req.name)
        assert name in pins, f"constraints.txt does not pin {req.name}"
        assert req.specifier.contains(pins[name], prereleases=True), (str(req), pins[name])
    torch = next(r for r in _requirements() if r.name == "torch")
    # a range, so that installing the toolkit keeps a user's own (CUDA) torch build
    assert {s.operator for s in torch.specifier} == {">=", "<"}, str(torch)


def test_readme_and_ci_install_with_the_constraints():
    readme = (REPO / "README.md").read_text()
    assert 'pip install -c constraints.txt -e ".[test]" && python -m pytest -q' in readme
    run = (REPO / ".ci" / "run").read_text()
    assert "install constraints -c constraints.txt" in run and "install latest -U" in run
    assert "TRANET_REQUIRE_FIXTURES=1" in run
    assert ".ci/venv-*/" in (REPO / ".gitignore").read_text().splitlines()


FAKE_PYTHON = """#!/usr/bin/env bash
# Stands in for python: '-m venv --clear DIR' makes DIR/bin/python (this script); in a venv
# '-m pip install' exits with $FAKE_PIP_<VENV NAME> and '-m pytest' with $FAKE_RC_<VENV NAME>.
if [ "$1 $2" = "-m venv" ]; then mkdir -p "$4/bin" && cp "$0" "$4/bin/python"; exit 0; fi
name=$(basename "$(dirname "$(dirname "$0")")")
rc="FAKE_RC_${name#venv-}" pip="FAKE_PIP_${name#venv-}"
[ "$2 $3" = "pip install" ] && exit "${!pip:-0}"
[ "$2" = pytest ] && echo "$name ran pytest" && exit "${!rc:-0}"
[ "$2" = model.demo ] && echo "$name ran the demo" && exit "${FAKE_DEMO:-0}"
[ "$2" = model.readme_figures ] && echo "$name checked the figures" && exit "${FAKE_FIGURES:-0}"
exit 0
"""


@pytest.mark.parametrize("constraints, latest, fails", [
    (0, 0, False), (1, 0, True), (0, 1, True), (5, 0, True), (0, 5, True)])
def test_ci_run_fails_when_either_run_fails_or_collects_nothing(tmp_path, constraints, latest,
                                                               fails):
    done = _fake_ci(tmp_path, FAKE_RC_constraints=str(constraints), FAKE_RC_latest=str(latest))
    assert (done.returncode != 0) == fails, done.stdout + done.stderr
    # both runs always happen, so one CI run reports both
    assert "venv-constraints ran pytest" in done.stdout and "venv-latest ran pytest" in done.stdout


def test_ci_run_fails_when_an_install_fails_and_still_runs_the_other(tmp_path):
    done = _fake_ci(tmp_path, FAKE_PIP_latest="1")
    assert done.returncode != 0 and "latest: install failed" in done.stdout
    assert "venv-constraints ran pytest" in done.stdout
    assert "venv-latest ran pytest" not in done.stdout
    assert "ran the demo" not in done.stdout


@pytest.mark.parametrize("env, fails", [({}, False), ({"FAKE_FIGURES": "1"}, True),
                                        ({"FAKE_DEMO": "1"}, True)])
def test_ci_run_runs_the_main_job_and_checks_the_readme_figures(tmp_path, env, fails):
    done = _fake_ci(tmp_path, **env)
    assert (done.returncode != 0) == fails, done.stdout + done.stderr
    assert "venv-latest ran the demo" in done.stdout
    assert ("venv-latest checked the figures" in done.stdout) != ("FAKE_DEMO" in env)


def _fake_ci(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    """.ci/run in a copy of its folder, with FAKE_PYTHON standing in for python."""
    (tmp_path / ".ci").mkdir()
    run = tmp_path / ".ci" / "run"
    run.write_text((REPO / ".ci" / "run").read_text())
    fake = tmp_path / "fakepython"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    return subprocess.run(["bash", str(run)], env={**os.environ, "PYTHON": str(fake), **env},
                          capture_output=True, text=True, timeout=60)
