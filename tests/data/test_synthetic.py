"""Procedural shapes: determinism, closed parts, category schedule."""

import numpy as np
import pytest

from neural_parts.data import synthetic
from neural_parts.data.process import is_watertight


@pytest.mark.parametrize("index", range(6))
def test_shapes_are_deterministic_soups_of_closed_parts(index):
    a = synthetic.make_shape(7, "train", index)
    v, f, part = a.soup()
    v2, f2, _ = synthetic.make_shape(7, "train", index).soup()
    assert np.array_equal(v, v2) and np.array_equal(f, f2)
    assert not np.array_equal(v, synthetic.make_shape(8, "train", index).soup()[0])
    assert a.category == synthetic.category_of(index) and len(a.parts) >= 3
    assert part.max() == len(a.parts) - 1
    for m in a.parts:
        tri = m.vertices[m.faces]
        volume = np.einsum("ij,ij->i", tri[:, 0], np.cross(tri[:, 1], tri[:, 2])).sum() / 6
        assert is_watertight(m.vertices, m.faces) and volume > 0  # closed, outward normals


def test_parts_are_closed_by_trimesh_too():
    trimesh = pytest.importorskip("trimesh")
    for index in range(6):
        for m in synthetic.make_shape(0, "test", index).parts:
            t = trimesh.Trimesh(m.vertices, m.faces)
            assert t.is_watertight and t.is_winding_consistent and t.volume > 0


def test_primitives_approximate_their_solids():
    cap = synthetic.capsule([0.1, 0.2, 0.3], [0.5, -0.2, 0.9], 0.05)
    axis = np.array([0.4, -0.4, 0.6]) / np.linalg.norm([0.4, -0.4, 0.6])
    along = (cap.vertices - [0.1, 0.2, 0.3]) @ axis
    assert np.isclose(along.min(), -0.05) and np.isclose(along.max(), np.linalg.norm([0.4, -0.4, 0.6]) + 0.05)
    radial = np.linalg.norm(
        (cap.vertices - [0.1, 0.2, 0.3]) - np.outer(np.clip(along, 0, None), axis), axis=1
    )
    assert radial.max() <= 0.05 + 1e-9
    b = synthetic.box([1, 2, 3], [1, 1, 1], synthetic.rotation([0, 0, 1], np.pi / 2))
    assert np.allclose(b.vertices.min(axis=0), [0, 0.5, -0.5]) and np.allclose(
        b.vertices.max(axis=0), [2, 1.5, 2.5]
    )
    e = synthetic.ellipsoid([0.1, 0.2, 0.3], [0, 0, 0])
    assert np.allclose(((e.vertices / [0.1, 0.2, 0.3]) ** 2).sum(axis=1), 1)


def test_splits_differ_and_categories_cycle():
    assert not np.array_equal(
        synthetic.make_shape(0, "train", 0).soup()[0], synthetic.make_shape(0, "val", 0).soup()[0]
    )
    cats = [synthetic.category_of(i) for i in range(12)]
    assert cats.count("humanoid") == 6 and {"chair", "table", "plane"} <= set(cats)
    assert {synthetic.category_of(i, ["chair", "plane"]) for i in range(4)} == {"chair", "plane"}
    with pytest.raises(ValueError, match="unknown synthetic categories"):
        synthetic.category_of(0, ["dragon"])


def test_humanoid_proportions():
    heights = []
    for i in range(0, 60, 6):
        v, _, _ = synthetic.make_shape(0, "train", i).soup()
        heights.append(v[:, 1].max() - v[:, 1].min())
        assert v[:, 1].argmax() != v[:, 1].argmin()
    assert 0.9 < min(heights) and max(heights) < 2.6  # head-to-feet, arms up at most
