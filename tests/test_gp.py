"""Tests of mflib.gp: GP samples and regression, closed-form kernel flow, tangent model."""

from __future__ import annotations

import pytest
import torch

from mflib import gp
from mflib import kernels as K
from mflib.empirical import empirical_ntk
from mflib.nets import MLP

F64 = torch.float64




def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _x(n=6, d=2, seed=1):
    return torch.randn(n, d, generator=_gen(seed), dtype=F64)


# -- sampling ------------------------------------------------------------------------------

def test_sample_gp_covariance_and_reproducibility():
    grid = torch.linspace(-1, 1, 5, dtype=F64)[:, None]
    k = K.nngp(grid, depth=2, bias_std=0.2)
    n = 20_000
    s = gp.sample_gp(k, n, generator=_gen(1))
    assert s.shape == (n, 5) and s.dtype == F64
    d = k.diagonal()
    se = torch.sqrt((torch.outer(d, d) + k ** 2) / n)
    assert float(((s.T @ s / n - k) / se).abs().max()) < 4.5
    assert torch.equal(gp.sample_gp(k, 3, generator=_gen(2)), gp.sample_gp(k, 3, generator=_gen(2)))
    m = torch.arange(5, dtype=F64)
    assert torch.allclose(gp.sample_gp(k, 3, mean=m, generator=_gen(2)),
                          gp.sample_gp(k, 3, generator=_gen(2)) + m)


def test_sample_gp_singular_kernel():
    """A rank-one kernel (Cholesky fails) and a near-singular smooth one give finite samples."""
    v = torch.linspace(-1, 1, 50, dtype=F64)
    k = torch.outer(v, v)
    with pytest.raises(RuntimeError):
        torch.linalg.cholesky(k)
    s = gp.sample_gp(k, 10, generator=_gen(3))
    assert torch.isfinite(s).all()
    ratio = s / v                          # every sample is a multiple of v
    assert torch.allclose(ratio, ratio[:, :1].expand_as(ratio), rtol=1e-6)
    grid = torch.linspace(-1, 1, 300, dtype=F64)[:, None]
    smooth = K.ntk(grid, depth=1, bias_std=0.5)
    assert torch.isfinite(gp.sample_gp(smooth, 4, generator=_gen(4))).all()


# -- regression ----------------------------------------------------------------------------

def test_gp_regression_matches_direct_solve():
    x, xt = _x(8, 2, 5), _x(4, 2, 6)
    y = torch.sin(x[:, 0])
    kxx, ktx, ktt = K.nngp(x, depth=2, bias_std=0.1), K.nngp(xt, x, depth=2, bias_std=0.1), \
        K.nngp(xt, depth=2, bias_std=0.1)
    post = gp.gp_regression(kxx, ktx, y, K_test=ktt, noise=0.1)
    a = kxx + 0.01 * torch.eye(8, dtype=F64)
    assert torch.allclose(post.mean, ktx @ torch.linalg.solve(a, y), rtol=1e-10)
    assert torch.allclose(post.cov, ktt - ktx @ torch.linalg.solve(a, ktx.T), rtol=1e-9, atol=1e-12)
    assert torch.all(post.std >= 0)
    assert float(torch.linalg.eigvalsh(post.cov).min()) > -1e-12


def test_noiseless_regression_interpolates_even_with_duplicates():
    x = _x(6, 2, 7)
    x = torch.cat([x, x[:2]])              # duplicated points: singular kernel
    y = torch.cat([torch.cos(x[:6, 1]), torch.cos(x[:2, 1])])
    kxx = K.ntk(x, depth=1)
    res = gp.gp_regression(kxx, kxx, y, K_test=kxx)
    assert torch.isfinite(res.mean).all()
    assert torch.allclose(res.mean, y, atol=1e-8)
    assert float(res.std.max()) < 1e-5


# -- closed-form gradient flow -------------------------------------------------------------

def _rk4(kxx, ktx, y, h0, ht0, lr, t_end, steps=2000):
    def rhs(state):
        h = state[: len(y)]
        r = h - y
        return -lr * torch.cat([kxx @ r, ktx @ r])

    s = torch.cat([h0, ht0])
    dt = t_end / steps
    for _ in range(steps):
        k1 = rhs(s)
        k2 = rhs(s + dt / 2 * k1)
        k3 = rhs(s + dt / 2 * k2)
        k4 = rhs(s + dt * k3)
        s = s + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return s[: len(y)], s[len(y):]


