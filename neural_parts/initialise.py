"""Starting primitives on the parts of a shape (an initialisation of the affine heads; the method is unchanged).

k-means, or spectral clustering of a neighbour graph (parts cut at narrow necks, such as a person's legs),
splits the points inside a shape into M parts, each summarised by an ellipsoid (centre, principal axes,
semi-axes); ``initialise_primitives`` sets the last layer of the translation, rotation and scale heads
so that at step 0 primitive m is that ellipsoid: translation = centre, rotation = axes, sigma = r / semi-axes
(the sphere of radius r maps to it), and the couplings start as the identity (their random initial
deformation otherwise moves the start's IoU by up to 0.3: 0.18 to 0.49 on a fitted human over seeds).
``fit`` uses the fitted mesh's own parts; ``train`` (``network.init: parts``) the parts of the training set's
constant shape.
"""
from __future__ import annotations

import numpy as np
import torch


def kmeans(points: np.ndarray, k: int, rng: np.random.Generator,
           iterations: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """k-means (k-means++ seeding) of points (N, D): labels (N,) in [0, k) and centres (k, D)."""
    centres = points[rng.choice(len(points), 1)]
    for _ in range(1, k):
        d2 = ((points[:, None] - centres[None]) ** 2).sum(-1).min(1)
        centres = np.concatenate([centres, points[rng.choice(len(points), 1, p=d2 / d2.sum())]])
    for _ in range(iterations):
        label = ((points[:, None] - centres[None]) ** 2).sum(-1).argmin(1)
        moved = np.stack([points[label == j].mean(0) if (label == j).any() else centres[j] for j in range(k)])
        if np.allclose(moved, centres):
            break
        centres = moved
    return ((points[:, None] - centres[None]) ** 2).sum(-1).argmin(1), centres


def spectral_parts(points: np.ndarray, k: int, rng: np.random.Generator, n_neighbours: int = 10,
                   max_points: int = 4000, restarts: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Spectral clustering of at most ``max_points`` of ``points`` (N, 3): the normalised affinity of their
    ``n_neighbours``-nearest-neighbour graph, then k-means (the least-inertia of ``restarts`` runs) of its
    row-normalised top-k eigenvectors. Parts are connected pieces cut at narrow necks: the legs of a standing
    person, where k-means cuts the body into slabs by height.

    Returns the points used (n, 3) and their labels (n,).
    """
    from scipy.sparse import coo_matrix, diags
    from scipy.sparse.linalg import eigsh
    from scipy.spatial import cKDTree

    if len(points) > max_points:
        points = points[np.sort(rng.choice(len(points), max_points, replace=False))]
    n_neighbours = min(n_neighbours, len(points) - 1)
    distance, neighbour = cKDTree(points).query(points, n_neighbours + 1)
    distance, neighbour = distance[:, 1:], neighbour[:, 1:]  # drop each point itself
    scale = max(np.median(distance), 1e-12)
    rows = np.repeat(np.arange(len(points)), n_neighbours)
    W = coo_matrix((np.exp(-(distance / scale) ** 2).ravel(), (rows, neighbour.ravel())),
                   shape=(len(points),) * 2).tocsr()
    W = W.maximum(W.T)  # symmetric
    d = 1 / np.sqrt(np.asarray(W.sum(1)).ravel())
    A = diags(d) @ W @ diags(d)
    if len(points) <= 2 * k + 1:  # too small for ARPACK
        vectors = np.linalg.eigh(A.toarray())[1][:, -k:]
    else:
        vectors = eigsh(A, k=k, which="LA", v0=rng.standard_normal(len(points)))[1]
    embedding = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    runs = [kmeans(embedding, k, rng, iterations=100) for _ in range(restarts)]
    label, _ = min(runs, key=lambda run: ((embedding - run[1][run[0]]) ** 2).sum())  # least inertia
    return points, label


def part_ellipsoids(points: np.ndarray, k: int, rng: np.random.Generator, min_radius: float = 0.02,
                    solid: bool = True, split: str = "kmeans") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split points (N, 3) into k parts (``split``: "kmeans" of the coordinates, or "spectral", see
    ``spectral_parts``), each summarised by an ellipsoid.

    Returns centres (k, 3), axes (k, 3, 3) (row j: the world direction of axis j, a proper rotation) and
    semi-axes (k, 3): the standard deviation along each principal axis times sqrt(5) for points filling
    a solid (``solid``; exact for a solid ellipsoid) or sqrt(3) for surface points (exact for a sphere's
    surface), at least ``min_radius``.
    """
    if len(points) < k:
        raise ValueError(f"cannot split {len(points)} points into {k} parts")
    if split == "spectral":
        points, label = spectral_parts(points, k, rng)
        centres = np.stack([points[label == j].mean(0) if (label == j).any() else points.mean(0)
                            for j in range(k)])
    elif split == "kmeans":
        label, centres = kmeans(points, k, rng)
    else:
        raise ValueError(f"unknown split {split!r}; expected 'kmeans' or 'spectral'")
    axes, radii = np.zeros((k, 3, 3)), np.zeros((k, 3))
    for j in range(k):
        member = points[label == j]
        cov = np.cov(member.T) if len(member) > 3 else np.eye(3) * min_radius ** 2
        values, vectors = np.linalg.eigh(cov)
        axes[j] = vectors.T * np.array([1, 1, np.sign(np.linalg.det(vectors)) or 1])[:, None]
        radii[j] = np.maximum(np.sqrt((5 if solid else 3) * np.clip(values, 0, None)), min_radius)
    return centres, axes, radii


@torch.no_grad()
def initialise_primitives(model, inputs: torch.Tensor, points: np.ndarray, rng: np.random.Generator,
                          solid: bool = True, split: str = "kmeans") -> None:
    """Place ``model``'s M primitives on the parts of ``points`` (N, 3) (inside a shape, or on its surface
    when not ``solid``; ``split`` as in ``part_ellipsoids``), for the conditions of ``inputs`` (images
    (B, 3, H, W) or latent indices (B,)).

    The heads' last layers take the least-norm change that best fits the targets over the B x M conditions
    (exact when B x M <= hidden size + 1).
    """
    centres, axes, radii = part_ellipsoids(np.asarray(points, dtype=np.float64), model.n_primitives, rng,
                                           solid=solid, split=split)
    was_training = model.training
    model.eval()
    try:
        cond = model.conditions(model.feature_extractor(inputs).to(model.primitive_embedding.dtype))
    finally:
        model.train(was_training)
    B = cond.shape[0]
    target = lambda a: torch.as_tensor(a, dtype=cond.dtype, device=cond.device).expand(B, *a.shape)  # noqa: E731
    model.invertible_network.make_couplings_identity()
    model.invertible_network.initialise_affine(cond, target(centres), target(axes), target(model.radius / radii))
