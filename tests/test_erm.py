import math

import pytest
import torch

import mflib
from mflib import data, erm, losses

D = torch.float64




@pytest.fixture(scope="module")
def reg():
    return data.linear_regression(200, 5, noise=0.3, generator=mflib.generator(0), device="cpu")


@pytest.fixture(scope="module")
def cls():
    return data.gaussian_mixture(200, 3, separation=2.0, generator=mflib.generator(1), device="cpu")


def test_ridge_is_the_minimiser(reg):
    lam = 0.1
    w = erm.ridge(reg.x, reg.y, lam).requires_grad_(True)
    erm.objective(w, reg.x, reg.y, lam=lam).backward()
    assert w.grad.abs().max() < 1e-12
    ols = erm.ridge(reg.x, reg.y, 0.0)
    assert torch.allclose(ols, torch.linalg.lstsq(reg.x, reg.y[:, None]).solution[:, 0], atol=1e-12)


def test_objective_matches_definition_and_batches(reg):
    w = torch.randn(2, 5, generator=mflib.generator(2), dtype=D)
    f = erm.objective(w, reg.x, reg.y, loss="square", lam=0.5)
    by_hand = 0.5 * ((reg.y - reg.x @ w[0]) ** 2).mean() + 0.25 * (w[0] ** 2).sum()
    assert f.shape == (2,) and torch.isclose(f[0], by_hand)
    assert torch.allclose(erm.predict(w, reg.x)[1], reg.x @ w[1])


@pytest.mark.parametrize("name", ["square", "logistic", "hinge"])
def test_objective_is_convex_along_random_segments(name, reg, cls):
    ds = reg if name == "square" else cls
    g = mflib.generator(3)
    for _ in range(5):
        u, v = torch.randn(2, ds.d, generator=g, dtype=D) * 3
        t = torch.linspace(0, 1, 41, dtype=D)[:, None]
        f = erm.objective((1 - t) * u + t * v, ds.x, ds.y, loss=name, lam=0.01)
        chord = (1 - t[:, 0]) * f[0] + t[:, 0] * f[-1]
        assert (f <= chord + 1e-12).all()


def test_smoothness_constants(reg, cls):
    L, mu = erm.smoothness(reg.x, loss="square", lam=0.1)
    eig = torch.linalg.eigvalsh(reg.x.T @ reg.x / reg.n)
    assert L == pytest.approx(eig[-1].item() + 0.1) and mu == pytest.approx(eig[0].item() + 0.1)
    Ll, mul = erm.smoothness(cls.x, loss="logistic", lam=0.0)
    assert mul == 0.0 and Ll == pytest.approx(torch.linalg.eigvalsh(cls.x.T @ cls.x / cls.n)[-1].item() / 4)
    assert erm.smoothness(cls.x, loss="hinge")[0] == math.inf


def test_gd_converges_linearly_to_ridge(reg):
    lam = 0.1
    L, mu = erm.smoothness(reg.x, lam=lam)
    w_star = erm.ridge(reg.x, reg.y, lam)
    run = erm.sgd(reg.x, reg.y, lam=lam, lr=1 / L, steps=200)
    assert not run.diverged and run.steps.tolist() == list(range(201))
    dist = (run.iterates - w_star).norm(dim=1)
    bound = (1 - mu / L) ** run.steps.double() * dist[0]
    assert (dist <= bound + 1e-12).all()
    assert dist[-1] < 1e-10
    assert run.grad_evals[-1] == 200 * reg.n


def test_gd_diverges_above_two_over_L_and_reports_it(reg):
    L, _ = erm.smoothness(reg.x, lam=0.0)
    run = erm.sgd(reg.x, reg.y, lr=2.5 / L, steps=5000, record_every=10)
    assert run.diverged
    assert torch.isfinite(run.objective).all() and torch.isfinite(run.w).all()
    assert len(run.steps) == len(run.objective) == len(run.iterates)


def test_sgd_is_seeded_and_decreasing_steps_beat_constant_floor(reg):
    kw = dict(lam=0.1, lr=0.05, steps=2000, batch_size=1, record_every=50)
    r1 = erm.sgd(reg.x, reg.y, generator=mflib.generator(5), **kw)
    r2 = erm.sgd(reg.x, reg.y, generator=mflib.generator(5), **kw)
    assert torch.equal(r1.objective, r2.objective)
    assert r1.grad_evals[-1] == 2000
    f_star = erm.objective(erm.ridge(reg.x, reg.y, 0.1), reg.x, reg.y, lam=0.1)
    floor_const = (r1.objective[-10:] - f_star).mean()
    rd = erm.sgd(reg.x, reg.y, generator=mflib.generator(5), decay=50.0, **kw)
    assert (rd.objective[-10:] - f_star).mean() < floor_const


