r"""Fully connected networks written out by hand: parameters, forward pass,
backpropagation, and the cost of reverse-mode differentiation.

Notation of the lectures (Lecture 2).  A network with widths
:math:`(m_0, m_1, \dots, m_L)` has weight matrices
:math:`W^\ell \in \mathbb R^{m_\ell \times m_{\ell-1}}` and, optionally,
biases :math:`b^\ell \in \mathbb R^{m_\ell}`; with :math:`x^0 = x`,

.. math::

   y^\ell = W^\ell x^{\ell-1} + b^\ell, \qquad x^\ell = \sigma(y^\ell)
   \quad (1 \le \ell < L), \qquad h(w, x) = y^L = W^L x^{L-1} + b^L .

Backpropagation (the :math:`\delta`-recursion of the slides): with
:math:`\delta y^L = \nabla_h \operatorname{loss}` and, going down,

.. math::

   \delta W^\ell = \delta y^\ell\, (x^{\ell-1})^\top, \quad
   \delta b^\ell = \delta y^\ell, \quad
   \delta x^{\ell-1} = (W^\ell)^\top \delta y^\ell, \quad
   \delta y^{\ell-1} = \sigma'(y^{\ell-1}) \odot \delta x^{\ell-1}.

A batch of :math:`n` inputs is a tensor of shape ``(n, m_0)``; the
per-sample gradients are summed, so the functions below return the gradient
of :math:`\sum_k \operatorname{loss}_k`, or of the mean when the caller
scales ``grad_output``.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass

import torch

from mflib import _checks
from mflib import activations as _activations
from mflib.config import DTYPE, generator as _generator

__all__ = ["activation", "param_count", "init_params", "Cache", "forward",
           "backward", "mse_gradients", "autograd_gradients", "relative_error", "gradient_descent",
           "Timing", "time_forward_backward"]

def activation(name):
    """Return ``(sigma, sigma_prime)`` for a name of the registry :data:`mflib.activations.ACTIVATIONS`.

    A pair of callables ``(sigma, sigma_prime)`` is returned unchanged.

    Raises
    ------
    TypeError
        If ``name`` is neither a string nor a pair of callables.
    ValueError
        If ``name`` is an unknown string.
    """
    if isinstance(name, tuple) and len(name) == 2 and all(callable(f) for f in name):
        return name
    if not isinstance(name, str):
        raise TypeError("activation must be a name or a pair (sigma, sigma_prime) of callables, "
                        f"got {type(name).__name__}")
    act = _activations.get(name, "activation name")
    return act.fn, act.derivative


_activation = activation


def _widths(widths):
    if isinstance(widths, (str, bytes)) or not hasattr(widths, "__iter__"):
        raise TypeError(f"widths must be a sequence of ints, got {type(widths).__name__}")
    widths = [_checks.size(m, "widths") for m in widths]
    if len(widths) < 2:
        raise ValueError(f"widths must hold at least an input and an output width, got {widths}")
    return widths


def param_count(widths, *, bias: bool = True) -> int:
    r"""Number of parameters of a fully connected network.

    .. math::

       p = \sum_{\ell=1}^{L} m_\ell m_{\ell-1} \;\bigl(+\, m_\ell \text{ with biases}\bigr).

    Parameters
    ----------
    widths : sequence of int
        :math:`(m_0, \dots, m_L)`: input width, hidden widths, output width.
    bias : bool
        Count the biases.
    """
    widths = _widths(widths)
    _checks.flag(bias, "bias")
    return sum(a * b + (b if bias else 0) for a, b in zip(widths[:-1], widths[1:]))


def init_params(widths, *, weight_var: float = 2.0, bias_std: float = 0.0, bias: bool = True,
                seed: int = 0, dtype: torch.dtype = DTYPE, device=None):
    r"""Draw the parameters of a fully connected network.

    :math:`W^\ell_{ij} \sim \mathcal N(0, \sigma_w^2 / m_{\ell-1})` and
    :math:`b^\ell_i \sim \mathcal N(0, \sigma_b^2)`; ``weight_var = 2`` is the
    initialisation of He et al. (2015) for relu networks.

    Parameters
    ----------
    widths : sequence of int
        :math:`(m_0, \dots, m_L)`.
    weight_var : float
        :math:`\sigma_w^2 \ge 0`.
    bias_std : float
        :math:`\sigma_b \ge 0`.
    bias : bool
        Whether the network has biases (if not, the ``b`` entries are ``None``).
    seed : int
        Seed of the CPU generator the numbers are drawn from (standard
        normals are drawn in float32, then cast to ``dtype``).
    dtype, device
        Of the returned tensors.

    Returns
    -------
    list of (torch.Tensor, torch.Tensor or None)
        ``[(W1, b1), ..., (WL, bL)]`` with ``W`` of shape ``(m_l, m_{l-1})``.
    """
    widths = _widths(widths)
    weight_var = _checks.real(weight_var, "weight_var", nonnegative=True)
    bias_std = _checks.real(bias_std, "bias_std", nonnegative=True)
    _checks.flag(bias, "bias")
    seed = _checks.seed(seed)
    dtype = _checks.dtype(dtype)
    device = None if device is None else _checks.device(device)
    _checks.elements(sum(a * b + b for a, b in zip(widths[:-1], widths[1:])), "widths")
    g = _generator(seed)
    params = []
    for m_in, m_out in zip(widths[:-1], widths[1:]):
        # Drawn in float32 (five times faster on a CPU) and then cast.
        W = torch.randn(m_out, m_in, generator=g).to(dtype) * math.sqrt(weight_var / m_in)
        b = torch.randn(m_out, generator=g).to(dtype) * bias_std if bias else None
        params.append((W.to(device) if device is not None else W,
                       (b.to(device) if device is not None and b is not None else b)))
    return params


def _check_params(params):
    if not isinstance(params, (list, tuple)) or not params:
        raise TypeError("params must be a non-empty list of (W, b) pairs")
    first = params[0][0] if isinstance(params[0], (list, tuple)) and params[0] else None
    prev = None
    for k, pair in enumerate(params):
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise TypeError(f"params[{k}] must be a pair (W, b)")
        W, b = pair
        _checks.tensor(W, f"params[{k}][0]", ndim=2)
        _checks.matching(W, first, f"params[{k}][0]", "params[0][0]")
        if b is not None:
            _checks.tensor(b, f"params[{k}][1]", ndim=1)
            _checks.matching(b, first, f"params[{k}][1]", "params[0][0]")
            if b.shape[0] != W.shape[0]:
                raise ValueError(f"params[{k}]: bias of length {b.shape[0]} for {W.shape[0]} rows")
        if prev is not None and W.shape[1] != prev:
            raise ValueError(f"params[{k}][0] has {W.shape[1]} columns, the layer below has "
                             f"{prev} outputs")
        prev = W.shape[0]


@dataclass
class Cache:
    """What the forward pass stores for the backward pass.

    Attributes
    ----------
    ys : list of torch.Tensor
        Pre-activations :math:`y^1, \\dots, y^L`, each ``(n, m_l)``; ``ys[-1]``
        is the output :math:`h(w, x)`.
    xs : list of torch.Tensor
        Activations :math:`x^0 = x, x^1, \\dots, x^{L-1}`, each ``(n, m_l)``.
    """

    ys: list
    xs: list

    @property
    def output(self) -> torch.Tensor:
        """The network's output :math:`h(w, x)`, shape ``(n, m_L)``."""
        return self.ys[-1]


