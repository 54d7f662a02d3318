"""Starting primitives on the parts of a shape: k-means, spectral or mesh-graph ellipsoids, and a model that is
exactly them at step 0."""
import numpy as np
import pytest
import torch

from neural_parts.initialise import initialise_primitives, kmeans, mesh_parts, part_ellipsoids, spectral_parts
from neural_parts.models import NeuralParts


def solid_ellipsoid(n: int, centre, semi_axes, rng) -> np.ndarray:
    """n points uniform in the axis-aligned solid ellipsoid (centre (3,), semi_axes (3,))."""
    d = rng.normal(size=(n, 3))
    d *= (rng.random(n) ** (1 / 3) / np.linalg.norm(d, axis=1))[:, None]
    return np.asarray(centre) + d * np.asarray(semi_axes)


def inside_ellipsoids(x: np.ndarray, centres, axes, radii) -> np.ndarray:
    """(N,) bool: x (N, 3) inside any ellipsoid (centres (k, 3), axes (k, 3, 3) rows = directions, radii (k, 3))."""
    local = np.einsum("kij,nkj->nki", axes, x[:, None] - centres[None])
    return ((local / radii[None]) ** 2).sum(-1).min(1) < 1


def test_part_ellipsoids_recover_two_separate_solids():
    rng = np.random.default_rng(0)
    a = solid_ellipsoid(4000, (-0.3, 0, 0), (0.05, 0.2, 0.1), rng)
    b = solid_ellipsoid(4000, (0.3, 0.1, 0), (0.15, 0.05, 0.05), rng)
    centres, axes, radii = part_ellipsoids(np.concatenate([a, b]), 2, np.random.default_rng(1))
    order = np.argsort(centres[:, 0])
    np.testing.assert_allclose(centres[order], [(-0.3, 0, 0), (0.3, 0.1, 0)], atol=0.01)
    np.testing.assert_allclose(np.sort(radii[order], 1), [(0.05, 0.1, 0.2), (0.05, 0.05, 0.15)], rtol=0.05)
    assert np.allclose(np.linalg.det(axes), 1)


