r"""Universal approximation in practice: two-layer networks with random
inner weights and a least-squares output layer (Lecture 2).

A two-layer network :math:`h(x) = \sum_{j=1}^m a_j \sigma(w_j x + b_j) + c`
with the inner weights :math:`(w_j, b_j)` drawn at random and the output
weights :math:`(a, c)` fitted by least squares.  Leshno, Lin, Pinkus &
Schocken (1993): such networks are dense in :math:`C(K)` if and only if
:math:`\sigma` is not a polynomial.  If :math:`\sigma` is a polynomial of
degree :math:`k`, every :math:`h` is a polynomial of degree at most
:math:`k`, whatever :math:`m`, so the error plateaus at the best
degree-:math:`k` approximation error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from mflib import _checks
from mflib.backprop import activation as _activation
from mflib.config import DTYPE, generator as _generator

__all__ = ["Fit", "random_features_fit", "best_polynomial_error", "best_polynomial"]


@dataclass
class Fit:
    """A least-squares fit of the output layer.

    Attributes
    ----------
    train_rmse, test_rmse : float
        Root mean squared errors on the training and test points.
    prediction : torch.Tensor
        The fitted network on the test points.
    """

    train_rmse: float
    test_rmse: float
    prediction: torch.Tensor


def _xy(x, y, nx, ny):
    _checks.tensor(x, nx, ndim=1, nonempty=True)
    _checks.tensor(y, ny, ndim=1)
    _checks.matching(y, x, ny, nx)
    _checks.same_rows(x, y, nx, ny)
    for name, t in ((nx, x), (ny, y)):
        if float(t.detach().abs().max()) > 1e100:
            raise ValueError(f"{name} is too large: the least-squares fit would overflow")
    return x.to(DTYPE), y.to(DTYPE)


def random_features_fit(x_train, y_train, x_test, y_test, *, width: int, activation="relu",
                        weight_std: float = 4.0, seed: int = 0) -> Fit:
    r"""Fit :math:`h(x) = \sum_j a_j\sigma(w_j(x - c_j)) + c` by least squares on :math:`(a, c)`.

    The inner weights are :math:`w_j\sim\mathcal N(0, s^2)` with ``s = weight_std``
    and the centres :math:`c_j` uniform on the range of ``x_train``, so that
    the kinks of a relu network fall inside the data.  Solved in float64 with
    ``torch.linalg.lstsq`` (minimum-norm solution for rank-deficient features,
    as for a polynomial activation).

    Parameters
    ----------
    x_train, y_train, x_test, y_test : torch.Tensor
        One-dimensional inputs and targets.
    width : int
        Number of hidden neurons :math:`m`.
    activation : str or (callable, callable)
        See :func:`mflib.backprop.activation`.
    weight_std : float
        :math:`s > 0`.
    seed : int
    """
    x_train, y_train = _xy(x_train, y_train, "x_train", "y_train")
    x_test, y_test = _xy(x_test, y_test, "x_test", "y_test")
    width = _checks.size(width, "width")
    weight_std = _checks.real(weight_std, "weight_std", positive=True, maximum=1e6)
    sigma, _ = _activation(activation)
    _checks.elements((x_train.shape[0] + x_test.shape[0]) * (width + 1), "width and x_train, x_test")
    g = _generator(_checks.seed(seed))
    w = torch.randn(width, generator=g, dtype=DTYPE) * weight_std
    lo, hi = float(x_train.min()), float(x_train.max())
    c = lo + (hi - lo) * torch.rand(width, generator=g, dtype=DTYPE)

    def features(x):
        return torch.cat([sigma(w * (x[:, None] - c)), torch.ones_like(x)[:, None]], 1)

    phi = features(x_train)
    scale = phi.abs().amax(0).clamp_min(1e-300)  # column scaling for conditioning
    sol = torch.linalg.lstsq(phi / scale, y_train[:, None], driver="gelsd").solution[:, 0] / scale
    pred_train = phi @ sol
    pred = features(x_test) @ sol
    rmse = lambda a, b: float(torch.sqrt(torch.mean((a - b) ** 2)))  # noqa: E731
    names = "x_train, y_train, x_test, weight_std or activation (their scale)"
    return Fit(_checks.finite_result(rmse(pred_train, y_train), "the training error", names),
               _checks.finite_result(rmse(pred, y_test), "the test error", names),
               _checks.finite_result(pred, "the prediction", names))


def best_polynomial_error(x, y, degree: int) -> float:
    """RMSE on ``(x, y)`` of the least-squares polynomial of the given degree.

    A network with a polynomial activation of degree :math:`k` is a
    polynomial of degree at most :math:`k`, so its least-squares training
    error can never be below ``best_polynomial_error(x, y, k)``.
    """
    x, y = _xy(x, y, "x", "y")
    degree = _checks.integer(degree, "degree", minimum=0, maximum=min(x.shape[0] - 1, 1000))
    if float(x.max()) == float(x.min()) and degree > 0:
        raise ValueError("x must not be constant for a polynomial fit of degree >= 1")
    lo, hi = float(x.min()), float(x.max())
    xs, ys = x.cpu().numpy(), y.cpu().numpy()
    domain = [lo, hi] if hi > lo else [lo - 1, hi + 1]
    p = np.polynomial.Legendre.fit(xs, ys, degree, domain=domain)
    return _checks.finite_result(math.sqrt(float(np.mean((p(xs) - ys) ** 2))), "the error",
                                 "x or y (their scale)")


def best_polynomial(x_train, y_train, x_test, degree: int) -> torch.Tensor:
    """Values at ``x_test`` of the least-squares polynomial of the given degree
    fitted to ``(x_train, y_train)`` (the function a network with a polynomial
    activation of that degree reaches at best, by :func:`best_polynomial_error`),
    on the device and dtype of ``x_test``."""
    x_train, y_train = _xy(x_train, y_train, "x_train", "y_train")
    _checks.tensor(x_test, "x_test", ndim=1)
    degree = _checks.integer(degree, "degree", minimum=0, maximum=min(x_train.shape[0] - 1, 1000))
    lo, hi = float(x_train.min()), float(x_train.max())
    if hi == lo and degree > 0:
        raise ValueError("x_train must not be constant for a polynomial fit of degree >= 1")
    p = np.polynomial.Legendre.fit(x_train.cpu().numpy(), y_train.cpu().numpy(), degree, domain=[lo, hi] if hi > lo else [lo - 1, hi + 1])
    with np.errstate(over="ignore", invalid="ignore"):
        values = torch.as_tensor(p(x_test.cpu().numpy()), dtype=x_test.dtype, device=x_test.device)
    return _checks.finite_result(values, "the polynomial's values", "x_train, y_train or x_test (their scale)")
