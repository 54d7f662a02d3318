"""AtlasNet-sphere: the authors' ablation without an invertible network.

Each primitive is the image of the sphere under a plain MLP (no inverse): a point z (3) is lifted
to the condition width, added to C_m, and passed through BatchNorm -> ReLU -> Linear layers
C -> 1024 -> 512 -> 256 -> 128 -> 3 and a final tanh (the authors' ``AtlasNet`` module).
Without phi^-1 the implicit is obtained by mesh containment: the mapped sphere mesh of each
primitive labels points with ``npkernels.inside_mesh`` (winding numbers), and g_m = -r inside,
+r outside (the authors' construction). g is piecewise constant, so its gradient is zero: the
volume losses learn only through the euclidean implicit, and the normal loss is unavailable.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from npkernels import Affine, UnionImplicit, inside_mesh

from ..geometry import icosphere

WIDTHS = (1024, 512, 256, 128)


class AtlasNetSphere(nn.Module):
    """Sphere -> world MLP per primitive; cond C: (B, M, cond_dims)."""

    def __init__(self, cond_dims: int = 512, radius: float = 0.25, mesh_vertices: int = 200):
        super().__init__()
        self.kernel_backend = "auto"
        self.radius = radius
        self.mesh_vertices = mesh_vertices
        self.map_to_feature_dims = nn.Conv1d(3, cond_dims, 1)
        dims = (cond_dims, *WIDTHS, 3)
        self.batch_norms = nn.ModuleList(nn.BatchNorm1d(a) for a in dims[:-1])
        self.linear_layers = nn.ModuleList(nn.Conv1d(a, b, 1) for a, b in zip(dims, dims[1:]))
        self._trained_stats: list | None = None  # BatchNorm batch statistics of the last training forward

    def affine(self, cond: Tensor) -> Affine:
        """Identity affine (the MLP places the primitive itself)."""
        B, M, _ = cond.shape
        eye = torch.eye(3, dtype=cond.dtype, device=cond.device).expand(B, M, 3, 3)
        return Affine(cond.new_ones(B, M, 3), eye, cond.new_zeros(B, M, 3))

    def forward(self, z: Tensor, cond: Tensor, affine: Affine | None = None) -> Tensor:
        """Sphere -> world: z (B, S, M, 3) -> (B, S, M, 3) in (-1, 1).

        In training mode BatchNorm normalises with the batch's statistics (and updates the running
        ones), as nn.BatchNorm1d; those statistics are kept so that ``implicit`` meshes exactly the
        surface this call produced.
        """
        stats = []
        out = self._map(z, cond, stats)
        self._trained_stats = stats if self.training else None
        return out

    def _map(self, z: Tensor, cond: Tensor, stats: list | None = None, fixed: list | None = None) -> Tensor:
        """The MLP; BatchNorm uses ``fixed`` [(mean, var), ...] if given (no buffer touched), else the
        module's mode; the batch statistics used are appended to ``stats``."""
        B, S, M, _ = z.shape
        x = z.permute(0, 2, 3, 1).reshape(B * M, 3, S)
        x = self.map_to_feature_dims(x) + cond.reshape(B * M, -1, 1)
        for k, (bn, linear) in enumerate(zip(self.batch_norms, self.linear_layers)):
            if fixed is not None:
                mean, var = fixed[k]
                x = F.batch_norm(x, mean, var, bn.weight, bn.bias, training=False, eps=bn.eps)
            else:
                if stats is not None and self.training:
                    stats.append((x.detach().mean((0, 2)), x.detach().var((0, 2), unbiased=False)))
                x = bn(x)
            x = linear(x.relu())
        return torch.tanh(x.view(B, M, 3, S).permute(0, 3, 1, 2))

    def inverse(self, x: Tensor, cond: Tensor, affine: Affine | None = None, owner: Tensor | None = None):
        raise ValueError("the AtlasNet-sphere network has no inverse map (and its implicit has no gradient): "
                         "set loss.weights.normal=0 and loss.volume_implicit=euclidean")

    @torch.no_grad()
    def implicit(self, x: Tensor, cond: Tensor, affine: Affine, radius: float, per_primitive: bool = False
                 ) -> UnionImplicit:
        """g_m(x) = -r inside the mapped sphere mesh of primitive m, +r outside; x (B, N, 3).

        The mesh is the icosphere mapped with the BatchNorm statistics of the last training forward
        (the trained surface; running statistics in eval mode); no BatchNorm state is changed.
        """
        B, N, _ = x.shape
        M = cond.shape[1]
        v, faces = icosphere(self.mesh_vertices, self.radius, device=cond.device, dtype=cond.dtype)
        fixed = (self._trained_stats if self.training and self._trained_stats is not None
                 else [(bn.running_mean, bn.running_var) for bn in self.batch_norms])
        verts = self._map(v[None, :, None].expand(B, -1, M, -1), cond, fixed=fixed)  # (B, V, M, 3)
        g = x.new_empty(B, N, M)
        for b in range(B):
            for m in range(M):
                inside = inside_mesh(verts[b, :, m], faces, x[b]) if N else torch.zeros(0, dtype=torch.bool)
                g[b, :, m] = torch.where(inside.to(x.device), -radius, radius)
        value, argmin = g.min(-1)
        return UnionImplicit(value, argmin, g if per_primitive else None)
