import math

import pytest
import torch

import mflib
from mflib import data, landscape

D = torch.float64




@pytest.fixture(scope="module")
def problem():
    ds = data.nonlinear_1d(60, noise=0.1, generator=mflib.generator(0), device="cpu")
    x = torch.cat([ds.x, torch.ones_like(ds.x)], dim=1)
    g = mflib.generator(1)
    a = torch.randn(4, generator=g, dtype=D)
    B = torch.randn(4, 2, generator=g, dtype=D)
    return x, ds.y, a, B


def test_two_layer_and_risk(problem):
    x, y, a, B = problem
    h = landscape.two_layer(a, B, x)
    assert torch.allclose(h, sum(a[j] * torch.tanh(x @ B[j]) for j in range(4)))
    assert torch.isclose(landscape.risk(a, B, x, y), 0.5 * ((h - y) ** 2).mean())


def test_saddle_at_zero(problem):
    x, y, a, B = problem
    za, zB = torch.zeros_like(a), torch.zeros_like(B)
    f = landscape.slice_function(a, B, x, y)
    assert torch.func.grad(f)(torch.zeros(2, dtype=D)).abs().max() < 1e-14
    H = landscape.hessian(za, zB, x, y)
    ev = torch.linalg.eigvalsh(H)
    c = landscape.saddle_curvature(x, y)
    assert ev[0] == pytest.approx(-c) and ev[-1] == pytest.approx(c)
    assert (ev.abs() > 1e-12).sum() == 2 * 4           # +-c, each m times
    assert ((ev + c).abs() < 1e-10).sum() == 4


def test_slice_matches_pointwise(problem):
    x, y, a, B = problem
    al = torch.tensor([-1.0, 0.0, 0.5], dtype=D)
    be = torch.tensor([0.0, 2.0], dtype=D)
    grid = landscape.slice_risk(a, B, x, y, al, be)
    for i, s in enumerate(al):
        for j, t in enumerate(be):
            assert torch.isclose(grid[i, j], landscape.risk(s * a, t * B, x, y))
    # along the axes the network is zero: the risk is constant (a plateau)
    assert torch.allclose(grid[1], torch.full((2,), 0.5 * (y ** 2).mean().item(), dtype=D))


def test_gradient_descent_escapes_the_saddle_later_from_smaller_init(problem):
    x, y, a, B = problem
    exits = []
    for delta in [1e-2, 1e-4]:
        run = landscape.gradient_descent(delta * a, delta * B, x, y, lr=0.4, steps=250)
        assert not run.diverged
        below = (run.risk < 0.9 * run.risk[0]).nonzero()
        exits.append(int(below[0]))
    c = landscape.saddle_curvature(x, y)
    predicted = math.log(100) / math.log(1 + 0.4 * c)
    assert exits[1] - exits[0] == pytest.approx(predicted, rel=0.25)


def test_bad_arguments(problem):
    x, y, a, B = problem
    with pytest.raises(ValueError, match="B must have one row per hidden unit"):
        landscape.two_layer(a[:3], B, x)
    with pytest.raises(ValueError, match="B must have 2 columns"):
        landscape.two_layer(a, B[:, :1], x)
    with pytest.raises(TypeError, match="activation must be callable"):
        landscape.risk(a, B, x, y, activation="tanh")
    with pytest.raises(ValueError, match="lr must be > 0"):
        landscape.gradient_descent(a, B, x, y, lr=-1.0, steps=2)
    with pytest.raises(ValueError, match="x and y must have the same number of rows"):
        landscape.risk(a, B, x, y[:-1])
