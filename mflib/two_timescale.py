r"""The two-timescale regime of a shallow network on a univariate step target
(Marion & Berthier, NeurIPS 2023).

Setting.  The input is :math:`x\sim U[0,1]`; the target :math:`f^*` is
piecewise constant, with jumps at :math:`0<v_1<\dots<v_{n-1}<1` and values
:math:`f^*_0,\dots,f^*_{n-1}` on the pieces.  The network is

.. math::

    f(x; a, u) = a_0 + \sum_{j=1}^m a_j\, \sigma\Big(\frac{x-u_j}{\eta}\Big),

with the :math:`C^1` smooth step :math:`\sigma` of :func:`smooth_step`, and the
population risk is :math:`R(a,u)=\int_0^1 (f-f^*)^2\,dx`.  Online SGD on noisy
labels :math:`y=f^*(x)+\xi`, :math:`\xi\sim U[-1,1]`, updates
:math:`a\leftarrow a-h\nabla_a(f(x)-y)^2` and
:math:`u\leftarrow u-h\varepsilon\nabla_u(f(x)-y)^2`; its mean step is a
gradient-descent step on :math:`R`.

Three levels of description are implemented, from the most faithful to the
most idealised:

* :func:`train_sgd`: the online SGD itself (one fresh sample per step and per
  run, replicate runs batched as a tensor dimension);
* :func:`train_population`: gradient descent on the *exact* population risk
  (:func:`population_loss_grad` integrates piecewise polynomials exactly by
  Gauss--Legendre quadrature between breakpoints), with the largest stable
  step, any :math:`\varepsilon`;
* :func:`train_limit` (:math:`\varepsilon\to0`: :math:`a=a^*(u)` solved from
  the Gram system, :math:`\dot u=-\nabla_u R(a^*(u),u)` in the slow time
  :math:`\tau=\varepsilon t`) and :func:`heaviside_limit` (also
  :math:`\eta\to0`: an explicit ODE in which only the two neurons flanking a
  jump move, towards it).

The released code of the paper differentiates the cubic step with the
derivative of the linear ramp; here every derivative is the exact one, and
the tests check it against autograd.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from mflib import _checks
from mflib._checks import Diverged

__all__ = ["StepTarget", "paper_target", "smooth_step", "smooth_step_grad", "network",
           "population_loss_grad", "step_floor", "init_positions", "TrainResult",
           "train_population", "train_limit", "heaviside_limit", "train_sgd",
           "jump_distance", "FixedSampleResult", "additive_step_problem", "relu_teacher_problem",
           "train_fixed_sample", "optimal_outer", "excess_risk", "reduced_risk", "gram_min_eig"]

_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(4)  # exact up to degree 7
_GROW = 4.0   # a step is at most this many times the previous one (train_population)


# --------------------------------------------------------------------------- target


@dataclass(frozen=True)
class StepTarget:
    """A piecewise-constant target on :math:`[0,1]`.

    Attributes
    ----------
    jumps : torch.Tensor
        Shape ``(n-1,)``, strictly increasing, inside :math:`(0,1)`.
    values : torch.Tensor
        Shape ``(n,)``: the value on each piece, left to right.
    """

    jumps: torch.Tensor
    values: torch.Tensor

    def __post_init__(self):
        _checks.tensor(self.jumps, "jumps", ndim=1)
        _checks.tensor(self.values, "values", ndim=1, nonempty=True)
        _checks.matching(self.jumps, self.values, "jumps", "values")
        if self.values.numel() and float(self.values.detach().abs().max()) > 1e50:
            raise ValueError("values are too large: the risk (their square, integrated) would overflow")
        if self.values.shape[0] != self.jumps.shape[0] + 1:
            raise ValueError(f"values must have len(jumps) + 1 = {self.jumps.shape[0] + 1} "
                             f"entries, got {self.values.shape[0]}")
        if self.jumps.numel() and not bool((self.jumps[1:] > self.jumps[:-1]).all()):
            raise ValueError("jumps must be strictly increasing")
        if self.jumps.numel() and not (0 < float(self.jumps.min()) and float(self.jumps.max()) < 1):
            raise ValueError("jumps must lie strictly inside (0, 1)")

    @property
    def heights(self) -> torch.Tensor:
        """Signed jump heights :math:`J_i=f^*_{i}-f^*_{i-1}`, shape ``(n-1,)``."""
        return self.values[1:] - self.values[:-1]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Evaluate :math:`f^*` (right-continuous) at ``x``."""
        _checks.tensor(x, "x")
        return self._eval(x)

    def _eval(self, x):
        idx = torch.searchsorted(self.jumps.to(x), x.contiguous(), right=True)
        return self.values.to(x)[idx]

    def primitive(self, x: torch.Tensor, power: int = 1) -> torch.Tensor:
        r"""Exact :math:`\int_0^x f^*(s)^p\,ds` for ``power`` :math:`p\in\{1,2\}`."""
        _checks.tensor(x, "x", ndim=1)
        power = _checks.integer(power, "power", minimum=1, maximum=2)
        v = self.values.to(x) ** power
        knots = torch.cat([x.new_zeros(1), self.jumps.to(x)])
        cum = torch.cat([x.new_zeros(1), torch.cumsum(v[:-1] * (knots[1:] - knots[:-1]), 0)])
        idx = torch.searchsorted(self.jumps.to(x), x.contiguous(), right=True)
        return cum[idx] + v[idx] * (x - knots[idx])


def paper_target(dtype: torch.dtype = torch.float64) -> StepTarget:
    """The target of the paper's experiments: jumps at 0.2, 0.35, 0.5, 0.65, 0.8,
    values 1, 5, 1, 3, 1, 5 (minimal gap 0.15, minimal jump 2)."""
    dtype = _checks.dtype(dtype)
    return StepTarget(torch.tensor([0.2, 0.35, 0.5, 0.65, 0.8], dtype=dtype),
                      torch.tensor([1.0, 5.0, 1.0, 3.0, 1.0, 5.0], dtype=dtype))


def _target(target, like=None, like_name="u0") -> StepTarget:
    _checks.instance(target, StepTarget, "target")
    if like is not None and target.values.dtype != like.dtype:
        raise TypeError(f"target and {like_name} must have the same dtype, got "
                        f"{target.values.dtype} and {like.dtype}")
    return target


def _eta(eta):
    return _checks.real(eta, "eta", positive=True, minimum=1e-9, maximum=10.0)


# --------------------------------------------------------------------------- activation


def smooth_step(z: torch.Tensor) -> torch.Tensor:
    r"""The :math:`C^1` smooth step of the paper.

    .. math::

        \sigma(z) = \begin{cases} 0 & z\le -\tfrac12\\ 4(z+\tfrac12)^3 & -\tfrac12\le z\le 0\\
        1-4(\tfrac12-z)^3 & 0\le z\le\tfrac12\\ 1 & z\ge\tfrac12.\end{cases}
    """
    return _sstep(_checks.tensor(z, "z"))


def _sstep(z):
    zc = z.clamp(-0.5, 0.5)
    return torch.where(zc < 0, 4 * (zc + 0.5) ** 3, 1 - 4 * (0.5 - zc) ** 3)


def smooth_step_grad(z: torch.Tensor) -> torch.Tensor:
    r"""Derivative of :func:`smooth_step`: :math:`12(\tfrac12-|z|)^2` on
    :math:`|z|\le\tfrac12`, zero outside (continuous, integral 1)."""
    return _sstep_grad(_checks.tensor(z, "z"))


def _sstep_grad(z):
    return 12 * (0.5 - z.abs().clamp(max=0.5)) ** 2


