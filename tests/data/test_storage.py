"""Record files: round trip with stated quantisation bounds, assembly, corrupt and truncated files."""

import h5py
import numpy as np
import pytest

from neural_parts.data import storage
from neural_parts.data.sampling import QMAX, sample_volume

BOX = np.array([[-0.55] * 3, [0.55] * 3])


def _record(i, rng, n=5000, views=2):
    q, _ = sample_volume(BOX, n, rng)
    normals = rng.normal(size=(n, 3))
    return {
        "volume_q": q,
        "volume_labels": rng.random(n) < 0.3,
        "surface_points": rng.uniform(-0.5, 0.5, size=(n, 3)),
        "surface_normals": normals / np.linalg.norm(normals, axis=1, keepdims=True),
        "surface_part_ids": rng.integers(-1, 5, size=n).astype(np.int16),
        "images": rng.integers(0, 256, size=(views, 32, 32, 3), dtype=np.uint8),
        "camera_K": rng.normal(size=(views, 3, 3)),
        "camera_Rt": rng.normal(size=(views, 3, 4)),
        "name": f"rec{i}",
        "source": f"/data/rec{i}.obj",
        "category": "thing",
        "flags": ["non_watertight"] * (i % 2),
        "loc": rng.normal(size=3),
        "scale": 1.5,
        "watertight": bool(i % 2 == 0),
    }


def _check_same(rec, got):
    step = (BOX[1] - BOX[0]) / QMAX
    assert np.allclose(got["volume_points"], BOX[0] + rec["volume_q"] * step, atol=1e-6)
    assert np.array_equal(got["volume_labels"], rec["volume_labels"])  # labels exact
    # float16: |error| <= 2^-11 |x| (2.4e-4 in the unit box)
    assert (
        np.abs(got["surface_points"] - rec["surface_points"]) <= np.abs(rec["surface_points"]) * 2**-11 + 1e-7
    ).all()
    cos = np.einsum("ij,ij->i", got["surface_normals"], rec["surface_normals"])
    assert np.degrees(np.arccos(np.clip(cos, -1, 1))).max() < 0.5  # int8 normals: < 0.5 degree
    assert np.allclose(np.linalg.norm(got["surface_normals"], axis=1), 1, atol=1e-6)
    assert np.array_equal(got["surface_part_ids"], rec["surface_part_ids"])
    assert np.array_equal(got["images"], rec["images"])
    assert np.allclose(got["camera_K"], rec["camera_K"], atol=1e-6)
    assert (got["name"], got["source"], got["category"], got["flags"]) == (
        rec["name"],
        rec["source"],
        "thing",
        rec["flags"],
    )
    assert (
        np.allclose(got["loc"], rec["loc"]) and got["scale"] == 1.5 and got["watertight"] == rec["watertight"]
    )


def test_round_trip_and_assembly(tmp_path):
    rng = np.random.default_rng(0)
    recs = [_record(i, rng) for i in range(5)]
    attrs = {"box": BOX, "normalisation": "unit_box", "config_hash": "abc"}
    storage.write_records(tmp_path / "0000.h5", recs[:3], attrs)
    storage.write_records(tmp_path / "0001.h5", recs[3:], attrs)
    storage.assemble([tmp_path / "0000.h5", tmp_path / "0001.h5"], tmp_path / "train.h5", attrs)
    r = storage.H5Records(tmp_path / "train.h5")
    assert len(r) == 5 and r.n_views == 2 and r.attrs["config_hash"] == "abc" and r.attrs["n_records"] == 5
    for i, rec in enumerate(recs):
        _check_same(rec, r.read(i))
    assert np.array_equal(r.read(4, views=[1])["images"], recs[4]["images"][1:])
    assert list(r.categories()) == ["thing"] * 5
    assert not list(tmp_path.glob(".*tmp*"))  # no temp files left behind
    with pytest.raises(IndexError, match="record 5 out of range"):
        r.read(5)


def test_reading_some_fields_decodes_them_as_a_full_read_does(tmp_path):
    rng = np.random.default_rng(1)
    recs = [_record(i, rng) for i in range(2)]
    storage.write_records(tmp_path / "train.h5", recs, {"box": BOX})
    fields = ("volume_points", "volume_labels", "surface_normals", "name")
    for source in (storage.H5Records(tmp_path / "train.h5"), storage.MemoryRecords(recs, BOX)):
        full, part = source.read(1), source.read(1, views=[0], fields=fields)
        assert set(part) == set(fields) and set(full) == set(storage.FIELDS)
        for key in fields:
            np.testing.assert_array_equal(part[key], full[key])
        with pytest.raises(ValueError, match=r"unknown record fields \['colour'\]"):
            source.read(0, fields=["colour"])


def test_truncated_file_names_the_file(tmp_path):
    path = tmp_path / "train.h5"
    storage.write_records(path, [_record(0, np.random.default_rng(1))], {"box": BOX})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(storage.CorruptFileError, match=r"train\.h5.*truncated or corrupt"):
        storage.H5Records(path)


def test_corrupt_chunk_names_file_and_record(tmp_path):
    path = tmp_path / "val.h5"
    rng = np.random.default_rng(2)
    storage.write_records(path, [_record(0, rng), _record(1, rng)], {"box": BOX})
    with h5py.File(path, "r") as f:
        offset = f["volume/points"].id.get_chunk_info(1).byte_offset
    with open(path, "r+b") as fh:  # overwrite the middle of record 1's compressed volume chunk
        fh.seek(offset + 1000)
        fh.write(b"\xff" * 4000)
    r = storage.H5Records(path)
    _check_same(_record(0, np.random.default_rng(2)), r.read(0))
    with pytest.raises(
        storage.CorruptFileError, match=r"val\.h5: record 1 is unreadable \(dataset volume/points"
    ):
        r.read(1)


def test_foreign_hdf5_is_refused(tmp_path):
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(storage.CorruptFileError, match="not a neural_parts record file"):
        storage.H5Records(path)
