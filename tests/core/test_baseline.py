"""The constant-shape floor: exact on an analytic case, the best threshold, and the evaluate command."""
import numpy as np
import torch

from neural_parts.baseline import ConstantShape, constant_shape_metrics
from neural_parts.data.process import RecordConfig, make_record
from neural_parts.data.storage import MemoryRecords
from neural_parts.data.synthetic import box as box_part

BOX = np.array([[-0.55] * 3, [0.55] * 3])


def _records(shapes, seed=0):
    rng = np.random.default_rng(seed)
    cfg = RecordConfig(n_volume=60_000, n_surface=50_000, n_views=0)  # ~17 points per voxel: none empty
    return MemoryRecords([make_record(v, f, cfg, rng, name=f"s{k}", source="test") for k, (v, f) in enumerate(shapes)],
                         BOX)


def _cube():
    part = box_part([1.0, 1.0, 1.0], [0, 0, 0])
    return part.vertices, part.faces


def test_a_dataset_of_one_repeated_shape_scores_iou_1():
    """A unit cube (normalised to [-0.5, 0.5]^3) on a 22^3 grid over [-0.55, 0.55]^3: its faces lie on voxel
    boundaries, so the constant shape is the cube itself and every test point is labelled right."""
    train = _records([_cube()] * 3)
    shape = ConstantShape.fit(train, resolution=22)
    test = _records([_cube()], seed=1).read(0)
    assert np.array_equal(shape.inside(test["volume_points"]), test["volume_labels"])
    target = {k: torch.from_numpy(test[k]) for k in ("volume_points", "volume_labels", "surface_points",
                                                      "surface_normals")}
    m = constant_shape_metrics(shape, **target, n_points=100_000, generator=torch.Generator().manual_seed(0))
    assert m["iou"] == 1.0 and m["chamfer_l1"] < 0.01  # a fifth of a cell: sample spacing and bevelled edges


def test_the_threshold_maximises_the_training_iou():
    thin = box_part([1.0, 0.4, 0.4], [0, 0, 0])  # records are normalised to a longest side of 1
    records = _records([_cube(), (thin.vertices, thin.faces), (thin.vertices, thin.faces)])
    shape = ConstantShape.fit(records, resolution=22)
    inside = shape.inside(records.read(0)["volume_points"]).mean()
    assert records.read(1)["volume_labels"].mean() - 0.01 < inside < records.read(0)["volume_labels"].mean()

    def mean_iou(threshold):
        s = ConstantShape(shape.mean, BOX, threshold)
        ious = []
        for i in range(3):
            r = records.read(i)
            pred, lab = s.inside(r["volume_points"]), r["volume_labels"]
            ious.append((pred & lab).sum() / max((pred | lab).sum(), 1))
        return np.mean(ious)

    best = mean_iou(shape.threshold)
    assert all(best >= mean_iou(t) - 1e-12 for t in np.linspace(0.05, 0.95, 19))
