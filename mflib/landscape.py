r"""The loss landscape of a tiny two-layer network: saddle at zero, plateaux, slices.

The network has :math:`m` hidden units and no output bias,

.. math::

   h(w, x) = \sum_{j=1}^m a_j\,\sigma(\langle b_j, x\rangle), \qquad
   w = (a, B) \in \mathbb R^m \times \mathbb R^{m\times d},

(a first-layer bias is an input coordinate equal to 1), and is trained on the
square loss :math:`F(w) = \frac1{2n}\sum_i (h(w, x_i) - y_i)^2`.

When :math:`\sigma(0) = 0` the origin is a critical point, and its Hessian is
(Chizat, 2019, lecture 1: "saddle point at 0 if :math:`L \ge 2`")

.. math::

   \nabla^2 F(0) = -\sigma'(0)
   \begin{pmatrix} 0 & I_m \otimes v^\top \\ I_m \otimes v & 0 \end{pmatrix},
   \qquad v = \frac1n\sum_{i=1}^n y_i x_i,

with eigenvalues :math:`\pm\sigma'(0)\lVert v\rVert` (each :math:`m` times) and
0: a strict saddle as soon as :math:`\sigma'(0)v \neq 0`
(:func:`saddle_curvature`).

:func:`slice_risk` evaluates :math:`F` on the plane
:math:`(\alpha, \beta) \mapsto (\alpha a, \beta B)`, which holds the saddle
:math:`(0, 0)`, the point :math:`(1, 1)` and, for odd :math:`\sigma`, its
mirror :math:`(-1, -1)` computing the same function.
"""

from __future__ import annotations

import torch

from mflib import _checks
from mflib.dynamics import loop

__all__ = ["two_layer", "risk", "slice_risk", "slice_function", "hessian",
           "saddle_curvature", "gradient_descent"]


def _params(a, B, x, na="a", nb="B"):
    a = _checks.tensor(a, na, ndim=1, nonempty=True)
    B = _checks.tensor(B, nb, ndim=2)
    x = _checks.tensor(x, "x", ndim=2, nonempty=True)
    _checks.matching(B, a, nb, na)
    _checks.matching(x, a, "x", na)
    if B.shape[0] != a.shape[0]:
        raise ValueError(f"{nb} must have one row per hidden unit ({a.shape[0]}), "
                         f"got shape {tuple(B.shape)}")
    if B.shape[1] != x.shape[1]:
        raise ValueError(f"{nb} must have {x.shape[1]} columns (the input dimension of x), "
                         f"got shape {tuple(B.shape)}")
    return a, B, x


def _activation(activation):
    _checks.function(activation, "activation")
    return activation


def _data(a, B, x, y, activation, na="a", nb="B"):
    a, B, x = _params(a, B, x, na, nb)
    y = _checks.tensor(y, "y", ndim=1)
    _checks.matching(y, x, "y", "x")
    _checks.same_rows(x, y, "x", "y")
    return a, B, x, y, _activation(activation)


def _out(v, what, activation, names="a, B, x, y or activation"):
    if not isinstance(v, torch.Tensor):
        raise TypeError(f"activation must map tensors to tensors, got {type(v).__name__}")
    return _checks.finite_result(v, what, names + " (their scale)")


def two_layer(a: torch.Tensor, B: torch.Tensor, x: torch.Tensor,
              activation=torch.tanh) -> torch.Tensor:
    r"""Outputs :math:`h(w, x_i) = \sum_j a_j\sigma(\langle b_j, x_i\rangle)`.

    Parameters
    ----------
    a : torch.Tensor
        Output weights, shape ``(m,)``.
    B : torch.Tensor
        Input weights, shape ``(m, d)`` (row :math:`j` is :math:`b_j`).
    x : torch.Tensor
        Inputs, shape ``(n, d)``.
    activation : callable
        :math:`\sigma`, applied elementwise (default ``torch.tanh``).

    Returns
    -------
    torch.Tensor
        Shape ``(n,)``.
    """
    a, B, x = _params(a, B, x)
    return _out(_activation(activation)(x @ B.T) @ a, "the output", activation)


