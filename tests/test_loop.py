"""The one training loop: records, divergence, the last finite state, hooks."""

import math

import pytest
import torch

from mflib import Diverged
from mflib.dynamics.loop import Engine, Trajectory, every, integrate, schedule


class Decay(Engine):
    """x <- x - lr * c * x: exact solution (1 - lr c)^k x0."""

    def __init__(self, lr, c=1.0):
        self.dt, self.c = lr, c

    def _step(self, x, k):
        return x.sub_(self.dt * self.c * x)

    def _observe(self, x, k):
        return {"energy": 0.5 * (x * x).sum()}


def test_records_and_exact_values():
    x0 = torch.tensor([1.0, -2.0], dtype=torch.float64)
    run = integrate(Decay(0.1), x0, steps=10, record=[0, 3, 10], keep_states=True)
    assert run.steps.tolist() == [0, 3, 10]
    assert torch.allclose(run.times, torch.tensor([0.0, 0.3, 1.0], dtype=torch.float64))
    for i, k in enumerate([0, 3, 10]):
        assert torch.equal(run.states[i], x0 * 0.9 ** k) or torch.allclose(run.states[i], x0 * 0.9 ** k)
    assert torch.allclose(run.energy, 0.5 * (x0 * x0).sum() * torch.tensor([1, 0.9 ** 6, 0.9 ** 20], dtype=torch.float64))
    assert torch.allclose(run.state, x0 * 0.9 ** 10)
    assert x0.tolist() == [1.0, -2.0]          # not modified
    assert not run.diverged and len(run) == 3


def test_state_runs_past_last_record():
    x0 = torch.ones(3, dtype=torch.float64)
    run = integrate(Decay(0.5), x0, steps=4, record=[0, 1])
    assert torch.allclose(run.state, x0 * 0.5 ** 4)
    assert run.steps.tolist() == [0, 1]


def test_divergence_flag_and_raise():
    x0 = torch.ones(2, dtype=torch.float64)
    eng = Decay(1.0, c=-1e300)   # blows up to inf after one or two steps
    run = integrate(eng, x0, steps=50, record=list(range(51)))
    assert run.diverged and run.diverged_at is not None
    assert torch.isfinite(run.state).all() and torch.isfinite(run.energy).all()
    assert run.steps[-1] < run.diverged_at
    with pytest.raises(Diverged):
        integrate(eng, x0, steps=50, record=list(range(51)), on_diverge="raise")
    run = integrate(eng, x0, steps=50)            # divergence seen only at the end
    assert run.diverged and torch.isfinite(run.state).all()


def test_initial_nonfinite_is_a_value_error():
    with pytest.raises(ValueError):
        integrate(Decay(0.1), torch.tensor([math.nan]), steps=3)


def test_advance_and_step_observe_hooks_are_used():
    calls = []

    class Chunked(Decay):
        def _advance(self, x, a, b):
            calls.append((a, b))
            return x.mul_((1 - self.dt * self.c) ** (b - a))

    run = integrate(Chunked(0.1), torch.ones(1, dtype=torch.float64), steps=100, record=[0, 50, 100])
    assert calls == [(1, 50), (51, 100)]
    assert torch.allclose(run.state, torch.tensor([0.9 ** 100], dtype=torch.float64))


def test_schedule_and_every():
    assert schedule(7, None) == [0, 7]
    assert schedule(7, [5, 0, 5]) == [0, 5]
    s = schedule(1000, 5)
    assert s[0] == 0 and s[-1] == 1000 and len(s) == 5
    assert every(10, 4) == [0, 4, 8, 10]
    for bad in ([8], [-1], []):
        with pytest.raises(ValueError, match="record"):
            schedule(7, bad)
    with pytest.raises(TypeError, match="record"):
        schedule(7, torch.tensor([0.5]))
    with pytest.raises(ValueError, match="on_diverge"):
        integrate(Decay(0.1), torch.ones(1), steps=2, on_diverge="ignore")


def test_aliases_and_dataclass_state():
    from dataclasses import dataclass

    @dataclass
    class P:
        a: torch.Tensor
        b: torch.Tensor

    class E(Engine):
        def _step(self, p, k):
            p.a.add_(1.0)
            p.b.mul_(2.0)
            return p

    run = integrate(E(), P(torch.zeros(2), torch.ones(2)), steps=3, record=[0, 3], keep_states=True,
                    aliases={"params": "state", "history": "states"})
    assert run.params.a.tolist() == [3.0, 3.0] and run.params.b.tolist() == [8.0, 8.0]
    assert run.history.a.shape == (2, 2) and run.history.a[0].tolist() == [0.0, 0.0]
    with pytest.raises(AttributeError, match="nothing"):
        run.nothing
    assert isinstance(run, Trajectory)