def forward(params, x: torch.Tensor, *, activation="relu", check: bool = True) -> Cache:
    r"""Forward pass storing every :math:`y^\ell` and :math:`x^\ell`.

    Parameters
    ----------
    params : list
        Pairs ``(W, b)``, as returned by :func:`init_params`.
    x : torch.Tensor
        Inputs, shape ``(n, m_0)``.
    activation : str or (callable, callable)
        See :func:`activation`.
    check : bool
        Validate the arguments (switch off inside timing loops).
    """
    sigma, _ = _activation(activation)
    check = _checks.flag(check, "check")
    if check:
        _check_params(params)
        _checks.tensor(x, "x", ndim=2, nonempty=True)
        _checks.matching(x, params[0][0], "x", "params")
        if x.shape[1] != params[0][0].shape[1]:
            raise ValueError(f"x has {x.shape[1]} columns, the first layer expects "
                             f"{params[0][0].shape[1]}")
    xs, ys = [x], []
    h = x
    for k, (W, b) in enumerate(params):
        y = h @ W.T
        if b is not None:
            y = y + b
        ys.append(y)
        if k < len(params) - 1:
            h = sigma(y)
            xs.append(h)
    return Cache(ys=ys, xs=xs)


def backward(params, cache: Cache, grad_output: torch.Tensor, *, activation="relu",
             check: bool = True, return_deltas: bool = False):
    r"""Backpropagation: the :math:`\delta`-recursion of the lectures.

    Parameters
    ----------
    params : list
        Pairs ``(W, b)``, as returned by :func:`init_params`.
    cache : Cache
        From :func:`forward` on the same ``params``.
    grad_output : torch.Tensor
        :math:`\delta y^L = \partial \sum_k \operatorname{loss}_k / \partial h`,
        shape ``(n, m_L)``.
    activation : str or (callable, callable)
        The activation used in the forward pass.
    return_deltas : bool
        Also return the list :math:`\delta y^1, \dots, \delta y^L`.

    Returns
    -------
    list of (torch.Tensor, torch.Tensor or None)
        ``[(dW1, db1), ..., (dWL, dbL)]``, shaped like ``params``; followed by
        the list of :math:`\delta y^\ell` when ``return_deltas``.
    """
    _, dsigma = _activation(activation)
    check = _checks.flag(check, "check")
    return_deltas = _checks.flag(return_deltas, "return_deltas")
    if check:
        _check_params(params)
        _checks.instance(cache, Cache, "cache")
        if len(cache.ys) != len(params) or len(cache.xs) != len(params):
            raise ValueError(f"cache must come from a forward pass through {len(params)} layers, "
                             f"got {len(cache.ys)}")
        _checks.tensor(grad_output, "grad_output", ndim=2)
        _checks.matching(grad_output, params[0][0], "grad_output", "params")
        if grad_output.shape != cache.output.shape:
            raise ValueError(f"grad_output has shape {tuple(grad_output.shape)}, the output "
                             f"has shape {tuple(cache.output.shape)}")
    L = len(params)
    grads = [None] * L
    deltas = [None] * L
    dy = grad_output
    for ell in range(L - 1, -1, -1):
        W, b = params[ell]
        deltas[ell] = dy
        dW = dy.T @ cache.xs[ell]
        db = dy.sum(0) if b is not None else None
        grads[ell] = (dW, db)
        if ell > 0:
            dx = dy @ W
            dy = dsigma(cache.ys[ell - 1]) * dx
    return (grads, deltas) if return_deltas else grads


