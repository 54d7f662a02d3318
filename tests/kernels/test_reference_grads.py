"""gradcheck / gradgradcheck of the pure-PyTorch references in float64 at tiny sizes: the oracle the
kernels' gradients are compared against must itself be right (to second order for coupling and G)."""

from __future__ import annotations

import pytest
import torch
from kernel_cases import make_inputs, make_weights
from torch.autograd import gradcheck, gradgradcheck

from npkernels.coupling import Affine, CouplingWeights, LayerWeights
from npkernels.coupling import reference as coupling
from npkernels.implicit import reference as implicit
from npkernels.knn import reference as knn

pytestmark = pytest.mark.slow
F64 = torch.float64


def _flat_case(B=1, N=3, M=2, L=2):
    w = make_weights(C=3, H=4, HP=4, P=3, L=L, scale=1.0, dtype=F64)
    x, cond, affine = make_inputs(B, N, M, 3, dtype=F64)
    masks = [lw.mask for lw in w.layers]
    flat = [x, cond, *affine, *w[:4]] + [t for lw in w.layers for t in lw[1:]]
    return flat, masks


def _unflatten(flat, masks):
    x, cond, s, r, t, p1, pb1, p2, pb2 = flat[:9]
    rest, layers = flat[9:], []
    for i, mask in enumerate(masks):
        layers.append(LayerWeights(mask, *rest[12 * i : 12 * (i + 1)]))
    return x, cond, CouplingWeights(p1, pb1, p2, pb2, tuple(layers)), Affine(s, r, t)


@pytest.mark.parametrize("mode", ["inverse", "inverse-owner", "inverse-log-det", "forward"])
def test_coupling_reference(mode):
    flat, masks = _flat_case()
    owner = torch.tensor([[1, 0, 1]])

    def fn(*flat):
        x, cond, w, affine = _unflatten(flat, masks)
        if mode == "forward":
            return coupling.coupling_forward(
                x[:, :, None].expand(-1, -1, 2, -1), cond, w, affine, return_log_det=True
            )
        if mode == "inverse-owner":
            return coupling.coupling_inverse(x, cond, w, affine, owner=owner)
        return coupling.coupling_inverse(x, cond, w, affine, return_log_det=mode == "inverse-log-det")

    assert gradcheck(fn, flat)
    assert gradgradcheck(fn, flat)


def test_implicit_reference():
    flat, masks = _flat_case(N=4, M=3)

    def fn(*flat):
        x, cond, w, affine = _unflatten(flat, masks)
        out = implicit.implicit_union(x, cond, w, affine, radius=0.25, per_primitive=True)
        return out.value, out.per_primitive

    assert gradcheck(fn, flat)
    assert gradgradcheck(fn, flat)


@pytest.mark.parametrize("masked", [False, True])
def test_knn_reference(masked):
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2, 6, 3, generator=gen, dtype=F64, requires_grad=True)
    y = torch.rand(2, 5, 3, generator=gen, dtype=F64, requires_grad=True)
    xm = torch.tensor([[1, 1, 0, 1, 1, 1], [1, 0, 1, 1, 1, 1]], dtype=torch.bool) if masked else None
    ym = torch.tensor([[1, 0, 1, 1, 1], [1, 1, 1, 0, 1]], dtype=torch.bool) if masked else None

    def fn(x, y):
        out = knn.knn(x, y, x_mask=xm, y_mask=ym)
        return out.dist_xy, out.dist_yx

    assert gradcheck(fn, (x, y))
    assert gradgradcheck(fn, (x, y))


@pytest.mark.parametrize("owner", [False, True], ids=["all-primitives", "owner"])
def test_log_det_is_the_jacobian_log_determinant(owner):
    """log|det d(phi^-1)/dx| from torch.func.jacrev in float64, per (point, primitive); the forward
    map's log-det at z = phi^-1(x) is its negative (the Jacobians are inverse matrices)."""
    w = make_weights(C=5, H=8, HP=8, P=4, scale=2.0, dtype=F64)  # s well away from 0
    x, cond, affine = make_inputs(1, 4, 3, 5, dtype=F64)
    idx = torch.tensor([[2, 0, 1, 2]]) if owner else None
    _, ld = coupling.coupling_inverse(x, cond, w, affine, owner=idx, return_log_det=True)

    def one(point, m):
        sel = torch.tensor([[m]]) if owner else None
        z = coupling.coupling_inverse(point.view(1, 1, 3), cond, w, affine, owner=sel)
        return z.reshape(-1, 3)[0 if owner else m]

    for n in range(4):
        for m in ([int(idx[0, n])] if owner else range(3)):
            jac = torch.func.jacrev(one)(x[0, n].detach(), m)
            want = torch.linalg.slogdet(jac).logabsdet
            got = ld[0, n] if owner else ld[0, n, m]
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    if not owner:
        z = coupling.coupling_inverse(x, cond, w, affine)
        _, ld_fwd = coupling.coupling_forward(z, cond, w, affine, return_log_det=True)
        torch.testing.assert_close(ld_fwd, -ld, rtol=1e-10, atol=1e-10)
