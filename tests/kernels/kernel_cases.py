"""Random inputs and comparison helpers shared by the kernel tests (not a test module)."""

from __future__ import annotations

import torch
from torch import nn

from npkernels.coupling import Affine, CouplingWeights, LayerWeights
from npkernels.coupling.affine import quaternion_to_matrix

NARROW = {"C": 24, "H": 32, "HP": 16, "P": 16}
PRODUCTION = {"C": 512, "H": 256, "HP": 256, "P": 128}
FP32_TOL = {"rtol": 2e-4, "atol": 2e-5}  # fp32 kernel vs fp32 reference (IEEE dots in the interpreter)


def make_weights(
    C: int, H: int, HP: int, P: int, L: int = 4, scale: float = 0.5, seed: int = 0, dtype=torch.float32
) -> CouplingWeights:
    """Random weights (PyTorch-Linear-like magnitudes times ``scale``), leaves with requires_grad.

    Masks keep two coordinates and transform the cycle x, y, z, x (one per layer).
    """
    gen = torch.Generator().manual_seed(seed)

    def lin(out_f, in_f):
        bound = scale / in_f**0.5
        w = (torch.rand(out_f, in_f, generator=gen, dtype=dtype) * 2 - 1) * bound
        b = (torch.rand(out_f, generator=gen, dtype=dtype) * 2 - 1) * bound
        return w.requires_grad_(), b.requires_grad_()

    layers = []
    for i in range(L):
        mask = torch.ones(3, dtype=dtype)
        mask[i % 3] = 0
        s = (*lin(H, C + P), *lin(H, H), *lin(3, H))
        t = (*lin(H, C + P), *lin(H, H), *lin(3, H))
        layers.append(LayerWeights(mask, *s, *t))
    return CouplingWeights(*lin(HP, 3), *lin(P, HP), tuple(layers))


def make_inputs(B: int, N: int, M: int, C: int, seed: int = 1, dtype=torch.float32):
    """(x (B, N, 3), cond (B, M, C), Affine) with requires_grad; x roughly in the unit box."""
    gen = torch.Generator().manual_seed(seed)
    x = (torch.rand(B, N, 3, generator=gen, dtype=dtype) - 0.5).requires_grad_()
    cond = torch.randn(B, M, C, generator=gen, dtype=dtype).requires_grad_()
    scale = (torch.rand(B, M, 3, generator=gen, dtype=dtype) + 1.0).requires_grad_()
    rot = quaternion_to_matrix(torch.randn(B, M, 4, generator=gen, dtype=dtype)).detach().requires_grad_()
    trans = (torch.randn(B, M, 3, generator=gen, dtype=dtype) * 0.1).requires_grad_()
    return x, cond, Affine(scale, rot, trans)


def leaves(x, cond, weights: CouplingWeights, affine: Affine) -> dict[str, torch.Tensor]:
    """Every differentiable input by name (masks excluded)."""
    out = {
        "x": x,
        "cond": cond,
        "scale": affine.scale,
        "rotation": affine.rotation,
        "translation": affine.translation,
        "proj_w1": weights.proj_w1,
        "proj_b1": weights.proj_b1,
        "proj_w2": weights.proj_w2,
        "proj_b2": weights.proj_b2,
    }
    for i, lw in enumerate(weights.layers):
        for name, t in lw._asdict().items():
            if name != "mask":
                out[f"layers[{i}].{name}"] = t
    return out


def grads(outputs, upstream, named: dict[str, torch.Tensor], **kw) -> dict[str, torch.Tensor]:
    """Gradients of sum(out * g) w.r.t. every named leaf (zeros where unused)."""
    names = [k for k, v in named.items() if v.requires_grad]
    res = torch.autograd.grad(outputs, [named[k] for k in names], upstream, allow_unused=True, **kw)
    return {k: (g if g is not None else torch.zeros_like(named[k])) for k, g in zip(names, res)}


def assert_close_named(name: str, out: torch.Tensor, ref: torch.Tensor, rtol: float, atol: float) -> None:
    """assert_close whose failure message names the tensor and scales atol by the reference's size."""
    scale = float(ref.detach().abs().max()) if ref.numel() else 1.0
    torch.testing.assert_close(out, ref, rtol=rtol, atol=atol * max(1.0, scale), msg=lambda m: f"{name}: {m}")


