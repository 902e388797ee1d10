"""Tests of mflib.nets: the fully connected network and its parametrisations."""

from __future__ import annotations

import math

import pytest
import torch
from torch.func import functional_call

from mflib import nets
from mflib.activations import ACTIVATIONS
from mflib.nets import MLP

F64 = torch.float64




def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _x(n=5, d=3, seed=1):
    return torch.randn(n, d, generator=_gen(seed), dtype=F64)


def test_shapes_dtype_and_parameters():
    net = MLP(3, [16, 8], bias_std=0.1, generator=_gen())
    x = _x()
    y = net(x)
    assert y.shape == (5,) and y.dtype == F64
    assert net(x[0]).shape == ()
    assert torch.allclose(net(x[0]), y[0])
    params = dict(net.named_parameters())
    assert all(isinstance(p, torch.nn.Parameter) for p in params.values())
    assert [tuple(p.shape) for p in net.weights] == [(3, 16), (16, 8), (8, 1)]
    assert [tuple(p.shape) for p in net.biases] == [(16,), (8,), (1,)]
    assert len(MLP(3, 4, generator=_gen()).biases) == 0  # no bias parameters when bias_std = 0


def test_float32_and_device():
    net = MLP(3, [4], dtype=torch.float32, device="cpu", generator=_gen())
    assert all(p.dtype == torch.float32 for p in net.parameters())
    assert net(_x().float()).dtype == torch.float32


def test_seeded_initialisation_is_reproducible():
    a, b = MLP(3, [8], generator=_gen(5)), MLP(3, [8], generator=_gen(5))
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)
    c = MLP(3, [8], generator=_gen(6))
    assert not torch.equal(a.weights[0], c.weights[0])


def test_ntk_layer_formula():
    net = MLP(3, [7], activation="erf", weight_std=1.5, bias_std=0.3, generator=_gen())
    x = _x()
    W0, W1 = net.weights
    b0, b1 = net.biases
    h = torch.erf(1.5 / math.sqrt(3) * x @ W0 + 0.3 * b0)
    want = (1.5 / math.sqrt(7) * h @ W1 + 0.3 * b1).squeeze(-1)
    assert torch.allclose(net(x), want, rtol=1e-14)


def test_standard_and_ntk_agree_at_init_but_not_in_gradient():
    kw = dict(activation="tanh", weight_std=1.3, bias_std=0.2)
    ntk = MLP(3, [32, 32], parametrization="ntk", generator=_gen(2), **kw)
    std = MLP(3, [32, 32], parametrization="standard", generator=_gen(2), **kw)
    x = _x()
    assert torch.allclose(ntk(x), std(x), rtol=1e-12)
    g_ntk = torch.autograd.grad(ntk(x).sum(), ntk.weights[1])[0]
    g_std = torch.autograd.grad(std(x).sum(), std.weights[1])[0]
    # d z / d W = (w / sqrt(n)) x in the NTK parametrisation, x in the standard one
    assert torch.allclose(g_ntk, g_std * 1.3 / math.sqrt(32), rtol=1e-10)


def test_mean_field_formula():
    m = 50
    net = MLP(3, m, parametrization="mean_field", activation="relu", bias_std=0.5,
              alpha=2.0, generator=_gen(3))
    x = _x()
    w, a = net.weights[0], net.weights[1].squeeze(-1)
    b, c = net.biases[0], net.biases[1]
    want = 2.0 * ((torch.relu(x @ w + b) @ a) / m + c)
    assert torch.allclose(net(x), want, rtol=1e-14)
    with pytest.raises(ValueError, match="widths"):
        MLP(3, [4, 4], parametrization="mean_field")


def test_alpha_scales_output():
    x = _x()
    one = MLP(3, [8], generator=_gen(4))
    ten = MLP(3, [8], alpha=10.0, generator=_gen(4))
    assert torch.allclose(ten(x), 10 * one(x), rtol=1e-14)


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_registry_derivatives_match_autograd(name):
    phi, dphi = ACTIVATIONS[name].fn, ACTIVATIONS[name].derivative
    x = torch.linspace(-3, 3, 61, dtype=F64).requires_grad_()
    (g,) = torch.autograd.grad(phi(x).sum(), x)
    mask = x.detach() != 0  # relu'(0) is a convention
    assert torch.allclose(dphi(x.detach())[mask], g[mask], atol=1e-13)


def test_callable_and_pair_activations():
    key, phi, dphi = nets.resolve_activation(torch.sin)
    assert key is None
    x = torch.linspace(-2, 2, 9, dtype=F64)
    assert torch.allclose(dphi(x), torch.cos(x), atol=1e-14)
    key, phi, dphi = nets.resolve_activation((torch.sin, torch.cos))
    assert dphi is torch.cos
    net = MLP(3, [8], activation=torch.sin, generator=_gen())
    assert torch.isfinite(net(_x())).all()


def test_torch_optim_and_functional_call():
    net = MLP(3, [16], bias_std=0.1, generator=_gen(7))
    x, y = _x(), torch.ones(5, dtype=F64)
    params = {k: v.detach().clone() for k, v in net.named_parameters()}
    assert torch.equal(functional_call(net, params, (x,)), net(x))
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    losses = []
    for _ in range(20):
        opt.zero_grad()
        loss = ((net(x) - y) ** 2).mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize("args,kwargs,exc,word", [
    ((0, [4]), {}, ValueError, "d_in"),
    ((2.0, [4]), {}, TypeError, "d_in"),
    ((2, [0]), {}, ValueError, "widths"),
    ((2, "ab"), {}, TypeError, "widths"),
    ((2, 3.5), {}, TypeError, "widths"),
    ((2, [4]), dict(activation="swish"), ValueError, "activation"),
    ((2, [4]), dict(activation=1), TypeError, "activation"),
    ((2, [4]), dict(parametrization="mup"), ValueError, "parametrization"),
    ((2, [4]), dict(parametrization=None), TypeError, "parametrization"),
    ((2, [4]), dict(weight_std=-1.0), ValueError, "weight_std"),
    ((2, [4]), dict(bias_std=-1.0), ValueError, "bias_std"),
    ((2, [4]), dict(alpha=0.0), ValueError, "alpha"),
    ((2, [4]), dict(generator=0), TypeError, "generator"),
    ((2, [4]), dict(dtype=torch.int64), TypeError, "dtype"),
])
def test_bad_arguments(args, kwargs, exc, word):
    with pytest.raises(exc, match=word):
        MLP(*args, **kwargs)


def test_bad_forward_input():
    net = MLP(3, [4], generator=_gen())
    with pytest.raises(ValueError, match="x"):
        net(_x(5, 2))
    with pytest.raises(TypeError, match="x"):
        net([[1.0, 2.0, 3.0]])
