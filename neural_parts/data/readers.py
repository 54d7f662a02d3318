"""Readers of existing layouts: mesh files, D-FAUST registrations, Occupancy Networks ShapeNet folders and
the Neural Parts authors' D-FAUST folders.

``ONetShapeNet`` and ``AuthorsDFaust`` can be passed to ``NeuralPartsDataset`` directly (no conversion);
their ``read(i, views, fields)`` returns the same keys as ``storage.H5Records.read`` (every field: they load
whole files anyway, so ``fields``, which lets record files skip arrays, only bounds what the caller uses).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from .process import RecordConfig, SkipRecord, label_flags
from .sampling import morton_order, quantise

MESH_SUFFIXES = (".obj", ".ply", ".off", ".glb", ".gltf", ".stl")
_NO_CAMERA = np.full((3, 3), np.nan, dtype=np.float32), np.full((3, 4), np.nan, dtype=np.float32)


def load_mesh(path) -> tuple:
    """Vertices (V, 3) float64 and triangles (F, 3) int64 of a mesh file (scenes are flattened)."""
    import trimesh

    try:
        mesh = trimesh.load(str(path), force="mesh", process=False)
    except Exception as e:  # trimesh raises many types for unreadable files
        raise SkipRecord(f"cannot read mesh: {type(e).__name__}: {e}") from e
    if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0:
        raise SkipRecord("file holds no triangles")
    return np.asarray(mesh.vertices, dtype=np.float64), np.asarray(mesh.faces, dtype=np.int64)


def dfaust_frame(path, sequence: str, frame: int) -> tuple:
    """Vertices (V, 3) and faces (F, 3) of one frame of a D-FAUST ``registrations_{m,f}.hdf5``.

    The file holds ``faces`` (F, 3) and one dataset (V, 3, T) per ``<subject>_<sequence>``; the frame id is
    the index along T (the authors' frame numbering is assumed to be this time index: unverified).
    """
    import h5py

    with h5py.File(path, "r") as f:
        if sequence not in f:
            raise SkipRecord(f"sequence {sequence} not in {path}")
        data = f[sequence]
        if frame >= data.shape[2]:
            raise SkipRecord(f"frame {frame} beyond the {data.shape[2]} frames of {sequence}")
        return np.asarray(data[:, :, frame], dtype=np.float64), np.asarray(f["faces"][:], dtype=np.int64)


def dfaust_sequences(path) -> dict:
    """``{sequence: n_frames}`` of a registrations file."""
    import h5py

    with h5py.File(path, "r") as f:
        return {k: int(f[k].shape[2]) for k in f if k != "faces"}


def read_split_csv(path) -> list:
    """Rows of a split CSV as dicts (the authors' d-faust_splits.csv: id,model_id,split; ShapeNet's all.csv:
    id,synsetId,subSynsetId,modelId,split; meshes: path,split; without a header: first column tag,
    second column split)."""
    try:
        with open(path, newline="") as fh:
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"split file {path}: cannot read ({getattr(e, 'strerror', None) or e})") from None
    if not rows:
        raise ValueError(f"{path}: empty split file")
    header = [h.strip() for h in rows[0]]
    if "split" in header:
        return [dict(zip(header, (c.strip() for c in r), strict=False)) for r in rows[1:] if r]
    return [{"id": r[0].strip(), "split": r[1].strip()} for r in rows if r]


def _images(paths, size: int | None) -> np.ndarray:
    from PIL import Image

    out = []
    for p in paths:
        with Image.open(p) as im:
            im = im.convert("RGBA")
            white = Image.new("RGBA", im.size, (255, 255, 255, 255))
            im = Image.alpha_composite(white, im).convert("RGB")
            if size is not None and im.size != (size, size):
                im = im.resize((size, size), Image.BILINEAR)
            out.append(np.asarray(im, dtype=np.uint8))
    return np.stack(out)


def _occupancies(npz, n: int) -> np.ndarray:
    occ = np.asarray(npz["occupancies"])
    if occ.dtype == np.uint8 and occ.size == (n + 7) // 8 and n > 8:
        return np.unpackbits(occ, count=n).astype(bool)  # ONet: bit-packed
    return occ.reshape(-1)[:n] > 0.5  # the authors' files: unpacked floats


def _onet_views(model_dir: Path, n_views: int | None, size: int | None = None):
    """Image files and cameras of the first ``n_views`` views (all if None) of an ONet model folder.

    ONet's ``camera_mat`` maps to pixels of the image as rendered (137 x 137 for Choy2016); with ``size``
    (the images are resized to size x size) K's first two rows are scaled by size / original size.
    """
    from PIL import Image

    img_dir = model_dir / "img_choy2016"
    files = sorted(p for p in img_dir.glob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not files:
        raise SkipRecord(f"no images in {img_dir}")
    idx = list(range(len(files)))[: n_views or len(files)]
    cams = np.load(img_dir / "cameras.npz") if (img_dir / "cameras.npz").exists() else None
    K = np.stack([cams[f"camera_mat_{i}"] if cams is not None else _NO_CAMERA[0] for i in idx]).astype(np.float64)
    Rt = np.stack([cams[f"world_mat_{i}"][:3] if cams is not None else _NO_CAMERA[1] for i in idx])
    if size is not None:
        for k, i in enumerate(idx):
            with Image.open(files[i]) as im:
                width, height = im.size
            K[k, 0] *= size / width
            K[k, 1] *= size / height
    return [files[i] for i in idx], K.astype(np.float32), Rt.astype(np.float32)


def _onet_points(npz, rng: np.random.Generator, box=None) -> np.ndarray:
    """ONet's volume points as float64; float16 files get ONet's 1e-4 Gaussian jitter (as their loader).
    With ``box`` (2, 3) the jitter never moves a point out of it (points already outside stay outside)."""
    raw = np.asarray(npz["points"])
    points = raw.astype(np.float64)
    if raw.dtype != np.float16:
        return points
    jittered = points + 1e-4 * rng.standard_normal(points.shape)
    return jittered if box is None else np.clip(jittered, np.minimum(points, box[0]), np.maximum(points, box[1]))


def onet_record(model_dir, cfg: RecordConfig, rng: np.random.Generator, *, name: str, category: str) -> dict:
    """Import one ONet model folder (points.npz, pointcloud.npz, img_choy2016/) as a record, keeping its
    labels (ONet's frame: unit box padded to [-0.55, 0.55]^3). Points are quantised to ``cfg.box``;
    ``rng`` draws the jitter of float16 points."""
    model_dir = Path(model_dir)
    try:
        pts = np.load(model_dir / "points.npz")
        cloud = np.load(model_dir / "pointcloud.npz")
        points = _onet_points(pts, rng, np.asarray(cfg.box))
    except (OSError, ValueError) as e:
        raise SkipRecord(f"unreadable points.npz/pointcloud.npz: {e}") from e
    if len(points) < cfg.n_volume or len(cloud["points"]) < cfg.n_surface:
        raise SkipRecord(f"fewer points than n_volume={cfg.n_volume} / n_surface={cfg.n_surface}")
    labels = _occupancies(pts, len(points))[: cfg.n_volume]
    try:
        q = quantise(points[: cfg.n_volume], np.asarray(cfg.box))
    except ValueError as e:
        raise SkipRecord(str(e)) from e
    order = morton_order(q)
    files, K, Rt = _onet_views(model_dir, cfg.n_views, cfg.image_size)
    if len(files) < cfg.n_views:
        raise SkipRecord(f"{len(files)} images, {cfg.n_views} views requested")
    return {
        "volume_q": q[order],
        "volume_labels": labels[order],
        "surface_points": np.asarray(cloud["points"][: cfg.n_surface], dtype=np.float32),
        "surface_normals": np.asarray(cloud["normals"][: cfg.n_surface], dtype=np.float32),
        "surface_part_ids": np.full(cfg.n_surface, -1, dtype=np.int16),
        "images": _images(files, cfg.image_size),
        "camera_K": K,
        "camera_Rt": Rt,
        "name": name,
        "source": str(model_dir),
        "category": category,
        "flags": label_flags(labels),
        "loc": np.asarray(pts["loc"]) if "loc" in pts else np.zeros(3),
        "scale": float(pts["scale"]) if "scale" in pts else 1.0,
        "watertight": True,  # ONet labelled watertight (mesh-fusion) meshes
    }


def _decoded(volume_points, labels, surface, normals, images, K, Rt, name, source, category, loc, scale):
    n = np.linalg.norm(normals, axis=1, keepdims=True)
    return {
        "volume_points": np.asarray(volume_points, dtype=np.float32),
        "volume_labels": labels,
        "surface_points": np.asarray(surface, dtype=np.float32),
        "surface_normals": (normals / np.maximum(n, 1e-12)).astype(np.float32),
        "surface_part_ids": np.full(len(surface), -1, dtype=np.int16),
        "images": images,
        "camera_K": K,
        "camera_Rt": Rt,
        "name": name,
        "source": source,
        "category": category,
        "flags": [],
        "loc": loc,
        "scale": scale,
        "watertight": True,
        "inside_fraction": float(labels.mean()),
    }


class ONetShapeNet:
    """An Occupancy Networks ShapeNet folder ``<root>/<synset>/<model>/`` read in place.

    Split lists: ``<root>/<synset>/<split>.lst`` (ONet), or ``split_csv`` in ShapeNet's all.csv format.
    """

    def __init__(self, root, split: str, classes=None, split_csv=None, seed: int = 0):
        self.root = Path(root)
        self.seed = seed  # float16 points get ONet's 1e-4 jitter, a fixed draw per (seed, record)
        self.models = shapenet_models(self.root, split, classes, split_csv)
        if not self.models:
            raise FileNotFoundError(f"{self.root}: no {split} models found (looked for <synset>/{split}.lst)")

    def __len__(self) -> int:
        return len(self.models)

    def read(self, i: int, views=None, fields=None) -> dict:
        synset, model = self.models[i]
        d = self.root / synset / model
        pts, cloud = np.load(d / "points.npz"), np.load(d / "pointcloud.npz")
        files, K, Rt = _onet_views(d, None)
        sel = list(range(len(files))) if views is None else list(views)
        return _decoded(
            _onet_points(pts, np.random.default_rng([self.seed, i])),
            _occupancies(pts, len(pts["points"])),
            cloud["points"],
            cloud["normals"],
            _images([files[v] for v in sel], None),
            K[sel],
            Rt[sel],
            f"{synset}:{model}",
            str(d),
            synset,
            np.asarray(pts.get("loc", np.zeros(3))),
            float(pts.get("scale", 1.0)),
        )


def shapenet_models(root: Path, split: str, classes=None, split_csv=None) -> list:
    """Sorted ``(synset, model)`` pairs of ``split`` that exist under ``root``."""
    root = Path(root)
    synsets = sorted(p.name for p in root.iterdir() if p.is_dir() and (classes is None or p.name in classes))
    if split_csv is not None:
        rows = read_split_csv(split_csv)
        pairs = [
            (r["synsetId"], r["modelId"]) for r in rows if r["split"] == split and r["synsetId"] in synsets
        ]
    else:
        pairs = []
        for s in synsets:
            lst = root / s / f"{split}.lst"
            if lst.exists():
                pairs += [(s, m.strip()) for m in lst.read_text().split() if m.strip()]
    return sorted(p for p in pairs if (root / p[0] / p[1]).is_dir())


class AuthorsDFaust:
    """The Neural Parts authors' D-FAUST folders read in place:
    ``<root>/<subject>_<seq>/{mesh_seq_2/<frame>.obj, points_seq_2/<frame>.npz,
    renderings-downsampled_2/<frame>.png}``; the first ``drop_first`` frames of each sequence are skipped."""

    def __init__(self, root, split_csv, split: str, drop_first: int = 20, seed: int = 0):
        self.root = Path(root)
        self.seed = seed
        self.items = []
        for row in read_split_csv(split_csv):
            if row["split"] != split or int(row["model_id"]) < drop_first:
                continue
            d = self.root / row["id"]
            if (d / "points_seq_2" / f"{int(row['model_id']):05d}.npz").exists():
                self.items.append((row["id"], int(row["model_id"])))
        if not self.items:
            raise FileNotFoundError(f"{self.root}: no {split} frames with points_seq_2/<frame>.npz found")

    def __len__(self) -> int:
        return len(self.items)

    def read(self, i: int, views=None, fields=None) -> dict:
        from .sampling import sample_surface

        seq, frame = self.items[i]
        d, tag = self.root / seq, f"{frame:05d}"
        pts = np.load(d / "points_seq_2" / f"{tag}.npz")
        cached = d / "mesh_seq_2" / f"{tag}_sampled_faces.npy"
        if cached.exists():
            surf = np.load(cached)
        else:
            v, f = load_mesh(d / "mesh_seq_2" / f"{tag}.obj")
            p, n, _ = sample_surface(v, f, 100_000, np.random.default_rng([self.seed, i]))
            surf = np.concatenate([p, n], axis=1)
        images = _images([d / "renderings-downsampled_2" / f"{tag}.png"], None)
        return _decoded(
            pts["points"],
            _occupancies(pts, len(pts["points"])),
            surf[:, :3],
            surf[:, 3:],
            images,
            _NO_CAMERA[0][None],
            _NO_CAMERA[1][None],
            f"{seq}:{tag}",
            str(d),
            "human",
            np.zeros(3),
            1.0,
        )
