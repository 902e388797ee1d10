r"""Two-layer networks as particle systems: the mean-field engine.

A two-layer network with :math:`m` hidden units is a cloud of :math:`m`
particles :math:`\theta_i = (a_i, w_i) \in \mathbb R^{1+p}` (output weight
:math:`a_i`, input weights :math:`w_i`, the bias being the last coordinate
of :math:`w_i` when there is one), and

.. math::

   h(\theta, x) = \alpha(m) \sum_{i=1}^m a_i\, \sigma(\langle w_i, \tilde x\rangle),
   \qquad \tilde x = x \ \text{or}\ (x, 1),

with :math:`\alpha(m) = 1/m` in the *mean-field* scaling
(:math:`h = \int \phi\,\mathrm d\mu` with :math:`\mu = \frac1m\sum_i\delta_{\theta_i}`,
Chizat & Bach 2018; Mei, Montanari & Nguyen 2018) and
:math:`\alpha(m) = 1/\sqrt m` in the *lazy* scaling (Chizat, Oyallon & Bach 2019).

Particles are stored as one tensor ``theta`` of shape ``(m, 1 + p)``: column 0
holds :math:`a_i`, columns 1: hold :math:`w_i`.  Whether there is a bias is
read from the shapes: ``p == d`` (no bias) or ``p == d + 1`` (bias).

Training minimises :math:`F_m(\theta) = R(h(\theta)) + \frac1m\sum_i V(\theta_i)`
with the square loss :math:`R = \frac12\mathbb E(h(x) - y)^2`; each particle
takes the step :math:`\eta/(m\alpha^2)` on :math:`\nabla_{\theta_i} R` (that is
:math:`\eta m` in the mean-field scaling, the step of Mei, Montanari &
Nguyen, and :math:`\eta` in the lazy one), so that in both scalings the
predictor moves at speed :math:`O(1)` and :math:`\eta` is the time step.

For Gaussian inputs :math:`x\sim\mathcal N(0, I_d)`, relu units without bias
and a relu teacher, the population risk and its gradient are closed forms
in the arc-cosine kernels of :mod:`mflib.arccos`:

.. math::

   \mathbb E[\mathrm{relu}(\langle u, x\rangle)\mathrm{relu}(\langle v, x\rangle)]
     = \frac{\lVert u\rVert\lVert v\rVert}{2\pi}\bigl(\sin\vartheta + (\pi-\vartheta)\cos\vartheta\bigr),
   \qquad
   \nabla_u(\cdot) = \frac{\pi-\vartheta}{2\pi}\,v + \frac{\sin\vartheta}{2\pi}\lVert v\rVert\frac{u}{\lVert u\rVert},

with :math:`\vartheta` the angle between :math:`u` and :math:`v`; so
:func:`train` with ``method="population"`` runs the population gradient flow
with no sampling noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from mflib import _checks
from mflib import arccos
from mflib.dynamics import loop as _loop
from mflib._checks import Diverged

__all__ = ["Trajectory", "init_particles", "forward", "grad", "empirical_risk",
           "population_risk", "population_grad", "gaussian_teacher_data", "train",
           "relative_scale", "rms_displacement", "relu_kernel", "sgd_stream_distance",
           "linearised_displacement", "cap_particles"]

ACTIVATIONS = ("relu", "sigmoid")
SCALINGS = ("mf", "lazy")
METHODS = ("gd", "sgd", "population")
REGS = ("none", "l2", "path")


# ----------------------------------------------------------------------------- helpers
def _alpha(m: int, scaling) -> float:
    """Output scale :math:`\alpha(m) = m^{-\beta}`: ``"mf"`` is :math:`\beta = 1`,
    ``"lazy"`` is :math:`\beta = 1/2`, and a number in :math:`[1/2, 1]` is the
    exponent itself (the knob that moves from one regime to the other)."""
    if isinstance(scaling, str):
        _checks.choice(scaling, "scaling", SCALINGS)
        beta = 1.0 if scaling == "mf" else 0.5
    else:
        beta = _checks.real(scaling, "scaling", minimum=0.5, maximum=1.0)
    return float(m) ** (-beta)


def _theta(theta, name="theta") -> torch.Tensor:
    theta = _checks.tensor(theta, name, ndim=2)
    if theta.shape[0] < 1:
        raise ValueError(f"{name} must hold at least one particle (m >= 1), got shape {tuple(theta.shape)}")
    if theta.shape[1] < 2:
        raise ValueError(f"{name} must have shape (m, 1 + p) with p >= 1, got {tuple(theta.shape)}")
    return theta


def _augment(theta: torch.Tensor, x: torch.Tensor, tname="theta") -> torch.Tensor:
    """Return x or (x, 1) so that its width matches the input weights of theta."""
    p, d = theta.shape[1] - 1, x.shape[1]
    if p == d:
        return x
    if p == d + 1:
        return torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype, device=x.device)], dim=1)
    raise ValueError(f"{tname} has {p} input weights per particle; x has d = {d} columns: "
                     f"expected {d} (no bias) or {d + 1} (bias)")


def _same(a: torch.Tensor, b: torch.Tensor, na: str, nb: str) -> None:
    _checks.matching(a, b, na, nb)


def _act(z: torch.Tensor, activation: str):
    if activation == "relu":
        return torch.relu(z), (z > 0).to(z.dtype)
    s = torch.sigmoid(z)
    return s, s * (1 - s)


# ----------------------------------------------------------------------------- init
def init_particles(m: int, d: int, *, bias: bool = False, init: str = "gaussian",
                   radius: float = 1.0, out_weight: str = "gaussian",
                   generator: torch.Generator | None = None, dtype=torch.float64,
                   device=None) -> torch.Tensor:
    r"""Draw :math:`m` i.i.d. particles :math:`\theta_i = (a_i, w_i)`.

    Parameters
    ----------
    m, d : int
        Number of particles (hidden units) and input dimension.
    bias : bool
        Give each unit a bias (``p = d + 1`` input weights).
    init : str
        ``"gaussian"``: :math:`w_i\sim\mathcal N(0, \mathrm{radius}^2 I_p/p)`
        and :math:`a_i` as set by ``out_weight``.  ``"sphere"``: the whole
        particle :math:`\theta_i` uniform on the centred sphere of radius
        ``radius`` in :math:`\mathbb R^{1+p}` (the initial measure of Chizat &
        Bach's homogeneous theorem).  ``"circle"``: :math:`w_i` equally spaced
        on the circle of radius ``radius`` (needs ``p = 2``), :math:`a_i = \pm`
        ``radius`` alternating.
    radius : float
        Scale of the initialisation.
    out_weight : str
        Law of :math:`a_i` for ``init="gaussian"``: :math:`\mathcal N(0, \mathrm{radius}^2)`,
        :math:`\pm\mathrm{radius}` or 0.
    generator : torch.Generator, optional
        CPU generator (draws are made on the CPU and moved).

    Returns
    -------
    torch.Tensor
        Shape ``(m, 1 + p)``.
    """
    m = _checks.size(m, "m")
    d = _checks.size(d, "d")
    bias = _checks.flag(bias, "bias")
    _checks.elements(m * (d + 2), "m and d")
    radius = _checks.real(radius, "radius", positive=True)
    _checks.choice(init, "init", ("gaussian", "sphere", "circle"))
    _checks.choice(out_weight, "out_weight", ("gaussian", "sign", "zero"))
    g = _checks.generator(generator)
    dtype = _checks.dtype(dtype)
    device = _checks.device(device)
    p = d + int(bias)
    if init == "gaussian":
        w = torch.randn(m, p, generator=g, dtype=torch.float64) * (radius / math.sqrt(p))
        if out_weight == "gaussian":
            a = torch.randn(m, 1, generator=g, dtype=torch.float64) * radius
        elif out_weight == "sign":
            a = (torch.randint(0, 2, (m, 1), generator=g).to(torch.float64) * 2 - 1) * radius
        else:
            a = torch.zeros(m, 1, dtype=torch.float64)
        theta = torch.cat([a, w], dim=1)
    elif init == "sphere":
        z = torch.randn(m, 1 + p, generator=g, dtype=torch.float64)
        theta = radius * z / z.norm(dim=1, keepdim=True)
    else:
        if p != 2:
            raise ValueError(f"init='circle' needs 2 input weights per unit (d + bias = 2), got {p}")
        ang = 2 * math.pi * (torch.arange(m, dtype=torch.float64) + 0.5) / m
        a = radius * (1 - 2 * (torch.arange(m) % 2)).to(torch.float64)
        theta = torch.stack([a, radius * torch.cos(ang), radius * torch.sin(ang)], dim=1)
    return theta.to(dtype=dtype, device=device)


# ----------------------------------------------------------------------------- model
def forward(theta: torch.Tensor, x: torch.Tensor, *, activation: str = "relu",
            scaling: str = "mf") -> torch.Tensor:
    r"""Evaluate :math:`h(\theta, x) = \alpha(m)\sum_i a_i\sigma(\langle w_i,\tilde x\rangle)`.

    Parameters
    ----------
    theta : torch.Tensor
        Particles, shape ``(m, 1 + p)``.
    x : torch.Tensor
        Inputs, shape ``(n, d)`` with ``p = d`` or ``p = d + 1`` (bias).
    activation : str
        ``"relu"`` or ``"sigmoid"``.
    scaling : str or float
        ``"mf"`` (:math:`\alpha = 1/m`), ``"lazy"`` (:math:`\alpha = 1/\sqrt m`),
        or an exponent :math:`\beta\in[1/2, 1]` for :math:`\alpha = m^{-\beta}`.

    Returns
    -------
    torch.Tensor
        Shape ``(n,)``.
    """
    theta = _theta(theta)
    x = _checks.tensor(x, "x", ndim=2)
    _same(theta, x, "theta", "x")
    _checks.choice(activation, "activation", ACTIVATIONS)
    return _checks.finite_result(_forward(theta, x, activation, scaling), "h(theta, x)",
                                 "theta or x (their scale)")


def _forward(theta, x, activation, scaling):
    alpha = _alpha(theta.shape[0], scaling)
    xt = _augment(theta, x)
    s, _ = _act(xt @ theta[:, 1:].T, activation)
    return alpha * (s @ theta[:, 0])


def _grad_raw(theta, xt, y, activation, alpha, work=None):
    """Closed-form gradient of 0.5*mean((h-y)^2): returns (grad_a (m,), grad_w (m, p), residual).

    Two matrix products and a few fused elementwise passes; grad_w is returned as a
    transposed view of a (p, m) product (the cheaper layout of the second matmul).  ``work``
    (a dict, filled on first use) holds the (n, m) and (p, m) buffers across the steps of a
    training loop: fresh multi-megabyte tensors at every step cost page faults that are a
    sizeable share of a step.  The returned tensors then live in those buffers.
    """
    a = theta[:, 0]
    n, m, p = xt.shape[0], theta.shape[0], xt.shape[1]
    z = torch.mm(xt, theta[:, 1:].T, out=_buffer(work, "z", (n, m), xt))    # (n, m)
    c = alpha / n
    if activation == "relu":
        s = z.relu_()                                         # in place: z is not needed again
        r = torch.mv(s, a).mul_(alpha).sub_(y)
        ga = torch.mv(s.T, r).mul_(c)
        # relu'(z) * r, as autograd does it (the fastest masked product on CPU)
        gz = torch.ops.aten.threshold_backward.grad_input(
            r[:, None].expand_as(s), s, 0.0, grad_input=_buffer(work, "gz", (n, m), xt))
    else:
        s = z.sigmoid_()
        r = torch.mv(s, a).mul_(alpha).sub_(y)
        ga = torch.mv(s.T, r).mul_(c)
        gz = s.mul_(1 - s).mul_(r[:, None])
    gwt = torch.mm(xt.T, gz, out=_buffer(work, "gw", (p, m), xt)).mul_(a * c)   # (p, m)
    return ga, gwt.T, r


def _buffer(work, name, shape, like):
    """The buffer ``work[name]`` of that shape (made on first use), or a fresh tensor if no work."""
    if work is None:
        return torch.empty(shape, dtype=like.dtype, device=like.device)
    buf = work.get(name)
    if buf is None or tuple(buf.shape) != tuple(shape):
        buf = work[name] = torch.empty(shape, dtype=like.dtype, device=like.device)
    return buf


def grad(theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor, *, activation: str = "relu",
         scaling: str = "mf"):
    r"""Gradient of the empirical risk :math:`\hat R = \frac1{2n}\sum_k (h(\theta,x_k)-y_k)^2`.

    Closed form (two matrix products, no autograd):
    :math:`\nabla_{a_i}\hat R = \frac{\alpha}{n}\sum_k r_k\sigma(\langle w_i,\tilde x_k\rangle)`,
    :math:`\nabla_{w_i}\hat R = \frac{\alpha a_i}{n}\sum_k r_k\sigma'(\langle w_i,\tilde x_k\rangle)\tilde x_k`,
    with residuals :math:`r_k = h(\theta, x_k) - y_k`.

    Returns
    -------
    tuple of torch.Tensor
        The gradient, shape ``(m, 1 + p)``, and the empirical risk (0-d tensor).
    """
    theta = _theta(theta)
    x = _checks.tensor(x, "x", ndim=2)
    y = _checks.tensor(y, "y", ndim=1)
    _checks.same_rows(x, y, "x", "y")
    _same(theta, x, "theta", "x")
    _same(x, y, "x", "y")
    _checks.choice(activation, "activation", ACTIVATIONS)
    alpha = _alpha(theta.shape[0], scaling)
    ga, gw, r = _grad_raw(theta, _augment(theta, x), y, activation, alpha)
    names = "theta, x or y (their scale)"
    return (_checks.finite_result(torch.cat([ga[:, None], gw], dim=1), "the gradient", names),
            _checks.finite_result(0.5 * (r * r).mean(), "the risk", names))


def empirical_risk(theta, x, y, *, activation="relu", scaling="mf") -> torch.Tensor:
    r"""Empirical risk :math:`\frac1{2n}\sum_k (h(\theta, x_k) - y_k)^2` (0-d tensor)."""
    y = _checks.tensor(y, "y", ndim=1)
    h = forward(theta, x, activation=activation, scaling=scaling)
    _checks.same_rows(h[:, None], y, "x", "y")
    return _checks.finite_result(0.5 * ((h - y) ** 2).mean(), "the risk", "theta, x or y (their scale)")


# ----------------------------------------------------------------------------- population
def _kernel_blocks(w1, w2):
    """Return (K, grad-coefficients) of E relu(<u,x>)relu(<v,x>) for rows u of w1, v of w2."""
    n1 = (w1 * w1).sum(1)
    n2 = (w2 * w2).sum(1)
    s12 = w1 @ w2.T
    theta, norm = arccos._angle(s12, n1[:, None], n2[None, :])
    # arccos.kappa1 and kappa0 written out so that sin(theta) and pi - theta are
    # computed once (the same operations, the same numbers)
    sin_t = torch.sin(theta)
    pi_t = math.pi - theta
    k = norm * ((sin_t + pi_t * torch.cos(theta)) / (2 * math.pi))
    k0 = pi_t / (2 * math.pi)
    sin = sin_t / (2 * math.pi)
    return k, k0, sin, n2.sqrt()


def _check_teacher(theta, teacher):
    teacher = _theta(teacher, "teacher")
    _same(theta, teacher, "theta", "teacher")
    if teacher.shape[1] != theta.shape[1]:
        raise ValueError(f"teacher and theta must have the same number of columns, "
                         f"got {teacher.shape[1]} and {theta.shape[1]}")
    return teacher


def population_risk(theta: torch.Tensor, teacher: torch.Tensor, *, scaling: str = "mf",
                    chunk: int = 1024) -> torch.Tensor:
    r"""Population risk :math:`\frac12\mathbb E_{x\sim\mathcal N(0,I_d)}(h(\theta,x) - h^*(x))^2`, closed form.

    Relu units without bias; the teacher :math:`h^*(x) = \frac1k\sum_j a^*_j\mathrm{relu}(\langle w^*_j,x\rangle)`
    is itself a mean-field network given by its particles ``teacher``
    (shape ``(k, 1 + d)``).  With :math:`K(u,v) = \mathbb E[\mathrm{relu}(\langle u,x\rangle)\mathrm{relu}(\langle v,x\rangle)]`
    (degree-1 arc-cosine kernel, :mod:`mflib.arccos`),

    .. math::

       R = \tfrac12\Bigl(\alpha^2\sum_{ij}a_ia_jK(w_i,w_j) - \tfrac{2\alpha}{k}\sum_{ij}a_ia^*_jK(w_i,w^*_j)
           + \tfrac1{k^2}\sum_{ij}a^*_ia^*_jK(w^*_i,w^*_j)\Bigr).

    The :math:`m\times m` term is computed in row blocks of ``chunk``.
    """
    theta = _theta(theta)
    teacher = _check_teacher(theta, teacher)
    alpha = _alpha(theta.shape[0], scaling)
    chunk = _checks.integer(chunk, "chunk", minimum=1)
    a, w = theta[:, 0], theta[:, 1:]
    ta, tw = teacher[:, 0] / teacher.shape[0], teacher[:, 1:]
    ss = theta.new_zeros(())
    for i in range(0, w.shape[0], chunk):
        k, *_ = _kernel_blocks(w[i:i + chunk], w)
        ss = ss + a[i:i + chunk] @ (k @ a)
    kst, *_ = _kernel_blocks(w, tw)
    ktt, *_ = _kernel_blocks(tw, tw)
    return _checks.finite_result(0.5 * (alpha ** 2 * ss - 2 * alpha * (a @ (kst @ ta)) + ta @ (ktt @ ta)),
                                 "the risk", "theta or teacher (their scale)")


def population_grad(theta: torch.Tensor, teacher: torch.Tensor, *, scaling: str = "mf"):
    r"""Gradient of :func:`population_risk` with respect to the particles, closed form.

    With :math:`c = (\alpha a, -a^*/k)` the signed charges of the student and
    teacher units and :math:`v_j` their input weights,

    .. math::

       \nabla_{a_i}R = \alpha\sum_j c_jK(w_i,v_j),\qquad
       \nabla_{w_i}R = \alpha a_i\sum_j c_j\Bigl(\tfrac{\pi-\vartheta_{ij}}{2\pi}v_j
            + \tfrac{\sin\vartheta_{ij}}{2\pi}\lVert v_j\rVert\tfrac{w_i}{\lVert w_i\rVert}\Bigr).

    Cost :math:`O(m(m+k)d)`.

    Returns
    -------
    tuple of torch.Tensor
        The gradient, shape ``(m, 1 + d)``, and the risk (0-d tensor).
    """
    theta = _theta(theta)
    teacher = _check_teacher(theta, teacher)
    alpha = _alpha(theta.shape[0], scaling)
    gr, risk = _pop_grad_raw(theta, teacher, alpha)
    names = "theta or teacher (their scale)"
    return _checks.finite_result(gr, "the gradient", names), _checks.finite_result(risk, "the risk", names)


def _teacher_energy(teacher):
    tt = teacher[:, 0] / teacher.shape[0]
    ktt, *_ = _kernel_blocks(teacher[:, 1:], teacher[:, 1:])
    return tt @ (ktt @ tt)


def _pop_grad_raw(theta, teacher, alpha, tkt=None, need_risk=True):
    a, w = theta[:, 0], theta[:, 1:]
    v = torch.cat([w, teacher[:, 1:]], dim=0)
    c = torch.cat([alpha * a, -teacher[:, 0] / teacher.shape[0]])
    k, k0, sin, vnorm = _kernel_blocks(w, v)
    kc = k @ c                                                 # (m,)
    ga = alpha * kc
    wn = w.norm(dim=1, keepdim=True)
    what = w / torch.where(wn > 0, wn, torch.ones_like(wn))
    gw = (k0 * c) @ v + what * (sin @ (c * vnorm))[:, None]
    gw = gw * (alpha * a)[:, None]
    if not need_risk:                      # a training step that records nothing
        return torch.cat([ga[:, None], gw], dim=1), None
    # risk = (alpha^2 aKa - 2 alpha aK*t + tK**t)/2 and a.(alpha kc) = alpha^2 aKa - alpha aK*t
    tt = teacher[:, 0] / teacher.shape[0]
    if tkt is None:
        tkt = _teacher_energy(teacher)
    m = w.shape[0]
    risk = 0.5 * (alpha * (a @ kc) - alpha * (a @ (k[:, m:] @ tt)) + tkt)
    return torch.cat([ga[:, None], gw], dim=1), risk


def gaussian_teacher_data(teacher: torch.Tensor, n: int, *, activation: str = "relu",
                          bias: bool = False, noise: float = 0.0,
                          generator: torch.Generator | None = None):
    r"""Draw :math:`x_k\sim\mathcal N(0, I_d)` and :math:`y_k = h^*(x_k) + \text{noise}\cdot\varepsilon_k`.

    The teacher is a mean-field network (``forward(teacher, x, scaling="mf")``)
    with ``p`` input weights per unit; ``d = p - 1`` if ``bias`` else ``d = p``.

    Returns
    -------
    tuple of torch.Tensor
        ``x`` of shape ``(n, d)`` and ``y`` of shape ``(n,)`` on the teacher's device and dtype.
    """
    teacher = _theta(teacher, "teacher")
    n = _checks.size(n, "n")
    noise = _checks.real(noise, "noise", nonnegative=True)
    bias = _checks.flag(bias, "bias")
    _checks.choice(activation, "activation", ACTIVATIONS)
    g = _checks.generator(generator)
    d = teacher.shape[1] - 1 - int(bias)
    _checks.elements(n * (d + 1), "n")
    if d < 1:
        raise ValueError(f"teacher of shape {tuple(teacher.shape)} leaves no input (bias={bias})")
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    eps = torch.randn(n, generator=g, dtype=torch.float64)
    x = x.to(dtype=teacher.dtype, device=teacher.device)
    y = _forward(teacher, x, activation, "mf")
    return x, _checks.finite_result(y + noise * eps.to(dtype=teacher.dtype, device=teacher.device),
                                    "the labels", "teacher or noise (their scale)")


# ----------------------------------------------------------------------------- training
@dataclass
class Trajectory:
    """Result of :func:`train`.

    Attributes
    ----------
    theta : torch.Tensor
        Final particles (the last finite ones if the run diverged).
    steps : torch.Tensor
        Recorded step indices, shape ``(T,)`` (int64, on the CPU).
    times : torch.Tensor
        Recorded times ``steps * lr`` (float64, CPU).
    thetas : torch.Tensor or None
        Particles at the recorded steps, shape ``(T, m, 1 + p)``, if requested.
    risk : torch.Tensor
        Training objective at the recorded steps (population risk for
        ``method="population"``, empirical risk on the full data for ``"gd"``,
        the risk of the current mini-batch for ``"sgd"``), plus the penalty.
    diverged : bool
        True when non-finite values appeared; the records stop at the last
        finite one.
    """

    theta: torch.Tensor
    steps: torch.Tensor
    times: torch.Tensor
    thetas: torch.Tensor | None
    risk: torch.Tensor
    diverged: bool


def _record_steps(record, steps: int) -> torch.Tensor:
    return torch.tensor(_loop.schedule(steps, record), dtype=torch.long)


def _copy(theta):
    """A row-major copy (the training loop's particles are a transposed view of their store)."""
    return theta.clone(memory_format=torch.contiguous_format)


def _penalty_grad(theta, reg, lam):
    if reg == "l2":
        return lam * theta, 0.5 * lam * (theta * theta).sum(1).mean()
    a, w = theta[:, :1], theta[:, 1:]
    wn = w.norm(dim=1, keepdim=True)
    g = torch.cat([torch.sign(a) * wn, a.abs() * w / torch.where(wn > 0, wn, torch.ones_like(wn))], 1)
    return lam * g, lam * (a.abs() * wn).mean()


def train(theta: torch.Tensor, *, steps: int, lr: float, method: str = "gd",
          x: torch.Tensor | None = None, y: torch.Tensor | None = None,
          teacher: torch.Tensor | None = None, activation: str = "relu",
          teacher_activation: str | None = None, scaling: str = "mf", batch: int = 1,
          bias: bool = False,
          reg: str = "none", lam: float = 0.0, temperature: float = 0.0, record=None,
          keep_thetas: bool = True, on_diverge: str = "flag",
          generator: torch.Generator | None = None) -> Trajectory:
    r"""Train the particles by gradient descent, online SGD or population gradient flow,
    optionally with Langevin noise (noisy particle gradient descent).

    Each particle moves by
    :math:`\theta_i \leftarrow \theta_i - \eta\bigl(\frac1{m\alpha^2}\nabla_{\theta_i}R + \nabla V(\theta_i)\bigr)`,
    i.e. the step :math:`\eta m` of Mei, Montanari & Nguyen (2018) in the
    mean-field scaling (the explicit Euler scheme of the Wasserstein
    gradient flow of :math:`F(\mu) = R(\int\phi\,\mathrm d\mu) + \int V\mathrm d\mu`,
    with time :math:`t = \eta k`).

    With ``temperature`` :math:`\tau > 0` each step also adds
    :math:`\sqrt{2\eta\tau}\,\xi_i` with :math:`\xi_i\sim\mathcal N(0, I_{1+p})` i.i.d.
    over particles and steps (noisy particle gradient descent): the
    Euler--Maruyama scheme of the particle SDE
    :math:`\mathrm d\theta_i = -\nabla_\theta F'(\mu_m)(\theta_i)\,\mathrm dt + \sqrt{2\tau}\,\mathrm dB_i`
    in the mean-field scaling, whose many-particle limit is the mean-field
    Langevin (McKean--Vlasov) equation
    :math:`\partial_t\mu = \nabla\cdot(\mu\nabla F'(\mu)) + \tau\Delta\mu`, the
    Wasserstein gradient flow of the entropy-regularised objective

    .. math::

       G_\tau(\mu) = R\Bigl(\int\phi\,\mathrm d\mu\Bigr) + \frac\lambda2\int\lVert\theta\rVert^2\mathrm d\mu
          + \tau\int\mu\log\mu

    (with ``reg="l2"``; the weight decay is the confining term that makes
    :math:`G_\tau` bounded below and its minimiser a probability measure:
    Mei, Montanari & Nguyen 2018; Chizat 2022; Nitanda, Wu & Suzuki 2022).
    The recorded ``risk`` is :math:`R + \int V\mathrm d\mu_m` *without* the
    entropy, which an empirical measure does not have.  ``temperature=0``
    draws nothing and gives bit-identical results to plain training.

    Parameters
    ----------
    theta : torch.Tensor
        Initial particles ``(m, 1 + p)`` (not modified).
    steps : int
        Number of steps.
    lr : float
        Time step :math:`\eta > 0`.
    method : str
        ``"gd"``: full-batch gradient descent on ``(x, y)``.  ``"sgd"``: at
        each step a mini-batch of ``batch`` samples, drawn with replacement
        from ``(x, y)`` if given, else fresh :math:`x\sim\mathcal N(0,I_d)`
        labelled by ``teacher`` (online SGD on the population risk).
        ``"population"``: exact gradient of :func:`population_risk` (relu,
        no bias, Gaussian inputs, relu teacher).
    x, y : torch.Tensor, optional
        Training data, ``(n, d)`` and ``(n,)``.
    teacher : torch.Tensor, optional
        Teacher particles (mean-field network, ``(k, 1 + p)``).
    activation, teacher_activation : str
        Units of the student and of the teacher, ``"relu"`` or ``"sigmoid"``
        (default for the teacher: the student's).
    scaling : str or float
        ``"mf"``, ``"lazy"`` or an exponent in :math:`[1/2, 1]`, see :func:`forward`.
    batch : int
        Mini-batch size for ``"sgd"``.
    bias : bool
        Only for online SGD from a teacher: the units carry a bias, so the
        fresh inputs have ``d = p - 1`` coordinates (else ``d = p``).
    reg : str
        Penalty :math:`V`: :math:`\frac\lambda2\lVert\theta\rVert^2` (weight
        decay; for the 2-homogeneous relu it induces the :math:`\ell_1`
        variation norm of Bach 2017) or :math:`\lambda|a|\lVert w\rVert`
        (the path norm, Bach's :math:`\ell_1`-type penalty itself).
    lam : float
        :math:`\lambda \ge 0`.
    temperature : float
        Langevin temperature :math:`\tau \ge 0` (0: no noise).  Without a
        confining penalty (``reg="l2"``, ``lam > 0``) the noise makes the
        particles diffuse without bound.
    record : int or sequence of int, optional
        Steps at which to record (None: first and last; an int ``k``:
        ``k`` roughly log-spaced steps; a sequence: those steps).  Recording
        copies the particles only at those steps; the hot loop does no
        host synchronisation otherwise.
    keep_thetas : bool
        Keep the particles at the recorded steps.
    on_diverge : str
        ``"flag"`` or ``"raise"``.  On non-finite values, return with ``diverged=True`` (records cut at
        the last finite one) or raise :class:`mflib.Diverged`.
    generator : torch.Generator, optional
        CPU generator for the mini-batches and the Langevin noise (drawn on
        the CPU in float64, one ``(1 + p, m)`` block a step, then moved).

    Returns
    -------
    Trajectory
    """
    theta = _theta(theta)
    steps = _checks.size(steps, "steps", minimum=0)
    lr = _checks.real(lr, "lr", positive=True)
    bias = _checks.flag(bias, "bias")
    keep_thetas = _checks.flag(keep_thetas, "keep_thetas")
    _checks.choice(method, "method", METHODS)
    _checks.choice(activation, "activation", ACTIVATIONS)
    teacher_activation = activation if teacher_activation is None else teacher_activation
    _checks.choice(teacher_activation, "teacher_activation", ACTIVATIONS)
    _checks.choice(reg, "reg", REGS)
    _checks.choice(on_diverge, "on_diverge", ("flag", "raise"))
    lam = _checks.real(lam, "lam", nonnegative=True)
    temperature = _checks.real(temperature, "temperature", nonnegative=True)
    batch = _checks.size(batch, "batch")
    m = theta.shape[0]
    alpha = _alpha(m, scaling)
    pstep = lr / (m * alpha * alpha)
    g = _checks.generator(generator)
    if teacher is not None:
        teacher = _check_teacher(theta, teacher)
    dev, dt = theta.device, theta.dtype

    xt = None
    if method == "population":
        if teacher is None:
            raise ValueError("method='population' needs teacher")
        teacher = _check_teacher(theta, teacher)
        tkt = _teacher_energy(teacher)
        if activation != "relu" or teacher_activation != "relu":
            raise ValueError("method='population' has a closed form only for activation='relu' "
                             "(student and teacher)")
    elif method == "gd" or x is not None or y is not None:
        if x is None or y is None:
            raise ValueError(f"method={method!r} needs both x and y (or, for 'sgd', a teacher)")
        x = _checks.tensor(x, "x", ndim=2)
        y = _checks.tensor(y, "y", ndim=1)
        _checks.same_rows(x, y, "x", "y")
        _same(theta, x, "theta", "x")
        _same(x, y, "x", "y")
        xt = _augment(theta, x)
    else:
        if teacher is None:
            raise ValueError("method='sgd' needs data (x, y) or a teacher to draw fresh samples")
        teacher = _check_teacher(theta, teacher)
        d_x = theta.shape[1] - 1 - int(bool(bias))
        if d_x < 1:
            raise ValueError(f"theta of shape {tuple(theta.shape)} leaves no input (bias={bias})")

    rec = _record_steps(record, steps)
    per_step = {"population": m * (m + (teacher.shape[0] if teacher is not None else 0)) * 40,
                "gd": (xt.shape[0] if xt is not None else 0) * m * theta.shape[1] * 6,
                "sgd": batch * m * theta.shape[1] * 6}[method]
    if temperature > 0:
        per_step += theta.numel() * 20
    _checks.budget(float(steps + 1) * (per_step + 1e3), "steps (with the sizes of theta, x, teacher "
                   "and batch)")
    if keep_thetas:
        _checks.elements(rec.numel() * theta.numel(), "record and theta (keep_thetas=True)")
    rec_list = rec.tolist()
    rec_set = set(rec_list)
    thetas = [] if keep_thetas else None
    risks, done = [], []
    # The particles live in a (1 + p, m) row-major store, seen as the (m, 1 + p) tensor ``cur``:
    # the products' operands (W^T, a) are then contiguous and the update of the input weights by
    # the (p, m) product is one contiguous pass, not a transposed one.
    cur = theta.detach().T.contiguous().T
    last_ok = _copy(cur)
    work = {}
    diverged = False
    noise_scale = math.sqrt(2.0 * lr * temperature)
    noise_t = (theta.shape[1], m)

    def objective(th, risk):
        if reg == "none" or lam == 0:
            return risk
        return risk + _penalty_grad(th, reg, lam)[1]

    for k in range(steps + 1):
        if method == "population":
            gr, risk = _pop_grad_raw(cur, teacher, alpha, tkt, need_risk=k in rec_set)
            ga, gw = gr[:, 0], gr[:, 1:]
        elif xt is not None and method == "gd":
            ga, gw, r = _grad_raw(cur, xt, y, activation, alpha, work)
            risk = None
        else:
            if xt is not None:
                idx = torch.randint(0, xt.shape[0], (batch,), generator=g).to(dev)
                xb, yb = xt[idx], y[idx]
            else:
                xb = torch.randn(batch, d_x, generator=g, dtype=torch.float64).to(dtype=dt, device=dev)
                yb = forward(teacher, xb, activation=teacher_activation, scaling="mf")
                xb = _augment(cur, xb)
            ga, gw, r = _grad_raw(cur, xb, yb, activation, alpha, work)
            risk = None
        if k in rec_set:
            if risk is None:
                risk = 0.5 * (r * r).mean()
            val = objective(cur, risk)
            if not bool(torch.isfinite(val)) or not bool(torch.isfinite(cur).all()):
                if k == 0:
                    raise ValueError("the initial risk is not finite: theta, x, y, teacher or lam "
                                     "out of range")
                diverged = True
                break
            risks.append(val.detach())
            done.append(k)
            last_ok = _copy(cur)
            if thetas is not None:
                thetas.append(last_ok)
        if k == steps:
            break
        if reg != "none" and lam > 0:
            cur.add_(_penalty_grad(cur, reg, lam)[0], alpha=-lr)
        cur[:, 0].add_(ga, alpha=-pstep)
        cur[:, 1:].add_(gw, alpha=-pstep)
        if noise_scale:
            # one (1 + p, m) block: the layout of the particles' store, a contiguous pass
            xi = torch.randn(noise_t, generator=g, dtype=torch.float64)
            cur.add_(xi.to(dtype=dt, device=dev).T, alpha=noise_scale)
    if not diverged and not bool(torch.isfinite(cur).all()):
        diverged = True
    if diverged:
        if on_diverge == "raise":
            raise Diverged(f"training diverged (non-finite values) before step {k}; lower lr={lr}")
        cur = last_ok
    steps_t = torch.tensor(done, dtype=torch.long)
    return Trajectory(theta=_copy(cur), steps=steps_t, times=steps_t.to(torch.float64) * lr,
                      thetas=torch.stack(thetas) if thetas else None,
                      risk=torch.stack(risks) if risks else theta.new_zeros(0),
                      diverged=diverged)


# ----------------------------------------------------------------------------- diagnostics
def relative_scale(theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor, *,
                   scaling: str = "mf") -> dict:
    r"""Norms behind the lazy-training criterion of Chizat, Oyallon & Bach (2019), relu units.

    In :math:`L^2` of the empirical measure of ``x``:
    :math:`\kappa = \lVert h(\theta)-y\rVert\,\lVert D^2h(\theta)\rVert/\lVert Dh(\theta)\rVert^2`,
    with :math:`\lVert Dh\rVert^2 = \lambda_{\max}(JJ^\top)/n` and, because
    :math:`D^2h` is block diagonal over particles,
    :math:`\lVert D^2h\rVert = \alpha\max_i\lVert\nabla^2\phi(\theta_i)\rVert` where for relu
    :math:`\nabla^2\phi(\theta_i)[u,u] = 2u_a\mathbf 1_{\langle w_i,\tilde x\rangle>0}\langle u_w,\tilde x\rangle`,
    of norm :math:`\lambda_{\max}(\frac1n\sum_k\mathbf 1_{\langle w_i,\tilde x_k\rangle>0}\tilde x_k\tilde x_k^\top)^{1/2}`.

    Returns
    -------
    dict
        ``h_norm`` (:math:`\lVert h\rVert`), ``residual``, ``jac`` (:math:`\lVert Dh\rVert`),
        ``hess`` (:math:`\lVert D^2h\rVert`), ``kappa`` (floats).
    """
    theta = _theta(theta)
    x = _checks.tensor(x, "x", ndim=2)
    y = _checks.tensor(y, "y", ndim=1)
    _checks.same_rows(x, y, "x", "y")
    _same(theta, x, "theta", "x")
    alpha = _alpha(theta.shape[0], scaling)
    xt = _augment(theta, x)
    n = xt.shape[0]
    z = xt @ theta[:, 1:].T
    s, ds = torch.relu(z), (z > 0).to(z.dtype)
    h = alpha * (s @ theta[:, 0])
    da = ds * theta[:, 0]
    jjt = alpha ** 2 * (s @ s.T + (da @ da.T) * (xt @ xt.T))
    names = "theta, x or y (their scale)"
    _checks.finite_result(jjt, "J J^T", names)
    jac = math.sqrt(max(float(torch.linalg.eigvalsh(jjt)[-1]), 0.0) / n)
    blocks = _checks.finite_result(torch.einsum("km,ki,kj->mij", ds, xt, xt) / n, "the Hessian blocks", names)
    hess = alpha * math.sqrt(max(float(torch.linalg.eigvalsh(blocks)[:, -1].max()), 0.0))
    hn = float(torch.sqrt((h * h).mean()))
    res = float(torch.sqrt(((h - y) ** 2).mean()))
    if jac == 0:
        raise ValueError("Dh(theta) vanishes on x: the criterion is undefined")
    names = "theta, x or y (their scale)"
    return {"h_norm": _checks.finite_result(hn, "the norm of h", names),
            "residual": _checks.finite_result(res, "the residual", names),
            "jac": _checks.finite_result(jac, "the Jacobian norm", names),
            "hess": _checks.finite_result(hess, "the Hessian norm", names),
            "kappa": _checks.finite_result(res * hess / jac ** 2, "kappa", names)}


def rms_displacement(theta0: torch.Tensor, theta1: torch.Tensor) -> float:
    r"""Root-mean-square particle displacement :math:`\bigl(\frac1m\sum_i\lVert\theta_i^1-\theta_i^0\rVert^2\bigr)^{1/2}`."""
    theta0 = _theta(theta0, "theta0")
    theta1 = _theta(theta1, "theta1")
    if theta0.shape != theta1.shape:
        raise ValueError(f"theta0 and theta1 must have the same shape, got {tuple(theta0.shape)} "
                         f"and {tuple(theta1.shape)}")
    return _checks.finite_result(float(((theta1 - theta0) ** 2).sum(1).mean().sqrt()), "the displacement",
                                 "theta0 or theta1 (their scale)")


def relu_kernel(x1: torch.Tensor, x2: torch.Tensor | None = None, *, kind: str = "ntk") -> torch.Tensor:
    r"""Infinite-width kernels of the two-layer relu network :math:`\frac1{\sqrt m}\sum_i a_i\mathrm{relu}(\langle w_i, x\rangle)`
    with :math:`a_i\sim\mathcal N(0,1)`, :math:`w_i\sim\mathcal N(0, I_d/d)`.

    ``kind="nngp"``: :math:`\Sigma(x,x') = \frac{\lVert x\rVert\lVert x'\rVert}{d}\kappa_1(\vartheta)`;
    ``kind="ntk"``: :math:`\Sigma(x,x') + \langle x,x'\rangle\kappa_0(\vartheta)`
    (both layers trained; Jacot et al. 2018, arc-cosine kernels of :mod:`mflib.arccos`).

    Returns
    -------
    torch.Tensor
        Shape ``(n1, n2)``.
    """
    x1 = _checks.tensor(x1, "x1", ndim=2)
    x2 = x1 if x2 is None else _checks.tensor(x2, "x2", ndim=2)
    _same(x1, x2, "x1", "x2")
    if x1.shape[1] != x2.shape[1]:
        raise ValueError(f"x1 and x2 must have the same number of columns, got {x1.shape[1]} and {x2.shape[1]}")
    _checks.choice(kind, "kind", ("ntk", "nngp"))
    d = x1.shape[1]
    s12 = x1 @ x2.T
    theta, norm = arccos._angle(s12, (x1 * x1).sum(1)[:, None], (x2 * x2).sum(1)[None, :])
    k = norm * arccos._kappa1(theta) / d
    if kind == "ntk":
        k = k + s12 * arccos._kappa0(theta)
    return _checks.finite_result(k, "the kernel", "x1 or x2 (their scale)")


def sgd_stream_distance(theta: torch.Tensor, teacher: torch.Tensor, x_eval: torch.Tensor, *,
                        lr: float, time: float, batch: int, seeds=(0, 1), records: int = 9,
                        activation: str = "relu") -> float:
    r"""The SGD-noise part of the mean-field limit of SGD: the squared distance
    between two online-SGD runs from the *same* particles with independent
    sample streams,

    .. math::

       D^2_\eta = \sup_{t\le T}\ \frac1{n}\sum_{k=1}^{n}\bigl(h(\theta^{A}_{t}, x_k) - h(\theta^{B}_{t}, x_k)\bigr)^2 .

    The common initial particles remove the :math:`1/m` part of the bound of
    Mei, Montanari & Nguyen (2018), :math:`\max\{\eta, 1/m\}`; what is left is
    the fluctuation of SGD around its mean, of variance :math:`O(\eta/B)` per
    unit time in the diffusion approximation, so :math:`D^2_\eta \propto \eta/B`.

    Parameters
    ----------
    theta : torch.Tensor
        Initial particles ``(m, 1 + d)`` (mean-field scaling, no bias).
    teacher : torch.Tensor
        Teacher particles; fresh inputs :math:`x\sim\mathcal N(0, I_d)` are labelled by it.
    x_eval : torch.Tensor
        Points ``(n, d)`` on which the distance is measured.
    lr : float
        Time step :math:`\eta`.
    time : float
        Horizon :math:`T`; the runs take ``round(time / lr)`` steps.
    batch : int
        Mini-batch size :math:`B`.
    seeds : tuple of int
        Seeds of the two sample streams (distinct for independent streams).
    records : int
        Number of equally spaced times at which the distance is measured.
    activation : str
        ``"relu"`` or ``"sigmoid"``.

    Returns
    -------
    float

    Raises
    ------
    mflib.Diverged
        If a run diverges.
    """
    theta = _theta(theta)
    x_eval = _checks.tensor(x_eval, "x_eval", ndim=2)
    _same(theta, x_eval, "theta", "x_eval")
    lr = _checks.real(lr, "lr", positive=True)
    time = _checks.real(time, "time", positive=True)
    if x_eval.shape[0] < 1:
        raise ValueError("x_eval must hold at least one point")
    batch = _checks.size(batch, "batch")
    if not isinstance(seeds, (tuple, list)) or len(seeds) != 2:
        raise TypeError("seeds must be a pair of integers")
    seeds = [_checks.seed(s, "seeds") for s in seeds]
    ratio = time / lr
    if not ratio <= _checks.MAX_SIZE:
        raise ValueError(f"time / lr = {ratio:.3g} steps: more than the {_checks.MAX_SIZE} one call may "
                         f"take (raise lr or lower time)")
    steps = max(1, int(round(ratio)))
    records = _checks.size(records, "records", minimum=2, maximum=10_000)  # duplicates merged below
    _checks.budget(10.0 * steps * batch * theta.numel(), "time / lr, batch and theta")
    rec = torch.linspace(0, steps, records).round().long().unique().tolist()
    outs = []
    for s in seeds:
        try:
            tr = train(theta, steps=steps, lr=lr, method="sgd", teacher=teacher, batch=batch,
                       activation=activation, record=rec, on_diverge="raise",
                       generator=_checks.generator(None, default_seed=s))
        except ValueError as err:
            raise ValueError(f"theta, teacher or lr out of range: {err}") from err
        outs.append(torch.stack([forward(t, x_eval, activation=activation) for t in tr.thetas]))
    dist = float(((outs[0] - outs[1]) ** 2).mean(1).max())
    return _checks.finite_result(dist, "the distance", "x_eval, theta or teacher (their scale)")


def linearised_displacement(theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor, *,
                            scaling: str = "lazy", activation: str = "relu") -> float:
    r"""Root-mean-square particle displacement of the *linearised* model fitted
    from ``theta``: gradient descent on
    :math:`h(\theta_0) + Dh(\theta_0)(\theta - \theta_0)` started at
    :math:`\theta_0` stays in the row space of :math:`J = Dh(\theta_0)` and, when
    :math:`J` has full row rank, converges to the minimum-norm change
    :math:`\Delta = J^+(y - h(\theta_0))`; returned is
    :math:`\lVert\Delta\rVert/\sqrt m`, which lazy training approaches as
    :math:`\kappa\to0` (Chizat, Oyallon & Bach 2019).

    Parameters
    ----------
    theta : torch.Tensor
        Initial particles ``(m, 1 + p)``.
    x, y : torch.Tensor
        Data ``(n, d)`` and ``(n,)``.
    scaling, activation : str
        As in :func:`forward`.

    Returns
    -------
    float
    """
    theta = _theta(theta)
    x = _checks.tensor(x, "x", ndim=2)
    y = _checks.tensor(y, "y", ndim=1)
    _checks.same_rows(x, y, "x", "y")
    _same(theta, x, "theta", "x")
    m = theta.shape[0]
    J = torch.func.jacrev(lambda t: forward(t, x, activation=activation, scaling=scaling))(theta)
    J = J.reshape(x.shape[0], -1)
    r = y - forward(theta, x, activation=activation, scaling=scaling)
    delta = torch.linalg.pinv(J) @ r                      # minimum-norm solution of J delta = r
    return _checks.finite_result(float(delta.norm() / math.sqrt(m)), "the displacement",
                                 "theta, x or y (their scale)")


def cap_particles(m: int, d: int, *, radius: float = 1.0, generator: torch.Generator | None = None,
                  dtype=torch.float64, device=None) -> torch.Tensor:
    r"""Particles on the cap :math:`\{a > \lVert w\rVert\}` of the sphere of radius ``radius``
    in :math:`\mathbb R^{1+d}`: an initialisation that *lacks diversity* in the sense of
    Chizat & Bach (2018).

    :math:`\theta_i = r(\cos\varphi_i, \sin\varphi_i\,u_i)` with :math:`u_i` uniform on the
    unit sphere of :math:`\mathbb R^d` (every input direction is present) and
    :math:`\varphi_i` uniform on :math:`[0, \pi/4)`.  For relu units without penalty
    :math:`a_i^2 - \lVert w_i\rVert^2 > 0` is conserved by the gradient flow, so every
    output weight stays positive and the network stays a convex function of :math:`x`
    (a non-negative combination of relus): it cannot fit a teacher with output weights of
    both signs, however wide it is.

    Parameters
    ----------
    m, d : int
        Number of particles and input dimension (no bias).
    radius : float
        Norm of every particle.
    generator : torch.Generator, optional
        CPU generator.

    Returns
    -------
    torch.Tensor
        Shape ``(m, 1 + d)``.
    """
    m = _checks.size(m, "m")
    d = _checks.size(d, "d")
    _checks.elements(m * (d + 1), "m and d")
    radius = _checks.real(radius, "radius", positive=True)
    g = _checks.generator(generator)
    dtype = _checks.dtype(dtype, default=torch.float64)
    device = _checks.device(device)
    u = torch.randn(m, d, generator=g, dtype=torch.float64)
    u = u / u.norm(dim=1, keepdim=True)
    phi = torch.rand(m, 1, generator=g, dtype=torch.float64) * (math.pi / 4)
    theta = radius * torch.cat([phi.cos(), phi.sin() * u], dim=1)
    return theta.to(dtype=dtype, device=device)
