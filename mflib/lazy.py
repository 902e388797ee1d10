r"""Lazy training: teacher--student data, symmetrised initialisation, training
of a rescaled model :math:`\alpha h` and of its tangent model, and the relative
scale criterion of Chizat, Oyallon & Bach (2019).

A model is handled in functional form, ``fn(params, x)``, where ``params`` is a
dict of tensors (as in ``torch.func.functional_call``) and the output has
shape ``(n,)`` (scalar model) or ``(n, k)`` (``k`` outputs).  For a
``torch.nn.Module`` use :func:`as_function`; the tangent model of a module is
:class:`mflib.gp.Linearized`.

Lazy training through rescaling.  For a model :math:`h` with
:math:`h(w_0) = 0` and the square loss
:math:`R(f) = \frac{1}{2n}\sum_i \lVert f(x_i) - y_i\rVert^2`, gradient descent on

.. math::

   F_\alpha(w) = \frac{1}{\alpha^2} R\bigl(\alpha h(w)\bigr)

and on the same objective with :math:`h` replaced by its tangent model
:math:`\bar h(w) = h(w_0) + Dh(w_0)(w - w_0)` learn the same predictor
:math:`\alpha h` up to :math:`O(1/\alpha)`, while the parameters move by
:math:`O(1/\alpha)` (Chizat, Oyallon & Bach, 2019, Section 2).  The
rescaling by :math:`1/\alpha^2` makes the function-space dynamics of the
tangent model independent of :math:`\alpha`, so that one step size serves
every :math:`\alpha`.

The criterion (same paper, Section 2) is

.. math::

   \kappa_h(w_0) = \frac{\lVert h(w_0) - y\rVert}{\lVert Dh(w_0)\rVert}
                   \cdot \frac{\lVert D^2 h(w_0)\rVert}{\lVert Dh(w_0)\rVert},

with the empirical norm :math:`\lVert g\rVert^2 = \frac1n\sum_i g(x_i)^2`
on the outputs, the operator norm of :math:`Dh(w_0)\colon \mathbb R^p \to
L^2(\hat\rho_n)` and that of the symmetric bilinear map :math:`D^2h(w_0)`;
lazy training occurs when :math:`\kappa \ll 1`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch.func import functional_call, grad, jvp, vjp

from mflib import _checks
from mflib.config import DTYPE, generator as _generator

__all__ = [
    "TeacherStudent", "sphere", "teacher_student", "two_layer", "two_layer_init",
    "TwoLayer", "as_function", "centred", "TrainResult", "train", "displacement",
    "rms", "jacobian_norm", "hessian_norm", "Kappa", "relative_scale",
    "Digits", "digits", "conv_net", "small_cnn", "SelectOutput", "accuracy",
    "BatchRun", "pairs_init", "relu_teachers", "relu_outputs", "relu_gd", "relu_online_sgd",
    "sphere_gated_inner", "sphere_relu_loss", "TangentFit", "sphere_tangent_fit", "relu_tangent_kernel",
]


# ----------------------------------------------------------------------------- helpers

def _gen(generator, seed):
    if generator is not None and seed is not None:
        raise ValueError("give generator or seed, not both")
    if generator is None:
        return _generator(0 if seed is None else _checks.seed(seed))
    return _checks.generator(generator)


def _device(device):
    return _checks.device(device)


def _dtype(dtype):
    return _checks.dtype(dtype)


def _params(params, name="params", fn=None):
    if not isinstance(params, dict) or not params:
        raise TypeError(f"{name} must be a non-empty dict of tensors, got {type(params).__name__}")
    first = None
    for k, v in params.items():
        _checks.tensor(v, f"{name}[{k!r}]")
        if first is None:
            first = (k, v)
        else:
            _checks.matching(v, first[1], f"{name}[{k!r}]", f"{name}[{first[0]!r}]")
    _check_keys(params, getattr(fn, "param_names", None), name)
    return params


def _check_keys(params, expected, name):
    """A model from :func:`as_function` knows its parameter names: a dict missing one
    would silently fall back to the module's own tensor, so it is refused."""
    if expected is None:
        return
    missing, extra = sorted(set(expected) - set(params)), sorted(set(params) - set(expected))
    if missing or extra:
        raise ValueError(f"{name} must hold exactly the model's parameters {sorted(expected)}; "
                         f"missing {missing}, unexpected {extra}")


def _fn(fn):
    _checks.function(fn, "fn")
    return fn


def _model_output(fn, params, x, name="params"):
    """Evaluate fn(params, x), turning a failure of the user's model into a clear error."""
    try:
        out = fn(params, x)
    except (TypeError, ValueError):
        raise
    except (RuntimeError, KeyError, IndexError) as err:
        raise ValueError(f"fn(params, x) failed on {name} and x ({type(err).__name__}: {err})") from err
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"fn must return a tensor, got {type(out).__name__}")
    return out


def _dot(u, v):
    return sum((u[k] * v[k]).sum() for k in u)


def _norm(u):
    return torch.sqrt(_dot(u, u))


def _scale(u, s):
    return {k: v * s for k, v in u.items()}


def _random_like(params, gen):
    return {k: torch.randn(v.shape, generator=gen, dtype=v.dtype).to(v.device)
            for k, v in params.items()}


def _detach(params):
    return {k: v.detach().clone() for k, v in params.items()}


# ----------------------------------------------------------------------------- data