def mse_gradients(params, x: torch.Tensor, y: torch.Tensor, *, activation="relu"):
    r"""Loss and hand-computed gradients of :math:`\frac{1}{2n}\sum_k \lVert h(w,x_k)-y_k\rVert^2`.

    Returns
    -------
    tuple
        ``(loss, grads)`` with ``grads`` as in :func:`backward`.
    """
    cache = forward(params, x, activation=activation)
    _checks.tensor(y, "y", ndim=2)
    _checks.matching(y, x, "y", "x")
    if y.shape != cache.output.shape:
        raise ValueError(f"y has shape {tuple(y.shape)}, the output has shape "
                         f"{tuple(cache.output.shape)}")
    return _finite_grads(*_mse_raw(params, cache, x, y, activation))


def _mse_raw(params, cache, x, y, activation):
    n = x.shape[0]
    r = cache.output - y
    loss = 0.5 * (r * r).sum() / n
    return loss, backward(params, cache, r / n, activation=activation, check=False)


def _finite_grads(loss, grads):
    names = "params, x or y (their scale)"
    _checks.finite_result(loss, "the loss", names)
    for dW, db in grads:
        _checks.finite_result(dW, "a gradient", names)
        if db is not None:
            _checks.finite_result(db, "a gradient", names)
    return loss, grads


