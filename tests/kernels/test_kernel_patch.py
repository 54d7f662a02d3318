"""accelerate() / restore() on a tiny module laid out like the authors' SimpleNVP and on a module
with a ``kernel_backend`` attribute: same outputs and gradients, methods restored exactly."""

from __future__ import annotations

import pytest
import torch
from kernel_cases import AuthorsProjection, AuthorsSimpleNVP, assert_close_named
from torch import nn

from npkernels import _dispatch
from npkernels.patch import accelerate, restore

pytestmark = pytest.mark.triton


class _Ours(nn.Module):
    def __init__(self):
        super().__init__()
        self.kernel_backend = "auto"


class _Model(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.nvp = AuthorsSimpleNVP(4, 12, 16, AuthorsProjection(16, 8))
        self.ours = _Ours()


def _inputs(B=2, N=11, M=3, C=12):
    gen = torch.Generator().manual_seed(4)
    F = torch.randn(B, M, C, generator=gen)
    z = 0.25 * nn.functional.normalize(torch.randn(B, N, M, 3, generator=gen), dim=-1)
    y = (torch.rand(B, N, 1, 3, generator=gen) - 0.5).expand(-1, -1, M, -1)
    return F, z, y


def test_accelerate_and_restore(monkeypatch):
    if not (torch.cuda.is_available() or _dispatch.interpreter_enabled()):
        pytest.skip("Triton needs CUDA or TRITON_INTERPRET=1")
    kt = pytest.importorskip("npkernels.coupling._triton")
    launches = []
    real_launch = kt.launch
    monkeypatch.setattr(kt, "launch", lambda *a, **k: launches.append(k["inverse"]) or real_launch(*a, **k))
    model = _Model()
    F, z, y = _inputs()
    y_world = model.nvp(F, z)
    x_sphere, ldj = model.nvp.inverse(F, y)
    (gF,) = torch.autograd.grad((x_sphere**2).sum(), model.nvp.layers[0].map_s[2].weight)

    assert accelerate(model, backend="triton") is model
    assert "forward" in model.nvp.__dict__ and model.ours.kernel_backend == "triton"
    assert_close_named("forward", model.nvp(F, z), y_world, rtol=1e-4, atol=1e-5)
    x2, ldj2 = model.nvp.inverse(F, y)
    assert_close_named("inverse", x2, x_sphere, rtol=1e-4, atol=1e-5)
    assert_close_named("ldj", ldj2, ldj, rtol=1e-4, atol=1e-5)
    (gF2,) = torch.autograd.grad((x2**2).sum(), model.nvp.layers[0].map_s[2].weight)
    assert_close_named("grad", gF2, gF, rtol=1e-4, atol=1e-5)
    assert launches == [False, True]  # forward, inverse; the backward recomputes by reference

    assert restore(model) is model
    assert "forward" not in model.nvp.__dict__ and "inverse" not in model.nvp.__dict__
    assert model.ours.kernel_backend == "auto"
    assert torch.equal(model.nvp(F, z), y_world)


def test_accelerate_twice_then_restore_once():
    model = _Model()
    accelerate(model, backend="auto")
    accelerate(model, backend="auto")
    assert model.ours.kernel_backend == "auto" and "inverse" in model.nvp.__dict__
    restore(model)
    assert "inverse" not in model.nvp.__dict__
    assert restore(model) is model  # restoring an unpatched model is a no-op


def test_bad_backend():
    with pytest.raises(ValueError):
        accelerate(_Model(), backend="reference")


def test_our_model_gets_kernel_backend():
    models = pytest.importorskip("neural_parts.models")
    model = models.NeuralParts(n_primitives=2, feature_size=8, hidden_size=16, proj_dims=8, encoder="latent",
                               n_shapes=2)
    accelerate(model, backend="auto")
    assert model.kernel_backend == "auto" and "forward" not in model.invertible_network.__dict__
    restore(model)
    model.kernel_backend = "reference"
    accelerate(model, backend="auto")
    assert model.invertible_network.kernel_backend == "auto"
    accelerate(model, backend="auto")  # accelerating again does not stack: restore goes back to "reference"
    restore(model)
    assert model.kernel_backend == "reference" and model.invertible_network.kernel_backend == "reference"
