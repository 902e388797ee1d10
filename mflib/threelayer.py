r"""Three-layer networks in the mean-field regime, their neuronal embedding and
their mean-field (MF) limit (Pham & Nguyen, ICLR 2021; Nguyen & Pham,
arXiv:2001.11443).

The network of widths :math:`(n_1, n_2)` on an input :math:`x\in\mathbb{R}^d` is

.. math::

   H_2(x, j_2) = \frac{1}{n_1}\sum_{j_1} w_2(j_1, j_2)\,\varphi_1(\langle w_1(j_1), x\rangle),\quad
   H_3(x) = \frac{1}{n_2}\sum_{j_2} w_3(j_2)\,\varphi_2(H_2(x, j_2)),\quad
   \hat y(x) = \varphi_3(H_3(x)).

It is trained on the loss :math:`L(y,\hat y) = \tfrac12(\hat y - y)^2` by
(stochastic) gradient descent with the *rescaled* gradients of Pham & Nguyen
(2021): with :math:`\Delta^H_2(z, j_2) = \partial_2 L(y,\hat y)\,\varphi_3'(H_3)\,
w_3(j_2)\,\varphi_2'(H_2(x, j_2))`,

.. math::

   \mathrm{Grad}_3(j_2) &= \partial_2 L\,\varphi_3'(H_3)\,\varphi_2(H_2(x, j_2)),\\
   \mathrm{Grad}_2(j_1, j_2) &= \Delta^H_2(z, j_2)\,\varphi_1(\langle w_1(j_1), x\rangle),\\
   \mathrm{Grad}_1(j_1) &= \Big[\frac{1}{n_2}\sum_{j_2}\Delta^H_2(z, j_2)\,w_2(j_1, j_2)\Big]
       \varphi_1'(\langle w_1(j_1), x\rangle)\,x,

and :math:`w_i \leftarrow w_i - \varepsilon\,\xi_i\,\mathrm{Grad}_i`.  They equal
:math:`n_1\,\partial\ell/\partial w_1`, :math:`n_1 n_2\,\partial\ell/\partial w_2`
and :math:`n_2\,\partial\ell/\partial w_3` for the per-sample loss :math:`\ell`
(:func:`autograd_gradients`), so that the dynamics in time :math:`t = k\varepsilon`
has a width-independent limit.

A *neuronal embedding* (:class:`Embedding`) is a probability space
:math:`\Omega_1\times\Omega_2` with maps :math:`w_1^0(c_1)`, :math:`w_2^0(c_1,c_2)`,
:math:`w_3^0(c_2)`.  Here it is discrete: :math:`\Omega_i = \{0,\dots,N_i-1\}`
with the uniform law, stored as tables.  A width-:math:`(n_1,n_2)` network is
sampled by drawing indices :math:`C_1(j_1)`, :math:`C_2(j_2)` i.i.d. uniform
(:meth:`Embedding.sample`); networks of all widths drawn from one embedding
are coupled to one MF trajectory.  Because the ensemble is the uniform law on
the table, the MF ODEs are *exactly* the dynamics of the "ensemble network"
that holds every table row once (:meth:`Embedding.ensemble`); run with the same
step :math:`\varepsilon` and full-batch data it is the Euler discretisation of
the MF limit.

Tensors carry a leading batch dimension ``B`` (independent networks trained in
lockstep on the same data); every function works on the device and dtype of
its inputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from mflib import _checks
from mflib._checks import Diverged

__all__ = [
    "Params", "Embedding", "Sample", "Forward", "Run", "CoupledRun", "TwoLayerParams",
    "ACTIVATIONS", "iid_embedding", "correlated_embedding", "with_bias", "teacher_data",
    "forward", "output", "loss", "gradients", "autograd_gradients", "train", "distance",
    "coupled_training", "h2_spread", "first_layer_features", "second_layer_features",
    "lstsq_fit_error", "two_layer_init", "two_layer_output", "two_layer_gradients",
    "train_two_layer", "stack_ensembles", "pairwise_sup_gap", "w2_speed_esssup",
    "rank_one_fraction", "sgd_noise_distance",
]


# ----------------------------------------------------------------------------- activations
def _tanh(z):
    return torch.tanh(z)


def _dtanh(z, f=None):
    f = torch.tanh(z) if f is None else f
    return 1.0 - f * f


def _sigmoid(z):
    return torch.sigmoid(z)


def _dsigmoid(z, f=None):
    s = torch.sigmoid(z) if f is None else f
    return s * (1.0 - s)


def _ones(z, f=None):
    return torch.ones_like(z)


#: The activations, by name, as pairs ``(phi, phi')`` (``phi'(z, f)`` may reuse ``f = phi(z)``).  ``tanh`` and ``sigmoid`` satisfy
#: Assumption 1 of Pham & Nguyen (bounded, with bounded Lipschitz derivative);
#: ``identity`` is meant for :math:`\varphi_3`.
ACTIVATIONS = {
    "tanh": (_tanh, _dtanh),
    "sigmoid": (_sigmoid, _dsigmoid),
    "identity": (lambda z: z, _ones),
}


def _acts(phi):
    if not isinstance(phi, (tuple, list)) or len(phi) != 3:
        raise TypeError("phi must be a tuple of three activation names (phi1, phi2, phi3)")
    return tuple(ACTIVATIONS[_checks.choice(p, f"phi[{i}]", ACTIVATIONS)] for i, p in enumerate(phi))


# ----------------------------------------------------------------------------- containers
@dataclass
class Params:
    """Weights of ``B`` three-layer networks of widths ``(n1, n2)`` on inputs of dimension ``d``.

    Attributes
    ----------
    w1 : torch.Tensor
        Shape ``(B, n1, d)``.
    w2 : torch.Tensor
        Shape ``(B, n1, n2)``.
    w3 : torch.Tensor
        Shape ``(B, n2)``.
    """

    w1: torch.Tensor
    w2: torch.Tensor
    w3: torch.Tensor

    @property
    def widths(self) -> tuple[int, int]:
        """``(n1, n2)``."""
        return self.w2.shape[1], self.w2.shape[2]

    def clone(self) -> "Params":
        """A deep copy."""
        return Params(self.w1.clone(), self.w2.clone(), self.w3.clone())


def _check_params(p, name="params") -> Params:
    _checks.instance(p, Params, name)
    _checks.tensor(p.w1, f"{name}.w1", ndim=3, nonempty=True)
    _checks.tensor(p.w2, f"{name}.w2", ndim=3)
    _checks.tensor(p.w3, f"{name}.w3", ndim=2)
    _checks.matching(p.w2, p.w1, f"{name}.w2", f"{name}.w1")
    _checks.matching(p.w3, p.w1, f"{name}.w3", f"{name}.w1")
    b, n1, _ = p.w1.shape
    if p.w2.shape[:2] != (b, n1) or p.w3.shape != (b, p.w2.shape[2]):
        raise ValueError(f"{name} has inconsistent shapes: w1 {tuple(p.w1.shape)}, "
                         f"w2 {tuple(p.w2.shape)}, w3 {tuple(p.w3.shape)}")
    return p


@dataclass
class Sample:
    """A batch of networks sampled from an embedding, with their indices.

    Attributes
    ----------
    params : Params
        Initial weights :math:`w_1^0(C_1(j_1))`, :math:`w_2^0(C_1(j_1), C_2(j_2))`,
        :math:`w_3^0(C_2(j_2))`.
    c1 : torch.Tensor
        Long tensor ``(B, n1)`` of first-layer indices :math:`C_1(j_1)`.
    c2 : torch.Tensor
        Long tensor ``(B, n2)`` of second-layer indices :math:`C_2(j_2)`.
    """

    params: Params
    c1: torch.Tensor
    c2: torch.Tensor


@dataclass
class Embedding:
    r"""A discrete neuronal embedding: the uniform law on
    :math:`\{0..N_1-1\}\times\{0..N_2-1\}` and the tables of the initial maps.

    Attributes
    ----------
    w1 : torch.Tensor
        :math:`w_1^0(c_1)`, shape ``(N1, d)``.
    w2 : torch.Tensor
        :math:`w_2^0(c_1, c_2)`, shape ``(N1, N2)``.
    w3 : torch.Tensor
        :math:`w_3^0(c_2)`, shape ``(N2,)``.
    """

    w1: torch.Tensor
    w2: torch.Tensor
    w3: torch.Tensor

    def __post_init__(self):
        _checks.tensor(self.w1, "w1", ndim=2, nonempty=True)
        _checks.tensor(self.w2, "w2", ndim=2)
        _checks.tensor(self.w3, "w3", ndim=1)
        _checks.matching(self.w2, self.w1, "w2", "w1")
        _checks.matching(self.w3, self.w1, "w3", "w1")
        if self.w2.shape != (self.w1.shape[0], self.w3.shape[0]):
            raise ValueError(f"w2 must have shape (N1, N2) = (rows of w1, length of w3) = "
                             f"({self.w1.shape[0]}, {self.w3.shape[0]}), "
                             f"got {tuple(self.w2.shape)}")

    @property
    def sizes(self) -> tuple[int, int]:
        """``(N1, N2)``, the sizes of the two index sets."""
        return tuple(self.w2.shape)

    def ensemble(self) -> Params:
        """The whole table as one network (batch 1): its dynamics *is* the MF limit."""
        return Params(self.w1[None].clone(), self.w2[None].clone(), self.w3[None].clone())

    def sample(self, n1: int, n2: int, *, batch: int = 1,
               generator: torch.Generator | None = None) -> Sample:
        r"""Sample ``batch`` networks of widths ``(n1, n2)``: :math:`C_1(j_1)`,
        :math:`C_2(j_2)` i.i.d. uniform on the index sets (with replacement).

        Indices are drawn on the CPU from ``generator`` (``mflib.generator(0)``
        if omitted) and moved to the tables' device.
        """
        n1 = _checks.size(n1, "n1")
        n2 = _checks.size(n2, "n2")
        batch = _checks.size(batch, "batch")
        _checks.elements(batch * n1 * (n2 + self.w1.shape[1]), "batch, n1 and n2")
        generator = _checks.generator(generator)
        N1, N2 = self.sizes
        c1 = torch.randint(N1, (batch, n1), generator=generator).to(self.w1.device)
        c2 = torch.randint(N2, (batch, n2), generator=generator).to(self.w1.device)
        p = Params(self.w1[c1], self.w2[c1[:, :, None], c2[:, None, :]], self.w3[c2])
        return Sample(p, c1, c2)


def _gen(generator):
    return _checks.generator(generator)


def _first_layer_table(d, size, w1_mean, w1_std, generator):
    r"""Check the arguments shared by the embedding constructors and draw the
    first-layer table :math:`w_1^0 \sim \mathcal N(\text{w1\_mean}\,\mathbb 1,
    \text{w1\_std}^2 I_d)`; returns ``(N1, N2, generator, w1)``."""
    d = _checks.size(d, "d")
    if isinstance(size, (tuple, list)) and len(size) != 2:
        raise ValueError(f"size must be an int or a pair (N1, N2), got {size!r}")
    N1, N2 = (size, size) if not isinstance(size, (tuple, list)) else tuple(size)
    N1 = _checks.size(N1, "size")
    N2 = _checks.size(N2, "size")
    _checks.elements(N1 * (N2 + d) + N2 * d, "size and d")
    w1_mean = _checks.real(w1_mean, "w1_mean")
    w1_std = _checks.real(w1_std, "w1_std", positive=True)
    g = _gen(generator)
    w1 = w1_mean + w1_std * torch.randn(N1, d, generator=g, dtype=torch.float64)
    return N1, N2, g, w1


def iid_embedding(d: int, size: int | tuple[int, int], *, w1_mean: float = 0.5, w1_std: float = 1.0,
                  w2_range: tuple[float, float] = (0.0, 1.0), w3_range: tuple[float, float] = (0.0, 1.0),
                  generator: torch.Generator | None = None, dtype=torch.float64,
                  device=None) -> Embedding:
    r"""A discrete embedding of the :math:`(\rho^1,\rho^2,\rho^3)`-i.i.d. initialisation
    (Definition 6 of Pham & Nguyen): every table entry drawn independently,
    :math:`w_1^0 \sim \mathcal N(\mu\mathbb 1, \sigma^2 I_d)`,
    :math:`w_2^0 \sim U[a_2, b_2]`, :math:`w_3^0 \sim U[a_3, b_3]`.

    Parameters
    ----------
    d : int
        Input dimension (including a bias coordinate, if any).
    size : int or tuple of int
        ``N`` or ``(N1, N2)``, the sizes of the index sets.
    w1_mean, w1_std : float
        Mean :math:`\mu` (of every coordinate) and standard deviation of the
        first-layer weights.  A nonzero mean keeps :math:`\hat y(0)\ne\varphi_3(0)`
        when :math:`\varphi_1` is odd.
    w2_range, w3_range : tuple of float
        Bounds of the uniform laws of :math:`w_2^0` and :math:`w_3^0`
        (bounded, as Assumption 2 requires).
    generator : torch.Generator or None
        CPU generator (``mflib.generator(0)`` if omitted); the tables are drawn
        on the CPU and moved to ``device``.
    dtype, device
        Of the tables.
    """
    dtype = _checks.dtype(dtype)
    device = _checks.device(device)
    w2_range = _checks.interval(w2_range, "w2_range")
    w3_range = _checks.interval(w3_range, "w3_range")
    N1, N2, g, w1 = _first_layer_table(d, size, w1_mean, w1_std, generator)
    w2 = w2_range[0] + (w2_range[1] - w2_range[0]) * torch.rand(N1, N2, generator=g, dtype=torch.float64)
    w3 = w3_range[0] + (w3_range[1] - w3_range[0]) * torch.rand(N2, generator=g, dtype=torch.float64)
    return Embedding(*(t.to(dtype=dtype, device=device) for t in (w1, w2, w3)))


def correlated_embedding(d: int, size: int | tuple[int, int], *, w1_mean: float = 0.0,
                         w1_std: float = 1.0, w3_range: tuple[float, float] = (0.0, 1.0),
                         generator: torch.Generator | None = None, dtype=torch.float64,
                         device=None) -> Embedding:
    r"""A non-i.i.d. embedding in which :math:`w_2^0` depends on :math:`w_1^0`:
    :math:`w_2^0(c_1, c_2) = \operatorname{sign}\langle w_1^0(c_1), z(c_2)\rangle`
    with :math:`z(c_2)\sim\mathcal N(0, I_d)`.

    Under it the second-layer pre-activations :math:`H_2(x, c_2)` at
    initialisation genuinely depend on :math:`c_2`, unlike under an i.i.d.
    initialisation (see :func:`h2_spread`).  Parameters as in :func:`iid_embedding`.
    """
    dtype = _checks.dtype(dtype)
    device = _checks.device(device)
    w3_range = _checks.interval(w3_range, "w3_range")
    N1, N2, g, w1 = _first_layer_table(d, size, w1_mean, w1_std, generator)
    z = torch.randn(N2, d, generator=g, dtype=torch.float64)
    w2 = torch.sign(w1 @ z.T)
    w3 = w3_range[0] + (w3_range[1] - w3_range[0]) * torch.rand(N2, generator=g, dtype=torch.float64)
    return Embedding(*(t.to(dtype=dtype, device=device) for t in (w1, w2, w3)))


# ----------------------------------------------------------------------------- data
def with_bias(x: torch.Tensor) -> torch.Tensor:
    """Append a constant-1 coordinate to the rows of ``x`` (shape ``(M, d)`` → ``(M, d+1)``)."""
    _checks.tensor(x, "x", ndim=2)
    return torch.cat([x, torch.ones_like(x[:, :1])], dim=1)


def teacher_data(m: int, d: int = 3, *, generator: torch.Generator | None = None,
                 symmetric: bool = False, teacher_seed: int = 1, dtype=torch.float64,
                 device=None):
    r"""A teacher–student regression task.

    Inputs :math:`x\sim U[-1,1]^d`; labels :math:`y = f^*(x)` from a fixed
    small standard-parametrised teacher
    :math:`f^*(x) = 0.3 + \tfrac{1}{2}\sum_k a_k \tanh\big(2\sum_l B_{kl}\tanh(\langle u_l, x\rangle + b_l)\big)`
    with widths ``(8, 4)`` and Gaussian weights drawn from ``teacher_seed``
    (the biases :math:`b_l` give it an even part).

    Parameters
    ----------
    m : int
        Number of points (even when ``symmetric``).
    d : int
        Input dimension (no bias coordinate; add one with :func:`with_bias`).
    symmetric : bool
        If True, the second half of the points is the negative of the first,
        so that odd functions of :math:`x` cannot fit the even part of :math:`f^*`.

    Returns
    -------
    x : torch.Tensor
        ``(m, d)``.
    y : torch.Tensor
        ``(m,)``.
    teacher : object
        The function :math:`f^*` (a Python callable), mapping ``(M, d)`` to ``(M,)``.
    """
    m = _checks.size(m, "m", minimum=2)
    d = _checks.size(d, "d")
    _checks.elements(m * d, "m and d")
    symmetric = _checks.flag(symmetric, "symmetric")
    dtype = _checks.dtype(dtype)
    device = _checks.device(device)
    if symmetric and m % 2:
        raise ValueError(f"m must be even when symmetric=True, got {m}")
    tg = torch.Generator().manual_seed(_checks.seed(teacher_seed, "teacher_seed"))
    u = 1.5 * torch.randn(8, d, generator=tg, dtype=torch.float64)
    b = torch.randn(8, generator=tg, dtype=torch.float64)
    B = torch.randn(4, 8, generator=tg, dtype=torch.float64) / math.sqrt(8)
    a = torch.randn(4, generator=tg, dtype=torch.float64)

    def teacher(x):
        _checks.tensor(x, "x", ndim=2)
        if x.shape[1] != d:
            raise ValueError(f"x must have {d} columns, got shape {tuple(x.shape)}")
        x64 = x.detach().to("cpu", torch.float64)
        h = torch.tanh(torch.tanh(x64 @ u.T + b) @ B.T * 2.0)
        return (0.3 + 0.5 * h @ a).to(dtype=x.dtype, device=x.device)

    g = _gen(generator)
    k = m // 2 if symmetric else m
    x = 2 * torch.rand(k, d, generator=g, dtype=torch.float64) - 1
    if symmetric:
        x = torch.cat([x, -x])
    x = x.to(dtype=dtype, device=device)
    return x, teacher(x), teacher


# ----------------------------------------------------------------------------- forward / gradients
@dataclass
class Forward:
    """Intermediate quantities of a forward pass, each with batch dimensions ``(B, M, ...)``."""

    pre1: torch.Tensor   #: :math:`\langle w_1(j_1), x\rangle`, ``(B, M, n1)``
    f1: torch.Tensor     #: :math:`\varphi_1` of it
    H2: torch.Tensor     #: ``(B, M, n2)``
    f2: torch.Tensor     #: :math:`\varphi_2(H_2)`
    H3: torch.Tensor     #: ``(B, M)``
    yhat: torch.Tensor   #: ``(B, M)``


def _check_x(x, params, name="x", pname="params"):
    _checks.tensor(x, name, ndim=2, nonempty=True)
    if x.shape[1] != params.w1.shape[2]:
        raise ValueError(f"{name} must have {params.w1.shape[2]} columns (the input dimension of w1), "
                         f"got shape {tuple(x.shape)}")
    _checks.matching(x, params.w1, name, pname)


def _forward(p: Params, x, acts) -> Forward:
    (p1, _), (p2, _), (p3, _) = acts
    n1, n2 = p.widths
    pre1 = torch.einsum("md,bjd->bmj", x, p.w1)
    f1 = p1(pre1)
    H2 = torch.bmm(f1, p.w2) / n1
    f2 = p2(H2)
    H3 = torch.einsum("bmj,bj->bm", f2, p.w3) / n2
    return Forward(pre1, f1, H2, f2, H3, p3(H3))


def forward(params: Params, x: torch.Tensor, *, phi=("tanh", "tanh", "identity")) -> Forward:
    """Forward pass of a batch of three-layer MF networks (formula in the module docstring).

    Parameters
    ----------
    params : Params
        Weights, batch ``B``.
    x : torch.Tensor
        Inputs ``(M, d)``, same dtype and device as ``params``.
    phi : tuple of str
        Names of :math:`(\\varphi_1, \\varphi_2, \\varphi_3)` in :data:`ACTIVATIONS`.

    Returns
    -------
    Forward
    """
    _check_params(params)
    _check_x(x, params)
    return _forward(params, x, _acts(phi))


def output(params: Params, x: torch.Tensor, *, phi=("tanh", "tanh", "identity")) -> torch.Tensor:
    r"""The outputs :math:`\hat y(x)`, shape ``(B, M)``."""
    return forward(params, x, phi=phi).yhat


def _check_y(y, x):
    _checks.tensor(y, "y", ndim=1)
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"x and y must have the same number of rows, got {x.shape[0]} and {y.shape[0]}")
    _checks.matching(y, x, "y", "x")


def loss(params: Params, x: torch.Tensor, y: torch.Tensor, *, phi=("tanh", "tanh", "identity")) -> torch.Tensor:
    r"""Empirical risk :math:`\mathbb E_Z\,\tfrac12(\hat y(X) - Y)^2` of each network, shape ``(B,)``."""
    yhat = output(params, x, phi=phi)
    _check_y(y, x)
    return _checks.finite_result(0.5 * ((yhat - y) ** 2).mean(dim=1), "the risk",
                                 "params, x or y (their scale)")


def _grads(p: Params, x, y, acts, fw: Forward | None = None, out: torch.Tensor | None = None):
    # ``out``: an optional (B, n1, n2) buffer for Grad_2, reused across steps by the
    # training loops (a fresh tensor of that size costs page faults on every step)
    (_, d1), (_, d2), (_, d3) = acts
    n1, n2 = p.widths
    M = x.shape[0]
    fw = fw if fw is not None else _forward(p, x, acts)
    r = (fw.yhat - y) * d3(fw.H3, fw.yhat) / M                     # dL * phi3'(H3) / M, (B, M)
    g3 = torch.bmm(r[:, None, :], fw.f2)[:, 0]                     # (B, n2)
    D2H = d2(fw.H2, fw.f2).mul_(r[:, :, None]).mul_(p.w3[:, None, :])  # (B, M, n2), with 1/M
    g2 = torch.bmm(fw.f1.transpose(1, 2), D2H, out=out)            # (B, n1, n2)
    back = torch.bmm(D2H, p.w2.transpose(1, 2)).mul_(d1(fw.pre1, fw.f1)).div_(n2)  # (B, M, n1)
    g1 = torch.matmul(back.transpose(1, 2), x)                     # (B, n1, d)
    return g1, g2, g3, fw


def gradients(params: Params, x: torch.Tensor, y: torch.Tensor, *,
              phi=("tanh", "tanh", "identity")) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""The rescaled gradients :math:`(\mathrm{Grad}_1, \mathrm{Grad}_2, \mathrm{Grad}_3)`
    of Pham & Nguyen (2021), averaged over the rows of ``(x, y)`` (closed form;
    formulas in the module docstring), for the loss :math:`\tfrac12(\hat y-y)^2`.

    Returns
    -------
    tuple of torch.Tensor
        Shapes ``(B, n1, d)``, ``(B, n1, n2)``, ``(B, n2)``.
    """
    _check_params(params)
    _check_x(x, params)
    _check_y(y, x)
    return _grads(params, x, y, _acts(phi))[:3]


