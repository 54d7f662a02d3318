"""A predicted set of primitives: conditions + affine heads bound to the invertible network."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from npkernels import Affine, UnionImplicit

from ..geometry import icosphere, sample_sphere


@dataclass
class Primitives:
    """M primitives per batch element. cond: (B, M, C); world units throughout.

    g_m(x) = ||phi^-1(x; C_m)|| - radius (negative inside); G(x) = min_m g_m(x).
    """

    cond: Tensor
    affine: Affine
    network: nn.Module  # ConditionalNVP, or AtlasNetSphere for the ablation
    radius: float

    @property
    def batch_size(self) -> int:
        return self.cond.shape[0]

    @property
    def n_primitives(self) -> int:
        return self.cond.shape[1]

    def select(self, b: int) -> "Primitives":
        """The primitives of batch element b (batch size 1)."""
        return Primitives(self.cond[b:b + 1], Affine(*(t[b:b + 1] for t in self.affine)), self.network, self.radius)

    def implicit(self, x: Tensor, per_primitive: bool = False) -> UnionImplicit:
        """G (B, N), argmin (B, N) and optionally g (B, N, M) at x (B, N, 3)."""
        return self.network.implicit(x, self.cond, self.affine, self.radius, per_primitive)

    def owner_implicit(self, x: Tensor, owner: Tensor) -> Tensor:
        """g_owner(x) (B, N): each point evaluated only in its ``owner`` (B, N) primitive."""
        z = self.network.inverse(x, self.cond, self.affine, owner=owner)
        return torch.linalg.vector_norm(z, dim=-1) - self.radius

    def to_world(self, z: Tensor) -> Tensor:
        """phi: sphere points z (B, S, M, 3) -> world (B, S, M, 3)."""
        return self.network(z, self.cond, self.affine)

    def sample_sphere(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """(B, n, M, 3) independent uniform samples on each primitive's sphere."""
        return sample_sphere((self.batch_size, n, self.n_primitives), self.radius, device=self.cond.device,
                             dtype=self.cond.dtype, generator=generator)

    @torch.no_grad()
    def union_mask(self, points: Tensor, test_own_primitive: bool = False) -> Tensor:
        """on_surface (B, S, M): primitive points (B, S, M, 3) outside every other primitive.

        With ``test_own_primitive`` the point's own primitive is tested too (the authors' training
        code; round-off there drops ~20% of valid points).
        """
        B, S, M, _ = points.shape
        g = self.implicit(points.reshape(B, S * M, 3), per_primitive=True).per_primitive.view(B, S, M, M)
        if not test_own_primitive:
            own = torch.eye(M, dtype=torch.bool, device=g.device)
            g = g.masked_fill(own, float("inf"))
        return (g >= 0).all(-1)

    def points(self, n: int = 200, test_own_primitive: bool = False,
               generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """n fresh sphere samples per primitive mapped to the world (B, n, M, 3), and the
        union mask on_surface (B, n, M) (outside every other primitive)."""
        y = self.to_world(self.sample_sphere(n, generator))
        return y, self.union_mask(y.detach(), test_own_primitive)

    def export(self, out_dir, min_vertices: int = 5000, coloured: str = "ply") -> list:
        """Write part_000.obj ... and a coloured parts.<ply|glb> of batch element 0; returns the paths."""
        from ..export import export_parts

        return export_parts(self, out_dir, min_vertices, coloured)

    def meshes(self, min_vertices: int = 5000) -> tuple[Tensor, Tensor]:
        """Per-primitive meshes: an icosphere mapped by phi. Returns vertices (B, M, V, 3), faces (F, 3)."""
        v, f = icosphere(min_vertices, self.radius, device=self.cond.device, dtype=self.cond.dtype)
        z = v[None, :, None].expand(self.batch_size, -1, self.n_primitives, -1)
        return self.to_world(z).permute(0, 2, 1, 3), f
