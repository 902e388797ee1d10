"""Small statistics shared by the lectures.

Most quantitative claims of the book are power laws ("the error falls like
:math:`m^{-1/2}`", "the displacement like :math:`1/\\alpha`"), checked by
fitting the slope of a log-log plot; that fit is written once, here, with
its standard error, so that a claim's tolerance can come from the sampling
error of the experiment (see :mod:`mflib.claims`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from mflib import _checks

__all__ = ["fit_slope", "slope_fit", "slope_over_repeats", "estimate", "batch_means", "SlopeFit",
           "Estimate", "relaxation_fit", "RelaxationFit"]


@dataclass(frozen=True)
class SlopeFit:
    r"""A log-log slope with its standard error.

    Attributes
    ----------
    value : float
        The slope :math:`\hat p` of :math:`\log y \approx c + \hat p \log x`.
    se : float
        Its standard error: the ordinary-least-squares one
        :math:`\sqrt{\mathrm{RSS}/((n-2) S_{xx})}` for one curve, or the
        standard error of the mean over independent repeats.
    intercept : float
        :math:`\hat c` (of the mean curve for repeats).
    n : int
        Number of points (or of repeats).
    """

    value: float
    se: float
    intercept: float
    n: int

    def __float__(self):
        return self.value


@dataclass(frozen=True)
class Estimate:
    """A mean over independent repeats with its standard error."""

    value: float
    se: float
    n: int

    def __float__(self):
        return self.value


def _as_reals(v, name):
    """``v`` as a float64 CPU tensor, refusing what is not real numbers."""
    if isinstance(v, (str, bytes)) or v is None or isinstance(v, (bool, dict, set)):
        raise TypeError(f"{name} must be a sequence of numbers, got {type(v).__name__}")
    if isinstance(v, torch.Tensor) and (v.is_complex() or v.dtype == torch.bool):
        raise TypeError(f"{name} must hold real numbers, got dtype {v.dtype}")
    try:
        return torch.as_tensor(v.detach().cpu() if isinstance(v, torch.Tensor) else v,
                               dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(f"{name} must be a sequence of real numbers ({err})") from err


def _logs(x, y):
    xs = _as_reals(x, "x")
    ys = _as_reals(y, "y")
    if xs.ndim != 1:
        xs = xs.flatten()
    if xs.numel() < 2:
        raise ValueError(f"x must hold at least 2 values, got {xs.numel()}")
    if ys.ndim == 0 or ys.shape[-1] != xs.numel() or ys.ndim > 2:
        raise ValueError(f"y must have x's length {xs.numel()} along its last dimension "
                         f"(and at most 2 dimensions), got shape {tuple(ys.shape)}")
    for name, v in (("x", xs), ("y", ys)):
        if not bool(torch.isfinite(v).all()) or bool((v <= 0).any()):
            raise ValueError(f"{name} must hold positive finite values")
    lx = xs.log()
    if float((lx - lx.mean()).abs().max()) == 0.0:
        raise ValueError("x must not be constant: it must hold at least two distinct values (the slope against a constant is undefined)")
    return lx, ys.log()


def _ols(lx, ly):
    cx = lx - lx.mean()
    sxx = float((cx ** 2).sum())
    slope = float((cx * (ly - ly.mean())).sum()) / sxx
    intercept = float(ly.mean()) - slope * float(lx.mean())
    return slope, intercept, sxx


def slope_fit(x, y) -> SlopeFit:
    r"""Least-squares slope of :math:`\log y` against :math:`\log x`, with its
    ordinary-least-squares standard error (``nan``-free: 0 for two points or
    an exact power law).

    Parameters
    ----------
    x, y : array-like
        1-d sequences of the same length, at least 2, of positive finite
        numbers; ``x`` must take at least two distinct values.
    """
    lx, ly = _logs(x, y)
    if ly.ndim != 1:
        raise ValueError("y must be 1-d here; use slope_over_repeats for several curves")
    slope, intercept, sxx = _ols(lx, ly)
    n = lx.numel()
    if n > 2:
        resid = ly - (intercept + slope * lx)
        se = math.sqrt(float((resid ** 2).sum()) / (n - 2) / sxx)
    else:
        se = 0.0
    return SlopeFit(value=slope, se=se, intercept=intercept, n=n)


def slope_over_repeats(x, y) -> SlopeFit:
    r"""Slope fitted to each of several independent curves ``y[r]`` (rows:
    repeats, e.g. seeds), reported as the mean slope with the standard error
    of the mean over repeats, :math:`s/\sqrt{R}`.

    Parameters
    ----------
    x : array-like
        1-d, length :math:`n \ge 2`, positive.
    y : array-like
        Shape ``(R, n)`` with :math:`R \ge 2`, positive.
    """
    lx, ly = _logs(x, y)
    if ly.ndim != 2 or ly.shape[0] < 2:
        raise ValueError(f"y must have shape (repeats >= 2, len(x)), got {tuple(ly.shape)}")
    slopes = torch.tensor([_ols(lx, row)[0] for row in ly], dtype=torch.float64)
    _, intercept, _ = _ols(lx, ly.mean(0))
    r = slopes.numel()
    return SlopeFit(value=float(slopes.mean()), se=float(slopes.std(unbiased=True)) / math.sqrt(r),
                    intercept=intercept, n=r)


def estimate(samples) -> Estimate:
    """Mean of independent repeats with its standard error :math:`s/\\sqrt{n}`.

    Parameters
    ----------
    samples : array-like
        At least 2 finite values.
    """
    s = _as_reals(samples, "samples").flatten()
    if s.numel() < 2:
        raise ValueError(f"samples must hold at least 2 values, got {s.numel()}")
    if not bool(torch.isfinite(s).all()):
        raise ValueError("samples must be finite")
    return Estimate(value=float(s.mean()), se=float(s.std(unbiased=True)) / math.sqrt(s.numel()),
                    n=s.numel())


def batch_means(samples, n_batches: int = 10) -> Estimate:
    r"""Mean of a correlated series (e.g. the tail of one SGD run) with the
    batch-means standard error: the series is cut into ``n_batches``
    consecutive batches, whose means are treated as independent, so that the
    error is :math:`s_B/\sqrt{B}` with :math:`s_B` the spread of the batch means.
    It is honest when a batch is much longer than the correlation time.

    Parameters
    ----------
    samples : array-like
        1-d, finite, at least ``2 * n_batches`` values (a leftover at the start is dropped).
    n_batches : int
        :math:`B \ge 2`.
    """
    n_batches = _checks.size(n_batches, "n_batches", minimum=2)
    s = _as_reals(samples, "samples").flatten()
    if not bool(torch.isfinite(s).all()):
        raise ValueError("samples must be finite")
    if s.numel() < 2 * n_batches:
        raise ValueError(f"samples must hold at least 2 * n_batches = {2 * n_batches} values, got {s.numel()}")
    size = s.numel() // n_batches
    means = s[s.numel() - size * n_batches:].reshape(n_batches, size).mean(1)
    value = _checks.finite_result(float(s.mean()), "the mean", "samples (its scale)")
    se = _checks.finite_result(float(means.std(unbiased=True)) / math.sqrt(n_batches),
                               "the batch-means standard error", "samples (its scale)")
    return Estimate(value=value, se=se, n=n_batches)


def fit_slope(x, y) -> float:
    r"""Least-squares slope of :math:`\log y` against :math:`\log x` (the value
    of :func:`slope_fit`).

    Parameters
    ----------
    x, y : array-like
        Sequences (lists, arrays or tensors, any device) of the same length,
        at least 2, of positive finite numbers; ``x`` takes at least two
        distinct values.

    Returns
    -------
    float
        :math:`\hat p` such that :math:`y \approx C x^{\hat p}`.

    Raises
    ------
    ValueError
        If the lengths differ or are below 2, a value of ``x`` or ``y`` is
        not positive and finite, or ``x`` is constant.
    TypeError
        If ``x`` or ``y`` is not a sequence of real numbers.
    """
    xs = _as_reals(x, "x").flatten()
    ys = _as_reals(y, "y").flatten()
    if xs.numel() != ys.numel() or xs.numel() < 2:
        raise ValueError(f"x and y must have the same length, at least 2; got {xs.numel()} and {ys.numel()}")
    return slope_fit(xs, ys).value


@dataclass(frozen=True)
class RelaxationFit:
    r"""Result of :func:`relaxation_fit`.

    Attributes
    ----------
    rate : SlopeFit
        Slope :math:`\hat s` of :math:`\log\lvert\bar c(t) - \bar c_\infty\rvert`
        against :math:`t` over the window (negative for an exponential approach,
        :math:`\bar c(t) - \bar c_\infty \approx Ce^{\hat st}`), with its
        jackknife standard error over the repeats; ``n`` is the number of points.
    halves : Estimate
        Slope on the first half of the window minus slope on the second half,
        with its jackknife standard error: 0 for an exponential approach, while
        a power law :math:`t^{-p}` (rate :math:`p/t`) makes it negative.
    stationary : Estimate
        The stationary value: per-repeat means over the tail, mean and
        standard error over repeats.
    window : tuple of float
        First and last time of the fitted window.
    noise : float
        Standard deviation of the mean curve over the tail (its fluctuation
        at stationarity), the unit of the window's threshold.
    """

    rate: SlopeFit
    halves: Estimate
    stationary: Estimate
    window: tuple
    noise: float


def _line(t, y):
    ct = t - t.mean()
    slope = float((ct * (y - y.mean())).sum() / (ct * ct).sum())
    return slope, float(y.mean()) - slope * float(t.mean())


def relaxation_fit(times, curves, *, t_min: float, tail: float = 0.5,
                   threshold: float = 3.0) -> RelaxationFit:
    r"""Fit an exponential approach to stationarity, :math:`c(t)\to c_\infty`, over repeats.

    ``curves[r]`` is one observable along independent runs :math:`r` (seeds)
    at ``times``.  With :math:`\bar c` the mean curve and
    :math:`\bar c_\infty` its mean over the last ``tail`` fraction of the
    points, the window starts at the first time :math:`\ge` ``t_min`` and
    runs while :math:`\lvert\bar c - \bar c_\infty\rvert` keeps the sign it
    has there and stays above ``threshold`` times the fluctuation of
    :math:`\bar c` over the tail (and while every leave-one-out mean curve
    keeps that sign); on it, :math:`\log\lvert\bar c - \bar c_\infty\rvert`
    is fitted linearly in :math:`t`.  The standard errors are jackknife
    ones over the repeats (leave one run out, recompute
    :math:`\bar c`, :math:`\bar c_\infty` and the slopes on the same window):
    the fluctuations of one run are correlated in time, so the residuals of
    the line would understate the error.

    Parameters
    ----------
    times : array-like
        1-d, strictly increasing, length :math:`T`.
    curves : array-like
        Shape ``(R, T)`` with :math:`R \ge 2` repeats, finite.
    t_min : float
        Earliest time of the window (skip the initial transient).
    tail : float
        Fraction of the points, in :math:`(0, 1)`, at the end taken as stationary.
    threshold : float
        Window threshold in units of the stationary fluctuation, :math:`> 0`.

    Returns
    -------
    RelaxationFit
    """
    t = _as_reals(times, "times")
    c = _as_reals(curves, "curves")
    if t.ndim != 1 or t.numel() < 8:
        raise ValueError(f"times must be 1-d with at least 8 values, got shape {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()) or not bool((t[1:] > t[:-1]).all()):
        raise ValueError("times must be finite and strictly increasing")
    if c.ndim != 2 or c.shape[0] < 2 or c.shape[1] != t.numel():
        raise ValueError(f"curves must have shape (repeats >= 2, len(times) = {t.numel()}), "
                         f"got {tuple(c.shape)}")
    if not bool(torch.isfinite(c).all()):
        raise ValueError("curves must be finite")
    t_min = _checks.real(t_min, "t_min")
    tail = _checks.real(tail, "tail", positive=True, maximum=1.0)
    threshold = _checks.real(threshold, "threshold", positive=True)
    n_t = t.numel()
    n_tail = int(round(tail * n_t))
    if n_tail < 2 or n_tail >= n_t:
        raise ValueError(f"tail = {tail} leaves {n_tail} stationary points of {n_t}: "
                         "need at least 2 and fewer than all")
    reps = c.shape[0]
    per_run = c[:, n_t - n_tail:].mean(1)
    stationary = Estimate(value=_checks.finite_result(float(per_run.mean()), "the stationary value",
                                                      "curves (their scale)"),
                          se=_checks.finite_result(float(per_run.std(unbiased=True)) / math.sqrt(reps),
                                                   "the stationary standard error", "curves (their scale)"),
                          n=reps)
    mean = c.mean(0)
    noise = _checks.finite_result(float(mean[n_t - n_tail:].std(unbiased=True)),
                                  "the stationary fluctuation", "curves (their scale)")
    loo = (c.sum(0, keepdim=True) - c) / (reps - 1)                     # (R, T) leave-one-out means
    gaps = torch.cat([mean[None], loo]) - torch.cat([mean[None], loo])[:, n_t - n_tail:].mean(1, keepdim=True)
    _checks.finite_result(gaps, "the gaps to stationarity", "curves (their scale)")
    start = int(torch.searchsorted(t, torch.tensor([t_min], dtype=t.dtype)).item())
    if start >= n_t - n_tail:
        raise ValueError(f"t_min = {t_min} leaves no point before the stationary tail "
                         f"(t >= {float(t[n_t - n_tail]):g})")
    sign = 1.0 if float(gaps[0, start]) >= 0 else -1.0
    end = start
    while (end < n_t - n_tail and sign * float(gaps[0, end]) >= threshold * noise
           and bool((sign * gaps[1:, end] > 0).all())):
        end += 1
    if end - start < 4:
        raise ValueError(f"the window from t_min = {t_min} holds {end - start} points at which the mean "
                         f"of curves is farther from its stationary value than threshold = {threshold} "
                         f"times its fluctuation {noise:.3g}: need at least 4 (lower t_min or threshold, "
                         "or reduce the noise)")
    tw = t[start:end]
    lg = (sign * gaps[:, start:end]).log()                                # (1 + R, n)
    h = (end - start) // 2

    def fits(row):
        full = _line(tw, row)
        return full, _line(tw[:h], row[:h])[0] - _line(tw[h:], row[h:])[0]

    (slope, intercept), diff = fits(lg[0])
    jk = [fits(row) for row in lg[1:]]
    js = torch.tensor([f[0][0] for f in jk], dtype=torch.float64)
    jd = torch.tensor([f[1] for f in jk], dtype=torch.float64)
    factor = math.sqrt((reps - 1) / reps)
    se_s = factor * float(((js - js.mean()) ** 2).sum().sqrt())
    se_d = factor * float(((jd - jd.mean()) ** 2).sum().sqrt())
    return RelaxationFit(rate=SlopeFit(value=slope, se=se_s, intercept=intercept, n=end - start),
                         halves=Estimate(value=diff, se=se_d, n=reps), stationary=stationary,
                         window=(float(tw[0]), float(tw[-1])), noise=noise)
