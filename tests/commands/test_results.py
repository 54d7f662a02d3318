"""Looking at results without a browser: the viewer's embedded data, GLB scenes, the reports' plots and tables
against metrics.jsonl and the evaluation CSV. (tests/commands/test_browser.py opens the same pages in Chromium.)"""
from __future__ import annotations

import base64
import csv
import html
import json
import re

import numpy as np
import pytest
import torch
import trimesh
from command_helpers import ellipsoid_parts, embedded_data, run_cli

from neural_parts.data.render import distinct_colours
from neural_parts.export import export_parts, srgb_to_linear
from neural_parts.report import read_metrics, seconds_per_step, thin
from neural_parts.viewer import MAX_TARGET_POINTS, scene_data, write_viewer


def tiny_primitives(n_primitives=3, seed=0):
    from neural_parts.config import load_config
    from neural_parts.models import NeuralParts

    torch.manual_seed(seed)
    cfg = load_config("fit", [f"network.n_primitives={n_primitives}", "invertible_network.hidden_size=16",
                              "projection_layer.proj_dims=8", "feature_extractor.feature_size=8"])
    model = NeuralParts.from_config(cfg, n_shapes=1).eval()
    with torch.no_grad():
        return model.predict(torch.zeros(1, dtype=torch.long))


def decode(b64, dtype):
    return np.frombuffer(base64.b64decode(b64), dtype=np.dtype(dtype).newbyteorder("<"))


def test_viewer_data_round_trips_quantised_and_shares_index_buffers(tmp_path):
    parts = ellipsoid_parts(5)
    rng = np.random.default_rng(0)
    points = rng.normal(size=(MAX_TARGET_POINTS + 500, 3))
    normals = points / np.linalg.norm(points, axis=1, keepdims=True)
    image = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    path = write_viewer(tmp_path / "view.html", parts, image=image, target={"points": 0.3 * normals, "normals": normals},
                        metrics={"IoU": 0.123456, "note": "<b>x</b>"}, title="a <title>")
    page = path.read_text()
    assert "<title>a &lt;title&gt;</title>" in page and "<script src" not in page and "http" not in page
    data = embedded_data(page)
    scene = data["scene"]
    lo, hi = np.array(scene["box"])
    assert len(scene["indices"]) == 1 and all(p["indices"] == 0 for p in scene["parts"])  # one icosphere
    assert [p["colour"] for p in scene["parts"]] == distinct_colours(5).tolist()
    for (v, f), entry in zip(parts, scene["parts"]):
        q = decode(entry["positions"], np.uint16).reshape(-1, 3)
        assert np.abs(lo + q / 65535 * (hi - lo) - v).max() <= 0.51 * (hi - lo).max() / 65535
        assert entry["index_type"] == "uint16"
        assert np.array_equal(decode(scene["indices"][0], np.uint16).reshape(-1, 3), f)
    target = scene["target"]
    assert target["kind"] == "points" and target["n_points"] == MAX_TARGET_POINTS
    n = decode(target["normals"], np.int8).reshape(-1, 3) / 127
    assert np.allclose(np.linalg.norm(n, axis=1), 1, atol=0.02)
    assert data["metrics"] == [["IoU", "0.1235"], ["note", "<b>x</b>"]]  # text, set with textContent
    assert data["image"].startswith("data:image/png;base64,")
    # 5 primitives of 10,242 vertices, a 64 px image and 20k target points: well under 2 MB
    assert path.stat().st_size < 1_000_000


def test_viewer_uint32_indices_and_mesh_target():
    big = trimesh.creation.icosphere(7)  # 163,842 vertices: more than uint16 can index
    scene = scene_data([(big.vertices, big.faces)], target={"vertices": big.vertices * 1.1, "faces": big.faces})
    assert scene["parts"][0]["index_type"] == "uint32" and scene["target"]["kind"] == "mesh"
    assert scene["target"]["indices"] == scene["parts"][0]["indices"] and len(scene["indices"]) == 1
    assert np.array_equal(decode(scene["indices"][0], np.uint32).reshape(-1, 3), big.faces)