@dataclass
class TeacherStudent:
    r"""Teacher--student regression data on the unit sphere :math:`S^{d-1}`.

    Attributes
    ----------
    x_train, x_test : torch.Tensor
        Inputs, shapes ``(n_train, d)`` and ``(n_test, d)``, unit norm.
    y_train, y_test : torch.Tensor
        Labels :math:`y = \sum_k b^*_k \,\mathrm{relu}(a^*_k\cdot x)`.
    teacher_a : torch.Tensor
        Teacher's input weights, shape ``(k, d)``, unit rows.
    teacher_b : torch.Tensor
        Teacher's output weights, shape ``(k,)``, entries :math:`\pm 1`.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    teacher_a: torch.Tensor
    teacher_b: torch.Tensor


def sphere(n, d, *, generator=None, seed=None, dtype=DTYPE, device=None) -> torch.Tensor:
    """Draw ``n`` points uniformly on the unit sphere of :math:`\\mathbb R^d`.

    Drawn on the CPU from ``generator`` (or a fresh one seeded with ``seed``)
    and moved to ``device``; returns shape ``(n, d)``.
    """
    n = _checks.size(n, "n")
    d = _checks.size(d, "d")
    _checks.elements(n * d, "n and d")
    gen = _gen(generator, seed)
    dev = _device(device)
    z = torch.randn(n, d, generator=gen, dtype=_dtype(dtype))
    z = z / z.norm(dim=1, keepdim=True).clamp_min(1e-300)
    return z.to(dev)


_ACTIVATIONS = {"relu": torch.relu, "tanh": torch.tanh, "gelu": torch.nn.functional.gelu,
                "softplus": torch.nn.functional.softplus}


def two_layer(params: dict, x: torch.Tensor, *, scale: float = 1.0,
              activation: str = "relu") -> torch.Tensor:
    r"""Two-layer network :math:`h(w, x) = s\sum_{j=1}^m b_j\,\sigma(a_j\cdot x)`.

    Parameters
    ----------
    params : dict
        ``{"a": (m, d), "b": (m,)}``.
    x : torch.Tensor
        Inputs, shape ``(n, d)``.
    scale : float
        The output factor :math:`s`.
    activation : str
        :math:`\sigma`: ``"relu"`` (default), ``"tanh"``, ``"gelu"`` or
        ``"softplus"`` (smooth ones satisfy the Lipschitz-derivative assumption
        of the lazy-training theorems).

    Returns
    -------
    torch.Tensor
        Shape ``(n,)``.
    """
    if not isinstance(params, dict) or "a" not in params or "b" not in params:
        raise TypeError("params must be a dict with keys 'a' (m, d) and 'b' (m,)")
    a, b = params["a"], params["b"]
    for k, v in (("a", a), ("b", b)):
        _checks.tensor(v, f"params[{k!r}]")
    if a.ndim != 2 or b.ndim != 1 or a.shape[0] != b.shape[0]:
        raise ValueError(f"params must hold a of shape (m, d) and b of shape (m,), got "
                         f"{tuple(a.shape)} and {tuple(b.shape)}")
    _checks.tensor(x, "x")
    if x.ndim != 2 or x.shape[1] != a.shape[1]:
        raise ValueError(f"x must be a tensor of shape (n, {a.shape[1]}), got {tuple(x.shape)}")
    if x.dtype != a.dtype or b.dtype != a.dtype:
        raise TypeError(f"x, params['a'] and params['b'] must have the same dtype, got "
                        f"{x.dtype}, {a.dtype} and {b.dtype}")
    scale = _checks.real(scale, "scale")
    act = _ACTIVATIONS[_checks.choice(activation, "activation", _ACTIVATIONS)]
    return scale * (act(x @ a.T) @ b)


def teacher_student(n_train: int, n_test: int, *, d: int = 2, n_teacher: int = 3,
                    generator=None, seed=None, dtype=DTYPE, device=None) -> TeacherStudent:
    r"""Teacher--student data: inputs uniform on :math:`S^{d-1}`, labels from a
    teacher :math:`y = \sum_{k=1}^{K} b^*_k\,\mathrm{relu}(a^*_k\cdot x)` with unit
    neurons :math:`\lVert a^*_k\rVert = 1` and output weights :math:`b^*_k = \pm 1`
    (alternating signs, starting with :math:`+1`).

    This is the setting of the first numerical illustration of Chizat,
    Oyallon & Bach (2019), Figure 1.

    Parameters
    ----------
    n_train, n_test : int
        Numbers of training and test points (``n_test`` may be 0).
    d : int
        Input dimension (``d = 2``: the circle).
    n_teacher : int
        Number :math:`K` of teacher neurons.
    generator : torch.Generator, optional
        CPU generator (or ``seed``).
    dtype, device
        Of the returned tensors.
    """
    n_train = _checks.size(n_train, "n_train")
    n_test = _checks.size(n_test, "n_test", minimum=0)
    d = _checks.size(d, "d")
    n_teacher = _checks.size(n_teacher, "n_teacher")
    _checks.elements((n_train + n_test + n_teacher) * d, "n_train, n_test, n_teacher and d")
    gen = _gen(generator, seed)
    dtype = _dtype(dtype)
    dev = _device(device)
    ta = sphere(n_teacher, d, generator=gen, dtype=dtype)
    tb = torch.tensor([(-1.0) ** k for k in range(n_teacher)], dtype=dtype)
    x = sphere(n_train + n_test, d, generator=gen, dtype=dtype)
    y = two_layer({"a": ta, "b": tb}, x)
    return TeacherStudent(x[:n_train].to(dev), y[:n_train].to(dev), x[n_train:].to(dev),
                          y[n_train:].to(dev), ta.to(dev), tb.to(dev))


def two_layer_init(m: int, d: int, *, tau: float = 1.0, symmetric: bool = True, generator=None,
                   seed=None, dtype=DTYPE, device=None) -> dict:
    r"""Balanced initialisation of :func:`two_layer`, symmetrised by default.

    Each neuron has :math:`a_j = \tau u_j` with :math:`u_j` uniform on the
    sphere and :math:`b_j = \pm\tau`, so :math:`\lvert b_j\rvert = \lVert a_j\rVert = \tau`.

    * ``symmetric=True``: the first :math:`m/2` neurons have :math:`b_j = \tau`
      and the last :math:`m/2` are their copies with :math:`b_j` negated.
      Hence :math:`h(w_0, \cdot) = 0` up to rounding (the centring assumed by lazy
      training, Chizat, Oyallon & Bach 2019, Section 2).
    * ``symmetric=False``: independent neurons with random signs.

    Parameters
    ----------
    m : int
        Number of neurons (even when ``symmetric``).
    d : int
        Input dimension.
    tau : float
        Initialisation scale :math:`\tau > 0`.
    symmetric : bool
        Symmetrised (default) or i.i.d.

    Returns
    -------
    dict
        ``{"a": (m, d), "b": (m,)}``.
    """
    m = _checks.size(m, "m")
    symmetric = _checks.flag(symmetric, "symmetric")
    if symmetric and m % 2:
        raise ValueError(f"m must be even for a symmetrised initialisation (neurons come in pairs), got {m}")
    d = _checks.size(d, "d")
    _checks.elements(m * d, "m and d")
    tau = _checks.real(tau, "tau", positive=True)
    gen = _gen(generator, seed)
    dtype = _dtype(dtype)
    dev = _device(device)
    if symmetric:
        half = sphere(m // 2, d, generator=gen, dtype=dtype)
        a = torch.cat([half, half])
        b = torch.cat([torch.ones(m // 2, dtype=dtype), -torch.ones(m // 2, dtype=dtype)])
    else:
        a = sphere(m, d, generator=gen, dtype=dtype)
        b = torch.randint(0, 2, (m,), generator=gen).to(dtype) * 2 - 1
    return {"a": (tau * a).to(dev), "b": (tau * b).to(dev)}


# ----------------------------------------------------------------------------- models


class TwoLayer(torch.nn.Module):
    r"""The two-layer network of :func:`two_layer` as a module, initialised by
    :func:`two_layer_init` (parameters ``a`` and ``b``).

    Parameters
    ----------
    m, d : int
        Neurons and input dimension.
    tau : float
        Initialisation scale.
    symmetric : bool
        Symmetrised initialisation (:math:`h(w_0) = 0`).
    scale : float
        Output factor :math:`s`.
    activation : str
        See :func:`two_layer`.
    seed : int
        Seed of the initialisation.
    dtype, device
        Of the parameters.
    """

    def __init__(self, m, d, *, tau=1.0, symmetric=True, scale=1.0, activation="relu", seed=0,
                 dtype=DTYPE, device=None):
        super().__init__()
        seed = _checks.seed(seed)
        p = two_layer_init(m, d, tau=tau, symmetric=symmetric, seed=seed, dtype=dtype,
                           device=device)
        self.a = torch.nn.Parameter(p["a"])
        self.b = torch.nn.Parameter(p["b"])
        self.scale = _checks.real(scale, "scale", positive=True)
        self.activation = _checks.choice(activation, "activation", _ACTIVATIONS)

    def forward(self, x):
        """Evaluate on inputs of shape ``(n, d)``; returns shape ``(n,)``."""
        return two_layer({"a": self.a, "b": self.b}, x, scale=self.scale,
                         activation=self.activation)


def as_function(module: torch.nn.Module):
    """Functional form of a module: returns ``(fn, params)`` with
    ``fn(params, x) = functional_call(module, params, (x,))`` (a trailing
    output dimension of size 1 is squeezed) and ``params`` a detached copy of
    the module's parameters."""
    _checks.instance(module, torch.nn.Module, "module")
    params = {k: v.detach().clone() for k, v in module.named_parameters()}
    names = frozenset(params)

    def fn(p, x):
        _checks.instance(p, dict, "params")
        _check_keys(p, names, "params")
        out = functional_call(module, p, (x,))
        return out.squeeze(-1) if out.ndim == 2 and out.shape[1] == 1 else out

    fn.param_names = names
    return fn, params


def centred(fn, params0: dict):
    r"""The centred model :math:`h(w, x) - h(w_0, x)`, which vanishes at
    :math:`w_0` (the alternative to a symmetrised initialisation used by
    Chizat, Oyallon & Bach (2019) for their convolutional networks)."""
    fn = _fn(fn)
    p0 = _detach(_params(params0, "params0", fn))
    # h(w0, x) for the last x seen: a training loop calls fc on the same inputs at every
    # step, and recomputing the same forward pass each time doubles its cost.  The cache
    # is keyed on the tensor itself and its version counter (any in-place change of x
    # invalidates it), so the result is the same as recomputing.
    cache = {}

    def fc(p, x):
        key = cache.get("x")
        if key is not x or cache.get("version") != getattr(x, "_version", None):
            with torch.no_grad():
                base = fn(p0, x)
            cache.update(x=x, version=getattr(x, "_version", None), base=base)
        return fn(p, x) - cache["base"]

    if getattr(fn, "param_names", None) is not None:
        fc.param_names = fn.param_names
    return fc


# ----------------------------------------------------------------------------- training

@dataclass
class TrainResult:
    r"""Result of :func:`train`.

    Attributes
    ----------
    params : dict
        Parameters at the last finite step.
    steps : list of int
        Steps at which the losses (and, if kept, the parameters) were recorded.
    train_loss, test_loss : list of float
        :math:`R(\alpha h)` on the training and test sets (the test list is
        empty without test data).
    history : list of dict
        Parameter snapshots at ``steps`` (only with ``keep_params=True``).
    diverged : bool
        True when a non-finite loss stopped the run.
    """

    params: dict
    steps: list = field(default_factory=list)
    train_loss: list = field(default_factory=list)
    test_loss: list = field(default_factory=list)
    history: list = field(default_factory=list)
    diverged: bool = False


def _risk(out, y):
    diff = out - y
    if diff.ndim == 1:
        return 0.5 * (diff ** 2).mean()
    return 0.5 * (diff ** 2).sum(dim=tuple(range(1, diff.ndim))).mean()


