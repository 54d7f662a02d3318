"""The conditional homeomorphism phi(.; C_m): a SimpleNVP-like stack of affine couplings.

Attribute names follow the authors' SimpleNVP (``layers[i].map_s / map_t / projection / mask``,
``scales``, ``rotations``, ``translations``) so ``npkernels.CouplingWeights.from_module`` and
checkpoint loading need no translation tables. All point maps go through the npkernels ops
(``kernel_backend`` selects "auto" | "triton" | "reference").
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from npkernels import Affine, CouplingWeights, coupling_forward, coupling_inverse, implicit_union
from npkernels.coupling.affine import affine_from_heads


class ProjectionLayer(nn.Module):
    """p(x) = Linear(hidden, P)(ReLU(Linear(3, hidden)(x))), shared by every coupling layer.

    ``init_gain`` multiplies the first Linear's default initial weights. At 1 (PyTorch's default, the
    authors') the points of a radius-0.25 sphere move p(x) so little next to the condition's part of each
    coupling's first layer that the couplings start, and stay for hundreds of updates, nearly affine: in
    a ``fit`` network of 4 couplings of width 128, 2% of a coupling's first-layer ReLUs switch on or off over
    one primitive's sphere at gain 1, 11% at 4 and 79% at 64, where the points' share is about the condition's."""

    def __init__(self, proj_dims: int = 128, hidden: int | None = None, init_gain: float = 1.0):
        super().__init__()
        hidden = hidden or 2 * proj_dims
        self.proj_dims = proj_dims
        self.proj = nn.Sequential(nn.Linear(3, hidden), nn.ReLU(), nn.Linear(hidden, proj_dims))
        if init_gain != 1.0:
            with torch.no_grad():
                self.proj[0].weight.mul_(init_gain)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)


class CouplingLayer(nn.Module):
    """Parameters of one coupling: s and t MLPs [C, p] -> H -> H -> 3 and the kept-coordinate mask."""

    def __init__(self, cond_dims: int, hidden: int, projection: ProjectionLayer, mask: Tensor):
        super().__init__()
        width = cond_dims + projection.proj_dims
        self.map_s = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                   nn.Linear(hidden, 3), nn.Hardtanh(-10, 10))
        self.map_t = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                   nn.Linear(hidden, 3))
        self.projection = projection
        self.register_buffer("mask", mask.reshape(1, 1, 1, 3))


def matrix_to_quaternion(R: Tensor) -> Tensor:
    """Unit quaternions (..., 4) = (w, x, y, z) of rotation matrices R (..., 3, 3), the inverse of
    ``npkernels.coupling.affine.quaternion_to_matrix`` (largest-component branch: stable everywhere)."""
    m = R.reshape(-1, 3, 3)
    trace = m[:, 0, 0] + m[:, 1, 1] + m[:, 2, 2]
    candidates = torch.stack([  # 4 * q * q_k for k = w, x, y, z: one of them has |q_k| >= 1/2
        torch.stack([1 + trace, m[:, 2, 1] - m[:, 1, 2], m[:, 0, 2] - m[:, 2, 0], m[:, 1, 0] - m[:, 0, 1]], -1),
        torch.stack([m[:, 2, 1] - m[:, 1, 2], 1 + m[:, 0, 0] - m[:, 1, 1] - m[:, 2, 2], m[:, 0, 1] + m[:, 1, 0],
                     m[:, 0, 2] + m[:, 2, 0]], -1),
        torch.stack([m[:, 0, 2] - m[:, 2, 0], m[:, 0, 1] + m[:, 1, 0], 1 - m[:, 0, 0] + m[:, 1, 1] - m[:, 2, 2],
                     m[:, 1, 2] + m[:, 2, 1]], -1),
        torch.stack([m[:, 1, 0] - m[:, 0, 1], m[:, 0, 2] + m[:, 2, 0], m[:, 1, 2] + m[:, 2, 1],
                     1 - m[:, 0, 0] - m[:, 1, 1] + m[:, 2, 2]], -1),
    ], 1)  # (n, 4 candidates, 4)
    diagonal = torch.stack([1 + trace, 1 + m[:, 0, 0] - m[:, 1, 1] - m[:, 2, 2],
                            1 - m[:, 0, 0] + m[:, 1, 1] - m[:, 2, 2], 1 - m[:, 0, 0] - m[:, 1, 1] + m[:, 2, 2]], -1)
    best = candidates[torch.arange(len(m)), diagonal.argmax(-1)]
    q = best / torch.linalg.vector_norm(best, dim=-1, keepdim=True)
    return q.reshape(R.shape[:-2] + (4,))