@pytest.mark.parametrize("parts, kwargs, message", [
    ([(np.zeros((3, 2)), [[0, 1, 2]])], {}, "vertices (V, 3)"),
    ([(np.zeros((3, 3)), [[0, 1, 3]])], {}, "outside [0, 3)"),
    ([(np.full((3, 3), np.nan), [[0, 1, 2]])], {}, "non-finite"),
    ([(np.zeros((3, 3)), [[0, 1, 2]])], {"colours": [[1, 2, 3], [4, 5, 6]]}, "colours must be (1, 3)"),
    ([(np.zeros((3, 3)), [[0, 1, 2]])], {"target": {"normals": np.zeros((1, 3))}}, "target must have"),
])
def test_viewer_rejects_bad_input(parts, kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        scene_data(parts, **kwargs)


def test_glb_has_one_named_coloured_node_per_primitive(tmp_path):
    prims = tiny_primitives(3)
    written = export_parts(prims, tmp_path, min_vertices=600, coloured="glb")
    assert written[-1] == tmp_path / "parts.glb"
    scene = trimesh.load(tmp_path / "parts.glb", process=False)
    assert isinstance(scene, trimesh.Scene)
    nodes = sorted(scene.graph.nodes_geometry)
    assert nodes == ["part_000", "part_001", "part_002"]
    expected = np.rint(255 * srgb_to_linear(distinct_colours(3))).astype(int)
    for k, node in enumerate(nodes):
        _, geometry = scene.graph[node]
        mesh = scene.geometry[geometry]
        part = trimesh.load(tmp_path / f"part_{k:03d}.obj", process=False)
        assert len(mesh.vertices) == len(part.vertices) == 642 and len(mesh.faces) == len(part.faces)
        assert np.allclose(mesh.vertices, part.vertices, atol=1e-6)
        material = mesh.visual.material
        assert material.name == node and np.abs(material.baseColorFactor[:3].astype(int) - expected[k]).max() <= 1
    with open(tmp_path / "parts.glb", "rb") as f:  # the glTF JSON chunk: named nodes, normals included
        head = f.read(20)
        gltf = json.loads(f.read(int.from_bytes(head[12:16], "little")))
    assert [n["name"] for n in gltf["nodes"] if "mesh" in n] == ["part_000", "part_001", "part_002"]
    assert all("NORMAL" in m["primitives"][0]["attributes"] for m in gltf["meshes"])


def test_srgb_to_linear_matches_the_standard():
    assert np.allclose(srgb_to_linear([0, 255, 10]), [0.0, 1.0, 10 / 255 / 12.92])
    assert abs(srgb_to_linear([128])[0] - 0.21586) < 1e-4


def svg_plots(page: str) -> dict[str, str]:
    """aria-label -> svg text of every plot in a report."""
    return {html.unescape(m.group(1)): m.group(0) for m in
            re.finditer(r'<svg class="np-plot[^"]*"[^>]*aria-label="([^"]*)".*?</svg>', page, re.DOTALL)}


def drawn_series(svg: str) -> dict[str, np.ndarray]:
    """name -> (n, 2) data coordinates recovered from a plot's drawn path (inverting its axis mapping)."""
    def attr(name):
        return [float(v) for v in re.search(f'{name}="([^"]*)"', svg).group(1).split()]

    left, top, right, bottom = attr("data-box")
    x0, x1 = attr("data-x")
    y0, y1 = attr("data-y")
    log_y = re.search(r'data-log-y="1"', svg) is not None
    out = {}
    for m in re.finditer(r'<path class="np-series" data-name="([^"]*)" d="([^"]*)"', svg):
        xy = np.array([[float(a) for a in p.split(",")] for p in re.findall(r"[ML]([-\d.]+,[-\d.]+)", m.group(2))])
        x = x0 + (xy[:, 0] - left) / (right - left) * (x1 - x0)
        y = y0 + (bottom - xy[:, 1]) / (bottom - top) * (y1 - y0)
        out[html.unescape(m.group(1))] = np.stack([x, 10 ** y if log_y else y], axis=1)
    return out


def check_series(drawn: np.ndarray, steps, values, svg: str):
    """The drawn points equal (steps, values) to within the plot's 0.01-pixel rounding."""
    y0, y1 = (float(v) for v in re.search('data-y="([^"]*)"', svg).group(1).split())
    assert len(drawn) == len(steps)
    assert np.allclose(drawn[:, 0], steps, atol=1e-3 * max(1, max(steps) - min(steps)))
    if re.search(r'data-log-y="1"', svg):
        assert np.allclose(np.log10(drawn[:, 1]), np.log10(values), atol=1e-3 * (y1 - y0))
    else:
        assert np.allclose(drawn[:, 1], values, atol=1e-3 * (y1 - y0))


def test_train_writes_a_report_whose_plots_are_the_logged_values(trained_run):
    page = (trained_run / "report.html").read_text()
    rows = read_metrics(trained_run / "metrics.jsonl")
    train = [r for r in rows if r["split"] == "train"]
    val = [r for r in rows if r["split"] == "val"]
    plots = svg_plots(page)
    assert {"IoU", "loss", "chamfer loss", "occupancy loss", "normal loss", "coverage loss", "overlap loss",
            "gradient norm (before clipping)", "wall clock per step (validation included)"} <= set(plots)
    iou = drawn_series(plots["IoU"])
    check_series(iou["train"], [r["step"] for r in train], [r["iou"] for r in train], plots["IoU"])
    check_series(iou["validation"], [r["step"] for r in val], [r["iou"] for r in val], plots["IoU"])
    floor = next(r["iou"] for r in rows if r["split"] == "floor")
    assert abs(float(re.search(r'data-name="constant-shape floor" data-value="([^"]*)"', plots["IoU"]).group(1))
               - floor) < 1e-6
    for term in ("chamfer", "occupancy", "normal", "coverage", "overlap"):
        svg = plots[f"{term} loss"]
        check_series(drawn_series(svg)["train"], [r["step"] for r in train], [r[term] for r in train], svg)
    check_series(drawn_series(plots["loss"])["train"], [r["step"] for r in train], [r["total"] for r in train],
                 plots["loss"])
    steps, seconds = seconds_per_step(train)
    svg = plots["wall clock per step (validation included)"]
    check_series(drawn_series(svg)["s/step"], steps, seconds, svg)
    latest = [float(v) for v in re.findall(r'class="np-bar"[^>]*data-value="([^"]*)"', page)]
    assert np.allclose(latest, val[-1]["iou_per_shape"], atol=1e-6)
    previews = sorted(p.name for p in (trained_run / "previews").glob("step_*.png"))
    frames = json.loads(html.unescape(re.search(r'class="np-previews" data-frames="([^"]*)"', page).group(1)))
    assert [f["src"] for f in frames] == [f"previews/{p}" for p in previews]
    assert [f["iou"] for f in frames] == [r["iou"] for r in val]
    assert 'src="views/val_0.html"' in page and (trained_run / "views" / "val_0.html").is_file()


def test_report_command_and_errors(tmp_path, trained_run, env, capsys):
    import shutil

    from neural_parts.report import main

    run = tmp_path / "copy"  # the metrics and previews of a run, without its checkpoints
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("*.pt", "views", "report.html"))
    proc = run_cli("report", run, "--shapes", 0, env=env)
    assert proc.returncode == 0 and "wrote" in proc.stdout, proc.stderr[-3000:]
    page = (run / "report.html").read_text()
    assert "viewers not requested" in page and len(svg_plots(page)) >= 9
    assert main([str(run)]) == 0 and "no best.pt yet" in (run / "report.html").read_text()
    empty = tmp_path / "empty"
    empty.mkdir()
    for args, message in (([tmp_path / "nope"], "run folder not found"), ([empty], "no metrics.jsonl"),
                          ([trained_run, "--shapes", -1], "--shapes must be >= 0")):
        capsys.readouterr()
        assert main([str(a) for a in args]) == 2
        err = capsys.readouterr().err
        assert err.startswith("report: error:") and message in err and "Traceback" not in err, err


