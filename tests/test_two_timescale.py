"""Tests of mflib.two_timescale (Marion & Berthier 2023)."""

import math

import pytest
import torch

import mflib
from mflib import two_timescale as tt

ETA = 4e-3
T = tt.paper_target()
D = torch.float64


def _state(seed=0, B=2, m=20):
    g = mflib.generator(seed)
    u = tt.init_positions(m, T, batch=B, generator=g)
    a = torch.randn(B, m + 1, generator=g, dtype=D)
    return a, u


def _dense_integral(fun, n=200_001):
    # trapezoid rule: O(1/n) error at the jumps of f*, O(1/n^2) elsewhere
    x = torch.linspace(0, 1, n, dtype=D)
    y = fun(x)
    return torch.trapezoid(y, x, dim=-1)


# ------------------------------------------------------------------ activation


def test_smooth_step_values_and_derivative():
    z = torch.tensor([-1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 2.0], dtype=D)
    assert torch.allclose(tt.smooth_step(z), torch.tensor([0, 0, 4 * 0.25 ** 3, 0.5, 1 - 4 * 0.25 ** 3, 1, 1], dtype=D))
    zz = torch.linspace(-0.7, 0.7, 1401, dtype=D).requires_grad_()
    (g,) = torch.autograd.grad(tt.smooth_step(zz).sum(), zz)
    assert torch.allclose(g, tt.smooth_step_grad(zz.detach()), atol=1e-12)
    # C^1, integral of the derivative is 1, and sigma(z) + sigma(-z) = 1
    assert float(tt.smooth_step_grad(torch.tensor([-0.5, 0.5], dtype=D)).abs().max()) == 0.0
    x = torch.linspace(-0.5, 0.5, 100_001, dtype=D)
    assert abs(float(torch.trapezoid(tt.smooth_step_grad(x), x)) - 1) < 1e-9
    assert torch.allclose(tt.smooth_step(x) + tt.smooth_step(-x), torch.ones_like(x))


# ------------------------------------------------------------------ exact population risk


def test_population_loss_matches_dense_quadrature():
    a, u = _state(1)
    loss = tt.population_loss_grad(a, u, T, ETA, grad=False)
    dense = _dense_integral(lambda x: (tt.network(x, a, u, ETA) - T(x)) ** 2)
    assert torch.allclose(loss, dense, rtol=5e-5)


def test_population_gradient_matches_autograd_and_dense_quadrature():
    a, u = _state(2)
    a = a.clone().requires_grad_()
    u = u.clone().requires_grad_()
    loss, ga, gu = tt.population_loss_grad(a, u, T, ETA)
    ga2, gu2 = torch.autograd.grad(tt.population_loss_grad(a, u, T, ETA, grad=False).sum(), (a, u))
    assert torch.allclose(ga, ga2, atol=1e-10) and torch.allclose(gu, gu2, atol=1e-9)
    # the dense (trapezoid) integral of the network, differentiated by autograd
    dense = _dense_integral(lambda x: (tt.network(x, a, u, ETA) - T(x)) ** 2).sum()
    ga3, gu3 = torch.autograd.grad(dense, (a, u))
    assert torch.allclose(ga, ga3, rtol=1e-4, atol=5e-4)
    assert torch.allclose(gu, gu3, rtol=1e-4, atol=5e-3)


def test_floor_and_optimal_outer():
    u = T.jumps[None].clone()
    a = torch.cat([T.values[:1], T.heights])[None]
    loss = tt.population_loss_grad(a, u, T, ETA, grad=False)
    assert math.isclose(float(loss), tt.step_floor(T, ETA), rel_tol=1e-10)
    assert math.isclose(tt.step_floor(T, ETA), ETA * 56 / 28)
    _, u = _state(3)
    a_star = tt.optimal_outer(u, T, ETA)
    _, ga, _ = tt.population_loss_grad(a_star, u, T, ETA)
    assert float(ga.abs().max()) < 1e-8


