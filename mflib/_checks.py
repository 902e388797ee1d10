"""Argument validation shared by the public functions of :mod:`mflib`.

Every check raises ``ValueError`` or ``TypeError`` with a message that names
the argument (as the caller spelled it) and says what was expected:

* wrong Python type, or a tensor of the wrong dtype → ``TypeError``;
* wrong value, shape, device, a non-finite entry, a size or a horizon whose
  cost cannot be afforded → ``ValueError``.

The checks are written once here and used by every module; a module does not
write its own ``isinstance`` tests.  Sizes and horizons are refused up front
(:func:`size`, :func:`budget`), so that a call that could not finish says so
instead of running for hours or failing inside an allocation.
"""

from __future__ import annotations

import math
from numbers import Integral, Real

import numpy as np
import torch

#: Floating dtypes the library computes in (float16/bfloat16 lack the CPU
#: kernels and the precision that the closed forms need).
FLOATS = (torch.float32, torch.float64)

#: Largest count (points, neurons, models, steps, ...) a single argument may
#: ask for; larger values are refused before any allocation or loop starts.
MAX_SIZE = 10 ** 8

#: Largest number of tensor elements one call may allocate (8 GiB in float32).
MAX_ELEMENTS = 2 ** 31

#: Largest amount of work (elementary floating-point operations, estimated
#: generously from the arguments) one call may ask for: hours of one CPU core,
#: a hundred times what the largest call of the book needs.
MAX_WORK = 1e14

#: Largest magnitude accepted for a real argument: squares and products of a
#: few such numbers stay finite in float64 (a larger value would overflow in
#: the arithmetic that follows rather than give an answer).
MAX_REAL = 1e100

#: Largest seed: ``torch.Generator.manual_seed`` takes 64-bit seeds.
MAX_SEED = 2 ** 63 - 1


def _kind(x) -> str:
    return type(x).__name__


def _is_bool(v) -> bool:
    return isinstance(v, (bool, np.bool_))


def dtype(v, name: str = "dtype", *, default=None) -> torch.dtype:
    """Check that ``v`` is a floating dtype the library computes in (float32 or float64).

    ``None`` gives ``default`` when one is given.
    """
    if v is None and default is not None:
        return default
    if not isinstance(v, torch.dtype):
        raise TypeError(f"{name} must be a floating torch.dtype (torch.float32 or torch.float64), "
                        f"got {v!r}")
    if v not in FLOATS:
        raise TypeError(f"{name} must be a floating torch.dtype (torch.float32 or torch.float64), "
                        f"got {v}")
    return v


