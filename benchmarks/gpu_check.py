"""One prepared GPU check: the CUDA tests, the first-use checks and the GPU benchmark sizes in one run.

    bash benchmarks/gpu_check.sh OUTDIR               # on an H100/H200: install, then this, <= 8 minutes
    python benchmarks/gpu_check.py OUTDIR --dry-run   # CPU, tiny sizes, Triton's interpreter (CI)

Stages, each a subprocess with a share of the time budget (``--budget-s``, counted from
``--started-at``), so that one stall cannot eat the run:
1. environment: device, driver, torch, Triton, commit, date, load; the inside-mesh extension (loaded,
   or built on first use when the install step did not build it);
2. tests: tests/kernels/test_kernel_cuda.py (every kernel against its reference: awkward and production
   sizes, fp32 "highest" / "high" and bf16, forward, first-order backward, the normal loss's second
   order) and the ``cuda`` tests of tests/labeller (CUDA labeller = CPU labeller, shared meshes, 1M
   points each), in parallel with pytest-xdist when it is installed;
3. ``python -m npkernels.env --check``: the first-use check of every kernel family (table);
4. benchmarks (pytest-benchmark, the benchmarks/ code): the D-FAUST training step (authors, reference,
   Triton; peak memory), G(x) for 1M points x 10 primitives, knn 100k x 100k, the labeller on 1M and
   10M points; last, while time remains, the training step's torch.compile baselines.
The shared meshes are read from <repo>/../shared/data/meshes, or from <repo>/shared/data/meshes (copy
them there for a device machine, where only the checkout travels); without them those cases skip.
Writes OUTDIR/gpu_check.md (device, versions, commit, date, tables of medians and ratios) and
OUTDIR/gpu_check.json, plus tests.log and bench.log. Exits with 1 when anything of ours fails (a
mismatch, an error, a stage out of time); an unavailable baseline (a torch.compile or PyTorch3D
provider that errors) is reported, not counted.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the checkout's packages, installed or not (--dry-run installs nothing)
BASELINES = ("authors-compile", "reference-compile", "pytorch3d")  # providers that are not ours
TRAIN = "benchmarks/bench_train_step.py::test_train_step"
IMPLICIT = "benchmarks/bench_implicit.py::test_implicit_union"
KNN = "benchmarks/bench_knn.py::test_knn"
MESH = "benchmarks/bench_inside_mesh.py"


def plan(dry_run: bool) -> dict:
    """What each stage runs: pytest arguments, and the seconds it may take at most."""
    if dry_run:  # the plumbing of every stage at tiny sizes (the Triton training step is too slow interpreted)
        tests = ["tests/kernels/test_kernel_cuda.py", "-k", "test_knn and no-masks-B1-N1-P1"]
        return {"tests": (tests, 120), "rounds": (1, 0), "bench": [
            ("training step, implicit, knn", [f"{TRAIN}[reference-tiny]"]
             + [f"{IMPLICIT}[{p}-G-tiny]" for p in ("triton", "reference")]
             + [f"{KNN}[{p}-knn-tiny]" for p in ("triton", "reference")], 120),
        ]}
    tests = ["tests/kernels/test_kernel_cuda.py", "tests/labeller/test_inside_mesh.py", "-m", "cuda or triton"]
    meshes = [f"{MESH}::test_inside_mesh_cuda[{k}-{n}]" for k in ("human14k", "anny100k") for n in ("1M", "10M")]
    meshes += [f"{MESH}::test_inside_mesh_cpu[npkernels-{k}-1M]" for k in ("human14k", "anny100k")]
    return {"tests": (tests, 200), "rounds": (10, 2), "bench": [
        ("training step", [f"{TRAIN}[{p}-dfaust-train]" for p in ("triton", "reference", "authors")], 120),
        ("G(x), knn", [f"{IMPLICIT}[{p}-G-dense-1Mx10]" for p in ("triton", "reference", "authors")]
         + [f"{KNN}[{p}-{m}-100kx100k]" for p in ("triton", "reference", "pytorch3d") for m in ("knn", "chamfer+bwd")
            if p != "pytorch3d" or m == "knn"], 90),
        ("labeller", meshes, 60),
        ("training step, torch.compile", [f"{TRAIN}[{p}-dfaust-train]" for p in BASELINES[:2]], 240),
    ]}


class Clock:
    """The run's time budget, counted from the wrapper's start (the install step included)."""

    def __init__(self, budget_s: float, started_at: float):
        self.budget_s, self.started_at = budget_s, started_at

    def left(self) -> float:
        return self.budget_s - (time.time() - self.started_at)


def run_stage(args: list[str], timeout: float, log: Path, env: dict) -> dict:
    """Run ``args`` in its own process group, appending its output to ``log``; kill it at ``timeout``."""
    start = time.perf_counter()
    with open(log, "a") as f:
        f.write(f"\n$ {' '.join(args)}\n")
        f.flush()
        proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = proc.wait(timeout=max(1.0, timeout))
            timed_out = False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            code, timed_out = -9, True
            f.write(f"\n[gpu_check] killed after {timeout:.0f} s (its share of the time budget)\n")
    return {"returncode": code, "timed_out": timed_out, "seconds": round(time.perf_counter() - start, 1)}


def junit_cases(path: Path) -> list[dict]:
    """Every test case of a JUnit XML file: node id, outcome (passed / failed / error / skipped), message."""
    if not path.is_file():
        return []
    cases = []
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for tag, name in (("failure", "failed"), ("error", "error"), ("skipped", "skipped")):
            node = case.find(tag)
            if node is not None:
                text = (node.get("message") or node.text or "").strip()
                outcome, message = name, (text.splitlines() or [""])[0][:300]
                break
        node_id = f"{case.get('classname', '').replace('.', '/')}.py::{case.get('name')}"
        cases.append({"id": node_id, "outcome": outcome, "message": message})
    return cases


_VERBOSE_LINE = re.compile(r"(?:\[gw\d+\] \S+ )?(PASSED|FAILED|ERROR|SKIPPED) (\S+::\S+)|(\S+::\S+) (PASSED|FAILED|ERROR|SKIPPED)")


def log_cases(log: Path, since: int) -> list[dict]:
    """The outcomes pytest -v printed to ``log`` after byte ``since``: what a killed run still tells."""
    found = {}
    for line in log.read_text(errors="replace")[since:].splitlines():
        m = _VERBOSE_LINE.search(line)
        if m:
            outcome, node_id = (m.group(1), m.group(2)) if m.group(1) else (m.group(4), m.group(3))
            found[node_id] = {"id": node_id, "outcome": {"PASSED": "passed", "FAILED": "failed", "ERROR": "error",
                                                          "SKIPPED": "skipped"}[outcome], "message": "(from the log)"}
    return list(found.values())


def environment(args) -> dict:
    import torch

    def shell(cmd: list[str]) -> str:
        try:
            return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    try:
        import importlib.metadata as md

        triton = md.version("triton")
    except Exception:  # noqa: BLE001 - any failure means "not installed"
        triton = "not installed"
    commit = shell(["git", "rev-parse", "--short", "HEAD"]) or args.commit or "unknown"
    dirty = bool(shell(["git", "status", "--porcelain", "--untracked-files=no"]))
    cuda = torch.cuda.is_available()
    props = torch.cuda.get_device_properties(0) if cuda else None
    info = {
        "device": (f"{props.name} (sm_{props.major}{props.minor}, {props.total_memory / 2**30:.0f} GiB, "
                   f"{props.multi_processor_count} SMs)") if cuda else f"CPU only ({platform.processor() or 'cpu'})",
        "driver": shell(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]) or "n/a",
        "torch": f"{torch.__version__} (CUDA {torch.version.cuda or 'none'})",
        "triton": triton,
        "python": platform.python_version(),
        "commit": commit + (" + uncommitted changes" if dirty else ""),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpus": str(os.cpu_count()),
        "load": shell(["uptime"]) or "n/a",
        "mode": "dry run (CPU, tiny sizes, Triton interpreter)" if args.dry_run else "GPU",
    }
    start = time.perf_counter()
    from npkernels import _ext

    ext = _ext.get_ext()
    info["labeller"] = _ext.ext_status() + f" (loaded in {time.perf_counter() - start:.1f} s)"
    info["labeller_cuda"] = bool(ext is not None and ext.has_cuda())
    return info


def benchmark_rows(json_path: Path) -> list[dict]:
    """Rows (group, provider, median / IQR in s, rounds, peak MiB) of a pytest-benchmark JSON file."""
    if not json_path.is_file():
        return []
    rows = []
    for b in json.loads(json_path.read_text()).get("benchmarks", []):
        extra, stats = b.get("extra_info", {}), b["stats"]
        rows.append({"group": b.get("group") or b["name"], "provider": extra.get("provider", b["name"]),
                     "median_s": stats["median"], "iqr_s": stats["iqr"], "rounds": stats["rounds"],
                     "peak_cuda_mb": extra.get("peak_cuda_mb"), "id": b["fullname"]})
    return rows


def provider_of(node_id: str) -> str:
    """The provider in a benchmark node id (the first part of its parameters)."""
    params = node_id.split("[", 1)[-1].rstrip("]")
    return next((p for p in BASELINES if params.startswith(p)), params.split("-")[0])


def verdict(report: dict) -> list[str]:
    """Why the run fails (empty when it passes): our mismatches, errors and stages out of time."""
    reasons = []
    for stage in report["stages"]:
        if stage.get("timed_out"):
            reasons.append(f"stage '{stage['name']}' ran out of its time")
        elif stage.get("skipped"):
            continue
        elif stage["returncode"] not in (0, 1, 5) and not stage.get("cases"):  # 1: some test failed; 5: none
            reasons.append(f"stage '{stage['name']}' exited with {stage['returncode']}")
    reasons += [f"first-use check failed: {c['op']} {c['device']} {c['dtype']} {c['precision']}: {c['detail']}"
                for c in report.get("checks", []) if not c["ok"]]
    for stage in report["stages"]:
        for case in stage.get("cases", []):
            if case["outcome"] in ("failed", "error") and case["id"] not in report["unavailable"]:
                reasons.append(f"{case['id']}: {case['outcome']}: {case['message']}")
    if not report.get("install_ok", True):
        reasons.append("the install step failed (see install.log)")
    return reasons


def _fmt_s(seconds: float) -> str:
    return f"{seconds * 1e3:,.1f} ms" if seconds < 10 else f"{seconds:,.1f} s"


def markdown(report: dict) -> str:
    env = report["environment"]
    lines = [f"# GPU check: {env['device']}", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in env.items()]
    lines += [f"| result | {'PASS' if not report['failures'] else 'FAIL'} |",
              f"| wall time | {report['wall_s']:.0f} s of a {report['budget_s']:.0f} s budget |", ""]
    if report["failures"]:
        lines += ["## Failures", ""] + [f"- {r}" for r in report["failures"]] + [""]
    lines += ["## Stages", "", "| stage | seconds | result |", "|---|---|---|"]
    for s in report["stages"]:
        state = ("skipped: " + s["skipped"]) if s.get("skipped") else ("out of time" if s.get("timed_out") else (
            f"exit {s['returncode']}" + (f", {_count(s['cases'])}" if s.get("cases") else "")))
        lines.append(f"| {s['name']} | {s.get('seconds', 0):.0f} | {state} |")
    lines += ["", "## First-use checks (`python -m npkernels.env --check`)", "",
              "| op | device | dtype | precision | result | max error | tolerance | seconds |",
              "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {c['op']} | {c['device']} | {c['dtype']} | {c['precision']} | {'ok' if c['ok'] else 'FAILED'} | "
              f"{c['max_error']:.2e} | {c['tolerance']:.1e} | {c['seconds']:.2f} |" for c in report.get("checks", [])]
    if report["unavailable"]:
        lines += ["", "## Baselines unavailable (not counted)", ""]
        lines += [f"- `{k}`: {v}" for k, v in report["unavailable"].items()]
    lines += ["", "## Benchmarks (medians; ratio = provider / triton, so >1 means Triton is faster)", ""]
    groups: dict[str, list[dict]] = {}
    for row in report["benchmarks"]:
        groups.setdefault(row["group"], []).append(row)
    for group, rows in groups.items():
        base = next((r["median_s"] for r in rows if r["provider"] in ("triton", "npkernels-cuda")), None)
        lines += [f"### {group}", "", "| provider | median | IQR | rounds | peak CUDA memory | ratio |",
                  "|---|---|---|---|---|---|"]
        for r in sorted(rows, key=lambda r: r["median_s"]):
            ratio = f"{r['median_s'] / base:.2f}x" if base else "-"
            peak = f"{r['peak_cuda_mb']:,.0f} MiB" if r.get("peak_cuda_mb") is not None else "-"
            lines.append(f"| {r['provider']} | {_fmt_s(r['median_s'])} | {_fmt_s(r['iqr_s'])} | {r['rounds']} | "
                         f"{peak} | {ratio} |")
        lines.append("")
    pairs = [(g, g.replace("-cpu-", "-cuda-")) for g in groups if g.startswith("inside_mesh-cpu-")]
    pairs = [(c, g) for c, g in pairs if g in groups]
    if pairs:
        lines += ["### labeller: CPU (all cores) / CUDA", "", "| mesh, points | CPU | CUDA | ratio |", "|---|---|---|---|"]
        for cpu, gpu in pairs:
            a, b = groups[cpu][0]["median_s"], groups[gpu][0]["median_s"]
            lines.append(f"| {cpu.removeprefix('inside_mesh-cpu-')} | {_fmt_s(a)} | {_fmt_s(b)} | {a / b:.1f}x |")
        lines.append("")
    return "\n".join(lines) + "\n"


def _count(cases: list[dict]) -> str:
    counts: dict[str, int] = {}
    for c in cases:
        counts[c["outcome"]] = counts.get(c["outcome"], 0) + 1
    return ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, Triton's interpreter")
    parser.add_argument("--budget-s", type=float, default=None, help="whole run, install included (480; dry 300)")
    parser.add_argument("--started-at", type=float, default=None, help="epoch seconds the wrapper started")
    parser.add_argument("--commit", default="", help="commit to report when the tree has no .git")
    parser.add_argument("--install-status", default="", help="the wrapper's install step: ok | failed | skipped")
    args = parser.parse_args(argv)
    clock = Clock(args.budget_s or (300.0 if args.dry_run else 480.0), args.started_at or time.time())
    args.outdir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT),
                                                                                       os.environ.get("PYTHONPATH")])))
    if args.dry_run:
        env["TRITON_INTERPRET"] = "1"
        os.environ["TRITON_INTERPRET"] = "1"
    stages_plan = plan(args.dry_run)
    report = {"environment": environment(args), "stages": [], "checks": [], "benchmarks": [], "unavailable": {},
              "budget_s": clock.budget_s, "install_ok": args.install_status != "failed"}
    if args.install_status:
        report["environment"]["install"] = args.install_status
    py = sys.executable
    reserve = 15.0  # for the report

    # tests
    test_args, cap = stages_plan["tests"]
    xdist = [] if args.dry_run or _missing("xdist") else ["-n", str(max(1, min(12, (os.cpu_count() or 1) - 2)))]
    junit, log = tmp / "tests.xml", args.outdir / "tests.log"
    since = log.stat().st_size if log.is_file() else 0
    stage = {"name": "tests", **run_stage([py, "-m", "pytest", "-v", "-rfE", "-p", "no:cacheprovider", *xdist,
                                           f"--junitxml={junit}", *test_args], min(cap, clock.left() - reserve), log,
                                          env)}
    stage["cases"] = junit_cases(junit) or log_cases(log, since)  # killed: no XML, the log still has them
    report["stages"].append(stage)

    # first-use checks
    env_json = tmp / "env.json"
    stage = {"name": "first-use checks", **run_stage([py, "-m", "npkernels.env", "--check", "--json", str(env_json)],
                                                      min(120, clock.left() - reserve), args.outdir / "tests.log", env)}
    report["stages"].append(stage)
    if env_json.is_file():
        report["checks"] = json.loads(env_json.read_text())["checks"]

    # benchmarks
    rounds, warmup = stages_plan["rounds"]
    for i, (name, nodes, cap) in enumerate(stages_plan["bench"]):
        left = clock.left() - reserve
        if left < min(cap, 60):
            report["stages"].append({"name": f"benchmarks: {name}", "skipped": f"{left:.0f} s left of the budget"})
            continue
        bench_json, bench_junit = tmp / f"bench{i}.json", tmp / f"bench{i}.xml"
        stage = {"name": f"benchmarks: {name}", **run_stage(
            [py, "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider", "--benchmark-only",
             f"--benchmark-json={bench_json}", f"--junitxml={bench_junit}", f"--bench-rounds={rounds}",
             f"--bench-warmup={warmup}", *nodes], min(cap, left), args.outdir / "bench.log", env)}
        stage["cases"] = junit_cases(bench_junit)
        for case in stage["cases"]:
            if case["outcome"] in ("failed", "error") and provider_of(case["id"]) in BASELINES and \
                    "AssertionError" not in case["message"]:
                report["unavailable"][case["id"]] = case["message"]
        report["stages"].append(stage)
        report["benchmarks"] += benchmark_rows(bench_json)

    report["wall_s"] = time.time() - clock.started_at
    report["failures"] = verdict(report)
    (args.outdir / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str))
    (args.outdir / "gpu_check.md").write_text(markdown(report))
    print(markdown(report))
    return 1 if report["failures"] else 0


def _missing(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is None


if __name__ == "__main__":
    sys.exit(main())
