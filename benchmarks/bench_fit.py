"""The default ``python -m neural_parts.fit`` of one development human: the current defaults (configs/fit.yaml)
side by side with the previous ones (4 couplings of width 128, 1,024 volume points per step, 600 steps), each
arm with its own defaults' steps, so that a regression in IoU or seconds shows in one run.

Each arm records IoU, Chamfer-L1 and the fit's training seconds in ``extra_info``. Sizes: "smoke" (the
shared sphere, 3 steps, tiny point counts: the CI check that both arms run) and "human" (a 27k-face Anny
human, the default's steps and point counts; CPU machines with timing on, about 2 x 2.5 minutes).
Needs ``../shared/data/meshes`` (skips with the reason when it is absent).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from np_bench import size

from neural_parts import fit
from neural_parts.config import load_config

MESHES = Path(__file__).resolve().parents[2] / "shared" / "data" / "meshes"
PREVIOUS = ["invertible_network.n_blocks=4", "invertible_network.hidden_size=128", "data.n_points_in_mesh=1024",
            "training.max_steps=600"]
# ^ configs/fit.yaml of 2026-12-03's fourth pass; the earlier defaults (spectral parts, one lr, init gain 4; before
# them k-means parts, paper widths, spheres at the origin, euclidean volume terms, lr 1e-3) and their numbers are
# in benchmarks/RESULTS.md ("fit")
TINY = ["data.n_points_in_mesh=256", "data.n_points_on_mesh=128", "invertible_network.hidden_size=32",
        "projection_layer.proj_dims=16", "loss.n_points_on_sphere=32"]
SIZES = [
    size("smoke", mesh="sphere.obj", steps=3, n_points=5000, sets=TINY),
    size("human", cpu_timing=True, mesh="human_anny_s1_standing01.obj", steps=None, n_points=100_000, sets=[]),
]


@pytest.mark.parametrize("arm", ["current", "previous"])
@pytest.mark.parametrize("d", SIZES)
def test_fit(benchmark, tmp_path, d, arm):
    mesh = MESHES / d["mesh"]
    if not mesh.is_file():
        pytest.skip(f"{mesh} is absent (the shared mesh folder is not mounted)")
    sets = (PREVIOUS if arm == "previous" else []) + d["sets"]
    steps = d["steps"] or load_config("fit", sets).training.max_steps
    args = [str(mesh), "--primitives", "5", "--steps", str(steps), "--output", str(tmp_path / "fit"), "-q",
            "--up", "z" if "anny" in d["mesh"] else "y", "--n-volume", str(d["n_points"]),
            "--n-surface", str(d["n_points"]), *[a for s in sets for a in ("--set", s)]]
    benchmark.group = f"fit-{d['name']}"
    code = benchmark.pedantic(fit.main, args=(args,), rounds=1, iterations=1)
    assert code == 0
    result = json.loads((tmp_path / "fit" / "metrics.json").read_text())
    assert 0 <= result["iou"] <= 1 and result["steps"] == steps
    benchmark.extra_info.update(arm=arm, mesh=d["mesh"], **{k: result[k] for k in (
        "iou", "chamfer_l1", "normal_consistency", "fscore", "train_seconds")})