def tensor(x, name: str, *, ndim: int | tuple[int, ...] | None = None, finite: bool = True,
           floating: bool = True, nonempty: bool = False, shape: tuple | None = None) -> torch.Tensor:
    """Check that ``x`` is a tensor of the expected rank, dtype and values.

    Parameters
    ----------
    x : object
        The argument.
    name : str
        Its name, as the caller spelled it.
    ndim : int or tuple of int, optional
        Allowed ranks.
    finite : bool
        Refuse NaN and infinite entries.
    floating : bool
        Require float32 or float64 (integer, bool, complex, float16 and
        bfloat16 tensors are refused with ``TypeError``).  With
        ``floating=False`` any real dtype is accepted (complex is still refused).
    nonempty : bool
        Refuse tensors with no element (or with an empty dimension).
    shape : tuple, optional
        Exact shape; ``None`` entries match any size.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {_kind(x)}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if x.ndim not in allowed:
            want = " or ".join(str(a) for a in allowed)
            raise ValueError(f"{name} must have {want} dimensions, got shape {tuple(x.shape)}")
    if x.is_complex():
        raise TypeError(f"{name} must be a real tensor, got dtype {x.dtype}")
    if floating and x.dtype not in FLOATS:
        raise TypeError(f"{name} must be a floating-point tensor (float32 or float64), got dtype {x.dtype}")
    if shape is not None:
        if len(shape) != x.ndim or any(s is not None and s != t for s, t in zip(shape, x.shape)):
            want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
            raise ValueError(f"{name} must have shape {want}, got {tuple(x.shape)}")
    if nonempty and x.numel() == 0:
        raise ValueError(f"{name} must not be empty, got shape {tuple(x.shape)}")
    if finite and x.is_floating_point() and not _all_finite(x):
        raise ValueError(f"{name} contains non-finite values (NaN or inf)")
    return x


def _all_finite(x: torch.Tensor) -> bool:
    """True when every entry is finite, or when the values are not concrete (inside a
    ``torch.func.vmap``, where a model is traced per sample: its inputs were checked
    by the function that called ``vmap``)."""
    try:
        return bool(torch.isfinite(x).all())
    except RuntimeError:
        return True


def matching(a: torch.Tensor, b: torch.Tensor, name_a: str, name_b: str, *,
             device: bool = True) -> None:
    """Check that two tensors share dtype (``TypeError``) and device (``ValueError``)."""
    if a.dtype != b.dtype:
        raise TypeError(f"{name_a} and {name_b} must have the same dtype, got {a.dtype} and {b.dtype}")
    if device and a.device != b.device:
        raise ValueError(f"{name_a} and {name_b} must be on the same device, "
                         f"got {a.device} and {b.device}")


def same_rows(a: torch.Tensor, b: torch.Tensor, name_a: str, name_b: str) -> None:
    """Check that two tensors have the same number of rows."""
    if a.ndim == 0 or b.ndim == 0:
        raise ValueError(f"{name_a} and {name_b} must have at least one dimension")
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"{name_a} and {name_b} must have the same number of rows, "
                         f"got {a.shape[0]} and {b.shape[0]}")


def same_shape(a: torch.Tensor, b: torch.Tensor, name_a: str, name_b: str) -> None:
    """Check that two tensors have the same shape."""
    if a.shape != b.shape:
        raise ValueError(f"{name_a} and {name_b} must have the same shape, "
                         f"got {tuple(a.shape)} and {tuple(b.shape)}")


def integer(v, name: str, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """Check that ``v`` is an int (not a bool) within bounds."""
    if _is_bool(v) or not isinstance(v, Integral):
        raise TypeError(f"{name} must be an int, got {_kind(v)}")
    v = int(v)
    if minimum is not None and v < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {v}")
    if maximum is not None and v > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {v}")
    return v


def size(v, name: str, *, minimum: int = 1, maximum: int = MAX_SIZE) -> int:
    """A count (points, neurons, steps, ...): an int in ``[minimum, maximum]``.

    The default ``maximum`` (:data:`MAX_SIZE`) refuses counts that no call of
    this library can afford, before anything is allocated.
    """
    v = integer(v, name, minimum=minimum)
    if v > maximum:
        raise ValueError(f"{name}={v} is too large: at most {maximum} (the call could not finish "
                         f"or would not fit in memory)")
    return v


def seed(v, name: str = "seed") -> int:
    """A seed: an int in ``[0, 2**63 - 1]``."""
    return integer(v, name, minimum=0, maximum=MAX_SEED)


def index(v, name: str, length: int) -> int:
    """An index into a sequence of ``length`` items, in ``[0, length)`` (no wrapping)."""
    return integer(v, name, minimum=0, maximum=length - 1)


def flag(v, name: str) -> bool:
    """A flag: ``True`` or ``False`` (not 1, ``"yes"`` or ``None``)."""
    if not _is_bool(v):
        raise TypeError(f"{name} must be True or False, got {v!r}")
    return bool(v)


def real(v, name: str, *, positive: bool = False, nonnegative: bool = False,
         minimum: float | None = None, maximum: float | None = None,
         largest: float = MAX_REAL) -> float:
    """Check that ``v`` is a finite real number within bounds.

    Magnitudes above ``largest`` (default :data:`MAX_REAL`) are refused: the
    arithmetic that follows would overflow.
    """
    if _is_bool(v) or not isinstance(v, Real):
        if isinstance(v, torch.Tensor) and v.numel() == 1 and not v.is_complex() \
                and v.dtype != torch.bool:
            v = v.item()
        else:
            raise TypeError(f"{name} must be a real number, got {_kind(v)}")
    v = float(v)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {v}")
    if abs(v) > largest:
        raise ValueError(f"{name}={v:g} is too large in magnitude (at most {largest:g}): "
                         f"the computation would overflow")
    if positive and v <= 0:
        raise ValueError(f"{name} must be > 0, got {v}")
    if nonnegative and v < 0:
        raise ValueError(f"{name} must be >= 0, got {v}")
    if minimum is not None and v < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {v}")
    if maximum is not None and v > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {v}")
    return v


def interval(v, name: str) -> tuple[float, float]:
    """A pair ``(low, high)`` of finite reals with ``low <= high``."""
    if not isinstance(v, (tuple, list)) or len(v) != 2:
        raise TypeError(f"{name} must be a pair (low, high), got {v!r}")
    lo, hi = real(v[0], name), real(v[1], name)
    if hi < lo:
        raise ValueError(f"{name} must have low <= high, got {tuple(v)}")
    return lo, hi


def reals(v, name: str, *, length: int | None = None, **bounds) -> tuple[float, ...]:
    """A sequence of finite reals (each checked by :func:`real` with ``bounds``)."""
    if isinstance(v, (str, bytes)) or not isinstance(v, (tuple, list, torch.Tensor, np.ndarray)):
        raise TypeError(f"{name} must be a sequence of numbers, got {_kind(v)}")
    out = tuple(real(t, name, **bounds) for t in v)
    if length is not None and len(out) != length:
        raise ValueError(f"{name} must hold {length} numbers, got {len(out)}")
    return out


def choice(v, name: str, options):
    """Check that ``v`` is one of ``options``."""
    try:
        ok = v in options
    except TypeError:
        ok = False
    if not ok:
        raise ValueError(f"{name} must be one of {sorted(options)}, got {v!r}")
    return v


def string(v, name: str) -> str:
    """A ``str``."""
    if not isinstance(v, str):
        raise TypeError(f"{name} must be a str, got {_kind(v)}")
    return v


def function(v, name: str):
    """A callable."""
    if not callable(v):
        raise TypeError(f"{name} must be callable, got {_kind(v)}")
    return v


def instance(v, cls, name: str):
    """An instance of ``cls``."""
    if not isinstance(v, cls):
        want = cls.__name__ if isinstance(cls, type) else " or ".join(c.__name__ for c in cls)
        raise TypeError(f"{name} must be a {want}, got {_kind(v)}")
    return v


def generator(v, name: str = "generator", *, default_seed: int = 0) -> torch.Generator:
    """A CPU ``torch.Generator``; ``None`` gives ``mflib.generator(default_seed)``.

    This is the library's one randomness policy: a function that draws random
    numbers takes ``generator=``; left at ``None`` it draws from a fresh
    generator with a fixed seed (never from torch's global random state), so
    that the same call gives the same numbers every time.
    """
    if v is None:
        g = torch.Generator(device="cpu")
        g.manual_seed(default_seed)
        return g
    if not isinstance(v, torch.Generator):
        raise TypeError(f"{name} must be a torch.Generator, got {_kind(v)}")
    if v.device.type != "cpu":
        raise ValueError(f"{name} must be a CPU generator (draw on the CPU, then move), "
                         f"got one on {v.device}")
    return v


def device(v, name: str = "device", *, default=None) -> torch.device:
    """A device that exists here: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, a ``torch.device``.

    ``None`` gives ``default`` (a device or a callable returning one; the CPU
    when ``default`` is ``None``).
    """
    if v is None:
        if default is None:
            return torch.device("cpu")
        return default() if callable(default) else torch.device(default)
    if not isinstance(v, (str, torch.device)):
        raise TypeError(f"{name} must be a device name or a torch.device, got {_kind(v)}")
    try:
        dev = torch.device(v)
    except (RuntimeError, ValueError) as err:
        raise ValueError(f"{name} must name a torch device ('cpu', 'cuda', 'cuda:0', ...), "
                         f"got {v!r}") from err
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{name}={str(v)!r} asks for CUDA, which is not available here")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"{name}={str(v)!r}: there are only {torch.cuda.device_count()} "
                             f"CUDA devices")
        return dev
    if dev.type == "mps" and torch.backends.mps.is_available():
        return dev
    raise ValueError(f"{name} must be 'cpu' or an available 'cuda' device, got {str(v)!r}")


def elements(count, name: str, *, limit: int = MAX_ELEMENTS) -> None:
    """Refuse an allocation of ``count`` elements above ``limit`` (``name`` says which
    arguments set it)."""
    if count > limit:
        raise ValueError(f"{name} ask for {float(count):.3g} tensor elements, more than the "
                         f"{float(limit):.3g} one call may allocate")


def budget(work, name: str, *, limit: float = MAX_WORK) -> None:
    """Refuse a call whose estimated ``work`` (floating-point operations, or loop
    iterations weighted by their cost) exceeds ``limit``, naming the arguments
    (``name``) that set it: it could not finish in reasonable time."""
    if not work <= limit:
        raise ValueError(f"{name} ask for about {float(work):.3g} operations, more than the "
                         f"{float(limit):.3g} one call may take: reduce them")


def finite_result(x, what: str, names: str):
    """Check that a computed tensor (or float) is finite; else ``ValueError``
    saying which arguments made it overflow."""
    bad = (not bool(torch.isfinite(x).all())) if isinstance(x, torch.Tensor) \
        else not math.isfinite(x)
    if bad:
        raise ValueError(f"{what} is not finite (overflow or 0/0): {names} out of range")
    return x


class Diverged(RuntimeError):
    """Raised (or recorded) when a training run produces non-finite values.

    A diverging run is reported as diverged, never plotted as NaN: engines
    either raise this error or return a result whose ``diverged`` flag is set
    and whose trajectory stops at the last finite step.
    """
