r"""Using kernels: Gaussian-process samples and regression, kernel gradient flow,
and the linearised (tangent) model.

* :func:`sample_gp` draws :math:`h \sim \GP(0, K)` on a grid, stably for
  near-singular :math:`K` (eigendecomposition with clipped eigenvalues).
* :func:`gp_regression` is the Gaussian-process posterior (Rasmussen &
  Williams, 2006, eq. 2.25--2.26):
  :math:`\mu = K_{*X}(K_{XX} + \sigma^2 I)^{-1} y`,
  :math:`C = K_{**} - K_{*X}(K_{XX} + \sigma^2 I)^{-1}K_{X*}`.
* :func:`gradient_flow` solves the quadratic gradient flow
  :math:`\dot h = -H(h - h^*)` with :math:`H = \eta K_{XX}` in closed form
  (Jacot, Gabriel & Hongler, 2018; Lee et al., 2019):

  .. math::

     h(t) = h^* + e^{-tH}\bigl(h(0) - h^*\bigr), \qquad
     h_*(t) = h_*(0) + \eta K_{*X} H^{-1}\bigl(I - e^{-tH}\bigr)\bigl(h^* - h(0)\bigr).

* :class:`Linearized` is the tangent model
  :math:`\bar h(w) = h(w_0) + (w - w_0)\cdot\nabla_w h(w_0)` of a network
  (Chizat, Oyallon & Bach, 2019; Lee et al., 2019), trainable with ``torch.optim``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.func import functional_call, jvp

from mflib import _checks

__all__ = ["sample_gp", "GPPosterior", "gp_regression", "ntk_gp", "Flow", "gradient_flow", "Linearized"]


def _square(k, name, like=None, like_name=None):
    _checks.tensor(k, name, ndim=2, nonempty=True)
    if k.shape[0] != k.shape[1]:
        raise ValueError(f"{name} must be square, got shape {tuple(k.shape)}")
    if like is not None:
        _checks.matching(k, like, name, like_name)
    return k


def _vector(v, name, like, like_name="K_train"):
    _checks.tensor(v, name, ndim=1)
    _checks.matching(v, like, name, like_name)
    return v


def _sym_eigh(k):
    """Eigendecomposition of the symmetric part of ``k``, eigenvalues clipped at zero."""
    lam, vec = torch.linalg.eigh((k + k.T) * 0.5)
    return torch.clamp(lam, min=0.0), vec


def sample_gp(K, n_samples=1, *, mean=None, generator=None) -> torch.Tensor:
    r"""Draw samples of a centred (or shifted) Gaussian vector with covariance ``K``.

    Uses :math:`h = m + V \Lambda_+^{1/2} z`, :math:`z \sim \N(0, I)`, where
    :math:`K = V\Lambda V^\top` and :math:`\Lambda_+` has the negative
    eigenvalues (rounding) clipped to zero: stable for singular and
    near-singular kernels, where a Cholesky factorisation fails.

    Parameters
    ----------
    K : torch.Tensor
        Symmetric positive semi-definite matrix, shape ``(n, n)`` (for
        instance a kernel on a grid).
    n_samples : int, optional
        Number of samples.
    mean : torch.Tensor, optional
        Mean vector, shape ``(n,)``; zero if omitted.
    generator : torch.Generator, optional
        CPU generator for :math:`z` (drawn on the CPU, then moved to ``K``'s
        device); ``mflib.generator(0)`` if omitted, never the global random state.

    Returns
    -------
    torch.Tensor
        Shape ``(n_samples, n)``, on the device and in the dtype of ``K``.
    """
    _square(K, "K")
    n_samples = _checks.size(n_samples, "n_samples")
    generator = _checks.generator(generator)
    n = K.shape[0]
    _checks.elements(n_samples * n, "n_samples")
    if mean is not None:
        _checks.tensor(mean, "mean", ndim=1)
        _checks.matching(mean, K, "mean", "K")
        if mean.shape[0] != n:
            raise ValueError(f"mean must have length {n}, got {mean.shape[0]}")
    lam, vec = _sym_eigh(K)
    z = torch.randn(n_samples, n, generator=generator, dtype=K.dtype).to(K.device)
    out = (z * torch.sqrt(lam)) @ vec.T
    return out if mean is None else out + mean.to(out)


@dataclass
class GPPosterior:
    """Posterior of a Gaussian-process regression at the test points.

    Attributes
    ----------
    mean : torch.Tensor
        Posterior mean, shape ``(n_test,)``.
    cov : torch.Tensor or None
        Posterior covariance, shape ``(n_test, n_test)`` (``None`` when the
        test-test kernel was not given).
    """

    mean: torch.Tensor
    cov: torch.Tensor | None

    @property
    def std(self) -> torch.Tensor | None:
        """Pointwise posterior standard deviation (``None`` without ``cov``)."""
        if self.cov is None:
            return None
        return torch.sqrt(torch.clamp(torch.diagonal(self.cov), min=0.0))


def gp_regression(K_train, K_test_train, y_train, *, K_test=None, noise=0.0,
                  rcond=None) -> GPPosterior:
    r"""Gaussian-process regression with a given kernel (posterior mean and covariance).

    .. math::

       \mu = K_{*X}(K_{XX} + \sigma^2 I)^{+} y, \qquad
       C = K_{**} - K_{*X}(K_{XX} + \sigma^2 I)^{+} K_{X*},

    with the pseudo-inverse :math:`(\cdot)^+` taken through an
    eigendecomposition (eigenvalues below ``rcond`` times the largest are
    dropped), so that noiseless regression with a singular kernel works; for
    :math:`\sigma = 0` the mean interpolates the data (kernel "ridgeless"
    regression, the infinite-time limit of :func:`gradient_flow` from zero).

    Parameters
    ----------
    K_train : torch.Tensor
        :math:`K_{XX}`, shape ``(n, n)``.
    K_test_train : torch.Tensor
        :math:`K_{*X}`, shape ``(n_test, n)``.
    y_train : torch.Tensor
        Targets, shape ``(n,)``.
    K_test : torch.Tensor, optional
        :math:`K_{**}`, shape ``(n_test, n_test)``; needed for the covariance.
    noise : float, optional
        Observation noise standard deviation :math:`\sigma \ge 0`.
    rcond : float, optional
        Relative cut-off for small eigenvalues (default ``n`` times the
        machine epsilon of the dtype).

    Returns
    -------
    GPPosterior
        Mean (and covariance), on the device and in the dtype of ``K_train``.
    """
    _square(K_train, "K_train")
    n = K_train.shape[0]
    _checks.tensor(K_test_train, "K_test_train", ndim=2, nonempty=True)
    _checks.matching(K_test_train, K_train, "K_test_train", "K_train")
    if K_test_train.shape[1] != n:
        raise ValueError(f"K_test_train must have {n} columns (the training points), "
                         f"got shape {tuple(K_test_train.shape)}")
    _vector(y_train, "y_train", K_train)
    if y_train.shape[0] != n:
        raise ValueError(f"y_train must have length {n}, got {y_train.shape[0]}")
    if K_test is not None:
        _square(K_test, "K_test", K_train, "K_train")
        if K_test.shape[0] != K_test_train.shape[0]:
            raise ValueError(f"K_test must be {K_test_train.shape[0]} x {K_test_train.shape[0]} (the rows "
                             f"of K_test_train), "
                             f"got shape {tuple(K_test.shape)}")
    noise = _checks.real(noise, "noise", nonnegative=True)
    if noise ** 2 > torch.finfo(K_train.dtype).max / 4:
        raise ValueError(f"noise={noise:g} is too large for {K_train.dtype}: its square overflows")
    if rcond is None:
        rcond = n * torch.finfo(K_train.dtype).eps
    rcond = _checks.real(rcond, "rcond", nonnegative=True)

    lam, vec = _sym_eigh(K_train)
    lam = lam + noise ** 2
    cut = rcond * float(lam.max()) if lam.numel() else 0.0
    inv = torch.where(lam > cut, 1.0 / torch.where(lam > cut, lam, torch.ones_like(lam)),
                      torch.zeros_like(lam))
    a = K_test_train @ vec                      # (n_test, n)
    mean = (a * inv) @ (vec.T @ y_train)
    cov = None
    if K_test is not None:
        cov = K_test - (a * inv) @ a.T
        cov = (cov + cov.T) * 0.5
    _checks.finite_result(mean, "the posterior mean", "K_train, K_test_train, y_train or noise")
    if cov is not None:
        _checks.finite_result(cov, "the posterior covariance", "K_train, K_test, K_test_train or noise")
    return GPPosterior(mean=mean, cov=cov)


def ntk_gp(ntk_train, ntk_test_train, nngp_train, nngp_test_train, nngp_test, y_train,
           *, rcond=None) -> GPPosterior:
    r"""Law of an infinite ensemble of wide networks trained to convergence on the
    square loss by gradient flow (Lee et al., 2019, "Wide neural networks of any
    depth evolve as linear models", eq. 16 at :math:`t \to \infty`).

    At initialisation the outputs are :math:`\GP(0, \Sigma)` (NNGP); training is
    kernel gradient flow with the NTK :math:`\Theta`, so the trained function is
    :math:`f(x) = f_0(x) + \Theta_{xX}\Theta_{XX}^{-1}(y - f_0(X))`, a Gaussian
    process with

    .. math::

       \mu(x) = \Theta_{xX}\Theta_{XX}^{-1}y, \qquad
       C = \Sigma_{**} + \Theta_{*X}\Theta^{-1}\Sigma_{XX}\Theta^{-1}\Theta_{X*}
           - \Theta_{*X}\Theta^{-1}\Sigma_{X*} - \Sigma_{*X}\Theta^{-1}\Theta_{X*}.

    When :math:`\Theta = \Sigma` this is noiseless GP regression with :math:`\Sigma`
    (the case where only the last layer is trained).

    Parameters
    ----------
    ntk_train, ntk_test_train : torch.Tensor
        :math:`\Theta_{XX}` ``(n, n)`` and :math:`\Theta_{*X}` ``(k, n)``.
    nngp_train, nngp_test_train, nngp_test : torch.Tensor
        :math:`\Sigma_{XX}`, :math:`\Sigma_{*X}`, :math:`\Sigma_{**}` ``(k, k)``.
    y_train : torch.Tensor
        ``(n,)``.
    rcond : float, optional
        Relative cut-off of the pseudo-inverse of :math:`\Theta_{XX}`.
    """
    T = _square(ntk_train, "ntk_train")
    S = _square(nngp_train, "nngp_train")
    Sss = _square(nngp_test, "nngp_test")
    n, k = T.shape[0], Sss.shape[0]
    for name, M, shape in (("nngp_train", S, (n, n)), ("ntk_test_train", ntk_test_train, (k, n)),
                           ("nngp_test_train", nngp_test_train, (k, n))):
        _checks.tensor(M, name, ndim=2)
        if tuple(M.shape) != shape:
            raise ValueError(f"{name} must have shape {shape}, got {tuple(M.shape)}")
    _checks.tensor(y_train, "y_train", ndim=1)
    if y_train.shape[0] != n:
        raise ValueError(f"y_train must have length {n}, got {y_train.shape[0]}")
    for name, M in (("ntk_test_train", ntk_test_train), ("nngp_train", S),
                    ("nngp_test_train", nngp_test_train), ("nngp_test", Sss), ("y_train", y_train)):
        _checks.matching(M, T, name, "ntk_train")
    if rcond is not None:
        rcond = _checks.real(rcond, "rcond", nonnegative=True)
    _checks.finite_result((T + T.T) * 0.5, "the symmetric part of ntk_train", "ntk_train (its scale)")
    lam, vec = _sym_eigh(T)
    cut = (rcond if rcond is not None else n * torch.finfo(T.dtype).eps) * lam.abs().max()
    inv = torch.where(lam > cut, 1.0 / lam, torch.zeros_like(lam))
    A = (ntk_test_train.to(T) @ vec) * inv @ vec.T                  # Theta_*X Theta^-1
    Ssx = nngp_test_train.to(T)
    cov = Sss.to(T) + A @ S.to(T) @ A.T - A @ Ssx.T - Ssx @ A.T
    names = "ntk_train, ntk_test_train, nngp_train, nngp_test_train, nngp_test or y_train (their scale)"
    mean = _checks.finite_result(A @ y_train.to(T), "the posterior mean", names)
    cov = _checks.finite_result(0.5 * (cov + cov.T), "the posterior covariance", names)
    return GPPosterior(mean=mean, cov=cov)


@dataclass
class Flow:
    """Closed-form gradient-flow trajectory.

    Attributes
    ----------
    t : torch.Tensor
        Times, shape ``(n_times,)``.
    train : torch.Tensor
        :math:`h(t)` on the training points, shape ``(n_times, n)``.
    test : torch.Tensor or None
        :math:`h_*(t)` on the test points, shape ``(n_times, n_test)``.
    """

    t: torch.Tensor
    train: torch.Tensor
    test: torch.Tensor | None


def gradient_flow(K_train, y_train, t, *, h0_train=None, K_test_train=None, h0_test=None,
                  lr=1.0) -> Flow:
    r"""Closed-form solution of the quadratic (kernel) gradient flow.

    For the loss :math:`\tfrac12\lVert h - h^*\rVert^2` and a kernel :math:`K`,
    the function-space gradient flow :math:`\dot h = -\eta K (h - h^*)` is
    linear; with :math:`H = \eta K_{XX} = V\Lambda V^\top`,

    .. math::

       h(t) = h^* + V e^{-t\Lambda} V^\top \bigl(h(0) - h^*\bigr),\qquad
       h_*(t) = h_*(0) + \eta K_{*X} V\, \frac{1 - e^{-t\Lambda}}{\Lambda}\, V^\top \bigl(h^* - h(0)\bigr),

    where :math:`(1 - e^{-t\lambda})/\lambda` is evaluated with ``expm1`` and
    replaced by its limit :math:`t` for :math:`\lambda = 0`, so singular
    :math:`H` is handled.  As :math:`t\to\infty` the test prediction tends to
    the kernel interpolant (:func:`gp_regression` with ``noise=0``) plus the
    untouched component of :math:`h_*(0)`.

    Parameters
    ----------
    K_train : torch.Tensor
        :math:`K_{XX}`, shape ``(n, n)``, symmetric positive semi-definite.
    y_train : torch.Tensor
        Targets :math:`h^*`, shape ``(n,)``.
    t : float or torch.Tensor
        A time or a 1-D tensor of non-negative times.
    h0_train : torch.Tensor, optional
        :math:`h(0)` on the training points (zero if omitted).
    K_test_train : torch.Tensor, optional
        :math:`K_{*X}`, shape ``(n_test, n)``, for predictions at test points.
    h0_test : torch.Tensor, optional
        :math:`h_*(0)` (zero if omitted).
    lr : float, optional
        Learning rate :math:`\eta > 0` (time scale).

    Returns
    -------
    Flow
        ``t``, ``train`` of shape ``(n_times, n)`` and ``test`` of shape
        ``(n_times, n_test)`` (``None`` without ``K_test_train``).
    """
    _square(K_train, "K_train")
    n = K_train.shape[0]
    _vector(y_train, "y_train", K_train)
    if y_train.shape[0] != n:
        raise ValueError(f"y_train must have length {n}, got {y_train.shape[0]}")
    lr = _checks.real(lr, "lr", positive=True)
    if isinstance(t, torch.Tensor):
        _checks.tensor(t, "t", ndim=(0, 1))
        if t.numel() and float(t.detach().abs().max()) > _checks.MAX_REAL:
            raise ValueError("t is too large: the computation would overflow")
        t = t.reshape(-1).to(K_train)
    else:
        t = torch.tensor([_checks.real(t, "t")], dtype=K_train.dtype, device=K_train.device)
    if bool((t < 0).any()):
        raise ValueError("t must be non-negative")
    if h0_train is None:
        h0_train = torch.zeros_like(y_train)
    else:
        _vector(h0_train, "h0_train", K_train)
        if h0_train.shape[0] != n:
            raise ValueError(f"h0_train must have length {n}, got {h0_train.shape[0]}")
    if K_test_train is not None:
        _checks.tensor(K_test_train, "K_test_train", ndim=2, nonempty=True)
        _checks.matching(K_test_train, K_train, "K_test_train", "K_train")
        if K_test_train.shape[1] != n:
            raise ValueError(f"K_test_train must have {n} columns, got shape "
                             f"{tuple(K_test_train.shape)}")
        if h0_test is None:
            h0_test = torch.zeros(K_test_train.shape[0], dtype=K_train.dtype, device=K_train.device)
        else:
            _vector(h0_test, "h0_test", K_train)
            if h0_test.shape[0] != K_test_train.shape[0]:
                raise ValueError(f"h0_test must have length {K_test_train.shape[0]} (the rows of "
                                 f"K_test_train), "
                                 f"got {h0_test.shape[0]}")
    elif h0_test is not None:
        raise ValueError("h0_test needs K_test_train")

    lam, vec = _sym_eigh(K_train)
    lam = lam * lr
    r0 = vec.T @ (h0_train - y_train)                     # residual in the eigenbasis
    decay = torch.exp(-t[:, None] * lam[None, :])         # (n_times, n)
    train = y_train + (decay * r0) @ vec.T
    test = None
    if K_test_train is not None:
        tiny = torch.finfo(lam.dtype).eps * max(float(lam.max()), 1.0) if n else 0.0
        safe = torch.where(lam > tiny, lam, torch.ones_like(lam))
        gain = torch.where(lam[None, :] > tiny, -torch.expm1(-t[:, None] * lam[None, :]) / safe,
                           t[:, None].expand(-1, n))      # (1 - e^{-t lam}) / lam
        test = h0_test - lr * (gain * r0) @ (K_test_train @ vec).T
    names = "K_train, y_train, h0_train, t or lr"
    _checks.finite_result(train, "the flow on the training points", names)
    if test is not None:
        _checks.finite_result(test, "the flow on the test points", names + ", K_test_train or h0_test")
    return Flow(t=t, train=train, test=test)


class Linearized(torch.nn.Module):
    r"""Tangent model :math:`\bar h(w) = h(w_0) + (w - w_0)\cdot\nabla_w h(w_0)` of a module.

    The parameters of this module are copies of the wrapped model's
    parameters, initialised at :math:`w_0`; the forward pass evaluates the
    model at :math:`w_0` and its Jacobian-vector product in the direction
    :math:`w - w_0` with ``torch.func.jvp`` (one forward-mode pass, no
    Jacobian stored), so ``torch.optim`` trains the linearised model exactly
    like the network itself.

    Parameters
    ----------
    model : torch.nn.Module
        The network :math:`h(\cdot\,; w)`; its current parameters are
        :math:`w_0`.  It is not modified.

    Examples
    --------
    >>> import torch
    >>> from mflib.nets import MLP
    >>> net = MLP(2, [64], generator=torch.Generator().manual_seed(0))
    >>> lin = Linearized(net)
    >>> x = torch.randn(5, 2, dtype=torch.float64)
    >>> bool(torch.allclose(lin(x), net(x)))
    True
    """

    def __init__(self, model):
        super().__init__()
        _checks.instance(model, torch.nn.Module, "model")
        named = [(k, v) for k, v in model.named_parameters() if v.requires_grad]
        if not named:
            raise ValueError("model must have at least one trainable parameter")
        self._names = [k for k, _ in named]
        # the wrapped model is kept out of the module tree, so that its
        # parameters are not registered (and not trained) a second time
        object.__setattr__(self, "_model", model)
        self.params = torch.nn.ParameterList(
            [torch.nn.Parameter(v.detach().clone()) for _, v in named])
        for i, (_, v) in enumerate(named):
            self.register_buffer(f"w0_{i}", v.detach().clone())

    @property
    def model(self):
        """The wrapped network (evaluated at :math:`w_0` by this module)."""
        return self._model

    def _w0(self):
        return {k: getattr(self, f"w0_{i}") for i, k in enumerate(self._names)}

    def delta(self) -> dict[str, torch.Tensor]:
        """The displacement :math:`w - w_0`, by parameter name."""
        return {k: p - getattr(self, f"w0_{i}") for i, (k, p) in enumerate(zip(self._names, self.params))}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Evaluate :math:`h(x; w_0) + \\partial_w h(x; w_0)\\,(w - w_0)`."""
        _checks.tensor(x, "x")
        _checks.matching(x, self.params[0], "x", "the model's parameters")
        buffers = dict(self._model.named_buffers())

        def f(p):
            return functional_call(self._model, (p, buffers), (x,))

        out, tangent = jvp(f, (self._w0(),), (self.delta(),))
        return out + tangent
