import math

import pytest
import torch

import mflib
from mflib import data


def test_linear_regression_shapes_and_model():
    ds = data.linear_regression(2000, 5, noise=0.3, generator=mflib.generator(0), device="cpu")
    assert ds.x.shape == (2000, 5) and ds.y.shape == (2000,) and ds.n == 2000 and ds.d == 5
    assert ds.x.dtype == mflib.DTYPE
    assert ds.truth.norm().item() == pytest.approx(1.0)
    resid = ds.y - ds.x @ ds.truth
    assert resid.std().item() == pytest.approx(0.3, rel=0.1)


def test_seeding_is_reproducible_and_explicit():
    a = data.linear_regression(10, 3, generator=mflib.generator(7), device="cpu")
    torch.manual_seed(123)  # the global stream does not matter
    b = data.linear_regression(10, 3, generator=mflib.generator(7), device="cpu")
    c = data.linear_regression(10, 3, generator=mflib.generator(8), device="cpu")
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert not torch.equal(a.x, c.x)
    g1 = data.gaussian_mixture(20, 2, generator=mflib.generator(1), device="cpu")
    g2 = data.gaussian_mixture(20, 2, generator=mflib.generator(1), device="cpu")
    assert torch.equal(g1.x, g2.x) and torch.equal(g1.y, g2.y)
    n1 = data.nonlinear_1d(20, generator=mflib.generator(1), device="cpu")
    n2 = data.nonlinear_1d(20, generator=mflib.generator(1), device="cpu")
    assert torch.equal(n1.x, n2.x) and torch.equal(n1.y, n2.y)


def test_population_risk_matches_monte_carlo():
    w_star = torch.tensor([1.0, 0.0, -1.0], dtype=torch.float64) / math.sqrt(2)
    ds = data.linear_regression(200_000, 3, noise=0.5, w_star=w_star,
                                generator=mflib.generator(3), device="cpu")
    w = torch.tensor([0.2, 0.1, 0.0], dtype=torch.float64)
    mc = 0.5 * ((ds.y - ds.x @ w) ** 2).mean()
    exact = data.linear_population_risk(w, w_star, 0.5)
    assert mc.item() == pytest.approx(exact.item(), rel=0.01)
    batch = data.linear_population_risk(torch.stack([w, w_star]), w_star, 0.5)
    assert batch.shape == (2,) and batch[1].item() == pytest.approx(0.125)


def test_gaussian_mixture_labels_and_bayes_error():
    ds = data.gaussian_mixture(50_000, 3, separation=2.0, generator=mflib.generator(2), device="cpu")
    assert set(ds.y.unique().tolist()) == {-1.0, 1.0}
    err = (torch.sign(ds.x[:, 0]) != ds.y).double().mean().item()
    bayes = 0.5 * math.erfc(1.0 / math.sqrt(2))   # Phi(-s/2) with s = 2
    assert err == pytest.approx(bayes, abs=0.01)
    assert ds.truth.tolist() == [1.0, 0.0, 0.0]


@pytest.mark.parametrize("target", sorted(data.TARGETS))
def test_nonlinear_1d(target):
    ds = data.nonlinear_1d(500, target=target, noise=0.0, generator=mflib.generator(4), device="cpu")
    assert ds.x.shape == (500, 1) and (ds.x.abs() <= 1).all()
    assert torch.allclose(ds.y, data.TARGETS[target](ds.x[:, 0]))


def test_float32_and_device():
    ds = data.gaussian_mixture(5, 2, generator=mflib.generator(0), dtype=torch.float32, device="cpu")
    assert ds.x.dtype == torch.float32 and ds.x.device.type == "cpu"


def test_bad_arguments():
    g = mflib.generator(0)
    with pytest.raises(ValueError, match="n must be >= 1"):
        data.linear_regression(0, 3, generator=g)
    with pytest.raises(TypeError, match="d must be an int"):
        data.linear_regression(3, 2.0, generator=g)
    with pytest.raises(ValueError, match="noise must be >= 0"):
        data.linear_regression(3, 2, noise=-1.0, generator=g)
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        data.gaussian_mixture(3, 2, generator=0)
    with pytest.raises(ValueError, match="w_star must have shape"):
        data.linear_regression(3, 2, w_star=torch.ones(3, dtype=torch.float64), generator=g)
    with pytest.raises(ValueError, match="target must be one of"):
        data.nonlinear_1d(3, target="cubic", generator=g)
    with pytest.raises(TypeError, match="dtype must be a floating"):
        data.nonlinear_1d(3, generator=g, dtype=torch.int64)
    with pytest.raises(ValueError, match="separation must be >= 0"):
        data.gaussian_mixture(3, 2, separation=-1.0, generator=g)
    with pytest.raises(ValueError, match="w must have 2 entries"):
        data.linear_population_risk(torch.ones(3, dtype=torch.float64),
                                    torch.ones(2, dtype=torch.float64), 0.1)