def test_run_viewers_are_reused_until_best_pt_changes(tmp_path, trained_run):
    import os
    import shutil

    from neural_parts.report import write_run_report

    run = tmp_path / "copy"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("step_*.pt", "last.pt", "views"))
    write_run_report(run, shapes=1)
    viewer = run / "views" / "val_0.html"
    first = viewer.stat().st_mtime_ns
    index = json.loads((run / "views" / "index.json").read_text())
    assert index["viewers"] == [["views/val_0.html", index["viewers"][0][1]]] and index["requested"] == 1
    write_run_report(run, shapes=1)
    assert viewer.stat().st_mtime_ns == first  # best.pt unchanged: not rebuilt
    stat = (run / "best.pt").stat()
    os.utime(run / "best.pt", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    write_run_report(run, shapes=1)
    assert viewer.stat().st_mtime_ns != first
    assert 'src="views/val_0.html"' in (run / "report.html").read_text()


def test_run_report_says_why_it_has_no_viewers(tmp_path, trained_run):
    import shutil

    from neural_parts.report import write_run_report

    run = tmp_path / "moved"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("*.pt", "views"))
    best = torch.load(trained_run / "best.pt", weights_only=True)
    best["config"]["data"]["dataset"] = str(tmp_path / "elsewhere")  # the records are not on this machine
    torch.save(best, run / "best.pt")
    page = write_run_report(run, shapes=2).read_text()
    assert f"the validation records of data.dataset={tmp_path / 'elsewhere'} are not on this machine" in page
    assert not (run / "views").exists()


