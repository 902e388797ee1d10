"""Argument validation shared by the public functions of :mod:`mflib`.

Every check raises ``ValueError`` or ``TypeError`` with a message that names
the argument and says what was expected.
"""

from __future__ import annotations

import math
from numbers import Integral, Real

import torch


def tensor(x, name: str, *, ndim: int | tuple[int, ...] | None = None, finite: bool = True,
           floating: bool = True) -> torch.Tensor:
    """Check that ``x`` is a tensor of the expected rank, finite, floating."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if x.ndim not in allowed:
            want = " or ".join(str(a) for a in allowed)
            raise ValueError(f"{name} must have {want} dimensions, got shape {tuple(x.shape)}")
    if floating and not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if finite and x.is_floating_point() and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains non-finite values (NaN or inf)")
    return x


def integer(v, name: str, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """Check that ``v`` is an int (not a bool) within bounds."""
    if isinstance(v, bool) or not isinstance(v, Integral):
        raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    v = int(v)
    if minimum is not None and v < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {v}")
    if maximum is not None and v > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {v}")
    return v


def real(v, name: str, *, positive: bool = False, nonnegative: bool = False,
         minimum: float | None = None, maximum: float | None = None) -> float:
    """Check that ``v`` is a finite real number within bounds."""
    if isinstance(v, bool) or not isinstance(v, Real):
        if isinstance(v, torch.Tensor) and v.numel() == 1:
            v = v.item()
        else:
            raise TypeError(f"{name} must be a real number, got {type(v).__name__}")
    v = float(v)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {v}")
    if positive and v <= 0:
        raise ValueError(f"{name} must be > 0, got {v}")
    if nonnegative and v < 0:
        raise ValueError(f"{name} must be >= 0, got {v}")
    if minimum is not None and v < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {v}")
    if maximum is not None and v > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {v}")
    return v


def choice(v, name: str, options) -> str:
    """Check that ``v`` is one of ``options``."""
    if v not in options:
        raise ValueError(f"{name} must be one of {sorted(options)}, got {v!r}")
    return v


def same_rows(a: torch.Tensor, b: torch.Tensor, name_a: str, name_b: str) -> None:
    """Check that two tensors have the same number of rows."""
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"{name_a} and {name_b} must have the same number of rows, "
                         f"got {a.shape[0]} and {b.shape[0]}")


class Diverged(RuntimeError):
    """Raised (or recorded) when a training run produces non-finite values.

    A diverging run is reported as diverged, never plotted as NaN: engines
    either raise this error or return a result whose ``diverged`` flag is set
    and whose trajectory stops at the last finite step.
    """
