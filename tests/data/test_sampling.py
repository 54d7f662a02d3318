"""Surface and volume sampling, quantisation and the "equal" sampler."""

import numpy as np
import pytest

from neural_parts.data.sampling import QMAX, dequantise, draw_equal, quantise, sample_surface, sample_volume
from neural_parts.data.synthetic import box

BOX = np.array([[-0.5, -1.0, -0.5], [0.5, 1.0, 0.5]])


def test_surface_samples_lie_on_faces_uniformly_by_area():
    half = np.array([0.5, 1.0, 2.0])
    mesh = box(2 * half, (0, 0, 0))  # faces normal to x, y, z have areas 8, 4 and 2 (two triangles each)
    pts, normals, fid = sample_surface(mesh.vertices, mesh.faces, 60_000, np.random.default_rng(0))
    on_face = np.isclose(np.abs(pts), half)
    assert on_face.sum(axis=1).min() >= 1 and (np.abs(pts) <= half + 1e-12).all()
    axis = on_face.argmax(axis=1)
    expected = np.zeros_like(normals)
    expected[np.arange(len(pts)), axis] = np.sign(pts[np.arange(len(pts)), axis])
    assert np.allclose(normals, expected)  # unit, outward, of the sampled face
    assert np.allclose(np.bincount(axis) / len(pts), np.array([8, 4, 2]) / 14, atol=0.01)
    assert (np.diff(fid) >= 0).all()  # sorted by face (spatially coherent storage)


def test_volume_points_are_quantised_and_uniform():
    q, pts = sample_volume(BOX, 50_000, np.random.default_rng(1))
    assert q.dtype == np.uint16 and pts.dtype == np.float32
    assert (pts >= BOX[0] - 1e-6).all() and (pts <= BOX[1] + 1e-6).all()
    assert np.array_equal(quantise(pts, BOX), q)  # the stored coordinates are exactly the labelled ones
    assert np.allclose(pts.mean(axis=0), BOX.mean(axis=0), atol=0.01)


def test_quantise_error_bound_and_range_check():
    pts = np.random.default_rng(2).uniform(BOX[0], BOX[1], size=(10_000, 3))
    err = np.abs(dequantise(quantise(pts, BOX), BOX) - pts)
    assert (err <= (BOX[1] - BOX[0]) / (2 * QMAX) + 1e-6).all()
    with pytest.raises(ValueError, match="outside the box"):
        quantise(np.array([[0.0, 1.5, 0.0]]), BOX)


@pytest.mark.parametrize("fraction", [0.02, 0.3, 0.9])
def test_equal_sampler_weights_are_unbiased(fraction):
    rng = np.random.default_rng(3)
    labels = rng.random(100_000) < fraction
    idx, w, ok = draw_equal(labels, 200_000, rng)
    assert ok
    assert abs(labels[idx].mean() - 0.5) < 0.01  # half the draws inside
    assert abs(w.mean() - 1) < 0.01  # E[w] = 1
    assert abs((w * labels[idx]).mean() - labels.mean()) < 0.01  # weighted inside fraction = true fraction
    f = rng.normal(size=labels.size) + labels  # any per-point quantity: E[w f] = uniform mean of f
    assert abs((w * f[idx]).mean() - f.mean()) < 0.02


def test_equal_sampler_falls_back_without_inside_points():
    idx, w, ok = draw_equal(np.zeros(1000, dtype=bool), 100, np.random.default_rng(4))
    assert not ok and (w == 1).all() and idx.max() < 1000