def test_read_metrics_drops_a_torn_last_line_and_names_a_bad_one(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"split": "train", "step": 1}\n{"split": "tr')
    assert read_metrics(path) == [{"split": "train", "step": 1}]
    path.write_text('{"split": "train", "step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(ValueError, match="metrics.jsonl: line 2 is not JSON"):
        read_metrics(path)


def test_thin_averages_consecutive_points():
    x, y, k = thin(list(range(10)), [float(v) for v in range(10)], max_points=4)
    assert k == 3 and x == [1.0, 4.0, 7.0, 9.0] and y == [1.0, 4.0, 7.0, 9.0]
    assert thin([1, 2], [3, 4], max_points=4) == ([1, 2], [3, 4], 1)


def test_training_report_never_raises(tmp_path, caplog):
    from neural_parts.report import training_report

    with caplog.at_level("WARNING", logger="neural_parts"):
        training_report(tmp_path)  # no metrics.jsonl: logged, not raised
    assert "report.html not updated: FileNotFoundError" in caplog.text


def _csv_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_evaluate_writes_a_report_and_viewers(evaluation):
    out, proc = evaluation
    rows = _csv_rows(out)
    page = out.with_suffix(".html").read_text()
    assert f"report: {out.with_suffix('.html')}" in proc.stdout
    assert sorted(p.name for p in (out.parent / "eval-views").iterdir()) == ["0.html", "1.html"]
    cells = re.findall(r'<table id="np-shapes".*?</table>', page, re.DOTALL)[0]
    body = re.findall(r"<tr>(.*?)</tr>", cells.split("<tbody>")[1])
    assert len(body) == len(rows) == 3
    for tr, row in zip(body, rows):
        sort_values = re.findall(r'data-sort="([^"]*)"', tr)
        assert float(sort_values[0]) == int(row["index"]) and abs(float(sort_values[1]) - float(row["iou"])) < 1e-6
    assert page.count('>view</a>') == 2 and 'href="eval-views/0.html"' in page
    assert page.count('class="np-shot"') == 3  # best 1-3 and worst (the 3 shapes once each)
    viewer = embedded_data((out.parent / "eval-views" / "0.html").read_text())
    assert viewer["metrics"][0] == ["IoU", f"{float(rows[0]['iou']):.4g}"]
    assert viewer["scene"]["target"]["kind"] == "points" and len(viewer["scene"]["parts"]) == 2


def test_evaluate_views_need_a_model(tmp_path, dataset, env):
    proc = run_cli("evaluate", "--baseline", "constant", "--data", dataset / "test.h5", "--views", 1, env=env)
    assert proc.returncode == 2 and "--views" in proc.stderr and "Traceback" not in proc.stderr