# ------------------------------------------------------------------ limits


def test_heaviside_limit_closes_gaps_and_moves_only_flanking_neurons():
    u0 = torch.tensor([[0.05, 0.15, 0.25, 0.3, 0.4, 0.45, 0.55, 0.6, 0.7, 0.75, 0.85, 0.95]], dtype=D)
    res = tt.heaviside_limit(u0, T, 0.05, n_steps=2000)
    final = res.u[0, -1]
    assert float(tt.jump_distance(final, T).max()) == 0.0
    assert float(res.loss[0, -1]) < 1e-12
    moved = (final - u0[0]).abs() > 0
    # flanking neurons: 0.15|0.2|0.25, 0.3|0.35|0.4, 0.45|0.5|0.55, 0.6|0.65|0.7, 0.75|0.8|0.85
    flanking = torch.tensor([False, True, True, True, True, True, True, True, True, True, True, False])
    assert torch.equal(moved, flanking)
    # initial velocities: (J d_R / (d_L + d_R))^2 towards the jump at 0.2 (J = 4, d_L = d_R = 0.05)
    step = res.u[0, 1] - u0[0]
    dtau = float(res.tau[1])
    assert math.isclose(float(step[1]) / dtau, 4.0, rel_tol=1e-9)
    assert math.isclose(float(step[2]) / dtau, -4.0, rel_tol=1e-9)
    assert float(step[0]) == 0.0 and float(step[11]) == 0.0
    # the loss decreases
    assert bool((res.loss[0, 1:] <= res.loss[0, :-1] + 1e-12).all())


def test_small_eps_follows_the_limits_and_reaches_the_floor():
    u0 = tt.init_positions(20, T, generator=mflib.generator(0))
    a0 = torch.zeros(1, 21, dtype=D)
    pop = tt.train_population(a0, u0, T, ETA, 2e-5, 0.035, n_records=36)
    lim = tt.train_limit(u0, T, ETA, 0.035, n_records=36)
    hv = tt.heaviside_limit(u0, T, 0.035, n_steps=700, n_records=36)
    assert float(tt.jump_distance(pop.u[0, -1], T).max()) < 1e-3
    assert float(pop.loss[0, -1]) < 1.5 * tt.step_floor(T, ETA)
    assert float((pop.u - lim.u).abs().max()) < 3 * ETA   # finite-eps lag of a
    assert float((lim.u - hv.u).abs().max()) < ETA
    assert not bool(pop.diverged.any())


def _tt_start(m=12):
    u0 = tt.init_positions(m, T, generator=mflib.generator(0))
    return torch.zeros(1, m + 1, dtype=D), u0


@pytest.mark.parametrize("eps,tau_max", [(1.0, 1.0), (2e-5, 0.02)])
def test_population_flow_does_not_depend_on_the_records(eps, tau_max):
    # the records only shorten the steps that cross them: the state at tau_max is the same for
    # any number of records, within the first-order error of the integrator (below max_disp * eta
    # in u, measured: 0.26 eta at eps = 1, tau = 2).  Before the fix the step was capped by the
    # record spacing and the a-flow ignored: 11 records against 1001 moved neurons by ~50 eta.
    a0, u0 = _tt_start()
    md = 0.25
    runs = [tt.train_population(a0, u0, T, ETA, eps, tau_max, n_records=n, max_disp=md)
            for n in (3, 11, 101, 1001)]
    ref = runs[-1]
    for r in runs[:-1]:
        assert float((r.u[0, -1] - ref.u[0, -1]).abs().max()) < md * ETA
        assert math.isclose(float(r.loss[0, -1]), float(ref.loss[0, -1]), rel_tol=2e-2)
        assert float((r.a - ref.a).abs().max()) < 0.1
        assert r.steps <= ref.steps          # more records can only shorten steps
    # the records lie on the grid and the state at a shared time agrees too
    assert torch.allclose(runs[1].tau, torch.linspace(0, tau_max, 11, dtype=D))
    assert float((runs[2].u[0, ::10] - ref.u[0, ::100]).abs().max()) < md * ETA