def autograd_gradients(params: Params, x: torch.Tensor, y: torch.Tensor, *,
                       phi=("tanh", "tanh", "identity")):
    r"""The same rescaled gradients through autograd:
    :math:`(n_1\nabla_{w_1}, n_1 n_2\nabla_{w_2}, n_2\nabla_{w_3})` of the mean loss
    (the width factors turn the MF-normalised gradients into :math:`O(1)` updates)."""
    _check_params(params)
    _check_x(x, params)
    _check_y(y, x)
    acts = _acts(phi)
    n1, n2 = params.widths
    w = [t.detach().clone().requires_grad_(True) for t in (params.w1, params.w2, params.w3)]
    fw = _forward(Params(*w), x, acts)
    total = (0.5 * (fw.yhat - y) ** 2).mean(dim=1).sum()
    g1, g2, g3 = torch.autograd.grad(total, w)
    return n1 * g1, n1 * n2 * g2, n2 * g3


# ----------------------------------------------------------------------------- training
@dataclass
class Run:
    """Result of :func:`train`.

    Attributes
    ----------
    params : Params
        Final weights (at the last finite step if the run diverged).
    times : torch.Tensor
        Recorded times :math:`t = k\\varepsilon`, shape ``(R,)`` (CPU, float64).
    loss : torch.Tensor
        Full-data risk of each network at those times, ``(B, R)`` (CPU, float64).
    diverged : bool
        True if some network produced non-finite values; the record stops at
        the last finite step.
    snapshots : dict
        ``{step: Params}`` for the steps asked for in :func:`train`'s ``snapshots``.
    """

    params: Params
    times: torch.Tensor
    loss: torch.Tensor
    diverged: bool = False
    snapshots: dict = field(default_factory=dict)


