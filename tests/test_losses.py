import math

import pytest
import torch

from mflib import losses

D = torch.float64


def _grid():
    return torch.linspace(-4, 4, 161, dtype=D)


def test_values_at_known_points():
    one = torch.ones((), dtype=D)
    assert losses.square(torch.tensor(2.0, dtype=D), torch.tensor(-1.0, dtype=D)) == 4.5
    assert torch.isclose(losses.logistic(one, torch.zeros((), dtype=D)), torch.tensor(math.log(2), dtype=D))
    assert losses.hinge(one, torch.tensor(0.25, dtype=D)) == 0.75
    assert losses.hinge(-one, torch.tensor(-3.0, dtype=D)) == 0.0


def test_logistic_is_stable_at_extreme_margins():
    y = torch.ones(3, dtype=D)
    yh = torch.tensor([-1000.0, 50.0, 1000.0], dtype=D)
    v = losses.logistic(y, yh)
    assert torch.isfinite(v).all()
    assert v[0] == pytest.approx(1000.0)
    assert v[1] == pytest.approx(math.exp(-50.0), rel=1e-10)   # no cancellation
    assert 0 <= v[2] < 1e-300 or v[2] == 0.0
    d = losses.logistic_derivative(y, yh)
    assert torch.isfinite(d).all() and d[0] == pytest.approx(-1.0)


@pytest.mark.parametrize("name", ["square", "logistic", "hinge"])
@pytest.mark.parametrize("label", [-1.0, 1.0])
def test_derivative_matches_autograd(name, label):
    loss = losses.LOSSES[name]
    yh = _grid()
    if name == "hinge":  # away from the kink y*yh = 1
        yh = yh[(label * yh - 1).abs() > 1e-6]
    yh = yh.clone().requires_grad_(True)
    y = torch.full_like(yh, label)
    loss(y, yh).sum().backward()
    assert torch.allclose(loss.derivative(y, yh.detach()), yh.grad, atol=1e-12)


def test_hinge_subgradient_convention_at_the_kink():
    y = torch.tensor([1.0, -1.0], dtype=D)
    yh = torch.tensor([1.0, -1.0], dtype=D)  # margin exactly 1
    assert torch.equal(losses.hinge_derivative(y, yh), torch.zeros(2, dtype=D))
    # and it is a subgradient: loss(z) >= loss(yh) + g (z - yh) for all z
    z = _grid()
    for yi, yhi in zip(y, yh):
        g = losses.hinge_derivative(yi, yhi)
        assert (losses.hinge(yi, z) >= losses.hinge(yi, yhi) + g * (z - yhi) - 1e-12).all()


@pytest.mark.parametrize("name", ["square", "logistic", "hinge"])
def test_losses_are_convex(name):
    loss = losses.LOSSES[name]
    z = _grid()
    y = torch.ones_like(z)
    v = loss(y, z)
    second = v[2:] - 2 * v[1:-1] + v[:-2]
    assert (second >= -1e-12).all()
    # the derivative is non-decreasing (monotone subgradient)
    assert (torch.diff(loss.derivative(y, z)) >= -1e-12).all()


@pytest.mark.parametrize("name", ["square", "logistic"])
def test_curvature_constant_bounds_second_derivative(name):
    loss = losses.LOSSES[name]
    z = _grid()
    y = torch.ones_like(z)
    h = z[1] - z[0]
    dd = torch.diff(loss.derivative(y, z)) / h
    assert dd.max() <= loss.curvature + 1e-6
    assert dd.max() >= 0.99 * loss.curvature  # the bound is attained (tight)


def test_registry_and_empirical_risk():
    assert set(losses.LOSSES) == {"square", "logistic", "hinge"}
    assert losses.get("square") is losses.LOSSES["square"]
    assert losses.get(losses.LOSSES["hinge"]).name == "hinge"
    y = torch.tensor([1.0, -1.0, 1.0], dtype=D)
    yh = torch.tensor([[0.0, 0.0, 0.0], [2.0, -2.0, 2.0]], dtype=D)
    r = losses.empirical_risk("hinge", y, yh)
    assert torch.allclose(r, torch.tensor([1.0, 0.0], dtype=D))


def test_bad_inputs_raise_with_the_argument_name():
    y = torch.ones(3, dtype=D)
    with pytest.raises(TypeError, match="y must be a torch.Tensor"):
        losses.square([1.0], y)
    with pytest.raises(TypeError, match="y_hat must be a floating-point"):
        losses.square(y, torch.ones(3, dtype=torch.long))
    with pytest.raises(ValueError, match="y_hat contains non-finite"):
        losses.square(y, torch.tensor([1.0, math.nan, 0.0], dtype=D))
    with pytest.raises(ValueError, match="broadcastable"):
        losses.square(y, torch.ones(4, dtype=D))
    with pytest.raises(ValueError, match=r"y must hold classification labels"):
        losses.logistic(torch.tensor([0.5], dtype=D), torch.zeros(1, dtype=D))
    with pytest.raises(ValueError, match=r"y must hold classification labels"):
        losses.hinge_derivative(torch.tensor([0.0], dtype=D), torch.zeros(1, dtype=D))
    with pytest.raises(ValueError, match="loss must be one of"):
        losses.get("cross-entropy")
    with pytest.raises(TypeError, match="loss must be a loss name"):
        losses.get(3)
    with pytest.raises(ValueError, match="y_hat must have as many entries in its last dimension as y has labels \\(3\\)"):
        losses.empirical_risk("square", y, torch.ones(2, dtype=D))
