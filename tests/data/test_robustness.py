"""Bad inputs, kills and damage in the data pipeline: per-record skips, split CSVs, stale temp files, checksums,
byte-identical rebuilds, outward normals."""

import csv
import hashlib
import json
import subprocess

import h5py
import numpy as np
import pytest

from neural_parts.atomic import atomic_path, remove_stale_temps, temp_path
from neural_parts.data import H5Records, NeuralPartsDataset, storage
from neural_parts.data.process import RecordConfig, make_record
from neural_parts.data.synthetic import ellipsoid
from neural_parts.prepare import main, prepare

SMALL_ARGS = ["--n-volume", "4000", "--n-surface", "3000", "--image-size", "32", "--workers", "1", "-q"]


def _write_ply(path, vertices, faces):
    lines = ["ply", "format ascii 1.0", f"element vertex {len(vertices)}", "property float x", "property float y",
             "property float z", f"element face {len(faces)}", "property list uchar int vertex_indices",
             "end_header"]
    lines += [" ".join(map(str, v)) for v in vertices] + [f"3 {a} {b} {c}" for a, b, c in faces]
    path.write_text("\n".join(lines) + "\n")


def _sphere(radius=0.3):
    part = ellipsoid([radius] * 3, [0, 0, 0])
    return part.vertices, part.faces


def _mesh_folder(tmp_path):
    """Three good meshes and two bad ones: a .ply with face indices beyond its vertices and one with a
    negative index."""
    pytest.importorskip("trimesh")
    src = tmp_path / "src"
    src.mkdir()
    v, f = _sphere()
    for k in range(3):
        _write_ply(src / f"good{k}.ply", v * (1 + 0.1 * k), f)
    _write_ply(src / "out_of_range.ply", v, np.concatenate([f, [[0, 1, len(v) + 5]]]))
    _write_ply(src / "negative.ply", v, np.concatenate([f, [[0, -3, 2]]]))
    return src


def _splits_csv(path, rows, header=("path", "split")):
    with open(path, "w", newline="") as fh:
        csv.writer(fh).writerows([header, *rows] if header else rows)
    return path


def test_one_bad_mesh_is_skipped_with_its_file_and_the_build_goes_on(tmp_path):
    src = _mesh_folder(tmp_path)
    rows = [("good0.ply", "train"), ("good1.ply", "train"), ("out_of_range.ply", "train"),
            ("negative.ply", "train"), ("good2.ply", "val")]
    out = tmp_path / "out"
    summary = prepare(["meshes", str(src), "--output", str(out), "--splits", str(_splits_csv(tmp_path / "s.csv", rows)),
                       *SMALL_ARGS])
    assert summary["splits"]["train"]["records"] == 2 and summary["splits"]["val"]["records"] == 1
    skipped = {s["name"]: s for s in summary["splits"]["train"]["skipped"]}
    assert set(skipped) == {"out_of_range.ply", "negative.ply"}
    for name, item in skipped.items():
        assert item["file"].endswith(name) and item["reason"]
    stored = json.loads((out / "summary.json").read_text())
    assert {s["name"] for s in stored["splits"]["train"]["skipped"]} == set(skipped)
    assert prepare(["meshes", str(src), "--output", str(out), "--splits", str(tmp_path / "s.csv"),
                    *SMALL_ARGS])["built_records"] == 0  # a rerun does not fail on them again


def test_a_damaged_onet_points_file_is_skipped(tmp_path):
    from test_prepare import _fake_onet

    root = tmp_path / "ShapeNet"
    _fake_onet(root, np.random.default_rng(0))
    bad = root / "03001627" / "model1" / "points.npz"
    np.savez(bad, points=np.array([object(), None], dtype=object), occupancies=np.zeros(3))  # needs pickle
    summary = prepare(["shapenet", str(root), "--output", str(tmp_path / "out"), *SMALL_ARGS])
    train = summary["splits"]["train"]
    assert train["records"] == 1 and train["skipped"][0]["name"] == "03001627:model1"
    assert "points.npz" in train["skipped"][0]["reason"] or "pickle" in train["skipped"][0]["reason"]