def _check_params(a, u, eta, na="a", nu="u"):
    _checks.tensor(u, nu, ndim=(1, 2))
    _checks.tensor(a, na, ndim=(1, 2))
    _checks.matching(a, u, na, nu)
    if a.shape[:-1] != u.shape[:-1] or a.shape[-1] != u.shape[-1] + 1:
        raise ValueError(f"{na} must have shape (..., m + 1) for {nu} of shape (..., m); got {na} "
                         f"{tuple(a.shape)} and {nu} {tuple(u.shape)}")
    if u.shape[-1] < 1:
        raise ValueError(f"{nu} must hold at least one neuron (m >= 1)")
    if u.ndim == 2 and u.shape[0] < 1:
        raise ValueError(f"{nu} must hold at least one run, got shape {tuple(u.shape)}")
    if float(a.detach().abs().max()) > 1e50:
        raise ValueError(f"{na} is too large: the risk would overflow")
    return _eta(eta)


def network(x: torch.Tensor, a: torch.Tensor, u: torch.Tensor, eta: float) -> torch.Tensor:
    r"""Evaluate :math:`f(x;a,u)=a_0+\sum_j a_j\sigma((x-u_j)/\eta)`.

    Parameters
    ----------
    x : torch.Tensor
        Points, shape ``(n,)``.
    a : torch.Tensor
        Outer weights, shape ``(m + 1,)`` or ``(B, m + 1)`` (``a[..., 0]`` is the bias).
    u : torch.Tensor
        Positions, shape ``(m,)`` or ``(B, m)``.
    eta : float
        Width of the step, > 0.

    Returns
    -------
    torch.Tensor
        Shape ``(n,)`` or ``(B, n)``.
    """
    eta = _check_params(a, u, eta)
    _checks.tensor(x, "x", ndim=1)
    _checks.matching(x, u, "x", "u")
    _checks.elements(x.numel() * u.numel(), "x and u")
    s = _sstep((x[..., :, None] - u[..., None, :]) / eta)
    return a[..., :1] + (s * a[..., None, 1:]).sum(-1)


# --------------------------------------------------------------------------- exact population risk


def _quadrature(u: torch.Tensor, target: StepTarget, eta: float):
    """Nodes and weights of a rule exact for polynomials of degree <= 7 on every
    piece between the breakpoints {0, 1, v_i, u_j, u_j +- eta/2}."""
    B = u.shape[0]
    v = target.jumps.to(u)
    pts = torch.cat([u.new_zeros(B, 1), u.new_ones(B, 1), v.expand(B, -1),
                     u - eta / 2, u, u + eta / 2], dim=1).clamp(0.0, 1.0)
    pts = torch.sort(pts.detach(), dim=1).values
    lo, hi = pts[:, :-1], pts[:, 1:]
    half, mid = (hi - lo) / 2, (hi + lo) / 2
    nodes = torch.as_tensor(_GL_NODES, dtype=u.dtype, device=u.device)
    weights = torch.as_tensor(_GL_WEIGHTS, dtype=u.dtype, device=u.device)
    x = (mid[..., None] + half[..., None] * nodes).reshape(B, -1)
    w = (half[..., None] * weights).reshape(B, -1)
    return x, w


def population_loss_grad(a: torch.Tensor, u: torch.Tensor, target: StepTarget, eta: float,
                         *, grad: bool = True):
    r"""Exact population risk :math:`R(a,u)=\int_0^1(f(x;a,u)-f^*(x))^2dx` and its gradient.

    On each piece between consecutive breakpoints
    :math:`\{0,1,v_i,u_j,u_j\pm\eta/2\}` the integrands are polynomials of degree
    at most 6, integrated exactly by 4-point Gauss--Legendre quadrature.  The
    gradient is

    .. math::

        \partial_{a_0}R = 2\int_0^1 (f-f^*),\quad
        \partial_{a_j}R = 2\int_0^1 (f-f^*)\,\sigma_j,\quad
        \partial_{u_j}R = -\frac{2a_j}{\eta}\int_0^1 (f-f^*)\,\sigma'\Big(\frac{x-u_j}{\eta}\Big),

    (the breakpoints move with :math:`u`, but the integrand is continuous
    across them, so no boundary term appears).  It is also the mean of the SGD
    gradient :math:`\nabla(f(x)-y)^2` with :math:`\mathbb{E}[y|x]=f^*(x)`.

    Parameters
    ----------
    a : torch.Tensor
        Shape ``(m + 1,)`` or ``(B, m + 1)``.
    u : torch.Tensor
        Shape ``(m,)`` or ``(B, m)``.
    target : StepTarget
    eta : float
        > 0.
    grad : bool
        Also return the gradient.

    Returns
    -------
    tuple of torch.Tensor
        ``(R, grad_a, grad_u)`` (or ``R`` alone when ``grad=False``), with the
        batch shape of the inputs.
    """
    eta = _check_params(a, u, eta)
    target = _target(target, u, "u")
    grad = _checks.flag(grad, "grad")
    squeeze = u.ndim == 1
    a2, u2 = (a[None], u[None]) if squeeze else (a, u)
    x, w = _quadrature(u2, target, eta)
    z = (x[:, :, None] - u2[:, None, :]) / eta
    s = _sstep(z)
    r = a2[:, :1] + torch.einsum("bkm,bm->bk", s, a2[:, 1:]) - target._eval(x)
    wr = w * r
    loss = (wr * r).sum(1)
    if not grad:
        return loss[0] if squeeze else loss
    g0 = 2 * wr.sum(1, keepdim=True)
    ga = torch.cat([g0, 2 * torch.einsum("bk,bkm->bm", wr, s)], dim=1)
    gu = -2 * a2[:, 1:] / eta * torch.einsum("bk,bkm->bm", wr, _sstep_grad(z))
    if squeeze:
        return loss[0], ga[0], gu[0]
    return loss, ga, gu


def _population_loss(a, u, target, eta):
    """R(a, u) for batched (B, m + 1), (B, m) inputs, without argument checks."""
    x, w = _quadrature(u, target, eta)
    s = _sstep((x[:, :, None] - u[:, None, :]) / eta)
    r = a[:, :1] + torch.einsum("bkm,bm->bk", s, a[:, 1:]) - target._eval(x)
    return (w * r * r).sum(1)


def _gram(u: torch.Tensor, target: StepTarget, eta: float):
    """Gram matrix G = int phi phi^T and b = int f* phi, phi = (1, sigma_1, ..., sigma_m)."""
    x, w = _quadrature(u, target, eta)
    s = _sstep((x[:, :, None] - u[:, None, :]) / eta)
    phi = torch.cat([torch.ones_like(s[..., :1]), s], dim=-1)
    G = torch.einsum("bk,bki,bkj->bij", w, phi, phi)
    b = torch.einsum("bk,bk,bki->bi", w, target._eval(x), phi)
    return G, b


def optimal_outer(u: torch.Tensor, target: StepTarget, eta: float) -> torch.Tensor:
    r"""The optimal outer weights :math:`a^*(u)=\arg\min_a R(a,u)` (solution of
    :math:`G a = b` with a relative ridge of :math:`10^{-12}` for the
    degenerate case of coinciding neurons)."""
    eta = _eta(eta)
    _checks.tensor(u, "u", ndim=(1, 2), nonempty=True)
    target = _target(target, u, "u")
    if float(u.detach().abs().max()) > 1e6:
        raise ValueError("u is too large: positions far outside [0, 1] give a singular system")
    squeeze = u.ndim == 1
    u2 = u[None] if squeeze else u
    G, b = _gram(u2, target, eta)
    eye = torch.eye(G.shape[-1], dtype=G.dtype, device=G.device)
    ridge = 1e-12 * G.diagonal(dim1=-2, dim2=-1).sum(-1)[:, None, None]
    a, info = torch.linalg.solve_ex(G + ridge * eye, b)
    if bool((info != 0).any()):
        raise ValueError("the Gram system of u is singular (positions outside [0, 1]?)")
    _checks.finite_result(a, "a*(u)", "u or eta")
    return a[0] if squeeze else a