@pytest.mark.parametrize("duplicate", [False, True])
def test_gradient_flow_matches_ode_solution(duplicate):
    x, xt = _x(6, 2, 8), _x(3, 2, 9)
    if duplicate:                          # singular H
        x = torch.cat([x, x[:1]])
    n = x.shape[0]
    y = torch.randn(n, generator=_gen(10), dtype=F64)
    h0, ht0 = 0.1 * torch.randn(n, generator=_gen(11), dtype=F64), torch.full((3,), 0.2, dtype=F64)
    kxx, ktx = K.ntk(x, depth=2, bias_std=0.1), K.ntk(xt, x, depth=2, bias_std=0.1)
    flow = gp.gradient_flow(kxx, y, torch.tensor([0.0, 1.5]), h0_train=h0, K_test_train=ktx,
                            h0_test=ht0, lr=0.7)
    assert torch.allclose(flow.train[0], h0) and torch.allclose(flow.test[0], ht0)
    h, ht = _rk4(kxx, ktx, y, h0, ht0, 0.7, 1.5)
    assert torch.allclose(flow.train[1], h, atol=1e-9)
    assert torch.allclose(flow.test[1], ht, atol=1e-9)


def test_gradient_flow_long_time_limit_is_interpolant():
    x, xt = _x(6, 2, 12), _x(3, 2, 13)
    y = torch.sin(3 * x[:, 0])
    kxx, ktx = K.ntk(x, depth=1), K.ntk(xt, x, depth=1)
    flow = gp.gradient_flow(kxx, y, 1e8, K_test_train=ktx)
    assert flow.train.shape == (1, 6) and flow.test.shape == (1, 3)
    assert torch.allclose(flow.train[0], y, atol=1e-10)
    assert torch.allclose(flow.test[0], gp.gp_regression(kxx, ktx, y).mean, atol=1e-8)


# -- linearised model ----------------------------------------------------------------------

def test_linearized_equals_model_at_init_and_is_linear():
    net = MLP(2, [32], activation="tanh", bias_std=0.2, generator=_gen(14))
    lin = gp.Linearized(net)
    x = _x(5, 2, 15)
    assert torch.allclose(lin(x), net(x), rtol=1e-14)
    assert len(list(lin.parameters())) == len(list(net.parameters()))
    # move along a direction: exactly linear in the displacement
    with torch.no_grad():
        d = [0.3 * torch.randn(p.shape, generator=_gen(16), dtype=F64) for p in lin.parameters()]
        base = lin(x)
        for p, di in zip(lin.parameters(), d):
            p.add_(di)
        one = lin(x)
        for p, di in zip(lin.parameters(), d):
            p.add_(di)
        two = lin(x)
    assert torch.allclose(two - base, 2 * (one - base), rtol=1e-10, atol=1e-13)
    assert not torch.allclose(net(x), one)   # the wrapped network is untouched


def test_linearized_sgd_follows_discrete_kernel_dynamics():
    """Gradient descent on the tangent model: h_k = y + (I - eta K0)^k (h_0 - y) exactly,
    with K0 the empirical NTK at initialisation."""
    net = MLP(2, [64], bias_std=0.1, generator=_gen(17))
    x = _x(6, 2, 18)
    y = torch.cos(x[:, 0])
    k0 = empirical_ntk(net, x)
    lin = gp.Linearized(net)
    eta, steps = 0.05, 40
    opt = torch.optim.SGD(lin.parameters(), lr=eta)
    h0 = lin(x).detach()
    for _ in range(steps):
        opt.zero_grad()
        (0.5 * ((lin(x) - y) ** 2).sum()).backward()
        opt.step()
    step = torch.eye(6, dtype=F64) - eta * k0
    want = y + torch.linalg.matrix_power(step, steps) @ (h0 - y)
    assert torch.allclose(lin(x).detach(), want, rtol=1e-9, atol=1e-11)


