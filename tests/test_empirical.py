"""Tests of mflib.empirical: empirical NTK/NNGP, exactness and convergence rate."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from mflib import empirical as E
from mflib import kernels as K
from mflib.nets import MLP
from mflib.stats import fit_slope

F64 = torch.float64




def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _x(n=6, d=3, seed=1):
    return torch.randn(n, d, generator=_gen(seed), dtype=F64)


def _loop_ntk(model, x1, x2):
    """The straightforward reference: one autograd call per sample."""
    def grads(x):
        rows = []
        for xi in x:
            g = torch.autograd.grad(model(xi[None]).sum(), list(model.parameters()))
            rows.append(torch.cat([gi.reshape(-1) for gi in g]))
        return torch.stack(rows)
    return grads(x1) @ grads(x2).T


@pytest.mark.parametrize("param", ["ntk", "standard", "mean_field"])
def test_empirical_ntk_equals_per_sample_autograd(param):
    widths = [12] if param == "mean_field" else [12, 9]
    net = MLP(3, widths, activation="tanh", bias_std=0.4, parametrization=param, generator=_gen(2))
    x1, x2 = _x(6, 3, 3), _x(4, 3, 4)
    assert torch.allclose(E.empirical_ntk(net, x1, x2), _loop_ntk(net, x1, x2), rtol=1e-12)
    k = E.empirical_ntk(net, x1)
    assert torch.equal(k, k.T)
    assert torch.allclose(k, _loop_ntk(net, x1, x1), rtol=1e-12)
    assert torch.allclose(E.empirical_ntk(net, x1, chunk_size=2, method="jacobian"), k, rtol=1e-13)


def _rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


_CASES = [(param, bias, act, widths)
          for param in ("ntk", "standard")
          for bias in (0.0, 0.4)
          for act in ("relu", "erf", "tanh", "identity", torch.sin)
          for widths in ([], [7], [8, 5], [6, 5, 4])]


@pytest.mark.parametrize("param,bias,act,widths", _CASES)
def test_closed_form_ntk_agrees_with_generic_path(param, bias, act, widths):
    g = _gen(100 * (param == "ntk") + 10 * len(widths) + (bias > 0))
    net = MLP(3, widths, activation=act, bias_std=bias, weight_std=1.3, parametrization=param,
              alpha=1.7, generator=g)
    assert E._is_plain_mlp(net)
    x1, x2 = _x(7, 3, 20), _x(5, 3, 21)
    for b in (x2, None):
        closed = E.empirical_ntk(net, x1, b)                 # dispatched to the closed form
        assert torch.equal(closed, E.empirical_ntk(net, x1, b, method="closed_form"))
        generic = E.empirical_ntk(net, x1, b, method="jacobian")
        vp = E.empirical_ntk(net, x1, b, method="ntk_vp", chunk_size=3)
        assert closed.shape == generic.shape == (7, 7 if b is None else 5)
        assert closed.dtype == F64
        assert _rel(closed, generic) < 1e-12
        assert _rel(vp, generic) < 1e-12
    k = E.empirical_ntk(net, x1)
    assert torch.equal(k, k.T)
    # x2 equal to x1 but passed explicitly: the same kernel up to rounding
    assert _rel(E.empirical_ntk(net, x1, x1.clone()), k) < 1e-12


def test_closed_form_ntk_mean_field_and_frozen_parameters():
    net = MLP(3, [9], activation="tanh", bias_std=0.5, parametrization="mean_field", generator=_gen(30))
    x1, x2 = _x(6, 3, 31), _x(4, 3, 32)
    assert _rel(E.empirical_ntk(net, x1, x2), E.empirical_ntk(net, x1, x2, method="jacobian")) < 1e-12
    # only the parameters with requires_grad count, as in the generic path
    net.weights[0].requires_grad_(False)
    net.biases[1].requires_grad_(False)
    assert _rel(E.empirical_ntk(net, x1, x2), E.empirical_ntk(net, x1, x2, method="jacobian")) < 1e-12
    for p in net.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="trainable"):
        E.empirical_ntk(net, x1)


def test_closed_form_ntk_larger_network_float32():
    net = MLP(10, [64, 64], bias_std=0.1, generator=_gen(40), dtype=torch.float32)
    x = torch.randn(40, 10, generator=_gen(41))
    closed = E.empirical_ntk(net, x)
    assert closed.dtype == torch.float32
    assert _rel(closed, E.empirical_ntk(net, x, method="jacobian")) < 1e-5
    net64 = MLP(10, [64, 64], bias_std=0.1, generator=_gen(40))
    assert _rel(E.empirical_ntk(net64, x.double()), E.empirical_ntk(net64, x.double(), method="jacobian")) < 1e-12


def test_auto_dispatch_falls_back_for_modified_mlps():
    class Doubled(MLP):
        def forward(self, x):
            return 2 * super().forward(x)

    net = Doubled(3, [6], generator=_gen(50))
    assert not E._is_plain_mlp(net)
    x = _x(5)
    k = E.empirical_ntk(net, x)
    assert torch.allclose(k, _loop_ntk(net, x, x), rtol=1e-12)
    plain = MLP(3, [6], generator=_gen(50))
    handle = plain.register_forward_hook(lambda mod, inp, out: 3 * out)
    assert not E._is_plain_mlp(plain)
    assert torch.allclose(E.empirical_ntk(plain, x), _loop_ntk(plain, x, x), rtol=1e-12)
    handle.remove()
    assert E._is_plain_mlp(plain)

    class Double(torch.nn.Module):
        def forward(self, w):
            return 2 * w

    torch.nn.utils.parametrize.register_parametrization(plain.weights, "0", Double())
    assert not E._is_plain_mlp(plain)
    assert torch.allclose(E.empirical_ntk(plain, x), _loop_ntk(plain, x, x), rtol=1e-12)


def test_auto_switches_to_ntk_vector_products_for_large_jacobians(monkeypatch):
    torch.manual_seed(0)
    seq = torch.nn.Sequential(torch.nn.Linear(3, 10), torch.nn.Tanh(), torch.nn.Linear(10, 1)).double()
    x = _x(6)
    calls = []
    real = E._ntk_vp
    monkeypatch.setattr(E, "_ntk_vp", lambda *a: calls.append(a[-1]) or real(*a))
    monkeypatch.setattr(E, "_JACOBIAN_LIMIT", 100)        # P = 51: 6 rows are too many
    k = E.empirical_ntk(seq, x)
    assert calls == [1]                                    # chunk of 100 // 51 rows
    assert torch.allclose(k, _loop_ntk(seq, x, x), rtol=1e-12)


@pytest.mark.gpu
def test_closed_form_ntk_on_cuda():
    net = MLP(5, [32, 32], bias_std=0.2, generator=_gen(60), device="cuda")
    x = _x(20, 5, 61).cuda()
    closed = E.empirical_ntk(net, x)
    assert closed.is_cuda
    assert _rel(closed, E.empirical_ntk(net, x, method="jacobian")) < 1e-12
    cpu = MLP(5, [32, 32], bias_std=0.2, generator=_gen(60))
    assert _rel(closed.cpu(), E.empirical_ntk(cpu, x.cpu())) < 1e-12


def test_empirical_ntk_of_any_module():
    torch.manual_seed(0)
    seq = torch.nn.Sequential(torch.nn.Linear(3, 10), torch.nn.Tanh(), torch.nn.Linear(10, 1)).double()
    x = _x(5)
    assert torch.allclose(E.empirical_ntk(seq, x), _loop_ntk(seq, x, x), rtol=1e-12)
    jac = E.jacobian(seq, x)
    assert set(jac) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    assert jac["0.weight"].shape == (5, 10, 3)


def test_ntk_and_feature_nngp_converge_at_rate_one_over_sqrt_width():
    """Depth one, NTK parametrisation: both kernels are averages of m i.i.d. terms,
    so the mean squared relative Frobenius error is exactly C/m (slope -1/2 for its root)."""
    x = _x(8, 3, 5)
    widths = [64, 256, 1024, 4096, 16384]
    kw = dict(activation="relu", bias_std=0.3, weight_std=1.2)
    want_ntk = K.ntk(x, depth=1, **kw)
    want_nngp = K.nngp(x, depth=1, **kw)
    err_ntk, err_nngp = [], []
    for m in widths:
        e1, e2 = [], []
        for s in range(8):
            net = MLP(3, [m], generator=_gen(100 * m + s), **kw)
            e1.append(float(torch.linalg.matrix_norm(E.empirical_ntk(net, x) - want_ntk)
                            / torch.linalg.matrix_norm(want_ntk)))
            e2.append(float(torch.linalg.matrix_norm(E.feature_nngp(net, x) - want_nngp)
                            / torch.linalg.matrix_norm(want_nngp)))
        err_ntk.append(np.sqrt(np.mean(np.square(e1))))
        err_nngp.append(np.sqrt(np.mean(np.square(e2))))
    assert -0.7 < fit_slope(widths, err_ntk) < -0.3, err_ntk
    assert -0.7 < fit_slope(widths, err_nngp) < -0.3, err_nngp
    assert err_ntk[-1] < 0.03


def test_empirical_ntk_converges_for_deeper_erf_network():
    x = _x(6, 3, 6)
    kw = dict(activation="erf", bias_std=0.2)
    want = K.ntk(x, depth=2, **kw)
    errs = []
    for m in (32, 512):
        net = MLP(3, [m, m], generator=_gen(m), **kw)
        errs.append(float(torch.linalg.matrix_norm(E.empirical_ntk(net, x) - want)
                          / torch.linalg.matrix_norm(want)))
    assert errs[1] < errs[0] / 2 and errs[1] < 0.1, errs


def test_empirical_nngp_over_initialisations():
    x = _x(5, 3, 7)
    factory = functools.partial(MLP, 3, [128], activation="erf", bias_std=0.3)
    n_models = 1500
    est = E.empirical_nngp(factory, x, n_models=n_models, generator=_gen(8))
    want = K.nngp(x, depth=1, activation="erf", bias_std=0.3)
    # Monte-Carlo standard error of a Gaussian product moment
    d = want.diagonal()
    se = torch.sqrt((torch.outer(d, d) + want ** 2) / n_models)
    assert float(((est - want) / se).abs().max()) < 4.5
    assert torch.equal(est, est.T)
    cross = E.empirical_nngp(factory, x[:2], x[2:], n_models=20, generator=_gen(9))
    full = E.empirical_nngp(factory, x, n_models=20, generator=_gen(9))
    assert torch.allclose(cross, full[:2, 2:], rtol=1e-12)


def test_feature_nngp_parametrisations():
    x = _x(4)
    for param in ("ntk", "standard"):
        net = MLP(3, [64], parametrization=param, bias_std=0.2, alpha=3.0, generator=_gen(10))
        phi = torch.relu(net._dense(0, x))
        want = 9.0 * (phi @ phi.T / 64 + 0.04)
        assert torch.allclose(E.feature_nngp(net, x), want, rtol=1e-13)
    net = MLP(3, 64, parametrization="mean_field", generator=_gen(11))
    phi = torch.relu(x @ net.weights[0])
    assert torch.allclose(E.feature_nngp(net, x), phi @ phi.T / 64 ** 2, rtol=1e-13)


def test_bad_arguments():
    net = MLP(3, [4], generator=_gen())
    x = _x()
    with pytest.raises(TypeError, match="model"):
        E.empirical_ntk(lambda z: z.sum(1), x)
    with pytest.raises(ValueError, match="x2"):
        E.empirical_ntk(net, x, _x(3, 2))
    with pytest.raises(TypeError, match="x1"):
        E.empirical_ntk(net, x.numpy())
    bad = x.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="x1"):
        E.empirical_ntk(net, bad)
    wide = torch.nn.Linear(3, 2).double()
    with pytest.raises(ValueError, match="scalar"):
        E.empirical_ntk(wide, x)
    with pytest.raises(ValueError, match="chunk_size"):
        E.empirical_ntk(net, x, chunk_size=0)
    with pytest.raises(ValueError, match="method"):
        E.empirical_ntk(net, x, method="fast")
    with pytest.raises(TypeError, match="method"):
        E.empirical_ntk(net, x, method=1)
    with pytest.raises(TypeError, match="MLP"):
        E.empirical_ntk(wide, x, method="closed_form")
    with pytest.raises(ValueError, match="scalar"):
        E.empirical_ntk(wide, x, method="ntk_vp")
    with pytest.raises(TypeError, match="factory"):
        E.empirical_nngp(3, x)
    with pytest.raises(ValueError, match="n_models"):
        E.empirical_nngp(functools.partial(MLP, 3, [4]), x, n_models=0)
    with pytest.raises(TypeError, match="model"):
        E.feature_nngp(wide, x)
