"""The compiled per-sample SGD engine (mflib.two_timescale_sgd): agreement
with a plain NumPy per-sample loop, its random streams, reproducibility,
refusal of bad input, divergence, and its mean step against the exact
population gradient."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mflib
from mflib import two_timescale as tt
from mflib import two_timescale_sgd as ts

TARGET = tt.paper_target()
MASK = (1 << 64) - 1


def _splitmix_py(state, n):
    """SplitMix64 (Steele, Lea & Flood 2014), written out independently."""
    out = []
    for _ in range(n):
        state = (state + 0x9E3779B97F4A7C15) & MASK
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        z ^= z >> 31
        out.append((z >> 11) / 2.0 ** 53)
    return np.array(out)


def _numpy_loop(a, u, eta, eps, h, n_steps, x, w, noise=1.0, ramp=False):
    """Plain per-sample loop (vector ops on the m neurons), the reference."""
    a, u = a.copy(), u.copy()
    jumps, values = TARGET.jumps.numpy(), TARGET.values.numpy()
    us, as_ = [u.copy()], [a.copy()]
    for p in range(n_steps):
        y = values[np.searchsorted(jumps, x[p], side="right")] + noise * (2 * w[p] - 1)
        z = (x[p] - u) / eta
        zc = np.clip(z, -0.5, 0.5)
        s = np.where(zc < 0, 4 * (zc + 0.5) ** 3, 1 - 4 * (0.5 - zc) ** 3)
        ds = np.where(np.abs(z) < 0.5, 1.0, 0.0) if ramp else 12 * (0.5 - np.abs(zc)) ** 2
        r = a[0] + a[1:] @ s - y
        grad_a = 2 * r * np.concatenate([[1.0], s])
        grad_u = -2 * r * a[1:] * ds / eta
        a = a - h * grad_a
        u = u - h * eps * grad_u
        us.append(u.copy())
        as_.append(a.copy())
    return np.array(us), np.array(as_)


def test_stream_is_splitmix64():
    x, w = ts.sample_stream(7, 3, 50)
    ref = _splitmix_py(ts.stream_state(7, 3), 100)
    np.testing.assert_array_equal(x, ref[0::2])
    np.testing.assert_array_equal(w, ref[1::2])
    x2, _ = ts.sample_stream(7, 4, 50)
    assert not np.array_equal(x, x2)


@pytest.mark.parametrize("u_grad", ["exact", "ramp"])
def test_agrees_with_numpy_loop(u_grad):
    # wide steps and a large u-rate so that the windows are hit and neurons move a lot
    eta, eps, h, n = 0.05, 0.1, 1e-3, 400
    u0 = tt.init_positions(12, TARGET, generator=mflib.generator(3))[0].numpy()
    a0 = np.linspace(-1, 2, 13)
    res = ts.sgd(a0, u0, TARGET, eta, eps, h, n, seed=11, streams=[5], n_records=n + 1, u_grad=u_grad)
    x, w = ts.sample_stream(11, 5, n)
    us, as_ = _numpy_loop(a0, u0, eta, eps, h, n, x, w, ramp=u_grad == "ramp")
    assert float(np.abs(us - us[0]).max()) > 0.2 * eta           # the positions did move
    np.testing.assert_allclose(res.u[0].numpy(), us, rtol=0, atol=1e-12)
    np.testing.assert_allclose(res.a[0].numpy(), as_, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(res.steps[0].numpy(), np.arange(n + 1))
    ref_loss = tt.population_loss_grad(torch.from_numpy(as_), torch.from_numpy(us), TARGET, eta, grad=False)
    torch.testing.assert_close(res.loss[0], ref_loss, rtol=0, atol=1e-10)
    torch.testing.assert_close(res.tau[0], torch.arange(n + 1, dtype=torch.float64) * h * eps)


def test_reproducible_and_independent_of_threads_and_batch():
    U = tt.init_positions(20, TARGET, batch=4, generator=mflib.generator(0))
    A = torch.zeros(4, 21, dtype=torch.float64)
    kw = dict(seed=5, n_records=5)
    r1 = ts.sgd(A, U, TARGET, 4e-3, [1.0, 0.1, 0.01, 1.0], 1e-4, [3000, 2000, 1000, 3000], threads=1, **kw)
    r2 = ts.sgd(A, U, TARGET, 4e-3, [1.0, 0.1, 0.01, 1.0], 1e-4, [3000, 2000, 1000, 3000], threads=3, **kw)
    assert torch.equal(r1.u, r2.u) and torch.equal(r1.a, r2.a) and torch.equal(r1.loss, r2.loss)
    alone = ts.sgd(A[2], U[2], TARGET, 4e-3, 0.01, 1e-4, 1000, streams=[2], **kw)
    assert torch.equal(alone.u[0], r1.u[2]) and torch.equal(alone.a[0], r1.a[2])
    other = ts.sgd(A[2], U[2], TARGET, 4e-3, 0.01, 1e-4, 1000, seed=6, n_records=5)
    assert not torch.equal(other.a[0], r1.a[2])
    assert r1.steps[1, -1] == 2000 and not bool(r1.diverged.any())


def test_record_steps():
    u0 = tt.init_positions(20, TARGET, generator=mflib.generator(0))
    r = ts.sgd(torch.zeros(21, dtype=torch.float64), u0, TARGET, 4e-3, 1.0, 1e-4, 100, seed=0,
               record_steps=[0, 10, 100])
    full = ts.sgd(torch.zeros(21, dtype=torch.float64), u0, TARGET, 4e-3, 1.0, 1e-4, 100, seed=0,
                  n_records=101)
    assert torch.equal(r.u[0], full.u[0, [0, 10, 100]])


def test_mean_step_is_the_population_gradient():
    """One step from a fixed state, averaged over many independent samples,
    is -h times the exact population gradient (checks the factor 2, the sign
    and the 1/eta of the position gradient against mflib.two_timescale)."""
    g = mflib.generator(1)
    m, eta, h, eps, R = 6, 0.05, 1e-3, 1.0, 20000
    u = torch.sort(torch.rand(m, generator=g, dtype=torch.float64)).values
    a = torch.randn(m + 1, generator=g, dtype=torch.float64)
    res = ts.sgd(a.expand(R, -1), u.expand(R, -1), TARGET, eta, eps, h, 1, seed=2, n_records=2,
                 with_loss=False)
    assert res.loss is None
    _, ga, gu = tt.population_loss_grad(a, u, TARGET, eta)
    da = (res.a[:, 1] - a) / h
    du = (res.u[:, 1] - u) / (h * eps)
    for est, exact in ((da, -ga), (du, -gu)):
        se = est.std(0) / R ** 0.5
        assert bool(((est.mean(0) - exact).abs() <= 5 * se + 1e-9).all()), (est.mean(0), exact, se)


def test_divergence_is_flagged_with_last_finite_records():
    u0 = tt.init_positions(20, TARGET, batch=2, generator=mflib.generator(0))
    A = torch.zeros(2, 21, dtype=torch.float64)
    r = ts.sgd(A, u0, TARGET, 4e-3, 1.0, [1.5, 1e-4], 2000, seed=0, n_records=21)
    assert r.diverged.tolist() == [True, False]
    k = int(r.n_valid[0])
    assert 0 < k < 21 and int(r.diverged_step[0]) > int(r.steps[0, k - 1])
    assert int(r.diverged_step[1]) == -1 and int(r.n_valid[1]) == 21
    assert bool(torch.isfinite(r.a).all() and torch.isfinite(r.u).all() and torch.isfinite(r.loss).all())
    assert bool((r.a[0, k:] == r.a[0, k - 1]).all())


@pytest.mark.parametrize("kwargs, exc, word", [
    (dict(eta=0.0), ValueError, "eta"),
    (dict(h=-1.0), ValueError, "h"),
    (dict(eps=[1.0, 2.0, 3.0]), ValueError, "eps"),
    (dict(eps=0.0), ValueError, "eps"),
    (dict(n_steps=10.5), TypeError, "n_steps"),
    (dict(n_steps=0), ValueError, "n_steps"),
    (dict(seed=-1), ValueError, "seed"),
    (dict(u_grad="linear"), ValueError, "u_grad"),
    (dict(n_records=500), ValueError, "n_records"),
    (dict(record_steps=[5, 3]), ValueError, "record_steps"),
    (dict(record_steps=[0, 101]), ValueError, "record_steps"),
    (dict(threads=0), ValueError, "threads"),
    (dict(noise=-1.0), ValueError, "noise"),
    (dict(streams=[0]), ValueError, "streams"),
    (dict(a0=torch.zeros(2, 20, dtype=torch.float64)), ValueError, "a0"),
    (dict(u0=torch.full((2, 20), float("nan"), dtype=torch.float64)), ValueError, "u0"),
    (dict(target="steps"), TypeError, "target"),
    (dict(with_loss=1), TypeError, "with_loss"),
])
def test_bad_input_is_refused(kwargs, exc, word):
    args = dict(a0=torch.zeros(2, 21, dtype=torch.float64),
                u0=tt.init_positions(20, TARGET, batch=2, generator=mflib.generator(0)),
                target=TARGET, eta=4e-3, eps=1.0, h=1e-4, n_steps=100, seed=0)
    args.update(kwargs)
    with pytest.raises(exc, match=word):
        ts.sgd(**args)
