r"""The training loop of :mod:`mflib`, meant to be its only one.

An engine (closed-form gradient descent, autograd, the exact population
gradient, the two-timescale flow, the compiled per-sample SGD) is an
:class:`Engine`: it says how to take a step from a state, and what to
record about a state.  :func:`integrate` does the rest, the same way for all
of them, as torchdiffeq's ``FixedGridODESolver.integrate`` does for its
steppers:

* it records at the chosen steps (:func:`schedule`) and nowhere else, so the
  hot loop never synchronises with the device between records;
* it checks that the state and the recorded values are finite at every
  record; on the first non-finite one it stops, keeps the last finite state
  and sets ``diverged`` (``on_diverge="flag"``) or raises
  :class:`mflib.Diverged` (``on_diverge="raise"``); a run is never returned
  with NaN in it;
* it reports progress with ``tqdm`` when run from a terminal (or when asked);
* it returns one result type, :class:`Trajectory`.

An engine overrides ``Engine._step`` and, if it records anything,
``Engine._observe``.  Two optional hooks serve fast paths:
``Engine._step_observe`` (the gradient and the recorded risk come from one
computation, as for the exact population gradient) and ``Engine._advance``
(many steps at once, as the compiled per-sample loop does between records).
The choice between engines is made once, before the loop, by the function
that builds the engine (``method=`` looks it up in that module's registry);
nothing branches on a method inside the loop.

The engines are being moved onto this loop one at a time; so far
:func:`mflib.landscape.gradient_descent` runs on it, the other engines still
have their own loops.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass, field
from typing import Any

import torch

from mflib import _checks
from mflib._checks import Diverged

__all__ = ["Engine", "Trajectory", "integrate", "schedule", "every", "DIVERGENCE_POLICIES"]

#: The values of ``on_diverge`` every engine accepts.
DIVERGENCE_POLICIES = ("flag", "raise")


class Engine:
    """One way of advancing a training run; subclass and override ``_step``.

    Attributes
    ----------
    dt : float
        Time per step: the recorded times are ``steps * dt`` (the learning
        rate of a gradient method, the time step of a flow).
    in_place : bool
        True when ``_step`` may modify the state it is given (the loop then
        copies the state it keeps); False when it returns a new state.
    initial_error : str
        The message of the ``ValueError`` raised when the initial state or
        its recorded values are not finite (name the arguments to check).
    """

    dt: float = 1.0
    in_place: bool = True
    initial_error: str = "the initial state or its recorded values are not finite"

    def _step(self, state, k: int):
        """Return the state after step ``k`` (from ``k`` to ``k + 1``)."""
        raise NotImplementedError

    def _observe(self, state, k: int) -> dict:
        """What to record at step ``k``: a dict of tensors (empty by default)."""
        return {}

    def _step_observe(self, state, k: int):
        """``(state after step k, observe(state at k))``; override to share work."""
        values = self._observe(state, k)
        return self._step(state, k), values

    def _advance(self, state, start: int, stop: int):
        """Take steps ``start, ..., stop - 1``; override to take many at once."""
        for k in range(start, stop):
            state = self._step(state, k)
        return state


# ----------------------------------------------------------------------------- record schedules
def schedule(steps: int, record=None, name: str = "record") -> list[int]:
    """The steps at which a run records, sorted and without repeats.

    ``None``: the first and the last step.  An int ``k`` (at least 2): about
    ``k`` steps, log-spaced from 1 to ``steps``, with 0.  A sequence (or
    integer tensor) of step indices in ``[0, steps]``: those.  ``name`` is
    the caller's name for ``record``, used in error messages.
    """
    name = _checks.string(name, "name")
    steps = _checks.size(steps, "steps", minimum=0)
    if record is None:
        return sorted({0, steps})
    if isinstance(record, int) and not isinstance(record, bool):
        k = _checks.size(record, name, minimum=2, maximum=10 ** 6)
        r = torch.unique(torch.round(torch.logspace(0, math.log10(max(steps, 1)), k - 1)).long())
        return torch.unique(torch.cat([torch.tensor([0]), r.clamp(max=steps)])).tolist()
    if isinstance(record, torch.Tensor):
        if record.is_floating_point() or record.is_complex() or record.dtype == torch.bool:
            raise TypeError(f"{name} must hold integer step indices, got dtype {record.dtype}")
        items = record.flatten().tolist()
    elif isinstance(record, (list, tuple, range)):
        items = list(record)
    else:
        raise TypeError(f"{name} must be None, an int or a sequence of step indices, "
                        f"got {type(record).__name__}")
    items = [_checks.integer(k, name, minimum=0) for k in items]
    if not items:
        raise ValueError(f"{name} must hold at least one step index")
    if max(items) > steps:
        raise ValueError(f"{name} must hold step indices in [0, steps={steps}], got {max(items)}")
    return sorted(set(items))


def every(steps: int, period: int, name: str = "period") -> list[int]:
    """Steps ``0, period, 2 period, ...`` and the last step (``name``: the
    caller's name for ``period``, used in error messages)."""
    name = _checks.string(name, "name")
    steps = _checks.size(steps, "steps", minimum=0)
    period = _checks.size(period, name)
    return sorted(set(range(0, steps + 1, period)) | {steps})


# ----------------------------------------------------------------------------- states
def _leaves(state):
    if isinstance(state, torch.Tensor):
        return [state]
    if isinstance(state, dict):
        return [t for v in state.values() for t in _leaves(v)]
    if isinstance(state, (tuple, list)):
        return [t for v in state for t in _leaves(v)]
    if dataclasses.is_dataclass(state) and not isinstance(state, type):
        return [t for f in dataclasses.fields(state) for t in _leaves(getattr(state, f.name))]
    return []


def _map(fn, state):
    if isinstance(state, torch.Tensor):
        return fn(state)
    if isinstance(state, dict):
        return {k: _map(fn, v) for k, v in state.items()}
    if isinstance(state, tuple) and hasattr(state, "_fields"):
        return type(state)(*(_map(fn, v) for v in state))
    if isinstance(state, (tuple, list)):
        return type(state)(_map(fn, v) for v in state)
    if dataclasses.is_dataclass(state) and not isinstance(state, type):
        return dataclasses.replace(state, **{f.name: _map(fn, getattr(state, f.name))
                                             for f in dataclasses.fields(state) if f.init})
    return state


def _clone(state):
    return _map(lambda t: t.detach().clone(), state)


def _finite(state) -> bool:
    ok = True
    for t in _leaves(state):
        if t.is_floating_point() or t.is_complex():
            ok = ok and bool(torch.isfinite(t).all())
            if not ok:
                return False
    return ok


def _stack(items):
    first = items[0]
    if isinstance(first, torch.Tensor):
        return torch.stack(items)
    if isinstance(first, dict):
        return {k: _stack([it[k] for it in items]) for k in first}
    if isinstance(first, tuple) and hasattr(first, "_fields"):
        return type(first)(*(_stack([it[i] for it in items]) for i in range(len(first))))
    if isinstance(first, (tuple, list)):
        return type(first)(_stack([it[i] for it in items]) for i in range(len(first)))
    if dataclasses.is_dataclass(first) and not isinstance(first, type):
        return dataclasses.replace(first, **{f.name: _stack([getattr(it, f.name) for it in items])
                                             for f in dataclasses.fields(first) if f.init
                                             and isinstance(getattr(first, f.name), torch.Tensor)})
    return list(items)


# ----------------------------------------------------------------------------- the result
@dataclass
class Trajectory:
    """The result of a run of :func:`integrate`.

    Attributes
    ----------
    state : object
        The final state (the last finite recorded one if the run diverged).
    steps : torch.Tensor
        Recorded step indices, ``int64``, on the CPU.
    times : torch.Tensor
        Recorded times ``steps * dt``, ``float64``, on the CPU.
    values : dict of str to torch.Tensor
        Each recorded quantity, stacked along a first axis of length
        ``len(steps)``.
    states : object or None
        The states at the recorded steps, stacked along a first axis (a
        tensor, or the state's container with stacked tensors), when kept.
    diverged : bool
        True when non-finite values appeared; the records stop at the last
        finite record.
    diverged_at : int or None
        The record step at which non-finite values were first seen (the run
        ran to ``steps`` if they were only seen at its end).
    aliases : dict
        Names by which an engine exposes parts of the result (for example
        ``theta`` for ``state``, ``risk`` for ``values["risk"]``): an
        attribute lookup ``trajectory.name`` resolves ``aliases[name]`` to
        ``"state"``, ``"states"``, a key of ``values``, or a callable of
        the trajectory.  Keys of ``values`` are attributes too.
    """

    state: Any
    steps: torch.Tensor
    times: torch.Tensor
    values: dict
    states: Any
    diverged: bool
    diverged_at: int | None = None
    aliases: dict = field(default_factory=dict, repr=False)

    def __getattr__(self, name):
        if name.startswith("__") or name in ("values", "aliases", "state", "states"):
            raise AttributeError(name)
        target = self.aliases.get(name, name)
        if callable(target):
            return target(self)
        if target == "state":
            return self.state
        if target == "states":
            return self.states
        values = self.__dict__.get("values", {})
        if target in values:
            return values[target]
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r} (recorded values: "
                             f"{sorted(values)}; aliases: {sorted(self.__dict__.get('aliases', {}))})")

    def __len__(self) -> int:
        return int(self.steps.numel())


