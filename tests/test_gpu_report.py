"""model.gpu_report: its CPU test mode writes every stage's JSON line within the deadline, the
summary is built from the lines, and nothing it imports needs dlib (the GPU machine has none)."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from model.benchmarks.gpu_report.config import STAGES
from model.benchmarks.gpu_report.summary import read_records, write_summary

ROOT = Path(__file__).resolve().parents[1]


def test_cpu_mode_writes_every_stage_within_the_deadline(tmp_path):
    deadline = 45
    t0 = time.monotonic()
    # Run as the GPU machine does (PYTHONPATH=., python -m), with dlib made unimportable.
    code = ("import sys; sys.modules['dlib'] = None; import runpy; "
            "sys.argv = ['model.gpu_report', '--device', 'cpu', '--small', '--out', sys.argv[1], "
            f"'--deadline', '{deadline}']; runpy.run_module('model.gpu_report', run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=deadline + 120)
    wall = time.monotonic() - t0
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = read_records(tmp_path / "gpu_report.jsonl")
    closing = {r["stage"]: r for r in records if r["kind"] == "stage"}
    assert set(closing) == set(STAGES)
    for stage, record in closing.items():
        assert record["status"] in ("ok", "skipped"), (stage, record)
        if record["status"] == "skipped":
            assert "deadline" in record["reason"]
    # Stages that ran measured something real; the run stayed near its deadline (a stage that
    # starts before the deadline finishes; the test mode's slowest takes ~20 s on a busy CPU).
    env = next(r for r in records if r["kind"] == "environment")
    assert env["cpu_count"] >= 1 and env["libraries"]["dlib"] is None
    assert records[-1]["kind"] == "done" and records[-1]["t"] < deadline + 40, wall
    ran = [r for r in records if r["kind"] == "measurement" and r["status"] == "ok"]
    assert any(r["stage"] == "ceiling_train" and r["images_per_s"] > 0 for r in ran)
    trainer = [r for r in ran if r["stage"] == "trainer_epoch"]
    if trainer:
        assert trainer[0]["syncs_per_step"] >= 0 and trainer[0]["loss_mean"] > 0
    md = (tmp_path / "gpu_report.md").read_text()
    assert "## ceiling_train" in md and "images_per_s" in md


def test_errors_and_skips_are_recorded_and_the_next_stage_runs(tmp_path):
    from model.benchmarks.gpu_report.config import ReportConfig
    from model.benchmarks.gpu_report.report import Report
    import torch

    report = Report(ReportConfig(out=str(tmp_path), deadline=5), torch.device("cpu"))

    def broken(_report):
        raise RuntimeError("boom")

    report.run_stage("ceiling_train", broken, 0)
    report.run_stage("ceiling_infer", lambda r: r.write(kind="measurement", status="ok", x=1), 0)
    report.run_stage("loader", broken, 60)  # needs more time than is left
    report.close()
    lines = [json.loads(line) for line in (tmp_path / "gpu_report.jsonl").read_text().splitlines()]
    stages = [(r["stage"], r["status"]) for r in lines if r["kind"] == "stage"]
    assert stages == [("ceiling_train", "error"), ("ceiling_infer", "ok"), ("loader", "skipped")]
    assert "boom" in lines[0]["error"] and "RuntimeError" in lines[0]["traceback"]
    md = write_summary(tmp_path / "gpu_report.jsonl", tmp_path / "gpu_report.md").read_text()
    assert "status: error (RuntimeError: boom)" in md and "| 1 |" in md


def test_importing_the_report_and_the_trainer_needs_no_dlib():
    code = ("import sys; sys.modules['dlib'] = None\n"
            "import model.gpu_report, model.train, model.bench, model.engine.trainer\n"
            "assert sys.modules.get('dlib') is None\n")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True,
                   env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