def test_logistic_and_hinge_decrease(cls):
    L, _ = erm.smoothness(cls.x, loss="logistic", lam=0.01)
    run = erm.sgd(cls.x, cls.y, loss="logistic", lam=0.01, lr=1 / L, steps=100)
    assert (torch.diff(run.objective) <= 1e-15).all()     # GD with step 1/L is monotone
    assert run.objective[-1] < run.objective[0] - 0.2
    run = erm.sgd(cls.x, cls.y, loss="hinge", lam=0.01, lr=0.1, steps=100)
    assert run.objective.min() < 0.5 * run.objective[0]   # subgradient method: not monotone


def test_bad_arguments(reg, cls):
    with pytest.raises(ValueError, match="x and y must have the same number of rows"):
        erm.objective(torch.zeros(5, dtype=D), reg.x, reg.y[:-1])
    with pytest.raises(ValueError, match="w must have 5 entries"):
        erm.objective(torch.zeros(4, dtype=D), reg.x, reg.y)
    with pytest.raises(ValueError, match="lam must be >= 0"):
        erm.ridge(reg.x, reg.y, -1.0)
    with pytest.raises(ValueError, match="lr must be > 0"):
        erm.sgd(reg.x, reg.y, lr=0.0, steps=3)
    with pytest.raises(TypeError, match="steps must be an int"):
        erm.sgd(reg.x, reg.y, lr=0.1, steps=3.0)
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        erm.sgd(reg.x, reg.y, lr=0.1, steps=3, batch_size=1, generator=0)
    # generator=None: a fixed default seed, never the global random state
    r1 = erm.sgd(reg.x, reg.y, lr=0.1, steps=3, batch_size=1)
    torch.manual_seed(123)
    r2 = erm.sgd(reg.x, reg.y, lr=0.1, steps=3, batch_size=1)
    assert torch.equal(r1.iterates, r2.iterates)
    with pytest.raises(TypeError, match="w0 and x must have the same dtype"):
        erm.sgd(reg.x, reg.y, lr=0.1, steps=3, w0=torch.zeros(reg.d, dtype=torch.float32))
    with pytest.raises(ValueError, match="classification labels"):
        erm.sgd(reg.x, reg.y, loss="logistic", lr=0.1, steps=3)
    with pytest.raises(ValueError, match="loss must be one of"):
        erm.objective(torch.zeros(5, dtype=D), reg.x, reg.y, loss="l1")
    with pytest.raises(ValueError, match="w0 must have shape"):
        erm.sgd(reg.x, reg.y, lr=0.1, steps=3, w0=torch.zeros(2, 5, dtype=D))


@pytest.mark.parametrize("name", ["square", "logistic", "hinge"])
def test_one_step_is_a_gradient_step_computed_by_autograd(name, reg, cls):
    ds = reg if name == "square" else cls
    w0 = torch.randn(ds.d, generator=mflib.generator(9), dtype=D)
    w = w0.clone().requires_grad_(True)
    erm.objective(w, ds.x, ds.y, loss=name, lam=0.3).backward()
    run = erm.sgd(ds.x, ds.y, loss=name, lam=0.3, lr=0.1, steps=1, w0=w0)
    assert torch.allclose(run.w, w0 - 0.1 * w.grad, atol=1e-14)


def test_sgd_moments_match_monte_carlo_and_floor():
    ds = data.linear_regression(40, 3, noise=0.5, generator=mflib.generator(3), device="cpu")
    lam, eta, k = 0.1, 0.05, 300
    mom = erm.sgd_moments(ds.x, ds.y, lam=lam, lr=eta, steps=k, record_every=100)
    f_star = erm.objective(erm.ridge(ds.x, ds.y, lam), ds.x, ds.y, lam=lam)
    # the same process as erm.sgd(batch_size=1), 4000 runs at once
    g, R = mflib.generator(5), 4000
    idx = torch.randint(0, 40, (k, R), generator=g)
    w = torch.zeros(R, 3, dtype=D)
    rec = [erm.objective(w, ds.x, ds.y, lam=lam) - f_star]
    for t in range(k):
        xb, yb = ds.x[idx[t]], ds.y[idx[t]]
        w = w - eta * (xb * ((xb * w).sum(1) - yb)[:, None] + lam * w)
        if (t + 1) % 100 == 0:
            rec.append(erm.objective(w, ds.x, ds.y, lam=lam) - f_star)
    finals = torch.stack(rec)
    mc, se = finals.mean(1), finals.std(1) / math.sqrt(R)
    assert torch.all((mc - mom.gap).abs() < 4 * se + 1e-12), (mc, mom.gap, se)
    # the recursion converges to the closed-form floor, which is ~ eta/4 tr E[g g^T] for small eta
    floor = erm.sgd_floor(ds.x, ds.y, lam=lam, lr=eta)
    long = erm.sgd_moments(ds.x, ds.y, lam=lam, lr=eta, steps=5000, record_every=5000)
    assert math.isclose(float(long.gap[-1]), floor, rel_tol=1e-6)
    small = [erm.sgd_floor(ds.x, ds.y, lam=lam, lr=e) for e in (1e-3, 2e-3)]
    assert math.isclose(small[1] / small[0], 2.0, rel_tol=0.01)
    with pytest.raises(ValueError, match="lr"):
        erm.sgd_floor(ds.x, ds.y, lam=lam, lr=10.0)
