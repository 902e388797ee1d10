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

from mflib import _checks

__all__ = ["angle", "kappa0", "kappa1", "relu_moments"]


def _angle(s12, s11, s22, eps=0.0):
    norm = torch.sqrt(torch.clamp(s11 * s22, min=0.0))
    safe = torch.where(norm > eps, norm, torch.ones_like(norm))
    cos = torch.where(norm > eps, s12 / safe, torch.zeros_like(s12))
    theta = torch.arccos(torch.clamp(cos, -1.0, 1.0))
    return theta, norm


def _kappa0(theta):
    return (math.pi - theta) / (2 * math.pi)


def _kappa1(theta):
    return (torch.sin(theta) + (math.pi - theta) * torch.cos(theta)) / (2 * math.pi)


def _covariances(s12, s11, s22):
    """Check a covariance and two variances: real float tensors of one dtype and
    device, finite, broadcastable, variances >= 0."""
    for name, t in (("s12", s12), ("s11", s11), ("s22", s22)):
        _checks.tensor(t, name)
    _checks.matching(s12, s11, "s12", "s11")
    _checks.matching(s12, s22, "s12", "s22")
    try:
        torch.broadcast_shapes(s12.shape, s11.shape, s22.shape)
    except RuntimeError as err:
        raise ValueError(f"s12, s11 and s22 must have broadcastable shapes, got {tuple(s12.shape)}, "
                         f"{tuple(s11.shape)} and {tuple(s22.shape)}") from err
    for name, t in (("s11", s11), ("s22", s22)):
        if bool((t < 0).any()):
            raise ValueError(f"{name} holds variances: it must be >= 0")
    # products of two variances must not overflow
    for name, t in (("s12", s12), ("s11", s11), ("s22", s22)):
        if t.numel() and float(t.detach().abs().max()) > math.sqrt(torch.finfo(t.dtype).max) / 4:
            raise ValueError(f"{name} is too large: the product of two variances would overflow")


def _theta(theta):
    _checks.tensor(theta, "theta")
    if bool(((theta < 0) | (theta > math.pi)).any()):
        raise ValueError("theta must hold angles in [0, pi]")
    return theta


def angle(s12: torch.Tensor, s11: torch.Tensor, s22: torch.Tensor, eps: float = 0.0):
    r"""Return :math:`\theta = \arccos(s_{12}/\sqrt{s_{11}s_{22}})` and :math:`\sqrt{s_{11}s_{22}}`.

    The cosine is clamped to :math:`[-1, 1]` so that rounding at :math:`x = x'`
    or at antipodal points never produces NaN.  Where :math:`s_{11}s_{22} \le`
    ``eps`` the angle is set to :math:`\pi/2` (the expectations are then zero anyway).

    Parameters
    ----------
    s12, s11, s22 : torch.Tensor
        Covariance and variances (``>= 0``), float32 or float64 of one dtype
        and device, finite, broadcastable.
    eps : float
        Threshold :math:`\ge 0` under which the norm counts as zero.

    Raises
    ------
    TypeError
        If an argument is not a real floating tensor, or their dtypes differ.
    ValueError
        If an entry is not finite, a variance is negative, the shapes do not
        broadcast or the devices differ.
    """
    _covariances(s12, s11, s22)
    eps = _checks.real(eps, "eps", nonnegative=True)
    return _angle(s12, s11, s22, eps)


def kappa0(theta: torch.Tensor) -> torch.Tensor:
    r"""Degree-0 arc-cosine kernel :math:`(\pi-\theta)/(2\pi)`, i.e. :math:`\mathbb E[\mathbf 1_{u>0}\mathbf 1_{v>0}]`.

    ``theta`` is a float tensor of angles in :math:`[0, \pi]`.
    """
    return _kappa0(_theta(theta))


def kappa1(theta: torch.Tensor) -> torch.Tensor:
    r"""Degree-1 arc-cosine kernel :math:`(\sin\theta + (\pi-\theta)\cos\theta)/(2\pi)` (unit variances).

    ``theta`` is a float tensor of angles in :math:`[0, \pi]`.
    """
    return _kappa1(_theta(theta))


def relu_moments(s12: torch.Tensor, s11: torch.Tensor, s22: torch.Tensor):
    r"""Return :math:`(\mathbb E[\mathrm{relu}(u)\mathrm{relu}(v)],\ \mathbb E[\mathbf 1_{u>0}\mathbf 1_{v>0}])`.

    Parameters
    ----------
    s12, s11, s22 : torch.Tensor
        Covariance and variances of the centred Gaussian pair, broadcastable
        (checked as in :func:`angle`).

    Returns
    -------
    tuple of torch.Tensor
        The degree-1 moment (scaled by :math:`\sqrt{s_{11}s_{22}}`) and the
        degree-0 moment, both on the device and dtype of the inputs.
    """
    _covariances(s12, s11, s22)
    theta, norm = _angle(s12, s11, s22)
    return norm * _kappa1(theta), _kappa0(theta)