def _check_schedule(xi):
    if not isinstance(xi, (tuple, list)) or len(xi) != 3:
        raise TypeError("xi must be a tuple of three numbers (xi1, xi2, xi3)")
    return tuple(_checks.real(v, f"xi[{i}]", nonnegative=True) for i, v in enumerate(xi))


def _update(p: Params, g, lr, xi):
    # w -= (lr * xi) * g, scaling the fresh gradients in place (the same operations as
    # forming the product out of place, without a temporary of the size of w2)
    for w, gi, c in ((p.w1, g[0], lr * xi[0]), (p.w2, g[1], lr * xi[1]), (p.w3, g[2], lr * xi[2])):
        if c != 1.0:
            gi.mul_(c)
        w.sub_(gi)


def _finite(p: Params) -> bool:
    # a sum is finite only if every term is (inf + -inf is NaN): one pass, no boolean
    # temporary; it can only err by flagging weights so large that their sum overflows
    return bool(torch.isfinite(p.w1.sum() + p.w2.sum() + p.w3.sum()))


def _batches(m, steps, batch_size, generator):
    if batch_size is None:
        return None
    return [torch.randint(m, (batch_size,), generator=generator) for _ in range(steps)]


def train(params: Params, x: torch.Tensor, y: torch.Tensor, *, lr: float, steps: int,
          xi=(1.0, 1.0, 1.0), batch_size: int | None = None, generator: torch.Generator | None = None,
          record_every: int = 1, phi=("tanh", "tanh", "identity"),
          on_diverge: str = "raise", snapshots=()) -> Run:
    r"""Train ``B`` networks in lockstep with the rescaled (S)GD of Pham & Nguyen (2021),
    :math:`w_i(k+1) = w_i(k) - \varepsilon\,\xi_i\,\mathrm{Grad}_i`.

    Parameters
    ----------
    params : Params
        Initial weights (not modified).
    x, y : torch.Tensor
        The data ``(M, d)`` and ``(M,)``; :math:`\mathcal P` is their empirical law.
    lr : float
        The step :math:`\varepsilon`; time is :math:`t = k\varepsilon`.
    steps : int
        Number of steps.
    xi : tuple of float
        Constant learning-rate schedules :math:`(\xi_1,\xi_2,\xi_3)`; ``xi[2] = 0``
        freezes the third layer.
    batch_size : int or None
        ``None`` (default) uses the whole data set each step (the expectation
        :math:`\mathbb E_Z` of the MF ODEs); otherwise each step draws
        ``batch_size`` rows with replacement from ``generator`` (one stream
        shared by the whole batch of networks).
    record_every : int
        Record the full-data risk every so many steps (and at the end).
    on_diverge : str
        ``"raise"`` or ``"flag"``.  On non-finite weights: raise ``mflib.Diverged``, or return a
        :class:`Run` with ``diverged=True`` that stops at the last finite record.
    snapshots : tuple of int
        Steps at which to keep a copy of the weights (:attr:`Run.snapshots`).

    Returns
    -------
    Run
    """
    _check_params(params)
    _check_x(x, params)
    _check_y(y, x)
    lr = _checks.real(lr, "lr", positive=True)
    steps = _checks.size(steps, "steps", minimum=0)
    record_every = _checks.size(record_every, "record_every")
    xi = _check_schedule(xi)
    _checks.choice(on_diverge, "on_diverge", {"raise", "flag"})
    if batch_size is not None:
        batch_size = _checks.size(batch_size, "batch_size")
        _checks.elements(steps * batch_size, "steps and batch_size")
    B, n1, d = params.w1.shape
    n2 = params.w2.shape[2]
    rows = x.shape[0] if batch_size is None else batch_size
    _checks.budget(8.0 * (steps + 1) * B * rows * (n1 * (n2 + d) + n2) + 1e3 * steps,
                   "steps (with the sizes of params, x and batch_size)")
    if not isinstance(snapshots, (tuple, list, set, range)):
        raise TypeError(f"snapshots must be a sequence of step indices, got {type(snapshots).__name__}")
    g = _gen(generator)
    acts = _acts(phi)
    p = params.clone()
    idx = _batches(x.shape[0], steps, batch_size, g)
    keep = {_checks.integer(k, "snapshots", minimum=0) for k in snapshots}
    if any(k > steps for k in keep):
        raise ValueError(f"snapshots must hold steps in [0, steps={steps}], got {max(keep)}")
    snaps = {}
    times, losses = [], []
    last_good = p.clone()
    g2_buf = torch.empty_like(p.w2)

    def record(k, fw=None):
        yh = fw.yhat if fw is not None else _forward(p, x, acts).yhat
        lo = 0.5 * ((yh - y) ** 2).mean(dim=1)
        if not bool(torch.isfinite(lo).all()):
            return False
        times.append(k * lr)
        losses.append(lo.detach().to("cpu", torch.float64))
        return True

    diverged = False
    with torch.no_grad():
        for k in range(steps + 1):
            if idx is None:
                fw = _forward(p, x, acts)
                ok = _finite(p) and bool(torch.isfinite(fw.yhat).all())
            else:
                fw, ok = None, _finite(p)
            if not ok:
                diverged = True
                break
            if k % record_every == 0 or k == steps:
                if not record(k, fw):
                    diverged = True
                    break
                last_good = p.clone()
            if k in keep:
                snaps[k] = p.clone()
            if k == steps:
                break
            if idx is None:
                gr = _grads(p, x, y, acts, fw, g2_buf)
            else:
                gr = _grads(p, x[idx[k].to(x.device)], y[idx[k].to(x.device)], acts, out=g2_buf)
            _update(p, gr, lr, xi)
    if diverged:
        if not times:
            raise ValueError("the initial risk is not finite: params, x or y out of range")
        if on_diverge == "raise":
            raise Diverged(f"training diverged (non-finite weights) before step {k} (t = {k * lr:g}); "
                           f"lower lr (= {lr:g})")
        p = last_good
        snaps = {j: v for j, v in snaps.items() if j <= int(round(times[-1] / lr))}
    return Run(p, torch.tensor(times, dtype=torch.float64), torch.stack(losses, dim=1)
               if losses else torch.zeros(params.w1.shape[0], 0, dtype=torch.float64), diverged, snaps)


