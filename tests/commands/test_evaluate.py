"""`python -m neural_parts.evaluate`: per-shape CSV, summary table, resume, shards, errors."""
from __future__ import annotations

import csv
import math

from command_helpers import run_cli

from neural_parts.evaluate import COLUMNS


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_evaluate_writes_csv_and_resumes(tmp_path, trained_run, dataset, env):
    out = tmp_path / "eval.csv"
    args = [trained_run, "--data", dataset / "test.h5", "--output", out, "--n-points", 2000]
    first = run_cli("evaluate", *args, "--limit", 2, env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    rows = _rows(out)
    assert [int(r["index"]) for r in rows] == [0, 1] and tuple(rows[0]) == COLUMNS
    for r in rows:
        assert 0 <= float(r["iou"]) <= 1 and 0 <= float(r["fscore"]) <= 1
        assert 0 < float(r["chamfer_l1"]) < 2 and 0 <= float(r["normal_consistency"]) <= 1
        assert math.isclose(float(r["chamfer_l1"]), 0.5 * (float(r["accuracy"]) + float(r["completeness"])),
                            rel_tol=1e-4)
    assert "Occupancy Networks protocol" in first.stdout and "x10 (ONet tables)" in first.stdout
    assert "units" in first.stdout
    second = run_cli("evaluate", *args, env=env)  # all 3 test shapes: the first two are skipped
    assert second.returncode == 0, second.stderr[-3000:]
    assert "2 already in" in second.stderr and "evaluated 1 shapes" in second.stderr
    rows2 = _rows(out)
    assert [int(r["index"]) for r in rows2] == [0, 1, 2] and rows2[:2] == rows


def test_evaluate_authors_protocol_and_shards(tmp_path, trained_run, dataset, env):
    rows = {}
    for shard in ("0/2", "1/2"):
        proc = run_cli("evaluate", trained_run / "last.pt", "--data", dataset / "test.h5", "--protocol", "authors",
                       "--shard", shard, "--output", tmp_path / f"s{shard[0]}.csv", env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "authors' protocol" in proc.stdout
        rows[shard] = [int(r["index"]) for r in _rows(tmp_path / f"s{shard[0]}.csv")]
    assert rows == {"0/2": [0, 2], "1/2": [1]}


def test_evaluate_errors(tmp_path, trained_run, dataset, env):
    missing = run_cli("evaluate", tmp_path / "nope.pt", "--data", dataset / "test.h5", env=env)
    assert missing.returncode == 2 and "checkpoint not found" in missing.stderr
    empty = tmp_path / "empty_run"
    empty.mkdir()
    no_ckpt = run_cli("evaluate", empty, "--data", dataset / "test.h5", env=env)
    assert no_ckpt.returncode == 2 and "no best.pt or last.pt" in no_ckpt.stderr
    bad_shard = run_cli("evaluate", trained_run, "--data", dataset / "test.h5", "--shard", "3/2", env=env)
    assert bad_shard.returncode == 2 and "--shard" in bad_shard.stderr
    for proc in (missing, no_ckpt, bad_shard):
        assert "Traceback" not in proc.stderr


def test_a_torn_csv_line_is_dropped_and_rows_are_appended(tmp_path):
    from neural_parts import evaluate

    path = tmp_path / "e.csv"
    rows = [{c: (str(i) if c == "index" else "0.5") for c in evaluate.COLUMNS} for i in range(3)]
    evaluate.write_rows(path, rows[:2])
    evaluate.append_row(path, rows[2])
    assert [r["index"] for r in evaluate.read_rows(path)] == ["0", "1", "2"]
    path.write_text(path.read_text() + "3,shape_3,hum")  # a kill in the middle of an append
    assert [r["index"] for r in evaluate.read_rows(path)] == ["0", "1", "2"]


def test_evaluate_the_constant_shape_baseline(tmp_path, dataset, env):
    out = tmp_path / "floor.csv"
    proc = run_cli("evaluate", "--baseline", "constant", "--data", dataset / "test.h5", "--output", out,
                   "--n-points", 2000, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "the constant shape on" in proc.stderr
    rows = _rows(out)
    assert len(rows) == 3 and all(0 <= float(r["iou"]) <= 1 and float(r["chamfer_l1"]) > 0 for r in rows)
    both = run_cli("evaluate", dataset, "--baseline", "constant", "--data", dataset / "test.h5", env=env)
    assert both.returncode == 2 and "not both" in both.stderr
