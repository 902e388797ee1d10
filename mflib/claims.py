r"""Claims: every number a page states about the science, computed, checked
and recorded.

A *claim* is one quantitative statement of a page — "the displacement falls
like :math:`1/\alpha`", "the risk at the end is within 5 % of the floor" —
made by one call::

    from mflib import claims

    fit = stats.slope_fit(alphas, displacement)
    claims.claim("disp-slope", fit, predicted=-1.0, sigmas=3, atol=0.05,
                 what="displacement of the weights against alpha (log-log slope)",
                 tolerance="3 standard errors of the fit + 0.05 for the O(1/alpha^2) term",
                 source="{prf:ref}`thm-04-lazy`")

The call

* **checks** the measured value against the prediction: it must be finite
  and lie in the accepted interval, otherwise :class:`ClaimFailed` is raised
  (so the notebook, the book build and the test suite fail);
* **glues** the value under ``key`` for the prose (``{glue:text}`key:.2f```),
  so no result is ever typed by hand;
* **records** the claim (value, prediction, accepted interval, where the
  tolerance comes from, source, pass/fail) in the executed notebook, from
  which the book's extension builds the *Claims* page.

The accepted interval
---------------------
With a ``predicted`` value :math:`p`, the half-width is

.. math::

    w = \mathrm{atol} + \mathrm{rtol}\,|p| + \mathrm{sigmas}\cdot\mathrm{se},

where ``se`` is the standard error of the measurement (taken from a
:class:`mflib.stats.SlopeFit` or :class:`mflib.stats.Estimate` passed as
``value``, or given explicitly), and the interval is :math:`[p-w, p+w]`,
intersected with ``[lower, upper]`` where those are given.  Without a
prediction, ``lower`` and/or ``upper`` give a bound (one-sided claims only
where the theory is one-sided: see ``CONTRIBUTING.md``).

Parameters of an experiment (sizes, seeds, step sizes) that the prose quotes
are glued with :func:`parameter`, which records them as parameters, not
claims.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass
from numbers import Integral, Real

import torch

from mflib import _checks

__all__ = ["Claim", "ClaimFailed", "claim", "parameter", "ledger", "clear", "RECORD_PREFIX",
           "PARAMETER_PREFIX"]

#: Glue-key prefix of the records that the book's extension collects.
RECORD_PREFIX = "mflib-claim/"
#: Glue-key prefix of the declared parameters.
PARAMETER_PREFIX = "mflib-parameter/"

_LEDGER: list["Claim"] = []


class ClaimFailed(AssertionError, ValueError):
    """A claim of a page does not hold: the measured value lies outside the
    interval that the theory and the sampling error allow (an
    ``AssertionError``, and a ``ValueError`` about the argument ``value``)."""


@dataclass(frozen=True)
class Claim:
    """One checked statement of a page.

    Attributes
    ----------
    key : str
        Glue key (unique within its page).
    value : float
        The measured value.
    predicted : float or None
        What the theory predicts, when it predicts a value.
    lower, upper : float
        The accepted interval (``-inf``/``inf`` when open on that side).
    se : float or None
        Standard error of the measurement, when known.
    what, tolerance, source : str
        The statement, where the tolerance comes from, and the theorem or
        citation it checks (MyST markup allowed).
    passed : bool
        Whether ``lower <= value <= upper`` (and the value is finite).
    """

    key: str
    value: float
    predicted: float | None
    lower: float
    upper: float
    se: float | None
    what: str
    tolerance: str
    source: str
    passed: bool

    @property
    def kind(self) -> str:
        """``"value"``, ``"upper bound"``, ``"lower bound"`` or ``"interval"``."""
        if self.predicted is not None:
            return "value"
        if math.isinf(self.lower):
            return "upper bound"
        if math.isinf(self.upper):
            return "lower bound"
        return "interval"

    def prediction_text(self) -> str:
        """The prediction and accepted interval in words, e.g. ``-1 (accept [-1.08, -0.92])``."""
        def f(v):
            return f"{v:.4g}"
        if self.kind == "value":
            return f"{f(self.predicted)} (accept [{f(self.lower)}, {f(self.upper)}])"
        if self.kind == "upper bound":
            return f"≤ {f(self.upper)}"
        if self.kind == "lower bound":
            return f"≥ {f(self.lower)}"
        return f"in [{f(self.lower)}, {f(self.upper)}]"

    def to_json(self) -> dict:
        d = asdict(self)
        for k in ("lower", "upper", "value"):
            if not math.isfinite(d[k]):
                d[k] = repr(d[k])  # JSON has no inf/nan
        d["kind"] = self.kind
        return d


class _Record:
    """What is glued for the ledger: its text form is the JSON of the record
    (a glued mime bundle may only hold strings)."""

    def __init__(self, data: dict):
        self.data = data

    def __repr__(self):
        return json.dumps(self.data, sort_keys=True)


def _in_kernel() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython ships with the book
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def _glue(key, value) -> None:
    if _in_kernel():
        from myst_nb import glue

        glue(key, value, display=False)


def _key(key) -> str:
    if not isinstance(key, str):
        raise TypeError(f"key must be a str, got {type(key).__name__}")
    if not key or any(c.isspace() for c in key) or ":" in key:
        raise ValueError(f"key must be a non-empty glue key without spaces or ':', got {key!r}")
    return key


_TEX_OUTSIDE_MATH = re.compile(r"\\[A-Za-z]+|\^\{|_\{")


def _text(v, name: str, *, required: bool = True) -> str:
    """A text shown on the Claims page: MyST inline markup, mathematics only
    inside ``$...$`` (TeX elsewhere would be shown raw)."""
    if not isinstance(v, str):
        raise TypeError(f"{name} must be a str, got {type(v).__name__}")
    if required and not v.strip():
        raise ValueError(f"{name} must say something (it is shown on the Claims page)")
    prose = re.sub(r"`[^`]*`", " ", re.sub(r"\$[^$]*\$", " ", v))
    bad = _TEX_OUTSIDE_MATH.search(prose)
    if bad or prose.count("$") % 2:
        raise ValueError(f"{name} has TeX outside $...$ ({(bad.group(0) if bad else '$')!r}): "
                         f"put mathematics between dollars, got {v!r}")
    return v


def _number(v, name: str) -> float:
    """A measured value: a real (finite or not: a non-finite value fails the
    claim rather than the call), a one-element tensor, or an object with
    ``.value`` (a :class:`mflib.stats.SlopeFit` / ``Estimate``)."""
    if isinstance(v, torch.Tensor):
        if v.numel() != 1:
            raise ValueError(f"{name} must be a scalar, got a tensor of shape {tuple(v.shape)}")
        if v.is_complex() or v.dtype == torch.bool:
            raise TypeError(f"{name} must be real, got dtype {v.dtype}")
        v = v.item()
    if isinstance(v, bool) or not isinstance(v, Real):
        raise TypeError(f"{name} must be a real number, got {type(v).__name__}")
    return float(v)


def claim(key: str, value, *, what: str, tolerance: str, source: str,
          predicted=None, atol: float = 0.0, rtol: float = 0.0, sigmas: float = 0.0,
          se=None, lower=None, upper=None) -> Claim:
    r"""State, check, glue and record one claim.

    Parameters
    ----------
    key : str
        Glue key for the prose; unique within the page.
    value : float, 0-d tensor, :class:`mflib.stats.SlopeFit` or :class:`mflib.stats.Estimate`
        The measured value.  A fit or estimate also supplies ``se``.
    what : str
        The statement being checked, in a few words.
    tolerance : str
        Where the accepted interval comes from (theory and sampling error).
    source : str
        The theorem label (``{prf:ref}`thm-...```) or citation it checks.
    predicted : float, optional
        The theory's value; the interval is centred there.
    atol, rtol, sigmas : float
        Half-width :math:`\mathrm{atol} + \mathrm{rtol}|p| + \mathrm{sigmas}\cdot\mathrm{se}`
        around ``predicted`` (at least one must be positive when ``predicted`` is given).
    se : float, optional
        Standard error of ``value`` (overrides the one of a fit or estimate).
    lower, upper : float, optional
        Bounds of the accepted interval; without ``predicted`` at least one is
        required (a one-sided claim).

    Returns
    -------
    Claim

    Raises
    ------
    ClaimFailed
        If the value is not finite or lies outside the accepted interval.
    TypeError, ValueError
        If the claim itself is malformed (argument named).
    """
    key = _key(key)
    what = _text(what, "what")
    tolerance = _text(tolerance, "tolerance")
    source = _text(source, "source")
    fit_se = getattr(value, "se", None)
    if hasattr(value, "value") and not isinstance(value, torch.Tensor):
        value = value.value
    val = _number(value, "value")
    if se is None:
        se = fit_se
    if se is not None:
        se = _checks.real(se, "se", nonnegative=True)
    atol = _checks.real(atol, "atol", nonnegative=True)
    rtol = _checks.real(rtol, "rtol", nonnegative=True)
    sigmas = _checks.real(sigmas, "sigmas", nonnegative=True)
    if sigmas > 0 and se is None:
        raise ValueError("sigmas needs a standard error: pass se= or a SlopeFit/Estimate as value")
    lo = -math.inf if lower is None else _checks.real(lower, "lower")
    hi = math.inf if upper is None else _checks.real(upper, "upper")
    if predicted is not None:
        predicted = _checks.real(predicted, "predicted")
        width = atol + rtol * abs(predicted) + sigmas * (se or 0.0)
        if width <= 0:
            raise ValueError("a claim with predicted= needs a positive tolerance: "
                             "set atol, rtol or sigmas")
        lo, hi = max(lo, predicted - width), min(hi, predicted + width)
    elif lower is None and upper is None:
        raise ValueError("a claim needs predicted=, lower= or upper=")
    elif atol or rtol or sigmas:
        raise ValueError("atol, rtol and sigmas apply around predicted=; give predicted")
    if lo > hi:
        raise ValueError(f"empty accepted interval [{lo}, {hi}]: check lower/upper against predicted")
    passed = math.isfinite(val) and lo <= val <= hi
    c = Claim(key=key, value=val, predicted=predicted, lower=lo, upper=hi, se=se, what=what,
              tolerance=tolerance, source=source, passed=passed)
    _LEDGER.append(c)
    _glue(RECORD_PREFIX + key, _Record(c.to_json()))
    if not passed:
        given = ", ".join(f"{name}={v!r}" for name, v in
                          (("predicted", predicted), ("atol", atol), ("rtol", rtol), ("sigmas", sigmas),
                           ("se", se), ("lower", lower), ("upper", upper)) if v is not None)
        raise ClaimFailed(f"claim {key!r} ({what}) does not hold: measured value {val:.6g}, "
                          f"expected {c.prediction_text()} (from {given}); tolerance: {tolerance}; "
                          f"source: {source}")
    _glue(key, val)
    return c


def parameter(key: str, value, *, what: str = ""):
    """Glue a declared parameter of an experiment (a size, a seed, a step
    size) for the prose, and record it as a parameter (not a claim).

    Returns ``value`` unchanged, so that ``M = claims.parameter("m", 20)`` both
    sets and declares it.
    """
    key = _key(key)
    _text(what, "what", required=False)
    shown = _parameter_value(value)
    _glue(key, shown)
    _glue(PARAMETER_PREFIX + key, _Record({"key": key, "value": repr(value), "what": what}))
    return value


def _parameter_value(value):
    """A parameter as it is shown: a finite real or int, a string, or a flat
    list/tuple of those (a 0-d or 1-d tensor is converted)."""
    if isinstance(value, torch.Tensor):
        if value.ndim > 1 or value.is_complex():
            raise ValueError(f"value must be a number, a string or a flat sequence, got a tensor of shape "
                             f"{tuple(value.shape)} and dtype {value.dtype}")
        value = value.item() if value.ndim == 0 else value.tolist()
    items = value if isinstance(value, (list, tuple)) else [value]
    if isinstance(value, (list, tuple)) and not value:
        raise ValueError("value must not be an empty sequence")
    out = []
    for v in items:
        if isinstance(v, str):
            out.append(v)
            continue
        if isinstance(v, bool) or not isinstance(v, Real):
            raise TypeError(f"value must be a number, a string or a flat sequence of those, got {type(v).__name__}")
        if not math.isfinite(float(v)):
            raise ValueError(f"value must be finite, got {v}")
        out.append(int(v) if isinstance(v, Integral) else float(v))  # numpy scalars shown as plain numbers
    return type(value)(out) if isinstance(value, (list, tuple)) else out[0]


def ledger() -> list[Claim]:
    """The claims stated so far in this process, in order."""
    return list(_LEDGER)


def clear() -> None:
    """Forget the claims stated so far (tests)."""
    _LEDGER.clear()