def random_masks(n_layers: int, generator: torch.Generator | None = None) -> list[Tensor]:
    """The authors' masks: per layer two of the three coordinates kept (randperm)."""
    masks = []
    for _ in range(n_layers):
        mask = torch.zeros(3)
        mask[torch.randperm(3, generator=generator)[:2]] = 1
        masks.append(mask)
    return masks


class ConditionalNVP(nn.Module):
    """phi(z; C): sphere -> world. cond C: (B, M, cond_dims)."""

    def __init__(self, cond_dims: int = 512, hidden: int = 256, proj_dims: int = 128, n_layers: int = 4,
                 normalize: bool = True, explicit_affine: bool = True, proj_init_gain: float = 1.0):
        super().__init__()
        self.kernel_backend = "auto"
        self.projection = ProjectionLayer(proj_dims, init_gain=proj_init_gain)
        self.layers = nn.ModuleList(CouplingLayer(cond_dims, hidden, self.projection, m)
                                    for m in random_masks(n_layers))
        head = lambda out: nn.Sequential(nn.Linear(cond_dims, hidden), nn.ReLU(), nn.Linear(hidden, out))  # noqa: E731
        self.scales = head(3) if normalize else None
        self.rotations = head(4) if explicit_affine else None
        self.translations = head(3) if explicit_affine else None

    def weights(self) -> CouplingWeights:
        return CouplingWeights.from_module(self)

    def affine(self, cond: Tensor) -> Affine:
        """Per-primitive sigma (B, M, 3), R (B, M, 3, 3), T (B, M, 3)."""
        return affine_from_heads(cond, self.scales, self.rotations, self.translations)

    @torch.no_grad()
    def make_couplings_identity(self) -> None:
        """Zero the last Linear of every s and t MLP: each coupling is then the identity (s = t = 0) for
        any condition, so the primitives are exactly their affine heads' ellipsoids until training moves
        them (the usual zero start of the last flow layer; the earlier layers keep their random weights)."""
        for layer in self.layers:
            for mlp in (layer.map_s, layer.map_t):
                last = [m for m in mlp if isinstance(m, nn.Linear)][-1]
                last.weight.zero_()
                last.bias.zero_()

    @torch.no_grad()
    def initialise_affine(self, cond: Tensor, translation: Tensor, rotation: Tensor, sigma: Tensor) -> None:
        """Set the last layer of each affine head so that, at these conditions, the heads give the targets.

        cond (B, M, C); translation (B, M, 3), rotation (B, M, 3, 3), sigma (B, M, 3) > 0. Each head's last
        Linear moves by the least-norm change that makes its outputs exact (B * M <= hidden + 1); the
        couplings are untouched. Used to start primitives on parts of a shape (``fit``).
        """
        targets = {"translations": translation, "rotations": matrix_to_quaternion(rotation),
                   "scales": torch.where(sigma >= 1, sigma - 1, torch.log(sigma))}  # inverse of elu(.) + 1
        for name, target in targets.items():
            head = getattr(self, name)
            if head is None:
                continue
            hidden = head[:-1](cond).reshape(-1, head[-1].in_features)
            lifted = torch.cat([hidden, torch.ones_like(hidden[:, :1])], 1)  # (B*M, H + 1)
            residual = target.reshape(len(hidden), -1) - head[-1](hidden)
            delta = torch.linalg.lstsq(lifted.double(), residual.double(), driver="gelsd").solution  # least norm
            head[-1].weight += delta[:-1].t().to(head[-1].weight.dtype)
            head[-1].bias += delta[-1].to(head[-1].bias.dtype)

    def forward(self, z: Tensor, cond: Tensor, affine: Affine | None = None) -> Tensor:
        """Sphere -> world: z (B, S, M, 3) -> (B, S, M, 3)."""
        affine = self.affine(cond) if affine is None else affine
        return coupling_forward(z, cond, self.weights(), affine, backend=self.kernel_backend)

    def inverse(self, x: Tensor, cond: Tensor, affine: Affine | None = None,
                owner: Tensor | None = None) -> Tensor:
        """World -> sphere: x (B, N, 3) -> (B, N, M, 3), or (B, N, 3) in each point's ``owner``."""
        affine = self.affine(cond) if affine is None else affine
        return coupling_inverse(x, cond, self.weights(), affine, owner=owner, backend=self.kernel_backend)

    def implicit(self, x: Tensor, cond: Tensor, affine: Affine, radius: float, per_primitive: bool = False):
        """``npkernels.UnionImplicit`` of the primitives at x (B, N, 3)."""
        return implicit_union(x, cond, self.weights(), affine, radius=radius, per_primitive=per_primitive,
                              backend=self.kernel_backend)
