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
are Y-up), split, source (JSON), camera_convention, config (JSON) and config_hash, labeller, n_records, and
``attrs_sha256``, a checksum of all the others. Every dataset is chunked (one chunk per record for the bulk
arrays) and carries HDF5's fletcher32 checksum, so a damaged chunk raises ``CorruptFileError`` instead of
returning wrong values; bulk arrays are also gzip+shuffle compressed; strings are stored as fixed-length
UTF-8 bytes (chunked like the rest). Samples are stored in spatial order (volume: Morton order, so the labels
compress ~15x; surface: by face or part). Format 1 files (no checksums) are still read.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import h5py
import numpy as np

from ..atomic import atomic_path
from .sampling import dequantise

FORMAT = "neural_parts.records"
FORMAT_VERSION = 2
_COMPRESS = dict(compression="gzip", compression_opts=4, shuffle=True, fletcher32=True)
_CHECKED = dict(fletcher32=True)
_DTYPES = {  # dtype and trailing shape of each dataset (-1: any size, "Nv": ...)
    "volume/points": ("uint16", (-1, 3)),
    "volume/labels": ("uint8", (-1,)),
    "surface/points": ("float16", (-1, 3)),
    "surface/normals": ("int8", (-1, 3)),
    "surface/part_ids": ("int16", (-1,)),
    "images": ("uint8", (-1, -1, -1, 3)),
    "cameras/K": ("float32", (-1, 3, 3)),
    "cameras/Rt": ("float32", (-1, 3, 4)),
    "meta/loc": ("float64", (3,)),
    "meta/scale": ("float64", ()),
    "meta/watertight": ("bool", ()),
    "meta/inside_fraction": ("float32", ()),
}
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


def _meta_array(values: list):
    """One meta column as a numpy array: strings as fixed-length UTF-8 bytes (covered by the checksum)."""
    if isinstance(values[0], str):
        encoded = [v.encode("utf-8") for v in values]
        return np.array(encoded, dtype=f"S{max(1, max(len(e) for e in encoded))}")
    return np.asarray(values)


def write_records(path, records: list, attrs: dict) -> None:
    """Write prepared records to ``path`` atomically (temp file, then rename)."""
    encoded = [encode(r) for r in records]
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w", libver="latest") as f:
            _set_attrs(f, attrs)
            for key in _BULK:
                data = np.stack([e[key] for e in encoded])
                f.create_dataset(key, data=data, chunks=(1,) + data.shape[1:], **_COMPRESS)
            for key in _META:
                data = _meta_array([e[key] for e in encoded])
                f.create_dataset(key, data=data, chunks=data.shape or None, **_CHECKED)


def assemble(shards: list, path, attrs: dict) -> None:
    """Concatenate shard files into ``path`` atomically; compressed chunks are copied without recoding."""
    counts = [len(H5Records(s)) for s in shards]
    total = sum(counts)
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w", libver="latest") as out:
            _set_attrs(out, {**attrs, "n_records": total})
            with h5py.File(shards[0], "r") as first:
                for key in _BULK:
                    src = first[key]
                    out.create_dataset(key, shape=(total,) + src.shape[1:], dtype=src.dtype, chunks=src.chunks,
                                       **_COMPRESS)
            metas = {key: [] for key in _META}
            row = 0
            for shard, n in zip(shards, counts, strict=True):
                with h5py.File(shard, "r") as f:
                    for key in _BULK:
                        zeros = (0,) * (f[key].ndim - 1)
                        for i in range(n):
                            mask, chunk = f[key].id.read_direct_chunk((i,) + zeros)
                            out[key].id.write_direct_chunk((row + i,) + zeros, chunk, mask)
                    for key in _META:
                        metas[key] += list(f[key][:])
                row += n
            for key, values in metas.items():
                values = [v.decode("utf-8") if isinstance(v, bytes) else v for v in values]
                data = _meta_array(values)
                out.create_dataset(key, data=data, chunks=data.shape or None, **_CHECKED)