def _flat_states(a, u, eta):
    """Check (a, u) of shapes (..., m + 1), (..., m) with up to two batch axes; flatten them."""
    _checks.tensor(u, "u", ndim=(1, 2, 3), nonempty=True)
    _checks.tensor(a, "a", ndim=(1, 2, 3), nonempty=True)
    shape = u.shape[:-1]
    a2, u2 = a.reshape(-1, a.shape[-1]), u.reshape(-1, u.shape[-1])
    if a.shape[:-1] != shape:
        raise ValueError(f"a must have shape (..., m + 1) for u of shape (..., m); got a "
                         f"{tuple(a.shape)} and u {tuple(u.shape)}")
    eta = _check_params(a2, u2, eta)
    if float(u.detach().abs().max()) > 1e6:
        raise ValueError("u is too large: positions far outside [0, 1] give a singular system")
    return a2, u2, shape, eta


def excess_risk(a: torch.Tensor, u: torch.Tensor, target: StepTarget, eta: float) -> torch.Tensor:
    r"""How far the outer weights are from optimal for the current positions:

    .. math::

        R(a,u)-\bar R(u) = R(a,u)-\min_{a'}R(a',u) = (a-a^*(u))^\top G(u)\,(a-a^*(u))\ \ge 0,

    exact because :math:`R` is quadratic in :math:`a` with Hessian :math:`2G`
    (here :math:`\nabla_aR=2(Ga-b)`, so the quadratic form carries no factor).

    Parameters
    ----------
    a : torch.Tensor
        Shape ``(..., m + 1)`` with up to two batch axes (runs, records).
    u : torch.Tensor
        Shape ``(..., m)``, the same batch axes.
    target : StepTarget
    eta : float
        > 0.

    Returns
    -------
    torch.Tensor
        The excess risk, with the batch shape of ``u``.
    """
    a2, u2, shape, eta = _flat_states(a, u, eta)
    target = _target(target, u2, "u")
    G, b = _gram(u2, target, eta)
    eye = torch.eye(G.shape[-1], dtype=G.dtype, device=G.device)
    ridge = 1e-12 * G.diagonal(dim1=-2, dim2=-1).sum(-1)[:, None, None]
    a_opt = torch.linalg.solve_ex(G + ridge * eye, b)[0]
    d = a2 - a_opt
    out = torch.einsum("bi,bij,bj->b", d, G, d).clamp(min=0)
    _checks.finite_result(out, "excess risk", "u or eta")
    return out.reshape(shape)


def _positions_batch(u, target, eta):
    """Checked ``eta``, positions ``u`` of shape ``(..., m)`` (up to two batch
    axes) flattened to ``(B, m)``, and the checked target."""
    eta = _eta(eta)
    _checks.tensor(u, "u", ndim=(1, 2, 3), nonempty=True)
    if float(u.detach().abs().max()) > 1e6:
        raise ValueError("u is too large: positions far outside [0, 1] give a singular system")
    u2 = u.reshape(-1, u.shape[-1])
    return eta, u2, _target(target, u2, "u")


def reduced_risk(u: torch.Tensor, target: StepTarget, eta: float) -> torch.Tensor:
    r"""The reduced risk :math:`\bar R(u)=\min_aR(a,u)=R(a^*(u),u)`, the risk that the
    positions see in the two-timescale limit; ``u`` has shape ``(..., m)`` with up
    to two batch axes (runs, records) and the result has its batch shape.  With
    the records of a run, ``loss - reduced_risk(u)`` is its excess risk
    :math:`R(a,u)-\bar R(u)` (see :func:`excess_risk`)."""
    eta, u2, target = _positions_batch(u, target, eta)
    out = _population_loss(optimal_outer(u2, target, eta), u2, target, eta)
    return out.reshape(u.shape[:-1])


def gram_min_eig(u: torch.Tensor, target: StepTarget, eta: float) -> torch.Tensor:
    r"""Smallest eigenvalue :math:`\lambda_{\min}(G(u))` of the Gram matrix
    :math:`G=\int_0^1\phi\phi^\top`, :math:`\phi=(1,\sigma_1,\dots,\sigma_m)`.

    At frozen :math:`u` the outer weights run :math:`\dot a=-2(Ga-b)`, so
    :math:`a` relaxes to :math:`a^*(u)` at the rate :math:`2\lambda_{\min}` in
    the fast time :math:`t`, that is in a slow time of order
    :math:`\varepsilon/(2\lambda_{\min})`: the timescales separate when this is
    small against the time over which the positions change.  ``u`` has shape
    ``(..., m)`` with up to two batch axes; the result has its batch shape.
    """
    eta, u2, target = _positions_batch(u, target, eta)
    lam = torch.linalg.eigvalsh(_gram(u2, target, eta)[0])[:, 0]
    return lam.reshape(u.shape[:-1])


def step_floor(target: StepTarget, eta: float) -> float:
    r"""Reference loss floor: the risk of the network with one neuron exactly on
    each jump and weights equal to the jump heights,

    .. math::

        R_\mathrm{floor} = \eta\sum_i J_i^2\int(\sigma(z)-\mathbb 1_{z>0})^2dz
        = \frac{\eta}{28}\sum_i J_i^2,

    valid when the windows :math:`[v_i\pm\eta/2]` are disjoint and inside
    :math:`(0,1)`.  It is of order :math:`\eta`; the global minimum with
    :math:`m` free neurons is at most this value (the paper's exact constant is
    not reproduced here)."""
    target = _target(target)
    eta = _eta(eta)
    return float(eta * (target.heights ** 2).sum() / 28.0)


# --------------------------------------------------------------------------- initialisation


def init_positions(m: int, target: StepTarget, *, batch: int = 1, generator: torch.Generator,
                   min_per_piece: int = 2, dtype: torch.dtype = torch.float64,
                   max_tries: int = 10_000) -> torch.Tensor:
    """Sorted uniform positions, ``(batch, m)``, re-drawn (per row) until every
    constant piece of the target holds at least ``min_per_piece`` neurons (the
    condition the authors' code enforces).

    Raises
    ------
    ValueError
        If ``m`` is too small for the condition or ``max_tries`` draws fail.
    """
    m = _checks.size(m, "m")
    batch = _checks.size(batch, "batch")
    min_per_piece = _checks.integer(min_per_piece, "min_per_piece", minimum=0)
    target = _target(target)
    generator = _checks.generator(generator)
    dtype = _checks.dtype(dtype)
    max_tries = _checks.size(max_tries, "max_tries")
    _checks.elements(batch * m, "batch and m")
    _checks.budget(float(batch) * max_tries * m * 30, "batch, max_tries and m")
    n_pieces = target.values.shape[0]
    if m < min_per_piece * n_pieces:
        raise ValueError(f"m must be >= min_per_piece * pieces = {min_per_piece * n_pieces}, got {m}")
    out = torch.empty(batch, m, dtype=dtype)
    v = target.jumps.to(dtype)
    for row in range(batch):
        for _ in range(max_tries):
            u = torch.sort(torch.rand(m, generator=generator, dtype=dtype)).values
            counts = torch.bincount(torch.searchsorted(v, u), minlength=n_pieces)
            if bool((counts >= min_per_piece).all()):
                out[row] = u
                break
        else:
            raise ValueError(f"no initialisation with {min_per_piece} neurons per piece in "
                             f"max_tries={max_tries} draws")
    return out


def jump_distance(u: torch.Tensor, target: StepTarget) -> torch.Tensor:
    """Distance from each jump to its nearest neuron, shape ``(..., n-1)``."""
    _checks.tensor(u, "u", ndim=(1, 2, 3))
    if u.shape[-1] < 1:
        raise ValueError(f"u must hold at least one neuron in its last dimension, got shape {tuple(u.shape)}")
    target = _target(target, u, "u")
    return (u[..., None, :] - target.jumps.to(u)[:, None]).abs().min(-1).values


# --------------------------------------------------------------------------- dynamics


