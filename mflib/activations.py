r"""One registry of activation functions, each with its derivative and, where a
closed form exists, its Gaussian moments (its infinite-width kernel map).

The fully connected networks (:mod:`mflib.nets`), the explicit
backpropagation of :mod:`mflib.backprop` and the kernels
(:mod:`mflib.kernels`) take their activations from here, by name or as an
:class:`Activation`; the engines with closed-form gradients
(:mod:`mflib.lazy`, :mod:`mflib.meanfield`, :mod:`mflib.threelayer`) still
name the few activations their formulas cover in their own lists.  An
activation and the map that sends a Gaussian covariance to the next layer's
covariance are written side by side, as in neural-tangents'
``stax/elementwise.py``:

.. math::

   \texttt{moments}(s_{12}, s_{11}, s_{22}) =
   \bigl(\E[\phi(u)\phi(v)],\; \E[\phi'(u)\phi'(v)]\bigr),\qquad
   (u, v) \sim \mathcal N\Bigl(0, \begin{pmatrix} s_{11} & s_{12}\\ s_{12} & s_{22}\end{pmatrix}\Bigr).

Closed forms: ``relu`` (the arc-cosine kernels of degrees 1 and 0, Cho & Saul
2009, see :mod:`mflib.arccos`), ``erf`` (Williams 1997) and
``identity``.  For the others :func:`mflib.kernels.nngp_ntk` falls back to
two-dimensional Gauss--Hermite quadrature (documented there, with its
measured accuracy).

Conventions: :math:`\mathrm{relu}'(0) = 0`; ``erf`` is :math:`\mathrm{erf}(x)`
itself (neural-tangents' ``stax.Erf()`` with ``a = b = 1, c = 0``);
``"linear"`` is an alias of ``"identity"``.  ``square`` and ``cube`` are the
polynomial activations of the universal-approximation counter-example.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from mflib import _checks

__all__ = ["Activation", "ACTIVATIONS", "get", "names"]


@dataclass(frozen=True)
class Activation:
    r"""An elementwise activation :math:`\phi` with its derivative.

    Attributes
    ----------
    name : str or None
        Registry name (``None`` for one built from a callable).
    fn : callable
        :math:`\phi`, elementwise on tensors.
    derivative : callable
        :math:`\phi'`, elementwise.
    value_and_derivative : callable or None
        ``z -> (phi(z), phi'(z))`` computed together (e.g. :math:`\tanh' =
        1 - \tanh^2` reuses the value); made from ``fn`` and ``derivative``
        when not given.
    moments : callable or None
        ``(s12, s11, s22, need_dot) -> (E[phi(u)phi(v)], E[phi'(u)phi'(v)] or None)``,
        the Gaussian moments in closed form; ``None`` where there is none
        (the kernels then use quadrature).
    """

    name: str | None
    fn: Callable
    derivative: Callable
    value_and_derivative: Callable | None = None
    moments: Callable | None = None

    def __post_init__(self):
        if self.value_and_derivative is None:
            fn, d = self.fn, self.derivative
            object.__setattr__(self, "value_and_derivative", lambda z: (fn(z), d(z)))

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        r""":math:`\phi(z)` for a real tensor ``z`` (checked; hot loops call ``fn`` directly)."""
        return self.fn(_checks.tensor(z, "z"))

    def both(self, z: torch.Tensor):
        """``(phi(z), phi'(z))`` for a real tensor ``z`` (checked; hot loops call
        ``value_and_derivative``, which shares work where the derivative is a
        function of the value)."""
        return self.value_and_derivative(_checks.tensor(z, "z"))

    @property
    def closed_form(self) -> bool:
        """True when the Gaussian moments have a closed form."""
        return self.moments is not None


# ----------------------------------------------------------------------------- the functions
def _identity(z):
    return z


def _one(z):
    return torch.ones_like(z)


def _relu_d(z):
    return (z > 0).to(z.dtype)


def _relu_both(z):
    return torch.relu(z), (z > 0).to(z.dtype)


def _tanh_d(z):
    t = torch.tanh(z)
    return 1 - t * t


def _tanh_both(z):
    t = torch.tanh(z)
    return t, 1 - t * t


def _sigmoid_d(z):
    s = torch.sigmoid(z)
    return s * (1 - s)


def _sigmoid_both(z):
    s = torch.sigmoid(z)
    return s, s * (1 - s)


_TWO_OVER_SQRT_PI = 2.0 / math.sqrt(math.pi)


def _erf_d(z):
    return _TWO_OVER_SQRT_PI * torch.exp(-z * z)


def _square(z):
    return z * z


def _square_d(z):
    return 2 * z


def _cube(z):
    return z ** 3


def _cube_d(z):
    return 3 * z * z


# ----------------------------------------------------------------------------- Gaussian moments
def _relu_moments(s12, v1, v2, need_dot):
    r"""Arc-cosine kernels: :math:`\E[\mathrm{relu}(u)\mathrm{relu}(v)] = (\sqrt{s_{11}s_{22}-s_{12}^2}
    + (\pi-\theta)s_{12})/(2\pi)` and :math:`\E[\mathrm{relu}'\mathrm{relu}'] = (\pi-\theta)/(2\pi)`."""
    prod = v1 * v2
    root = torch.sqrt(torch.clamp(prod - s12 * s12, min=0.0))
    theta = torch.atan2(root, s12)
    k0 = (math.pi - theta) / (2 * math.pi)
    e = root * (1.0 / (2 * math.pi)) + k0 * s12
    return e, (k0 if need_dot else None)


def _erf_moments(s12, v1, v2, need_dot):
    r"""Williams (1997): with :math:`p = (1+2s_{11})(1+2s_{22})`,
    :math:`\E[\mathrm{erf}\,\mathrm{erf}] = \frac2\pi\arcsin(2s_{12}/\sqrt p)`,
    :math:`\E[\mathrm{erf}'\mathrm{erf}'] = \frac4\pi(p - 4s_{12}^2)^{-1/2}`."""
    prod = (1.0 + 2.0 * v1) * (1.0 + 2.0 * v2)
    root = torch.sqrt(torch.clamp(prod - 4.0 * s12 * s12, min=0.0))
    e = torch.atan2(2.0 * s12, root) * (2.0 / math.pi)
    if not need_dot:
        return e, None
    tiny = torch.finfo(s12.dtype).tiny
    return e, (4.0 / math.pi) / torch.clamp(root, min=tiny)


def _identity_moments(s12, v1, v2, need_dot):
    return s12.clone(), (torch.ones_like(s12) if need_dot else None)


#: The registry, mapping each name to its :class:`Activation`.
ACTIVATIONS: dict[str, Activation] = {
    "relu": Activation("relu", torch.relu, _relu_d, _relu_both, _relu_moments),
    "erf": Activation("erf", torch.erf, _erf_d, None, _erf_moments),
    "tanh": Activation("tanh", torch.tanh, _tanh_d, _tanh_both),
    "sigmoid": Activation("sigmoid", torch.sigmoid, _sigmoid_d, _sigmoid_both),
    "identity": Activation("identity", _identity, _one, None, _identity_moments),
    "square": Activation("square", _square, _square_d),
    "cube": Activation("cube", _cube, _cube_d),
}
_ALIASES = {"linear": "identity"}


def names() -> list[str]:
    """The registered names (aliases included), sorted."""
    return sorted([*ACTIVATIONS, *_ALIASES])


def _derivative_of(phi: Callable) -> Callable:
    """Elementwise derivative of an elementwise callable, by forward-mode AD."""

    def dphi(z: torch.Tensor) -> torch.Tensor:
        return torch.func.jvp(phi, (z,), (torch.ones_like(z),))[1]

    return dphi


def get(activation, name: str = "activation", *, allowed=None) -> Activation:
    """Turn an activation argument into an :class:`Activation`.

    Parameters
    ----------
    activation : str, Activation or callable
        A registered name (see :func:`names`), an :class:`Activation`, an
        elementwise callable (its derivative is then taken by forward-mode
        automatic differentiation), or a pair ``(phi, dphi)``.
    name : str
        The argument's name, for error messages.
    allowed : sequence of str, optional
        Restrict to these registry names (an engine with closed-form
        gradients for some activations only); callables are then refused.

    Raises
    ------
    ValueError
        An unknown name, or one outside ``allowed``.
    TypeError
        Anything else.
    """
    name = _checks.string(name, "name")
    if allowed is not None:
        if isinstance(allowed, str) or not isinstance(allowed, (tuple, list, set, frozenset, dict)) \
                or not all(isinstance(a, str) for a in allowed):
            raise TypeError(f"allowed must be a sequence of activation names, got {allowed!r}")
    if isinstance(activation, Activation):
        if allowed is not None and activation.name not in allowed:
            raise ValueError(f"{name} must be one of {sorted(allowed)}, got {activation.name!r}")
        return activation
    if isinstance(activation, str):
        key = _ALIASES.get(activation, activation)
        if allowed is not None:
            _checks.choice(activation, name, allowed)
        elif key not in ACTIVATIONS:
            _checks.choice(activation, name, names())
        return ACTIVATIONS[key]
    if allowed is not None:
        raise TypeError(f"{name} must be one of the names {sorted(allowed)}, "
                        f"got {type(activation).__name__}")
    if isinstance(activation, tuple) and len(activation) == 2 and all(callable(a) for a in activation):
        return Activation(None, activation[0], activation[1])
    if callable(activation):
        return Activation(None, activation, _derivative_of(activation))
    raise TypeError(f"{name} must be a name in {names()}, an Activation, a callable or a pair "
                    f"(phi, dphi) of callables, got {type(activation).__name__}")