def test_population_flow_converges_at_first_order_in_max_disp():
    # halving max_disp halves the change (first order): |u(md) - u(md/2)| <= md * eta
    for eps, tau_max in ((1.0, 0.5), (2e-5, 0.02)):
        a0, u0 = _tt_start()
        u = [tt.train_population(a0, u0, T, ETA, eps, tau_max, n_records=3, max_disp=md).u[0, -1]
             for md in (0.2, 0.1, 0.05)]
        d1 = float((u[0] - u[1]).abs().max())
        d2 = float((u[1] - u[2]).abs().max())
        assert d1 < 0.2 * ETA and d2 < 0.1 * ETA
        assert d2 < 0.7 * d1                  # ratio 1/2 for a first-order method


@pytest.mark.parametrize("eps", [1.0, 2e-5])
def test_population_first_step_from_zero_outer_weights_moves_the_neurons(eps):
    # at a = 0, grad_u R = 0; a moves at once and drags the neurons: the first step moves u
    # (it used to be frozen for a whole record spacing), as far as the flow does
    a0, u0 = _tt_start()
    one = tt.train_population(a0, u0, T, ETA, eps, 1e-3, n_records=2)
    fine = tt.train_population(a0, u0, T, ETA, eps, 1e-3, n_records=2, max_disp=0.02)
    move = float((one.u[0, -1] - u0[0]).abs().max())
    assert move > 0.0
    assert float((one.u[0, -1] - fine.u[0, -1]).abs().max()) < 0.25 * move + 0.25 * ETA


# ------------------------------------------------------------------ SGD


def test_sgd_mean_step_is_the_population_gradient():
    a, u = _state(4, B=1)
    eta = 0.1        # wide steps: many samples fall in the windows, so the CLT applies
    R = 4_000
    A, U = a.expand(R, -1).contiguous(), u.expand(R, -1).contiguous()
    h, eps = 1e-3, 0.5
    res = tt.train_sgd(A, U, T, eta, eps, h, 1, generator=mflib.generator(5), n_records=2)
    _, ga, gu = tt.population_loss_grad(a, u, T, eta)
    mean_ga = (A - res.a).mean(0) / h
    se = ((A - res.a) / h).std(0) / math.sqrt(R)
    assert bool(((mean_ga - ga[0]).abs() < 5 * se + 1e-9).all())
    mean_gu = (U - res.u[:, -1]).mean(0) / (h * eps)
    se_u = ((U - res.u[:, -1]) / (h * eps)).std(0) / math.sqrt(R)
    assert bool(((mean_gu - gu[0]).abs() < 5 * se_u + 1e-9).all())


def test_divergence_is_reported_not_nan():
    a, u = _state(6)
    res = tt.train_sgd(a, u, T, ETA, 1.0, 1e3, 50, generator=mflib.generator(0), n_records=11)
    assert bool(res.diverged.all())
    assert bool(torch.isfinite(res.u).all()) and bool(torch.isfinite(res.loss).all())
    # a start whose risk overflows computes no record: refused, naming the argument
    big = torch.full_like(a, 1e200)
    with pytest.raises(ValueError, match="a0"):
        tt.train_population(big, u, T, ETA, 1.0, 0.01, n_records=3)


# ------------------------------------------------------------------ fixed-sample experiments


def test_fixed_sample_gd_runs_and_decreases():
    X, y = tt.additive_step_problem(2, 200, generator=mflib.generator(0))
    assert X.shape == (200, 2) and float(y.max()) <= 6
    r = tt.train_fixed_sample(X, y, units=5, activation="step", lr_a=1.0, lr_u=0.01, epochs=50,
                              runs=3, generator=mflib.generator(1))
    assert r.u.shape == (3, 5, 2) and bool((r.history[:, -1] < r.history[:, 0]).all())
    X, y = tt.relu_teacher_problem(100, generator=mflib.generator(0))
    r = tt.train_fixed_sample(X, y, units=4, activation="relu", lr_a=1.0, lr_u=1.0, epochs=20,
                              runs=2, generator=mflib.generator(1))
    assert r.rmse.shape == (2,)


