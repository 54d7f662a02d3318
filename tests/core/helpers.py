"""Small builders shared by the core tests."""
from __future__ import annotations

import torch

from npkernels import Affine, CouplingWeights
from npkernels.coupling.affine import quaternion_to_matrix
from neural_parts.models.invertible import ConditionalNVP


def tiny_network(cond_dims=6, hidden=16, proj=8, layers=4, dtype=torch.float32, seed=0) -> ConditionalNVP:
    torch.manual_seed(seed)
    net = ConditionalNVP(cond_dims, hidden, proj, layers).to(dtype)
    with torch.no_grad():  # larger last layers so s and t are far from zero
        for layer in net.layers:
            layer.map_s[4].weight.mul_(3)
            layer.map_t[4].weight.mul_(3)
    return net


def random_inputs(B, N, M, cond_dims=6, dtype=torch.float32, seed=1):
    g = torch.Generator().manual_seed(seed)
    cond = torch.randn(B, M, cond_dims, generator=g, dtype=dtype)
    R = quaternion_to_matrix(torch.randn(B, M, 4, generator=g, dtype=dtype))
    affine = Affine(torch.rand(B, M, 3, generator=g, dtype=dtype) + 0.5, R,
                    0.2 * torch.randn(B, M, 3, generator=g, dtype=dtype))
    x = 0.5 * torch.randn(B, N, 3, generator=g, dtype=dtype)
    return x, cond, affine


def weights_of(net) -> CouplingWeights:
    return CouplingWeights.from_module(net)