def _jsonable(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value.decode() if isinstance(value, bytes) else value


def attrs_digest(attrs: dict) -> str:
    """sha256 of the file attributes (all but ``attrs_sha256`` itself) in a canonical JSON form."""
    canonical = {k: _jsonable(v) for k, v in attrs.items() if k != "attrs_sha256"}
    return hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()


def _set_attrs(f: h5py.File, attrs: dict) -> None:
    values = {"format": FORMAT, "format_version": FORMAT_VERSION,
              **{k: json.dumps(v) if isinstance(v, dict) else v for k, v in attrs.items()}}
    for k, v in values.items():
        f.attrs[k] = v
    f.attrs["attrs_sha256"] = attrs_digest({k: f.attrs[k] for k in f.attrs})


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _unit_normals(stored: np.ndarray) -> np.ndarray:
    normals = stored.astype(np.float32)
    return normals / np.sqrt(np.maximum(np.einsum("ij,ij->i", normals, normals), 1e-12))[:, None]


_FIELDS = {  # decoded field -> (the stored arrays it is made from, how)
    "volume_points": (("volume/points",), lambda raw, box: dequantise(raw["volume/points"], box)),
    "volume_labels": (("volume/labels", "volume/points"), lambda raw, box: np.unpackbits(
        raw["volume/labels"], count=raw["volume/points"].shape[0]).astype(bool)),
    "surface_points": (("surface/points",), lambda raw, box: raw["surface/points"].astype(np.float32)),
    "surface_normals": (("surface/normals",), lambda raw, box: _unit_normals(raw["surface/normals"])),
    "surface_part_ids": (("surface/part_ids",), lambda raw, box: raw["surface/part_ids"]),
    "images": (("images",), lambda raw, box: raw["images"]),
    "camera_K": (("cameras/K",), lambda raw, box: raw["cameras/K"]),
    "camera_Rt": (("cameras/Rt",), lambda raw, box: raw["cameras/Rt"]),
    "name": (("meta/name",), lambda raw, box: _text(raw["meta/name"])),
    "source": (("meta/source",), lambda raw, box: _text(raw["meta/source"])),
    "category": (("meta/category",), lambda raw, box: _text(raw["meta/category"])),
    "flags": (("meta/flags",), lambda raw, box: [s for s in _text(raw["meta/flags"]).split(",") if s]),
    "loc": (("meta/loc",), lambda raw, box: raw["meta/loc"]),
    "scale": (("meta/scale",), lambda raw, box: float(raw["meta/scale"])),
    "watertight": (("meta/watertight",), lambda raw, box: bool(raw["meta/watertight"])),
    "inside_fraction": (("meta/inside_fraction",), lambda raw, box: float(raw["meta/inside_fraction"])),
}
FIELDS = tuple(_FIELDS)  # what ``H5Records.read`` returns


def _stored_keys(fields) -> list[str]:
    """The stored arrays (``_BULK + _META`` order) that decoding ``fields`` (None: all) reads."""
    if fields is None:
        return list(_BULK + _META)
    unknown = set(fields) - set(_FIELDS)
    if unknown:
        raise ValueError(f"unknown record fields {sorted(unknown)}; expected some of {list(FIELDS)}")
    keys = {k for field in fields for k in _FIELDS[field][0]}
    return [k for k in _BULK + _META if k in keys]


def decode(raw: dict, box: np.ndarray, fields=None) -> dict:
    """The stored arrays of one record (``encode``'s keys; at least those ``fields`` need) -> the decoded
    record ``H5Records.read`` returns, limited to ``fields`` (None: all of ``FIELDS``)."""
    _stored_keys(fields)  # checks the names
    return {field: _FIELDS[field][1](raw, box) for field in (FIELDS if fields is None else fields)}


class MemoryRecords:
    """Prepared records (``process.make_record`` output) held in memory, read exactly as a record file
    stores them (same quantisation); a source for ``NeuralPartsDataset`` (used by ``fit``)."""

    def __init__(self, records: list, box):
        self.box = np.asarray(box, dtype=np.float64)
        self._raw = [encode(r) for r in records]
        self.n_views = int(self._raw[0]["images"].shape[0]) if self._raw else 0

    def __len__(self) -> int:
        return len(self._raw)

    def read(self, i: int, views=None, fields=None) -> dict:
        raw = self._raw[i]
        if views is not None:
            raw = {**raw, "images": raw["images"][list(views)]}
        return decode(raw, self.box, fields)


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
        try:
            self._check(f)
        except CorruptFileError:
            self.close()
            raise
        except Exception as e:  # damaged headers surface as OSError, KeyError, ValueError, RuntimeError
            self.close()
            raise CorruptFileError(f"{self.path}: unreadable file structure ({type(e).__name__}: {e}); the file "
                                   "is corrupt — delete it and re-run `python -m neural_parts.prepare`") from e
        self.close()

    def _check(self, f: h5py.File) -> None:
        """Read and verify the attributes and the datasets' dtypes and shapes."""
        attrs = {k: f.attrs[k] for k in f.attrs}
        if attrs.get("format") != FORMAT:
            raise CorruptFileError(
                f"{self.path}: not a neural_parts record file (format attribute "
                f"{attrs.get('format')!r}, expected {FORMAT!r})"
            )
        version = int(attrs["format_version"])
        if version > FORMAT_VERSION:
            raise CorruptFileError(
                f"{self.path}: format_version {version} is newer than this reader ({FORMAT_VERSION}); "
                "upgrade neural_parts"
            )
        if version >= 2 and attrs.get("attrs_sha256") != attrs_digest(attrs):
            raise CorruptFileError(f"{self.path}: the file attributes do not match their checksum; the file is "
                                   "corrupt — delete it and re-run `python -m neural_parts.prepare`")
        missing = [k for k in _BULK + _META if k not in f]
        if missing:
            raise CorruptFileError(f"{self.path}: missing datasets {missing}; re-run prepare")
        n = int(f["volume/points"].shape[0])
        for key in _BULK + _META:
            dtype, tail = _DTYPES.get(key, (None, ()))
            shape = f[key].shape
            bad_dtype = dtype is not None and f[key].dtype != np.dtype(dtype)
            bad_shape = len(shape) != 1 + len(tail) or shape[0] != n or any(
                t != -1 and s != t for s, t in zip(shape[1:], tail))
            if bad_dtype or bad_shape:
                raise CorruptFileError(f"{self.path}: dataset {key} has dtype {f[key].dtype} and shape {shape}, "
                                       f"expected {dtype or 'strings'} of shape ({n}, {', '.join(map(str, tail))})")
        n_vol = f["volume/points"].shape[1]
        if f["volume/labels"].shape[1] != (n_vol + 7) // 8 or f["surface/normals"].shape[1:] != \
                f["surface/points"].shape[1:] or f["surface/part_ids"].shape[1] != f["surface/points"].shape[1]:
            raise CorruptFileError(f"{self.path}: datasets of one record disagree in size (volume points, labels, "
                                   "surface points, normals, part ids)")
        if f["cameras/K"].shape[1] != f["images"].shape[1] or f["cameras/Rt"].shape[1] != f["images"].shape[1]:
            raise CorruptFileError(f"{self.path}: cameras and images disagree in the number of views")
        self.attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in attrs.items()}
        self.box = np.asarray(self.attrs["box"], dtype=np.float64)
        if self.box.shape != (2, 3) or not (self.box[1] > self.box[0]).all():
            raise CorruptFileError(f"{self.path}: box attribute {self.box.tolist()} is not (min xyz, max xyz)")
        self._len = n
        self.n_views = int(f["images"].shape[1])
        self.n_volume = int(n_vol)
        self.n_surface = int(f["surface/points"].shape[1])

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

    def read(self, i: int, views=None, fields=None) -> dict:
        """Decode record ``i``; ``views`` (list of int) limits the images read (default: all), ``fields``
        (names from ``FIELDS``) the fields decoded and the arrays read (default: all)."""
        if not -len(self) <= i < len(self):
            raise IndexError(f"{self.path}: record {i} out of range (file has {len(self)} records)")
        i = i % len(self)
        keys = _stored_keys(fields)
        f = self._handle()
        key = None
        try:
            raw = {}
            for key in keys:
                if key == "images" and views is not None:
                    raw[key] = (np.stack([f[key][i, v] for v in views]) if len(views)
                                else np.zeros((0,) + f[key].shape[2:], dtype=np.uint8))
                else:
                    raw[key] = f[key][i]
        except Exception as e:  # h5py raises OSError, RuntimeError or ValueError on damaged chunks
            raise CorruptFileError(
                f"{self.path}: record {i} is unreadable (dataset {key}: {e}); the file is "
                "corrupt — delete it and re-run `python -m neural_parts.prepare`"
            ) from e
        return decode(raw, self.box, fields)

    def categories(self) -> np.ndarray:
        """Category of every record, (R,) str."""
        return np.array(
            [c.decode() if isinstance(c, bytes) else c for c in self._handle()["meta/category"][:]]
        )