def _risk(a, B, x, y, activation):
    return 0.5 * ((activation(x @ B.T) @ a - y) ** 2).mean()


def risk(a: torch.Tensor, B: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
         activation=torch.tanh) -> torch.Tensor:
    r"""Square-loss empirical risk :math:`F(a, B) = \frac1{2n}\sum_i (h(w, x_i) - y_i)^2`."""
    a, B, x, y, activation = _data(a, B, x, y, activation)
    return _out(_risk(a, B, x, y, activation), "the risk", activation)


def slice_risk(a: torch.Tensor, B: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
               alphas: torch.Tensor, betas: torch.Tensor, activation=torch.tanh) -> torch.Tensor:
    r"""The risk on the plane :math:`F(\alpha a, \beta B)`, on a grid.

    Parameters
    ----------
    a, B : torch.Tensor
        Directions of the slice, shapes ``(m,)`` and ``(m, d)``.
    x, y : torch.Tensor
        Data, shapes ``(n, d)`` and ``(n,)``.
    alphas, betas : torch.Tensor
        1-D grids of the two coordinates.
    activation : callable
        :math:`\sigma` (default ``torch.tanh``).

    Returns
    -------
    torch.Tensor
        Shape ``(len(alphas), len(betas))``; entry ``[i, j]`` is
        :math:`F(\alpha_i a, \beta_j B)`.
    """
    a, B, x, y, activation = _data(a, B, x, y, activation)
    alphas = _checks.tensor(alphas, "alphas", ndim=1)
    betas = _checks.tensor(betas, "betas", ndim=1)
    _checks.matching(alphas, a, "alphas", "a")
    _checks.matching(betas, a, "betas", "a")
    _checks.elements(alphas.numel() * betas.numel() * x.shape[0] + betas.numel() * x.shape[0] * a.numel(),
                     "alphas, betas and x")
    pre = x @ B.T                                              # (n, m)
    g = activation(betas[:, None, None] * pre) @ a             # (nb, n)
    out = alphas[:, None, None] * g[None, :, :] - y            # (na, nb, n)
    return _out(0.5 * (out ** 2).mean(dim=-1), "the risk on the slice", activation,
                "a, B, x, y, alphas, betas or activation")


def slice_function(a: torch.Tensor, B: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                   activation=torch.tanh):
    r"""Return :math:`t \mapsto F(t_0 a, t_1 B)` for :math:`t \in \mathbb R^2`, a function
    that ``torch.func.grad`` and ``torch.func.hessian`` can differentiate."""
    a, B, x, y, activation = _data(a, B, x, y, activation)

    def f(t):
        return _risk(t[0] * a, t[1] * B, x, y, activation)

    return f


def hessian(a: torch.Tensor, B: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
            activation=torch.tanh) -> torch.Tensor:
    r"""Hessian of :math:`F` at :math:`(a, B)` in the coordinates
    :math:`(a_1, \dots, a_m, b_{11}, \dots, b_{md})`, by ``torch.func.hessian``.

    Returns
    -------
    torch.Tensor
        Shape ``(m + m d, m + m d)``.
    """
    a, B, x, y, activation = _data(a, B, x, y, activation)
    m, d = B.shape
    _checks.elements((m + m * d) ** 2, "a and B")

    def f(theta):
        return _risk(theta[:m], theta[m:].reshape(m, d), x, y, activation)

    return _out(torch.func.hessian(f)(torch.cat([a, B.reshape(-1)]).detach()), "the Hessian",
                activation)