def _fixed(engine, X, y, **kw):
    return tt.train_fixed_sample(X, y, generator=mflib.generator(1), engine=engine, **kw)


@pytest.mark.parametrize("problem, act, kw", [
    # the smooth step in three dimensions, a wide window and a fast u (many window crossings)
    (lambda: tt.additive_step_problem(3, 300, generator=mflib.generator(0), dtype=D), "step",
     dict(units=6, lr_a=1.0, lr_u=0.3, epochs=12, runs=3, eta=0.05)),
    # the paper's two-timescale settings (eta = 0.01, lr_u = 0.01), stable, so many epochs
    (lambda: tt.additive_step_problem(2, 400, generator=mflib.generator(0), dtype=D), "step",
     dict(units=10, lr_a=1.0, lr_u=0.01, epochs=300, runs=2)),
    # ten dimensions, 100 units, the paper's two-timescale rates
    (lambda: tt.additive_step_problem(10, 2000, generator=mflib.generator(0), dtype=D), "step",
     dict(units=10, lr_a=1.0, lr_u=0.01, epochs=20, runs=2)),
    (lambda: tt.relu_teacher_problem(300, generator=mflib.generator(0), dtype=D), "relu",
     dict(units=6, lr_a=1.0, lr_u=0.3, epochs=100, runs=3)),
    (lambda: tt.additive_step_problem(2, 200, generator=mflib.generator(0), dtype=D), "relu",
     dict(units=5, lr_a=1.0, lr_u=1.0, epochs=60, runs=2)),
])
def test_fixed_sample_compiled_matches_autograd(problem, act, kw):
    """The sorted-sample engine computes the same objective and gradient as the
    elementwise autograd engine: the runs agree to rounding (the order of the
    sums differs).  Short enough that rounding is not amplified (the standard
    regime is sensitive to it: differences grow ~e-fold per few epochs)."""
    X, y = problem()
    ref = _fixed("torch", X, y, activation=act, **kw)
    new = _fixed("compiled", X, y, activation=act, **kw)
    for name in ("a", "u", "rmse", "history"):
        torch.testing.assert_close(getattr(new, name), getattr(ref, name), rtol=0, atol=1e-12, msg=name)


def test_fixed_sample_windows_at_sample_points():
    """Positions put exactly on sample points and window edges (z = -1/2, 0, 1/2
    exactly): the compiled engine's window bounds agree with the elementwise rule."""
    from mflib import _fixed_sample

    eta = 0.25                                     # a power of two: x - u and (x - u) / eta exact
    X = torch.arange(64, dtype=D)[:, None] / 64
    y = (X[:, 0] > 0.5).double()
    u0 = torch.tensor([[[0.5], [0.375], [0.625], [0.0]]], dtype=D)    # windows end on sample points
    a0 = torch.tensor([[[1.0], [0.5], [-0.25], [2.0]]], dtype=D)
    for relu in (False, True):
        a, u, rmse, hist, div = _fixed_sample.train(X.numpy(), y.numpy(), a0.numpy(), u0.numpy(), relu=relu,
                                                    eta=eta, lr_a=0.5, lr_u=0.0, epochs=1, threads=1)
        z = (X[None, :, None, :] - u0[:, None]) / (1.0 if relu else eta)
        phi = torch.relu(z) if relu else tt.smooth_step(z)
        r = (a0[:, None] * phi).sum((2, 3)) - y
        assert div[0] == -1 and abs(hist[0, 0] - float(r.norm()) / 64) < 1e-15


