"""The constant-shape floor: the best single shape for a whole training set, to put every IoU in context.

``ConstantShape.fit`` averages the occupancy labels of the training records' uniform volume points on a
voxel grid over the volume box (the mean occupancy of each voxel) and keeps the voxels whose mean exceeds the
threshold that maximises the mean IoU over the training records. A model that scores no better than this shape
has learned nothing about the input. Lengths are in the records' normalised frame.
"""
from __future__ import annotations

import numpy as np

THRESHOLDS = np.linspace(0.05, 0.95, 37)
SAMPLES_PER_VOXEL = 20  # the grid is as fine as the training points allow, within [16, 64] cells per side


class ConstantShape:
    """Occupancy of one fixed shape: ``mean`` (R, R, R) voxel means over ``box`` (2, 3), inside where > ``threshold``."""

    def __init__(self, mean: np.ndarray, box, threshold: float):
        self.mean, self.box, self.threshold = mean, np.asarray(box, dtype=np.float64), float(threshold)

    @classmethod
    def fit(cls, records, indices=None, resolution: int | None = None) -> ConstantShape:
        """Fit to the records (``H5Records`` or any source with ``read`` and ``box``) at ``indices`` (all)."""
        indices = range(len(records)) if indices is None else indices
        box = np.asarray(records.box, dtype=np.float64)
        shapes = [records.read(int(i), views=[]) for i in indices]
        if not shapes:
            raise ValueError("the constant shape needs at least one training record")
        if resolution is None:
            points = sum(len(s["volume_labels"]) for s in shapes)
            resolution = int(np.clip(round((points / SAMPLES_PER_VOXEL) ** (1 / 3)), 16, 64))
        inside = np.zeros(resolution ** 3)
        count = np.zeros(resolution ** 3)
        cells = [_cells(s["volume_points"], box, resolution) for s in shapes]
        for c, s in zip(cells, shapes):
            inside += np.bincount(c, s["volume_labels"], minlength=resolution ** 3)
            count += np.bincount(c, minlength=resolution ** 3)
        mean = _fill_empty((inside / np.maximum(count, 1)).reshape((resolution,) * 3), count.reshape((resolution,) * 3))
        mean = mean.reshape(-1)
        scores = [np.mean([_iou(mean[c] > t, s["volume_labels"]) for c, s in zip(cells, shapes)])
                  for t in THRESHOLDS]
        return cls(mean.reshape((resolution,) * 3), box, THRESHOLDS[int(np.argmax(scores))])

    @property
    def resolution(self) -> int:
        return self.mean.shape[0]

    def inside_cells(self) -> np.ndarray:
        """Centres (K, 3) of the voxels inside the shape."""
        ijk = np.argwhere(self.mean > self.threshold)
        return self.box[0] + (ijk + 0.5) * (self.box[1] - self.box[0]) / self.resolution

    def inside(self, points: np.ndarray) -> np.ndarray:
        """(N,) bool: whether points (N, 3) lie in the constant shape."""
        return self.mean.reshape(-1)[_cells(points, self.box, self.resolution)] > self.threshold

    def mesh(self) -> tuple[np.ndarray, np.ndarray]:
        """Its surface, the boundary of the inside voxels, by marching cubes: vertices (V, 3), outward faces (F, 3)."""
        from skimage.measure import marching_cubes

        from .geometry import orient_outward

        padded = np.pad((self.mean > self.threshold).astype(np.float64), 1, constant_values=0.0)
        step = (self.box[1] - self.box[0]) / self.resolution
        verts, faces, _, _ = marching_cubes(padded, level=0.5, spacing=tuple(step))
        verts = verts - step / 2 + self.box[0]  # voxel centres sit at half a cell from the box corner
        return verts, orient_outward(verts, faces.astype(np.int64))


def _fill_empty(mean: np.ndarray, count: np.ndarray) -> np.ndarray:
    """Voxels that no training point fell in take the value of the nearest voxel that one did."""
    if count.all():
        return mean
    from scipy import ndimage

    nearest = ndimage.distance_transform_edt(count == 0, return_distances=False, return_indices=True)
    return mean[tuple(nearest)]


def _cells(points: np.ndarray, box: np.ndarray, resolution: int) -> np.ndarray:
    """Flat voxel index (N,) of points (N, 3) on a resolution^3 grid over box (outside points clamp)."""
    ijk = np.floor((np.asarray(points, dtype=np.float64) - box[0]) / (box[1] - box[0]) * resolution).astype(np.int64)
    ijk = np.clip(ijk, 0, resolution - 1)
    return (ijk[:, 0] * resolution + ijk[:, 1]) * resolution + ijk[:, 2]


def _iou(pred: np.ndarray, target: np.ndarray) -> float:
    union = np.count_nonzero(pred | target)
    return np.count_nonzero(pred & target) / union if union else 1.0


def constant_shape_metrics(shape: ConstantShape, volume_points, volume_labels, surface_points, surface_normals, *,
                           volume_weights=None, n_points: int = 100_000, generator=None) -> dict[str, float]:
    """``metrics.shape_metrics`` for the constant shape (tensors as there; its surface sampled by area)."""
    import torch

    from .geometry import sample_triangles
    from .metrics import prediction_metrics

    device, dtype = surface_points.device, surface_points.dtype
    inside = torch.from_numpy(shape.inside(volume_points.cpu().numpy())).to(device)
    v, f = shape.mesh()
    points, normals, _ = sample_triangles(torch.as_tensor(v, dtype=dtype, device=device),
                                          torch.as_tensor(f, device=device), n_points, generator)
    return prediction_metrics(inside, points, normals, volume_labels, surface_points, surface_normals, volume_weights)