@dataclass
class TrainResult:
    """A trajectory.

    Attributes
    ----------
    tau : torch.Tensor
        Slow times :math:`\\tau=\\varepsilon t` of the records, ``(T,)`` (or
        ``(B, T)`` when the runs have different :math:`\\varepsilon`).
    u : torch.Tensor
        Positions, ``(B, T, m)``.
    a : torch.Tensor
        Outer weights at the last record, ``(B, m + 1)``.
    loss : torch.Tensor
        Population risk :math:`R` at the records, ``(B, T)``.
    steps : int
        Number of steps taken.
    diverged : torch.Tensor
        ``(B,)`` bool; a diverged run's records stop at its last finite step
        (later records repeat it).
    recorded : torch.Tensor or None
        ``(B,)`` int64: how many records each run computed (``T`` for a run
        that did not diverge); records past that repeat the last computed one.
    """

    tau: torch.Tensor
    u: torch.Tensor
    a: torch.Tensor
    loss: torch.Tensor
    steps: int
    diverged: torch.Tensor
    recorded: torch.Tensor | None = None


def _batch_eps(eps, B, like):
    if isinstance(eps, torch.Tensor):
        _checks.tensor(eps, "eps", ndim=(0, 1), floating=False)
        if eps.dtype == torch.bool:
            raise TypeError("eps must hold real numbers, got a bool tensor")
        if eps.numel() and float(eps.detach().abs().max()) > _checks.MAX_REAL:
            raise ValueError("eps is too large: the computation would overflow")
        eps = eps.to(like)
        eps = eps.expand(B).clone() if eps.ndim == 0 else eps
        if eps.shape[0] != B:
            raise ValueError(f"eps must have {B} entries (one per run), got {eps.shape[0]}")
        if not bool((eps > 0).all()):
            raise ValueError("eps must be > 0")
        return eps
    return like.new_full((B,), _checks.real(eps, "eps", positive=True))


def _terms(a, u, target, eta):
    """Everything one step needs, by exact quadrature: R, grad_a, grad_u, the
    diagonal of the u-Hessian, the Gram matrix G and b (grad_a = 2(G a - b))."""
    x, w = _quadrature(u, target, eta)
    z = (x[:, :, None] - u[:, None, :]) / eta
    zc = z.clamp(-0.5, 0.5)
    neg = zc < 0
    s = torch.where(neg, 4 * (zc + 0.5) ** 3, 1 - 4 * (0.5 - zc) ** 3)
    q = 0.5 - zc.abs()
    ds = 12 * q * q
    dds = torch.where(neg, 24 * q, -24 * q)
    phi = torch.cat([torch.ones_like(s[..., :1]), s], dim=-1)
    wphi = w[..., None] * phi
    G = wphi.transpose(1, 2) @ phi
    fs = target._eval(x)
    b = (wphi * fs[..., None]).sum(1)
    r = (phi @ a[..., None])[..., 0] - fs
    wr = w * r
    loss = (wr * r).sum(1)
    ga = 2 * (wr[:, None, :] @ phi)[:, 0]
    aj = a[:, 1:]
    gu = -2 * aj / eta * (wr[:, None, :] @ ds)[:, 0]
    wds, wdds = w[..., None] * ds, w[..., None] * dds
    M = (w[:, None, :] @ (ds * ds))[:, 0]
    Dm, Em = wds.transpose(1, 2) @ phi, wdds.transpose(1, 2) @ phi         # (B, m, m + 1)
    c, e = (wds * fs[..., None]).sum(1), (wdds * fs[..., None]).sum(1)      # (B, m)
    hu = 2 * aj ** 2 / eta ** 2 * M + 2 * aj / eta ** 2 * (wr[:, None, :] @ dds)[:, 0]
    return loss, ga, gu, hu, G, b, (Dm, c, Em, e, M)


def _gu_hu(a, coup, eta, hessian=True):
    """grad_u R (and the diagonal of the u-Hessian) at outer weights ``a`` (shape
    ``(B, m + 1)`` or ``(B, S, m + 1)``) and the frozen positions of ``coup``:
    both are polynomials in ``a`` (quadratic), so no quadrature is needed."""
    Dm, c, Em, e, M = coup
    if a.ndim == 3:
        Dm, c, Em, e, M = Dm[:, None], c[:, None], Em[:, None], e[:, None], M[:, None]
    aj = a[..., 1:]
    gu = -2 * aj / eta * ((Dm @ a[..., None])[..., 0] - c)
    if not hessian:
        return gu
    return gu, 2 * aj ** 2 / eta ** 2 * M + 2 * aj / eta ** 2 * ((Em @ a[..., None])[..., 0] - e)


# nodes (fractions of the step) and weights of the quadrature in time of grad_u R along the
# a-flow: 3-point Gauss-Legendre on the geometrically graded pieces [q^(k+1), q^k] (k < K)
# and [0, q^K], which resolves the boundary layer of a fast a-flow (small eps) at any step
_LAYER_Q, _LAYER_K = 0.125, 10


def _layer_rule():
    gx, gw = np.polynomial.legendre.leggauss(3)
    edges = np.concatenate([[0.0], _LAYER_Q ** np.arange(_LAYER_K, -1, -1.0)])
    lo, hi = edges[:-1, None], edges[1:, None]
    nodes = ((lo + hi) / 2 + (hi - lo) / 2 * gx).ravel()
    weights = ((hi - lo) / 2 * gw).ravel()
    return np.concatenate([[0.0], nodes, [1.0]]), np.concatenate([[0.0], weights, [0.0]])


_LAYER_NODES, _LAYER_WEIGHTS = _layer_rule()


