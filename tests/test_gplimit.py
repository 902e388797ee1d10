import math

import pytest
import torch

import mflib
from mflib import gplimit as G
from mflib import kernels


def _circle(n):
    t = torch.linspace(0, 2 * math.pi, n + 1, dtype=torch.float64)[:-1]
    return torch.stack([torch.cos(t), torch.sin(t)], 1) * math.sqrt(2)


@pytest.mark.parametrize("kind", sorted(G.RADIAL))
def test_radial_kernel_is_a_covariance(kind):
    x = torch.linspace(-2, 2, 40, dtype=torch.float64)[:, None]
    K = G.radial_kernel(x, kind=kind, lengthscale=0.5, variance=2.0)
    assert torch.allclose(K, K.T) and torch.allclose(torch.diagonal(K), torch.full((40,), 2.0,
                                                                                 dtype=torch.float64))
    assert float(torch.linalg.eigvalsh(K).min()) > -1e-10
    assert float(K[0, 1]) < 2.0


def test_se_closed_form():
    x = torch.tensor([[0.0], [1.0]], dtype=torch.float64)
    K = G.radial_kernel(x, kind="se", lengthscale=2.0)
    assert abs(float(K[0, 1]) - math.exp(-1 / 8)) < 1e-15


@pytest.mark.parametrize("act,bias", [("relu", 0.0), ("erf", 0.3), ("tanh", 0.5)])
def test_network_outputs_match_nngp(act, bias):
    x = _circle(6)
    arch = dict(depth=2, activation=act, weight_std=1.5, bias_std=bias)
    F = G.sample_network_outputs(x, n_nets=3000, width=128, seed=1, **arch)
    C = F.T @ F / F.shape[0]
    K = kernels.nngp(x, **arch)
    # Monte Carlo error ~ sqrt(2/3000) ~ 0.026, finite-width bias O(1/128)
    assert float(torch.linalg.norm(C - K) / torch.linalg.norm(K)) < 0.08


def test_outputs_shape_dtype_seed():
    x = _circle(5).float()
    a = G.sample_network_outputs(x, n_nets=7, width=9, depth=3, seed=4, chunk=3)
    b = G.sample_network_outputs(x, n_nets=7, width=9, depth=3, seed=4, chunk=3)
    c = G.sample_network_outputs(x, n_nets=7, width=9, depth=3, seed=5, chunk=3)
    assert a.shape == (7, 5) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_kurtosis_and_ks():
    g = mflib.generator(0)
    z = torch.randn(20000, generator=g, dtype=torch.float64)
    assert abs(float(G.excess_kurtosis(z))) < 0.15
    assert G.ks_distance(z, 1.0) < 1.63 / math.sqrt(20000)   # 99 % level
    assert G.ks_distance(z, 2.0) > 0.1
    e = torch.distributions.Laplace(0.0, 1.0).sample((20000,)).double()
    assert abs(float(G.excess_kurtosis(e)) - 3.0) < 0.6
    # one-hidden-layer relu: excess kurtosis 15/m
    f = G.sample_network_outputs(_circle(1), n_nets=20000, width=8, depth=1, seed=2)[:, 0]
    assert abs(float(G.excess_kurtosis(f)) - 15 / 8) < 0.4


def test_bad_inputs():
    x = _circle(4)
    with pytest.raises(ValueError, match="kind"):
        G.radial_kernel(x, kind="rbf2")
    with pytest.raises(ValueError, match="lengthscale"):
        G.radial_kernel(x, lengthscale=0.0)
    with pytest.raises(ValueError, match="x1 and x2"):
        G.radial_kernel(x, x[:, :1])
    with pytest.raises(ValueError, match="depth"):
        G.sample_network_outputs(x, n_nets=2, width=3, depth=0)
    with pytest.raises(TypeError, match="width"):
        G.sample_network_outputs(x, n_nets=2, width=3.0, depth=1)
    with pytest.raises(ValueError, match="weight_std"):
        G.sample_network_outputs(x, n_nets=2, width=3, depth=1, weight_std=0.0)
    with pytest.raises(TypeError, match="x"):
        G.sample_network_outputs([[1.0, 2.0]], n_nets=2, width=3, depth=1)
    with pytest.raises(ValueError, match="samples"):
        G.excess_kurtosis(torch.zeros(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="std"):
        G.ks_distance(torch.zeros(5, dtype=torch.float64), -1.0)


def test_kurtosis_estimate_has_a_calibrated_error():
    import mflib
    from mflib import gplimit

    g = mflib.generator(1)
    x = torch.randn(4000, generator=g, dtype=torch.float64)
    e = gplimit.kurtosis_estimate(x, seed=2)
    assert abs(e.value) < 4 * e.se and 0.5 < e.se / (24 / 4000) ** 0.5 < 1.6


def test_one_unit_ks_against_a_large_sample():
    import mflib
    from mflib import gplimit

    g = mflib.generator(4)
    a, z = torch.randn(2, 200_000, generator=g, dtype=torch.float64)
    xi = a * torch.relu(z)
    exact = gplimit.one_unit_ks()
    assert 0.25 <= exact < 0.26
    assert abs(gplimit.ks_distance(xi, float(xi.std())) - exact) < 1.36 / 200_000 ** 0.5 + 1e-3
