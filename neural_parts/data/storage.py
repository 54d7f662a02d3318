"""HDF5 record files: one file per split, one chunk per record and array (O(1) random access).

Layout of ``<split>.h5`` (R records, Nv volume points, Ns surface points, V views of H x W):

    volume/points     (R, Nv, 3)   uint16   grid steps of the box attribute: x = lo + q (hi - lo) / 65535
    volume/labels     (R, ceil(Nv/8)) uint8 occupancy bit-packed (np.packbits, big bit order)
    surface/points    (R, Ns, 3)   float16  abs. error <= 2^-11 |x| (<= 2.4e-4 in the unit box)
    surface/normals   (R, Ns, 3)   int8     round(127 n); decoded n / |n| (angle error < 0.5 degree)
    surface/part_ids  (R, Ns)      int16    part of each surface sample (-1: the source has no parts)
    images            (R, V, H, W, 3) uint8 RGB, white background
    cameras/K, cameras/Rt (R, V, 3, 3), (R, V, 3, 4) float32 (convention in attribute camera_convention)
    meta/{name,source,category,flags} (R,) str; meta/loc (R, 3), meta/scale (R,) float64 (source mesh,
    turned Y-up, = stored * scale + loc); meta/watertight (R,) bool; meta/inside_fraction (R,) float32

File attributes hold the provenance: format, format_version, box (2, 3), normalisation, up_source (records
are Y-up), split, source (JSON), camera_convention, config (JSON) and config_hash, labeller, created_utc,
n_records. Large arrays are gzip+shuffle compressed; samples are stored in spatial order (volume: Morton
order, so the labels compress ~15x; surface: by face or part).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np

from ..atomic import atomic_path
from .sampling import dequantise

FORMAT = "neural_parts.records"
FORMAT_VERSION = 1
_COMPRESS = dict(compression="gzip", compression_opts=4, shuffle=True)
_BULK = (
    "volume/points",
    "volume/labels",
    "surface/points",
    "surface/normals",
    "surface/part_ids",
    "images",
    "cameras/K",
    "cameras/Rt",
)
_META = (
    "meta/name",
    "meta/source",
    "meta/category",
    "meta/flags",
    "meta/loc",
    "meta/scale",
    "meta/watertight",
    "meta/inside_fraction",
)
_STR = h5py.string_dtype()


class CorruptFileError(OSError):
    """A record file is missing pieces, truncated or unreadable; the message names the file and record."""


def encode(record: dict) -> dict:
    """A prepared record -> the stored arrays. ``record`` holds volume_q (Nv, 3) uint16, volume_labels
    (Nv,) bool, surface_points/normals (Ns, 3), surface_part_ids (Ns,), images (V, H, W, 3) uint8,
    camera_K (V, 3, 3), camera_Rt (V, 3, 4), name, source, category, flags (list of str), loc (3,),
    scale, watertight."""
    normals = np.asarray(record["surface_normals"], dtype=np.float64)
    labels = np.asarray(record["volume_labels"], dtype=bool)
    return {
        "volume/points": np.asarray(record["volume_q"], dtype=np.uint16),
        "volume/labels": np.packbits(labels),
        "surface/points": np.asarray(record["surface_points"], dtype=np.float16),
        "surface/normals": np.rint(np.clip(normals, -1, 1) * 127).astype(np.int8),
        "surface/part_ids": np.asarray(record["surface_part_ids"], dtype=np.int16),
        "images": np.asarray(record["images"], dtype=np.uint8),
        "cameras/K": np.asarray(record["camera_K"], dtype=np.float32),
        "cameras/Rt": np.asarray(record["camera_Rt"], dtype=np.float32),
        "meta/name": str(record["name"]),
        "meta/source": str(record["source"]),
        "meta/category": str(record["category"]),
        "meta/flags": ",".join(record["flags"]),
        "meta/loc": np.asarray(record["loc"], dtype=np.float64),
        "meta/scale": float(record["scale"]),
        "meta/watertight": bool(record["watertight"]),
        "meta/inside_fraction": np.float32(labels.mean()),
    }


def write_records(path, records: list, attrs: dict) -> None:
    """Write prepared records to ``path`` atomically (temp file, then rename)."""
    encoded = [encode(r) for r in records]
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            _set_attrs(f, attrs)
            for key in _BULK + _META:
                first = np.asarray(encoded[0][key]) if key in _BULK else None
                if key in _BULK:
                    data = np.stack([e[key] for e in encoded])
                    f.create_dataset(key, data=data, chunks=(1,) + first.shape, **_COMPRESS)
                else:
                    values = [e[key] for e in encoded]
                    f.create_dataset(
                        key, data=np.array(values, dtype=_STR if isinstance(values[0], str) else None)
                    )


def assemble(shards: list, path, attrs: dict) -> None:
    """Concatenate shard files into ``path`` atomically; compressed chunks are copied without recoding."""
    counts = [len(H5Records(s)) for s in shards]
    total = sum(counts)
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as out:
            _set_attrs(out, {**attrs, "n_records": total})
            with h5py.File(shards[0], "r") as first:
                for key in _BULK + _META:
                    src = first[key]
                    out.create_dataset(
                        key,
                        shape=(total,) + src.shape[1:],
                        dtype=src.dtype,
                        chunks=src.chunks if key in _BULK else None,
                        **(_COMPRESS if key in _BULK else {}),
                    )
            row = 0
            for shard, n in zip(shards, counts, strict=True):
                with h5py.File(shard, "r") as f:
                    for key in _BULK:
                        zeros = (0,) * (f[key].ndim - 1)
                        for i in range(n):
                            mask, chunk = f[key].id.read_direct_chunk((i,) + zeros)
                            out[key].id.write_direct_chunk((row + i,) + zeros, chunk, mask)
                    for key in _META:
                        out[key][row : row + n] = f[key][:]
                row += n


def _set_attrs(f: h5py.File, attrs: dict) -> None:
    f.attrs["format"] = FORMAT
    f.attrs["format_version"] = FORMAT_VERSION
    for k, v in attrs.items():
        f.attrs[k] = json.dumps(v) if isinstance(v, dict) else v


class H5Records:
    """Read-only access to a record file; the h5py handle is opened lazily in each process (worker-safe).

    ``read(i)`` returns the decoded record: volume_points (Nv, 3) float32, volume_labels (Nv,) bool,
    surface_points (Ns, 3) float32, surface_normals (Ns, 3) float32 unit, surface_part_ids (Ns,) int16,
    images (V, H, W, 3) uint8, camera_K (V, 3, 3), camera_Rt (V, 3, 4), name, source, category,
    flags (list), loc (3,), scale, watertight, inside_fraction.
    """

    def __init__(self, path):
        self.path = Path(path)
        self._file = None
        self._pid = None
        f = self._handle()
        if f.attrs.get("format") != FORMAT:
            raise CorruptFileError(
                f"{self.path}: not a neural_parts record file (format attribute "
                f"{f.attrs.get('format')!r}, expected {FORMAT!r})"
            )
        if int(f.attrs["format_version"]) > FORMAT_VERSION:
            raise CorruptFileError(
                f"{self.path}: format_version {f.attrs['format_version']} is newer than "
                f"this reader ({FORMAT_VERSION}); upgrade neural_parts"
            )
        missing = [k for k in _BULK + _META if k not in f]
        if missing:
            raise CorruptFileError(f"{self.path}: missing datasets {missing}; re-run prepare")
        self.attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
        self.box = np.asarray(self.attrs["box"], dtype=np.float64)
        self._len = int(f["volume/points"].shape[0])
        self.n_views = int(f["images"].shape[1])
        self.close()

    def __len__(self) -> int:
        return self._len

    def __getstate__(self):
        return {**self.__dict__, "_file": None, "_pid": None}

    def _handle(self) -> h5py.File:
        if self._file is None or self._pid != os.getpid():
            try:
                self._file = h5py.File(self.path, "r")
            except (OSError, ValueError) as e:
                raise CorruptFileError(
                    f"{self.path}: cannot open as HDF5 ({e}); the file is truncated or "
                    "corrupt — delete it and re-run `python -m neural_parts.prepare`"
                ) from e
            self._pid = os.getpid()
        return self._file

    def close(self) -> None:
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file = None

    def read(self, i: int, views=None) -> dict:
        """Decode record ``i``; ``views`` (list of int) limits the images read (default: all)."""
        if not -len(self) <= i < len(self):
            raise IndexError(f"{self.path}: record {i} out of range (file has {len(self)} records)")
        i = i % len(self)
        f = self._handle()
        key = None
        try:
            raw = {}
            for key in _BULK + _META:
                if key == "images" and views is not None:
                    raw[key] = np.stack([f[key][i, v] for v in views])
                else:
                    raw[key] = f[key][i]
        except Exception as e:  # h5py raises OSError, RuntimeError or ValueError on damaged chunks
            raise CorruptFileError(
                f"{self.path}: record {i} is unreadable (dataset {key}: {e}); the file is "
                "corrupt — delete it and re-run `python -m neural_parts.prepare`"
            ) from e
        n_vol = raw["volume/points"].shape[0]
        normals = raw["surface/normals"].astype(np.float32)
        normals /= np.sqrt(np.maximum(np.einsum("ij,ij->i", normals, normals), 1e-12))[:, None]
        text = {
            k: (raw[k].decode() if isinstance(raw[k], bytes) else str(raw[k]))
            for k in ("meta/name", "meta/source", "meta/category", "meta/flags")
        }
        return {
            "volume_points": dequantise(raw["volume/points"], self.box),
            "volume_labels": np.unpackbits(raw["volume/labels"], count=n_vol).astype(bool),
            "surface_points": raw["surface/points"].astype(np.float32),
            "surface_normals": normals,
            "surface_part_ids": raw["surface/part_ids"],
            "images": raw["images"],
            "camera_K": raw["cameras/K"],
            "camera_Rt": raw["cameras/Rt"],
            "name": text["meta/name"],
            "source": text["meta/source"],
            "category": text["meta/category"],
            "flags": [s for s in text["meta/flags"].split(",") if s],
            "loc": raw["meta/loc"],
            "scale": float(raw["meta/scale"]),
            "watertight": bool(raw["meta/watertight"]),
            "inside_fraction": float(raw["meta/inside_fraction"]),
        }

    def categories(self) -> np.ndarray:
        """Category of every record, (R,) str."""
        return np.array(
            [c.decode() if isinstance(c, bytes) else c for c in self._handle()["meta/category"][:]]
        )