def _tau_integrate(a, u, target, eta, eps, tau_max, n_records, max_disp, max_steps, limit,
                   names="a0 and u0"):
    """Shared integrator of :func:`train_population` and :func:`train_limit` (in slow time).

    A run whose state becomes non-finite (or whose positions leave
    :math:`(-10, 10)`) is flagged ``diverged`` and keeps its last finite state
    and the records it computed.  A start that is not finite is refused
    (``ValueError`` naming the inputs), and so is, as soon as the speed of the
    neurons shows it, a horizon that would need far more than ``max_steps``
    steps (``tau_max`` too long or ``max_disp`` too small).
    """
    B, m = u.shape
    grid = torch.linspace(0.0, tau_max, n_records, dtype=u.dtype)
    # NaN-filled, so that a record that was never written cannot pass for a value
    rec_u = u.new_full((B, n_records, m), math.nan)
    rec_loss = u.new_full((B, n_records), math.nan)
    tau = torch.zeros(B, dtype=u.dtype)
    nxt = torch.zeros(B, dtype=torch.long)
    diverged = torch.zeros(B, dtype=torch.bool)
    rows = torch.arange(B)
    eye = torch.eye(m + 1, dtype=u.dtype, device=u.device)
    steps = 0
    last = torch.zeros(B, dtype=u.dtype)          # size of each run's last step (a-flow runs)
    grown = torch.zeros(B, dtype=torch.bool)
    prev_u, prev_a = u, a
    good_u, good_a = u.clone(), a.clone()      # last finite state of every run
    first = True
    while True:
        act = rows[~diverged & (nxt < n_records)]          # runs still integrating
        if act.numel() == 0:
            break
        full = act.numel() == B
        ua, aa = (u, a) if full else (u[act], a[act])
        if limit:
            G, b = _gram(ua, target, eta)
            ridge = 1e-12 * G.diagonal(dim1=-2, dim2=-1).sum(-1)[:, None, None]
            aa = torch.linalg.solve_ex(G + ridge * eye, b[..., None])[0][..., 0]
        loss, ga, gu, hu, G, b, coup = _terms(aa, ua, target, eta)[:7]
        ok = (torch.isfinite(loss) & torch.isfinite(ga).all(1) & torch.isfinite(gu).all(1)
              & torch.isfinite(hu).all(1) & torch.isfinite(aa).all(1) & torch.isfinite(ua).all(1)
              & (ua.abs() < 10).all(1)).cpu()
        if first:
            first = False
            if not bool(ok.all()):
                raise ValueError(f"{names} give a non-finite risk or gradient at the start (or "
                                 f"positions outside (-10, 10)): their values are out of range")
        bad_a = ~ok
        if bool(bad_a.any()):                               # back to the last finite state
            diverged[act[bad_a]] = True
            back = act[bad_a].to(u.device)
            u, a = u.clone(), a.clone()
            u[back], a[back] = prev_u[back], prev_a[back]
        if bool(ok.any()):
            keep = act[ok].to(u.device)
            okd = ok.to(u.device)
            good_u[keep], good_a[keep] = ua[okd], aa[okd]
        live_a = ~diverged[act]
        due = live_a & (tau[act] >= grid[nxt[act]] - 1e-12 * tau_max)
        if bool(due.any()):
            idx = act[due]
            rec_u[idx, nxt[idx]] = ua[due.to(u.device)]
            rec_loss[idx, nxt[idx]] = loss[due.to(u.device)]
            nxt[idx] += 1
            live_a = live_a & (nxt[act] < n_records)
        if not bool(live_a.any()):
            if not bool((~diverged & (nxt < n_records)).any()):
                break
            continue
        if steps >= max_steps:
            raise ValueError(f"max_steps={max_steps} reached before tau_max={tau_max:g}: lower "
                             f"tau_max or raise max_disp or max_steps")
        speed = gu.abs().max(1).values.cpu()
        ta = tau[act]
        # steps still needed at the current speeds: far beyond max_steps, the horizon cannot be
        # reached (tau_max too long, max_disp too small) -- refuse now rather than run for hours
        need = float(((tau_max - ta) * speed / (max_disp * eta))[live_a].max()) if bool(live_a.any()) else 0.0
        if not need <= 10 * (max_steps - steps):
            raise ValueError(f"tau_max={tau_max:g} with max_disp={max_disp:g} needs about {need:.3g} "
                             f"more steps at the current speed of the neurons, far more than "
                             f"max_steps={max_steps}: lower tau_max or raise max_disp")
        dt_rec = (grid[nxt[act].clamp(max=n_records - 1)] - ta).clamp(min=0)
        dtau = torch.minimum(max_disp * eta / speed.clamp(min=1e-300), torch.full_like(ta, tau_max))
        if bool(grown.any()):                 # at most _GROW times the last step's own size
            dtau = torch.where(grown[act], torch.minimum(dtau, _GROW * last[act]), dtau)
        dtau = torch.where(live_a, dtau, torch.zeros_like(dtau))
        epsa = eps[act.to(u.device)]
        if limit:
            dtau = torch.minimum(dtau, dt_rec)
            gbar, hend, a_end = gu, hu, aa
        else:
            # a: exact flow of da/dt = -2(Ga - b) at frozen u, a(s) = a0 - V phi(s) V^T (G a0 - b)
            lam, V = torch.linalg.eigh(G)
            lam = lam.clamp(min=0)
            gvec = (V.transpose(1, 2) @ ((G @ aa[..., None])[..., 0] - b)[..., None])[..., 0]
            nodes = torch.as_tensor(_LAYER_NODES, dtype=u.dtype, device=u.device)
            qw = torch.as_tensor(_LAYER_WEIGHTS, dtype=u.dtype, device=u.device)

            def flow(dt):
                # a and grad_u R at the quadrature nodes of [0, dt]
                h = (dt.to(u) / epsa)[:, None, None] * nodes[:, None]          # (B, S, 1) in t
                lh = lam[:, None, :] * h
                ph = torch.where(lh > 1e-12, -torch.expm1(-2 * lh) / lam[:, None, :].clamp(min=1e-300),
                                 2 * h)
                a_s = aa[:, None, :] - (ph * gvec[:, None, :]) @ V.transpose(1, 2)
                return a_s, _gu_hu(a_s, coup, eta, hessian=False)

            # the step bounds the displacement over the whole step: speed at every node of the
            # a-flow (a moving fast changes grad_u R), not only at the start
            for _ in range(200):
                a_s, g_s = flow(dtau)
                smax = g_s.abs().amax((1, 2)).cpu()
                bad = live_a & (dtau * smax > max_disp * eta * (1 + 1e-9))
                if not bool(bad.any()):
                    break
                shrink = (max_disp * eta / (dtau * smax).clamp(min=1e-300)).clamp(0.05, 0.9)
                dtau = torch.where(bad, dtau * shrink, dtau)
            last[act] = torch.where(live_a, dtau, last[act])
            grown[act] = grown[act] | live_a
            if bool((dtau > dt_rec).any()):     # land on the next record: shorten this step
                dtau = torch.minimum(dtau, dt_rec)
                a_s, g_s = flow(dtau)
            gbar = (qw[:, None] * g_s).sum(1)                 # mean of grad_u R over the step
            a_end = a_s[:, -1]
            hend = _gu_hu(a_end, coup, eta)[1]
        dt_dev = dtau.to(u)
        prev_u, prev_a = u, a
        # u: linearly implicit (diagonal) Euler, stable for the stiff neurons sitting on a jump,
        # with the mean of grad_u R along the a-flow and the Hessian at the end of the step
        ua = ua - dt_dev[:, None] * gbar / (1 + dt_dev[:, None] * hend.clamp(min=0))
        aa = a_end
        dv = ~live_a.to(u.device)[:, None]
        aa = torch.where(dv, aa.nan_to_num(0.0), aa)
        ua = torch.where(dv, ua.nan_to_num(0.0), ua)
        if full:
            u, a = ua, aa
        else:
            u, a = u.clone(), a.clone()
            u[act], a[act] = ua, aa
        tau[act] = ta + dtau
        steps += 1
    for i in rows[diverged].tolist():          # a diverged run repeats its last finite record
        k = int(nxt[i]) - 1                    # >= 0: every run records its finite start
        rec_u[i, k + 1:] = rec_u[i, k]
        rec_loss[i, k + 1:] = rec_loss[i, k]
    return TrainResult(grid.to(u), rec_u, good_a, rec_loss, steps, diverged.to(u.device),
                       nxt.clone())


def train_population(a0: torch.Tensor, u0: torch.Tensor, target: StepTarget, eta: float, eps,
                     tau_max: float, *, n_records: int = 200, max_disp: float = 0.25,
                     max_steps: int = 1_000_000) -> TrainResult:
    r"""The gradient flow of the exact population risk with two learning rates,

    .. math::

        \frac{da}{dt} = -\nabla_a R(a,u),\qquad \frac{du}{dt}=-\varepsilon\nabla_u R(a,u),

    which is the mean dynamics of the online SGD of the paper (its small-step
    limit), up to slow time :math:`\tau=\varepsilon t=\tau_{\max}`.

    Integrator (in :math:`\tau`, one step size per run, first order): the
    :math:`a`-flow is linear at frozen :math:`u`, :math:`\dot a=-2(Ga-b)`, and
    is integrated *exactly* over :math:`\Delta t=\Delta\tau/\varepsilon`
    (eigendecomposition of the Gram matrix :math:`G`), so the fast time scale
    puts no limit on the step.  :math:`u` takes a linearly implicit Euler step
    with the diagonal of :math:`\nabla_u^2R`, stable for the stiff neurons that
    sit on a jump, in which :math:`\nabla_uR` is its *mean along that
    a-flow* over the step (:math:`\nabla_uR` is a quadratic polynomial in
    :math:`a` at frozen :math:`u`; the mean is a Gauss--Legendre rule on
    geometrically graded pieces of the step, which resolves the boundary layer
    of a fast :math:`a`), and the Hessian diagonal is the one at the end of the
    step.  The step is the largest with :math:`\Delta\tau\,\max_j|\partial_{u_j}
    R|\le` ``max_disp`` :math:`\cdot\,\eta`, where the maximum is taken at every
    node of the a-flow over the step (a moving :math:`a` changes the speed of
    the neurons: from :math:`a=0`, where :math:`\nabla_uR=0`, the first step
    already moves them) and which is at most 4 times the previous step.  The
    records only shorten the step that would cross one, so that it lands on
    it; the trajectory does not depend on ``n_records`` beyond that (an error
    of order ``max_disp``).

    Parameters
    ----------
    a0, u0 : torch.Tensor
        Initial weights ``(B, m + 1)`` and positions ``(B, m)`` (or unbatched).
    target : StepTarget
    eta : float
        Width of the step, > 0.
    eps : float or torch.Tensor
        Ratio of the learning rates, > 0; a tensor gives one value per run.
    tau_max : float
        Final slow time, > 0.
    n_records : int
        Number of records, evenly spaced in slow time (``tau``).
    max_disp : float
        Largest displacement of a neuron per step, in units of :math:`\eta`.
    max_steps : int
        Give up (``ValueError``) beyond this many steps.

    Returns
    -------
    TrainResult
        A run whose state becomes non-finite is flagged in ``diverged`` and
        keeps its last finite state; ``recorded`` counts the records it
        computed (later ones repeat the last).

    Raises
    ------
    ValueError
        If an argument is invalid, the start is not finite, or the speed of
        the neurons shows that ``tau_max`` cannot be reached in ``max_steps``
        steps.
    """
    eta = _check_params(a0, u0, eta, "a0", "u0")
    target = _target(target, u0)
    tau_max = _checks.real(tau_max, "tau_max", positive=True)
    n_records = _checks.size(n_records, "n_records", minimum=2, maximum=10 ** 6)
    max_disp = _checks.real(max_disp, "max_disp", positive=True, minimum=1e-12)
    max_steps = _checks.size(max_steps, "max_steps")
    a, u = (a0[None], u0[None]) if u0.ndim == 1 else (a0, u0)
    _checks.elements(u.numel() * n_records, "n_records and u0")
    eps = _batch_eps(eps, u.shape[0], u)
    return _tau_integrate(a.clone(), u.clone(), target, eta, eps, tau_max, n_records, max_disp,
                          max_steps, limit=False)


