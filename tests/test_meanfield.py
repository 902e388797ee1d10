"""Tests of mflib.meanfield: closed forms against autograd and Monte Carlo,
training engine, diagnostics, validation."""

import math

import pytest
import torch

import mflib
from mflib import meanfield as mfm
from mflib import stats




def _setup(d=4, m=6, k=3, seed=0, bias=False, dtype=torch.float64):
    g = mflib.generator(seed)
    th = mfm.init_particles(m, d, bias=bias, init="sphere", generator=g, dtype=dtype)
    te = mfm.init_particles(k, d, bias=bias, out_weight="sign", generator=g, dtype=dtype)
    return th, te, g


@pytest.mark.parametrize("activation", ["relu", "sigmoid"])
@pytest.mark.parametrize("scaling", ["mf", "lazy"])
@pytest.mark.parametrize("bias", [False, True])
def test_grad_matches_autograd(activation, scaling, bias):
    th, te, g = _setup(bias=bias)
    x, y = mfm.gaussian_teacher_data(te, 50, activation=activation, bias=bias, generator=g)
    t = th.clone().requires_grad_()
    mfm.empirical_risk(t, x, y, activation=activation, scaling=scaling).backward()
    gr, risk = mfm.grad(th, x, y, activation=activation, scaling=scaling)
    torch.testing.assert_close(gr, t.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(risk, mfm.empirical_risk(th, x, y, activation=activation,
                                                        scaling=scaling))


def test_forward_scalings():
    th, te, g = _setup(m=9)
    x = torch.randn(5, 4, generator=g, dtype=torch.float64)
    raw = torch.relu(x @ th[:, 1:].T) @ th[:, 0]
    torch.testing.assert_close(mfm.forward(th, x), raw / 9)
    torch.testing.assert_close(mfm.forward(th, x, scaling="lazy"), raw / 3)


@pytest.mark.parametrize("scaling", ["mf", "lazy"])
def test_population_risk_and_grad_against_monte_carlo(scaling):
    """The exact population gradient agrees with a 10^6-sample MC estimate
    within 4 of its standard errors, coordinate by coordinate."""
    th, te, g = _setup(d=5, m=7, k=3, seed=1)
    gr, risk = mfm.population_grad(th, te, scaling=scaling)
    torch.testing.assert_close(risk, mfm.population_risk(th, te, scaling=scaling))
    n, chunks = 10 ** 6, 100
    per = []  # per-sample gradients are too big: use chunk means (i.i.d.) for the standard error
    risks = []
    for _ in range(chunks):
        x, y = mfm.gaussian_teacher_data(te, n // chunks, generator=g)
        gc, rc = mfm.grad(th, x, y, scaling=scaling)
        per.append(gc)
        risks.append(rc)
    per = torch.stack(per)
    mc = per.mean(0)
    se = per.std(0) / math.sqrt(chunks)
    assert bool(((gr - mc).abs() <= 4 * se + 1e-12).all()), ((gr - mc).abs() / se).max()
    risks = torch.stack(risks)
    assert abs(risk - risks.mean()) <= 4 * risks.std() / math.sqrt(chunks)


def test_population_grad_matches_finite_differences():
    th, te, _ = _setup(d=3, m=4, k=2, seed=2)
    gr, _ = mfm.population_grad(th, te)
    eps = 1e-6
    fd = torch.zeros_like(th)
    for i in range(th.shape[0]):
        for j in range(th.shape[1]):
            e = torch.zeros_like(th)
            e[i, j] = eps
            fd[i, j] = (mfm.population_risk(th + e, te) - mfm.population_risk(th - e, te)) / (2 * eps)
    torch.testing.assert_close(gr, fd, rtol=1e-6, atol=1e-8)


def test_population_risk_zero_at_teacher_and_chunking():
    _, te, _ = _setup(k=3)
    th = torch.cat([te, te], 0)  # the teacher duplicated is the same measure
    assert abs(mfm.population_risk(th, te).item()) < 1e-12
    th2, te2, _ = _setup(m=50, k=3, seed=3)
    torch.testing.assert_close(mfm.population_risk(th2, te2, chunk=7), mfm.population_risk(th2, te2))


def test_population_flow_decreases_and_records():
    th, te, _ = _setup(d=5, m=20, k=2, seed=4)
    tr = mfm.train(th, steps=200, lr=1.0, method="population", teacher=te, record=[0, 50, 200])
    assert not tr.diverged
    assert tr.steps.tolist() == [0, 50, 200]
    assert tr.thetas.shape == (3, 20, 6)
    assert tr.risk[-1] < 0.5 * tr.risk[0]
    torch.testing.assert_close(tr.thetas[0], th)
    torch.testing.assert_close(tr.theta, tr.thetas[-1])
    torch.testing.assert_close(tr.times, torch.tensor([0.0, 50.0, 200.0], dtype=torch.float64))


def test_population_flow_matches_sgd_with_many_samples():
    """Online SGD with huge batches follows the population flow."""
    th, te, _ = _setup(d=3, m=10, k=2, seed=5)
    a = mfm.train(th, steps=30, lr=0.5, method="population", teacher=te)
    b = mfm.train(th, steps=30, lr=0.5, method="sgd", teacher=te, batch=100_000,
                  generator=mflib.generator(0))
    assert (a.theta - b.theta).abs().max() < 0.05


def test_sgd_on_finite_data_and_reg_and_float32():
    th, te, g = _setup(d=3, m=30, k=2, seed=6, dtype=torch.float32)
    x, y = mfm.gaussian_teacher_data(te, 64, generator=g)
    for reg in ("l2", "path"):
        tr = mfm.train(th, steps=100, lr=0.5, method="sgd", x=x, y=y, batch=16, reg=reg,
                       lam=1e-3, record=5, generator=mflib.generator(1))
        assert tr.theta.dtype == torch.float32 and not tr.diverged
        assert tr.risk.shape[0] == tr.steps.shape[0] >= 2


def test_weight_decay_shrinks_without_data_signal():
    th, _, _ = _setup(m=5)
    x = torch.randn(10, 4, dtype=torch.float64)
    y = torch.zeros(10, dtype=torch.float64)
    tr = mfm.train(th, steps=100, lr=0.1, method="gd", x=x, y=y, reg="l2", lam=1.0)
    assert tr.theta.norm() < th.norm() * 0.5


def test_balance_conserved_by_relu_flow():
    """a^2 - |w|^2 is conserved by the gradient flow of a 2-homogeneous unit."""
    th, te, _ = _setup(d=3, m=8, k=2, seed=7)
    tr = mfm.train(th, steps=2000, lr=1e-3, method="population", teacher=te)
    bal0 = th[:, 0] ** 2 - (th[:, 1:] ** 2).sum(1)
    bal1 = tr.theta[:, 0] ** 2 - (tr.theta[:, 1:] ** 2).sum(1)
    assert (bal1 - bal0).abs().max() < 1e-2


def test_divergence_is_reported_not_nan():
    th, te, g = _setup(m=10, seed=8)
    x, y = mfm.gaussian_teacher_data(te, 32, generator=g)
    tr = mfm.train(th, steps=300, lr=1e6, method="gd", x=x, y=y, record=list(range(0, 301, 10)))
    assert tr.diverged
    assert bool(torch.isfinite(tr.theta).all()) and bool(torch.isfinite(tr.risk).all())
    assert tr.steps.numel() == tr.risk.numel() >= 1
    with pytest.raises(mflib.Diverged):
        mfm.train(th, steps=300, lr=1e6, method="gd", x=x, y=y, on_diverge="raise")


def test_relative_scale_and_displacement():
    th, te, g = _setup(d=3, m=40, seed=9)
    x, y = mfm.gaussian_teacher_data(te, 20, generator=g)
    rs = mfm.relative_scale(th, x, y)
    assert rs["jac"] > 0 and rs["hess"] > 0 and rs["kappa"] > 0
    # Jacobian norm agrees with the autograd Jacobian
    jac = torch.autograd.functional.jacobian(lambda t: mfm.forward(t, x), th).reshape(20, -1)
    lam = torch.linalg.eigvalsh(jac @ jac.T / 20)[-1].sqrt().item()
    assert abs(lam - rs["jac"]) < 1e-8
    assert mfm.rms_displacement(th, th) == 0.0
    assert abs(mfm.rms_displacement(th, th + 1.0) - 2.0) < 1e-12


def test_fit_slope_and_kernel():
    assert abs(stats.fit_slope([1, 10, 100], [3.0, 0.3, 0.03]) + 1) < 1e-12
    x = torch.randn(6, 3, dtype=torch.float64, generator=mflib.generator(0))
    k = mfm.relu_kernel(x, kind="nngp")
    assert torch.allclose(torch.diagonal(k), (x * x).sum(1) / 6)  # |x|^2 kappa1(0) / d = |x|^2/(2d)
    # NTK of the lazy network at large width, by Monte Carlo
    th = mfm.init_particles(100_000, 3, generator=mflib.generator(1))
    jac = torch.autograd.functional.jacobian(lambda t: mfm.forward(t, x[:2], scaling="lazy"), th)
    emp = torch.einsum("imp,jmp->ij", jac, jac)
    torch.testing.assert_close(emp, mfm.relu_kernel(x[:2]), rtol=0.03, atol=0.01)


def test_init_variants():
    c = mfm.init_particles(8, 1, bias=True, init="circle", radius=2.0)
    assert torch.allclose(c[:, 1:].norm(dim=1), torch.full((8,), 2.0, dtype=torch.float64))
    s = mfm.init_particles(8, 4, init="sphere", radius=3.0)
    assert torch.allclose(s.norm(dim=1), torch.full((8,), 3.0, dtype=torch.float64))
    z = mfm.init_particles(8, 4, out_weight="zero", bias=True)
    assert z.shape == (8, 6) and bool((z[:, 0] == 0).all())
    a = mfm.init_particles(5, 2, generator=mflib.generator(3))
    b = mfm.init_particles(5, 2, generator=mflib.generator(3))
    assert torch.equal(a, b)


def test_bad_inputs():
    th, te, g = _setup()
    x, y = mfm.gaussian_teacher_data(te, 10, generator=g)
    with pytest.raises(ValueError, match="m"):
        mfm.init_particles(0, 3)
    with pytest.raises(TypeError, match="m"):
        mfm.init_particles(2.5, 3)
    with pytest.raises(ValueError, match="theta"):
        mfm.forward(th[:, :3], x)
    with pytest.raises(ValueError, match="x and y"):
        mfm.grad(th, x, y[:5])
    bad = x.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="x"):
        mfm.train(th, steps=1, lr=0.1, x=bad, y=y)
    with pytest.raises(ValueError, match="lr"):
        mfm.train(th, steps=1, lr=-1.0, x=x, y=y)
    with pytest.raises(ValueError, match="scaling"):
        mfm.forward(th, x, scaling="ntk")
    with pytest.raises(ValueError, match="activation"):
        mfm.forward(th, x, activation="tanh")
    with pytest.raises(ValueError, match="teacher"):
        mfm.train(th, steps=1, lr=0.1, method="population")
    with pytest.raises(ValueError, match="relu"):
        mfm.train(th, steps=1, lr=0.1, method="population", teacher=te, activation="sigmoid")
    with pytest.raises(ValueError, match="teacher"):
        mfm.population_risk(th, te[:, :3])
    with pytest.raises(TypeError, match="x"):
        mfm.forward(th, x.numpy())
    with pytest.raises(TypeError, match="theta and x must have the same dtype"):
        mfm.forward(th, x.float())
    with pytest.raises(ValueError, match="record"):
        mfm.train(th, steps=5, lr=0.1, x=x, y=y, record=[0, 9])
    with pytest.raises(ValueError, match="theta0 and theta1"):
        mfm.rms_displacement(th, th[:3])


def test_scaling_exponent_interpolates_mf_and_lazy():
    th = mfm.init_particles(16, 3, generator=mflib.generator(0))
    x = torch.randn(5, 3, dtype=torch.float64, generator=mflib.generator(1))
    assert torch.allclose(mfm.forward(th, x, scaling=1.0), mfm.forward(th, x, scaling="mf"))
    assert torch.allclose(mfm.forward(th, x, scaling=0.5), mfm.forward(th, x, scaling="lazy"))
    mid = mfm.forward(th, x, scaling=0.75)
    assert torch.allclose(mid, mfm.forward(th, x, scaling="mf") * 16 ** 0.25)
    with pytest.raises(ValueError, match="scaling"):
        mfm.forward(th, x, scaling=0.2)
    with pytest.raises(ValueError, match="scaling"):
        mfm.forward(th, x, scaling="ntk")


def test_sgd_stream_distance_zero_for_one_stream_and_grows_with_step():
    th, te, g = _setup(d=4, m=40, k=2, seed=3)
    xe = torch.randn(64, 4, generator=g, dtype=torch.float64)
    same = mfm.sgd_stream_distance(th, te, xe, lr=0.05, time=1.0, batch=8, seeds=(5, 5))
    assert same == 0.0
    d = [mfm.sgd_stream_distance(th, te, xe, lr=lr, time=1.0, batch=8, seeds=(5, 6))
         for lr in (0.01, 0.04)]
    assert 0 < d[0] < d[1]
    with pytest.raises(TypeError, match="seeds"):
        mfm.sgd_stream_distance(th, te, xe, lr=0.05, time=1.0, batch=8, seeds=5)
    with pytest.raises(ValueError, match="time"):
        mfm.sgd_stream_distance(th, te, xe, lr=0.05, time=-1.0, batch=8)


def test_linearised_displacement_matches_gd_on_the_linear_model():
    g = mflib.generator(4)
    th = mfm.init_particles(30, 2, generator=g)
    x = torch.randn(6, 2, generator=g, dtype=torch.float64)
    y = torch.randn(6, generator=g, dtype=torch.float64)
    pred = mfm.linearised_displacement(th, x, y)
    J = torch.func.jacrev(lambda t: mfm.forward(t, x, scaling="lazy"))(th).reshape(6, -1)
    r0 = y - mfm.forward(th, x, scaling="lazy")
    lr = 1 / float(torch.linalg.matrix_norm(J, ord=2)) ** 2
    delta = torch.zeros(J.shape[1], dtype=torch.float64)
    for _ in range(20000):                      # GD on the linearised model, from delta = 0
        delta -= lr * J.T @ (J @ delta - r0)
    assert math.isclose(pred, float(delta.norm() / math.sqrt(30)), rel_tol=1e-6)


def test_cap_particles_keep_positive_output_weights():
    th = mfm.cap_particles(50, 4, radius=0.5, generator=mflib.generator(1))
    assert th.shape == (50, 5)
    torch.testing.assert_close(th.norm(dim=1), torch.full((50,), 0.5, dtype=torch.float64))
    assert bool((th[:, 0] > th[:, 1:].norm(dim=1)).all())
    te = mfm.init_particles(3, 4, out_weight="sign", generator=mflib.generator(2))
    tr = mfm.train(th, steps=300, lr=1.0, method="population", teacher=te, keep_thetas=False)
    assert bool((tr.theta[:, 0] > 0).all())        # a^2 - |w|^2 > 0 is conserved
    with pytest.raises(ValueError, match="radius"):
        mfm.cap_particles(5, 2, radius=0.0)


def test_student_narrower_than_teacher_stays_above_threshold():
    """Moved from Lecture 5 (lower end of claim cb_mstar): a relu student with fewer units
    than a teacher of orthonormal units with output weights of both signs cannot reach it."""
    d, k = 6, 3
    w = torch.linalg.qr(torch.randn(d, k, generator=mflib.generator(0), dtype=torch.float64))[0].T
    te = torch.cat([torch.tensor([1.0, -1.0, 1.0], dtype=torch.float64)[:, None], w], 1)
    r0 = mfm.population_risk(torch.zeros(1, 1 + d, dtype=torch.float64), te).item()
    for s in range(2):
        th = mfm.init_particles(k - 1, d, generator=mflib.generator(10 + s))
        tr = mfm.train(th, steps=400, lr=2.0, method="population", teacher=te, keep_thetas=False)
        assert tr.risk[-1].item() / r0 > 2e-2


def test_max_unit_hessian_grows_with_width():
    """Moved from Lecture 5 (claim ml_lazy_hmax): the max over particles of one unit's
    Hessian norm is a maximum of m i.i.d. terms, so it grows with m."""
    te = mfm.init_particles(3, 4, out_weight="sign", generator=mflib.generator(0))
    x, y = mfm.gaussian_teacher_data(te, 20, generator=mflib.generator(1))
    hess = {m: sum(mfm.relative_scale(mfm.init_particles(m, 4, generator=mflib.generator(m + s)),
                                      x, y, scaling="lazy")["hess"] * math.sqrt(m) for s in range(3))
            for m in (10, 1000)}
    assert hess[1000] > hess[10]


# ----------------------------------------------------------------------------- Langevin noise
@pytest.mark.parametrize("method", ["population", "gd", "sgd"])
def test_zero_temperature_is_plain_training(method):
    """temperature=0 draws nothing: bit-identical to training without the argument."""
    th, te, g = _setup(d=3, m=12, k=2, seed=11)
    x, y = mfm.gaussian_teacher_data(te, 20, generator=g)
    kw = dict(steps=25, lr=0.3, method=method, teacher=te, reg="l2", lam=0.05, record=[0, 7, 25],
              batch=4)
    if method != "population":
        kw.update(x=x, y=y)
    a = mfm.train(th, generator=mflib.generator(3), **kw)
    b = mfm.train(th, temperature=0.0, generator=mflib.generator(3), **kw)
    assert torch.equal(a.thetas, b.thetas) and torch.equal(a.risk, b.risk)
    if method == "population":     # nothing random at all: the generator is not even read
        c = mfm.train(th, temperature=0, generator=mflib.generator(99), **kw)
        assert torch.equal(a.thetas, c.thetas)


def test_zero_temperature_matches_explicit_euler_steps():
    """The population flow with weight decay, written out step by step (the pre-Langevin engine)."""
    th, te, _ = _setup(d=3, m=7, k=2, seed=12)
    lr, lam = 0.2, 0.1
    cur = th.clone()
    for _ in range(5):
        gr, _ = mfm.population_grad(cur, te)
        cur = cur - lr * lam * cur
        cur = cur - lr * 7 * gr
    tr = mfm.train(th, steps=5, lr=lr, method="population", teacher=te, reg="l2", lam=lam,
                   temperature=0.0)
    torch.testing.assert_close(tr.theta, cur, rtol=1e-12, atol=1e-12)


def _no_signal(m=4000, d=3):
    """Inputs x = 0: every relu unit outputs 0, so the risk exerts no force on any particle."""
    th = mfm.init_particles(m, d, generator=mflib.generator(0))
    x = torch.zeros(5, d, dtype=torch.float64)
    return th, x, torch.zeros(5, dtype=torch.float64)


def test_langevin_one_step_noise_has_variance_two_eta_tau():
    th, x, y = _no_signal()
    lr, tau = 0.05, 0.3
    tr = mfm.train(th, steps=1, lr=lr, method="gd", x=x, y=y, temperature=tau,
                   generator=mflib.generator(1))
    xi = (tr.theta - th).flatten()
    n = xi.numel()
    assert abs(xi.mean().item()) < 4 * math.sqrt(2 * lr * tau / n)
    # variance of a sample variance: 2 sigma^4 / n
    assert xi.var().item() == pytest.approx(2 * lr * tau, rel=4 * math.sqrt(2 / n))


def test_langevin_with_weight_decay_reaches_the_ou_variance():
    """theta <- (1 - eta lam) theta + sqrt(2 eta tau) xi: stationary variance 2 tau / (lam (2 - eta lam))."""
    th, x, y = _no_signal(m=2000)
    lr, lam, tau = 0.1, 1.0, 0.2
    tr = mfm.train(th, steps=150, lr=lr, method="gd", x=x, y=y, reg="l2", lam=lam,
                   temperature=tau, generator=mflib.generator(2), keep_thetas=False)
    want = 2 * tau / (lam * (2 - lr * lam))
    v = tr.theta.var(0)                       # per coordinate, over 2000 independent particles
    assert v.numpy() == pytest.approx([want] * v.numel(), rel=4 * math.sqrt(2 / 2000))
    assert tr.risk[-1].item() == pytest.approx(0.5 * lam * (tr.theta ** 2).sum(1).mean().item())


@pytest.mark.parametrize("method", ["population", "sgd"])
def test_langevin_is_seeded(method):
    th, te, _ = _setup(d=3, m=10, k=2, seed=13)
    kw = dict(steps=20, lr=0.2, method=method, teacher=te, reg="l2", lam=0.1, temperature=0.05,
              batch=8, keep_thetas=False)
    a = mfm.train(th, generator=mflib.generator(5), **kw)
    b = mfm.train(th, generator=mflib.generator(5), **kw)
    c = mfm.train(th, generator=mflib.generator(6), **kw)
    assert torch.equal(a.theta, b.theta) and torch.equal(a.risk, b.risk)
    assert not torch.equal(a.theta, c.theta)


def test_langevin_float32_and_bad_temperature():
    th, te, _ = _setup(d=3, m=10, k=2, seed=14, dtype=torch.float32)
    tr = mfm.train(th, steps=5, lr=0.1, method="sgd", teacher=te, temperature=0.1, reg="l2", lam=0.1)
    assert tr.theta.dtype == torch.float32 and not tr.diverged
    with pytest.raises(ValueError, match="temperature"):
        mfm.train(th, steps=1, lr=0.1, method="sgd", teacher=te, temperature=-0.1)
    with pytest.raises(ValueError, match="temperature"):
        mfm.train(th, steps=1, lr=0.1, method="sgd", teacher=te, temperature=float("nan"))
    with pytest.raises(TypeError, match="temperature"):
        mfm.train(th, steps=1, lr=0.1, method="sgd", teacher=te, temperature="hot")
