r"""Analytic NNGP and NTK kernels of infinitely wide fully connected networks.

For a network of ``depth`` hidden layers in the NTK parametrisation
(:class:`mflib.nets.MLP`), with weight and bias standard deviations
:math:`\sigma_w, \sigma_b` and a readout layer with the same
:math:`\sigma_w, \sigma_b`, the Gaussian-process kernel :math:`\Sigma` (NNGP;
Neal, 1996; Lee et al., 2018) and the neural tangent kernel :math:`\Theta`
(Jacot, Gabriel & Hongler, 2018) are given by the recursion

.. math::

   \Sigma^{0}(x, x') = \sigma_w^2\, \frac{x\cdot x'}{d} + \sigma_b^2,
   \qquad \Theta^{0} = \Sigma^{0},

and, for each of the ``depth`` hidden layers followed by the next dense layer,

.. math::

   \Sigma \leftarrow \sigma_w^2\, \E[\phi(u)\phi(v)] + \sigma_b^2,
   \qquad
   \Theta \leftarrow \Sigma + \sigma_w^2\, \E[\phi'(u)\phi'(v)]\; \Theta,

where :math:`(u, v)` is a centred Gaussian pair whose covariance is the current
:math:`\Sigma` at :math:`(x, x), (x, x'), (x', x')`.  The conventions are those
of neural-tangents' ``stax.serial(stax.Dense(1, W_std, b_std), stax.Relu(), ...,
stax.Dense(1, W_std, b_std))`` in the NTK parameterisation (Novak et al.,
2020); the test suite compares against stored neural-tangents values.

Gaussian expectations
    ``relu``: the arc-cosine kernels of degree 1 and 0 (Cho & Saul, 2009),
    written with :math:`\theta = \operatorname{atan2}(\sqrt{s_{11}s_{22} - s_{12}^2}, s_{12})`
    (see :mod:`mflib.arccos`):
    :math:`\E[\relu(u)\relu(v)] = (\sqrt{s_{11}s_{22}-s_{12}^2} + (\pi - \theta)s_{12})/(2\pi)`,
    :math:`\E[\relu'(u)\relu'(v)] = (\pi-\theta)/(2\pi)`.

    ``erf`` (Williams, 1997): with :math:`p = (1 + 2s_{11})(1 + 2s_{22})`,
    :math:`\E[\mathrm{erf}(u)\mathrm{erf}(v)] = \frac{2}{\pi}\arcsin(2s_{12}/\sqrt{p})`
    and :math:`\E[\mathrm{erf}'(u)\mathrm{erf}'(v)] = \frac{4}{\pi}(p - 4s_{12}^2)^{-1/2}`.

    ``identity``: :math:`s_{12}` and :math:`1`.

    Any other activation (``tanh``, ``sigmoid``, a callable): two-dimensional
    Gauss--Hermite quadrature with ``quad_points`` nodes per dimension,
    :math:`u = \sqrt{s_{11}}\,z_1`, :math:`v = \sqrt{s_{22}}(c z_1 + \sqrt{1-c^2}\,z_2)`,
    :math:`c = s_{12}/\sqrt{s_{11}s_{22}}`.  Its accuracy depends on the
    pre-activation variances :math:`s`: the nodes must resolve
    :math:`\phi(\sqrt{s}\,z)`.  Measured at depth 3 with the default 64
    nodes, for inputs with :math:`\lVert x\rVert^2 = d`, :math:`\sigma_w = 1`
    (variances about one): relative error below :math:`10^{-11}` for erf
    (against the closed form; tested), below :math:`10^{-7}` for tanh and
    :math:`10^{-13}` for sigmoid (against 160 nodes; tested).  At
    :math:`\sigma_w = 1.5` (variances about 2.3) the erf error grows to about
    :math:`10^{-6}`, at :math:`\sigma_w = 2` to :math:`10^{-3}`: raise
    ``quad_points`` then (96 nodes give :math:`10^{-9}` and :math:`10^{-5}`).
    For kinked activations (relu through a callable) the error is only about
    :math:`10^{-2}`; use the closed forms there.  Cost
    :math:`O(n_1 n_2\,\mathrm{quad\_points}^2)` activation evaluations per layer.

Numerics and memory
    Work is done on the device and in the dtype of the inputs (float32 or
    float64), under ``torch.no_grad()``.  The two :math:`n_1\times n_2`
    outputs are updated in place, a block of rows at a time, with fused
    in-place operations on two preallocated block buffers; so besides the
    outputs only two row blocks of temporaries are alive (at most three
    :math:`n_1\times n_2` buffers in all, in fact about two).  For
    ``x2=None`` and a closed form, only the upper triangle is computed and
    then mirrored: every step is elementwise given the variances, so the
    result is exactly symmetric, and the diagonal uses :math:`\theta = 0`
    exactly (the quadrature path computes the full matrix and averages it
    with its transpose).  Angles come
    from ``atan2`` with clamped square roots, so :math:`x = x'` and antipodal
    points give no NaN.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

from mflib import _checks
from mflib import activations as _activations
from mflib.nets import resolve_activation

__all__ = ["Kernels", "nngp", "ntk", "nngp_ntk", "CLOSED_FORMS"]

#: Activations with a closed-form Gaussian expectation; others use quadrature.
CLOSED_FORMS = ("relu", "erf", "identity")

_BLOCK_ELEMENTS = 1 << 18  # elements of one row block of temporaries


class Kernels(NamedTuple):
    """The NNGP and NTK matrices, each of shape ``(n1, n2)``."""

    nngp: torch.Tensor
    ntk: torch.Tensor


# -- Gaussian expectations ------------------------------------------------------------------
# A "moments" function takes s12 (covariances), v1 and v2 (variances, broadcastable) and
# returns (E[phi(u)phi(v)], E[phi'(u)phi'(v)]) (the second is None when need_dot is False).
# They serve the variance recursion on vectors and the quadrature path; the closed forms
# on matrices go through the fused in-place "block updates" below, which compute the same
# formulas with as few passes over memory as possible.

# The closed forms are the activations' own (mflib.activations), written beside them.
_relu_moments = _activations.ACTIVATIONS["relu"].moments
_erf_moments = _activations.ACTIVATIONS["erf"].moments
_identity_moments = _activations.ACTIVATIONS["identity"].moments


def _relu_block_(s, t, v1, v2, w2, b2, tmp1, tmp2):
    r"""One relu layer on a block, in place: s <- Sigma, t <- Theta.

    With root = sqrt(v1 v2 - s^2) = sqrt(v1 v2) sin(theta) and
    pi - theta = atan2(root, -s) (the degree-0 arc-cosine kernel times 2 pi),
    Sigma = w2 (root + (pi - theta) s) / (2 pi) + b2 and
    Theta = Sigma + w2 (pi - theta) / (2 pi) Theta.  The product v1 v2 and s^2 are
    rounded separately (no fused multiply-add), so that at x = x' root is exactly 0.
    """
    torch.mul(v1, v2, out=tmp1)
    torch.mul(s, s, out=tmp2)
    tmp1.sub_(tmp2).clamp_(min=0.0).sqrt_()           # root
    torch.neg(s, out=tmp2)
    torch.atan2(tmp1, tmp2, out=tmp2)                  # pi - theta
    tmp1.addcmul_(tmp2, s)                             # root + (pi - theta) s
    c = w2 / (2 * math.pi)
    torch.mul(tmp1, c, out=s)
    if b2:
        s.add_(b2)
    if t is not None:
        t.mul_(tmp2)
        torch.add(s, t, alpha=c, out=t)


def _erf_block_(s, t, v1, v2, w2, b2, tmp1, tmp2):
    r"""One erf layer on a block, in place (Williams, 1997; neural-tangents' form).

    With p = (1 + 2 v1)(1 + 2 v2) and root = sqrt(p - 4 s^2):
    Sigma = w2 (2/pi) atan2(2 s, root) + b2, Theta = Sigma + w2 (4/pi) Theta / root.
    """
    torch.mul(v1 * 2.0 + 1.0, v2 * 2.0 + 1.0, out=tmp1)
    torch.mul(s, s, out=tmp2)
    tmp1.sub_(tmp2, alpha=4.0).clamp_(min=torch.finfo(s.dtype).tiny).sqrt_()   # root
    torch.mul(s, 2.0, out=tmp2)
    torch.atan2(tmp2, tmp1, out=tmp2)
    torch.mul(tmp2, w2 * 2.0 / math.pi, out=s)
    if b2:
        s.add_(b2)
    if t is not None:
        t.div_(tmp1)
        torch.add(s, t, alpha=w2 * 4.0 / math.pi, out=t)


def _identity_block_(s, t, v1, v2, w2, b2, tmp1, tmp2):
    s.mul_(w2)
    if b2:
        s.add_(b2)
    if t is not None:
        torch.add(s, t, alpha=w2, out=t)


def _moments_block(moments):
    """Block update from a generic moments function (the quadrature path)."""

    def update(s, t, v1, v2, w2, b2, tmp1, tmp2):
        e, ed = moments(s, v1, v2, t is not None)
        s.copy_(e.mul_(w2).add_(b2))
        if t is not None:
            torch.add(s, t.mul_(ed), alpha=w2, out=t)

    return update


_CLOSED = {"relu": _relu_moments, "erf": _erf_moments, "identity": _identity_moments}
_BLOCKS = {"relu": _relu_block_, "erf": _erf_block_, "identity": _identity_block_}


def _hermite(k: int, dtype, device):
    """Probabilists' Gauss--Hermite nodes and weights (weights sum to one)."""
    z, w = np.polynomial.hermite_e.hermegauss(k)
    w = w / w.sum()
    return (torch.as_tensor(z, dtype=dtype, device=device),
            torch.as_tensor(w, dtype=dtype, device=device))


def _quadrature_moments(phi, dphi, k):
    def moments(s12, v1, v2, need_dot):
        z, w = _hermite(k, s12.dtype, s12.device)
        r1 = torch.sqrt(torch.clamp(v1, min=0.0))
        r2 = torch.sqrt(torch.clamp(v2, min=0.0))
        safe = torch.where(r1 * r2 > 0, r1 * r2, torch.ones_like(r1 * r2))
        c = torch.clamp(torch.where(r1 * r2 > 0, s12 / safe, torch.zeros_like(s12)), -1.0, 1.0)
        s = torch.sqrt(torch.clamp(1.0 - c * c, min=0.0))
        r1 = r1.expand_as(s12)
        r2 = r2.expand_as(s12)
        e = torch.zeros_like(s12)
        ed = torch.zeros_like(s12) if need_dot else None
        sz = s.unsqueeze(-1) * z                      # (..., k): the z2 part, fixed
        for za, wa in zip(z.tolist(), w.tolist()):
            u = r1 * za
            v = r2.unsqueeze(-1) * (c.unsqueeze(-1) * za + sz)
            e += wa * phi(u) * (phi(v) @ w)
            if need_dot:
                ed += wa * dphi(u) * (dphi(v) @ w)
        return e, ed

    return moments


# -- argument handling ----------------------------------------------------------------------

def _check_inputs(x1, x2):
    _checks.tensor(x1, "x1", ndim=2)
    if x1.shape[0] == 0 or x1.shape[1] == 0:
        raise ValueError(f"x1 must be non-empty, got shape {tuple(x1.shape)}")
    if x2 is None:
        return
    _checks.tensor(x2, "x2", ndim=2)
    if x2.shape[1] != x1.shape[1]:
        raise ValueError(f"x2 must have the same number of columns as x1, "
                         f"got {x2.shape[1]} and {x1.shape[1]}")
    if x2.shape[0] == 0:
        raise ValueError(f"x2 must be non-empty, got shape {tuple(x2.shape)}")
    _checks.matching(x2, x1, "x2", "x1")


def _symmetrize_(a: torch.Tensor, block: int) -> None:
    """Replace a square matrix by (a + a.T)/2 in place, one block pair at a time."""
    n = a.shape[0]
    for i in range(0, n, block):
        for j in range(i, n, block):
            upper = a[i:i + block, j:j + block]
            lower = a[j:j + block, i:i + block]
            avg = (upper + lower.T) * 0.5
            upper.copy_(avg)
            lower.copy_(avg.T)


def _mirror_upper_(a: torch.Tensor, block: int) -> None:
    """Copy the upper triangle of a square matrix onto its lower triangle, in place."""
    n = a.shape[0]
    for i in range(0, n, block):
        diag = a[i:i + block, i:i + block]
        diag.copy_(torch.triu(diag) + torch.triu(diag, 1).T)
        for j in range(i + block, n, block):
            a[j:j + block, i:i + block].copy_(a[i:i + block, j:j + block].T)


def _recursion(x1, x2, depth, activation, weight_std, bias_std, need_ntk, quad_points):
    _check_inputs(x1, x2)
    depth = _checks.size(depth, "depth", minimum=0)
    key, phi, dphi = resolve_activation(activation)
    w2 = _checks.real(weight_std, "weight_std", positive=True) ** 2
    b2 = _checks.real(bias_std, "bias_std", nonnegative=True) ** 2
    quad_points = _checks.integer(quad_points, "quad_points", minimum=2, maximum=200)
    n_rows, n_cols = x1.shape[0], (x1 if x2 is None else x2).shape[0]
    _checks.elements(2 * n_rows * n_cols, "x1 and x2")
    per = 20 if key in _CLOSED else 4 * quad_points ** 2
    _checks.budget(float(n_rows) * n_cols * (depth + 1) * per + n_rows * n_cols * x1.shape[1],
                   "x1, x2, depth and quad_points")
    if key in _CLOSED:
        moments, update = _CLOSED[key], _BLOCKS[key]
    else:
        moments = _quadrature_moments(phi, dphi, quad_points)
        update = _moments_block(moments)
    symmetric = x2 is None
    xb = x1 if symmetric else x2
    n1, n2, d = x1.shape[0], xb.shape[0], x1.shape[1]
    rows = max(1, _BLOCK_ELEMENTS // n2)
    if key not in _CLOSED:
        rows = max(1, rows // quad_points)
    # row blocks; for x2=None only the upper triangle (columns from the block's first row
    # on) is computed, and mirrored at the end: every step is elementwise given the
    # variances, so the result is exactly symmetric and half the work is saved
    # (for quadrature, whose error is not symmetric in (u, v), the full matrix is computed
    # and averaged with its transpose, which keeps duplicated points' rows equal)
    triangle = symmetric and key in _CLOSED
    blocks = [(i, min(i + rows, n1), i if triangle else 0) for i in range(0, n1, rows)]

    with torch.no_grad():
        sigma = torch.empty(n1, n2, dtype=x1.dtype, device=x1.device)
        for i0, i1, j0 in blocks:
            sigma[i0:i1, j0:].copy_(x1[i0:i1] @ xb[j0:].T)
            sigma[i0:i1, j0:].mul_(w2 / d).add_(b2)
        if symmetric:
            var1 = var2 = None
        else:
            var1 = (x1 * x1).sum(1).mul_(w2 / d).add_(b2)
            var2 = (x2 * x2).sum(1).mul_(w2 / d).add_(b2)
        theta = sigma.clone() if need_ntk else None
        buf1 = torch.empty(rows * n2, dtype=x1.dtype, device=x1.device)
        buf2 = torch.empty_like(buf1)

        for _ in range(depth):
            if symmetric:
                v1 = v2 = sigma.diagonal().clone()
            else:
                v1, v2 = var1, var2
                # the variances follow the same recursion, on vectors
                var1 = moments(var1, var1, var1, False)[0].mul_(w2).add_(b2)
                var2 = moments(var2, var2, var2, False)[0].mul_(w2).add_(b2)
            for i0, i1, j0 in blocks:
                shape = (i1 - i0, n2 - j0)
                size = shape[0] * shape[1]
                update(sigma[i0:i1, j0:], None if theta is None else theta[i0:i1, j0:],
                       v1[i0:i1, None], v2[j0:], w2, b2,
                       buf1[:size].view(shape), buf2[:size].view(shape))
        del buf1, buf2
        fix = _mirror_upper_ if triangle else _symmetrize_
        if symmetric:
            fix(sigma, 512)
            if need_ntk:
                fix(theta, 512)
    what = "the kernel"
    names = "weight_std, bias_std, depth or the scale of x1, x2"
    _checks.finite_result(sigma, what, names)
    if need_ntk:
        _checks.finite_result(theta, what, names)
    return sigma, theta


def nngp_ntk(x1, x2=None, *, depth, activation="relu", weight_std=1.0, bias_std=0.0,
             quad_points=64) -> Kernels:
    r"""NNGP and NTK of a wide fully connected network, computed together.

    Cheaper than calling :func:`nngp` and :func:`ntk`: one pass of the recursion.

    Parameters
    ----------
    x1 : torch.Tensor
        Inputs, shape ``(n1, d)``, float32 or float64, finite.
    x2 : torch.Tensor, optional
        Inputs, shape ``(n2, d)``, same dtype and device as ``x1``; ``None``
        means ``x1`` (and an exactly symmetric result).
    depth : int
        Number of hidden layers :math:`L \ge 0` (a readout layer follows).
    activation : str, callable or tuple, optional
        ``"relu"`` (default), ``"erf"``, ``"identity"`` (closed forms),
        ``"tanh"``, ``"sigmoid"``, an elementwise callable or a pair
        ``(phi, dphi)`` (Gauss--Hermite quadrature).
    weight_std : float, optional
        :math:`\sigma_w > 0`.
    bias_std : float, optional
        :math:`\sigma_b \ge 0`.
    quad_points : int, optional
        Gauss--Hermite nodes per dimension for activations without a closed
        form (default 64).

    Raises
    ------
    TypeError
        If an input is not a floating tensor, ``depth`` is not an int, or
        ``activation`` is of the wrong type.
    ValueError
        If shapes, dtypes or devices disagree, an input is not finite,
        ``depth < 0``, a standard deviation is out of range or the activation
        name is unknown.

    Returns
    -------
    Kernels
        Named tuple ``(nngp, ntk)`` of ``(n1, n2)`` tensors on the device and
        in the dtype of ``x1``.

    Examples
    --------
    >>> import torch
    >>> x = torch.randn(5, 3, dtype=torch.float64)
    >>> k = nngp_ntk(x, depth=2, bias_std=0.1)
    >>> k.ntk.shape
    torch.Size([5, 5])
    """
    sigma, theta = _recursion(x1, x2, depth, activation, weight_std, bias_std, True, quad_points)
    return Kernels(sigma, theta)


def nngp(x1, x2=None, *, depth, activation="relu", weight_std=1.0, bias_std=0.0,
         quad_points=64) -> torch.Tensor:
    r"""NNGP kernel :math:`\Sigma` of a wide fully connected network.

    Parameters
    ----------
    x1 : torch.Tensor
        Inputs, shape ``(n1, d)``, float32 or float64, finite.
    x2 : torch.Tensor, optional
        Inputs, shape ``(n2, d)``, same dtype and device as ``x1``; ``None``
        means ``x1`` (and an exactly symmetric result).
    depth : int
        Number of hidden layers :math:`L \ge 0` (a readout layer follows).
    activation : str, callable or tuple, optional
        ``"relu"`` (default), ``"erf"``, ``"identity"`` (closed forms),
        ``"tanh"``, ``"sigmoid"``, an elementwise callable or a pair
        ``(phi, dphi)`` (Gauss--Hermite quadrature).
    weight_std : float, optional
        :math:`\sigma_w > 0`.
    bias_std : float, optional
        :math:`\sigma_b \ge 0`.
    quad_points : int, optional
        Gauss--Hermite nodes per dimension for activations without a closed
        form (default 64).

    Raises
    ------
    TypeError
        If an input is not a floating tensor, ``depth`` is not an int, or
        ``activation`` is of the wrong type.
    ValueError
        If shapes, dtypes or devices disagree, an input is not finite,
        ``depth < 0``, a standard deviation is out of range or the activation
        name is unknown.

    Returns
    -------
    torch.Tensor
        :math:`\Sigma(x_1, x_2)`, shape ``(n1, n2)``, on the device and in the
        dtype of ``x1``.
    """
    return _recursion(x1, x2, depth, activation, weight_std, bias_std, False, quad_points)[0]


def ntk(x1, x2=None, *, depth, activation="relu", weight_std=1.0, bias_std=0.0,
        quad_points=64) -> torch.Tensor:
    r"""Neural tangent kernel :math:`\Theta` of a wide fully connected network.

    Parameters
    ----------
    x1 : torch.Tensor
        Inputs, shape ``(n1, d)``, float32 or float64, finite.
    x2 : torch.Tensor, optional
        Inputs, shape ``(n2, d)``, same dtype and device as ``x1``; ``None``
        means ``x1`` (and an exactly symmetric result).
    depth : int
        Number of hidden layers :math:`L \ge 0` (a readout layer follows).
    activation : str, callable or tuple, optional
        ``"relu"`` (default), ``"erf"``, ``"identity"`` (closed forms),
        ``"tanh"``, ``"sigmoid"``, an elementwise callable or a pair
        ``(phi, dphi)`` (Gauss--Hermite quadrature).
    weight_std : float, optional
        :math:`\sigma_w > 0`.
    bias_std : float, optional
        :math:`\sigma_b \ge 0`.
    quad_points : int, optional
        Gauss--Hermite nodes per dimension for activations without a closed
        form (default 64).

    Raises
    ------
    TypeError
        If an input is not a floating tensor, ``depth`` is not an int, or
        ``activation`` is of the wrong type.
    ValueError
        If shapes, dtypes or devices disagree, an input is not finite,
        ``depth < 0``, a standard deviation is out of range or the activation
        name is unknown.

    Returns
    -------
    torch.Tensor
        :math:`\Theta(x_1, x_2)`, shape ``(n1, n2)``, on the device and in the
        dtype of ``x1``.
    """
    return _recursion(x1, x2, depth, activation, weight_std, bias_std, True, quad_points)[1]