def train_limit(u0: torch.Tensor, target: StepTarget, eta: float, tau_max: float, *,
                n_records: int = 200, max_disp: float = 0.25,
                max_steps: int = 1_000_000) -> TrainResult:
    r"""The :math:`\varepsilon\to0` limit at fixed :math:`\eta`: outer weights at
    their optimum :math:`a^*(u)` (:func:`optimal_outer`) and, in the slow time
    :math:`\tau`,

    .. math::

        \frac{du}{d\tau} = -\nabla_u R(a^*(u),u)

    (by the envelope theorem this is also :math:`-\nabla_u\min_a R(a,u)`),
    integrated with the same :math:`u`-steps as :func:`train_population`
    (:math:`\Delta\tau\,\max_j|\partial_{u_j}R|\le` ``max_disp``
    :math:`\cdot\,\eta`; the records only shorten the step that would cross
    one).
    """
    eta = _eta(eta)
    _checks.tensor(u0, "u0", ndim=(1, 2), nonempty=True)
    target = _target(target, u0)
    tau_max = _checks.real(tau_max, "tau_max", positive=True)
    n_records = _checks.size(n_records, "n_records", minimum=2, maximum=10 ** 6)
    max_disp = _checks.real(max_disp, "max_disp", positive=True, minimum=1e-12)
    max_steps = _checks.size(max_steps, "max_steps")
    _checks.elements(u0.numel() * n_records, "n_records and u0")
    u = (u0[None] if u0.ndim == 1 else u0).clone()
    a = u.new_zeros(u.shape[0], u.shape[1] + 1)
    eps = u.new_ones(u.shape[0])
    return _tau_integrate(a, u, target, eta, eps, tau_max, n_records, max_disp, max_steps,
                          limit=True, names="u0")


def heaviside_limit(u0: torch.Tensor, target: StepTarget, tau_max: float, *,
                    n_steps: int = 1000, n_records: int = 200) -> TrainResult:
    r"""The two-timescale limit when also :math:`\eta\to0` (sharp steps).

    For fixed positions the optimal network is the :math:`L^2` projection of
    :math:`f^*` on functions constant on the cells cut by the positions: each
    cell takes the mean :math:`c` of :math:`f^*` over it.  Moving :math:`u_j`
    by :math:`\delta` replaces :math:`c_j` by :math:`c_{j-1}` on a length
    :math:`\delta`, so (envelope theorem)

    .. math::

        \frac{du_j}{d\tau} = (c_j - f^*(u_j))^2 - (c_{j-1}-f^*(u_j))^2 .

    A neuron whose both cells are free of jumps does not move; the two neurons
    flanking a jump of height :math:`J` at distances :math:`d_L,d_R` move
    towards it at rates :math:`(Jd_R/(d_L+d_R))^2` and
    :math:`(Jd_L/(d_L+d_R))^2`.  Euler steps of size
    :math:`\tau_{\max}/n_{\text{steps}}`; a neuron that would step over a jump
    stops on it and stays there.  The loss is the sum over cells of
    :math:`\int (f^*-c)^2`, computed exactly.  (A small loop on the CPU in
    NumPy; results are returned on the device and dtype of ``u0``.)
    """
    _checks.tensor(u0, "u0", ndim=(1, 2), nonempty=True)
    target = _target(target, u0)
    tau_max = _checks.real(tau_max, "tau_max", positive=True, maximum=1e12)
    n_steps = _checks.size(n_steps, "n_steps")
    n_records = _checks.size(n_records, "n_records", minimum=2, maximum=n_steps + 1)
    _checks.budget(float(n_steps) * u0.numel() * (target.jumps.numel() + 8) * 20,
                   "n_steps (with the sizes of u0 and target)")
    _checks.elements(u0.numel() * n_records, "n_records and u0")
    U = (u0[None] if u0.ndim == 1 else u0).detach().cpu().double().numpy().copy()
    if not (np.diff(U, axis=1) >= 0).all():
        raise ValueError("u0 must be sorted along its last dimension")
    if not ((U >= 0) & (U <= 1)).all():
        raise ValueError("u0 must lie in [0, 1]")
    v = target.jumps.detach().cpu().double().numpy()
    vals = target.values.detach().cpu().double().numpy()
    knots = np.concatenate([[0.0], v])
    cum1 = np.concatenate([[0.0], np.cumsum(vals[:-1] * np.diff(knots))])
    cum2 = np.concatenate([[0.0], np.cumsum(vals[:-1] ** 2 * np.diff(knots))])

    def prim(x, cum, p):
        i = np.searchsorted(v, x, side="right")
        return cum[i] + vals[i] ** p * (x - knots[i])

    B, m = U.shape
    dt = tau_max / n_steps
    keep = np.zeros(n_steps + 1, dtype=bool)
    keep[np.linspace(0, n_steps, n_records).round().astype(int)] = True
    frozen = (U[..., None] == v).any(-1)
    us, losses = [], []
    for k in range(n_steps + 1):
        edges = np.concatenate([np.zeros((B, 1)), U, np.ones((B, 1))], 1)
        F1, F2 = prim(edges, cum1, 1), prim(edges, cum2, 2)
        width = np.diff(edges, axis=1)
        mass = np.diff(F1, axis=1)
        pos = width > 0
        c = np.where(pos, mass / np.where(pos, width, 1.0), vals[np.searchsorted(v, edges[:, :-1], side="right")])
        if keep[k]:
            us.append(U.copy())
            losses.append(np.maximum((np.diff(F2, axis=1) - np.where(pos, mass ** 2 / np.where(pos, width, 1.0), 0)).sum(1), 0))
        if k == n_steps:
            break
        fu = vals[np.searchsorted(v, U, side="right")]
        vel = np.where(frozen, 0.0, (c[:, 1:] - fu) ** 2 - (c[:, :-1] - fu) ** 2)
        new = U + dt * vel
        lo, hi = np.minimum(U, new), np.maximum(U, new)
        hit = (v > lo[..., None]) & (v <= hi[..., None]) & ~frozen[..., None]
        snapped = hit.any(-1)
        up = np.where(hit, v, np.inf).min(-1)
        down = np.where(hit, v, -np.inf).max(-1)
        U = np.where(snapped, np.where(vel > 0, up, down), new)
        frozen |= snapped
    like = dict(dtype=u0.dtype, device=u0.device)
    grid = torch.tensor(np.flatnonzero(keep) * dt, **like)
    return TrainResult(grid, torch.tensor(np.stack(us, 1), **like), torch.zeros(B, m + 1, **like),
                       torch.tensor(np.stack(losses, 1), **like), n_steps,
                       torch.zeros(B, dtype=torch.bool, device=u0.device),
                       torch.full((B,), len(us), dtype=torch.long))


