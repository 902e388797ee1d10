r"""Signal propagation at initialisation: the mean-field variance recursion
and its measurement in finite random networks (Lecture 2).

For a fully connected network with :math:`W^\ell_{ij}\sim\mathcal N(0,\sigma_w^2/m_{\ell-1})`
and :math:`b^\ell_i\sim\mathcal N(0,\sigma_b^2)`, the pre-activations of a
wide layer are approximately i.i.d. :math:`\mathcal N(0, q^\ell)` with
(Poole et al., 2016; Schoenholz et al., 2017)

.. math::

   q^1 = \sigma_w^2 \frac{\lVert x\rVert^2}{m_0} + \sigma_b^2, \qquad
   q^{\ell+1} = \sigma_w^2\, \mathbb E_{z\sim\mathcal N(0,1)}\bigl[\sigma(\sqrt{q^\ell} z)^2\bigr] + \sigma_b^2,

and the squared norm of the backpropagated signal :math:`\delta y^\ell` is
multiplied, layer after layer going down, by
:math:`\chi^\ell = \sigma_w^2\,\mathbb E[\sigma'(\sqrt{q^\ell} z)^2]`.
For relu without bias both maps are linear: :math:`q^{\ell+1} = (\sigma_w^2/2) q^\ell`
and :math:`\chi = \sigma_w^2/2`, so :math:`\sigma_w^2 = 2` (He et al., 2015)
is the only variance that neither explodes nor vanishes geometrically;
Hanin (2018) and Hanin & Rolnick (2018) quantify the finite-width
fluctuations around this mean behaviour.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from mflib import _checks
from mflib.backprop import activation as _activation, backward, forward, init_params
from mflib.config import DTYPE, generator as _generator

__all__ = ["gauss_expect", "variance_map", "chi", "variance_recursion", "gradient_recursion",
           "Propagation", "measure_propagation"]

_NODES, _WEIGHTS = np.polynomial.hermite_e.hermegauss(101)
_WEIGHTS = _WEIGHTS / _WEIGHTS.sum()


def _q(q, name="q") -> torch.Tensor:
    """A variance or a tensor of variances: finite, >= 0, as a float64 tensor."""
    if isinstance(q, torch.Tensor):
        _checks.tensor(q, name)
        q = q.to(DTYPE)
    else:
        q = torch.tensor(_checks.real(q, name), dtype=DTYPE)
    if bool((q < 0).any()):
        raise ValueError(f"{name} must be non-negative")
    if q.numel() and float(q.detach().max()) > _checks.MAX_REAL:
        raise ValueError(f"{name} is too large: the computation would overflow")
    return q


def gauss_expect(f, q) -> torch.Tensor:
    r""":math:`\mathbb E[f(\sqrt q\, z)]`, :math:`z\sim\mathcal N(0,1)`, by 101-point Gauss–Hermite quadrature.

    Parameters
    ----------
    f : callable
        Acts entry-wise on tensors.
    q : float or torch.Tensor
        Variance(s) :math:`q \ge 0`.
    """
    _checks.function(f, "f")
    q = _q(q)
    z = torch.as_tensor(_NODES, dtype=q.dtype, device=q.device)
    w = torch.as_tensor(_WEIGHTS, dtype=q.dtype, device=q.device)
    vals = f(torch.sqrt(q)[..., None] * z)
    if not isinstance(vals, torch.Tensor):
        raise TypeError(f"f must map tensors to tensors, got {type(vals).__name__}")
    return _checks.finite_result((vals * w).sum(-1), "the expectation", "f or q")


def _check_common(activation, weight_var, bias_var):
    sigma, dsigma = _activation(activation)
    weight_var = _checks.real(weight_var, "weight_var", nonnegative=True)
    bias_var = _checks.real(bias_var, "bias_var", nonnegative=True)
    return sigma, dsigma, weight_var, bias_var


def variance_map(q, *, activation="relu", weight_var: float = 2.0, bias_var: float = 0.0):
    r"""One step of the variance recursion,
    :math:`q \mapsto \sigma_w^2\,\mathbb E[\sigma(\sqrt q z)^2] + \sigma_b^2`.

    Closed forms for ``"relu"`` (:math:`q/2`), ``"linear"`` (:math:`q`) and
    ``"erf"`` (:math:`\frac{2}{\pi}\arcsin\frac{2q}{1+2q}`, Williams 1997);
    Gauss–Hermite quadrature otherwise.
    """
    sigma, _, weight_var, bias_var = _check_common(activation, weight_var, bias_var)
    q = _q(q)
    if activation == "relu":
        m = q / 2
    elif activation == "linear":
        m = q
    elif activation == "erf":
        m = (2 / math.pi) * torch.arcsin(2 * q / (1 + 2 * q))
    else:
        m = gauss_expect(lambda u: sigma(u) ** 2, q)
    return _checks.finite_result(weight_var * m + bias_var, "the variance", "q or weight_var")


def chi(q, *, activation="relu", weight_var: float = 2.0):
    r"""Backward gain :math:`\chi = \sigma_w^2\,\mathbb E[\sigma'(\sqrt q z)^2]` of one layer."""
    _, dsigma, weight_var, _ = _check_common(activation, weight_var, 0.0)
    q = _q(q)
    if activation == "relu":
        return weight_var * 0.5 * torch.ones_like(q)
    return _checks.finite_result(weight_var * gauss_expect(lambda u: dsigma(u) ** 2, q),
                                 "the gain", "q or weight_var")


def variance_recursion(q1, depth: int, *, activation="relu", weight_var: float = 2.0,
                       bias_var: float = 0.0) -> torch.Tensor:
    r"""The mean-field variances :math:`(q^1, \dots, q^{\text{depth}})` starting from ``q1``.

    Returns
    -------
    torch.Tensor
        Shape ``(depth,)``, float64.
    """
    depth = _checks.size(depth, "depth", maximum=10 ** 5)
    q1 = _checks.real(q1, "q1", nonnegative=True)
    _, _, weight_var, bias_var = _check_common(activation, weight_var, bias_var)
    out = [torch.tensor(q1, dtype=DTYPE)]
    for _ in range(depth - 1):
        q = out[-1]
        if not bool(torch.isfinite(q)) or float(q) > _checks.MAX_REAL:
            raise ValueError(f"the variances overflow before depth={depth}: lower weight_var, "
                             f"bias_var or depth")
        out.append(variance_map(out[-1], activation=activation, weight_var=weight_var,
                                bias_var=bias_var))
    return _checks.finite_result(torch.stack(out), "the variances", "weight_var, bias_var or depth")


def gradient_recursion(q: torch.Tensor, *, activation="relu", weight_var: float = 2.0
                       ) -> torch.Tensor:
    r"""Predicted :math:`\mathbb E\lVert\delta y^\ell\rVert^2` for a scalar readout
    :math:`f = W^{L+1}x^L` with :math:`W^{L+1}_{1j}\sim\mathcal N(0,\sigma_w^2/m_L)`:

    .. math::

       \mathbb E\lVert\delta y^\ell\rVert^2 = \prod_{k=\ell}^{L} \chi^k .

    Parameters
    ----------
    q : torch.Tensor
        The variances :math:`q^1, \dots, q^L` (from :func:`variance_recursion`).
    """
    _checks.tensor(q, "q", ndim=1, nonempty=True)
    c = chi(q, activation=activation, weight_var=weight_var)
    return _checks.finite_result(torch.flip(torch.cumprod(torch.flip(c, [0]), 0), [0]),
                                 "the gradient sizes", "q, weight_var or the depth")


@dataclass
class Propagation:
    r"""Forward and backward signal sizes measured in random networks.

    Attributes
    ----------
    forward : torch.Tensor
        ``(n_nets, depth)``: :math:`\lVert y^\ell\rVert^2/m_\ell`, averaged over inputs.
    backward : torch.Tensor
        ``(n_nets, depth)``: :math:`\lVert\delta y^\ell\rVert^2` for the scalar
        readout, averaged over inputs.
    predicted_forward, predicted_backward : torch.Tensor
        ``(depth,)``: :func:`variance_recursion` and :func:`gradient_recursion`.
    """

    forward: torch.Tensor
    backward: torch.Tensor
    predicted_forward: torch.Tensor
    predicted_backward: torch.Tensor


def measure_propagation(depth: int, width: int, *, activation="relu", weight_var: float = 2.0,
                        bias_var: float = 0.0, n_nets: int = 10, n_inputs: int = 4,
                        input_dim: int = 16, seed: int = 0) -> Propagation:
    r"""Measure forward and backward signal sizes through ``depth`` hidden layers.

    Each of ``n_nets`` networks has widths ``(input_dim, width, ..., width, 1)``,
    :math:`\sigma_w^2/m_{\ell-1}` weight variance and :math:`\sigma_b^2` bias
    variance; the inputs are drawn on the sphere :math:`\lVert x\rVert^2 = m_0`
    so that :math:`q^1 = \sigma_w^2 + \sigma_b^2`.  Computed in float64, by the
    hand-written :func:`mflib.backprop.forward` and :func:`mflib.backprop.backward`.
    """
    depth = _checks.size(depth, "depth")
    width = _checks.size(width, "width")
    n_nets = _checks.size(n_nets, "n_nets")
    n_inputs = _checks.size(n_inputs, "n_inputs")
    input_dim = _checks.size(input_dim, "input_dim")
    _, _, weight_var, bias_var = _check_common(activation, weight_var, bias_var)
    seed = _checks.seed(seed)
    per_net = input_dim * width + (depth - 1) * width * width + width
    _checks.elements(per_net + n_inputs * width * (depth + 1), "width, depth and n_inputs")
    _checks.budget(6.0 * n_nets * per_net * n_inputs, "n_nets, width, depth and n_inputs")
    g = _generator(seed)
    x = torch.randn(n_inputs, input_dim, generator=g, dtype=DTYPE)
    x = x / x.norm(dim=1, keepdim=True) * math.sqrt(input_dim)
    widths = [input_dim] + [width] * depth + [1]
    fwd = torch.empty(n_nets, depth, dtype=DTYPE)
    bwd = torch.empty(n_nets, depth, dtype=DTYPE)
    for k in range(n_nets):
        params = init_params(widths, weight_var=weight_var, bias_std=math.sqrt(bias_var),
                             seed=(seed * 100_003 + k + 1) % 2 ** 63)
        cache = forward(params, x, activation=activation, check=False)
        _, deltas = backward(params, cache, torch.ones(n_inputs, 1, dtype=DTYPE),
                             activation=activation, check=False, return_deltas=True)
        fwd[k] = torch.stack([(y * y).mean(1).mean() for y in cache.ys[:-1]])
        bwd[k] = torch.stack([(d * d).sum(1).mean() for d in deltas[:-1]])
    q = variance_recursion(weight_var + bias_var, depth, activation=activation,
                           weight_var=weight_var, bias_var=bias_var)
    names = "weight_var, bias_var, depth or width"
    _checks.finite_result(fwd, "the measured forward signal", names)
    _checks.finite_result(bwd, "the measured backward signal", names)
    return Propagation(fwd, bwd, q, gradient_recursion(q, activation=activation,
                                                      weight_var=weight_var))
