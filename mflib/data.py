r"""Synthetic data sets of supervised learning, drawn from an explicit generator.

Every generator draws its random numbers on the CPU from a
``torch.Generator`` (see :func:`mflib.config.generator`) and then moves them to the
requested device, so that one seed gives the same data on every device.

* :func:`linear_regression`: Gaussian design :math:`x \sim \mathcal N(0, I_d)`,
  labels :math:`y = \langle w^\star, x\rangle + \sigma\varepsilon`; its
  population risk under the square loss is known in closed form
  (:func:`linear_population_risk`).
* :func:`gaussian_mixture`: two-class Gaussian mixture,
  :math:`y` uniform on :math:`\{-1,+1\}` and :math:`x = y\mu + \mathcal N(0, I_d)`.
* :func:`nonlinear_1d`: one-dimensional regression with a non-linear target
  (:data:`TARGETS`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from mflib import _checks
from mflib.config import DTYPE, device as _default_device

__all__ = ["Dataset", "linear_regression", "linear_population_risk", "gaussian_mixture",
           "nonlinear_1d", "TARGETS"]


@dataclass
class Dataset:
    """A sample of supervised learning.

    Attributes
    ----------
    x : torch.Tensor
        Inputs, shape ``(n, d)``.
    y : torch.Tensor
        Labels, shape ``(n,)``.
    truth : torch.Tensor or None
        The parameter that generated the data: :math:`w^\\star` for
        :func:`linear_regression`, the mean :math:`\\mu` for
        :func:`gaussian_mixture`, ``None`` otherwise.
    noise : float
        Standard deviation of the label noise (0 for classification).
    """

    x: torch.Tensor
    y: torch.Tensor
    truth: torch.Tensor | None
    noise: float

    @property
    def n(self) -> int:
        """Number of samples."""
        return self.x.shape[0]

    @property
    def d(self) -> int:
        """Input dimension."""
        return self.x.shape[1]


def _check_common(n, d, generator, dtype, device):
    n = _checks.size(n, "n")
    d = _checks.size(d, "d")
    _checks.elements(n * (d + 2), "n and d")
    _checks.generator(generator)
    dtype = _checks.dtype(dtype, default=DTYPE)
    device = _checks.device(device, default=_default_device)
    return n, d, dtype, device


def linear_regression(n: int, d: int, *, noise: float = 0.5, w_star: torch.Tensor | None = None,
                      generator: torch.Generator, dtype=None, device=None) -> Dataset:
    r"""Linear regression with Gaussian design.

    .. math::

       x_i \sim \mathcal N(0, I_d), \qquad
       y_i = \langle w^\star, x_i\rangle + \sigma \varepsilon_i, \quad
       \varepsilon_i \sim \mathcal N(0, 1).

    Parameters
    ----------
    n, d : int
        Number of samples and input dimension (at least 1).
    noise : float
        Noise level :math:`\sigma \ge 0`.
    w_star : torch.Tensor, optional
        The true parameter, shape ``(d,)``; by default drawn uniformly on the
        unit sphere (so that :math:`\operatorname{Var}\langle w^\star, x\rangle = 1`).
    generator : torch.Generator
        CPU generator the draws come from (``None``: ``mflib.generator(0)``).
    dtype : torch.dtype, optional
        Default :data:`mflib.config.DTYPE`.
    device : torch.device or str, optional
        Default :func:`mflib.config.device`.

    Returns
    -------
    Dataset
        With ``truth`` :math:`= w^\star` and ``noise`` :math:`= \sigma`.
    """
    n, d, dtype, device = _check_common(n, d, generator, dtype, device)
    generator = _checks.generator(generator)
    noise = _checks.real(noise, "noise", nonnegative=True)
    if w_star is None:
        w_star = torch.randn(d, generator=generator, dtype=dtype)
        w_star = w_star / w_star.norm()
    else:
        w_star = _checks.tensor(w_star, "w_star", ndim=1)
        if w_star.shape[0] != d:
            raise ValueError(f"w_star must have shape ({d},), got {tuple(w_star.shape)}")
        w_star = w_star.detach().to("cpu", dtype)
    x = torch.randn(n, d, generator=generator, dtype=dtype)
    y = x @ w_star + noise * torch.randn(n, generator=generator, dtype=dtype)
    return Dataset(x.to(device), y.to(device), w_star.to(device), noise)


def linear_population_risk(w: torch.Tensor, w_star: torch.Tensor, noise: float) -> torch.Tensor:
    r"""Population square-loss risk of the linear predictor :math:`w` under the
    model of :func:`linear_regression`:

    .. math::

       R(w) = \mathbb E\,\tfrac12\bigl(y - \langle w, x\rangle\bigr)^2
            = \tfrac12\lVert w - w^\star\rVert^2 + \tfrac12\sigma^2 .

    Parameters
    ----------
    w : torch.Tensor
        Shape ``(d,)``, or ``(k, d)`` for ``k`` predictors at once.
    w_star : torch.Tensor
        Shape ``(d,)``.
    noise : float
        :math:`\sigma \ge 0`.
    """
    w = _checks.tensor(w, "w", ndim=(1, 2))
    w_star = _checks.tensor(w_star, "w_star", ndim=1, nonempty=True)
    _checks.matching(w, w_star, "w", "w_star")
    noise = _checks.real(noise, "noise", nonnegative=True)
    if w.shape[-1] != w_star.shape[0]:
        raise ValueError(f"w must have {w_star.shape[0]} entries in its last dimension (as w_star), "
                         f"got shape {tuple(w.shape)}")
    return _checks.finite_result(0.5 * ((w - w_star) ** 2).sum(dim=-1) + 0.5 * noise ** 2,
                                 "the risk", "w, w_star or noise (their scale)")


def gaussian_mixture(n: int, d: int, *, separation: float = 2.0, generator: torch.Generator,
                     dtype=None, device=None) -> Dataset:
    r"""Two-class Gaussian mixture.

    .. math::

       y_i \sim \operatorname{Unif}\{-1, +1\}, \qquad
       x_i = y_i\,\mu + \xi_i, \quad \xi_i \sim \mathcal N(0, I_d),

    with :math:`\mu = \tfrac{s}{2} e_1` so that the two means are at distance
    :math:`s` (``separation``).  The Bayes classifier is
    :math:`\operatorname{sign}(x_1)`, with error :math:`\Phi(-s/2)`.

    Parameters
    ----------
    n, d : int
        Number of samples and input dimension.
    separation : float
        Distance :math:`s \ge 0` between the class means.
    generator : torch.Generator
        CPU generator.
    dtype : torch.dtype, optional
        Default :data:`mflib.config.DTYPE`.
    device : torch.device or str, optional
        Default :func:`mflib.config.device`.

    Returns
    -------
    Dataset
        Labels in :math:`\{-1, +1\}` (floating point), ``truth`` :math:`= \mu`.
    """
    n, d, dtype, device = _check_common(n, d, generator, dtype, device)
    generator = _checks.generator(generator)
    separation = _checks.real(separation, "separation", nonnegative=True)
    mu = torch.zeros(d, dtype=dtype)
    mu[0] = separation / 2
    y = 2.0 * torch.randint(0, 2, (n,), generator=generator).to(dtype) - 1.0
    x = y[:, None] * mu + torch.randn(n, d, generator=generator, dtype=dtype)
    return Dataset(x.to(device), y.to(device), mu.to(device), 0.0)


def _sine(x):
    return torch.sin(math.pi * x)


def _bump(x):
    return torch.exp(-8.0 * x ** 2) - 0.3


def _relu_kink(x):
    return torch.relu(x) - 0.25


#: Targets of :func:`nonlinear_1d`, functions of :math:`x \in [-1, 1]`:
#: ``"sine"`` :math:`\sin(\pi x)`, ``"bump"`` :math:`e^{-8x^2} - 0.3`,
#: ``"relu"`` :math:`\max(x, 0) - 1/4`.
TARGETS = {"sine": _sine, "bump": _bump, "relu": _relu_kink}


def nonlinear_1d(n: int, *, target: str = "sine", noise: float = 0.1,
                 generator: torch.Generator, dtype=None, device=None) -> Dataset:
    r"""One-dimensional non-linear regression: :math:`x_i \sim \operatorname{Unif}[-1, 1]`,
    :math:`y_i = f^\star(x_i) + \sigma\varepsilon_i` with :math:`f^\star` in :data:`TARGETS`.

    Parameters
    ----------
    n : int
        Number of samples.
    target : str
        A key of :data:`TARGETS`.
    noise : float
        :math:`\sigma \ge 0`.
    generator : torch.Generator
        CPU generator.
    dtype : torch.dtype, optional
        Default :data:`mflib.config.DTYPE`.
    device : torch.device or str, optional
        Default :func:`mflib.config.device`.

    Returns
    -------
    Dataset
        Inputs of shape ``(n, 1)``; ``truth`` is ``None``.
    """
    n, _, dtype, device = _check_common(n, 1, generator, dtype, device)
    generator = _checks.generator(generator)
    target = _checks.choice(target, "target", TARGETS)
    noise = _checks.real(noise, "noise", nonnegative=True)
    x = 2.0 * torch.rand(n, 1, generator=generator, dtype=dtype) - 1.0
    y = TARGETS[target](x[:, 0]) + noise * torch.randn(n, generator=generator, dtype=dtype)
    return Dataset(x.to(device), y.to(device), None, noise)
