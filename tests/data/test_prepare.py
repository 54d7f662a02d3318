"""`python -m neural_parts.prepare` on small data: every source kind, flags and skips, idempotence."""

import csv
import json
import shutil

import h5py
import numpy as np
import pytest

from neural_parts.data import H5Records, NeuralPartsDataset, build, synthetic
from neural_parts.data.process import RecordConfig, is_watertight, make_record, normalise
from neural_parts.data.synthetic import ellipsoid
from neural_parts.prepare import main, prepare


def _load(path):
    """(vertices, faces) of a mesh file; reading .obj/.off needs trimesh."""
    pytest.importorskip("trimesh")
    from neural_parts.data.readers import load_mesh

    return load_mesh(path)


SMALL_ARGS = ["--n-volume", "4000", "--n-surface", "3000", "--image-size", "64", "--workers", "1", "-q"]


def _arrays(path):
    with h5py.File(path, "r") as f:
        out = {}
        f.visititems(lambda k, d: out.__setitem__(k, d[()]) if isinstance(d, h5py.Dataset) else None)
        return out


def test_synthetic_dataset(synthetic_dir):
    summary = json.loads((synthetic_dir / "summary.json").read_text())
    assert {s: v["records"] for s, v in summary["splits"].items()} == {"train": 6, "val": 2, "test": 2}
    assert not list(synthetic_dir.glob("*.parts"))
    train = H5Records(synthetic_dir / "train.h5")
    assert list(train.categories()) == [synthetic.category_of(i) for i in range(6)]
    assert np.allclose(train.box, [[-0.55] * 3, [0.55] * 3]) and train.attrs["normalisation"] == "unit_box"
    for i in range(len(train)):
        rec = train.read(i)
        assert rec["volume_points"].shape == (4000, 3) and rec["images"].shape == (2, 64, 64, 3)
        assert 0 < rec["inside_fraction"] < 0.5 and rec["watertight"] and rec["flags"] == []
        assert (rec["images"][0] < 255).any() and (rec["images"][0, 0, 0] == 255).all()
        assert np.abs(rec["surface_points"]).max() <= 0.5 + 1e-3  # unit_box normalised
        assert rec["surface_part_ids"].min() >= 0


def test_synthetic_surface_points_lie_outside_other_parts(synthetic_dir):
    igl = pytest.importorskip("igl")
    train = H5Records(synthetic_dir / "train.h5")
    for i in range(2):  # a humanoid and a chair
        rec = train.read(i)
        shape = synthetic.make_shape(0, "train", i)
        pts = rec["surface_points"].astype(np.float64) * rec["scale"] + rec["loc"]
        tol = 2.5e-4 * rec["scale"]  # float16 storage error (2^-11 of at most 0.5)
        for q, part in enumerate(shape.parts):
            others = rec["surface_part_ids"] != q
            d2, _, _ = igl.point_mesh_squared_distance(pts, part.vertices, part.faces)
            inside = np.abs(igl.winding_number(part.vertices, part.faces, pts[others])) > 0.5
            assert (np.sqrt(d2[others][inside]) < tol).all(), f"surface samples inside part {q}"
            assert np.sqrt(d2[~others]).max() < tol  # on their own part


def test_labels_match_an_independent_method_on_a_real_mesh(shared_meshes, small_cfg):
    igl = pytest.importorskip("igl")
    verts, faces = _load(shared_meshes / "bunny.obj")
    rec = make_record(verts, faces, small_cfg, np.random.default_rng(0), name="bunny", source="bunny.obj")
    v, _, _ = normalise(verts, "unit_box")
    from neural_parts.data.sampling import dequantise

    pts = dequantise(rec["volume_q"], np.asarray(small_cfg.box)).astype(np.float64)
    w = igl.winding_number(v, faces, pts)
    clear = np.abs(np.abs(w) - 0.5) > 1e-3
    assert rec["volume_labels"].mean() > 0.05 and clear.mean() > 0.99
    assert np.array_equal(rec["volume_labels"][clear], np.abs(w[clear]) > 0.5)