def saddle_curvature(x: torch.Tensor, y: torch.Tensor, slope: float = 1.0) -> float:
    r"""The eigenvalue magnitude :math:`\sigma'(0)\lVert\frac1n\sum_i y_i x_i\rVert` of
    :math:`\nabla^2 F(0)` (see the module docstring).

    Parameters
    ----------
    x, y : torch.Tensor
        Data, shapes ``(n, d)`` and ``(n,)``.
    slope : float
        :math:`\sigma'(0)` (1 for ``tanh``).
    """
    x = _checks.tensor(x, "x", ndim=2, nonempty=True)
    y = _checks.tensor(y, "y", ndim=1)
    _checks.matching(y, x, "y", "x")
    _checks.same_rows(x, y, "x", "y")
    slope = _checks.real(slope, "slope")
    return _checks.finite_result(abs(slope) * float((y @ x / x.shape[0]).norm()), "the curvature",
                                 "x, y or slope (their scale)")


class _GradientDescent(loop.Engine):
    """Full-batch gradient descent on :math:`F`, gradients by autograd."""

    initial_error = "the initial risk is not finite: a0, B0, x, y or activation (their scale)"

    def __init__(self, x, y, activation, lr):
        self.x, self.y, self.activation, self.dt = x, y, activation, lr

    def _step(self, state, k):
        a, B = state
        with torch.enable_grad():
            a_ = a.detach().requires_grad_(True)
            B_ = B.detach().requires_grad_(True)
            ga, gB = torch.autograd.grad(_risk(a_, B_, self.x, self.y, self.activation), (a_, B_))
        a.add_(ga, alpha=-self.dt)
        B.add_(gB, alpha=-self.dt)
        return state

    def _observe(self, state, k):
        with torch.no_grad():
            return {"risk": _risk(state[0], state[1], self.x, self.y, self.activation)}


def gradient_descent(a0: torch.Tensor, B0: torch.Tensor, x: torch.Tensor, y: torch.Tensor, *,
                     lr: float, steps: int, activation=torch.tanh,
                     record_every: int = 1, on_diverge: str = "flag") -> loop.Trajectory:
    r"""Full-batch gradient descent on :math:`F`:
    :math:`w_{k+1} = w_k - \eta\nabla F(w_k)` (gradients by autograd), run by
    the library's one loop (:func:`mflib.dynamics.loop.integrate`).

    Parameters
    ----------
    a0, B0 : torch.Tensor
        Initial point, shapes ``(m,)`` and ``(m, d)``.
    x, y : torch.Tensor
        Data, shapes ``(n, d)`` and ``(n,)``.
    lr : float
        :math:`\eta > 0`.
    steps : int
        Number of updates (at least 1).
    activation : callable
        :math:`\sigma` (default ``torch.tanh``).
    record_every : int
        Record :math:`F` every this many steps (and at the last step).
    on_diverge : str
        ``"flag"`` or ``"raise"``, see :func:`mflib.dynamics.loop.integrate`.

    Returns
    -------
    mflib.dynamics.loop.Trajectory
        ``a``, ``B`` (the last finite iterate), ``risk`` (:math:`F` at the
        recorded ``steps``), ``diverged``.
    """
    a0, B0, x, y, activation = _data(a0, B0, x, y, activation, "a0", "B0")
    lr = _checks.real(lr, "lr", positive=True)
    steps = _checks.size(steps, "steps")
    record_every = _checks.size(record_every, "record_every")
    _checks.choice(on_diverge, "on_diverge", loop.DIVERGENCE_POLICIES)
    _checks.budget(8.0 * steps * (x.shape[0] * B0.numel() + 100), "steps and x")
    _out(_risk(a0.detach(), B0.detach(), x, y, activation), "the initial risk", activation,
         "a0, B0, x, y or activation")
    return loop.integrate(_GradientDescent(x, y, activation, lr), (a0.detach(), B0.detach()),
                          steps=steps, record=loop.every(steps, record_every, "record_every"),
                          on_diverge=on_diverge,
                          aliases={"a": lambda t: t.state[0], "B": lambda t: t.state[1]})