def _show_progress(progress, steps) -> bool:
    if progress is None:
        return steps >= 10 ** 4 and hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
    return _checks.flag(progress, "progress")


# ----------------------------------------------------------------------------- the loop
def integrate(engine: Engine, state, *, steps: int, record=None, keep_states: bool = False,
              on_diverge: str = "flag", progress: bool | None = None,
              aliases: dict | None = None) -> Trajectory:
    """Run ``engine`` from ``state`` for ``steps`` steps.

    Parameters
    ----------
    engine : Engine
        How to step and what to record.
    state : object
        The initial state: a tensor, or a tuple, dict or dataclass of tensors.
        It is not modified (the loop works on a copy when the engine steps in
        place).
    steps : int
        Number of steps (0 records the initial state only).
    record : None, int or sequence of int
        Steps at which to record, see :func:`schedule`.
    keep_states : bool
        Keep a copy of the state at every record.
    on_diverge : str
        ``"flag"``: stop at the first non-finite record, return the last finite
        state with ``diverged=True``; ``"raise"``: raise :class:`mflib.Diverged`.
    progress : bool, optional
        Show a ``tqdm`` bar; by default only for long runs started from a
        terminal (never inside a notebook build).
    aliases : dict, optional
        See ``Trajectory.aliases``.

    Returns
    -------
    Trajectory
    """
    if not isinstance(engine, Engine):
        raise TypeError(f"engine must be an mflib.dynamics.loop.Engine, got {type(engine).__name__}")
    steps = _checks.size(steps, "steps", minimum=0)
    keep_states = _checks.flag(keep_states, "keep_states")
    _checks.choice(on_diverge, "on_diverge", DIVERGENCE_POLICIES)
    rec = schedule(steps, record)
    show = _show_progress(progress, steps)
    bar = None
    if show:
        from tqdm import tqdm
        bar = tqdm(total=steps, leave=False, file=sys.stderr)

    cur = _clone(state) if engine.in_place else state
    last_ok, last_k = None, None
    done, values, kept = [], [], []
    diverged, diverged_at = False, None
    k = 0

    def run_to(cur, start, stop):
        if bar is None or stop - start < 2:
            out = engine._advance(cur, start, stop)
        else:
            chunk = max(1, steps // 100)
            out, a = cur, start
            while a < stop:
                b = min(stop, a + chunk)
                out = engine._advance(out, a, b)
                bar.update(b - a)
                a = b
            return out
        if bar is not None:
            bar.update(stop - start)
        return out

    try:
        for r in rec:
            if r > k:
                cur = run_to(cur, k, r)
                k = r
            ok = _finite(cur)
            snap = _clone(cur) if (engine.in_place and ok) else cur
            if ok and r < steps:
                cur, vals = engine._step_observe(cur, r)
                k = r + 1
                if bar is not None:
                    bar.update(1)
            elif ok:
                vals = engine._observe(cur, r)
            else:
                vals = {}
            if not ok or not _finite(vals):
                if r == rec[0] and r == 0:
                    raise ValueError(engine.initial_error)
                diverged, diverged_at = True, r
                break
            done.append(r)
            values.append(vals)
            last_ok, last_k = snap, r
            if keep_states:
                kept.append(snap)
        if not diverged and k < steps:
            cur = run_to(cur, k, steps)
            k = steps
        if not diverged and rec and rec[-1] == steps:
            final = last_ok
        elif not diverged:
            if _finite(cur):
                final = cur
            else:
                diverged, diverged_at = True, steps
                final = last_ok
        else:
            final = last_ok
    finally:
        if bar is not None:
            bar.close()
    if diverged and on_diverge == "raise":
        raise Diverged(f"training diverged (non-finite values) by step {diverged_at} "
                       f"(last finite record: step {last_k}); lower the step size")
    steps_t = torch.tensor(done, dtype=torch.long)
    stacked = {}
    if values:
        for key in values[0]:
            stacked[key] = torch.stack([torch.as_tensor(v[key]).detach() for v in values])
    return Trajectory(state=final if final is not None else _clone(state),
                      steps=steps_t, times=steps_t.to(torch.float64) * float(engine.dt),
                      values=stacked, states=_stack(kept) if kept else None,
                      diverged=diverged, diverged_at=diverged_at, aliases=dict(aliases or {}))