def test_second_run_is_a_no_op(synthetic_dir):
    before = {p.name: p.stat().st_mtime_ns for p in synthetic_dir.glob("*.h5")}
    from neural_parts.data import prepare_synthetic

    s = prepare_synthetic(
        synthetic_dir,
        n_train=6,
        n_val=2,
        n_test=2,
        workers=1,
        progress=False,
        n_volume=4000,
        n_surface=3000,
        image_size=64,
        n_views=2,
    )
    assert s["built_records"] == 0 and s["splits"]["train"]["state"] == "up to date"
    assert {p.name: p.stat().st_mtime_ns for p in synthetic_dir.glob("*.h5")} == before


def test_default_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("NEURAL_PARTS_DATA", str(tmp_path))
    assert build.default_data_dir("synthetic-v1") == tmp_path / "synthetic-v1"
    monkeypatch.delenv("NEURAL_PARTS_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert build.default_data_dir("x") == tmp_path / "xdg" / "neural_parts" / "x"


@pytest.mark.parametrize("policy", ["flag", "skip"])
def test_meshes_folder_flags_or_skips_open_meshes(shared_meshes, tmp_path, policy):
    pytest.importorskip("trimesh")  # reads the .obj files
    src = tmp_path / "src"
    src.mkdir()
    splits = {
        "chair_kenney_basic.obj": "train",
        "table_kenney_round.obj": "train",
        "airplane_holes_open.obj": "val",
    }
    for name in splits:
        shutil.copy(shared_meshes / name, src / name)
    (src / "broken.obj").write_text("this is not a mesh\n")
    with open(src / "splits.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([*splits.items(), ("broken.obj", "test")])
    out = tmp_path / "out"
    s = prepare(
        [
            "meshes",
            str(src),
            "--output",
            str(out),
            "--splits",
            str(src / "splits.csv"),
            "--non-watertight",
            policy,
            *SMALL_ARGS,
        ]
    )
    assert s["splits"]["test"]["records"] == 0 and not (out / "test.h5").exists()
    assert "file holds no triangles" in s["splits"]["test"]["skipped"][0]["reason"]
    if policy == "flag":
        assert s["splits"]["val"]["flagged"] == {"airplane_holes_open.obj": ["non_watertight"]}
        rec = H5Records(out / "val.h5").read(0)
        assert rec["flags"] == ["non_watertight"] and not rec["watertight"] and rec["inside_fraction"] > 0.002
    else:
        assert "not watertight" in s["splits"]["val"]["skipped"][0]["reason"]
        assert not (out / "val.h5").exists()
    train = H5Records(out / "train.h5")
    assert len(train) == 2 and train.read(0)["watertight"]
    assert not list(out.glob("*.parts"))


def test_meshes_folder_all_skipped_is_an_error(tmp_path, capsys):
    pytest.importorskip("trimesh")  # reads the .obj files
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.obj").write_text("v 0 0 0\n")
    code = main(["meshes", str(src), "--output", str(tmp_path / "out"), *SMALL_ARGS])
    assert code == 2 and "every record was skipped" in capsys.readouterr().err


def test_dfaust_from_registrations(shared_meshes, tmp_path, capsys):
    poses = sorted(shared_meshes.glob("human_anny_s1_*.obj"))
    assert len(poses) == 8
    meshes = [_load(p) for p in poses]
    reg = tmp_path / "registrations_f.hdf5"
    with h5py.File(reg, "w") as f:  # the official layout: faces (F, 3) and (V, 3, T) per subject_sequence
        f["faces"] = meshes[0][1].astype(np.int32)
        verts = np.stack([v for v, _ in meshes], axis=2).astype(np.float32)
        f["50004_run"] = verts[:, :, :5]
        f["50004_jump"] = verts[:, :, 3:]
        f["50007_punch"] = verts[:, :, ::-1][:, :, :4]
    rows = (
        [("50004_run", k, "train") for k in range(5)]
        + [("50004_jump", k, "val") for k in range(6)]
        + [("50007_punch", k, "test") for k in range(4)]
        + [("50099_missing", 3, "test")]
    )
    split_csv = tmp_path / "d-faust_splits.csv"
    with open(split_csv, "w", newline="") as fh:
        csv.writer(fh).writerows([("id", "model_id", "split"), *rows])
    out = tmp_path / "dfaust"
    s = prepare(
        [
            "dfaust",
            str(reg),
            "--splits",
            str(split_csv),
            "--drop-first",
            "2",
            "--up",
            "z",
            "--output",
            str(out),
            *SMALL_ARGS,
        ]
    )
    assert {k: v["records"] for k, v in s["splits"].items()} == {"train": 3, "val": 3, "test": 2}
    rec = H5Records(out / "val.h5").read(0)
    assert rec["name"] == "50004_jump:00002" and rec["category"] == "human"
    extent = rec["surface_points"].max(axis=0) - rec["surface_points"].min(axis=0)
    assert extent.argmax() == 1  # Z-up source stored Y-up: the body's height is along Y
    # the default drops frames 0-19: nothing left
    code = main(["dfaust", str(reg), "--splits", str(split_csv), "--output", str(tmp_path / "d2"), *SMALL_ARGS])
    assert code == 2 and "no frames >= 20" in capsys.readouterr().err


def _fake_onet(root, rng):
    """An Occupancy Networks ShapeNet folder: a sphere of radius 0.3 as every model."""
    from PIL import Image

    syn = root / "03001627"
    for k, split in enumerate(["train", "train", "val", "test"]):
        d = syn / f"model{k}"
        (d / "img_choy2016").mkdir(parents=True)
        pts = rng.uniform(-0.55, 0.55, size=(6000, 3)).astype(np.float16)
        occ = np.linalg.norm(pts.astype(np.float64), axis=1) < 0.3
        np.savez(
            d / "points.npz", points=pts, occupancies=np.packbits(occ), loc=np.zeros(3), scale=np.float32(1.0)
        )
        n = rng.normal(size=(5000, 3))
        n /= np.linalg.norm(n, axis=1, keepdims=True)
        np.savez(d / "pointcloud.npz", points=(0.3 * n).astype(np.float16), normals=n.astype(np.float16))
        cams = {}
        for v in range(3):
            Image.fromarray(rng.integers(0, 256, (137, 137, 3), dtype=np.uint8)).save(
                d / "img_choy2016" / f"{v:03d}.jpg"
            )
            cams[f"world_mat_{v}"], cams[f"camera_mat_{v}"] = np.eye(4)[:3] + v, np.eye(3) * (v + 1)
        np.savez(d / "img_choy2016" / "cameras.npz", **cams)
        with open(syn / f"{split}.lst", "a") as fh:
            fh.write(f"model{k}\n")
    (syn / "model9").mkdir()  # a watertight-mesh model: processed like any mesh
    sphere = ellipsoid([0.3] * 3, [0, 0, 0])
    lines = ["OFF", f"{len(sphere.vertices)} {len(sphere.faces)} 0"]
    lines += [" ".join(f"{x:.17g}" for x in p) for p in sphere.vertices] + [
        f"3 {a} {b} {c}" for a, b, c in sphere.faces
    ]
    (syn / "model9" / "model_watertight.off").write_text("\n".join(lines) + "\n")
    with open(syn / "test.lst", "a") as fh:
        fh.write("model9\n")


def test_shapenet_from_onet_folder(tmp_path):
    pytest.importorskip("trimesh")  # reads model9's .off
    root = tmp_path / "ShapeNet"
    _fake_onet(root, np.random.default_rng(0))
    out = tmp_path / "out"
    s = prepare(["shapenet", str(root), "--output", str(out), "--views", "2", *SMALL_ARGS])
    assert {k: v["records"] for k, v in s["splits"].items()} == {"train": 2, "val": 1, "test": 2}
    rec = H5Records(out / "train.h5").read(1)
    assert rec["name"] == "03001627:model1" and rec["images"].shape == (2, 64, 64, 3)
    r = np.linalg.norm(rec["volume_points"], axis=1)
    assert np.array_equal(rec["volume_labels"][np.abs(r - 0.3) > 1e-3], r[np.abs(r - 0.3) > 1e-3] < 0.3)
    # ONet's K maps to pixels of the 137 x 137 render: rows 0 and 1 follow the resize to 64 x 64
    assert np.allclose(rec["camera_K"][1], np.diag([2 * 64 / 137, 2 * 64 / 137, 2]), atol=1e-6)
    assert np.allclose(rec["camera_K"][0], np.diag([64 / 137, 64 / 137, 1]), atol=1e-6)
    meshed = H5Records(out / "test.h5").read(1)  # model9: labelled from its mesh
    r = np.linalg.norm(meshed["volume_points"] * meshed["scale"] + meshed["loc"], axis=1)
    clear = (r < 0.285) | (r > 0.3)  # outside the band between the inscribed polyhedron and the sphere
    assert (
        np.array_equal(meshed["volume_labels"][clear], r[clear] < 0.3)
        and meshed["volume_labels"].mean() > 0.01
    )


def test_onet_float16_points_get_the_onet_jitter(tmp_path):
    """ONet's loader adds 1e-4 Gaussian noise to float16 points (the grid of float16 values would otherwise
    show); the import and the in-place reader do too, reproducibly, and never push a point out of the box."""
    from neural_parts.data.readers import ONetShapeNet

    root = tmp_path / "ShapeNet"
    _fake_onet(root, np.random.default_rng(1))
    stored = np.load(root / "03001627" / "model0" / "points.npz")["points"].astype(np.float64)
    read = ONetShapeNet(root, "train").read(0)["volume_points"].astype(np.float64)
    noise = read - stored
    assert 0.5e-4 < noise.std() < 2e-4 and np.abs(noise).max() < 1e-3
    assert np.array_equal(read, ONetShapeNet(root, "train").read(0)["volume_points"])  # a fixed draw


def test_onet_folder_loads_in_place(tmp_path):
    from neural_parts.data.readers import ONetShapeNet

    root = tmp_path / "ShapeNet"
    _fake_onet(root, np.random.default_rng(1))
    ds = NeuralPartsDataset(
        ONetShapeNet(root, "train"), n_volume=1000, n_surface=500, image_size=64, random_view=True
    )
    item = ds[0]
    assert item["image"].shape == (3, 64, 64) and item["volume_points"].shape == (1000, 3)
    assert abs(item["volume_labels"].mean().item() - 0.5) < 0.1  # equal sampling
    assert ds.record(1)["images"].shape == (3, 137, 137, 3)


def test_reference_labeller_refuses_large_jobs(monkeypatch):
    monkeypatch.setattr(build, "labeller_status", lambda: (False, "none (test)"))
    jobs = [{"kind": "dfaust"}] * 100
    with pytest.raises(RuntimeError, match="--allow-slow-labeller"):
        build._check_labeller(jobs, RecordConfig(), allow_slow=False)
    assert build._check_labeller(jobs, RecordConfig(), allow_slow=True) == "none (test)"


def test_authors_dfaust_folder_loads_in_place(shared_meshes, tmp_path):
    pytest.importorskip("trimesh")  # frame 21 has no cached samples: its .obj is read
    from PIL import Image

    from neural_parts.data.readers import AuthorsDFaust

    seq = tmp_path / "dfaust" / "50004_run"
    for d in ("mesh_seq_2", "points_seq_2", "renderings-downsampled_2"):
        (seq / d).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for k, frame in enumerate(range(19, 22)):  # frame 19 is among the dropped first 20
        tag = f"{frame:05d}"
        shutil.copy(shared_meshes / "human_anny_s1_run01.obj", seq / "mesh_seq_2" / f"{tag}.obj")
        pts = rng.uniform(-0.5, 0.5, size=(5000, 3)).astype(np.float32)
        occ = (np.linalg.norm(pts, axis=1) < 0.3).astype(np.float32)  # the authors' unpacked floats
        np.savez(seq / "points_seq_2" / f"{tag}.npz", points=pts, occupancies=occ)
        Image.fromarray(np.full((96, 96, 3), 40 * k, np.uint8)).save(
            seq / "renderings-downsampled_2" / f"{tag}.png"
        )
    cached = np.concatenate([rng.normal(size=(3000, 3)), np.tile([0.0, 0.0, 2.0], (3000, 1))], axis=1)
    np.save(seq / "mesh_seq_2" / "00020_sampled_faces.npy", cached)
    split_csv = tmp_path / "splits.csv"
    split_csv.write_text("id,model_id,split\n" + "".join(f"50004_run,{f},train\n" for f in range(0, 22)))
    reader = AuthorsDFaust(tmp_path / "dfaust", split_csv, "train")
    assert len(reader) == 2 and reader.items == [("50004_run", 20), ("50004_run", 21)]
    cached_rec, sampled = reader.read(0), reader.read(1)
    assert np.allclose(cached_rec["surface_normals"], [0, 0, 1])  # read from the cache, normalised
    assert sampled["surface_points"].shape == (100_000, 3) and sampled["name"] == "50004_run:00021"
    assert sampled["images"].shape == (1, 96, 96, 3) and sampled["images"][0, 0, 0, 0] == 80
    item = NeuralPartsDataset(reader, n_volume=1000, n_surface=500, image_size=32)[1]
    assert item["image"].shape == (3, 32, 32) and abs(item["volume_labels"].mean().item() - 0.5) < 0.1


def test_normalisation_options_and_custom_box(shared_meshes):
    verts, faces = _load(shared_meshes / "human_anny_s1_standing01.obj")  # metres, Z up
    box = ((-0.5, -0.75, -0.5), (0.5, 1.25, 0.5))  # the 1x2x1 box for metre-scale humans
    cfg = RecordConfig(n_volume=3000, n_surface=2000, image_size=48, normalisation="none", box=box, up="z")
    rec = make_record(verts, faces, cfg, np.random.default_rng(0), name="h", source="h")
    from neural_parts.data.sampling import dequantise

    pts = dequantise(rec["volume_q"], np.asarray(box))
    assert (pts >= np.asarray(box[0]) - 1e-6).all() and (pts <= np.asarray(box[1]) + 1e-6).all()
    assert (
        rec["scale"] == 1.0
        and np.array_equal(rec["loc"], np.zeros(3))
        and rec["volume_labels"].mean() > 0.002
    )
    height = rec["surface_points"][:, 1].max() - rec["surface_points"][:, 1].min()
    assert 1.4 < height < 2.0  # metres, now along Y
    sphere = make_record(
        verts,
        faces,
        RecordConfig(n_volume=1000, n_surface=2000, image_size=48, normalisation="unit_sphere"),
        np.random.default_rng(0),
        name="h",
        source="h",
    )
    assert 0.49 < np.linalg.norm(sphere["surface_points"], axis=1).max() <= 0.5 + 3e-4  # float16
    with pytest.raises(ValueError, match="box must be"):
        RecordConfig(box=((0, 0, 0), (1, -1, 1)))


@pytest.mark.parametrize(
    "name",
    ["chair_kenney_basic.obj", "airplane_holes_open.obj", "car_kenney_race.obj", "human_anny_s1_rest.obj"],
)
def test_watertight_check_agrees_with_trimesh(shared_meshes, name):
    trimesh = pytest.importorskip("trimesh")
    v, f = _load(shared_meshes / name)
    assert is_watertight(v, f) == trimesh.Trimesh(v, f, process=True).is_watertight