def test_fixed_sample_engines_dispatch_and_threads():
    X, y = tt.additive_step_problem(2, 150, generator=mflib.generator(0), dtype=D)
    kw = dict(units=4, activation="step", lr_a=1.0, lr_u=0.01, epochs=30, runs=5)
    auto = _fixed("auto", X, y, **kw)
    one = _fixed("compiled", X, y, threads=1, **kw)
    three = _fixed("compiled", X, y, threads=3, **kw)
    for name in ("a", "u", "rmse", "history"):        # float64 on the CPU: the compiled engine, bit for bit
        assert torch.equal(getattr(auto, name), getattr(one, name))
        assert torch.equal(getattr(three, name), getattr(one, name))
    X32, y32 = tt.additive_step_problem(2, 150, generator=mflib.generator(0))
    r_auto = _fixed("auto", X32, y32, **kw)             # float32: the torch engine, as before
    r_torch = _fixed("torch", X32, y32, **kw)
    assert r_auto.u.dtype == torch.float32 and torch.equal(r_auto.u, r_torch.u)
    with pytest.raises(ValueError, match="engine"):
        _fixed("compiled", X32, y32, **kw)
    with pytest.raises(ValueError, match="engine"):
        _fixed("numba", X, y, **kw)
    with pytest.raises(mflib.Diverged):
        _fixed("compiled", X, y, **dict(kw, activation="relu", lr_a=1e100, lr_u=1e100))


# ------------------------------------------------------------------ validation


@pytest.mark.parametrize("call, exc, word", [
    (lambda: tt.init_positions(0, T, generator=mflib.generator(0)), ValueError, "m"),
    (lambda: tt.init_positions(2.5, T, generator=mflib.generator(0)), TypeError, "m"),
    (lambda: tt.init_positions(20, T, generator=0), TypeError, "generator"),
    (lambda: tt.init_positions(5, T, generator=mflib.generator(0)), ValueError, "m"),
    (lambda: tt.population_loss_grad(torch.zeros(21, dtype=D), torch.zeros(20, dtype=D), T, 0.0), ValueError, "eta"),
    (lambda: tt.population_loss_grad(torch.zeros(21, dtype=D), torch.zeros(20, dtype=D), T, -1), ValueError, "eta"),
    (lambda: tt.population_loss_grad(torch.zeros(20, dtype=D), torch.zeros(20, dtype=D), T, ETA), ValueError, "a"),
    (lambda: tt.population_loss_grad(torch.zeros(21, dtype=D), torch.full((20,), math.nan, dtype=D), T, ETA), ValueError, "u"),
    (lambda: tt.population_loss_grad(torch.zeros(21, dtype=D), [0.1] * 20, T, ETA), TypeError, "u"),
    (lambda: tt.population_loss_grad(torch.zeros(21, dtype=D), torch.zeros(20, dtype=D), "T", ETA), TypeError, "target"),
    (lambda: tt.StepTarget(torch.tensor([0.5, 0.2], dtype=D), torch.ones(3, dtype=D)), ValueError, "jumps"),
    (lambda: tt.StepTarget(torch.tensor([0.2, 1.5], dtype=D), torch.ones(3, dtype=D)), ValueError, "jumps"),
    (lambda: tt.StepTarget(torch.tensor([0.2, 0.5], dtype=D), torch.ones(2, dtype=D)), ValueError, "values"),
    (lambda: tt.StepTarget(torch.tensor([0.2, math.inf], dtype=D), torch.ones(3, dtype=D)), ValueError, "jumps"),
    (lambda: tt.train_population(torch.zeros(21, dtype=D), torch.zeros(20, dtype=D), T, ETA, 0.0, 1.0), ValueError, "eps"),
    (lambda: tt.train_population(torch.zeros(21, dtype=D), torch.zeros(20, dtype=D), T, ETA, 1.0, -1.0), ValueError, "tau_max"),
    (lambda: tt.train_sgd(torch.zeros(21, dtype=D), torch.zeros(20, dtype=D), T, ETA, 1.0, 0.0, 10, generator=mflib.generator(0)), ValueError, "h"),
    (lambda: tt.heaviside_limit(torch.tensor([0.5, 0.1], dtype=D), T, 1.0), ValueError, "sorted"),
    (lambda: tt.train_fixed_sample(torch.zeros(3, 1), torch.zeros(3), units=2, activation="tanh", lr_a=1.0, lr_u=1.0, epochs=1, runs=1, generator=mflib.generator(0)), ValueError, "activation"),
])
def test_bad_inputs(call, exc, word):
    with pytest.raises(exc, match=word):
        call()