def autograd_gradients(params, x: torch.Tensor, y: torch.Tensor, *, activation="relu"):
    """Same as :func:`mse_gradients`, computed by ``torch.autograd`` (reverse mode)."""
    _check_params(params)
    _checks.tensor(x, "x", ndim=2, nonempty=True)
    _checks.matching(x, params[0][0], "x", "params")
    if x.shape[1] != params[0][0].shape[1]:
        raise ValueError(f"x has {x.shape[1]} columns, the first layer expects {params[0][0].shape[1]}")
    _checks.tensor(y, "y", ndim=2)
    _checks.matching(y, x, "y", "x")
    if y.shape != (x.shape[0], params[-1][0].shape[0]):
        raise ValueError(f"y has shape {tuple(y.shape)}, the output has shape "
                         f"{(x.shape[0], params[-1][0].shape[0])}")
    leaves = [(W.detach().clone().requires_grad_(True),
               None if b is None else b.detach().clone().requires_grad_(True)) for W, b in params]
    with torch.enable_grad():
        out = forward(leaves, x, activation=activation).output
        loss = 0.5 * ((out - y) ** 2).sum() / x.shape[0]
        flat = [t for pair in leaves for t in pair if t is not None]
        g = iter(torch.autograd.grad(loss, flat))
    grads = [(next(g), None if b is None else next(g)) for _, b in leaves]
    return _finite_grads(loss.detach(), grads)


def relative_error(grads_a, grads_b) -> float:
    r"""Largest relative error :math:`\lVert a-b\rVert / \lVert b\rVert` over all gradient tensors."""
    for name, g in (("grads_a", grads_a), ("grads_b", grads_b)):
        if not isinstance(g, (list, tuple)) or not g:
            raise TypeError(f"{name} must be a non-empty list of (dW, db) pairs")
        for k, pair in enumerate(g):
            if not isinstance(pair, (list, tuple)) or len(pair) != 2:
                raise TypeError(f"{name}[{k}] must be a pair (dW, db)")
            for j, t in enumerate(pair):
                if t is not None:
                    _checks.tensor(t, f"{name}[{k}][{j}]")
    if len(grads_a) != len(grads_b):
        raise ValueError(f"grads_a and grads_b must have the same number of layers, "
                         f"got {len(grads_a)} and {len(grads_b)}")
    worst = 0.0
    for (wa, ba), (wb, bb) in zip(grads_a, grads_b):
        for a, b in ((wa, wb), (ba, bb)):
            if a is None and b is None:
                continue
            if a is None or b is None:
                raise ValueError("grads_a and grads_b disagree about which layers have biases")
            _checks.same_shape(a, b, "grads_a", "grads_b")
            nb = float(torch.linalg.norm(b))
            err = float(torch.linalg.norm(a - b))
            worst = max(worst, err / nb if nb > 0 else err)
    return worst


def gradient_descent(params, x: torch.Tensor, y: torch.Tensor, *, lr: float, steps: int,
                     activation="relu"):
    r"""Full-batch gradient descent on :math:`\frac{1}{2n}\sum_k\lVert h(w,x_k)-y_k\rVert^2`
    with the hand-written gradients of :func:`mse_gradients`.

    Returns
    -------
    tuple
        ``(losses, params)``: the ``steps + 1`` losses (float64 tensor, the
        first at the initial parameters) and the final parameters (new tensors).

    Raises
    ------
    mflib.Diverged
        If the loss becomes non-finite.
    """
    from mflib._checks import Diverged

    _check_params(params)
    lr = _checks.real(lr, "lr", positive=True)
    steps = _checks.size(steps, "steps", minimum=0)
    _checks.tensor(x, "x", ndim=2)
    _checks.budget(6.0 * (steps + 1) * x.shape[0] * sum(W.numel() for W, _ in params),
                   "steps, x and params")
    params = [(W.clone(), None if b is None else b.clone()) for W, b in params]
    losses = []
    for k in range(steps + 1):
        if k == 0:          # checks the arguments, and that the start is finite
            loss, grads = mse_gradients(params, x, y, activation=activation)
        else:
            cache = forward(params, x, activation=activation, check=False)
            loss, grads = _mse_raw(params, cache, x, y, activation)
        finite = math.isfinite(float(loss)) and all(
            bool(torch.isfinite(t).all()) for pair in grads for t in pair if t is not None)
        if not finite:
            raise Diverged(f"gradient descent diverged at step {k} (lr={lr})")
        losses.append(float(loss))
        if k == steps:
            break
        params = [(W - lr * dW, None if b is None else b - lr * db)
                  for (W, b), (dW, db) in zip(params, grads)]
    return torch.tensor(losses, dtype=DTYPE), params