@pytest.mark.parametrize("header", [("path", "split"), ("id", "split"), None])
def test_meshes_split_csv_in_the_documented_format(tmp_path, header):
    src = _mesh_folder(tmp_path)
    csv_path = _splits_csv(tmp_path / "s.csv", [("good0.ply", "train"), ("good1.ply", "test")], header)
    summary = prepare(["meshes", str(src), "--output", str(tmp_path / "out"), "--splits", str(csv_path), *SMALL_ARGS])
    assert {k: v["records"] for k, v in summary["splits"].items()} == {"train": 1, "test": 1}


def test_meshes_split_csv_errors(tmp_path, capsys):
    src = _mesh_folder(tmp_path)
    none = _splits_csv(tmp_path / "none.csv", [("nothing.obj", "train")])
    assert main(["meshes", str(src), "--output", str(tmp_path / "o"), "--splits", str(none), *SMALL_ARGS]) == 2
    assert "no mesh under" in capsys.readouterr().err
    wrong = _splits_csv(tmp_path / "wrong.csv", [("good0.ply", "train")], header=("file", "split"))
    assert main(["meshes", str(src), "--output", str(tmp_path / "o"), "--splits", str(wrong), *SMALL_ARGS]) == 2
    assert "needs a column named one of" in capsys.readouterr().err
    typo = _splits_csv(tmp_path / "typo.csv", [("good0.ply", "trian")])
    assert main(["meshes", str(src), "--output", str(tmp_path / "o"), "--splits", str(typo), *SMALL_ARGS]) == 2
    assert "unknown split names ['trian']" in capsys.readouterr().err


def _run_prepare(*args):
    return subprocess.run(["python", "-m", "neural_parts.prepare", *map(str, args)], capture_output=True, text=True,
                          check=False, timeout=300)


@pytest.mark.parametrize("bad", [["--shard-size", "0"], ["--n-volume", "0"], ["--views", "-1"], ["--shard", "3/2"]])
def test_bad_arguments_exit_2(tmp_path, bad):
    proc = _run_prepare("synthetic", "--output", tmp_path / "o", *bad)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and f"argument {bad[0]}" in proc.stderr


def test_output_that_is_a_file_or_not_writable(tmp_path, monkeypatch):
    target = tmp_path / "a_file"
    target.write_text("x")
    proc = _run_prepare("synthetic", "--output", target, "--n-train", "1", "--n-val", "0", "--n-test", "0")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "not a folder" in proc.stderr
    from pathlib import Path

    from neural_parts.atomic import check_writable

    def refuse(self, data):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "write_bytes", refuse)  # root ignores file modes: simulate a read-only folder
    with pytest.raises(PermissionError, match="is not writable"):
        check_writable(tmp_path / "ro")


