"""Small statistics shared by the lectures.

Most quantitative claims of the book are power laws ("the error falls like
:math:`m^{-1/2}`", "the displacement like :math:`1/\\alpha`"), checked by
fitting the slope of a log-log plot; that fit is written once, here.
"""

from __future__ import annotations

import torch

__all__ = ["fit_slope"]


def fit_slope(x, y) -> float:
    r"""Least-squares slope of :math:`\log y` against :math:`\log x`.

    Parameters
    ----------
    x, y : array-like
        Sequences (lists, arrays or tensors, any device) of the same length,
        at least 2, of positive finite numbers.

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
    xs = _sequence(x, "x")
    ys = _sequence(y, "y")
    if xs.numel() != ys.numel() or xs.numel() < 2:
        raise ValueError(f"x and y must have the same length, at least 2; got {xs.numel()} and {ys.numel()}")
    for name, v in (("x", xs), ("y", ys)):
        if not bool(torch.isfinite(v).all()) or bool((v <= 0).any()):
            raise ValueError(f"{name} must hold positive finite values")
    lx, ly = xs.log(), ys.log()
    lx = lx - lx.mean()
    den = float((lx ** 2).sum())
    if den == 0:
        raise ValueError("x must not be constant: the slope of a vertical line is undefined")
    return float((lx * (ly - ly.mean())).sum()) / den


def _sequence(v, name):
    if isinstance(v, (str, bytes)) or v is None or isinstance(v, (bool, dict, set)):
        raise TypeError(f"{name} must be a sequence of numbers, got {type(v).__name__}")
    if isinstance(v, torch.Tensor) and (v.is_complex() or v.dtype == torch.bool):
        raise TypeError(f"{name} must hold real numbers, got dtype {v.dtype}")
    try:
        t = torch.as_tensor(v.detach().cpu() if isinstance(v, torch.Tensor) else v,
                            dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(f"{name} must be a sequence of real numbers ({err})") from err
    return t.flatten()