def train_sgd(a0: torch.Tensor, u0: torch.Tensor, target: StepTarget, eta: float, eps: float,
              h: float, n_steps: int, *, generator: torch.Generator, batch_size: int = 1,
              noise: float = 1.0, n_records: int = 200) -> TrainResult:
    r"""Online SGD of the paper, replicate runs batched.

    Each step and each run draws ``batch_size`` fresh samples
    :math:`x\sim U[0,1]`, :math:`y=f^*(x)+\xi`, :math:`\xi\sim U[-\text{noise},
    \text{noise}]`, and updates, with :math:`\ell=(f(x)-y)^2` averaged over the
    batch (``batch_size=1`` is the paper's algorithm),

    .. math::

        a\leftarrow a-h\nabla_a\ell,\qquad u\leftarrow u-h\varepsilon\nabla_u\ell,
        \qquad \nabla_{u_j}\ell = -\frac{2a_j}{\eta}(f(x)-y)\,\sigma'\Big(\frac{x-u_j}{\eta}\Big),

    with the exact derivative :math:`\sigma'` (:func:`smooth_step_grad`).  The
    population risk is recorded ``n_records`` times by exact quadrature.  A run
    that produces non-finite values is flagged ``diverged`` and frozen at its
    last finite state.
    """
    eta = _check_params(a0, u0, eta, "a0", "u0")
    target = _target(target, u0)
    eps = _checks.real(eps, "eps", positive=True)
    h = _checks.real(h, "h", positive=True)
    n_steps = _checks.size(n_steps, "n_steps")
    batch_size = _checks.size(batch_size, "batch_size")
    noise = _checks.real(noise, "noise", nonnegative=True)
    n_records = _checks.size(n_records, "n_records", minimum=2, maximum=n_steps + 1)
    generator = _checks.generator(generator)
    _checks.elements(min(4096, n_steps) * u0.numel() // max(u0.shape[-1], 1) * batch_size
                     * (u0.shape[-1] + 2), "n_steps, batch_size and u0")
    _checks.budget(float(n_steps) * u0.numel() * batch_size * 30 + 2e3 * n_steps,
                   "n_steps (with batch_size and the size of u0)")
    a, u = (a0[None], u0[None]) if u0.ndim == 1 else (a0, u0)
    a, u = a.clone(), u.clone()
    B = u.shape[0]
    keep = np.linspace(0, n_steps, n_records).round().astype(int)
    is_rec = np.zeros(n_steps + 1, dtype=bool)
    is_rec[keep] = True
    vals, jumps = target.values.to(u), target.jumps.to(u)
    us, losses, taus = [], [], []
    diverged = torch.zeros(B, dtype=torch.bool, device=u.device)
    recorded = torch.zeros(B, dtype=torch.long, device=u.device)
    last_a, last_u = a.clone(), u.clone()
    chunk = 4096
    for k in range(n_steps + 1):
        if is_rec[k]:
            loss_k = population_loss_grad(a, u, target, eta, grad=False) if k == 0 else \
                _population_loss(a, u, target, eta)
            ok = torch.isfinite(u).all(1) & torch.isfinite(a).all(1) & (u.abs() < 1e6).all(1) \
                & torch.isfinite(loss_k)
            if k == 0 and not bool(ok.all()):
                raise ValueError("a0 and u0 give a non-finite risk at the start: their values are "
                                 "out of range")
            newly = ~ok & ~diverged
            if bool(newly.any()):   # freeze at the last finite record
                diverged |= newly
                a = torch.where(diverged[:, None], last_a, a)
                u = torch.where(diverged[:, None], last_u, u)
                loss_k = torch.where(diverged, losses[-1], loss_k)
            recorded += (~diverged).long()
            last_a, last_u = a.clone(), u.clone()
            us.append(last_u)
            losses.append(loss_k)
            taus.append(k * h * eps)
        if k == n_steps:
            break
        j = k % chunk
        if j == 0:
            n = min(chunk, n_steps - k)
            xs = torch.rand(n, B, batch_size, generator=generator, dtype=u.dtype).to(u.device)
            xi = (2 * torch.rand(n, B, batch_size, generator=generator, dtype=u.dtype) - 1).to(u.device)
            ys = vals[torch.searchsorted(jumps, xs, right=True)] + noise * xi
        x, y = xs[j], ys[j]
        z = (x[:, :, None] - u[:, None, :]) / eta
        s = _sstep(z)
        r = a[:, :1] + (s * a[:, None, 1:]).sum(-1) - y                    # (B, b)
        ga = torch.cat([r.mean(1, keepdim=True), (r[:, :, None] * s).mean(1)], 1) * 2
        gu = -2 * a[:, 1:] / eta * (r[:, :, None] * _sstep_grad(z)).mean(1)
        live = ~diverged[:, None]           # a frozen run stays exactly at its last finite state
        a = torch.where(live, a - h * ga, a)
        u = torch.where(live, u - (h * eps) * gu, u)
    res_u = torch.stack(us, 1)
    res_loss = torch.stack(losses, 1)
    return TrainResult(torch.tensor(taus, dtype=u.dtype), res_u, a, res_loss, n_steps, diverged,
                       recorded.cpu())


# --------------------------------------------------------------------------- fixed-sample experiments (Fig. 6 / App. C)


@dataclass
class FixedSampleResult:
    """Final state of gradient descent on a fixed sample.

    Attributes
    ----------
    a, u : torch.Tensor
        ``(S, K, d)`` outer weights and positions of the ``S`` runs.
    rmse : torch.Tensor
        ``(S,)`` root-mean-square training error :math:`\\|f(X)-y\\|_2/\\sqrt n`.
    history : torch.Tensor
        ``(S, epochs)`` the training objective :math:`\\|f(X)-y\\|_2/n`.
    """

    a: torch.Tensor
    u: torch.Tensor
    rmse: torch.Tensor
    history: torch.Tensor


def additive_step_problem(d: int, n: int, *, generator: torch.Generator,
                          thresholds=(0.3, 0.5, 0.7), dtype=torch.float32):
    r"""The additive piecewise-constant target of the paper's Appendix C:
    :math:`y=\sum_{i=1}^d\sum_t \mathbb 1(x_i>t)` for thresholds
    :math:`t\in\{0.3,0.5,0.7\}` on ``n`` points :math:`x\sim U[0,1]^d`.
    Returns ``(X, y)``."""
    d = _checks.size(d, "d")
    n = _checks.size(n, "n")
    _checks.elements(n * d * 4, "n and d")
    generator = _checks.generator(generator)
    dtype = _checks.dtype(dtype)
    thresholds = _checks.reals(thresholds, "thresholds")
    X = torch.rand(n, d, generator=generator, dtype=dtype)
    th = torch.tensor(thresholds, dtype=dtype)
    y = (X[:, :, None] > th).to(dtype).sum((1, 2))
    return X, y


