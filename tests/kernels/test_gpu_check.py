"""benchmarks/gpu_check.sh: the dry run (CPU, tiny sizes, Triton's interpreter) goes through every stage
and writes the report; the verdict counts our failures and not an unavailable baseline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu_check  # noqa: E402

pytestmark = pytest.mark.slow


def test_dry_run_writes_the_report(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("NPKERNELS_BACKEND", "NPKERNELS_SELF_CHECK")}
    proc = subprocess.run(["bash", "benchmarks/gpu_check.sh", str(tmp_path), "--dry-run"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["failures"] == []
    assert [s["name"] for s in report["stages"]] == ["tests", "first-use checks", "benchmarks: training step, implicit, knn"]
    assert {(c["op"], c["precision"]) for c in report["checks"]} == {
        (f, p) for f in ("coupling", "implicit", "knn") for p in ("highest", "high")}
    assert all(c["ok"] for c in report["checks"])
    assert any(c["outcome"] == "passed" for c in report["stages"][0]["cases"])
    groups = {r["group"] for r in report["benchmarks"]}
    assert {"train_step-step-tiny", "implicit_union-G-tiny", "knn-knn-tiny"} <= groups
    assert all(r["median_s"] > 0 for r in report["benchmarks"])
    md = (tmp_path / "gpu_check.md").read_text()
    for text in ("# GPU check", "| result | PASS |", "## First-use checks", "### knn-knn-tiny", "| triton |"):
        assert text in md
    assert (tmp_path / "tests.log").is_file() and (tmp_path / "bench.log").is_file()


def _report(**changes):
    report = {"stages": [{"name": "tests", "returncode": 0, "cases": [
        {"id": "tests/kernels/test_kernel_cuda.py::test_knn[x]", "outcome": "passed", "message": ""}]}],
        "checks": [{"op": "knn", "device": "cuda:0", "dtype": "float32", "precision": "high", "ok": True,
                    "detail": ""}], "unavailable": {}, "install_ok": True}
    report.update(changes)
    return report


def test_verdict():
    assert gpu_check.verdict(_report()) == []
    failed_check = _report(checks=[{"op": "coupling", "device": "cuda:0", "dtype": "bfloat16", "precision": "highest",
                                    "ok": False, "detail": "output 3: error 0.5 > 0.03"}])
    assert gpu_check.verdict(failed_check) == [
        "first-use check failed: coupling cuda:0 bfloat16 highest: output 3: error 0.5 > 0.03"]
    baseline = "benchmarks/bench_train_step.py::test_train_step[authors-compile-dfaust-train]"
    ours = "benchmarks/bench_train_step.py::test_train_step[triton-dfaust-train]"
    bench = {"name": "benchmarks: training step", "returncode": 1, "cases": [
        {"id": baseline, "outcome": "failed", "message": "torch._dynamo.exc.Unsupported: ..."},
        {"id": ours, "outcome": "failed", "message": "AssertionError: differs from the reference"}]}
    reasons = gpu_check.verdict(_report(stages=[bench], unavailable={baseline: "Unsupported"}))
    assert reasons == [f"{ours}: failed: AssertionError: differs from the reference"]
    assert gpu_check.provider_of(baseline) == "authors-compile" and gpu_check.provider_of(ours) == "triton"
    timed_out = _report(stages=[{"name": "tests", "returncode": -9, "timed_out": True, "cases": []}])
    assert gpu_check.verdict(timed_out) == ["stage 'tests' ran out of its time"]
    assert gpu_check.verdict(_report(install_ok=False)) == ["the install step failed (see install.log)"]
