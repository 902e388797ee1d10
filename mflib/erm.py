r"""Empirical risk minimisation for linear predictors: objective, closed form, GD and SGD.

For a linear predictor :math:`h(w, x) = \langle w, x\rangle` and a loss from
:mod:`mflib.losses`, the regularised empirical risk is

.. math::

   F(w) = \frac1n \sum_{i=1}^n \operatorname{loss}\bigl(y_i, \langle w, x_i\rangle\bigr)
          + \frac{\lambda}{2}\lVert w\rVert^2 .

It is convex for every convex loss, :math:`\lambda`-strongly convex when
:math:`\lambda > 0`, and for the square loss its minimiser is the ridge
estimator (:func:`ridge`)

.. math::

   w^\star_\lambda = \Bigl(\tfrac1n X^\top X + \lambda I\Bigr)^{-1} \tfrac1n X^\top y .

:func:`sgd` runs (stochastic) gradient descent with ``torch.optim.SGD``:
full batches give gradient descent, batches of size :math:`b` drawn uniformly
with replacement give SGD, and a step :math:`\eta_k = \eta_0/(1 + k/k_0)^{p}`
gives the decreasing schedules of Robbins and Monro (1951); see Bottou,
Curtis and Nocedal (2018) for the convergence theory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from mflib import _checks
from mflib import losses as _losses

__all__ = ["predict", "objective", "ridge", "smoothness", "Run", "sgd", "SGDMoments", "sgd_moments",
           "sgd_floor"]


def _xy(x, y):
    x = _checks.tensor(x, "x", ndim=2, nonempty=True)
    y = _checks.tensor(y, "y", ndim=1)
    _checks.matching(y, x, "y", "x")
    _checks.same_rows(x, y, "x", "y")
    return x, y


def _check_labels(y, loss):
    if loss.task == "classification" and not bool(((y == 1) | (y == -1)).all()):
        raise ValueError(f"y must hold classification labels in {{-1, +1}} for the {loss.name} loss")


def _w(w, x, name="w"):
    p = x.shape[1]
    w = _checks.tensor(w, name, ndim=(1, 2))
    _checks.matching(w, x, name, "x")
    if w.shape[-1] != p:
        raise ValueError(f"{name} must have {p} entries in its last dimension (one per input "
                         f"feature: a column of x), got shape {tuple(w.shape)}")
    return w


def predict(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    r"""Linear predictions :math:`\langle w, x_i\rangle`.

    Parameters
    ----------
    w : torch.Tensor
        Shape ``(p,)``, or ``(k, p)`` for ``k`` parameters at once.
    x : torch.Tensor
        Inputs (features), shape ``(n, p)``.

    Returns
    -------
    torch.Tensor
        Shape ``(n,)``, or ``(k, n)``.
    """
    x = _checks.tensor(x, "x", ndim=2)
    w = _w(w, x)
    return w @ x.T


def _objective(w, x, y, loss, lam):
    reg = 0.5 * lam * (w ** 2).sum(dim=-1)
    return loss.raw_value(y, w @ x.T).mean(dim=-1) + reg


def _gradient(w, x, y, loss, lam):
    # closed-form gradient of a loss composed with a linear predictor:
    # (1/b) X^T loss'(y, Xw) + lam w; the same (sub)gradient as autograd
    return x.T @ loss.raw_derivative(y, x @ w) / x.shape[0] + lam * w


def objective(w: torch.Tensor, x: torch.Tensor, y: torch.Tensor, *, loss="square",
              lam: float = 0.0) -> torch.Tensor:
    r"""Regularised empirical risk
    :math:`F(w) = \frac1n\sum_i \operatorname{loss}(y_i, \langle w, x_i\rangle) + \frac\lambda2\lVert w\rVert^2`.

    Parameters
    ----------
    w : torch.Tensor
        Shape ``(p,)`` or ``(k, p)`` (then ``k`` values are returned).
    x : torch.Tensor
        Shape ``(n, p)``.
    y : torch.Tensor
        Shape ``(n,)``.
    loss : str or mflib.losses.Loss
        A name in :data:`mflib.losses.LOSSES`.
    lam : float
        Regularisation strength :math:`\lambda \ge 0`.
    """
    x, y = _xy(x, y)
    w = _w(w, x)
    loss = _losses.get(loss)
    lam = _checks.real(lam, "lam", nonnegative=True)
    _check_labels(y, loss)
    return _checks.finite_result(_objective(w, x, y, loss, lam), "the objective",
                                 "w, x, y or lam (their scale)")


def ridge(x: torch.Tensor, y: torch.Tensor, lam: float) -> torch.Tensor:
    r"""Minimiser of the square-loss objective :func:`objective` (closed form).

    .. math::

       w^\star_\lambda = \Bigl(\tfrac1n X^\top X + \lambda I\Bigr)^{-1}\tfrac1n X^\top y,

    solved with a Cholesky factorisation when :math:`\lambda > 0`; for
    :math:`\lambda = 0` the least-squares solution of minimal norm
    (``torch.linalg.lstsq``).

    Parameters
    ----------
    x : torch.Tensor
        Shape ``(n, p)``.
    y : torch.Tensor
        Shape ``(n,)``.
    lam : float
        :math:`\lambda \ge 0`.
    """
    x, y = _xy(x, y)
    lam = _checks.real(lam, "lam", nonnegative=True)
    n, p = x.shape
    names = "x, y or lam (their scale)"
    if lam == 0.0:
        driver = "gelsd" if x.device.type == "cpu" else None
        return _checks.finite_result(torch.linalg.lstsq(x, y[:, None], driver=driver).solution[:, 0],
                                     "the least-squares solution", names)
    a = x.T @ x / n + lam * torch.eye(p, dtype=x.dtype, device=x.device)
    _checks.finite_result(a, "X^T X / n + lam I", names)
    chol, info = torch.linalg.cholesky_ex(a)
    if int(info) != 0:
        raise ValueError(f"X^T X / n + lam I is not numerically positive definite: {names}")
    return _checks.finite_result(torch.cholesky_solve((x.T @ y / n)[:, None], chol)[:, 0],
                                 "the ridge solution", names)


def smoothness(x: torch.Tensor, *, loss="square", lam: float = 0.0) -> tuple[float, float]:
    r"""Smoothness :math:`L` and strong-convexity :math:`\mu` constants of :func:`objective`.

    With :math:`\Sigma = \frac1n X^\top X` and :math:`c` the curvature bound of
    the loss (:attr:`mflib.losses.Loss.curvature`: 1 for square, 1/4 for
    logistic),

    .. math::

       L = c\,\lambda_{\max}(\Sigma) + \lambda, \qquad
       \mu = \lambda + \lambda_{\min}(\Sigma)\ \text{(square loss)}, \quad
       \mu = \lambda\ \text{(other losses)}.

    For the hinge loss, which is not smooth, :math:`L = \infty`.

    Returns
    -------
    (float, float)
        ``(L, mu)``.
    """
    x = _checks.tensor(x, "x", ndim=2, nonempty=True)
    loss = _losses.get(loss)
    lam = _checks.real(lam, "lam", nonnegative=True)
    cov = _checks.finite_result(x.T @ x / x.shape[0], "X^T X / n", "x (its scale)")
    eig = torch.linalg.eigvalsh(cov)
    mu = lam + (max(float(eig[0]), 0.0) if loss.name == "square" else 0.0)
    if not loss.smooth:
        return math.inf, mu
    return loss.curvature * float(eig[-1]) + lam, mu


@dataclass
class Run:
    r"""Trajectory of :func:`sgd`.

    Attributes
    ----------
    w : torch.Tensor
        Last (finite) iterate, shape ``(p,)``.
    steps : torch.Tensor
        Recorded step numbers :math:`k` (``int64``), starting with 0.
    grad_evals : torch.Tensor
        Number of per-sample gradients computed up to each recorded step
        (:math:`k \cdot b`; GD costs :math:`n` per step).
    objective : torch.Tensor
        Full objective :math:`F(w_k)` at the recorded steps.
    iterates : torch.Tensor
        The recorded iterates, shape ``(len(steps), p)``.
    diverged : bool
        True if the run produced non-finite values; the records then stop at
        the last finite recorded step.
    """

    w: torch.Tensor
    steps: torch.Tensor
    grad_evals: torch.Tensor
    objective: torch.Tensor
    iterates: torch.Tensor
    diverged: bool


def sgd(x: torch.Tensor, y: torch.Tensor, *, loss="square", lam: float = 0.0, lr: float,
        steps: int, batch_size: int | None = None, decay: float | None = None,
        power: float = 1.0, w0: torch.Tensor | None = None,
        generator: torch.Generator | None = None, record_every: int = 1) -> Run:
    r"""(Stochastic) gradient descent on :func:`objective` with ``torch.optim.SGD``.

    .. math::

       w_{k+1} = w_k - \eta_k\Bigl(\frac1b\sum_{i\in B_k}\nabla_w
                 \operatorname{loss}(y_i, \langle w_k, x_i\rangle) + \lambda w_k\Bigr),
       \qquad \eta_k = \frac{\eta_0}{(1 + k/k_0)^{p}},

    where :math:`B_k` is the whole sample (gradient descent, ``batch_size=None``)
    or :math:`b` indices drawn uniformly with replacement (SGD), and
    :math:`\eta_k = \eta_0` when ``decay`` (:math:`k_0`) is ``None``.  Where
    the loss has a kink (hinge), the subgradient of
    :func:`mflib.losses.hinge_derivative` is used.  The gradient of a loss
    composed with a linear predictor is
    :math:`\frac1b X_B^\top \operatorname{loss}'(y_B, X_B w) + \lambda w`, computed
    in closed form (no autograd graph per step; the tests compare it with
    autograd) and handed to ``torch.optim.SGD``.

    Parameters
    ----------
    x, y : torch.Tensor
        Inputs ``(n, p)`` and labels ``(n,)``.
    loss : str or mflib.losses.Loss
        A name in :data:`mflib.losses.LOSSES`.
    lam : float
        :math:`\lambda \ge 0`.
    lr : float
        :math:`\eta_0 > 0`.
    steps : int
        Number of updates (at least 1).
    batch_size : int, optional
        :math:`b`; ``None`` for full-batch gradient descent.
    decay : float, optional
        :math:`k_0 > 0` of the decreasing schedule; ``None`` for a constant step.
    power : float
        :math:`p > 0` of the decreasing schedule.
    w0 : torch.Tensor, optional
        Initial point, shape ``(p,)``; zero by default.
    generator : torch.Generator, optional
        CPU generator for the batches (``mflib.generator(0)`` if omitted).
    record_every : int
        Record the objective and the iterate every this many steps (and at the
        first and last step).

    Returns
    -------
    Run
    """
    x, y = _xy(x, y)
    loss = _losses.get(loss)
    lam = _checks.real(lam, "lam", nonnegative=True)
    lr = _checks.real(lr, "lr", positive=True)
    steps = _checks.size(steps, "steps")
    record_every = _checks.size(record_every, "record_every")
    power = _checks.real(power, "power", positive=True)
    if decay is not None:
        decay = _checks.real(decay, "decay", positive=True)
    n, p = x.shape
    _check_labels(y, loss)
    generator = _checks.generator(generator)
    if batch_size is not None:
        batch_size = _checks.size(batch_size, "batch_size")
        _checks.elements(steps * batch_size, "steps and batch_size")
    per_step = n if batch_size is None else batch_size
    _checks.budget(4.0 * steps * (per_step + 50) * p + 2.0 * (steps / record_every) * n * p,
                   "steps, batch_size, record_every and x")
    if batch_size is not None:
        idx = torch.randint(0, n, (steps, batch_size), generator=generator).to(x.device)
    if w0 is None:
        w0 = torch.zeros(p, dtype=x.dtype, device=x.device)
    else:
        w0 = _w(w0, x, "w0")
        if w0.ndim != 1:
            raise ValueError(f"w0 must have shape ({p},), got {tuple(w0.shape)}")
    w = w0.detach().clone().to(x.dtype)
    opt = torch.optim.SGD([w], lr=lr)
    sched = None
    if decay is not None:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: (1.0 + k / decay) ** (-power))

    done, values, iterates = [0], [], []
    with torch.no_grad():
        values.append(_checks.finite_result(_objective(w, x, y, loss, lam), "the initial objective",
                                            "w0, x, y or lam (their scale)"))
        iterates.append(w.detach().clone())
    diverged = False
    for k in range(steps):
        if batch_size is None:
            w.grad = _gradient(w, x, y, loss, lam)
        else:
            b = idx[k]
            w.grad = _gradient(w, x[b], y[b], loss, lam)
        opt.step()
        if sched is not None:
            sched.step()
        if (k + 1) % record_every == 0 or k + 1 == steps:
            with torch.no_grad():
                value = _objective(w, x, y, loss, lam)
                if not bool(torch.isfinite(value)) or not bool(torch.isfinite(w).all()):
                    diverged = True
                    break
                done.append(k + 1)
                values.append(value)
                iterates.append(w.detach().clone())
    steps_t = torch.tensor(done, dtype=torch.int64)
    return Run(w=iterates[-1], steps=steps_t, grad_evals=steps_t * per_step,
               objective=torch.stack(values).detach(), iterates=torch.stack(iterates),
               diverged=diverged)


@dataclass(frozen=True)
class SGDMoments:
    r"""Exact expected optimisation gap of single-sample SGD on ridge regression.

    Attributes
    ----------
    steps : torch.Tensor
        The recorded steps (as in :class:`Run`).
    gap : torch.Tensor
        :math:`\mathbb E\,F(w_k) - \min F` at those steps.
    rel_sd : torch.Tensor
        Relative standard deviation of :math:`F(w_k) - \min F` for one run, in
        the Gaussian approximation of the error :math:`w_k - w^\star_\lambda`:
        :math:`\sqrt{\tfrac12\operatorname{tr}((H\Sigma_k)^2) + \mu_k^\top H\Sigma_kH\mu_k}`
        over the mean, with :math:`\Sigma_k = M_k - \mu_k\mu_k^\top`.
    """

    steps: torch.Tensor
    gap: torch.Tensor
    rel_sd: torch.Tensor


def _sgd_operators(x, y, lam, w_star):
    n, p = x.shape
    eye = torch.eye(p, dtype=x.dtype, device=x.device)
    S = x.T @ x / n
    H = S + lam * eye
    _checks.finite_result(H, "the Hessian X^T X / n + lam I", "x or lam (their scale)")
    z = (x[:, :, None] * x[:, None, :]).reshape(n, p * p)          # rows x_i (x) x_i
    EAA = z.T @ z / n + lam * (torch.kron(S, eye) + torch.kron(eye, S)) + lam ** 2 * torch.eye(
        p * p, dtype=x.dtype, device=x.device)                     # E[A_i (x) A_i]
    g = x * (x @ w_star - y)[:, None] + lam * w_star                # per-sample gradients at w*
    G = g.T @ g / n
    _checks.finite_result(EAA, "E[A_i (x) A_i]", "x or lam (their scale)")
    _checks.finite_result(G, "the gradient covariance at the minimiser", "x, y or lam (their scale)")
    return H, EAA, g, G


def _sgd_cost(n, p, n_steps, names):
    """Refuse up front the second-moment computations that cannot be afforded:
    the operators hold ``p**4`` (and ``n p**2``) entries, each step costs ``p**4``."""
    _checks.elements(max(float(p) ** 4, float(n) * p * p), "x (its shape)")
    _checks.budget(float(n_steps) * (float(p) ** 4 + float(n) * p), names)


def sgd_floor(x: torch.Tensor, y: torch.Tensor, *, lam: float, lr: float) -> float:
    r"""Stationary expected gap :math:`\lim_k \mathbb E\,F(w_k) - \min F` of SGD with
    one sample drawn uniformly with replacement per step and a constant step
    :math:`\eta`, on the ridge objective (square loss), in closed form.

    With :math:`A_i = x_ix_i^\top + \lambda I`, :math:`g_i = \nabla f_i(w^\star_\lambda)`
    (mean zero) and :math:`e_k = w_k - w^\star_\lambda`, the update is
    :math:`e_{k+1} = (I - \eta A_{i_k})e_k - \eta g_{i_k}`; the second moment
    :math:`M = \lim \mathbb E\,e_ke_k^\top` solves the linear equation

    .. math::

       HM + MH - \eta\,\mathbb E[A_iMA_i] = \eta\,\mathbb E[g_ig_i^\top],

    and the floor is :math:`\tfrac12\operatorname{tr}(HM)` (Bach & Moulines,
    2013, for the same recursion).  The floor is :math:`\tfrac\eta4\operatorname{tr}\,\mathbb E[g_ig_i^\top] + O(\eta^2)`.

    Parameters
    ----------
    x, y : torch.Tensor
        Design ``(n, p)`` and responses ``(n,)``; :math:`p^2` unknowns are solved for.
    lam : float
        :math:`\lambda \ge 0` (with :math:`H = \frac1n X^\top X + \lambda I` invertible).
    lr : float
        :math:`\eta > 0`, small enough for the second moment to be stable.

    Raises
    ------
    ValueError
        If the second moment is unstable at this step (no finite floor).
    """
    x, y = _xy(x, y)
    lam = _checks.real(lam, "lam", nonnegative=True)
    lr = _checks.real(lr, "lr", positive=True)
    n, p = x.shape
    _sgd_cost(n, p, 1, "x (its number of columns)")
    _checks.budget(float(p) ** 6, "x (its number of columns)")
    H, EAA, _, G = _sgd_operators(x, y, lam, ridge(x, y, lam))
    eye = torch.eye(p, dtype=x.dtype, device=x.device)
    op = torch.kron(H, eye) + torch.kron(eye, H) - lr * EAA
    _checks.finite_result(op, "the second-moment operator", "x, lam or lr (their scale)")
    if float(torch.linalg.eigvals(op).real.min()) <= 0:
        raise ValueError(f"lr={lr} is too large for lam={lam} and x: the second moment of SGD diverges")
    M = torch.linalg.solve(op, lr * G.reshape(-1)).reshape(p, p)
    return _checks.finite_result(float(0.5 * torch.trace(H @ M)), "the SGD floor",
                                 "x, y, lam or lr (their scale)")


def sgd_moments(x: torch.Tensor, y: torch.Tensor, *, lam: float, lr: float, steps: int,
                w0: torch.Tensor | None = None, record_every: int = 1) -> SGDMoments:
    r"""Exact expected gap of single-sample SGD (uniform, with replacement; the
    process of :func:`sgd` with ``batch_size=1``) on the ridge objective, by the
    recursions for the mean :math:`\mu_k = \mathbb E\,e_k` and the second moment
    :math:`M_k = \mathbb E\,e_ke_k^\top` of the error :math:`e_k = w_k - w^\star_\lambda`:

    .. math::

       \mu_{k+1} = (I - \eta H)\mu_k, \qquad
       M_{k+1} = \mathbb E[(I-\eta A_i)M_k(I-\eta A_i)]
         + \eta^2\bigl(C_k + C_k^\top\bigr) + \eta^2\,\mathbb E[g_ig_i^\top],
       \quad C_k = \tfrac1n\textstyle\sum_i A_i\mu_kg_i^\top,

    and :math:`\mathbb E\,F(w_k) - \min F = \tfrac12\operatorname{tr}(HM_k)`
    (:math:`F` is quadratic).  Cost :math:`O(p^4)` per step: for small
    :math:`p` and not too many steps.

    Parameters
    ----------
    x, y, lam, lr :
        As in :func:`sgd_floor`.
    steps : int
        Number of steps.
    w0 : torch.Tensor, optional
        Initial point (zero by default).
    record_every : int
        Record every this many steps (and the first and last), as :func:`sgd`.
    """
    x, y = _xy(x, y)
    lam = _checks.real(lam, "lam", nonnegative=True)
    lr = _checks.real(lr, "lr", positive=True)
    steps = _checks.size(steps, "steps")
    record_every = _checks.size(record_every, "record_every")
    n, p = x.shape
    _sgd_cost(n, p, steps, "steps and x (its number of columns)")
    if w0 is not None:
        w0 = _checks.tensor(w0, "w0", ndim=1)
        w0 = _w(w0, x, "w0")
    w_star = ridge(x, y, lam)
    if w0 is None:
        w0 = torch.zeros(p, dtype=x.dtype, device=x.device)
    H, EAA, g, G = _sgd_operators(x, y, lam, w_star)
    eye = torch.eye(p, dtype=x.dtype, device=x.device)
    T = torch.eye(p * p, dtype=x.dtype, device=x.device) - lr * (
        torch.kron(H, eye) + torch.kron(eye, H)) + lr ** 2 * EAA
    mu = w0.to(x.dtype) - w_star
    m = torch.outer(mu, mu).reshape(-1)
    B = eye - lr * H

    def moments(mu, m):
        M = m.reshape(p, p)
        mean = 0.5 * torch.trace(H @ M)
        HS = H @ (M - torch.outer(mu, mu))                          # H times the covariance
        var = 0.5 * torch.trace(HS @ HS) + mu @ HS @ H @ mu
        return mean, var.clamp_min(0).sqrt() / mean

    done, gaps, sds = [0], [], []
    a, b = moments(mu, m)
    gaps.append(a)
    sds.append(b)
    for k in range(steps):
        # E[(I - eta A_i) mu g_i^T] = -eta (1/n) sum_i A_i mu g_i^T  (the g_i have mean zero)
        Amu = x * (x @ mu)[:, None] + lam * mu                      # rows A_i mu
        C = Amu.T @ g / n
        m = T @ m + lr ** 2 * (C + C.T).reshape(-1) + lr ** 2 * G.reshape(-1)
        mu = B @ mu
        if (k + 1) % record_every == 0 or k + 1 == steps:
            done.append(k + 1)
            a, b = moments(mu, m)
            gaps.append(a)
            sds.append(b)
    gap, rel_sd = torch.stack(gaps), torch.stack(sds)
    names = "x, y, lam, lr, steps or w0 (their scale)"
    _checks.finite_result(gap, "the expected SGD gap", names)
    _checks.finite_result(rel_sd, "the relative standard deviation of the SGD gap", names)
    return SGDMoments(steps=torch.tensor(done), gap=gap, rel_sd=rel_sd)
