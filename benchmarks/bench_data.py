"""Data benchmarks: renderer ms per image, record preparation time and records/s, bytes per record versus
the authors' per-model layout.

    python -m pytest benchmarks/bench_data.py                        # timed (pytest-benchmark)
    python -m pytest benchmarks --benchmark-disable                  # one untimed pass (CI)
    python benchmarks/bench_data.py                                  # prints the table below

The authors' layout per D-FAUST frame / ShapeNet model (authors-implementation.md section 3):
``points.npz`` (100k float32 points + 100k unpacked float32 occupancies, np.savez), ``*_sampled_faces.npy``
(100k x 6 [xyz, normal]; float32 assumed here, trimesh's float64 would double it) and one PNG rendering.
"""

from __future__ import annotations

import importlib.util
import io
import time
from pathlib import Path

import numpy as np
import pytest

from neural_parts.data import render, storage
from neural_parts.data.process import RecordConfig, make_record, normalise, to_y_up
from neural_parts.data.readers import load_mesh
from neural_parts.geometry import unit_icosphere

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "meshes"
BOX = np.array([[-0.55] * 3, [0.55] * 3])


def human_mesh():
    """The SMPL-topology template (6,890 vertices / 13,776 faces, D-FAUST's size) when trimesh and the
    shared meshes are available, else a 20,480-face icosphere."""
    path = SHARED / "human_smpl_template_male.obj"
    if path.exists() and importlib.util.find_spec("trimesh") is not None:
        return load_mesh(path)
    return unit_icosphere(5)


def authors_bytes(record: dict, box) -> int:
    """Bytes of one record in the authors' layout (points.npz + sampled_faces.npy + PNG)."""
    from PIL import Image

    from neural_parts.data.sampling import dequantise

    pts = io.BytesIO()
    np.savez(
        pts,
        points=dequantise(record["volume_q"], box),
        occupancies=record["volume_labels"].astype(np.float32),
    )
    faces = io.BytesIO()
    np.save(
        faces, np.concatenate([record["surface_points"], record["surface_normals"]], 1).astype(np.float32)
    )
    png = io.BytesIO()
    Image.fromarray(record["images"][0]).save(png, format="PNG")
    return len(pts.getvalue()) + len(faces.getvalue()) + len(png.getvalue())


def our_bytes(record: dict, tmp: Path, copies: int = 4) -> float:
    """Bytes per record of a record file holding ``copies`` records (file overhead amortised)."""
    path = tmp / "bench.h5"
    storage.write_records(path, [record] * copies, {"box": BOX})
    return path.stat().st_size / copies


@pytest.fixture(scope="module")
def human():
    v, f = human_mesh()
    return normalise(to_y_up(v, "y"), "unit_box")[0], f


@pytest.mark.parametrize("backend", ["raster", "embree"])
def test_render_224(benchmark, human, backend):
    if backend == "embree" and not render.embree_available():
        pytest.skip("embreex is not installed")
    v, f = human
    cam = render.orbit_camera(*render.FIXED_VIEW, BOX, 224)
    image = benchmark(render.render_meshes, [(v, f, None)], cam, None, backend)
    assert image.shape == (224, 224, 3) and (image < 255).any()


def test_prepare_record(benchmark, human):
    v, f = human
    cfg = RecordConfig()
    rec = benchmark.pedantic(
        make_record,
        args=(v, f, cfg, np.random.default_rng(0)),
        kwargs=dict(name="smpl", source="bench"),
        rounds=1,
        iterations=1,
    )
    assert rec["volume_labels"].any()


def test_bytes_per_record(tmp_path, record):
    ours, theirs = our_bytes(record, tmp_path), authors_bytes(record, BOX)
    print(
        f"\nbytes/record: ours {ours / 1e6:.2f} MB, authors' layout {theirs / 1e6:.2f} MB, "
        f"ratio 1/{theirs / ours:.1f}"
    )
    assert ours < theirs / 3  # decisions 7: 1/3 to 1/5 of the authors' bytes


@pytest.fixture(scope="module")
def record(human):
    v, f = human
    return make_record(v, f, RecordConfig(), np.random.default_rng(0), name="smpl", source="bench")


@pytest.mark.parametrize("checksum", ["fletcher32", "none"])
def test_read_record(benchmark, record, tmp_path, checksum, monkeypatch):
    """One training read (all points, view 0) from a file with and without HDF5's fletcher32 checksums."""
    if checksum == "none":  # the format before checksums, for the side-by-side cost
        monkeypatch.setattr(storage, "_COMPRESS", {k: v for k, v in storage._COMPRESS.items() if k != "fletcher32"})
        monkeypatch.setattr(storage, "_CHECKED", {})
    path = tmp_path / "bench.h5"
    storage.write_records(path, [record] * 4, {"box": BOX})
    records = storage.H5Records(path)
    benchmark.group = "read-record"
    out = benchmark(records.read, 1, [0])
    assert np.array_equal(out["volume_labels"], record["volume_labels"])


@pytest.mark.parametrize("fields", ["all", "item"])
def test_read_training_item(benchmark, record, tmp_path, fields):
    """One ``NeuralPartsDataset`` read of view 0: every field, or only those a training item is made from
    (``dataset.ITEM_FIELDS``: no cameras, part ids or metadata arrays read or decoded)."""
    from neural_parts.data.dataset import ITEM_FIELDS

    path = tmp_path / "bench.h5"
    storage.write_records(path, [record] * 4, {"box": BOX})
    records = storage.H5Records(path)
    benchmark.group = "read-training-item"
    out = benchmark(records.read, 1, [0], None if fields == "all" else ITEM_FIELDS)
    assert np.array_equal(out["volume_labels"], record["volume_labels"])


def main() -> None:
    import tempfile

    from neural_parts.data import prepare_synthetic

    v, f = human_mesh()
    v = normalise(v, "unit_box")[0]
    print(f"mesh: {len(v)} vertices / {len(f)} faces; renderer 224x224, median of 20:")
    for backend in ("raster", "embree"):
        if backend == "embree" and not render.embree_available():
            continue
        cam = render.orbit_camera(*render.FIXED_VIEW, BOX, 224)
        times = []
        for _ in range(20):
            t = time.perf_counter()
            render.render_meshes([(v, f, None)], cam, backend=backend)
            times.append(time.perf_counter() - t)
        print(f"  {backend:7s} {1e3 * np.median(times):6.1f} ms/image")
    t = time.perf_counter()
    rec = make_record(v, f, RecordConfig(), np.random.default_rng(0), name="smpl", source="bench")
    print(f"one D-FAUST-size record (100k + 100k points, 1 view): {time.perf_counter() - t:.2f} s")
    with tempfile.TemporaryDirectory() as tmp:
        ours, theirs = our_bytes(rec, Path(tmp)), authors_bytes(rec, BOX)
        print(
            f"bytes/record: ours {ours / 1e6:.2f} MB vs authors' layout {theirs / 1e6:.2f} MB "
            f"(1/{theirs / ours:.1f})"
        )
        s = prepare_synthetic(Path(tmp) / "syn", n_train=32, n_val=0, n_test=0, progress=False)
        rec_bytes = s["splits"]["train"]["bytes"] / 32
        print(
            f"synthetic build, {s['records_per_s']:.2f} records/s with all cores "
            f"({s['splits']['train']['worker_seconds'] / 32:.2f} s per record per worker), "
            f"{rec_bytes / 1e6:.2f} MB/record"
        )


if __name__ == "__main__":
    main()