# --- a minimal copy of the authors' SimpleNVP layout (paschalidoud/neural_parts, models/simple_nvp.py) ---


class AuthorsProjection(nn.Module):
    def __init__(self, hidden: int, proj_dims: int):
        super().__init__()
        self.proj_dims = proj_dims
        self.proj = nn.Sequential(nn.Linear(3, hidden), nn.ReLU(), nn.Linear(hidden, proj_dims))

    def forward(self, x):
        return self.proj(x)


class AuthorsCouplingLayer(nn.Module):
    def __init__(self, map_s, map_t, projection, mask):
        super().__init__()
        self.map_s, self.map_t, self.projection = map_s, map_t, projection
        self.register_buffer("mask", mask)

    def forward(self, F, y):
        y1 = y * self.mask
        F_y1 = torch.cat([F, self.projection(y1)], dim=-1)
        s, t = self.map_s(F_y1), self.map_t(F_y1)
        return y1 + (1 - self.mask) * ((y - t) * torch.exp(-s)), (-s).sum(-1)

    def inverse(self, F, x):
        x1 = x * self.mask
        F_x1 = torch.cat([F, self.projection(x1)], dim=-1)
        s, t = self.map_s(F_x1), self.map_t(F_x1)
        return x1 + (1 - self.mask) * (x * torch.exp(s) + t), s.sum(-1)


def _authors_quaternion_matrix(q):
    w, x, y, z = q.unbind(-1)
    rows = [
        1 - 2 * (y * y + z * z),
        2 * (x * y - z * w),
        2 * (x * z + y * w),
        2 * (x * y + z * w),
        1 - 2 * (x * x + z * z),
        2 * (y * z - x * w),
        2 * (x * z - y * w),
        2 * (y * z + x * w),
        1 - 2 * (x * x + y * y),
    ]
    return torch.stack(rows, -1).reshape(q.shape[:-1] + (3, 3))


class AuthorsSimpleNVP(nn.Module):
    """forward(F (B, M, C), x (B, N, M, 3)) -> y; inverse(F, y) -> (x, ldj); quaternions w first."""

    def __init__(self, n_layers: int, feature_dims: int, hidden_size: int, projection: AuthorsProjection):
        super().__init__()
        self.layers = nn.ModuleList()
        for i in range(n_layers):
            mask = torch.ones(3)
            mask[i % 3] = 0

            def mlp(clamp):
                mods = [
                    nn.Linear(projection.proj_dims + feature_dims, hidden_size),
                    nn.ReLU(),
                    nn.Linear(hidden_size, hidden_size),
                    nn.ReLU(),
                    nn.Linear(hidden_size, 3),
                ]
                return nn.Sequential(*mods, *([nn.Hardtanh(-10, 10)] if clamp else []))

            self.layers.append(
                AuthorsCouplingLayer(mlp(True), mlp(False), projection, mask[None, None, None])
            )

        def head(k):
            return nn.Sequential(nn.Linear(feature_dims, hidden_size), nn.ReLU(), nn.Linear(hidden_size, k))

        self.scales, self.rotations, self.translations = head(3), head(4), head(3)

    def _affine(self, F):
        sigma = (torch.nn.functional.elu(self.scales(F)) + 1)[:, None]
        q = self.rotations(F)
        q = q / torch.sqrt(torch.square(q).sum(-1, keepdim=True))
        return sigma, _authors_quaternion_matrix(q[:, None]), self.translations(F)[:, None]

    def forward(self, F, x):
        sigma, R, t = self._affine(F)
        F = F[:, None].expand(-1, x.shape[1], -1, -1)
        y = x
        for layer in self.layers:
            y, _ = layer(F, y)
        return torch.matmul((y / sigma).unsqueeze(-2), R).squeeze(-2) + t

    def inverse(self, F, y):
        sigma, R, t = self._affine(F)
        F = F[:, None].expand(-1, y.shape[1], -1, -1)
        x = torch.matmul((y - t).unsqueeze(-2), R.transpose(-2, -1)).squeeze(-2) * sigma
        ldj = 0
        for layer in reversed(self.layers):
            x, ldji = layer.inverse(F, x)
            ldj = ldj + ldji
        return x, ldj
