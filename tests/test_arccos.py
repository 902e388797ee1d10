import math

import torch

from mflib import arccos


def _mc(cov, n=2_000_000, seed=0):
    g = torch.Generator().manual_seed(seed)
    L = torch.linalg.cholesky(cov)
    u, v = L @ torch.randn(2, n, generator=g, dtype=torch.float64)
    a, b = u.relu() * v.relu(), ((u > 0) & (v > 0)).double()
    return (a.mean(), a.std() / math.sqrt(n)), (b.mean(), b.std() / math.sqrt(n))


def test_relu_moments_against_monte_carlo():
    for c in (-0.9, -0.2, 0.3, 0.95):
        cov = torch.tensor([[2.0, c * math.sqrt(2.0 * 0.5)], [c * math.sqrt(2.0 * 0.5), 0.5]], dtype=torch.float64)
        m1, m0 = arccos.relu_moments(cov[0, 1], cov[0, 0], cov[1, 1])
        (e1, s1), (e0, s0) = _mc(cov)
        assert abs(m1 - e1) < 5 * s1
        assert abs(m0 - e0) < 5 * s0


def test_endpoints_are_exact_and_finite():
    s = torch.tensor([1.0, 1.0], dtype=torch.float64)
    m1, m0 = arccos.relu_moments(torch.tensor([1.0 + 1e-15, -1.0 - 1e-15], dtype=torch.float64), s, s)
    assert torch.isfinite(m1).all() and torch.isfinite(m0).all()
    assert torch.allclose(m1, torch.tensor([0.5, 0.0], dtype=torch.float64), atol=1e-12)
    assert torch.allclose(m0, torch.tensor([0.5, 0.0], dtype=torch.float64), atol=1e-7)
    zero = torch.zeros((), dtype=torch.float64)
    m1, m0 = arccos.relu_moments(zero, zero, torch.ones((), dtype=torch.float64))
    assert m1 == 0 and torch.isfinite(m0)


def test_dtype_and_shape_preserved():
    x = torch.rand(3, 4, dtype=torch.float32)
    m1, m0 = arccos.relu_moments(0.1 * x, 1 + x, 1 + x)
    assert m1.dtype == torch.float32 and m1.shape == (3, 4) and m0.shape == (3, 4)
