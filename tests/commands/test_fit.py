"""`python -m neural_parts.fit` on a real mesh of ../shared/data/meshes."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from command_helpers import MESHES, embedded_data, run_cli, sets

from neural_parts import fit, load


SMALL_FIT = ["--n-volume", 5000, "--n-surface", 2000, "-q", *sets(
    "data.n_points_in_mesh=512", "data.n_points_on_mesh=256", "invertible_network.hidden_size=32",
    "projection_layer.proj_dims=16", "loss.n_points_on_sphere=32")]


def _fit_sphere(out, env, primitives: int, steps: int, *extra):
    """``fit`` on the shared unit sphere at a small size (skips when ../shared is absent)."""
    mesh = MESHES / "sphere.obj"
    if not mesh.is_file():
        pytest.skip(f"{mesh} is absent (the shared mesh folder is not mounted)")
    proc = run_cli("fit", mesh, "--primitives", primitives, "--steps", steps, "--output", out, *SMALL_FIT, *extra,
                   env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return mesh, proc


@pytest.mark.needs_shared
def test_fit_sphere_reports_metrics_and_exports(tmp_path, env):
    out = tmp_path / "fit"
    _, proc = _fit_sphere(out, env, 2, 3)
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 <= metrics["iou"] <= 1 and metrics["chamfer_l1"] > 0 and metrics["steps"] == 3
    assert "IoU" in proc.stdout and "Chamfer-L1" in proc.stdout
    assert "treating +Y of the mesh as up (--up y)" in proc.stderr and "pass --up" not in proc.stderr  # a sphere
    assert "primitives start on 2 mesh parts of the mesh" in proc.stderr  # fit.yaml: init parts, mesh split
    assert {p.name for p in out.iterdir()} >= {"part_000.obj", "part_001.obj", "parts.ply", "preview.png", "fit.pt",
                                               "view.html"}
    viewer = embedded_data((out / "view.html").read_text())
    assert viewer["scene"]["target"]["kind"] == "mesh" and len(viewer["scene"]["parts"]) == 2
    assert ["IoU", f"{metrics['iou']:.4g}"] in viewer["metrics"]
    model = load(out / "fit.pt")
    assert model.n_primitives == 2 and model.step == 3


@pytest.mark.needs_shared
def test_fit_with_a_weight_average_measures_and_saves_the_average(tmp_path, env):
    """training.ema_decay: metrics, parts and fit.pt's "model" are the average; fit.pt keeps the optimised
    weights as "optimised_model"."""
    out = tmp_path / "fit"
    mesh, _ = _fit_sphere(out, env, 1, 4, *sets("training.ema_decay=0.5"))
    saved = torch.load(out / "fit.pt", weights_only=True)
    assert saved["config"]["training"]["ema_decay"] == 0.5
    differs = [k for k, v in saved["model"].items()
               if v.dtype.is_floating_point and not torch.equal(v, saved["optimised_model"][k])]
    assert differs
    model = load(out / "fit.pt")  # the average
    record = fit.mesh_record(str(mesh), 5000, 2000, "y", np.random.default_rng(0))  # fit's own draws (seed 0)
    record = {k: v.astype(np.float32) if getattr(v, "dtype", None) == np.float64 else v for k, v in record.items()}
    measured = fit.measure(model, record, torch.device("cpu"), 0)
    assert measured["iou"] == pytest.approx(json.loads((out / "metrics.json").read_text())["iou"], abs=1e-6)


def test_fit_errors(tmp_path, env):
    missing = run_cli("fit", tmp_path / "none.obj", "--steps", 1, env=env)
    assert missing.returncode == 2 and "mesh not found" in missing.stderr and "Traceback" not in missing.stderr
    not_mesh = tmp_path / "x.obj"
    not_mesh.write_text("this is not a mesh\n")
    bad = run_cli("fit", not_mesh, "--steps", 1, env=env)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr, bad.stderr


def test_fit_refuses_nan_vertices_and_unwritable_output_before_training(tmp_path, env):
    mesh = tmp_path / "nan.obj"
    mesh.write_text("v 0 0 0\nv 1 0 0\nv nan 1 0\nv 0 0 1\nf 1 2 3\nf 1 3 4\nf 1 4 2\nf 2 4 3\n")
    proc = run_cli("fit", mesh, "--steps", 1, "--output", tmp_path / "o", env=env)
    assert proc.returncode == 2 and "non-finite vertex coordinates" in proc.stderr and "Traceback" not in proc.stderr
    good = tmp_path / "tet.obj"
    good.write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nv 0 0 1\nf 1 3 2\nf 1 2 4\nf 1 4 3\nf 2 3 4\n")
    blocker = tmp_path / "taken"
    blocker.write_text("a file where the output folder should go")
    proc = run_cli("fit", good, "--steps", 100000, "--output", blocker, env=env, timeout=60)
    assert proc.returncode == 2 and "exists and is not a folder" in proc.stderr
    assert "faces, inside fraction" not in proc.stderr  # refused before sampling, let alone training


def test_up_note_hints_at_the_other_axis_only_for_meshes_deeper_than_tall():
    standing_z_up = np.array([[-0.2, -0.1, -0.5], [0.2, 0.1, 0.5]])  # read as Y-up: 5x deeper than tall
    assert "pass --up z" in fit.up_note(standing_z_up, "y")
    assert "pass --up" not in fit.up_note(standing_z_up[:, [0, 2, 1]], "y")
    assert fit.up_note(standing_z_up, "z").startswith("fit: treating +Z of the mesh as up (--up z)")


def test_training_points_fill_the_tight_box_and_the_iou_points_the_cube(tmp_path):
    from neural_parts.data.process import UNIT_BOX
    from neural_parts.data.storage import MemoryRecords
    from neural_parts.geometry import icosphere

    v, f = icosphere(2000, 1.0, device="cpu", dtype=torch.float64)
    path = tmp_path / "ellipsoid.obj"
    v = v.numpy() * [1.0, 0.25, 0.25]  # a cigar: longest side along x
    path.write_text("".join(f"v {a} {b} {c}\n" for a, b, c in v) + "".join(f"f {a+1} {b+1} {c+1}\n" for a, b, c in f.numpy()))
    record = fit.mesh_record(str(path), 20_000, 2_000, "y", np.random.default_rng(0))
    lo, hi = np.asarray(record["box"])
    np.testing.assert_allclose(lo, record["vertices"].min(0) - fit.MARGIN)
    np.testing.assert_allclose(hi, record["vertices"].max(0) + fit.MARGIN)
    stored = MemoryRecords([record], record["box"]).read(0)
    assert (stored["volume_points"] >= lo - 1e-6).all() and (stored["volume_points"] <= hi + 1e-6).all()
    assert (np.abs(record["cube_points"]) <= UNIT_BOX[1][0] + 1e-6).all()
    tight, cube = record["volume_labels"].mean(), record["cube_labels"].mean()
    assert tight > 4 * cube > 0  # the same solid fills more of the tight box
    volume = 4 / 3 * np.pi * 0.5 * 0.125 * 0.125
    assert cube == pytest.approx(volume / 1.1 ** 3, rel=0.1)  # the cube's labels are the solid's volume fraction