def relu_teacher_problem(n: int, *, generator: torch.Generator, kinks=(0.3, 0.5, 0.7),
                         weights=(1.0, -2.0, 3.0), dtype=torch.float32):
    r"""The univariate ReLU teacher of the paper's Appendix C,
    :math:`y=\sum_k w_k\,\mathrm{relu}(x-t_k)` with kinks 0.3, 0.5, 0.7 and
    weights 1, -2, 3, on ``n`` points :math:`x\sim U[0,1]`.  Returns
    ``(X, y)`` with ``X`` of shape ``(n, 1)``."""
    n = _checks.size(n, "n")
    generator = _checks.generator(generator)
    dtype = _checks.dtype(dtype)
    kinks = _checks.reals(kinks, "kinks")
    weights = _checks.reals(weights, "weights")
    if len(kinks) != len(weights):
        raise ValueError(f"kinks and weights must have the same length (one weight per kink), "
                         f"got {len(kinks)} and {len(weights)}")
    if not kinks:
        raise ValueError("kinks must hold at least one kink")
    X = torch.rand(n, 1, generator=generator, dtype=dtype)
    y = sum(w * torch.relu(X[:, 0] - t) for t, w in zip(kinks, weights))
    return X, y


def train_fixed_sample(X: torch.Tensor, y: torch.Tensor, *, units: int, activation: str,
                       lr_a: float, lr_u: float, epochs: int, runs: int,
                       generator: torch.Generator, eta: float = 0.01, engine: str = "auto",
                       threads: int | None = None) -> FixedSampleResult:
    r"""Full-batch gradient descent on a fixed sample, ``runs`` independent
    initialisations batched, for the additive model of the paper's Appendix C

    .. math::

        f(x) = \sum_{k=1}^{K}\sum_{i=1}^{d} a_{k,i}\,\phi(x_i-u_{k,i}),

    with :math:`\phi=\sigma(\cdot/\eta)` (``activation="step"``) or
    :math:`\phi=\mathrm{relu}` (``"relu"``), no bias, :math:`u\sim U[0,1]`,
    :math:`a\sim 3\,U[0,1]`, objective :math:`\|f(X)-y\|_2/n` (as in the
    authors' code), learning rates ``lr_a`` on :math:`a` and ``lr_u`` on
    :math:`u`.

    Two engines compute the same thing.  ``engine="torch"`` evaluates the
    ``(runs, n, units, d)`` tensor of activations and differentiates it by
    autograd, :math:`O(n\,\text{units}\,d)` per epoch, in ``X``'s dtype and
    on its device.  ``engine="compiled"`` (float64 CPU tensors only) sorts each
    coordinate of the sample once and computes the same objective and
    gradient exactly from running sums over the sorted points: the smooth step
    is exactly 0 or 1 outside its window of width :math:`\eta` and the ReLU is
    linear on each side of its kink, so an epoch costs
    :math:`O(nd+\text{units}\,d\,(n\eta+\log n))`; only the order of the
    floating-point sums differs (the tests check agreement to ~1e-12).  Runs
    are spread over ``threads`` threads (default: the cores available); the
    results do not depend on it.  ``"auto"`` (default) takes the compiled engine
    for float64 CPU tensors and the torch engine otherwise, so float32 calls
    give the results they always gave.  The initial draws are the same for both.
    """
    _checks.tensor(X, "X", ndim=2, nonempty=True)
    _checks.tensor(y, "y", ndim=1)
    _checks.matching(y, X, "y", "X")
    _checks.same_rows(X, y, "X", "y")
    units = _checks.size(units, "units")
    _checks.choice(activation, "activation", {"step", "relu"})
    lr_a = _checks.real(lr_a, "lr_a", positive=True)
    lr_u = _checks.real(lr_u, "lr_u", nonnegative=True)
    epochs = _checks.size(epochs, "epochs")
    runs = _checks.size(runs, "runs")
    eta = _eta(eta)
    generator = _checks.generator(generator)
    _checks.choice(engine, "engine", {"auto", "torch", "compiled"})
    if threads is not None:
        threads = _checks.integer(threads, "threads", minimum=1, maximum=1024)
    compiled_ok = X.dtype == torch.float64 and X.device.type == "cpu"
    if engine == "auto":
        engine = "compiled" if compiled_ok else "torch"
    elif engine == "compiled" and not compiled_ok:
        raise ValueError(f"engine='compiled' needs X of dtype float64 on the CPU, got {X.dtype} on {X.device}")
    n, d = X.shape
    if engine == "compiled":
        _checks.elements(runs * epochs + 8 * n * d + 4 * runs * units * d, "runs, epochs and X")
        width = 1.0 if activation == "relu" else min(1.0, eta)
        _checks.budget(epochs * runs * (6.0 * n * d + 3.0 * units * d * (n * width + 2 + math.log2(n + 1)))
                       + 1e2 * runs, "epochs (with runs, units and the size of X)")
    else:
        _checks.elements(runs * n * units * d * 3, "runs, units and X")
        _checks.budget(12.0 * epochs * runs * n * units * d + 1e3 * epochs,
                       "epochs (with runs, units and the size of X)")
    u = torch.rand(runs, units, d, generator=generator, dtype=X.dtype).to(X.device).requires_grad_()
    a = (3 * torch.rand(runs, units, d, generator=generator, dtype=X.dtype)).to(X.device).requires_grad_()
    if engine == "compiled":
        return _train_fixed_compiled(X, y, a.detach(), u.detach(), activation=activation, eta=eta,
                                     lr_a=lr_a, lr_u=lr_u, epochs=epochs, threads=threads)
    phi = (lambda z: _sstep(z / eta)) if activation == "step" else torch.relu
    hist = X.new_empty(runs, epochs)
    for e in range(epochs):
        pred = (a[:, None] * phi(X[None, :, None, :] - u[:, None])).sum((2, 3))   # (S, n)
        obj = (pred - y).norm(dim=1) / n
        hist[:, e] = obj.detach()
        ga, gu = torch.autograd.grad(obj.sum(), (a, u))
        with torch.no_grad():
            a -= lr_a * ga
            u -= lr_u * gu
        if not bool(torch.isfinite(obj).all()):
            if e == 0:
                raise ValueError("the initial objective is not finite: X or y out of range")
            raise Diverged(f"train_fixed_sample diverged at epoch {e}; lower lr_a (= {lr_a:g}) "
                           f"or lr_u (= {lr_u:g})")
    with torch.no_grad():
        pred = (a[:, None] * phi(X[None, :, None, :] - u[:, None])).sum((2, 3))
        rmse = (pred - y).norm(dim=1) / math.sqrt(n)
    if not (bool(torch.isfinite(rmse).all()) and bool(torch.isfinite(a).all())
            and bool(torch.isfinite(u).all())):       # the last update is checked too
        raise Diverged(f"train_fixed_sample diverged at its last update (epoch {epochs - 1}); "
                       f"lower lr_a (= {lr_a:g}) or lr_u (= {lr_u:g})")
    return FixedSampleResult(a.detach(), u.detach(), rmse, hist)


def _train_fixed_compiled(X, y, a0, u0, *, activation, eta, lr_a, lr_u, epochs, threads):
    import os

    from mflib import _fixed_sample

    if threads is None:
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    Xn = X.detach().numpy()
    yn = y.detach().numpy()
    if not (np.isfinite(Xn).all() and np.isfinite(yn).all()):
        raise ValueError("the initial objective is not finite: X or y out of range")
    a, u, rmse, hist, div = _fixed_sample.train(Xn, yn, a0.numpy(), u0.numpy(), relu=activation == "relu",
                                                eta=eta, lr_a=lr_a, lr_u=lr_u, epochs=epochs, threads=threads)
    if (div >= 0).any():
        e = int(div[div >= 0].min())
        if e == 0:
            raise ValueError("the initial objective is not finite: X or y out of range")
        raise Diverged(f"train_fixed_sample diverged at epoch {e}; lower lr_a (= {lr_a:g}) "
                       f"or lr_u (= {lr_u:g})")
    if not (np.isfinite(rmse).all() and np.isfinite(a).all() and np.isfinite(u).all()):
        raise Diverged(f"train_fixed_sample diverged at its last update (epoch {epochs - 1}); "
                       f"lower lr_a (= {lr_a:g}) or lr_u (= {lr_u:g})")
    return FixedSampleResult(torch.from_numpy(a), torch.from_numpy(u), torch.from_numpy(rmse),
                             torch.from_numpy(hist))
