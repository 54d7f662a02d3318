"""Torch dataset over record files (or the in-place readers): per item a random subset of the record."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .images import normalise_image
from .sampling import draw_equal
from .storage import H5Records

# what a training item is made from (a source may return more)
ITEM_FIELDS = ("volume_points", "volume_labels", "surface_points", "surface_normals", "images", "name", "source")


class NeuralPartsDataset(torch.utils.data.Dataset):
    """Training samples drawn from a record file (``<split>.h5``) or a reader from ``readers``.

    Each item is a dict of tensors: image (3, H, W) float32 ImageNet-normalised; volume_points (Nv, 3),
    volume_labels (Nv,) in {0, 1}, volume_weights (Nv,) (the "equal" importance weights, or ones);
    surface_points (Ns, 3) and unit surface_normals (Ns, 3), all float32; index () int64.
    ``equal``: half the volume points inside, weighted to keep losses unbiased (E[w] = 1); otherwise uniform.
    ``random_view``: a random stored view instead of view 0. ``seed``: None draws fresh subsets every call;
    an int makes item i's draw a fixed function of (seed, epoch, i), with ``set_epoch`` (training: a resumed
    run draws what an uninterrupted one would; validation: epoch 0 throughout). ``categories`` keeps only records
    of those categories (record files only). The HDF5 file is opened lazily in each DataLoader worker.
    """

    def __init__(
        self,
        source,
        n_volume: int = 5000,
        n_surface: int = 1500,
        equal: bool = True,
        image_size: int = 224,
        random_view: bool = False,
        seed: int | None = None,
        categories=None,
    ):
        self.records = H5Records(source) if isinstance(source, (str, Path)) else source
        self.n_volume, self.n_surface, self.equal = n_volume, n_surface, equal
        self.image_size, self.random_view, self.seed = image_size, random_view, seed
        self.epoch = 0
        self.indices = np.arange(len(self.records))
        stored = getattr(self.records, "n_surface", None)
        if stored is not None and n_surface > stored:
            raise ValueError(f"{self.records.path}: records store {stored} surface points, fewer than the "
                             f"{n_surface} requested per sample (data.n_points_on_mesh)")
        if categories is not None:
            if not hasattr(self.records, "categories"):
                raise ValueError("category filtering needs a record file (.h5)")
            cats = self.records.categories()
            self.indices = np.flatnonzero(np.isin(cats, list(categories)))
            if len(self.indices) == 0:
                raise ValueError(
                    f"no records of categories {list(categories)} (file has {sorted(set(cats))})"
                )

    def __len__(self) -> int:
        return len(self.indices)

    def set_epoch(self, epoch: int) -> None:
        """Select the draws of ``epoch`` (with an int ``seed``; DataLoader workers copy it at creation)."""
        self.epoch = int(epoch)

    def record(self, i: int) -> dict:
        """The full stored record i (all points, all views, cameras, metadata); see ``H5Records.read``."""
        return self.records.read(int(self.indices[i]))

    def __getitem__(self, i: int) -> dict:
        rng = np.random.default_rng(None if self.seed is None else [self.seed, self.epoch, int(i)])
        n_views = getattr(self.records, "n_views", None)  # record files: read only the chosen view
        view = int(rng.integers(n_views)) if self.random_view and n_views else 0
        rec = self.records.read(int(self.indices[i]), views=[view] if n_views else None, fields=ITEM_FIELDS)
        images = rec["images"]  # (V, H, W, 3); V = 0 for records without views
        k = int(rng.integers(len(images))) if self.random_view and n_views is None and len(images) else 0
        image = images[k:k + 1]
        labels = rec["volume_labels"]
        if self.equal:
            idx, weights, _ = draw_equal(labels, self.n_volume, rng)
        else:
            idx, weights = rng.integers(0, len(labels), size=self.n_volume), np.ones(self.n_volume)
        if len(rec["surface_points"]) < self.n_surface:
            raise ValueError(f"{rec['source']} ({rec['name']}): {len(rec['surface_points'])} surface points, fewer "
                             f"than the {self.n_surface} requested per sample (data.n_points_on_mesh)")
        surf = rng.choice(len(rec["surface_points"]), size=self.n_surface, replace=False)
        item = {"image": normalise_image(image[0], self.image_size)} if len(image) else {}  # records without views
        return {
            **item,
            "volume_points": torch.from_numpy(rec["volume_points"][idx]),
            "volume_labels": torch.from_numpy(labels[idx].astype(np.float32)),
            "volume_weights": torch.from_numpy(weights.astype(np.float32)),
            "surface_points": torch.from_numpy(rec["surface_points"][surf]),
            "surface_normals": torch.from_numpy(rec["surface_normals"][surf]),
            "index": torch.tensor(int(i), dtype=torch.int64),
        }