def train(fn, params0: dict, x: torch.Tensor, y: torch.Tensor, *, alpha: float = 1.0,
          lr: float, steps: int, x_test=None, y_test=None, record_every: int | None = None,
          keep_params: bool = False, batch_size: int | None = None, generator=None,
          momentum: float = 0.0) -> TrainResult:
    r"""Gradient descent on the rescaled objective
    :math:`F_\alpha(w) = \alpha^{-2} R(\alpha\, h(w))`, with
    :math:`R(f) = \frac{1}{2n}\sum_i\lVert f(x_i) - y_i\rVert^2`
    (Chizat, Oyallon & Bach, 2019).

    ``fn`` is the model :math:`h` in functional form: pass :func:`centred` or a
    symmetrised initialisation for :math:`h(w_0) = 0`, and
    ``as_function(mflib.gp.Linearized(module))`` for the tangent model.  Steps are those of
    :class:`torch.optim.SGD`, written out (full batch unless ``batch_size`` is given).

    Parameters
    ----------
    fn : callable
        ``fn(params, x)`` with output ``(n,)`` or ``(n, k)``.
    params0 : dict
        Initial parameters (not modified).
    x, y : torch.Tensor
        Training inputs and targets (``y`` shaped like the output).
    alpha : float
        Output scale :math:`\alpha > 0`.
    lr : float
        Step size :math:`\eta > 0`.
    steps : int
        Number of steps.
    x_test, y_test : torch.Tensor, optional
        Test data; the test risk :math:`R(\alpha h)` is recorded too.
    record_every : int, optional
        Record every that many steps (default: about 100 records).
    keep_params : bool
        Keep parameter snapshots at the recorded steps.
    batch_size : int, optional
        Mini-batch size for SGD (sampled without replacement each step from
        ``generator``).
    generator : torch.Generator, optional
        CPU generator of the mini-batches (default: seeded with 0).
    momentum : float
        Momentum of :class:`torch.optim.SGD`.

    Returns
    -------
    TrainResult
        Losses are those of the model :math:`\alpha h` (not rescaled).  A run
        whose loss becomes non-finite stops with ``diverged=True`` and the
        last finite parameters.
    """
    fn = _fn(fn)
    params0 = _params(params0, "params0", fn)
    x = _checks.tensor(x, "x", ndim=(1, 2, 3, 4, 5), nonempty=True)
    y = _checks.tensor(y, "y", ndim=(1, 2))
    _checks.matching(y, x, "y", "x")
    _checks.same_rows(x, y, "x", "y")
    alpha = _checks.real(alpha, "alpha", positive=True)
    lr = _checks.real(lr, "lr", positive=True)
    steps = _checks.size(steps, "steps", minimum=0)
    momentum = _checks.real(momentum, "momentum", minimum=0.0, maximum=1.0)
    keep_params = _checks.flag(keep_params, "keep_params")
    if (x_test is None) != (y_test is None):
        raise ValueError("x_test and y_test must be given together")
    if x_test is not None:
        x_test = _checks.tensor(x_test, "x_test", ndim=x.ndim)
        y_test = _checks.tensor(y_test, "y_test", ndim=y.ndim)
        _checks.matching(x_test, x, "x_test", "x")
        _checks.matching(y_test, x, "y_test", "x")
        _checks.same_rows(x_test, y_test, "x_test", "y_test")
    if record_every is None:
        record_every = max(1, steps // 100)
    record_every = _checks.size(record_every, "record_every")
    n = x.shape[0]
    gen = _gen(generator, None)
    if batch_size is not None:
        batch_size = _checks.size(batch_size, "batch_size", maximum=n)
    _checks.matching(x, next(iter(params0.values())), "x", "params0")
    out0 = _model_output(fn, params0, x[:1], "params0")
    if out0.shape[1:] != y.shape[1:]:
        raise ValueError(f"y must have the shape of the model's output, got {tuple(y.shape)} "
                         f"for outputs of shape (n, {', '.join(map(str, out0.shape[1:]))})")

    params = {k: v.detach().clone().requires_grad_(True) for k, v in params0.items()}
    leaves = list(params.values())
    buffers = [None] * len(leaves)                          # momentum buffers
    res = TrainResult(params=_detach(params))
    last_good = _detach(params)
    good = list(last_good.values())

    def record(k, train_loss):
        """Append one record; False (nothing appended) if a value is not finite."""
        test_loss = None
        if x_test is not None:
            with torch.no_grad():
                test_loss = float(_risk(alpha * fn(params, x_test), y_test))
        if not (math.isfinite(train_loss) and (test_loss is None or math.isfinite(test_loss))):
            if k == 0:
                raise ValueError("the initial risk R(alpha h(params0)) is not finite: alpha, "
                                 "params0, x, y, x_test or y_test out of range")
            return False
        res.steps.append(k)
        res.train_loss.append(train_loss)
        if test_loss is not None:
            res.test_loss.append(test_loss)
        if keep_params:
            res.history.append(_detach(params))
        return True

    for k in range(steps + 1):
        if batch_size is None:
            xb, yb = x, y
        else:
            idx = torch.randperm(n, generator=gen)[:batch_size].to(x.device)
            xb, yb = x[idx], y[idx]
        full = _risk(alpha * fn(params, xb), yb)
        if not bool(torch.isfinite(full)):
            if k == 0:
                raise ValueError("the initial risk R(alpha h(params0)) is not finite: alpha, "
                                 "params0, x or y out of range")
            res.diverged = True
            break
        if k % record_every == 0 or k == steps:
            if batch_size is None:
                value = float(full.detach())
            else:
                with torch.no_grad():
                    value = float(_risk(alpha * fn(params, x), y))
            if not record(k, value):
                res.diverged = True
                break
        with torch.no_grad():
            torch._foreach_copy_(good, leaves)
        if k == steps:
            break
        grads = torch.autograd.grad(full / alpha ** 2, leaves, allow_unused=True)
        _sgd_step(leaves, grads, buffers, lr, momentum)
    res.params = last_good
    return res


@torch.no_grad()
def _sgd_step(leaves, grads, buffers, lr, momentum):
    """The update of ``torch.optim.SGD(lr=lr, momentum=momentum)`` (no dampening,
    weight decay or Nesterov), operation for operation, without the optimiser's
    per-step bookkeeping: a parameter without a gradient is left alone."""
    for i, (p, g) in enumerate(zip(leaves, grads)):
        if g is None:
            continue
        if momentum != 0:
            if buffers[i] is None:
                buffers[i] = torch.clone(g).detach()
            else:
                buffers[i].mul_(momentum).add_(g)
            g = buffers[i]
        p.add_(g, alpha=-lr)


def displacement(params: dict, params0: dict, *, relative: bool = False) -> float:
    r"""Parameter displacement :math:`\lVert w - w_0\rVert` (Euclidean norm over all
    tensors), divided by :math:`\lVert w_0\rVert` when ``relative``."""
    params = _params(params)
    params0 = _params(params0, "params0")
    relative = _checks.flag(relative, "relative")
    if set(params) != set(params0):
        raise ValueError("params and params0 must have the same keys")
    for k in params0:
        _checks.same_shape(params[k], params0[k], f"params[{k!r}]", f"params0[{k!r}]")
        _checks.matching(params[k], params0[k], f"params[{k!r}]", f"params0[{k!r}]")
    num = _checks.finite_result(float(_norm({k: params[k] - params0[k] for k in params0})),
                                "the displacement", "params or params0 (their scale)")
    if relative:
        den = _checks.finite_result(float(_norm(params0)), "the norm of params0",
                                    "params0 (its scale)")
        if den == 0:
            raise ValueError("params0 is zero: the relative displacement is undefined")
        return num / den
    return num


def rms(v: torch.Tensor) -> float:
    r"""Empirical norm :math:`(\frac1n\sum_i \lVert v_i\rVert^2)^{1/2}` of outputs ``v`` of shape ``(n,)`` or ``(n, k)``."""
    v = _checks.tensor(v, "v")
    if v.ndim == 0 or v.shape[0] == 0:
        raise ValueError("v must have at least one row")
    v = v.reshape(v.shape[0], -1)
    scale = v.detach().abs().max()            # scaled, so that squaring cannot overflow
    if float(scale) == 0:
        return 0.0
    return float(scale * torch.sqrt(((v / scale) ** 2).sum(1).mean()))


# ----------------------------------------------------------------------------- criterion

def _check_scalar_model(fn, params, x):
    fn = _fn(fn)
    params = _params(params, "params", fn)
    x = _checks.tensor(x, "x", ndim=(1, 2, 3, 4, 5), nonempty=True)
    _checks.matching(x, next(iter(params.values())), "x", "params")
    out = _model_output(fn, params, x)
    if out.ndim != 1 or out.shape[0] != x.shape[0]:
        raise ValueError(f"fn must return one value per input row (shape (n,)), got {tuple(out.shape)}")
    _checks.finite_result(out, "fn(params, x)", "params or x (their scale)")
    return fn, _detach(params), x, out.detach()


def jacobian_norm(fn, params: dict, x: torch.Tensor, *, iters: int = 50, generator=None,
                  seed=None) -> float:
    r"""Operator norm of :math:`Dh(w)\colon\mathbb R^p\to L^2(\hat\rho_n)`,
    :math:`\lVert Dh\rVert^2 = \lambda_{\max}(J^\top J)/n`, i.e. the largest
    eigenvalue of the empirical tangent kernel's Gram matrix divided by
    :math:`n`.  Matrix-free power iteration (``jvp`` then ``vjp``)."""
    fn, params, x, _ = _check_scalar_model(fn, params, x)
    iters = _checks.size(iters, "iters", maximum=10 ** 5)
    gen = _gen(generator, seed)
    n = x.shape[0]
    f = lambda p: fn(p, x)  # noqa: E731
    _, pull = vjp(f, params)
    u = _random_like(params, gen)
    u = _scale(u, 1 / _norm(u))
    lam = torch.zeros((), dtype=x.dtype, device=x.device)
    for _ in range(iters):
        ju = jvp(f, (params,), (u,))[1]
        v = pull(ju)[0]
        lam = _norm(v)
        if lam == 0:
            return 0.0
        u = _scale(v, 1 / lam)
    return _checks.finite_result(float(torch.sqrt(lam / n)), "the Jacobian norm",
                                 "params or x (their scale)")


def hessian_norm(fn, params: dict, x: torch.Tensor, *, iters: int = 20, rounds: int = 4,
                 restarts: int = 3, generator=None, seed=None) -> float:
    r"""Estimate the operator norm of the second derivative :math:`D^2h(w)`, a
    symmetric bilinear map :math:`\mathbb R^p\times\mathbb R^p\to L^2(\hat\rho_n)`:

    .. math::

       \lVert D^2h\rVert = \sup_{\lVert u\rVert = 1,\ \lVert c\rVert_n = 1}
         \Bigl\lvert \frac1n\sum_i c_i\, u^\top\nabla^2_w h(w, x_i)\,u\Bigr\rvert .

    Alternating maximisation (a higher-order power method): for fixed
    :math:`c`, power iteration on Hessian-vector products of
    :math:`\frac1n\sum_i c_i h(w, x_i)` (double backward) gives the top :math:`u`, separating the
    eigenvectors of :math:`\pm\lambda`; for fixed :math:`u`, the best :math:`c` is
    proportional to :math:`(u^\top\nabla^2 h(w,x_i)u)_i`.  Each of the
    ``restarts`` starts from a random :math:`c`, runs ``rounds`` alternations
    of ``iters`` power steps, and the largest value found is returned: a lower
    bound of the norm, tight up to a few per cent in practice.
    """
    fn, params, x, _ = _check_scalar_model(fn, params, x)
    iters = _checks.size(iters, "iters", maximum=10 ** 5)
    rounds = _checks.size(rounds, "rounds", maximum=10 ** 4)
    restarts = _checks.size(restarts, "restarts", maximum=10 ** 4)
    _checks.budget(float(iters) * rounds * restarts * 1e3, "iters, rounds and restarts",
                   limit=1e11)
    gen = _gen(generator, seed)
    n = x.shape[0]
    best = 0.0

    def second(u):
        # (u^T Hess h(x_i) u)_i by forward-over-forward differentiation.
        g = lambda p: jvp(lambda q: fn(q, x), (p,), (u,))[1]  # noqa: E731
        return jvp(g, (params,), (u,))[1].detach()

    keys = list(params)
    leaves = [params[k].detach().clone().requires_grad_(True) for k in keys]

    def hvp_operator(c):
        # grad of (1/n) sum_i c_i h(w, x_i), kept in the graph: each Hessian-vector
        # product is then one backward pass (double backward, no re-tracing).
        with torch.enable_grad():
            out = fn(dict(zip(keys, leaves)), x)
            g = torch.autograd.grad((c * out).sum() / n, leaves, create_graph=True,
                                    allow_unused=True)

        def hvp(u):
            with torch.enable_grad():
                dot = sum((gi * u[k]).sum() for gi, k in zip(g, keys)
                          if gi is not None and gi.requires_grad)
                if not isinstance(dot, torch.Tensor):
                    return {k: torch.zeros_like(params[k]) for k in keys}
                hu = torch.autograd.grad(dot, leaves, retain_graph=True, allow_unused=True)
            return {k: (torch.zeros_like(params[k]) if h is None else h.detach())
                    for k, h in zip(keys, hu)}

        return hvp

    for _ in range(restarts):
        c = torch.randn(n, generator=gen, dtype=x.dtype).to(x.device)
        c = c / torch.sqrt((c ** 2).mean())
        u = _random_like(params, gen)
        u = _scale(u, 1 / _norm(u))
        for _ in range(rounds):
            hvp = hvp_operator(c)
            nrm = None
            for _ in range(iters):
                hu = hvp(u)
                nrm = _norm(hu)
                if nrm == 0:
                    break
                u_prev, u = u, _scale(hu, 1 / nrm)
            if nrm is not None and nrm > 0:
                # eigenvalues +-lambda of equal modulus make the iterates oscillate:
                # u_prev +- u separates the two eigenvectors; keep the better one
                cands = [u]
                for sgn in (1.0, -1.0):
                    w_ = {k: u_prev[k] + sgn * u[k] for k in keys}
                    wn = _norm(w_)
                    if wn > 0:
                        cands.append(_scale(w_, 1 / wn))
            else:
                cands = [u]
            qs = [second(v) for v in cands]
            vals = [float(torch.sqrt((q ** 2).mean())) for q in qs]
            i = max(range(len(vals)), key=vals.__getitem__)
            u, q, val = cands[i], qs[i], vals[i]
            best = max(best, val)
            if val == 0:
                break
            c = q / val
    return _checks.finite_result(best, "the Hessian norm", "params or x (their scale)")


@dataclass
class Kappa:
    r"""The relative scale criterion and its three factors (see :func:`relative_scale`)."""

    kappa: float
    residual: float
    jacobian: float
    hessian: float


def relative_scale(fn, params: dict, x: torch.Tensor, y: torch.Tensor, *, iters: int = 20,
                   rounds: int = 4, restarts: int = 3, generator=None, seed=None) -> Kappa:
    r"""Relative scale criterion of Chizat, Oyallon & Bach (2019):

    .. math::

       \kappa_h(w_0) = \frac{\lVert h(w_0) - y\rVert}{\lVert Dh(w_0)\rVert}
                       \frac{\lVert D^2 h(w_0)\rVert}{\lVert Dh(w_0)\rVert},

    norms on :math:`L^2(\hat\rho_n)` (empirical measure of ``x``):
    ``residual`` by definition, ``jacobian`` by :func:`jacobian_norm`,
    ``hessian`` by :func:`hessian_norm`.
    """
    iters = _checks.size(iters, "iters", maximum=10 ** 5)
    fn, params, x, out = _check_scalar_model(fn, params, x)
    y = _checks.tensor(y, "y", ndim=1)
    _checks.matching(y, x, "y", "x")
    _checks.same_rows(x, y, "x", "y")
    gen = _gen(generator, seed)
    res = rms(_checks.finite_result(out - y, "the residual h(params, x) - y", "params, x or y (their scale)"))
    jn = jacobian_norm(fn, params, x, iters=max(iters, 20), generator=gen)
    hn = hessian_norm(fn, params, x, iters=iters, rounds=rounds, restarts=restarts, generator=gen)
    if jn == 0:
        raise ValueError("Dh(w0) vanishes on x: the criterion is undefined")
    return Kappa(_checks.finite_result(res / jn * hn / jn, "kappa", "params, x or y (their scale)"),
                 res, jn, hn)


# ----------------------------------------------------------------------------- images

@dataclass
class Digits:
    """A train/test split of scikit-learn's 8x8 digits (1797 images, 10 classes).

    Attributes
    ----------
    x_train, x_test : torch.Tensor
        Images, shape ``(n, 1, 8, 8)``, standardised with the training set's
        mean and standard deviation.
    y_train, y_test : torch.Tensor
        One-hot targets, shape ``(n, 10)``, in the dtype of the images.
    labels_train, labels_test : torch.Tensor
        Class labels (``int64``).
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    labels_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    labels_test: torch.Tensor


def digits(n_train: int, n_test: int, *, seed: int = 0, dtype=torch.float32,
           device=None, centre: str = "global") -> Digits:
    """Random disjoint train/test split of ``sklearn.datasets.load_digits``.

    The images ship inside scikit-learn (no download).  The split is drawn
    from ``mflib.generator(seed)``; ``n_train + n_test`` must not exceed 1797.

    ``centre="global"`` subtracts the mean pixel value of the training images
    and divides by their standard deviation (one number each).
    ``centre="pixel"`` subtracts the mean training image, pixel by pixel, and
    divides by the standard deviation of the centred training pixels: the
    images then share no common component, whose contribution to a tangent
    kernel is one large eigenvalue that limits the step of gradient descent.
    Both use the training images only.
    """
    n_train = _checks.size(n_train, "n_train")
    n_test = _checks.size(n_test, "n_test")
    seed = _checks.seed(seed)
    centre = _checks.choice(centre, "centre", ("global", "pixel"))
    dtype = _dtype(dtype)
    dev = _device(device)
    from sklearn.datasets import load_digits

    raw = load_digits()
    total = raw.images.shape[0]
    if n_train + n_test > total:
        raise ValueError(f"n_train + n_test must be at most {total}, got {n_train + n_test}")
    x = torch.as_tensor(raw.images, dtype=torch.float64).unsqueeze(1)
    labels = torch.as_tensor(raw.target, dtype=torch.int64)
    perm = torch.randperm(total, generator=_generator(seed))
    tr, te = perm[:n_train], perm[n_train:n_train + n_test]
    if centre == "global":
        mu, sd = x[tr].mean(), x[tr].std()
    else:
        mu = x[tr].mean(0, keepdim=True)
        sd = (x[tr] - mu).std()
    x = ((x - mu) / sd).to(dtype)
    onehot = torch.nn.functional.one_hot(labels, 10).to(dtype)
    return Digits(x[tr].to(dev), onehot[tr].to(dev), labels[tr].to(dev),
                  x[te].to(dev), onehot[te].to(dev), labels[te].to(dev))


def conv_net(channels: int = 16, hidden: int = 512, *, seed: int = 0, dtype=torch.float32,
             device=None) -> torch.nn.Sequential:
    r"""A convolutional network for 8x8 images with 10 outputs.

    ``conv3x3(1->c) - relu - conv3x3(c->c) - relu - avgpool2 - flatten``, then
    ``linear(16c->hidden) - relu - linear(hidden->10)`` (or, with ``hidden=0``,
    the linear read-out ``linear(16c->10)``), with PyTorch's default
    initialisation drawn from the seed (the global random state is left
    untouched).  It has :math:`P = 10c + 9c^2 + c + (16c + 1)\,\text{hidden}
    + 10\,(\text{hidden} + 1)` parameters (:math:`P = 10c + 9c^2 + c + 160c + 10`
    without the hidden layer): 139 194 with the defaults, nearly all of them
    in the hidden layer, whose cost per image is one multiply-add per
    parameter (a convolution's parameters are used once per pixel).

    Parameters
    ----------
    channels : int
        Channels :math:`c` of both convolutions.
    hidden : int
        Width of the hidden fully connected layer; 0 for none.
    seed : int
        Seed of the initialisation.
    dtype, device
        Of the parameters.

    Returns
    -------
    torch.nn.Sequential
        Maps images of shape ``(n, 1, 8, 8)`` to outputs of shape ``(n, 10)``.

    Raises
    ------
    TypeError, ValueError
        If ``channels`` or ``hidden`` is not a count (``hidden`` may be 0), or
        the seed, dtype or device is invalid.
    """
    channels = _checks.size(channels, "channels", maximum=4096)
    hidden = _checks.size(hidden, "hidden", minimum=0, maximum=1 << 16)
    seed = _checks.seed(seed)
    dtype = _dtype(dtype)
    dev = _device(device)
    nn = torch.nn
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        layers = [nn.Conv2d(1, channels, 3, padding=1), nn.ReLU(),
                  nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(),
                  nn.AvgPool2d(2), nn.Flatten()]
        if hidden:
            layers += [nn.Linear(16 * channels, hidden), nn.ReLU(), nn.Linear(hidden, 10)]
        else:
            layers += [nn.Linear(16 * channels, 10)]
        net = nn.Sequential(*layers)
    return net.to(dtype=dtype, device=dev)


def small_cnn(channels: int = 4, *, seed: int = 0, dtype=torch.float32, device=None):
    """A small convolutional network for 8x8 images with 10 outputs:
    :func:`conv_net` without the hidden layer (``hidden=0``).

    ``conv3x3(1->c) - relu - conv3x3(c->c) - relu - avgpool2 - linear(16c->10)``.
    With ``c = 4`` it has 838 parameters: fewer than a few hundred training
    images times ten outputs, so its tangent model is a small linear model.
    """
    return conv_net(channels, 0, seed=seed, dtype=dtype, device=device)


class SelectOutput(torch.nn.Module):
    """One output of a network, as a scalar model of flattened inputs.

    ``SelectOutput(net, index, shape)(x) = net(x.reshape(-1, *shape))[:, index]``:
    the form :func:`mflib.empirical.empirical_ntk` takes (inputs of shape
    ``(n, d)``, one number per input) for a network of images with several
    outputs.  The parameters are those of ``net`` (shared, not copied), so
    loading a state dict into ``net`` changes the wrapper too.

    Parameters
    ----------
    net : torch.nn.Module
        Maps inputs of shape ``(n, *shape)`` to outputs of shape ``(n, k)``.
    index : int
        The output kept, in ``[0, k)`` (checked at the first call).
    shape : tuple of int
        Shape of one input of ``net``; its product is the length ``d`` of a
        flattened input.
    """

    def __init__(self, net, index=0, shape=(1, 8, 8)):
        super().__init__()
        self.net = _checks.instance(net, torch.nn.Module, "net")
        self.index = _checks.size(index, "index", minimum=0)
        if isinstance(shape, (str, bytes)) or not isinstance(shape, (tuple, list)) or not shape:
            raise TypeError(f"shape must be a non-empty tuple of ints, got {shape!r}")
        self.shape = tuple(_checks.size(v, "shape") for v in shape)
        _checks.elements(math.prod(self.shape), "shape")

    def forward(self, x):
        """Evaluate on flattened inputs of shape ``(n, d)``; returns shape ``(n,)``."""
        x = _checks.tensor(x, "x", ndim=2)
        d = math.prod(self.shape)
        if x.shape[1] != d:
            raise ValueError(f"x must have {d} columns (the product of shape {self.shape}), "
                             f"got {x.shape[1]}")
        param = next(self.net.parameters(), None)
        if param is not None:
            _checks.matching(x, param, "x", "net's parameters")
        out = self.net(x.reshape(-1, *self.shape))
        if not isinstance(out, torch.Tensor) or out.ndim != 2 or self.index >= out.shape[1]:
            raise ValueError(f"index must be below the number of outputs of net, got index "
                             f"{self.index} for outputs of shape {tuple(out.shape)}")
        return out[:, self.index]


def accuracy(out: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of rows of ``out`` (shape ``(n, k)``) whose arg-max is the label."""
    out = _checks.tensor(out, "out", ndim=2, nonempty=True)
    labels = _checks.tensor(labels, "labels", ndim=1, floating=False)
    if labels.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise TypeError(f"labels must be an integer tensor (class indices), got dtype {labels.dtype}")
    if labels.shape != out.shape[:1]:
        raise ValueError(f"labels must be a tensor of shape ({out.shape[0]},), got {tuple(labels.shape)}")
    if labels.device != out.device:
        raise ValueError(f"labels and out must be on the same device, got {labels.device} and {out.device}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= out.shape[1]):
        raise ValueError(f"labels must hold class indices in [0, {out.shape[1]}) (the columns of out)")
    return float((out.argmax(1) == labels).to(torch.float64).mean())


# ----------------------------------------------------------------------------- numerical experiment (I)
# Chizat, Oyallon & Bach (2019), numerical experiments (test loss against the scale): a two-layer relu student
# h(w, x) = sum_j b_j relu(a_j . x) learns a relu teacher in d = 100, from a symmetrised
# Gaussian initialisation of scale tau.  The names follow the keys of two_layer: here a_j are the input
# weights and b_j the output weights (the book's notation swaps them: output a_j, input b_j).
# Every tau and every repeat is one slice of a batch:
# parameters have shapes (R, T, m, d) and (R, T, m) (R repeats, T scales), inputs (R, n, d).

_LOSS_LIMIT = 1e30


@dataclass
class BatchRun:
    r"""Result of :func:`relu_gd` or :func:`relu_online_sgd` (a batch of runs).

    Attributes
    ----------
    a, b : torch.Tensor
        Final parameters, shapes ``(R, T, m, d)`` and ``(R, T, m)`` (for a
        diverged run: the last parameters with a finite loss).
    steps : list of int
        Recorded steps.
    train_loss : torch.Tensor
        Shape ``(K, R, T)``, one row per recorded step: the training loss
        (:func:`relu_gd`) or the mean mini-batch loss since the previous record
        (:func:`relu_online_sgd`; fresh samples, so an unbiased estimate of the
        population loss along the way).
    eval_loss : torch.Tensor
        Shape ``(K, R, T)``: the test loss (:func:`relu_gd` with test data; empty
        otherwise).
    final : torch.Tensor
        Shape ``(R, T)``: the last training loss (:func:`relu_gd`) or the mean of the
        last ``average`` mini-batch losses (:func:`relu_online_sgd`).
    diverged : torch.Tensor
        Boolean, shape ``(R, T)``: runs stopped by a non-finite or exploding loss
        (their records after the divergence repeat finite values and mean nothing).
    """

    a: torch.Tensor
    b: torch.Tensor
    steps: list = field(default_factory=list)
    train_loss: torch.Tensor = None
    eval_loss: torch.Tensor = None
    final: torch.Tensor = None
    diverged: torch.Tensor = None


def _batch_params(params, name="params0"):
    if not isinstance(params, dict) or set(params) != {"a", "b"}:
        raise TypeError(f"{name} must be a dict with keys 'a' (R, T, m, d) and 'b' (R, T, m)")
    a = _checks.tensor(params["a"], f"{name}['a']", ndim=4, nonempty=True)
    b = _checks.tensor(params["b"], f"{name}['b']", ndim=3, nonempty=True)
    if tuple(b.shape) != tuple(a.shape[:3]):
        raise ValueError(f"{name}['b'] must have shape {tuple(a.shape[:3])} (that of {name}['a'] "
                         f"without its last dimension), got {tuple(b.shape)}")
    _checks.matching(b, a, f"{name}['b']", f"{name}['a']")
    return a, b


def _batch_inputs(x, name, a):
    R, _, _, d = a.shape
    x = _checks.tensor(x, name, ndim=3, nonempty=True)
    if x.shape[0] != R or x.shape[2] != d:
        raise ValueError(f"{name} must have shape ({R}, n, {d}) (one input set per repeat), "
                         f"got {tuple(x.shape)}")
    _checks.matching(x, a, name, "params0['a']")
    return x


def _batch_targets(y, name, x):
    y = _checks.tensor(y, name, ndim=2)
    if tuple(y.shape) != tuple(x.shape[:2]):
        raise ValueError(f"{name} must have shape {tuple(x.shape[:2])}, got {tuple(y.shape)}")
    _checks.matching(y, x, name, "x")
    return y


def _step_sizes(lr, a):
    """lr: a positive real, or a positive tensor of shape (T,) (one step per scale)."""
    T = a.shape[1]
    if isinstance(lr, torch.Tensor) and lr.numel() != 1:
        lr = _checks.tensor(lr, "lr", ndim=1)
        if lr.shape[0] != T:
            raise ValueError(f"lr must be a real or a tensor of shape ({T},) (one step per scale), "
                             f"got shape {tuple(lr.shape)}")
        if bool((lr <= 0).any()) or float(lr.abs().max()) > _checks.MAX_REAL:
            raise ValueError("lr must hold positive reals of moderate size")
        return lr.to(dtype=a.dtype, device=a.device)
    lr = _checks.real(lr, "lr", positive=True)
    return torch.full((T,), lr, dtype=a.dtype, device=a.device)


def pairs_init(m: int, d: int, taus, *, repeats: int = 1, generator=None, seed=None,
               dtype=DTYPE, device=None) -> dict:
    r"""Symmetrised Gaussian initialisation of a batch of two-layer relu networks.

    As in the code of Chizat, Oyallon & Bach (2019): the entries of
    :math:`(a_j, b_j) \in \mathbb R^{d}\times\mathbb R` are i.i.d.
    :math:`\mathcal N(0, \tau^2)`; then the second half of the neurons copies the
    input weights of the first half with the output weights negated,
    :math:`a_{j+m/2} = a_j`, :math:`b_{j+m/2} = -b_j` (with :math:`b_j \ge 0` for
    :math:`j \le m/2`), so that :math:`h(w_0, \cdot) = 0`.  One draw per repeat is
    shared by all scales (the initialisations at two scales differ by a factor).

    Parameters
    ----------
    m : int
        Neurons (even).
    d : int
        Input dimension.
    taus : sequence of float
        The scales :math:`\tau > 0`.
    repeats : int
        Independent draws :math:`R`.
    generator, seed
        CPU generator, or a seed for a fresh one.
    dtype, device
        Of the returned tensors.

    Returns
    -------
    dict
        ``{"a": (R, T, m, d), "b": (R, T, m)}``.
    """
    m = _checks.size(m, "m")
    if m % 2:
        raise ValueError(f"m must be even (neurons come in pairs), got {m}")
    d = _checks.size(d, "d")
    taus = _checks.reals(taus, "taus", positive=True)
    if not taus:
        raise ValueError("taus must hold at least one scale")
    repeats = _checks.size(repeats, "repeats")
    _checks.elements(repeats * len(taus) * m * (d + 1), "m, d, taus and repeats")
    gen = _gen(generator, seed)
    dtype = _dtype(dtype)
    dev = _device(device)
    h = m // 2
    a = torch.randn(repeats, h, d, generator=gen, dtype=dtype)
    b = torch.randn(repeats, h, generator=gen, dtype=dtype).abs()
    a, b = torch.cat([a, a], 1), torch.cat([b, -b], 1)
    t = torch.tensor(taus, dtype=dtype)
    return {"a": (t[None, :, None, None] * a[:, None]).to(dev), "b": (t[None, :, None] * b[:, None]).to(dev)}


def relu_teachers(repeats: int, d: int, *, m0: int = 3, generator=None, seed=None, dtype=DTYPE,
                  device=None) -> dict:
    r"""Random relu teachers :math:`y(x) = \sum_{k=1}^{m_0} s_k\,\mathrm{relu}(u_k\cdot x)`.

    Unit input weights :math:`u_k` uniform on the sphere and random signs
    :math:`s_k = \pm 1`, as in the code of Chizat, Oyallon & Bach (2019).

    Returns
    -------
    dict
        ``{"a": (R, m0, d), "b": (R, m0)}``.
    """
    repeats = _checks.size(repeats, "repeats")
    d = _checks.size(d, "d")
    m0 = _checks.size(m0, "m0")
    _checks.elements(repeats * m0 * d, "repeats, m0 and d")
    gen = _gen(generator, seed)
    dtype = _dtype(dtype)
    dev = _device(device)
    u = sphere(repeats * m0, d, generator=gen, dtype=dtype).reshape(repeats, m0, d)
    s = torch.randint(0, 2, (repeats, m0), generator=gen).to(dtype) * 2 - 1
    return {"a": u.to(dev), "b": s.to(dev)}


def _teacher(teacher, d, R, like, like_name="params0['a']"):
    if not isinstance(teacher, dict) or set(teacher) != {"a", "b"}:
        raise TypeError("teacher must be a dict with keys 'a' (R, m0, d) and 'b' (R, m0)")
    u = _checks.tensor(teacher["a"], "teacher['a']", ndim=3, nonempty=True)
    s = _checks.tensor(teacher["b"], "teacher['b']", ndim=2)
    if u.shape[0] != R or u.shape[2] != d or tuple(s.shape) != tuple(u.shape[:2]):
        raise ValueError(f"teacher must hold 'a' of shape ({R}, m0, {d}) and 'b' of shape ({R}, m0), got "
                         f"{tuple(u.shape)} and {tuple(s.shape)}")
    _checks.matching(u, like, "teacher['a']", like_name)
    _checks.matching(s, like, "teacher['b']", like_name)
    return u, s


def _tangent_at(params0, a, b):
    """The gated form of the tangent model at params0 evaluated at (a, b)."""
    a0, b0 = _batch_params(params0, "tangent_at")
    if a0.shape != a.shape:
        raise ValueError(f"tangent_at must have the shapes of params, {tuple(a.shape)}, got {tuple(a0.shape)}")
    _checks.matching(a0, a, "tangent_at['a']", "params['a']")
    return a0, b0


def relu_outputs(params: dict, x: torch.Tensor, *, tangent_at: dict | None = None) -> torch.Tensor:
    r"""Outputs :math:`h(w, x) = \sum_j b_j\,\mathrm{relu}(a_j\cdot x)` of a batch of networks,
    or of their tangent models.

    Parameters
    ----------
    params : dict
        ``{"a": (R, T, m, d), "b": (R, T, m)}`` (as from :func:`pairs_init`).
    x : torch.Tensor
        Inputs, shape ``(R, n, d)``: one set per repeat, shared by the scales.
    tangent_at : dict, optional
        Parameters :math:`w_0` of the same shapes: then the outputs are those of the
        tangent model :math:`h(w_0, x) + Dh(w_0, x)(w - w_0)`.

    Returns
    -------
    torch.Tensor
        Shape ``(R, T, n)``.
    """
    a, b = _batch_params(params, "params")
    x = _batch_inputs(x, "x", a)
    if tangent_at is None:
        return _relu_forward(a, b, x)[0]
    a0, b0 = _tangent_at(tangent_at, a, b)
    out0, hid0 = _relu_forward(a0, b0, x)
    return out0 + _lin_forward(a0, b0, x, a - a0, b - b0, hid0)


def _relu_forward(a, b, x):
    R, T, m, d = a.shape
    n = x.shape[1]
    z = torch.bmm(x, a.reshape(R, T * m, d).transpose(1, 2))          # (R, n, T m)
    hid = z.clamp_min(0)
    h4 = hid.view(R, n, T, m).permute(0, 2, 1, 3).reshape(R * T, n, m)
    out = torch.bmm(h4, b.reshape(R * T, m, 1)).reshape(R, T, n)
    return out, (hid, h4)


def _relu_grad(a, b, x, hid, res):
    """Gradients of (1/2n) sum_i res_i^2 w.r.t. a and b; res of shape (R, T, n)."""
    R, T, m, d = a.shape
    n = x.shape[1]
    hid, h4 = hid
    r = res / n
    gb = torch.bmm(h4.transpose(1, 2), r.reshape(R * T, n, 1)).reshape(R, T, m)
    g = torch.sign(hid).view(R, n, T, m).mul_(r.transpose(1, 2)[..., None])
    ga = torch.bmm(g.view(R, n, T * m).transpose(1, 2), x).reshape(R, T, m, d) * b[..., None]
    return ga, gb


def _lin_forward(a0, b0, x, da, db, hid0):
    """Tangent model at (a0, b0): sum_j db_j relu(a0_j x) + b0_j 1(a0_j x > 0) da_j . x."""
    R, T, m, d = a0.shape
    n = x.shape[1]
    hid, h4 = hid0
    zd = torch.bmm(x, da.reshape(R, T * m, d).transpose(1, 2))
    zd = (torch.sign(hid) * zd).view(R, n, T, m).permute(0, 2, 1, 3).reshape(R * T, n, m)
    out = torch.bmm(h4, db.reshape(R * T, m, 1)) + torch.bmm(zd, b0.reshape(R * T, m, 1))
    return out.reshape(R, T, n)


def _lin_grad(a0, b0, x, hid0, res):
    return _relu_grad(a0, b0, x, hid0, res)


class _Engine:
    """Network or tangent model, with the divergence bookkeeping shared by the engines."""

    def __init__(self, a0, b0, lr, linearised):
        self.a0, self.b0, self.lin = a0, b0, linearised
        if linearised:
            self.a, self.b = torch.zeros_like(a0), torch.zeros_like(b0)
        else:
            self.a, self.b = a0.clone(), b0.clone()
        self.lr = lr
        self.alive = torch.ones(a0.shape[:2], dtype=torch.bool, device=a0.device)
        self.prev = (self.a.clone(), self.b.clone())
        self.last = torch.zeros(a0.shape[:2], dtype=a0.dtype, device=a0.device)

    def forward(self, x):
        if self.lin:
            if getattr(self, "_x", None) is not x:     # full batch: the gates at w0 are computed once
                self._x, self._hid0 = x, _relu_forward(self.a0, self.b0, x)[1]
            hid0 = self._hid0
            return _lin_forward(self.a0, self.b0, x, self.a, self.b, hid0), hid0
        return _relu_forward(self.a, self.b, x)

    def loss_and_step(self, x, y):
        out, hid = self.forward(x)
        res = out - y[:, None, :]
        loss = 0.5 * (res ** 2).mean(-1)                                  # (R, T)
        bad = ~torch.isfinite(loss) | (loss > _LOSS_LIMIT)
        newly = bad & self.alive
        if bool(newly.any()):                  # restore the last finite parameters, freeze the run
            self.a[newly], self.b[newly] = self.prev[0][newly], self.prev[1][newly]
            self.alive &= ~bad
        res = torch.where(self.alive[..., None], res, torch.zeros_like(res))
        if self.lin:
            ga, gb = _lin_grad(self.a0, self.b0, x, hid, res)
        else:
            ga, gb = _relu_grad(self.a, self.b, x, hid, res)
        step = self.lr[None, :] * self.alive
        self.prev = (self.a.clone(), self.b.clone())
        live = self.alive[..., None]
        self.a = torch.where(live[..., None], self.a - step[..., None, None] * ga, self.a)
        self.b = torch.where(live, self.b - step[..., None] * gb, self.b)
        self.last = torch.where(self.alive, loss, self.last)
        return self.last

    def eval_loss(self, x, y):
        out = self.forward(x)[0]
        loss = 0.5 * ((out - y[:, None, :]) ** 2).mean(-1)
        return torch.where(torch.isfinite(loss), loss, self.last)

    def params(self):
        if self.lin:   # the tangent model's parameters are the displacement from w0
            return self.a0 + self.a, self.b0 + self.b
        return self.a, self.b


def relu_gd(params0: dict, x: torch.Tensor, y: torch.Tensor, *, lr, steps: int,
            x_test: torch.Tensor | None = None, y_test: torch.Tensor | None = None,
            record_every: int | None = None, linearised: bool = False) -> BatchRun:
    r"""Full-batch gradient descent of a batch of two-layer relu networks.

    Minimises :math:`F(w) = \frac1{2n}\sum_{i=1}^n \bigl(h(w, x_i) - y_i\bigr)^2`
    with :math:`h(w, x) = \sum_j b_j\,\mathrm{relu}(a_j\cdot x)` by
    :math:`w_{k+1} = w_k - \eta\nabla F(w_k)` (closed-form gradients, every scale
    and repeat at once), as in panel (a) of the test-loss-against-scale experiment of Chizat, Oyallon & Bach (2019).
    With ``linearised=True`` the model is the tangent model at :math:`w_0`,
    :math:`\bar h(w, x) = h(w_0, x) + Dh(w_0, x)(w - w_0)`, trained the same way.

    Parameters
    ----------
    params0 : dict
        ``{"a": (R, T, m, d), "b": (R, T, m)}``, e.g. from :func:`pairs_init`.
    x, y : torch.Tensor
        Training set per repeat, shapes ``(R, n, d)`` and ``(R, n)``.
    lr : float or torch.Tensor
        Step :math:`\eta`, one for all or one per scale (shape ``(T,)``).
    steps : int
        Gradient steps.
    x_test, y_test : torch.Tensor, optional
        Test set per repeat, shapes ``(R, n', d)`` and ``(R, n')``.
    record_every : int, optional
        Record the losses every so many steps (default ``steps // 20``) and at the end.
    linearised : bool
        Train the tangent model instead of the network.

    Returns
    -------
    BatchRun
        A run whose loss exceeds 1e30 or is not finite is frozen at its last
        finite parameters and flagged in ``diverged``.
    """
    a0, b0 = _batch_params(params0)
    x = _batch_inputs(x, "x", a0)
    y = _batch_targets(y, "y", x)
    lr = _step_sizes(lr, a0)
    steps = _checks.size(steps, "steps")
    linearised = _checks.flag(linearised, "linearised")
    if (x_test is None) != (y_test is None):
        raise ValueError("give both x_test and y_test, or neither")
    if x_test is not None:
        x_test = _batch_inputs(x_test, "x_test", a0)
        y_test = _batch_targets(y_test, "y_test", x_test)
    every = max(1, steps // 20) if record_every is None else _checks.size(record_every, "record_every")
    R, T, m, d = a0.shape
    _checks.budget(float(steps) * R * T * m * d * (x.shape[1] + (x_test.shape[1] if x_test is not None else 0) / every),
                   "steps, params0 and x")
    eng = _Engine(a0, b0, lr, linearised)
    run = BatchRun(a=a0, b=b0)
    tr, te = [], []
    for k in range(steps + 1):
        record = k % every == 0 or k == steps
        if record and x_test is not None:           # the test loss of w_k, before step k
            te.append(eng.eval_loss(x_test, y_test))
        loss = eng.loss_and_step(x, y) if k < steps else eng.eval_loss(x, y)
        if record:
            run.steps.append(k)
            tr.append(loss.clone())
    run.a, run.b = eng.params()
    run.train_loss = torch.stack(tr)
    run.eval_loss = torch.stack(te) if te else torch.zeros(0, R, T, dtype=a0.dtype, device=a0.device)
    run.final = run.train_loss[-1]
    run.diverged = ~eng.alive
    return run


def relu_online_sgd(params0: dict, teacher: dict, *, lr, steps: int, batch: int = 200,
                    average: int | None = None, record_every: int | None = None,
                    linearised: bool = False, generator=None, seed=None) -> BatchRun:
    r"""Online SGD of a batch of two-layer relu networks on the population loss.

    Each step draws a fresh batch :math:`x_1, \dots, x_B` uniform on the sphere
    (one per repeat, shared by the scales), labels it with the teacher
    :math:`y(x) = \sum_k s_k\,\mathrm{relu}(u_k\cdot x)` and takes a gradient step
    on :math:`\frac1{2B}\sum_i (h(w, x_i) - y(x_i))^2`: stochastic gradient
    descent directly on the population loss
    :math:`L(w) = \frac12\mathbb E_x (h(w, x) - y(x))^2`, as in panel (b) of that experiment of
    Chizat, Oyallon & Bach (2019).  With ``linearised=True`` the tangent model at
    :math:`w_0` is trained on the same samples.

    Parameters
    ----------
    params0 : dict
        ``{"a": (R, T, m, d), "b": (R, T, m)}``.
    teacher : dict
        ``{"a": (R, m0, d), "b": (R, m0)}``, e.g. from :func:`relu_teachers`.
    lr : float or torch.Tensor
        Step, one for all or one per scale (shape ``(T,)``).
    steps : int
        SGD steps.
    batch : int
        Fresh samples per step.
    average : int, optional
        ``final`` is the mean mini-batch loss of the last ``average`` steps (the
        authors' estimate of the population loss at convergence; default ``steps // 10``).
    record_every : int, optional
        Record the mean mini-batch loss every so many steps (default ``steps // 20``).
    linearised : bool
        Train the tangent model instead of the network.
    generator, seed
        The sample stream (CPU generator, or a seed for a fresh one).

    Returns
    -------
    BatchRun
    """
    a0, b0 = _batch_params(params0)
    R, T, m, d = a0.shape
    u, s = _teacher(teacher, d, R, a0)
    lr = _step_sizes(lr, a0)
    steps = _checks.size(steps, "steps")
    batch = _checks.size(batch, "batch")
    average = max(1, steps // 10) if average is None else _checks.size(average, "average", maximum=steps)
    every = max(1, steps // 20) if record_every is None else _checks.size(record_every, "record_every")
    linearised = _checks.flag(linearised, "linearised")
    _checks.budget(float(steps) * R * T * m * d * batch, "steps, batch and params0")
    gen = _gen(generator, seed)
    eng = _Engine(a0, b0, lr, linearised)
    run = BatchRun(a=a0, b=b0)
    tr, acc, count = [], torch.zeros(R, T, dtype=a0.dtype, device=a0.device), 0
    tail = torch.zeros(R, T, dtype=a0.dtype, device=a0.device)
    for k in range(steps):
        x = torch.randn(R, batch, d, generator=gen, dtype=a0.dtype)
        x = (x / x.norm(dim=2, keepdim=True)).to(a0.device)
        y = (torch.bmm(x, u.transpose(1, 2)).clamp_min(0) * s[:, None, :]).sum(-1)
        loss = eng.loss_and_step(x, y)
        acc += loss
        count += 1
        if k >= steps - average:
            tail += loss
        if (k + 1) % every == 0 or k + 1 == steps:
            run.steps.append(k + 1)
            tr.append(acc / count)
            acc, count = torch.zeros_like(acc), 0
    run.a, run.b = eng.params()
    run.train_loss = torch.stack(tr)
    run.eval_loss = torch.zeros(0, R, T, dtype=a0.dtype, device=a0.device)
    run.final = tail / average
    run.diverged = ~eng.alive
    return run


def _unit(c):
    nrm = c.norm(dim=-1, keepdim=True)
    return c / nrm.clamp_min(1e-300), (nrm[..., 0] > 0)


def _wedge(c1, c2):
    """cos, sin of the angle between the gates and the angle's complement Delta = pi - phi."""
    u1, ok1 = _unit(c1)
    u2, ok2 = _unit(c2)
    cos = (u1 @ u2.transpose(-1, -2)).clamp(-1.0, 1.0)
    sin = torch.sqrt(((1 - cos) * (1 + cos)).clamp_min(0))
    delta = math.pi - torch.atan2(sin, cos)
    live = ok1[..., :, None] & ok2[..., None, :]
    return u1, u2, cos, sin, delta, live


def _gated_args(c, v, k):
    c = _checks.tensor(c, f"gates{k}", ndim=(2, 3, 4), nonempty=True)
    v = _checks.tensor(v, f"vectors{k}")
    if v.shape != c.shape:
        raise ValueError(f"vectors{k} must have the shape of gates{k} {tuple(c.shape)}, got {tuple(v.shape)}")
    _checks.matching(v, c, f"vectors{k}", f"gates{k}")
    return c, v


def sphere_gated_inner(gates1: torch.Tensor, vectors1: torch.Tensor, gates2: torch.Tensor,
                       vectors2: torch.Tensor) -> torch.Tensor:
    r"""Exact :math:`\mathbb E_x[f_1(x) f_2(x)]` for :math:`x` uniform on :math:`S^{d-1}`,
    for gated linear functions :math:`f(x) = \sum_j \mathbf 1(c_j\cdot x > 0)\, v_j\cdot x`.

    A relu network :math:`\sum_j b_j\,\mathrm{relu}(a_j\cdot x)` is the gated function
    with gates :math:`c_j = a_j` and vectors :math:`v_j = b_j a_j`, and its tangent
    model at :math:`w_0` spans the gated functions with the gates :math:`a_j(0)`: so
    population losses and distances of networks, teachers and tangent models are
    all of this form.  With :math:`g = \lVert g\rVert x \sim \mathcal N(0, I_d)`, a
    product of two such functions is 2-homogeneous, so
    :math:`\mathbb E_x = \mathbb E_g / d`, and in the plane of two gates at angle
    :math:`\varphi` (:math:`\Delta = \pi - \varphi`, :math:`s = \sin\varphi`,
    :math:`w = \hat c' - \cos\varphi\,\hat c`)

    .. math::

       \mathbb E_g\bigl[\mathbf 1(c\cdot g>0)\mathbf 1(c'\cdot g>0)\,g g^\top\bigr]
       = \frac{1}{2\pi}\Bigl[\Delta I + s\cos\varphi\,\hat c\hat c^\top
         - \frac{\cos\varphi}{s} w w^\top + s\,(\hat c w^\top + w\hat c^\top)\Bigr],

    which for :math:`v = c`, :math:`v' = c'` is the arc-cosine kernel
    :math:`\frac{\lVert c\rVert\lVert c'\rVert}{2\pi}(\sin\varphi + \Delta\cos\varphi)`
    (Cho & Saul, 2009).

    Parameters
    ----------
    gates1, vectors1 : torch.Tensor
        Shapes ``(..., m1, d)``.
    gates2, vectors2 : torch.Tensor
        Shapes ``(..., m2, d)``, the same leading dimensions.

    Returns
    -------
    torch.Tensor
        Shape ``(...)``.
    """
    c1, v1 = _gated_args(gates1, vectors1, "1")
    c2, v2 = _gated_args(gates2, vectors2, "2")
    if c1.shape[:-2] != c2.shape[:-2] or c1.shape[-1] != c2.shape[-1]:
        raise ValueError(f"gates2 must have shape {tuple(c1.shape[:-2])} + (m2, {c1.shape[-1]}), "
                         f"got {tuple(c2.shape)}")
    _checks.matching(c2, c1, "gates2", "gates1")
    return _gated_inner(c1, v1, c2, v2)


def _gated_inner(c1, v1, c2, v2):
    d = c1.shape[-1]
    u1, u2, cos, sin, delta, live = _wedge(c1, c2)
    vv = v1 @ v2.transpose(-1, -2)
    al = (v1 * u1).sum(-1)[..., :, None]                    # v1 . c1hat
    de = v2 @ u1.transpose(-1, -2)                          # v2_k . c1hat_j  -> (m2, m1)
    de = de.transpose(-1, -2)
    p = v1 @ u2.transpose(-1, -2) - cos * al                # v1 . w
    q = (v2 * u2).sum(-1)[..., None, :] - cos * de          # v2 . w
    qs = torch.where(sin > 0, q / sin.clamp_min(1e-300), torch.zeros_like(q))
    val = delta * vv + sin * cos * al * de - cos * p * qs + sin * (al * q + p * de)
    return (torch.where(live, val, torch.zeros_like(val)) / (2 * math.pi * d)).sum((-1, -2))


def sphere_relu_loss(params: dict, teacher: dict, *, tangent_at: dict | None = None) -> torch.Tensor:
    r"""Exact population loss :math:`\frac12\mathbb E_x\bigl(h(w, x) - y(x)\bigr)^2`,
    :math:`x` uniform on :math:`S^{d-1}`, of a batch of relu networks against relu teachers
    (through :func:`sphere_gated_inner`).

    Parameters
    ----------
    params : dict
        ``{"a": (R, T, m, d), "b": (R, T, m)}``.
    teacher : dict
        ``{"a": (R, m0, d), "b": (R, m0)}``.
    tangent_at : dict, optional
        Parameters :math:`w_0` of the shapes of ``params``: the loss of the tangent
        model at :math:`w_0` (a gated function with the gates :math:`a_j(0)` and the
        vectors :math:`(b_j - b_j(0))\,a_j(0) + b_j(0)\,(a_j - a_j(0))`, plus
        :math:`h(w_0)`).

    Returns
    -------
    torch.Tensor
        Shape ``(R, T)``, float64.
    """
    a, b = _batch_params(params, "params")
    R, T, m, d = a.shape
    u, s = _teacher(teacher, d, R, a, "params['a']")
    # float64 whatever the inputs: the terms of a wide or large network cancel
    a, b, u, s = (t.to(torch.float64) for t in (a, b, u, s))
    if tangent_at is None:
        va = b[..., None] * a
    else:
        a0, b0 = (t.to(torch.float64) for t in _tangent_at(tangent_at, a, b))
        va = b0[..., None] * a0 + (b - b0)[..., None] * a0 + b0[..., None] * (a - a0)
        a = a0
    ut = u[:, None].expand(R, T, *u.shape[1:])
    vt = (s[..., None] * u)[:, None].expand(R, T, *u.shape[1:])
    return 0.5 * (_gated_inner(a, va, a, va) - 2 * _gated_inner(a, va, ut, vt) + _gated_inner(ut, vt, ut, vt))


@dataclass
class TangentFit:
    r"""Best tangent-model predictor for the population loss (:func:`sphere_tangent_fit`).

    Attributes
    ----------
    gates : torch.Tensor
        Distinct unit gate directions, shape ``(R, m', d)``.
    vectors : torch.Tensor
        Optimal vectors :math:`v^\star`, shape ``(R, m', d)``:
        :math:`f^\star(x) = \sum_j \mathbf 1(c_j\cdot x>0)\,v^\star_j\cdot x`.
    loss : torch.Tensor
        Its population loss :math:`\frac12\mathbb E(f^\star - y)^2`, shape ``(R,)``.
    signal : torch.Tensor
        That of the zero predictor, :math:`\frac12\mathbb E y^2`, shape ``(R,)``.
    """

    gates: torch.Tensor
    vectors: torch.Tensor
    loss: torch.Tensor
    signal: torch.Tensor


def _block_gram(c):
    """E_x[1(c_j x>0) 1(c_k x>0) x x^T] as a (m d, m d) matrix, batched over the leading dim.

    In the basis of the two gates the block is
    (Delta I + (c_j c_k^T + c_k c_j^T) / s - cos (c_j c_j^T + c_k c_k^T) / s) / (2 pi d)
    (unit gates, s = sin phi; the block I / (2 d) on the diagonal, where s = 0)."""
    R, m, d = c.shape
    u, _, cos, sin, delta, _ = _wedge(c, c)
    inv = torch.where(sin > 0, 1 / sin.clamp_min(1e-300), torch.zeros_like(sin))
    eye = torch.eye(d, dtype=c.dtype, device=c.device)
    out = []
    for r in range(R):
        ur, iv, cs = u[r], inv[r], cos[r] * inv[r]
        g = torch.einsum("jk,pq->jpkq", delta[r], eye)
        g += torch.einsum("jk,jp,kq->jpkq", iv, ur, ur) + torch.einsum("jk,kp,jq->jpkq", iv, ur, ur)
        g -= torch.einsum("jk,jp,jq->jpkq", cs, ur, ur) + torch.einsum("jk,kp,kq->jpkq", cs, ur, ur)
        out.append(g.reshape(m * d, m * d))
    return torch.stack(out) / (2 * math.pi * d)


def _gram_times(c, c2, v2):
    """sum_k E_x[1(c_j x>0) 1(c2_k x>0) x x^T] v2_k for every gate c_j: shape (R, m, d)."""
    d = c.shape[-1]
    u1, u2, cos, sin, delta, live = _wedge(c, c2)                       # (R, j, k)
    w = u2[:, None, :, :] - cos[..., None] * u1[:, :, None, :]          # (R, j, k, d)
    c1v = v2 @ u1.transpose(-1, -2)                                     # (R, k, j): c1hat_j . v2_k
    c1v = c1v.transpose(-1, -2)
    wv = (w * v2[:, None]).sum(-1)                                      # (R, j, k)
    cs = torch.where(sin > 0, cos / sin.clamp_min(1e-300), torch.zeros_like(cos))
    out = (delta[..., None] * v2[:, None] + (sin * cos * c1v)[..., None] * u1[:, :, None]
           - (cs * wv)[..., None] * w + sin[..., None] * (wv[..., None] * u1[:, :, None] + c1v[..., None] * w))
    out = torch.where(live[..., None], out, torch.zeros_like(out))
    return out.sum(2) / (2 * math.pi * d)


def sphere_tangent_fit(gates: torch.Tensor, teacher: dict) -> TangentFit:
    r"""Best predictor in the span of the tangent features of a relu network, for the
    population loss on the sphere.

    The tangent features of :math:`h(w, x) = \sum_j b_j\,\mathrm{relu}(a_j\cdot x)` at
    :math:`w_0` are :math:`\mathrm{relu}(a_j\cdot x) = \mathbf 1(a_j\cdot x>0)\,a_j\cdot x`
    and :math:`b_j\mathbf 1(a_j\cdot x>0)\,x`: their span is
    :math:`\{\sum_j \mathbf 1(a_j\cdot x>0)\,v_j\cdot x\}`, one :math:`v_j\in\mathbb R^d`
    per distinct gate direction (the pairs of a symmetrised initialisation share one).
    The least-squares problem :math:`\min_v \frac12\mathbb E_x(f_v(x) - y(x))^2`,
    :math:`x` uniform on :math:`S^{d-1}`, is solved exactly: :math:`G v = g` with the
    Gram matrix :math:`G_{jk} = \mathbb E[\mathbf 1_j\mathbf 1_k x x^\top]` and
    :math:`g_j = \mathbb E[\mathbf 1_j\, x\, y]` in closed form
    (:func:`sphere_gated_inner`), by a Cholesky factorisation.  This is where the
    gradient flow of the tangent model on the population loss goes as training
    time grows (a convex quadratic in :math:`v`, with :math:`h(w_0) = 0`), hence
    the predictor that a lazy network approaches in the under-parameterised
    setting of Chizat, Oyallon & Bach (2019).

    Parameters
    ----------
    gates : torch.Tensor
        Input weights :math:`a_j(0)`, shape ``(R, m, d)`` (only directions matter).
    teacher : dict
        ``{"a": (R, m0, d), "b": (R, m0)}``.

    Returns
    -------
    TangentFit
    """
    c = _checks.tensor(gates, "gates", ndim=3, nonempty=True)
    R, m, d = c.shape
    _checks.elements(R * (m * d) ** 2, "gates (the Gram matrix has (m d)^2 entries per repeat)")
    u, s = _teacher(teacher, d, R, c, "gates")
    un, ok = _unit(c)
    if not bool(ok.all()):
        raise ValueError("gates must have no zero row (a zero gate is never open)")
    # distinct directions (pairs of a symmetrised initialisation share theirs)
    keep = []
    for r in range(R):
        cos = un[r] @ un[r].T
        dup = torch.triu(cos > 1 - 1e-12, diagonal=1).any(0)
        keep.append(un[r][~dup])
    if len({k.shape[0] for k in keep}) != 1:
        raise ValueError("gates must have the same number of distinct directions in every repeat")
    g_dirs = torch.stack(keep)
    mm = g_dirs.shape[1]
    G = _block_gram(g_dirs)
    # g_j = E[1_j x y] = sum_k s_k E[1_j 1(u_k x>0) x x^T] u_k: the inner product with each basis vector
    rhs = _gram_times(g_dirs, u, s[..., None] * u)
    vt = s[..., None] * u
    L, info = torch.linalg.cholesky_ex(G)
    if bool((info == 0).all()):
        v = torch.cholesky_solve(rhs.reshape(R, mm * d, 1), L).reshape(R, mm, d)
    else:   # a singular Gram matrix (dependent gated features): the minimum-norm solution
        lam, V = torch.linalg.eigh(G)
        keep_ = lam > lam[..., -1:] * 1e-12
        inv = torch.where(keep_, 1 / lam.clamp_min(1e-300), torch.zeros_like(lam))
        v = (V @ (inv[..., None] * (V.transpose(-1, -2) @ rhs.reshape(R, mm * d, 1)))).reshape(R, mm, d)
    signal = 0.5 * _gated_inner(u, vt, u, vt)
    loss = signal - 0.5 * (v.reshape(R, -1) * rhs.reshape(R, -1)).sum(-1)
    return TangentFit(g_dirs, v, loss, signal)


def relu_tangent_kernel(params: dict, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    r"""Tangent kernel of a batch of two-layer relu networks at ``params``,

    .. math::

       K(x, x') = \langle \nabla_w h(w, x), \nabla_w h(w, x')\rangle
       = \sum_j \mathrm{relu}(a_j\cdot x)\,\mathrm{relu}(a_j\cdot x')
         + b_j^2\,\mathbf 1(a_j\cdot x>0)\,\mathbf 1(a_j\cdot x'>0)\,x\cdot x'

    for :math:`h(w, x) = \sum_j b_j\,\mathrm{relu}(a_j\cdot x)` (Chizat, Oyallon &
    Bach, 2019: the kernel of the lazy limit).

    Parameters
    ----------
    params : dict
        ``{"a": (R, T, m, d), "b": (R, T, m)}``.
    x1, x2 : torch.Tensor
        Shapes ``(R, n1, d)`` and ``(R, n2, d)``.

    Returns
    -------
    torch.Tensor
        Shape ``(R, T, n1, n2)``.
    """
    a, b = _batch_params(params, "params")
    x1 = _batch_inputs(x1, "x1", a)
    x2 = _batch_inputs(x2, "x2", a)
    _checks.elements(a.shape[0] * a.shape[1] * x1.shape[1] * x2.shape[1], "x1 and x2 (the kernel)")
    z1 = torch.einsum("rnd,rtmd->rtnm", x1, a)
    z2 = torch.einsum("rnd,rtmd->rtnm", x2, a)
    gram = torch.bmm(x1, x2.transpose(1, 2))[:, None]
    first = z1.clamp_min(0) @ z2.clamp_min(0).transpose(-1, -2)
    second = ((z1 > 0).to(a.dtype) * (b ** 2)[:, :, None, :]) @ (z2 > 0).to(a.dtype).transpose(-1, -2)
    return first + second * gram