@pytest.mark.parametrize("n_primitives", [1, 3])
def test_initialised_primitives_are_exactly_the_part_ellipsoids(n_primitives):
    """At step 0 the model's union G < 0 is the union of the k-means ellipsoids: the couplings start as the
    identity (with their random initial weights the shapes differed from the ellipsoids by ~10% of the volume)."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    points = np.concatenate([solid_ellipsoid(3000, (-0.25, 0, 0), (0.08, 0.2, 0.1), rng),
                             solid_ellipsoid(3000, (0.2, 0.1, 0.05), (0.2, 0.06, 0.06), rng)])
    model = NeuralParts(n_primitives=n_primitives, feature_size=16, hidden_size=32, proj_dims=16,
                        encoder="latent", n_shapes=1).double()
    initialise_primitives(model, torch.zeros(1, dtype=torch.long), points, np.random.default_rng(3))
    centres, axes, radii = part_ellipsoids(points, n_primitives, np.random.default_rng(3))
    x = np.random.default_rng(4).uniform(-0.5, 0.5, size=(20000, 3))
    with torch.no_grad():
        g = model.predict(torch.zeros(1, dtype=torch.long)).implicit(torch.from_numpy(x)[None]).value[0].numpy()
    expected = inside_ellipsoids(x, centres, axes, radii)
    assert expected.mean() > 0.005  # ~200 of the 20,000 points inside
    assert ((g < 0) != expected).mean() < 1e-3


def test_identity_couplings_leave_only_the_affine_map():
    torch.manual_seed(0)
    model = NeuralParts(n_primitives=2, feature_size=8, hidden_size=16, proj_dims=8, encoder="latent",
                        n_shapes=1).double()
    inn = model.invertible_network
    inn.make_couplings_identity()
    prims = model(torch.zeros(1, dtype=torch.long))
    z = torch.randn(1, 7, 2, 3, dtype=torch.float64)
    sigma, R, T = prims.affine
    affine_only = torch.einsum("bsmi,bmij->bsmj", z / sigma[:, None], R) + T[:, None]
    torch.testing.assert_close(prims.to_world(z), affine_only)
    assert any(p.abs().sum() > 0 for p in inn.layers[0].map_s[0].parameters())  # earlier layers stay random


def parallel_bars(n: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """Two solid vertical bars (length 1, half-width 0.04, 0.2 apart, like a person's legs): points (2n, 3)
    and which bar each point is in (2n,)."""
    bars = [solid_ellipsoid(n, (x, 0, 0), (0.04, 0.5, 0.04), rng) for x in (-0.1, 0.1)]
    return np.concatenate(bars), np.repeat([0, 1], n)


def test_spectral_split_keeps_each_bar_whole_where_kmeans_cuts_across():
    points, bar = parallel_bars(1500, np.random.default_rng(0))
    kmeans_label, _ = kmeans(points, 2, np.random.default_rng(1))
    used, label = spectral_parts(points, 2, np.random.default_rng(1))
    assert len(used) == len(points) == 3000  # under max_points: every point is used, in order
    np.testing.assert_array_equal(used, points)
    purity = lambda lab: max((lab == bar).mean(), (lab != bar).mean())  # noqa: E731
    assert purity(label) == 1.0
    assert purity(kmeans_label) < 0.75  # k-means splits the long bars by height
    centres, _, radii = part_ellipsoids(points, 2, np.random.default_rng(1), split="spectral")
    np.testing.assert_allclose(np.sort(centres[:, 0]), [-0.1, 0.1], atol=0.01)
    np.testing.assert_allclose(radii.max(1), 0.5, rtol=0.05)


def test_spectral_split_is_deterministic_and_subsamples_large_inputs():
    points, _ = parallel_bars(3000, np.random.default_rng(0))
    a, b = (spectral_parts(points, 2, np.random.default_rng(5)) for _ in range(2))
    assert len(a[0]) == 4000
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_unknown_split_is_refused():
    with pytest.raises(ValueError, match="unknown split 'ward'"):
        part_ellipsoids(np.zeros((10, 3)), 2, np.random.default_rng(0), split="ward")



def test_mesh_split_keeps_touching_components_whole():
    """Two icospheres that touch (two components, joined only by weak bridges) are the two parts."""
    import trimesh

    spheres = [trimesh.creation.icosphere(3, radius=0.2).apply_translation((x, 0, 0)) for x in (-0.2, 0.2)]
    vertices = np.concatenate([m.vertices for m in spheres])
    faces = np.concatenate([spheres[0].faces, spheres[1].faces + len(spheres[0].vertices)])
    truth = np.repeat([0, 1], len(spheres[0].vertices))
    label = mesh_parts(vertices, faces, 2, np.random.default_rng(0))
    assert max((label == truth).mean(), (label != truth).mean()) == 1.0
    np.testing.assert_array_equal(label, mesh_parts(vertices, faces, 2, np.random.default_rng(0)))
    inside = solid_ellipsoid(2000, (0.2, 0, 0), (0.15, 0.15, 0.15), np.random.default_rng(1))
    centres, _, _ = part_ellipsoids(np.concatenate([inside, inside * [-1, 1, 1]]), 2, np.random.default_rng(0),
                                    split="mesh", mesh=(vertices, faces))
    np.testing.assert_allclose(np.sort(centres[:, 0]), [-0.2, 0.2], atol=0.01)
    with pytest.raises(ValueError, match="needs the mesh"):
        part_ellipsoids(inside, 2, np.random.default_rng(0), split="mesh")


def test_mesh_split_gives_each_limb_of_a_standing_person_its_part(shared_meshes):
    """Anny standing, arms at the sides (Z-up): the surface graph separates the arms from the torso that they
    touch, which the inside points' neighbour graph joins."""
    from neural_parts.data.readers import load_mesh

    vertices, faces = load_mesh(shared_meshes / "human_anny_s1_standing01.obj")
    vertices = np.asarray(vertices, dtype=np.float64)
    label = mesh_parts(vertices, np.asarray(faces), 5, np.random.default_rng(0))
    lo, hi = vertices.min(0), vertices.max(0)
    centre = np.stack([(vertices[label == j].mean(0) - lo) / (hi - lo) for j in range(5)])  # in the box, 0..1
    x, height = centre[:, 0], centre[:, 2]
    assert sorted(np.round(height, 1)) == pytest.approx([0.1, 0.1, 0.5, 0.6, 0.9], abs=0.11)  # 2 legs, 2 arms, torso
    arms = np.argsort(x)[[0, -1]]
    assert x[arms[0]] < 0.15 and x[arms[1]] > 0.85 and (height[arms] > 0.4).all()


@pytest.mark.parametrize("k", [2, 3, 4])
def test_mesh_split_of_a_person_into_few_parts_gives_connected_pieces(shared_meshes, k):
    """Fewer parts than the trunk and four limbs: k connected pieces of the surface. (The top eigenvalues of
    this graph lie within 1e-5 of each other; solving for only k of them took ARPACK 89 s at k = 2.)"""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    from neural_parts.data.readers import load_mesh

    vertices, faces = load_mesh(shared_meshes / "human_anny_s1_standing01.obj")
    faces = np.asarray(faces)
    label = mesh_parts(np.asarray(vertices, dtype=np.float64), faces, k, np.random.default_rng(0))
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    edges = edges[label[edges[:, 0]] == label[edges[:, 1]]]  # edges inside a part
    graph = coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(len(label),) * 2)
    assert connected_components(graph, directed=False)[0] == k
    assert np.bincount(label, minlength=k).min() > 0.1 * len(label)
