r"""The losses of supervised learning, with their derivatives.

A loss compares a label :math:`y` with a prediction :math:`\hat y`
(Chizat, 2019, lecture 1):

.. math::

   \text{square:}\quad \tfrac12 (y - \hat y)^2, \qquad
   \text{logistic:}\quad \log\bigl(1 + e^{-y\hat y}\bigr), \qquad
   \text{hinge:}\quad \max\{0,\ 1 - y\hat y\}.

The square loss is for regression (:math:`y \in \mathbb R`); the logistic and
hinge losses are for binary classification (:math:`y \in \{-1, +1\}`) and
depend on the *margin* :math:`y\hat y` only.  All three are convex in
:math:`\hat y`.

Each loss comes with its derivative in :math:`\hat y`:

.. math::

   \partial_{\hat y}\,\text{square} = \hat y - y, \qquad
   \partial_{\hat y}\,\text{logistic} = -y\,s(-y\hat y), \qquad
   \partial_{\hat y}\,\text{hinge} = -y\,\mathbf 1\{y\hat y < 1\},

with :math:`s(t) = 1/(1+e^{-t})` the logistic sigmoid.  The hinge loss is not
differentiable at the kink :math:`y\hat y = 1`, where its subdifferential is
the segment :math:`\{-ty : t \in [0, 1]\}`; the convention here picks the
element :math:`0` (the same as ``torch.relu``'s derivative at 0), so that the
derivative is the indicator of a *strictly* violated margin.

The logistic loss is computed as :math:`\operatorname{softplus}(-y\hat y)`,
which neither overflows for large negative margins nor loses the tiny value
:math:`e^{-y\hat y}` for large positive ones.

The registry :data:`LOSSES` maps a name to a :class:`Loss`; :func:`get` looks
a name up with a clear error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from mflib import _checks

__all__ = ["Loss", "LOSSES", "get", "square", "square_derivative", "logistic",
           "logistic_derivative", "hinge", "hinge_derivative", "empirical_risk"]


def _pair(y, y_hat, *, labels: bool):
    y = _checks.tensor(y, "y")
    y_hat = _checks.tensor(y_hat, "y_hat")
    _checks.matching(y_hat, y, "y_hat", "y")
    try:
        torch.broadcast_shapes(y.shape, y_hat.shape)
    except RuntimeError as err:
        raise ValueError(f"y and y_hat must have broadcastable shapes, got {tuple(y.shape)} "
                         f"and {tuple(y_hat.shape)}") from err
    if labels and not bool(((y == 1) | (y == -1)).all()):
        raise ValueError("y must hold classification labels in {-1, +1} for this loss")
    return y, y_hat


def _square(y, y_hat):
    return 0.5 * (y - y_hat) ** 2


def _square_d(y, y_hat):
    return y_hat - y


def _logistic(y, y_hat):
    return F.softplus(-y * y_hat)


def _logistic_d(y, y_hat):
    return -y * torch.sigmoid(-y * y_hat)


def _hinge(y, y_hat):
    return torch.relu(1.0 - y * y_hat)


def _hinge_d(y, y_hat):
    m = y * y_hat
    return torch.where(m < 1.0, -y, torch.zeros_like(m))


def square(y: torch.Tensor, y_hat: torch.Tensor) -> torch.Tensor:
    r"""Square loss :math:`\tfrac12 (y - \hat y)^2`, elementwise.

    Parameters
    ----------
    y, y_hat : torch.Tensor
        Labels and predictions, floating point, broadcastable shapes.

    Returns
    -------
    torch.Tensor
        The loss, with the broadcast shape of ``y`` and ``y_hat``.
    """
    y, y_hat = _pair(y, y_hat, labels=False)
    return _checks.finite_result(_square(y, y_hat), "the loss", "y or y_hat (their scale)")


def square_derivative(y: torch.Tensor, y_hat: torch.Tensor) -> torch.Tensor:
    r"""Derivative of the square loss in the prediction, :math:`\hat y - y`."""
    y, y_hat = _pair(y, y_hat, labels=False)
    return _checks.finite_result(_square_d(y, y_hat), "the loss", "y or y_hat (their scale)")


def logistic(y: torch.Tensor, y_hat: torch.Tensor) -> torch.Tensor:
    r"""Logistic loss :math:`\log(1 + e^{-y\hat y})`, elementwise, computed as
    :math:`\operatorname{softplus}(-y\hat y)` (no overflow, no cancellation).

    Parameters
    ----------
    y : torch.Tensor
        Labels in :math:`\{-1, +1\}` (floating point).
    y_hat : torch.Tensor
        Real-valued predictions (scores), broadcastable with ``y``.
    """
    y, y_hat = _pair(y, y_hat, labels=True)
    return _checks.finite_result(_logistic(y, y_hat), "the loss", "y or y_hat (their scale)")


def logistic_derivative(y: torch.Tensor, y_hat: torch.Tensor) -> torch.Tensor:
    r"""Derivative of the logistic loss in the prediction,
    :math:`-y\,s(-y\hat y)` with :math:`s` the logistic sigmoid."""
    y, y_hat = _pair(y, y_hat, labels=True)
    return _checks.finite_result(_logistic_d(y, y_hat), "the loss", "y or y_hat (their scale)")


def hinge(y: torch.Tensor, y_hat: torch.Tensor) -> torch.Tensor:
    r"""Hinge loss :math:`\max\{0, 1 - y\hat y\}`, elementwise.

    Parameters
    ----------
    y : torch.Tensor
        Labels in :math:`\{-1, +1\}` (floating point).
    y_hat : torch.Tensor
        Real-valued predictions (scores), broadcastable with ``y``.
    """
    y, y_hat = _pair(y, y_hat, labels=True)
    return _checks.finite_result(_hinge(y, y_hat), "the loss", "y or y_hat (their scale)")


def hinge_derivative(y: torch.Tensor, y_hat: torch.Tensor) -> torch.Tensor:
    r"""A subgradient of the hinge loss in the prediction,
    :math:`-y\,\mathbf 1\{y\hat y < 1\}`.

    At the kink :math:`y\hat y = 1` the subdifferential is
    :math:`\{-ty: t\in[0,1]\}`; this function returns its element :math:`0`.
    """
    y, y_hat = _pair(y, y_hat, labels=True)
    return _checks.finite_result(_hinge_d(y, y_hat), "the loss", "y or y_hat (their scale)")


@dataclass(frozen=True)
class Loss:
    """A loss function of supervised learning and its derivative.

    Attributes
    ----------
    name : str
        Key in :data:`LOSSES`.
    task : str
        ``"regression"`` (any real label) or ``"classification"`` (labels
        in :math:`\\{-1, +1\\}`).
    value : callable
        ``value(y, y_hat)``: the elementwise loss.
    derivative : callable
        ``derivative(y, y_hat)``: the elementwise derivative (a subgradient
        where the loss has a kink) in ``y_hat``.
    smooth : bool
        Whether the derivative is Lipschitz (square: constant 1; logistic:
        constant 1/4; hinge: not smooth).
    curvature : float or None
        Lipschitz constant of the derivative in ``y_hat`` (``None`` if not
        smooth).
    raw_value, raw_derivative : callable
        The same functions without argument checks, for inner loops whose
        inputs were checked once.
    """

    name: str
    task: str
    value: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    derivative: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    smooth: bool
    curvature: float | None
    raw_value: Callable = field(repr=False, default=None)
    raw_derivative: Callable = field(repr=False, default=None)

    def __call__(self, y: torch.Tensor, y_hat: torch.Tensor) -> torch.Tensor:
        return self.value(y, y_hat)


#: The losses of lecture 1, by name.
LOSSES: dict[str, Loss] = {
    "square": Loss("square", "regression", square, square_derivative, True, 1.0,
                   _square, _square_d),
    "logistic": Loss("logistic", "classification", logistic, logistic_derivative, True, 0.25,
                     _logistic, _logistic_d),
    "hinge": Loss("hinge", "classification", hinge, hinge_derivative, False, None,
                  _hinge, _hinge_d),
}


def get(loss) -> Loss:
    """Return the :class:`Loss` named ``loss`` (a :class:`Loss` is returned as is).

    Raises
    ------
    TypeError
        If ``loss`` is neither a string nor a :class:`Loss`.
    ValueError
        If no loss has that name.
    """
    if isinstance(loss, Loss):
        return loss
    if not isinstance(loss, str):
        raise TypeError(f"loss must be a loss name or a Loss, got {type(loss).__name__}")
    return LOSSES[_checks.choice(loss, "loss", LOSSES)]


def empirical_risk(loss, y: torch.Tensor, y_hat: torch.Tensor) -> torch.Tensor:
    r"""Empirical risk :math:`\hat R = \frac1n\sum_{i=1}^n \operatorname{loss}(y_i, \hat y_i)`.

    Parameters
    ----------
    loss : str or Loss
        A name in :data:`LOSSES` or a :class:`Loss`.
    y : torch.Tensor
        Labels, shape ``(n,)``.
    y_hat : torch.Tensor
        Predictions, shape ``(n,)`` or ``(k, n)`` for ``k`` predictors at once
        (the mean is taken over the last dimension).
    """
    loss = get(loss)
    y = _checks.tensor(y, "y", ndim=1)
    y_hat = _checks.tensor(y_hat, "y_hat", ndim=(1, 2))
    if y.shape[0] == 0:
        raise ValueError("y must not be empty: the mean of no loss is undefined")
    if y_hat.shape[-1] != y.shape[0]:
        raise ValueError(f"y_hat must have as many entries in its last dimension as y has labels "
                         f"({y.shape[0]}), got shape {tuple(y_hat.shape)}")
    return _checks.finite_result(loss(y, y_hat).mean(dim=-1), "the risk", "y or y_hat (their scale)")
