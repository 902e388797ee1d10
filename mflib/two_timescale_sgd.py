r"""Compiled per-sample online SGD for the two-timescale problem of
Marion & Berthier (2023): the paper's own algorithm at the paper's settings.

The model, the data and the update are those of :mod:`mflib.two_timescale`:

.. math::

    f(x;a,u) = a_0 + \sum_{j=1}^m a_j\,\sigma\Big(\frac{x-u_j}{\eta}\Big),\qquad
    x\sim U[0,1],\quad y=f^*(x)+\xi,\quad \xi\sim U[-\text{noise},\text{noise}],

    a\leftarrow a-h\,\nabla_a(f(x)-y)^2,\qquad u\leftarrow u-h\varepsilon\,\nabla_u(f(x)-y)^2,

one fresh sample per step.  The bias :math:`a_0` multiplies the constant 1:
the authors' code implements it as a neuron fixed at :math:`-\eta/2`, whose
step :math:`\sigma((x+\eta/2)/\eta)` equals 1 on :math:`[0,1]` and whose
position gradient vanishes there, which is the same thing.  The derivative of
:math:`\sigma` is the exact one, :math:`12(\frac12-|z|)^2` (``u_grad="exact"``),
or, to reproduce the released code, the derivative of the linear ramp,
:math:`\mathbb 1_{|z|<1/2}` (``u_grad="ramp"``).

Engine.  One run is a ``numba``-compiled scalar loop (float64, the same
operations as the NumPy loop it is tested against, written without branches
so that the compiler vectorises them): only the neurons whose window
:math:`|x-u_j|<\eta/2` contains the sample move (for the others
:math:`\sigma\in\{0,1\}` and :math:`\sigma'=0`).  The random numbers
come from a SplitMix64 stream owned by the run and determined by
``(seed, stream)`` alone, so a run gives the same bits whatever the number of
threads and whichever other runs share the call.  Independent runs are spread
over threads (the compiled loop releases the GIL), longest first.  The
compiled code is cached on disk (``cache=True``): the first call on a
machine pays the compilation once (a few seconds), later processes load it.

The population risk of the recorded states is computed afterwards, exactly,
by :func:`mflib.two_timescale.population_loss_grad`.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from numba import njit

from mflib import _checks
from mflib import two_timescale as _tt

__all__ = ["SGDResult", "sgd", "sample_stream", "stream_state"]

_MASK = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_G = np.uint64(_GOLDEN)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31, _S11 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(11)
_TO_UNIT = 1.0 / 9007199254740992.0   # 2**-53


def _mix_py(z: int) -> int:
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


def stream_state(seed: int, stream: int) -> int:
    """Initial SplitMix64 state of run ``stream`` under ``seed`` (a hash of
    both, so that streams of different seeds or indices do not overlap in
    practice)."""
    seed = _checks.integer(seed, "seed", minimum=0)
    stream = _checks.integer(stream, "stream", minimum=0)
    return _mix_py((_mix_py((seed + _GOLDEN) & _MASK) ^ ((stream + 1) * _GOLDEN)) & _MASK)


@njit(cache=True, inline="always")
def _mix(z):
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


@njit(cache=True, nogil=True)
def _uniforms(state, n):
    out = np.empty(n)
    s = np.uint64(state)
    for i in range(n):
        s = s + _G
        out[i] = (_mix(s) >> _S11) * _TO_UNIT
    return out


@njit(cache=True, nogil=True)
def _run(a, u, jumps, values, eta, h, heps, noise, n_steps, rec_steps, rec_a, rec_u,
         state, ramp, blowup):
    """One run, in place.  Returns (records written, step of divergence or -1)."""
    m = u.shape[0]
    inv_eta = 1.0 / eta
    n_rec = rec_steps.shape[0]
    n_jumps = jumps.shape[0]
    s = np.uint64(state)
    sig = np.empty(m)
    dsig = np.empty(m)
    k = 0
    step = 0
    while True:
        while k < n_rec and rec_steps[k] == step:
            for j in range(m + 1):
                if not abs(a[j]) < blowup:
                    return k, step
            for j in range(m):
                if not abs(u[j]) < blowup:
                    return k, step
            rec_a[k, :] = a
            rec_u[k, :] = u
            k += 1
        if step == n_steps:
            return k, -1
        s = s + _G
        x = (_mix(s) >> _S11) * _TO_UNIT
        s = s + _G
        xi = (_mix(s) >> _S11) * _TO_UNIT
        piece = 0
        for i in range(n_jumps):
            if x >= jumps[i]:
                piece += 1
        y = values[piece] + noise * (2.0 * xi - 1.0)
        # forward pass, branch-free: sigma_j and sigma'_j of every neuron (0 or 1 and 0
        # outside the window), the sum split in four chains (no long dependency)
        for j in range(m):
            z = (x - u[j]) * inv_eta
            zc = min(max(z, -0.5), 0.5)
            q = 0.5 - abs(zc)
            q3 = 4.0 * q * q * q
            sig[j] = q3 if zc < 0.0 else 1.0 - q3
            if ramp:
                dsig[j] = 1.0 if q > 0.0 else 0.0
            else:
                dsig[j] = 12.0 * q * q
        f0 = a[0]
        f1 = 0.0
        f2 = 0.0
        f3 = 0.0
        m4 = m - m % 4
        for j in range(0, m4, 4):
            f0 += a[j + 1] * sig[j]
            f1 += a[j + 2] * sig[j + 1]
            f2 += a[j + 3] * sig[j + 2]
            f3 += a[j + 4] * sig[j + 3]
        for j in range(m4, m):
            f0 += a[j + 1] * sig[j]
        r = ((f0 + f1) + (f2 + f3)) - y
        if not abs(r) < blowup:
            return k, step
        g = 2.0 * h * r               # h * d(f-y)^2/da_j / sigma_j
        c = 2.0 * heps * r * inv_eta  # -h eps * d(f-y)^2/du_j / (a_j sigma'_j)
        a[0] -= g
        for j in range(m):
            aj = a[j + 1]
            a[j + 1] = aj - g * sig[j]
            u[j] += c * aj * dsig[j]
        step += 1


@njit(cache=True, nogil=True)
def _run_block(A, U, jumps, values, eta, h, heps, noise, n_steps, rec_steps, rec_a, rec_u,
               states, ramp, blowup, idx, n_valid, div_step):
    """The runs ``idx``, one after the other (results written in place)."""
    for i in idx:
        a = A[i].copy()
        u = U[i].copy()
        k, d = _run(a, u, jumps, values, eta, h[i], heps[i], noise, n_steps[i], rec_steps[i],
                    rec_a[i], rec_u[i], states[i], ramp, blowup)
        n_valid[i] = k
        div_step[i] = d


def sample_stream(seed: int, stream: int, n_steps: int):
    """The samples run ``stream`` of :func:`sgd` sees under ``seed``: arrays
    ``x`` (inputs) and ``w`` (uniforms in [0, 1) of the label noise,
    :math:`\\xi=\\text{noise}\\,(2w-1)`), each of length ``n_steps``."""
    n_steps = _checks.size(n_steps, "n_steps")
    _checks.elements(2 * n_steps, "n_steps")
    raw = _uniforms(np.uint64(stream_state(seed, stream)), 2 * n_steps)
    return raw[0::2].copy(), raw[1::2].copy()


@dataclass
class SGDResult:
    r"""Records of :func:`sgd`.

    Attributes
    ----------
    steps : torch.Tensor
        ``(R, T)`` int64, the step counts :math:`p` of the records (state after
        :math:`p` updates).
    tau : torch.Tensor
        ``(R, T)`` slow times :math:`\tau=h\varepsilon p`.
    u : torch.Tensor
        ``(R, T, m)`` positions.
    a : torch.Tensor
        ``(R, T, m + 1)`` outer weights (``a[..., 0]`` the bias).
    loss : torch.Tensor or None
        ``(R, T)`` population risk :math:`R(a,u)` of the records (exact;
        ``None`` when not asked for).
    diverged : torch.Tensor
        ``(R,)`` bool.  A diverged run's records stop at its last finite
        record; later records repeat it.
    diverged_step : torch.Tensor
        ``(R,)`` int64, the step at which divergence was detected (-1 if none).
    n_valid : torch.Tensor
        ``(R,)`` int64, the number of records taken before any divergence.
    """

    steps: torch.Tensor
    tau: torch.Tensor
    u: torch.Tensor
    a: torch.Tensor
    loss: torch.Tensor
    diverged: torch.Tensor
    diverged_step: torch.Tensor
    n_valid: torch.Tensor


def _as_2d(v, name):
    if isinstance(v, torch.Tensor):
        _checks.tensor(v, name, ndim=(1, 2))
        arr = v.detach().cpu().double().numpy()
    else:
        try:
            arr = np.asarray(v, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"{name} must be an array of reals") from exc
        if arr.ndim not in (1, 2):
            raise ValueError(f"{name} must be 1-d or 2-d, got {arr.ndim} dimensions")
        if not np.isfinite(arr).all():
            raise ValueError(f"{name} must be finite")
    return np.array(arr[None] if arr.ndim == 1 else arr, dtype=np.float64, order="C")


def _per_run(v, name, R, *, integer=False):
    if isinstance(v, torch.Tensor):
        v = v.detach().cpu().numpy()
    try:
        arr = np.atleast_1d(np.asarray(v))
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be a number or a sequence of numbers") from exc
    if arr.dtype.kind not in "iuf":
        raise TypeError(f"{name} must be a number or a sequence of numbers, got {type(v).__name__}")
    if arr.ndim != 1 or arr.shape[0] not in (1, R):
        raise ValueError(f"{name} must be a scalar or have one entry per run ({R}), got shape {arr.shape}")
    out = []
    for x in np.broadcast_to(arr, (R,)):
        x = x.item()
        if integer:
            out.append(_checks.integer(x, name, minimum=1))
        else:
            out.append(_checks.real(x, name, positive=True))
    return out


def sgd(a0, u0, target, eta: float, eps, h: float, n_steps, *, seed: int, streams=None,
        n_records: int = 101, record_steps=None, noise: float = 1.0, u_grad: str = "exact",
        threads: int | None = None, blowup: float = 1e6, with_loss: bool = True) -> SGDResult:
    r"""Online SGD of the paper, one fresh sample per step, ``R`` independent
    runs in parallel.

    Parameters
    ----------
    a0, u0 : array-like or torch.Tensor
        Initial outer weights ``(R, m + 1)`` (``[..., 0]`` the bias) and
        positions ``(R, m)``, or unbatched.
    target : mflib.two_timescale.StepTarget
    eta : float
        Width of the steps, > 0.
    eps : float or sequence
        Ratio of the learning rates (:math:`u` learns at :math:`h\varepsilon`),
        > 0; one value per run allowed.
    h : float or sequence
        Step size of the outer weights, > 0; one value per run allowed.
    n_steps : int or sequence
        Number of steps, >= 1; one value per run allowed.
    seed : int
        >= 0.  Run ``i`` uses the random stream ``(seed, streams[i])``.
    streams : sequence of int, optional
        Stream index of each run (default ``0, ..., R-1``): two runs with the
        same seed and stream see the same samples.
    n_records : int
        Records evenly spaced over each run's steps (rounded), 2 to
        ``n_steps + 1``.  Ignored when ``record_steps`` is given.
    record_steps : sequence of int, optional
        Explicit increasing step counts in ``[0, min(n_steps)]``, the same for
        every run.
    noise : float
        Half-width of the uniform label noise, >= 0.
    u_grad : str
        Derivative of :math:`\sigma` in the position gradient: ``"exact"``, or
        ``"ramp"`` (that of the authors' released code).
    threads : int, optional
        Worker threads (default: the cores available, at most ``R``).  The
        results do not depend on it.
    blowup : float
        A run whose residual or parameters exceed this in absolute value (or
        become non-finite) is flagged diverged.
    with_loss : bool
        Compute the population risk of the records (exact quadrature; the
        dominant cost for many short runs); without it ``loss`` is ``None``.

    Returns
    -------
    SGDResult
    """
    target = _tt._target(target)
    eta = _checks.real(eta, "eta", positive=True)
    seed = _checks.integer(seed, "seed", minimum=0)
    noise = _checks.real(noise, "noise", nonnegative=True)
    blowup = _checks.real(blowup, "blowup", positive=True)
    if not isinstance(with_loss, bool):
        raise TypeError(f"with_loss must be a bool, got {type(with_loss).__name__}")
    _checks.choice(u_grad, "u_grad", {"exact", "ramp"})
    A, U = _as_2d(a0, "a0"), _as_2d(u0, "u0")
    R, m = U.shape
    if m < 1:
        raise ValueError("u0 must hold at least one neuron (m >= 1)")
    if A.shape != (R, m + 1):
        raise ValueError(f"a0 must have shape ({R}, {m + 1}) for u0 of shape ({R}, {m}), got {A.shape}")
    eps_r = _per_run(eps, "eps", R)
    h_r = _per_run(h, "h", R)
    steps_r = _per_run(n_steps, "n_steps", R, integer=True)
    # refuse up front what could not finish (about ten operations per neuron and step)
    _checks.budget(10.0 * (m + 1) * float(sum(steps_r)), "n_steps (with the number of runs and neurons)")
    if streams is None:
        streams = list(range(R))
    else:
        streams = [_checks.integer(s, "streams", minimum=0) for s in np.atleast_1d(np.asarray(streams)).tolist()]
        if len(streams) != R:
            raise ValueError(f"streams must have one entry per run ({R}), got {len(streams)}")
    if record_steps is not None:
        rs = np.asarray(record_steps)
        if rs.ndim != 1 or rs.size < 1 or not np.issubdtype(rs.dtype, np.integer):
            raise ValueError("record_steps must be a non-empty 1-d sequence of integers")
        if (rs[0] < 0) or (rs[-1] > min(steps_r)) or not (np.diff(rs) > 0).all():
            raise ValueError(f"record_steps must increase within [0, min(n_steps)={min(steps_r)}]")
        rec = [rs.astype(np.int64)] * R
    else:
        n_records = _checks.integer(n_records, "n_records", minimum=2, maximum=min(steps_r) + 1)
        grids = {n: np.linspace(0, n, n_records).round().astype(np.int64) for n in set(steps_r)}
        rec = [grids[n] for n in steps_r]
    if threads is None:
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = _checks.integer(threads, "threads", minimum=1)
    T = rec[0].shape[0]
    _checks.elements(R * T * (2 * m + 1), "n_records (with the number of runs and neurons)")
    jumps = target.jumps.detach().cpu().double().numpy().copy()
    values = target.values.detach().cpu().double().numpy().copy()
    rec_a = np.zeros((R, T, m + 1))
    rec_u = np.zeros((R, T, m))
    n_valid = np.zeros(R, dtype=np.int64)
    div_step = np.full(R, -1, dtype=np.int64)
    ramp = u_grad == "ramp"

    rec_steps = np.ascontiguousarray(np.stack(rec))
    states = np.array([stream_state(seed, st) for st in streams], dtype=np.uint64)
    h_arr = np.array(h_r)
    heps_arr = h_arr * np.array(eps_r)
    n_arr = np.array(steps_r, dtype=np.int64)
    order = np.argsort(-n_arr, kind="stable")            # longest first
    workers = min(threads, R)
    n_blocks = 1 if workers == 1 else min(R, 8 * workers)
    blocks = [order[b::n_blocks] for b in range(n_blocks)]

    def block(idx):
        _run_block(A, U, jumps, values, eta, h_arr, heps_arr, noise, n_arr, rec_steps, rec_a, rec_u,
                   states, ramp, blowup, idx, n_valid, div_step)

    if workers == 1:
        block(order)
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(block, blocks))
    diverged = div_step >= 0
    for i in np.flatnonzero(diverged):        # later records repeat the last finite one
        k = n_valid[i]
        if k == 0:
            rec_a[i] = A[i]
            rec_u[i] = U[i]
        else:
            rec_a[i, k:] = rec_a[i, k - 1]
            rec_u[i, k:] = rec_u[i, k - 1]
    steps = torch.from_numpy(rec_steps)
    ta, tu = torch.from_numpy(rec_a), torch.from_numpy(rec_u)
    loss = None
    if with_loss:
        loss = _tt.population_loss_grad(ta.reshape(R * T, m + 1), tu.reshape(R * T, m), target, eta,
                                        grad=False).reshape(R, T)
    tau = steps.double() * (torch.tensor(h_r, dtype=torch.float64) * torch.tensor(eps_r, dtype=torch.float64))[:, None]
    return SGDResult(steps=steps, tau=tau, u=tu, a=ta, loss=loss,
                     diverged=torch.from_numpy(diverged), diverged_step=torch.from_numpy(div_step),
                     n_valid=torch.from_numpy(n_valid))
