"""Regression tests of the defects found by fuzzing the public API (issue 16, bugs 1-8),
and of the divergence contract: a diverging run is flagged (or raises
``mflib.Diverged``) and returns exactly the records it computed, all finite."""

import math

import pytest
import torch

import mflib
from mflib import empirical, erm, gp, lazy, nets, stats, threelayer as tl
from mflib import two_timescale as tt
from mflib._checks import Diverged

ETA = 4e-3
T = tt.paper_target()
D = torch.float64


def _state(seed=0, B=3, m=12):
    g = mflib.generator(seed)
    u = tt.init_positions(m, T, batch=B, generator=g)
    a = torch.randn(B, m + 1, generator=g, dtype=D)
    return a, u


def _poison_run(monkeypatch, run, after, batch=3):
    """Make ``_terms`` return NaN for run ``run`` from its ``after``-th call on: a run
    that diverges mid-way, whatever the integrator does.  (Once flagged, a run leaves
    the active batch, which is then smaller than ``batch`` and left alone.)"""
    real = tt._terms
    calls = {"n": 0}

    def terms(a, u, target, eta):
        out = list(real(a, u, target, eta))
        calls["n"] += 1
        if calls["n"] > after and u.shape[0] == batch:
            out[0] = out[0].clone()
            out[0][run] = math.nan
        return tuple(out)

    monkeypatch.setattr(tt, "_terms", terms)


# --------------------------------------------------------------------------- bug 1
def test_bug1_records_of_a_diverged_run_are_the_computed_ones(monkeypatch):
    a, u = _state()
    clean = tt.train_population(a, u, T, ETA, 0.1, 0.01, n_records=9)
    assert not bool(clean.diverged.any()) and clean.recorded.tolist() == [9, 9, 9]
    # the buffers start as NaN: a record that was never written would show as NaN
    _poison_run(monkeypatch, run=0, after=4)
    res = tt.train_population(a, u, T, ETA, 0.1, 0.01, n_records=9)
    assert res.diverged.tolist() == [True, False, False]
    k = int(res.recorded[0])
    assert 1 <= k < 9
    for t in (res.u, res.loss, res.a):
        assert bool(torch.isfinite(t).all())
    # the computed records agree with the clean run, later ones repeat the last of them
    assert torch.equal(res.loss[0, :k], clean.loss[0, :k])
    assert bool((res.loss[0, k:] == res.loss[0, k - 1]).all())
    assert bool((res.u[0, k:] == res.u[0, k - 1]).all())
    # the runs that did not diverge are untouched (up to the rounding of a smaller batch)
    assert torch.allclose(res.loss[1:], clean.loss[1:], rtol=1e-10, atol=0)
    assert torch.allclose(res.a[1:], clean.a[1:], rtol=1e-8, atol=1e-12)


def test_bug1_a_start_that_overflows_is_refused_not_recorded():
    a, u = _state()
    with pytest.raises(ValueError, match="a0"):
        tt.train_population(a * 1e300, u, T, 0.05, 1.0, 0.05, n_records=5)
    with pytest.raises(ValueError, match="a0"):
        tt.train_population(torch.full_like(a, 1e200), u, T, ETA, 1.0, 0.01, n_records=3)


# --------------------------------------------------------------------------- bug 2
def test_bug2_fixed_sample_last_update_is_checked():
    X, y = tt.additive_step_problem(2, 50, generator=mflib.generator(0))
    with pytest.raises(Diverged):
        tt.train_fixed_sample(X, y, units=3, activation="relu", lr_a=1e100, lr_u=1e100, epochs=1,
                              runs=2, generator=mflib.generator(1))
    r = tt.train_fixed_sample(X, y, units=3, activation="relu", lr_a=0.1, lr_u=0.01, epochs=3,
                              runs=2, generator=mflib.generator(1))
    assert bool(torch.isfinite(r.rmse).all())


# --------------------------------------------------------------------------- bug 3
def test_bug3_limit_stops_at_the_last_finite_state(monkeypatch):
    _, u = _state(1)
    with pytest.raises(ValueError, match="eta"):
        tt.train_limit(u, T, 1e-300, 0.01)
    _poison_run(monkeypatch, run=1, after=3)
    res = tt.train_limit(u, T, ETA, 0.01, n_records=7)
    assert res.diverged.tolist() == [False, True, False]
    assert bool(torch.isfinite(res.a).all()) and bool(torch.isfinite(res.u).all())
    assert bool(torch.isfinite(res.loss).all()) and int(res.recorded[1]) < 7


def test_sgd_divergence_freezes_the_last_finite_state():
    a, u = _state(6, B=2, m=20)
    res = tt.train_sgd(a, u, T, ETA, 1.0, 1e3, 50, generator=mflib.generator(0), n_records=11)
    assert bool(res.diverged.all())
    for t in (res.u, res.loss, res.a):
        assert bool(torch.isfinite(t).all())
    assert bool((res.recorded < 11).all())
    k = int(res.recorded[0])
    assert bool((res.loss[0, k:] == res.loss[0, k - 1]).all())


# --------------------------------------------------------------------------- bug 4
def test_bug4_fit_slope_refuses_constant_x():
    with pytest.raises(ValueError, match="x must not be constant"):
        stats.fit_slope([2, 2, 2, 2], [1, 2, 3, 4])
    assert stats.fit_slope([1, 2, 4], [1, 4, 16]) == pytest.approx(2.0)


# --------------------------------------------------------------------------- bug 5
def test_bug5_train_two_layer_validates_y():
    p = tl.two_layer_init(8, 3, generator=mflib.generator(0))
    x = torch.randn(10, 3, generator=mflib.generator(1), dtype=D)
    y = torch.zeros(10, dtype=D)
    y[3] = math.nan
    with pytest.raises(ValueError, match="y contains non-finite"):
        tl.train_two_layer(p, x, y, lr=0.1, steps=2)
    with pytest.raises(ValueError, match="x and y must have the same number of rows"):
        tl.train_two_layer(p, x, torch.zeros(5, dtype=D), lr=0.1, steps=2)


