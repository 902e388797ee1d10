r"""Arc-cosine kernels: Gaussian expectations of relu and of its derivative.

For a centred Gaussian pair :math:`(u, v)` with variances :math:`s_{11}, s_{22}`
and covariance :math:`s_{12}`, write :math:`\cos\theta = s_{12}/\sqrt{s_{11}s_{22}}`.
Then (Cho & Saul, 2009)

.. math::

   \mathbb E[\mathrm{relu}(u)\,\mathrm{relu}(v)]
     = \frac{\sqrt{s_{11}s_{22}}}{2\pi}\bigl(\sin\theta + (\pi-\theta)\cos\theta\bigr),
   \qquad
   \mathbb E[\mathbf 1_{u>0}\mathbf 1_{v>0}] = \frac{\pi-\theta}{2\pi}.

These two closed forms are the relu NNGP/NTK recursions (:mod:`mflib.kernels`)
and the population risk of two-layer relu networks on Gaussian inputs
(:mod:`mflib.meanfield`).  They are written once here.
"""

from __future__ import annotations

import math

import torch

__all__ = ["angle", "kappa0", "kappa1", "relu_moments"]


def angle(s12: torch.Tensor, s11: torch.Tensor, s22: torch.Tensor, eps: float = 0.0):
    r"""Return :math:`\theta = \arccos(s_{12}/\sqrt{s_{11}s_{22}})` and :math:`\sqrt{s_{11}s_{22}}`.

    The cosine is clamped to :math:`[-1, 1]` so that rounding at :math:`x = x'`
    or at antipodal points never produces NaN.  Where :math:`s_{11}s_{22} = 0`
    the angle is set to :math:`\pi/2` (the expectations are then zero anyway).
    """
    norm = torch.sqrt(torch.clamp(s11 * s22, min=0.0))
    safe = torch.where(norm > eps, norm, torch.ones_like(norm))
    cos = torch.where(norm > eps, s12 / safe, torch.zeros_like(s12))
    theta = torch.arccos(torch.clamp(cos, -1.0, 1.0))
    return theta, norm


def kappa0(theta: torch.Tensor) -> torch.Tensor:
    r"""Degree-0 arc-cosine kernel :math:`(\pi-\theta)/(2\pi)`, i.e. :math:`\mathbb E[\mathbf 1_{u>0}\mathbf 1_{v>0}]`."""
    return (math.pi - theta) / (2 * math.pi)


def kappa1(theta: torch.Tensor) -> torch.Tensor:
    r"""Degree-1 arc-cosine kernel :math:`(\sin\theta + (\pi-\theta)\cos\theta)/(2\pi)` (unit variances)."""
    return (torch.sin(theta) + (math.pi - theta) * torch.cos(theta)) / (2 * math.pi)


def relu_moments(s12: torch.Tensor, s11: torch.Tensor, s22: torch.Tensor):
    r"""Return :math:`(\mathbb E[\mathrm{relu}(u)\mathrm{relu}(v)],\ \mathbb E[\mathbf 1_{u>0}\mathbf 1_{v>0}])`.

    Parameters
    ----------
    s12, s11, s22 : torch.Tensor
        Covariance and variances of the centred Gaussian pair, broadcastable.

    Returns
    -------
    tuple of torch.Tensor
        The degree-1 moment (scaled by :math:`\sqrt{s_{11}s_{22}}`) and the
        degree-0 moment, both on the device and dtype of the inputs.
    """
    theta, norm = angle(s12, s11, s22)
    return norm * kappa1(theta), kappa0(theta)