@dataclass
class Timing:
    """Median times (seconds) of one forward and one backward pass.

    Attributes
    ----------
    forward, backward : float
        Hand-written forward pass and :math:`\\delta`-recursion.
    autograd_forward, autograd_backward : float
        The same network under ``torch.autograd`` (forward with the graph
        recorded, then ``loss.backward()``).
    """

    forward: float
    backward: float
    autograd_forward: float
    autograd_backward: float

    @property
    def ratio(self) -> float:
        """Backward / forward, hand-written."""
        return self.backward / self.forward

    @property
    def autograd_ratio(self) -> float:
        """Backward / forward under autograd."""
        return self.autograd_backward / self.autograd_forward


def time_forward_backward(widths, *, batch: int = 128, repeats: int = 21, activation="relu",
                          dtype: torch.dtype = torch.float32, seed: int = 0,
                          threads: int = 1) -> Timing:
    """Median times of a forward and a backward pass (hand-written and autograd).

    With ``threads=1`` (the default) the times are the CPU time of the
    calling thread (``time.thread_time``), which a loaded machine does not
    inflate; with more threads they are wall-clock times.

    Each of ``repeats`` rounds times the four operations once, interleaved, so
    that a burst of load on a shared machine hits all four; medians make the
    result robust to such bursts.

    Parameters
    ----------
    widths : sequence of int
        :math:`(m_0, \\dots, m_L)`.
    batch : int
        Number of inputs.
    repeats : int
        Number of timing rounds (at least 3; a warm-up round is added).
    threads : int
        Torch intra-op threads during the measurement (restored afterwards);
        one thread makes the ratio insensitive to other processes on a shared
        machine.
    """
    widths = _widths(widths)
    batch = _checks.size(batch, "batch")
    repeats = _checks.size(repeats, "repeats", minimum=3, maximum=10 ** 4)
    threads = _checks.integer(threads, "threads", minimum=1, maximum=max(1, torch.get_num_threads(), 1024))
    dtype = _checks.dtype(dtype)
    seed = _checks.seed(seed) % (2 ** 63 - 1)
    _activation(activation)
    weights = sum(a * b for a, b in zip(widths[:-1], widths[1:]))
    _checks.elements(4 * weights + 2 * batch * sum(widths), "widths and batch")
    _checks.budget(12.0 * (repeats + 1) * batch * weights, "widths, batch and repeats")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _time(widths, batch, repeats, activation, dtype, seed)
    finally:
        torch.set_num_threads(before)


def _time(widths, batch, repeats, activation, dtype, seed) -> Timing:
    params = init_params(widths, seed=seed, dtype=dtype)
    g = _generator(seed + 1)
    x = torch.randn(batch, widths[0], generator=g, dtype=dtype)
    gout = torch.randn(batch, widths[-1], generator=g, dtype=dtype)
    leaves = [(W.clone().requires_grad_(True), b.clone().requires_grad_(True)) for W, b in params]
    # With one thread, the thread's CPU time is what the pass costs: time spent
    # descheduled by other processes on a loaded machine is not counted.
    clock = time.thread_time if torch.get_num_threads() == 1 else time.perf_counter
    t = {"f": [], "b": [], "af": [], "ab": []}
    for r in range(repeats + 1):
        t0 = clock()
        cache = forward(params, x, activation=activation, check=False)
        t1 = clock()
        backward(params, cache, gout, activation=activation, check=False)
        t2 = clock()
        out = forward(leaves, x, activation=activation, check=False).output
        t3 = clock()
        out.backward(gout)
        t4 = clock()
        for W, b in leaves:
            W.grad = None
            b.grad = None
        if r:  # the first round is a warm-up
            t["f"].append(t1 - t0)
            t["b"].append(t2 - t1)
            t["af"].append(t3 - t2)
            t["ab"].append(t4 - t3)
    med = {k: statistics.median(v) for k, v in t.items()}
    return Timing(med["f"], med["b"], med["af"], med["ab"])