def test_heaviside_limit_without_two_neurons_per_piece_can_miss_a_jump():
    target = tt.StepTarget(torch.tensor([0.3, 0.6], dtype=D), torch.tensor([0.0, 1.0, 0.0], dtype=D))
    good = tt.heaviside_limit(torch.tensor([0.45, 0.9, 0.95], dtype=D), target, 5.0, n_steps=5000)
    bad = tt.heaviside_limit(torch.tensor([0.5, 0.9, 0.95], dtype=D), target, 5.0, n_steps=5000)
    assert float(good.loss[0, -1]) < 1e-12
    assert math.isclose(float(bad.loss[0, -1]), 0.15, rel_tol=1e-9)
    assert float(tt.jump_distance(bad.u[0, -1], target)[0]) > 0.2


def test_excess_risk_is_the_gap_to_the_optimal_outer_weights():
    target = tt.paper_target(D)
    u = tt.init_positions(8, target, batch=3, generator=mflib.generator(5), min_per_piece=0)
    a = torch.randn(3, 9, generator=mflib.generator(6), dtype=D)
    eta = 0.02
    gap = tt.population_loss_grad(a, u, target, eta, grad=False) \
        - tt.population_loss_grad(tt.optimal_outer(u, target, eta), u, target, eta, grad=False)
    ex = tt.excess_risk(a, u, target, eta)
    assert torch.allclose(ex, gap, rtol=1e-9, atol=1e-12)
    assert float(tt.excess_risk(tt.optimal_outer(u, target, eta), u, target, eta).abs().max()) < 1e-10
    # records axis: (runs, records, m)
    red = tt.reduced_risk(u, target, eta)
    assert torch.allclose(tt.population_loss_grad(a, u, target, eta, grad=False) - red, ex, rtol=1e-9, atol=1e-12)
    ex2 = tt.excess_risk(torch.stack([a, a], 1), torch.stack([u, u], 1), target, eta)
    assert ex2.shape == (3, 2) and torch.allclose(ex2[:, 1], ex)
    with pytest.raises(ValueError, match="a"):
        tt.excess_risk(a[:, :-1], u, target, eta)


def test_gram_min_eig_is_the_relaxation_rate_of_the_outer_weights():
    target = tt.paper_target(D)
    u = tt.init_positions(6, target, generator=mflib.generator(7), min_per_piece=0)
    eta = 0.02
    lam = float(tt.gram_min_eig(u, target, eta)[0])
    assert lam > 0
    # da/dt = -2 (G a - b): the excess risk decays at least like exp(-4 lam t), and the
    # slowest mode decays exactly at that rate
    a_opt = tt.optimal_outer(u, target, eta)
    G = tt._gram(u, target, eta)[0][0]
    w, V = torch.linalg.eigh(G)
    assert math.isclose(float(w[0]), lam, rel_tol=1e-12)
    a = a_opt + V[:, 0]
    t = 3.0
    a_t = a_opt + math.exp(-2 * lam * t) * V[:, 0]
    ratio = float(tt.excess_risk(a_t, u, target, eta)[0] / tt.excess_risk(a, u, target, eta)[0])
    assert math.isclose(ratio, math.exp(-4 * lam * t), rel_tol=1e-8)
    # two neurons closing in on each other: G becomes singular
    close = torch.tensor([[0.2, 0.4, 0.4 + 1e-4, 0.7]], dtype=D)
    assert float(tt.gram_min_eig(close, target, eta)[0]) < 1e-5
