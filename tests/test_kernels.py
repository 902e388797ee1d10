"""Tests of mflib.kernels: analytic NNGP/NTK against neural-tangents, Monte Carlo and quadrature."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
import torch

from mflib import kernels as K
from mflib import nets
from mflib import activations as A

REF = pathlib.Path(__file__).with_name("data") / "nt_reference.npz"
F64 = torch.float64




def _x(n, d, seed=0, dtype=F64):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


# -- agreement with neural-tangents --------------------------------------------------------

def _nt_cases():
    return [(act, depth, b) for act in ("relu", "erf") for depth in (1, 2, 3) for b in (0.0, 0.4)]


@pytest.mark.parametrize("act,depth,b", _nt_cases())
def test_matches_stored_neural_tangents(act, depth, b):
    """Stored stax.Dense/Relu/Erf kernels (NTK parameterisation, float64); includes a
    point parallel to another and an antipodal pair."""
    ref = np.load(REF)
    x1, x2 = torch.tensor(ref["x1"]), torch.tensor(ref["x2"])
    w = float(ref["weight_std"])
    k11 = K.nngp_ntk(x1, depth=depth, activation=act, weight_std=w, bias_std=b)
    k12 = K.nngp_ntk(x1, x2, depth=depth, activation=act, weight_std=w, bias_std=b)
    for name, ours in (("nngp_11", k11.nngp), ("ntk_11", k11.ntk),
                       ("nngp_12", k12.nngp), ("ntk_12", k12.ntk)):
        want = torch.tensor(ref[f"{act}_L{depth}_b{b}_{name}"])
        assert ours.dtype == F64
        # relative to the largest entry, and entrywise where entries are not tiny
        assert _rel(ours, want) < 1e-10, name
        big = want.abs() > 1e-3 * want.abs().max()
        assert float(((ours - want).abs() / want.abs())[big].max()) < 1e-10, name


def test_matches_live_neural_tangents():
    jax = pytest.importorskip("jax", reason="neural-tangents environment not installed")
    pytest.importorskip("neural_tangents", reason="neural-tangents not importable")
    jax.config.update("jax_enable_x64", True)
    from neural_tangents import stax

    x1, x2 = _x(10, 5, 1), _x(7, 5, 2)
    for act, layer in (("relu", stax.Relu), ("erf", stax.Erf)):
        for depth in (1, 3):
            layers = [stax.Dense(1, 1.4, 0.2)]
            for _ in range(depth):
                layers += [layer(), stax.Dense(1, 1.4, 0.2)]
            kfn = stax.serial(*layers)[2]
            want = kfn(x1.numpy(), x2.numpy(), ("nngp", "ntk"))
            ours = K.nngp_ntk(x1, x2, depth=depth, activation=act, weight_std=1.4, bias_std=0.2)
            assert _rel(ours.nngp, torch.tensor(np.asarray(want.nngp))) < 1e-10
            assert _rel(ours.ntk, torch.tensor(np.asarray(want.ntk))) < 1e-10


# -- closed forms against finite wide networks (Monte Carlo) -------------------------------

@pytest.mark.parametrize("act", ["relu", "erf"])
def test_nngp_matches_monte_carlo_over_wide_networks(act):
    x = _x(5, 3, 3)
    gen = torch.Generator().manual_seed(4)
    n_models, width = 600, 256
    with torch.no_grad():
        f = torch.stack([nets.MLP(3, [width, width], activation=act, bias_std=0.3,
                                  weight_std=1.2, generator=gen)(x) for _ in range(n_models)])
    prods = f[:, :, None] * f[:, None, :]
    est, se = prods.mean(0), prods.std(0) / n_models ** 0.5
    want = K.nngp(x, depth=2, activation=act, weight_std=1.2, bias_std=0.3)
    z = (est - want) / se
    assert float(z.abs().max()) < 4.5


@pytest.mark.parametrize("act", ["relu", "erf"])
def test_ntk_matches_average_of_wide_empirical_ntks(act):
    from mflib.empirical import empirical_ntk

    x = _x(5, 3, 5)
    gen = torch.Generator().manual_seed(6)
    emp = torch.stack([empirical_ntk(nets.MLP(3, [2048], activation=act, bias_std=0.5,
                                              generator=gen), x) for _ in range(8)])
    want = K.ntk(x, depth=1, activation=act, bias_std=0.5)
    # fluctuations of one network are O(1/sqrt(width)); the mean of 8 is 3x closer
    assert _rel(emp.mean(0), want) < 0.03


# -- closed forms against the quadrature path ----------------------------------------------

def _unit_inputs(n=12, d=3, seed=7):
    x = _x(n, d, seed)
    return x / x.norm(dim=1, keepdim=True) * d ** 0.5


def test_erf_closed_form_matches_quadrature():
    x = _unit_inputs()
    exact = K.nngp_ntk(x, depth=3, activation="erf", bias_std=0.2)
    quad = K.nngp_ntk(x, depth=3, activation=(A.ACTIVATIONS["erf"].fn, A.ACTIVATIONS["erf"].derivative), bias_std=0.2)
    assert _rel(quad.nngp, exact.nngp) < 1e-10
    assert _rel(quad.ntk, exact.ntk) < 1e-10


def test_relu_closed_form_matches_quadrature_loosely():
    """relu is kinked: Gauss-Hermite converges slowly (stated accuracy 1e-2)."""
    x = _unit_inputs()
    exact = K.nngp_ntk(x, depth=2, activation="relu", bias_std=0.2)
    quad = K.nngp_ntk(x, depth=2, activation=(torch.relu, A.ACTIVATIONS["relu"].derivative),
                      bias_std=0.2)
    assert _rel(quad.nngp, exact.nngp) < 1e-2
    assert _rel(quad.ntk, exact.ntk) < 5e-2


@pytest.mark.parametrize("act,tol", [("tanh", 1e-7), ("sigmoid", 1e-12)])
def test_quadrature_accuracy_as_stated(act, tol):
    x = _unit_inputs(8)
    ref = K.nngp_ntk(x, depth=3, activation=act, bias_std=0.2, quad_points=160)
    got = K.nngp_ntk(x, depth=3, activation=act, bias_std=0.2)
    assert _rel(got.nngp, ref.nngp) < tol
    assert _rel(got.ntk, ref.ntk) < tol


def test_callable_activation_uses_autodiff_derivative():
    x = _unit_inputs(6)
    named = K.nngp_ntk(x, depth=2, activation="tanh")
    called = K.nngp_ntk(x, depth=2, activation=torch.tanh)
    assert _rel(called.ntk, named.ntk) < 1e-13


# -- structure: symmetry, PSD, edge points, consistency ------------------------------------

def _hard_points():
    x = _x(7, 4, 8)
    zero = torch.zeros(1, 4, dtype=F64)
    return torch.cat([x, x[:2], -x[2:4], 3.0 * x[4:5], zero])  # duplicates, antipodes, zero


@pytest.mark.parametrize("act", ["relu", "erf", "identity", "tanh"])
@pytest.mark.parametrize("b", [0.0, 0.3])
def test_symmetric_psd_finite_at_hard_points(act, b):
    x = _hard_points()
    k = K.nngp_ntk(x, depth=3, activation=act, bias_std=b, quad_points=24)
    for m in k:
        assert torch.isfinite(m).all()
        assert torch.equal(m, m.T)
        lam = torch.linalg.eigvalsh(m)
        assert float(lam.min()) > -1e-12 * float(lam.max())


def test_duplicate_points_give_equal_rows():
    x = _hard_points()
    k = K.ntk(x, depth=3, bias_std=0.1)
    assert torch.allclose(k[7], k[0], rtol=1e-12, atol=1e-14)  # x[7] == x[0]


def test_cross_kernel_is_block_of_joint_kernel():
    x1, x2 = _x(5, 3, 9), _x(4, 3, 10)
    joint = K.nngp_ntk(torch.cat([x1, x2]), depth=2, activation="erf", bias_std=0.1)
    cross = K.nngp_ntk(x1, x2, depth=2, activation="erf", bias_std=0.1)
    assert torch.allclose(cross.nngp, joint.nngp[:5, 5:], rtol=1e-13, atol=1e-15)
    assert torch.allclose(cross.ntk, joint.ntk[:5, 5:], rtol=1e-13, atol=1e-15)


def test_separate_functions_agree_with_joint():
    x = _x(6, 3, 11)
    both = K.nngp_ntk(x, depth=2, bias_std=0.2)
    assert torch.equal(K.nngp(x, depth=2, bias_std=0.2), both.nngp)
    assert torch.equal(K.ntk(x, depth=2, bias_std=0.2), both.ntk)


def test_depth_zero_is_linear_kernel():
    x = _x(6, 3, 12)
    k = K.nngp_ntk(x, depth=0, weight_std=2.0, bias_std=0.5)
    want = 4.0 * x @ x.T / 3 + 0.25
    assert torch.allclose(k.nngp, want, rtol=1e-14)
    assert torch.equal(k.nngp, k.ntk)


def test_relu_depth_one_closed_form_by_hand():
    x = _x(4, 3, 13)
    s = x @ x.T / 3
    nrm = torch.sqrt(torch.outer(s.diagonal(), s.diagonal()))
    th = torch.arccos(torch.clamp(s / nrm, -1, 1))
    sig = nrm * (torch.sin(th) + (torch.pi - th) * torch.cos(th)) / (2 * torch.pi)
    ntk = sig + s * (torch.pi - th) / (2 * torch.pi)
    k = K.nngp_ntk(x, depth=1)
    assert torch.allclose(k.nngp, sig, rtol=1e-7)  # arccos near the diagonal: ~1e-8
    assert torch.allclose(k.ntk, ntk, rtol=1e-7)


# -- dtype and device ---------------------------------------------------------------------

@pytest.mark.parametrize("act", ["relu", "erf", "tanh"])
def test_float32_in_float32_out(act):
    x = _x(20, 5, 14)
    k32 = K.nngp_ntk(x.float(), depth=3, activation=act, bias_std=0.1, quad_points=32)
    k64 = K.nngp_ntk(x, depth=3, activation=act, bias_std=0.1, quad_points=32)
    for a, b in zip(k32, k64):
        assert a.dtype == torch.float32 and a.device == x.device
        assert _rel(a.double(), b) < 1e-5
        assert torch.equal(a, a.T)


def test_large_blocked_matches_small():
    """More rows than one block: the blocked in-place update gives the same numbers."""
    x = _x(1200, 6, 15)
    k = K.nngp_ntk(x, depth=2, activation="erf", bias_std=0.1)
    sub = K.nngp_ntk(x[1100:1110], x[:300], depth=2, activation="erf", bias_std=0.1)
    assert torch.allclose(k.ntk[1100:1110, :300], sub.ntk, rtol=1e-13, atol=1e-15)
    assert torch.equal(k.ntk, k.ntk.T)


@pytest.mark.gpu
def test_cuda_matches_cpu():
    x = _x(50, 4, 16)
    cpu = K.nngp_ntk(x, depth=3, bias_std=0.1)
    gpu = K.nngp_ntk(x.cuda(), depth=3, bias_std=0.1)
    assert gpu.ntk.device.type == "cuda"
    assert _rel(gpu.ntk.cpu(), cpu.ntk) < 1e-12


# -- argument validation ------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,exc,word", [
    (dict(depth=-1), ValueError, "depth"),
    (dict(depth=1.5), TypeError, "depth"),
    (dict(depth=True), TypeError, "depth"),
    (dict(depth=1, activation="softplus"), ValueError, "activation"),
    (dict(depth=1, activation=3), TypeError, "activation"),
    (dict(depth=1, weight_std=0.0), ValueError, "weight_std"),
    (dict(depth=1, weight_std="1"), TypeError, "weight_std"),
    (dict(depth=1, bias_std=-0.1), ValueError, "bias_std"),
    (dict(depth=1, bias_std=float("nan")), ValueError, "bias_std"),
    (dict(depth=1, activation="tanh", quad_points=1), ValueError, "quad_points"),
])
def test_bad_arguments(kwargs, exc, word):
    with pytest.raises(exc, match=word):
        K.nngp_ntk(_x(3, 2), **kwargs)


def test_bad_inputs():
    x = _x(3, 2)
    with pytest.raises(TypeError, match="x1"):
        K.ntk(x.numpy(), depth=1)
    with pytest.raises(TypeError, match="x1"):
        K.ntk(x.long(), depth=1)
    with pytest.raises(ValueError, match="x1"):
        K.ntk(x[0], depth=1)
    bad = x.clone()
    bad[1, 1] = float("inf")
    with pytest.raises(ValueError, match="x1"):
        K.ntk(bad, depth=1)
    with pytest.raises(ValueError, match="x2"):
        K.ntk(x, bad, depth=1)
    with pytest.raises(ValueError, match="x2"):
        K.ntk(x, _x(3, 4), depth=1)
    with pytest.raises(TypeError, match="x2"):
        K.ntk(x, x.float(), depth=1)
    with pytest.raises(TypeError):
        K.ntk(x, depth=None)
    with pytest.raises(TypeError):
        K.ntk(x, 1)  # depth is keyword-only


def test_relu_layer_agrees_with_shared_arccos_module():
    """The fused relu update computes mflib.arccos.relu_moments (away from x = x')."""
    from mflib import arccos

    x = _x(6, 3, 17)
    s0 = x @ x.T / 3
    v = s0.diagonal()
    e1, e0 = arccos.relu_moments(s0, v[:, None], v[None, :])
    k = K.nngp_ntk(x, depth=1)
    off = ~torch.eye(6, dtype=torch.bool)
    assert torch.allclose(k.nngp[off], e1[off], rtol=1e-12)
    assert torch.allclose(k.ntk[off], (e1 + e0 * s0)[off], rtol=1e-12)