def test_stale_temp_files_of_killed_builds_are_removed(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()  # a pid that no longer runs
    stale = temp_path(tmp_path / "train.h5", pid=dead.pid)
    stale.write_bytes(b"half an assembly")
    with atomic_path(tmp_path / "val.h5") as live:  # this process's own temp file is kept
        live.write_bytes(b"in progress")
        assert remove_stale_temps(tmp_path) == [stale] and live.exists() and not stale.exists()
    other_host = tmp_path / ".train.tmp-otherhost-1.h5"
    other_host.write_bytes(b"shared filesystem")
    assert remove_stale_temps(tmp_path) == [] and other_host.exists()


def test_a_build_cleans_up_after_a_kill_during_assembly(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = temp_path(out / "train.h5", pid=dead.pid)
    stale.write_bytes(b"x")
    prepare(["synthetic", "--output", str(out), "--n-train", "1", "--n-val", "0", "--n-test", "0", *SMALL_ARGS])
    assert not stale.exists() and not list(out.glob(".*tmp*"))


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_rebuilt_datasets_are_byte_identical(tmp_path):
    args = ["synthetic", "--n-train", "2", "--n-val", "1", "--n-test", "0", *SMALL_ARGS]
    prepare([*args, "--output", str(tmp_path / "a")])
    prepare([*args, "--output", str(tmp_path / "b"), "--shard-size", "64"])
    for split in ("train", "val"):
        assert _sha(tmp_path / "a" / f"{split}.h5") == _sha(tmp_path / "b" / f"{split}.h5"), split
    assert "created_utc" in json.loads((tmp_path / "a" / "summary.json").read_text())


def _small_file(tmp_path):
    rng = np.random.default_rng(0)
    v, f = _sphere()
    records = [make_record(v * (1 + 0.2 * k), f, RecordConfig(n_volume=2000, n_surface=1000, image_size=16), rng,
                           name=f"r{k}", source="sphere") for k in range(2)]
    path = tmp_path / "train.h5"
    storage.write_records(path, records, {"box": np.array([[-0.55] * 3, [0.55] * 3])})
    return path


def _read_all(path):
    r = H5Records(path)
    return [r.read(i) for i in range(len(r))]


def _same(a, b):
    return all(np.array_equal(x[k], y[k]) if isinstance(x[k], np.ndarray) else x[k] == y[k]
               for x, y in zip(a, b) for k in x)


def test_random_bit_flips_never_change_data_silently(tmp_path):
    """Every single-bit flip either raises CorruptFileError or reads back the same records (flips in unused
    bytes); before the checksums, about 1 in 400 flips changed labels silently."""
    path = _small_file(tmp_path)
    clean, data = _read_all(path), path.read_bytes()
    rng = np.random.default_rng(1)
    silent, detected = 0, 0
    for _ in range(300):
        pos, bit = int(rng.integers(len(data))), int(rng.integers(8))
        damaged = bytearray(data)
        damaged[pos] ^= 1 << bit
        path.write_bytes(bytes(damaged))
        try:
            silent += not _same(clean, _read_all(path))
        except storage.CorruptFileError:
            detected += 1
    assert silent == 0 and detected > 100


def test_damaged_attribute_header_names_the_file(tmp_path):
    path = _small_file(tmp_path)
    with h5py.File(path, "r+") as f:
        f.attrs["box"] = np.array([[-0.5] * 3, [0.55] * 3])  # changed behind the checksum's back
    with pytest.raises(storage.CorruptFileError, match=r"train\.h5: the file attributes do not match"):
        H5Records(path)


def test_wrong_shape_datasets_are_refused(tmp_path):
    path = _small_file(tmp_path)
    with h5py.File(path, "r+") as f:
        del f["surface/normals"]
        f.create_dataset("surface/normals", data=np.zeros((2, 999, 3), dtype=np.int8))
    with pytest.raises(storage.CorruptFileError, match=r"train\.h5: datasets of one record disagree"):
        H5Records(path)
    with h5py.File(path, "r+") as f:
        del f["surface/normals"]
        f.create_dataset("surface/normals", data=np.zeros((2, 1000, 3), dtype=np.float32))
    with pytest.raises(storage.CorruptFileError, match=r"dataset surface/normals has dtype float32"):
        H5Records(path)


def test_asking_for_more_surface_points_than_stored_names_the_file(tmp_path):
    path = _small_file(tmp_path)
    with pytest.raises(ValueError, match=r"train\.h5: records store 1000 surface points, fewer than the 5000"):
        NeuralPartsDataset(path, n_surface=5000)


def test_inward_facing_meshes_get_outward_normals(tmp_path):
    """The signed normal loss needs outward normals: an inside-out component is reversed and flagged."""
    v, f = _sphere()
    v2 = v * 0.5 + [0.7, 0, 0]
    verts = np.concatenate([v, v2])
    faces = np.concatenate([f, f[:, ::-1] + len(v)])  # the second sphere faces inward
    cfg = RecordConfig(n_volume=2000, n_surface=4000, image_size=16)
    rec = make_record(verts, faces, cfg, np.random.default_rng(0), name="two", source="test")
    assert "normals_flipped" in rec["flags"]
    pts = rec["surface_points"].astype(np.float64) * rec["scale"] + rec["loc"]  # back in the source frame
    centres = np.where((pts[:, 0] > 0.425)[:, None], [0.7, 0.0, 0.0], [0.0, 0.0, 0.0])  # the gap is 0.3..0.55
    assert (np.einsum("ij,ij->i", rec["surface_normals"], pts - centres) > 0).all()  # all point away from centres
    outward = make_record(verts, np.concatenate([f, f + len(v)]), cfg, np.random.default_rng(0), name="two",
                          source="test")
    assert "normals_flipped" not in outward["flags"]