# --------------------------------------------------------------------------- bug 6
def test_bug6_params_dict_missing_a_key_is_refused():
    net = nets.MLP(2, [4], generator=mflib.generator(0))
    fn, params = lazy.as_function(net)
    x = torch.randn(5, 2, generator=mflib.generator(1), dtype=D)
    y = torch.zeros(5, dtype=D)
    partial = dict(params)
    partial.pop(next(iter(partial)))
    with pytest.raises(ValueError, match="params0 must hold exactly the model's parameters"):
        lazy.train(fn, partial, x, y, lr=0.1, steps=1)
    with pytest.raises(ValueError, match="params must hold exactly"):
        lazy.jacobian_norm(fn, partial, x)
    with pytest.raises(ValueError, match="params must hold exactly"):
        fn(partial, x)
    with pytest.raises(ValueError, match="unexpected"):
        lazy.hessian_norm(fn, {**params, "extra": torch.zeros(1, dtype=D)}, x)
    assert lazy.jacobian_norm(fn, params, x) > 0


# --------------------------------------------------------------------------- bug 7
def test_bug7_kinks_and_weights_must_pair_up():
    with pytest.raises(ValueError, match="kinks and weights must have the same length"):
        tt.relu_teacher_problem(10, generator=mflib.generator(0), kinks=(0.3,))
    X, y = tt.relu_teacher_problem(10, generator=mflib.generator(0), kinks=(0.3,), weights=(2.0,))
    assert torch.allclose(y, 2.0 * torch.relu(X[:, 0] - 0.3))


# --------------------------------------------------------------------------- bug 8
def _same_twice(make):
    torch.manual_seed(1)
    first = make()
    torch.manual_seed(2)          # the global random state must not matter
    second = make()
    flat = lambda r: [t for t in (r if isinstance(r, (tuple, list)) else [r])]  # noqa: E731
    for p, q in zip(flat(first), flat(second)):
        assert torch.equal(p, q)


def _emb():
    return tl.iid_embedding(3, 5, generator=mflib.generator(3))


SEEDED_DEFAULTS = {
    "threelayer.iid_embedding": lambda: (lambda e: (e.w1, e.w2, e.w3))(tl.iid_embedding(3, 5)),
    "threelayer.correlated_embedding": lambda: (lambda e: (e.w1, e.w2, e.w3))(tl.correlated_embedding(3, 5)),
    "threelayer.teacher_data": lambda: tl.teacher_data(6, 2)[:2],
    "threelayer.two_layer_init": lambda: (lambda p: (p.w, p.a))(tl.two_layer_init(4, 3)),
    "threelayer.Embedding.sample": lambda: (lambda s: (s.c1, s.c2))(_emb().sample(3, 3, batch=2)),
    "threelayer.train(batch_size)": lambda: (lambda e: tl.train(e.ensemble(), *tl.teacher_data(6, 3, generator=mflib.generator(0))[:2],
                                                           lr=0.1, steps=3, batch_size=2).loss)(_emb()),
    "nets.MLP": lambda: tuple(p.detach() for p in nets.MLP(2, [3]).parameters()),
    "gp.sample_gp": lambda: gp.sample_gp(torch.eye(3, dtype=D), 2),
    "empirical.empirical_nngp": lambda: empirical.empirical_nngp(
        lambda generator: nets.MLP(2, [3], generator=generator), torch.eye(2, dtype=D), n_models=3),
    "two_timescale.additive_step_problem": lambda: tt.additive_step_problem(2, 5, generator=None),
    "two_timescale.relu_teacher_problem": lambda: tt.relu_teacher_problem(5, generator=None),
    "erm.sgd(batch_size)": lambda: erm.sgd(torch.eye(3, dtype=D), torch.ones(3, dtype=D), lr=0.1,
                                           steps=3, batch_size=1).iterates,
}


@pytest.mark.parametrize("name", sorted(SEEDED_DEFAULTS))
def test_bug8_generator_none_is_a_fixed_seed_never_the_global_state(name):
    _same_twice(SEEDED_DEFAULTS[name])


# --------------------------------------------------------------------------- hangs
@pytest.mark.parametrize("kw", [dict(tau_max=1e16), dict(tau_max=1e300), dict(max_disp=1e-300),
                                dict(max_disp=1e-10)])
@pytest.mark.parametrize("zero_start", [False, True])
def test_horizons_that_cannot_finish_are_refused_up_front(kw, zero_start):
    a, u = _state()
    if zero_start:          # no initial speed: the estimate must still catch it after the first step
        a = torch.zeros_like(a)
    args = dict(tau_max=0.01, max_disp=0.25) | kw
    name = next(iter(kw))
    with pytest.raises(ValueError, match=name):
        tt.train_population(a, u, T, ETA, 0.5, args["tau_max"], max_disp=args["max_disp"], n_records=5)
    with pytest.raises(ValueError, match=name):
        tt.train_limit(u, T, ETA, args["tau_max"], max_disp=args["max_disp"], n_records=5)


def test_sizes_that_cannot_finish_are_refused_up_front():
    x = torch.eye(2, dtype=D)
    with pytest.raises(ValueError, match="n_models"):
        empirical.empirical_nngp(lambda generator: nets.MLP(2, [3], generator=generator), x, n_models=10 ** 12)
    from mflib import gplimit
    with pytest.raises(ValueError, match="n_nets"):
        gplimit.sample_network_outputs(x, n_nets=10 ** 12, width=4, depth=1)
