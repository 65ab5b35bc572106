"""What CI installs: constraints.txt pins every requirement inside setup.cfg's ranges, the README's
test command and .ci/run install with it, .ci/run fails when any of its three runs fails, and its
timm run cannot pass by skipping timm's tests."""
from __future__ import annotations

import configparser
import os
import stat
import re
import subprocess
import sys
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
[ "$2 $3" = "pip install" ] && echo "$name pip install ${*:4}" && exit "${!pip:-0}"
[ "$2" = pytest ] && echo "$name ran pytest ${*:3} [timm ${TRANET_REQUIRE_TIMM:-optional}]" \
    && exit "${!rc:-0}"
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


def _timm_torch() -> dict[str, str]:
    """The torch/torchvision pins of .ci/run's timm venv."""
    line = next(x for x in (REPO / ".ci" / "run").read_text().splitlines()
                if x.startswith("TIMM_TORCH=("))
    return dict(pin.split("==") for pin in line[len("TIMM_TORCH=("):-1].split())


def test_setup_cfg_takes_the_torch_that_ci_tests_timm_with():
    pins = _timm_torch()
    assert set(pins) == {"torch", "torchvision"}
    torch = next(r for r in _requirements() if r.name == "torch")
    # pip installs the package beside this torch in CI: outside the range it would not resolve
    assert torch.specifier.contains(pins["torch"]), (str(torch), pins["torch"])
    constrained = dict(_pins("3.11"))["torch"]
    assert torch.specifier.contains(constrained) and constrained != pins["torch"]


@pytest.mark.parametrize("timm, fails", [(0, False), (1, True), (2, True), (5, True)])
def test_ci_run_runs_the_timm_tests_in_their_own_venv_and_fails_with_them(tmp_path, timm, fails):
    done = _fake_ci(tmp_path, FAKE_RC_timm=str(timm))
    assert (done.returncode != 0) == fails, done.stdout + done.stderr
    pins = " ".join(f"{k}=={v}" for k, v in _timm_torch().items())
    assert f"venv-timm pip install -q {pins} -e .[test,timm]" in done.stdout
    assert "venv-timm ran pytest -q -p no:cacheprovider tests/test_backbones_timm.py [timm 1]" in (
        done.stdout)
    # the other two run everything, where timm may be absent
    assert "venv-constraints ran pytest -q -p no:cacheprovider [timm optional]" in done.stdout
    assert "venv-latest ran pytest -q -p no:cacheprovider [timm optional]" in done.stdout
    assert f"timm run exit {1 if timm == 5 else timm}," in done.stdout


def test_ci_run_fails_when_the_timm_install_fails(tmp_path):
    done = _fake_ci(tmp_path, FAKE_PIP_timm="1")
    assert done.returncode != 0 and "timm: install failed" in done.stdout
    assert "venv-constraints ran pytest" in done.stdout and "venv-latest ran pytest" in done.stdout
    assert "venv-timm ran pytest" not in done.stdout


@pytest.mark.parametrize("required", [False, True])
def test_timm_tests_fail_instead_of_skipping_when_required(tmp_path, required):
    # a timm that cannot import, as beside a torchvision built for another torch
    (tmp_path / "timm").mkdir()
    (tmp_path / "timm" / "__init__.py").write_text("raise ImportError('torchvision mismatch')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])}
    env.pop("TRANET_REQUIRE_TIMM", None)
    if required:
        env["TRANET_REQUIRE_TIMM"] = "1"
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                           str(REPO / "tests" / "test_backbones_timm.py")], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)
    out = done.stdout + done.stderr
    assert "timm does not import here (ImportError: torchvision mismatch)" in out, out[-2000:]
    # a run that only skips exits 5 (nothing ran); required, it is an error (exit 1 or 2)
    assert (done.returncode not in (0, 5)) == required, out[-2000:]
    assert bool(re.search(r"\b1 skipped\b", out)) != required, out[-2000:]


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