def test_linearized_under_functional_call():
    """torch.func over the tangent model (as mflib.lazy.as_function uses it)."""
    from torch.func import functional_call, grad

    net = MLP(2, [16], generator=_gen(19))
    lin = gp.Linearized(net)
    x = _x(4, 2, 20)
    params = {k: v.detach().clone() for k, v in lin.named_parameters()}
    assert torch.allclose(functional_call(lin, params, (x,)), net(x), rtol=1e-14)
    g = grad(lambda p: functional_call(lin, p, (x,)).sum())(params)
    g_net = torch.autograd.grad(net(x).sum(), list(net.parameters()))
    for (k, gi), gn in zip(g.items(), g_net):
        assert torch.allclose(gi, gn, rtol=1e-12), k


# -- argument validation ------------------------------------------------------------------

def test_bad_arguments():
    k = K.ntk(_x(), depth=1)
    y = torch.zeros(6, dtype=F64)
    with pytest.raises(ValueError, match="K"):
        gp.sample_gp(k[:, :3])
    with pytest.raises(ValueError, match="n_samples"):
        gp.sample_gp(k, 0)
    with pytest.raises(TypeError, match="generator"):
        gp.sample_gp(k, 1, generator=1)
    with pytest.raises(ValueError, match="mean"):
        gp.sample_gp(k, 1, mean=torch.zeros(3, dtype=F64))
    with pytest.raises(ValueError, match="y_train"):
        gp.gp_regression(k, k, torch.zeros(5, dtype=F64))
    with pytest.raises(ValueError, match="K_test_train"):
        gp.gp_regression(k, k[:, :3], y)
    with pytest.raises(ValueError, match="noise"):
        gp.gp_regression(k, k, y, noise=-1.0)
    with pytest.raises(ValueError, match="t"):
        gp.gradient_flow(k, y, -1.0)
    with pytest.raises(ValueError, match="lr"):
        gp.gradient_flow(k, y, 1.0, lr=0.0)
    with pytest.raises(ValueError, match="h0_train"):
        gp.gradient_flow(k, y, 1.0, h0_train=torch.zeros(2, dtype=F64))
    with pytest.raises(ValueError, match="h0_test"):
        gp.gradient_flow(k, y, 1.0, h0_test=torch.zeros(2, dtype=F64))
    bad = k.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="K_train"):
        gp.gradient_flow(bad, y, 1.0)
    with pytest.raises(TypeError, match="model"):
        gp.Linearized(lambda z: z)


def test_ntk_gp_reduces_to_noiseless_gp_and_matches_linear_ensembles():
    import mflib
    from mflib import gp

    g = mflib.generator(0)
    x = torch.randn(12, 3, generator=g, dtype=torch.float64)
    K = x @ x.T + 0.5
    n = 5
    y = torch.randn(n, generator=g, dtype=torch.float64)
    post = gp.gp_regression(K[:n, :n], K[n:, :n], y, K_test=K[n:, n:])
    same = gp.ntk_gp(K[:n, :n], K[n:, :n], K[:n, :n], K[n:, :n], K[n:, n:], y)
    assert torch.allclose(same.mean, post.mean, atol=1e-10) and torch.allclose(same.cov, post.cov, atol=1e-10)
    # a linear model f = phi(x)^T w, w ~ N(0, I) (NNGP = phi phi^T), trained to convergence by gradient
    # flow on features psi (NTK = psi psi^T) is f0 + Theta_xX Theta^-1 (y - f0(X)): Monte Carlo check
    phi = torch.randn(12, 6, generator=g, dtype=torch.float64)
    psi = torch.randn(12, 8, generator=g, dtype=torch.float64)
    S, T = phi @ phi.T, psi @ psi.T
    law = gp.ntk_gp(T[:n, :n], T[n:, :n], S[:n, :n], S[n:, :n], S[n:, n:], y)
    f0 = phi @ torch.randn(6, 20000, generator=g, dtype=torch.float64)
    A = T[n:, :n] @ torch.linalg.inv(T[:n, :n])
    f = f0[n:] + A @ (y[:, None] - f0[:n])
    assert torch.allclose(f.mean(1), law.mean, atol=0.1)
    assert torch.allclose(torch.cov(f), law.cov, atol=0.05 * float(law.cov.abs().max()))
