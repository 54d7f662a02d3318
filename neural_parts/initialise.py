"""Starting primitives on the parts of a shape (an initialisation of the affine heads; the method is unchanged).

k-means, spectral clustering of a neighbour graph (parts cut at narrow necks, such as a person's legs), or
spectral clustering of a mesh's own surface graph (``fit`` only: limbs that touch the body stay apart) splits
the points inside a shape into M parts, each summarised by an ellipsoid (centre, principal axes,
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


def _spectral_labels(W, k: int, rng: np.random.Generator, restarts: int) -> np.ndarray:
    """k parts (n,) of a graph with symmetric sparse affinity W (n, n): k-means (the least inertia of
    ``restarts`` runs) of the row-normalised top-k eigenvectors of D^-1/2 W D^-1/2."""
    from scipy.sparse import diags
    from scipy.sparse.linalg import eigsh

    d = 1 / np.sqrt(np.maximum(np.asarray(W.sum(1)).ravel(), 1e-300))
    A = diags(d) @ W @ diags(d)
    # ARPACK converges slowly when the k-th eigenvalue nearly equals the next: a person's trunk and four limbs
    # give five eigenvalues within 1e-5 of each other, and k = 2 took 89 s on a 13k-vertex body where solving
    # for 5 and keeping the top 2 takes 3 s
    n_vectors = max(k, 5)
    if W.shape[0] <= 2 * n_vectors + 1:  # too small for ARPACK
        vectors = np.linalg.eigh(A.toarray())[1][:, -k:]
    else:
        vectors = eigsh(A, k=n_vectors, which="LA", v0=rng.standard_normal(W.shape[0]))[1][:, -k:]
    embedding = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    runs = [kmeans(embedding, k, rng, iterations=100) for _ in range(restarts)]
    label, _ = min(runs, key=lambda run: ((embedding - run[1][run[0]]) ** 2).sum())  # least inertia
    return label


def spectral_parts(points: np.ndarray, k: int, rng: np.random.Generator, n_neighbours: int = 10,
                   max_points: int = 4000, restarts: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Spectral clustering of at most ``max_points`` of ``points`` (N, 3): the normalised affinity of their
    ``n_neighbours``-nearest-neighbour graph, then k-means (the least-inertia of ``restarts`` runs) of its
    row-normalised top-k eigenvectors. Parts are connected pieces cut at narrow necks: the legs of a standing
    person, where k-means cuts the body into slabs by height.

    Returns the points used (n, 3) and their labels (n,).
    """
    from scipy.sparse import coo_matrix
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
    return points, _spectral_labels(W.maximum(W.T), k, rng, restarts)


def mesh_parts(vertices: np.ndarray, faces: np.ndarray, k: int, rng: np.random.Generator,
               restarts: int = 10, bridges: int = 4) -> np.ndarray:
    """Spectral clustering of a mesh's own edge graph: labels (V,) of its vertices (V, 3), faces (F, 3).

    Unlike a neighbour graph of points, the surface graph keeps apart limbs that touch without being joined
    (arms against the torso, legs together): each arm, leg and the head+torso of a standing person are
    parts at M = 5. Separate components (a mesh in pieces) are joined by edges from each vertex to its
    ``bridges`` nearest vertices of other components, so that no piece takes a part on its own account.
    Edges weigh 1 / length (Gaussian weights of the edge lengths, as in ``spectral_parts``, leave a mesh's
    graph nearly disconnected at its long edges, and ARPACK then does not converge).
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    n = len(vertices)
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    edges = edges[edges[:, 0] != edges[:, 1]]
    length = np.linalg.norm(vertices[edges[:, 0]] - vertices[edges[:, 1]], axis=1)
    typical = max(float(np.median(length)), 1e-12)
    W = coo_matrix((1 / np.maximum(length, 1e-6 * typical), (edges[:, 0], edges[:, 1])), shape=(n, n)).tocsr()
    n_components, component = connected_components(W, directed=False)
    if n_components > 1:
        _, neighbour = cKDTree(vertices).query(vertices, min(n, 8 * bridges + 1))
        rows, cols = np.repeat(np.arange(n), neighbour.shape[1]), neighbour.ravel()
        cross = component[rows] != component[cols]
        # the nearest `bridges` other-component neighbours among the candidates of each vertex
        keep = cross & (np.cumsum(cross.reshape(n, -1), axis=1).ravel() <= bridges)
        rows, cols = rows[keep], cols[keep]
        bridge_length = np.linalg.norm(vertices[rows] - vertices[cols], axis=1)
        # a bridge weighs at most 1% of a typical edge
        W = W + coo_matrix((1 / (100 * np.maximum(bridge_length, typical)), (rows, cols)), shape=(n, n)).tocsr()
    return _spectral_labels(W.maximum(W.T), k, rng, restarts)


def part_ellipsoids(points: np.ndarray, k: int, rng: np.random.Generator, min_radius: float = 0.02,
                    solid: bool = True, split: str = "kmeans",
                    mesh: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split points (N, 3) into k parts (``split``: "kmeans" of the coordinates, "spectral", see
    ``spectral_parts``, or "mesh": each point takes the part of its nearest vertex of ``mesh`` = (vertices
    (V, 3), faces (F, 3)) split by ``mesh_parts``), each summarised by an ellipsoid.

    Returns centres (k, 3), axes (k, 3, 3) (row j: the world direction of axis j, a proper rotation) and
    semi-axes (k, 3): the standard deviation along each principal axis times sqrt(5) for points filling
    a solid (``solid``; exact for a solid ellipsoid) or sqrt(3) for surface points (exact for a sphere's
    surface), at least ``min_radius``.
    """
    if len(points) < k:
        raise ValueError(f"cannot split {len(points)} points into {k} parts")
    if split == "kmeans":
        label, centres = kmeans(points, k, rng)
    else:
        if split == "spectral":
            points, label = spectral_parts(points, k, rng)
        elif split == "mesh":
            if mesh is None:
                raise ValueError("split 'mesh' needs the mesh (vertices, faces)")
            from scipy.spatial import cKDTree

            vertices, faces = (np.asarray(a) for a in mesh)
            label = mesh_parts(vertices, faces, k, rng)[cKDTree(vertices).query(points)[1]]
        else:
            raise ValueError(f"unknown split {split!r}; expected 'kmeans', 'spectral' or 'mesh'")
        centres = np.stack([points[label == j].mean(0) if (label == j).any() else points.mean(0)
                            for j in range(k)])
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
                          solid: bool = True, split: str = "kmeans",
                          mesh: tuple[np.ndarray, np.ndarray] | None = None) -> None:
    """Place ``model``'s M primitives on the parts of ``points`` (N, 3) (inside a shape, or on its surface
    when not ``solid``; ``split`` and ``mesh`` as in ``part_ellipsoids``), for the conditions of ``inputs`` (images
    (B, 3, H, W) or latent indices (B,)).

    The heads' last layers take the least-norm change that best fits the targets over the B x M conditions
    (exact when B x M <= hidden size + 1).
    """
    centres, axes, radii = part_ellipsoids(np.asarray(points, dtype=np.float64), model.n_primitives, rng,
                                           solid=solid, split=split, mesh=mesh)
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