def distance(params: Params, reference: Params, c1: torch.Tensor, c2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Distance between sampled networks and the MF trajectory at their indices.

    With :math:`\delta_1(j_1) = |w_1(j_1) - w_1(C_1(j_1))|`,
    :math:`\delta_2(j_1,j_2) = |w_2(j_1,j_2) - w_2(C_1(j_1), C_2(j_2))|`,
    :math:`\delta_3(j_2) = |w_3(j_2) - w_3(C_2(j_2))|`:

    * ``rms`` = :math:`\max_i` (root mean square of :math:`\delta_i` over neurons);
    * ``sup`` = :math:`\max_i \max_{j} \delta_i`, the quantity inside :math:`D_T`
      of Theorem 3.

    Parameters
    ----------
    params : Params
        ``B`` networks.
    reference : Params
        The MF trajectory at the same time (an ensemble network, batch 1).
    c1, c2 : torch.Tensor
        Their indices (:attr:`Sample.c1`, :attr:`Sample.c2`).

    Returns
    -------
    rms, sup : torch.Tensor
        Shape ``(B,)`` each.
    """
    _check_params(params)
    _check_params(reference, "reference")
    if reference.w1.shape[0] != 1:
        raise ValueError(f"reference must have batch size 1, got {reference.w1.shape[0]}")
    if reference.w1.shape[2] != params.w1.shape[2]:
        raise ValueError(f"reference must have the input dimension of params ({params.w1.shape[2]}), "
                         f"got {reference.w1.shape[2]}")
    _checks.matching(reference.w1, params.w1, "reference", "params")
    for name, c, n, N in (("c1", c1, params.widths[0], reference.widths[0]),
                          ("c2", c2, params.widths[1], reference.widths[1])):
        if not isinstance(c, torch.Tensor) or c.dtype != torch.long:
            raise TypeError(f"{name} must be a long tensor, got "
                            f"{c.dtype if isinstance(c, torch.Tensor) else type(c).__name__}")
        if c.shape != (params.w1.shape[0], n):
            raise ValueError(f"{name} must have shape {(params.w1.shape[0], n)}, got {tuple(c.shape)}")
        if c.numel() and (int(c.min()) < 0 or int(c.max()) >= N):
            raise ValueError(f"{name} must hold indices in [0, {N}) (the rows of reference), got "
                             f"values in [{int(c.min())}, {int(c.max())}]")
    return _distance(params, reference, c1, c2)


def _distance(p, ref, c1, c2, work=None):
    # ``work``: an optional dict of buffers reused across calls by coupled_training
    r1, r2, r3 = ref.w1[0], ref.w2[0], ref.w3[0]
    e1 = (p.w1 - r1[c1]).norm(dim=2)
    e3 = (p.w3 - r3[c2]).abs()
    # |w2 - r2[C1, C2]| in place, gathered row by row with index_select (the same values
    # as advanced indexing, faster, into reusable buffers)
    work = {} if work is None else work
    b, n1, n2 = p.w2.shape
    if "rows" not in work:
        work["rows"] = torch.empty(n1, r2.shape[1], dtype=r2.dtype, device=r2.device)
        work["e2"] = torch.empty(b, n1, n2, dtype=r2.dtype, device=r2.device)
    e2 = work["e2"]
    for i in range(b):
        torch.index_select(r2, 0, c1[i], out=work["rows"])
        torch.index_select(work["rows"], 1, c2[i], out=e2[i])
    e2.sub_(p.w2).abs_()                      # |r - w| = |w - r| exactly
    sup = torch.stack([e.flatten(1).amax(1) for e in (e1, e2, e3)]).amax(0)
    e2.mul_(e2)                               # e ** 2 (pow(2) is a multiplication)
    rms = torch.stack([e1.pow(2).flatten(1).mean(1).sqrt(), e2.flatten(1).mean(1).sqrt(),
                       e3.pow(2).flatten(1).mean(1).sqrt()]).amax(0)
    return rms, sup


@dataclass
class CoupledRun:
    """Result of :func:`coupled_training`: networks of several widths and the MF
    limit, trained in lockstep on the same data.

    Attributes
    ----------
    times : torch.Tensor
        ``(R,)`` recorded times.
    ref_loss : torch.Tensor
        ``(R,)`` risk of the MF limit (the ensemble network).
    ref_out : torch.Tensor
        ``(R, M_eval)`` its outputs on ``x_eval``.
    loss, rms, sup, out : dict
        Per width ``n``: risk ``(S, R)``, RMS and sup distance to the limit
        ``(S, R)``, outputs on ``x_eval`` ``(S, R, M_eval)``.
    ref_params : Params
        Final weights of the MF limit.
    diverged : bool
    """

    times: torch.Tensor
    ref_loss: torch.Tensor
    ref_out: torch.Tensor
    loss: dict = field(default_factory=dict)
    rms: dict = field(default_factory=dict)
    sup: dict = field(default_factory=dict)
    out: dict = field(default_factory=dict)
    ref_params: Params | None = None
    diverged: bool = False


def coupled_training(embedding: Embedding, x: torch.Tensor, y: torch.Tensor, *, widths,
                     seeds: int | dict = 4, lr: float, steps: int, record_every: int = 10,
                     x_eval: torch.Tensor | None = None, generator: torch.Generator | None = None,
                     xi=(1.0, 1.0, 1.0), phi=("tanh", "tanh", "identity")) -> CoupledRun:
    r"""The coupling procedure of Pham & Nguyen (2021): run the MF limit (the
    embedding's ensemble network) and, for each ``n`` in ``widths``, ``seeds``
    networks of widths ``(n, n)`` sampled from ``embedding``, all with full-batch
    rescaled GD of step ``lr`` on ``(x, y)``, recording risks, outputs on
    ``x_eval`` and the distances of :func:`distance` every ``record_every`` steps.

    Parameters
    ----------
    seeds : int or dict
        Networks per width (batched as one tensor), or a dict ``{n: count}``.


    Notes
    -----
    If any run produces non-finite values, ``mflib.Diverged`` is raised.
    """
    _checks.instance(embedding, Embedding, "embedding")
    ref = embedding.ensemble()
    _check_x(x, ref, "x", "embedding")
    _check_y(y, x)
    if x_eval is None:
        x_eval = x
    _check_x(x_eval, ref, "x_eval", "embedding")
    if isinstance(widths, (str, bytes)) or not isinstance(widths, (list, tuple, range)):
        raise TypeError(f"widths must be a sequence of ints, got {type(widths).__name__}")
    widths = [_checks.size(n, "widths") for n in widths]
    if not widths:
        raise ValueError("widths must not be empty")
    if isinstance(seeds, dict):
        missing = [n for n in widths if n not in seeds]
        if missing:
            raise ValueError(f"seeds must give a count for every width, missing {missing}")
    counts = {n: (seeds[n] if isinstance(seeds, dict) else seeds) for n in widths}
    counts = {n: _checks.size(c, "seeds") for n, c in counts.items()}
    lr = _checks.real(lr, "lr", positive=True)
    steps = _checks.size(steps, "steps", minimum=0)
    record_every = _checks.size(record_every, "record_every")
    N1, N2 = embedding.sizes
    d = embedding.w1.shape[1]
    work = N1 * (N2 + d) + sum(counts[n] * n * (n + d) for n in widths)
    _checks.elements(sum(counts[n] * n * (n + d) for n in widths), "widths and seeds")
    _checks.budget(10.0 * (steps + 1) * x.shape[0] * work, "steps (with widths, seeds, the "
                   "embedding's size and x)")
    xi = _check_schedule(xi)
    acts = _acts(phi)
    g = _gen(generator)
    nets = {n: embedding.sample(n, n, batch=counts[n], generator=g) for n in widths}
    rec = {k: [] for k in ("t", "rl", "ro")}
    per = {n: {k: [] for k in ("loss", "rms", "sup", "out")} for n in widths}

    def check(p, fw, what):
        if not (_finite(p) and bool(torch.isfinite((fw.yhat - y) ** 2).all())):
            raise Diverged(f"{what} diverged (non-finite values) at t = {k * lr:g}; lower lr (= {lr:g})")

    cpu = dict(device="cpu", dtype=torch.float64)
    work = {n: {} for n in widths}
    g2_buf = {n: torch.empty_like(s.params.w2) for n, s in nets.items()}
    g2_buf["ref"] = torch.empty_like(ref.w2)
    with torch.no_grad():
        for k in range(steps + 1):
            fw = _forward(ref, x, acts)
            check(ref, fw, "the MF limit")
            do_rec = k % record_every == 0 or k == steps
            if do_rec:
                rec["t"].append(k * lr)
                rec["rl"].append(0.5 * ((fw.yhat[0] - y) ** 2).mean().to(**cpu))
                rec["ro"].append(_forward(ref, x_eval, acts).yhat[0].to(**cpu))
            for n, s in nets.items():
                fwn = _forward(s.params, x, acts)
                check(s.params, fwn, f"a width-{n} network")
                if do_rec:
                    rms, sup = _distance(s.params, ref, s.c1, s.c2, work[n])
                    per[n]["loss"].append((0.5 * ((fwn.yhat - y) ** 2).mean(1)).to(**cpu))
                    per[n]["rms"].append(rms.to(**cpu))
                    per[n]["sup"].append(sup.to(**cpu))
                    per[n]["out"].append(_forward(s.params, x_eval, acts).yhat.to(**cpu))
                if k < steps:
                    _update(s.params, _grads(s.params, x, y, acts, fwn, g2_buf[n]), lr, xi)
            if k < steps:
                _update(ref, _grads(ref, x, y, acts, fw, g2_buf["ref"]), lr, xi)
    res = CoupledRun(torch.tensor(rec["t"], dtype=torch.float64), torch.stack(rec["rl"]),
                     torch.stack(rec["ro"]), ref_params=ref)
    for n in widths:
        res.loss[n] = torch.stack(per[n]["loss"], 1)
        res.rms[n] = torch.stack(per[n]["rms"], 1)
        res.sup[n] = torch.stack(per[n]["sup"], 1)
        res.out[n] = torch.stack(per[n]["out"], 1)
    return res


# ----------------------------------------------------------------------------- diagnostics
def h2_spread(params: Params, x: torch.Tensor, *, phi=("tanh", "tanh", "identity")) -> torch.Tensor:
    r"""Spread of the second-layer units: the standard deviation over :math:`j_2` of
    :math:`H_2(x, j_2)`, averaged over the rows of ``x``; shape ``(B,)``.

    Under an i.i.d. initialisation it is :math:`O(n_1^{-1/2})`: in the MF limit
    every second-layer unit starts as the same function of :math:`x`.
    """
    fw = forward(params, x, phi=phi)
    return fw.H2.std(dim=2).mean(dim=1)


def first_layer_features(w1: torch.Tensor, x: torch.Tensor, *, phi1: str = "tanh") -> torch.Tensor:
    r"""The first-layer features :math:`\varphi_1(\langle w_1(j_1), x\rangle)`: ``w1`` of
    shape ``(n1, d)``, ``x`` of shape ``(M, d)``; returns ``(M, n1)``."""
    _checks.tensor(w1, "w1", ndim=2)
    _checks.tensor(x, "x", ndim=2)
    _checks.matching(x, w1, "x", "w1")
    if x.shape[1] != w1.shape[1]:
        raise ValueError(f"x must have {w1.shape[1]} columns, got shape {tuple(x.shape)}")
    f = ACTIVATIONS[_checks.choice(phi1, "phi1", ACTIVATIONS)][0]
    return f(x @ w1.T)


def second_layer_features(params: Params, x: torch.Tensor, *, phi=("tanh", "tanh", "identity")) -> torch.Tensor:
    r"""The second-layer features :math:`\varphi_2(H_2(x, j_2))`, shape ``(B, M, n2)``."""
    return forward(params, x, phi=phi).f2


def lstsq_fit_error(features_fit: torch.Tensor, target_fit: torch.Tensor, features_test: torch.Tensor,
                    target_test: torch.Tensor, *, ridge: float = 1e-8) -> float:
    r"""Relative test error of the least-squares fit of a target by a linear
    combination of features (and a constant):
    :math:`\|\Phi_{\rm test}\hat a - g_{\rm test}\| / \|g_{\rm test}\|` with
    :math:`\hat a = \arg\min_a \|\Phi_{\rm fit} a - g_{\rm fit}\|^2 + \lambda\,\mathrm{tr}(\Phi^\top\Phi)/p\,\|a\|^2`.

    Parameters
    ----------
    features_fit, features_test : torch.Tensor
        ``(M_fit, p)`` and ``(M_test, p)``.
    target_fit, target_test : torch.Tensor
        ``(M_fit,)`` and ``(M_test,)``.
    ridge : float
        Relative ridge :math:`\lambda \ge 0`.
    """
    for name, t in (("features_fit", features_fit), ("features_test", features_test)):
        _checks.tensor(t, name, ndim=2, nonempty=True)
    _checks.tensor(target_fit, "target_fit", ndim=1)
    _checks.tensor(target_test, "target_test", ndim=1)
    _checks.matching(features_test, features_fit, "features_test", "features_fit")
    _checks.matching(target_fit, features_fit, "target_fit", "features_fit")
    _checks.matching(target_test, features_fit, "target_test", "features_fit")
    _checks.same_rows(features_fit, target_fit, "features_fit", "target_fit")
    _checks.same_rows(features_test, target_test, "features_test", "target_test")
    if features_fit.shape[1] != features_test.shape[1]:
        raise ValueError("features_fit and features_test must have the same number of columns")
    ridge = _checks.real(ridge, "ridge", nonnegative=True)
    A = torch.cat([features_fit, torch.ones_like(features_fit[:, :1])], 1).double()
    At = torch.cat([features_test, torch.ones_like(features_test[:, :1])], 1).double()
    G = A.T @ A
    lam = ridge * G.diagonal().mean()
    den = float(target_test.double().norm())
    if den == 0:
        raise ValueError("target_test is zero: the relative error is undefined")
    names = "features_fit, target_fit, features_test, target_test or ridge"
    M = _checks.finite_result(G + lam * torch.eye(G.shape[0], dtype=G.dtype, device=G.device),
                              "the normal matrix", names)
    coef, info = torch.linalg.solve_ex(M, A.T @ target_fit.double())
    if int(info) != 0:
        raise ValueError("the least-squares system is singular: give ridge > 0")
    return _checks.finite_result(float((At @ coef - target_test.double()).norm()) / den,
                                 "the relative error", names)


# ----------------------------------------------------------------------------- two layers
@dataclass
class TwoLayerParams:
    r"""``B`` two-layer MF networks :math:`\hat y(x) = \frac1n\sum_j a_j\tanh(\langle w_j, x\rangle)`.

    Attributes
    ----------
    w : torch.Tensor
        ``(B, n, d)``.
    a : torch.Tensor
        ``(B, n)``.
    """

    w: torch.Tensor
    a: torch.Tensor


def _check_two(p):
    _checks.instance(p, TwoLayerParams, "params")
    _checks.tensor(p.w, "params.w", ndim=3, nonempty=True)
    _checks.tensor(p.a, "params.a", ndim=2)
    _checks.matching(p.a, p.w, "params.a", "params.w")
    if p.a.shape != p.w.shape[:2]:
        raise ValueError(f"params has inconsistent shapes: w {tuple(p.w.shape)}, a {tuple(p.a.shape)}")


def two_layer_init(n: int, d: int, *, batch: int = 1, w_mean: float = 0.5, w_std: float = 1.0,
                   a_range=(0.0, 1.0), generator: torch.Generator | None = None,
                   dtype=torch.float64, device=None) -> TwoLayerParams:
    r"""I.i.d. initialisation of two-layer MF networks, the same laws as the first
    and last layers of :func:`iid_embedding`."""
    n = _checks.size(n, "n")
    d = _checks.size(d, "d")
    batch = _checks.size(batch, "batch")
    _checks.elements(batch * n * (d + 1), "batch, n and d")
    w_mean = _checks.real(w_mean, "w_mean")
    w_std = _checks.real(w_std, "w_std", positive=True)
    a_range = _checks.interval(a_range, "a_range")
    dtype = _checks.dtype(dtype)
    device = _checks.device(device)
    g = _gen(generator)
    w = w_mean + w_std * torch.randn(batch, n, d, generator=g, dtype=torch.float64)
    a = a_range[0] + (a_range[1] - a_range[0]) * torch.rand(batch, n, generator=g, dtype=torch.float64)
    return TwoLayerParams(w.to(dtype=dtype, device=device), a.to(dtype=dtype, device=device))


def two_layer_output(params: TwoLayerParams, x: torch.Tensor) -> torch.Tensor:
    r""":math:`\hat y(x) = \frac1n\sum_j a_j\tanh(\langle w_j,x\rangle)`, shape ``(B, M)``."""
    _check_two(params)
    _checks.tensor(x, "x", ndim=2, nonempty=True)
    if x.shape[1] != params.w.shape[2]:
        raise ValueError(f"x must have {params.w.shape[2]} columns, got shape {tuple(x.shape)}")
    _checks.matching(x, params.w, "x", "params")
    return _two_layer_out(params, x)


def _two_layer_out(params, x):
    return torch.einsum("bmj,bj->bm", torch.tanh(torch.einsum("md,bjd->bmj", x, params.w)),
                        params.a) / params.a.shape[1]


def two_layer_gradients(params: TwoLayerParams, x: torch.Tensor, y: torch.Tensor):
    r"""Rescaled gradients (:math:`n\,\nabla` of the mean loss :math:`\tfrac12(\hat y-y)^2`):
    :math:`\mathrm{Grad}_a(j) = \mathbb E[(\hat y - y)\tanh(\langle w_j, X\rangle)]`,
    :math:`\mathrm{Grad}_w(j) = \mathbb E[(\hat y - y)\,a_j\tanh'(\langle w_j, X\rangle)X]`.

    Returns
    -------
    tuple of torch.Tensor
        ``(grad_w, grad_a)``, shapes ``(B, n, d)`` and ``(B, n)``.
    """
    yhat = two_layer_output(params, x)
    _check_y(y, x)
    return _two_layer_grads(params, x, y, yhat)


def _two_layer_grads(params, x, y, yhat):
    pre = torch.einsum("md,bjd->bmj", x, params.w)
    f = torch.tanh(pre)
    r = (yhat - y) / x.shape[0]
    ga = torch.einsum("bm,bmj->bj", r, f)
    gw = torch.einsum("bm,bmj,md->bjd", r, (1 - f ** 2) * params.a[:, None, :], x)
    return gw, ga


def train_two_layer(params: TwoLayerParams, x: torch.Tensor, y: torch.Tensor, *, lr: float,
                    steps: int, record_every: int = 1) -> tuple[TwoLayerParams, torch.Tensor, torch.Tensor]:
    r"""Full-batch rescaled GD of two-layer MF networks with step ``lr``
    (time :math:`t = k\varepsilon`), the two-layer analogue of :func:`train`.

    Returns
    -------
    params : TwoLayerParams
        Final weights.
    times : torch.Tensor
        ``(R,)``.
    loss : torch.Tensor
        ``(B, R)`` full-data risk.

    Notes
    -----
    On non-finite values, ``mflib.Diverged`` is raised.
    """
    _check_two(params)
    _checks.tensor(x, "x", ndim=2, nonempty=True)
    if x.shape[1] != params.w.shape[2]:
        raise ValueError(f"x must have {params.w.shape[2]} columns, got shape {tuple(x.shape)}")
    _checks.matching(x, params.w, "x", "params")
    _check_y(y, x)
    lr = _checks.real(lr, "lr", positive=True)
    steps = _checks.size(steps, "steps", minimum=0)
    record_every = _checks.size(record_every, "record_every")
    _checks.budget(8.0 * (steps + 1) * params.w.numel() * x.shape[0] + 1e3 * steps,
                   "steps (with the sizes of params and x)")
    p = TwoLayerParams(params.w.clone(), params.a.clone())
    times, losses = [], []
    with torch.no_grad():
        for k in range(steps + 1):
            if k % record_every == 0 or k == steps:
                lo = 0.5 * ((_two_layer_out(p, x) - y) ** 2).mean(1)
                if not bool(torch.isfinite(lo).all()):
                    if k == 0:
                        raise ValueError("the initial risk is not finite: params, x or y out of range")
                    raise Diverged(f"two-layer training diverged at t = {k * lr:g}; lower lr (= {lr:g})")
                times.append(k * lr)
                losses.append(lo.to("cpu", torch.float64))
            if k == steps:
                break
            gw, ga = _two_layer_grads(p, x, y, _two_layer_out(p, x))
            if not (bool(torch.isfinite(gw).all()) and bool(torch.isfinite(ga).all())):
                raise Diverged(f"two-layer training diverged at t = {k * lr:g}; lower lr (= {lr:g})")
            p.w.sub_(lr * gw)
            p.a.sub_(lr * ga)
    return p, torch.tensor(times, dtype=torch.float64), torch.stack(losses, 1)


# ----------------------------------------------------------------------------- ensembles of MF limits
def _steps_of(time: float, lr: float) -> int:
    """``round(time / lr)`` (at least 1) Euler steps, refused with both arguments named
    when there are more than a call can take."""
    ratio = time / lr
    if not ratio <= _checks.MAX_SIZE:
        raise ValueError(f"time / lr = {ratio:.3g} steps: more than the {_checks.MAX_SIZE} one call may "
                         f"take (raise lr or lower time)")
    return max(1, int(round(ratio)))


def stack_ensembles(embeddings) -> Params:
    r"""The ensemble networks (:meth:`Embedding.ensemble`) of several embeddings of the
    same sizes, stacked as one batch of networks, so that :func:`train` runs them in
    lockstep.  For independent i.i.d. embeddings of size :math:`N` this is a batch of
    independent discretisations of the same MF limit; by Theorem 3 of Pham & Nguyen
    (2021) each lies within :math:`O(N^{-1/2})` of it, and so do any two of them of
    each other (their Corollary 5: the limit does not depend on the embedding).

    Parameters
    ----------
    embeddings : sequence of Embedding
        At least one, all of the same sizes and input dimension.

    Returns
    -------
    Params
        Batch ``len(embeddings)``.
    """
    if not isinstance(embeddings, (list, tuple)):
        raise TypeError(f"embeddings must be a list or tuple of Embedding, got {type(embeddings).__name__}")
    embeddings = list(embeddings)
    if not embeddings:
        raise ValueError("embeddings must hold at least one Embedding")
    for i, e in enumerate(embeddings):
        if not isinstance(e, Embedding):
            raise TypeError(f"embeddings[{i}] must be a threelayer.Embedding, got {type(e).__name__}")
        if e.w1.shape != embeddings[0].w1.shape or e.sizes != embeddings[0].sizes:
            raise ValueError(f"embeddings[{i}] has sizes {e.sizes} and d = {e.w1.shape[1]}, "
                             f"unlike embeddings[0]")
    return Params(torch.stack([e.w1 for e in embeddings]), torch.stack([e.w2 for e in embeddings]),
                  torch.stack([e.w3 for e in embeddings]))


def pairwise_sup_gap(curves: torch.Tensor) -> torch.Tensor:
    r"""For curves :math:`L_b(t)`, rows ``b`` of ``curves`` (shape ``(B, R)``, ``B >= 2``),
    the gaps :math:`\sup_t |L_a(t) - L_b(t)|` over all pairs :math:`a < b`, shape
    ``(B(B-1)/2,)``."""
    curves = _checks.tensor(curves, "curves", ndim=2)
    if curves.shape[0] < 2:
        raise ValueError(f"curves must hold at least 2 rows, got shape {tuple(curves.shape)}")
    i, j = torch.triu_indices(curves.shape[0], curves.shape[0], offset=1)
    return (curves[i] - curves[j]).abs().amax(dim=1)


def w2_speed_esssup(params: Params, x: torch.Tensor, y: torch.Tensor, *,
                    xi2: float = 1.0, phi=("tanh", "tanh", "identity")) -> torch.Tensor:
    r"""The convergence-mode quantity of Theorem 8 of Pham & Nguyen (2021),
    :math:`\operatorname{ess\,sup}_{c_1}\E_{C_2}|\partial_t w_2(t, c_1, C_2)|`, for ensemble
    networks: :math:`\partial_t w_2 = -\xi_2\,\mathrm{Grad}_2` (full batch), the mean over
    :math:`c_2` and the maximum over :math:`c_1`; shape ``(B,)``."""
    xi2 = _checks.real(xi2, "xi2", nonnegative=True)
    g2 = gradients(params, x, y, phi=phi)[1]
    return xi2 * g2.abs().mean(dim=2).amax(dim=1)


def rank_one_fraction(m: torch.Tensor) -> float:
    r"""Share of the squared Frobenius norm of a matrix carried by its top singular value,
    :math:`\sigma_1^2/\sum_k\sigma_k^2` (1 for a rank-one matrix)."""
    m = _checks.tensor(m, "m", ndim=2)
    scale = float(m.abs().max()) if m.numel() else 0.0
    sv = torch.linalg.svdvals(m.double() / (scale if scale > 0 else 1.0))  # scale-free: no overflow
    tot = float((sv ** 2).sum())
    if tot == 0.0:
        raise ValueError("m must not be zero")
    return float(sv[0] ** 2) / tot


def sgd_noise_distance(params: Params, x: torch.Tensor, y: torch.Tensor, *, lr: float, time: float,
                       batch_size: int, generator: torch.Generator, records: int = 4,
                       xi=(1.0, 1.0, 1.0), phi=("tanh", "tanh", "identity")) -> float:
    r"""The :math:`\varepsilon^{1/2}` term of Theorem 3 of Pham & Nguyen (2021), isolated:
    the same network trained with mini-batch SGD (``batch_size`` rows drawn with
    replacement from ``(x, y)`` at each step, stream ``generator``) and with full-batch GD,
    both with step ``lr`` up to ``time``; returned is
    :math:`\max_t` of the RMS-over-neurons distance of :func:`distance` (the largest over
    the three layers), at ``records`` equally spaced times.  The width part of the theorem
    cancels (same network, same indices), the Euler error is common to both, and what
    remains is the fluctuation of SGD around its mean, of order
    :math:`(\varepsilon/B)^{1/2}`.

    Parameters
    ----------
    params : Params
        One network (batch 1), e.g. :meth:`Embedding.ensemble`.
    lr, time : float
        Step :math:`\varepsilon` and horizon :math:`T` (``round(time / lr)`` steps).
    batch_size : int
        Mini-batch size :math:`B`.
    generator : torch.Generator
        Stream of the mini-batches.
    records : int
        Number of times at which the distance is measured.

    Returns
    -------
    float
    """
    _check_params(params)
    if params.w1.shape[0] != 1:
        raise ValueError(f"params must hold one network, got a batch of {params.w1.shape[0]}")
    lr = _checks.real(lr, "lr", positive=True)
    time = _checks.real(time, "time", positive=True)
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    batch_size = _checks.size(batch_size, "batch_size")
    steps = _steps_of(time, lr)
    records = _checks.size(records, "records", maximum=10_000)  # duplicates merged below
    snaps = sorted({max(1, int(round(steps * (i + 1) / records))) for i in range(records)})
    sgd = train(params, x, y, lr=lr, steps=steps, xi=xi, batch_size=batch_size, generator=generator,
                record_every=steps, phi=phi, snapshots=snaps)
    gd = train(params, x, y, lr=lr, steps=steps, xi=xi, record_every=steps, phi=phi, snapshots=snaps)
    n1, n2 = params.widths
    c1 = torch.arange(n1, device=params.w1.device)[None]
    c2 = torch.arange(n2, device=params.w1.device)[None]
    return max(float(_distance(sgd.snapshots[k], gd.snapshots[k], c1, c2)[0][0]) for k in snaps)
