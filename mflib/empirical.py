r"""Empirical (finite-width) kernels of a network: NTK and NNGP.

The empirical neural tangent kernel of a network :math:`f(\cdot\,; w)` with
scalar output (Jacot, Gabriel & Hongler, 2018) is

.. math::

   \hat\Theta(x, x') = \scal{\nabla_w f(x; w)}{\nabla_w f(x'; w)}
                     = \sum_{p} \partial_{w_p} f(x; w)\, \partial_{w_p} f(x'; w).

It is random at initialisation; for the NTK parametrisation it converges to
the analytic kernel :func:`mflib.kernels.ntk` as the widths grow, with
fluctuations of order :math:`1/\sqrt{\text{width}}` (Jacot et al., 2018;
Arora et al., 2019).

The empirical NNGP is the covariance of the output over random
initialisations, :math:`\hat\Sigma(x, x') = \frac1M \sum_{k=1}^M f(x; w_k) f(x'; w_k)`
(the mean is zero by symmetry), which converges to :func:`mflib.kernels.nngp`
as the widths grow and :math:`M \to \infty` (Neal, 1996; Lee et al., 2018).
:func:`feature_nngp` gives the same covariance over the readout layer only,
conditional on one network's hidden layers: a single-network estimate whose
error is of order :math:`1/\sqrt{\text{width}}`.
"""

from __future__ import annotations

import torch
from torch.func import functional_call, jacrev, jvp, vjp, vmap

from mflib import _checks

__all__ = ["METHODS", "empirical_ntk", "empirical_nngp", "feature_nngp", "jacobian"]


def _check_pair(x1, x2):
    _checks.tensor(x1, "x1", ndim=2, nonempty=True)
    if x2 is not None:
        _checks.tensor(x2, "x2", ndim=2, nonempty=True)
        if x2.shape[1] != x1.shape[1]:
            raise ValueError(f"x2 must have the same number of columns as x1, "
                             f"got {x2.shape[1]} and {x1.shape[1]}")
        _checks.matching(x2, x1, "x2", "x1")


def _check_module(model, name="model"):
    _checks.instance(model, torch.nn.Module, name)


def _trainable(model):
    params = {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}
    if not params:
        raise ValueError("model must have at least one trainable parameter")
    return params


def jacobian(model, x, *, chunk_size=None) -> dict[str, torch.Tensor]:
    r"""Per-sample gradients :math:`\partial_{w_p} f(x_i; w)` of a scalar-output model.

    Computed as ``vmap(jacrev(f))`` over the samples with
    ``torch.func.functional_call``: no Python loop over samples.

    Parameters
    ----------
    model : torch.nn.Module
        A network whose output on a batch of shape ``(n, d)`` has ``n``
        entries (shape ``(n,)`` or ``(n, 1)``) and which treats samples
        independently.
    x : torch.Tensor
        Inputs, shape ``(n, d)``.
    chunk_size : int, optional
        Samples per vectorised chunk (``vmap``'s ``chunk_size``), to bound memory.

    Returns
    -------
    dict
        Maps every trainable parameter name to a tensor of shape ``(n, *shape)``.
    """
    _check_module(model)
    _checks.tensor(x, "x", ndim=2, nonempty=True)
    if chunk_size is not None:
        chunk_size = _checks.size(chunk_size, "chunk_size")
    params = _trainable(model)
    buffers = dict(model.named_buffers())

    def f(p, xi):
        out = functional_call(model, (p, buffers), (xi.unsqueeze(0),))
        if out.numel() != 1:
            raise ValueError(f"model must have a scalar output per sample, got output shape "
                             f"{tuple(out.shape)} for one sample")
        return out.reshape(())

    return vmap(jacrev(f), in_dims=(None, 0), chunk_size=chunk_size)(params, x)


#: The ways :func:`empirical_ntk` can compute the kernel.
METHODS = ("auto", "closed_form", "jacobian", "ntk_vp")

# "auto" on a generic module switches from the Jacobian contraction to NTK-vector
# products when the two Jacobians would hold more numbers than this (1 GiB in float64).
_JACOBIAN_LIMIT = 2 ** 27


def _is_plain_mlp(model) -> bool:
    """A :class:`~mflib.nets.MLP` whose forward pass is the library's own, without hooks."""
    from mflib.nets import MLP

    if not isinstance(model, MLP):
        return False
    cls = type(model)
    if any(getattr(cls, name) is not getattr(MLP, name)
           for name in ("forward", "features", "_dense", "_scales", "__call__")):
        return False
    hooks = (model._forward_hooks, model._forward_pre_hooks, model._backward_hooks,
             torch.nn.modules.module._global_forward_hooks,
             torch.nn.modules.module._global_forward_pre_hooks)
    if any(hooks):
        return False
    # a parametrised weight is a function of the parameters the generic path differentiates
    return not any(torch.nn.utils.parametrize.is_parametrized(m) for m in model.modules())


def _mlp_signals(model, x):
    r"""Forward and backward pass of an MLP on a batch.

    Returns the layer inputs :math:`h^\ell` (``h^0 = x``) and the backpropagated
    signals :math:`\delta^{\ell+1} = \partial z^{L+1} / \partial z^{\ell+1}`, one pair per
    dense layer :math:`\ell = 0, \dots, L`; the last signal is ``None`` (it is 1).
    """
    hs, zs = [x], []
    h = x
    for layer in range(model.depth):
        z = model._dense(layer, h)
        zs.append(z)
        h = model.phi(z)
        hs.append(h)
    deltas = [None] * (model.depth + 1)
    delta = None                                            # dz^{L+1}/dz^{L+1} = 1
    for layer in range(model.depth, 0, -1):
        c_w, _ = model._scales(layer, hs[layer].shape[-1])
        w = model.weights[layer]
        back = w.T.expand(x.shape[0], -1) if delta is None else delta @ w.T  # (n, n_layer)
        if c_w != 1.0:
            back = back * c_w
        delta = back * model.dphi(zs[layer - 1])
        deltas[layer - 1] = delta
    return hs, deltas


def _mlp_ntk(model, x1, x2):
    r"""Closed-form empirical NTK of a :class:`~mflib.nets.MLP` (see :func:`empirical_ntk`)."""
    _trainable(model)
    with torch.no_grad():
        hs1, ds1 = _mlp_signals(model, x1)
        hs2, ds2 = (hs1, ds1) if x2 is None else _mlp_signals(model, x2)
        has_bias = len(model.biases) > 0
        out = None
        for layer in range(model.depth + 1):
            w = model.weights[layer]
            b = model.biases[layer] if has_bias else None
            train_w = w.requires_grad
            train_b = b is not None and b.requires_grad
            if not (train_w or train_b):
                continue
            c_w, c_b = model._scales(layer, hs1[layer].shape[-1])
            if train_w:
                term = hs1[layer] @ hs2[layer].T                       # input Gram
                term.mul_(c_w ** 2)
                if train_b:
                    term.add_(c_b ** 2)
            else:
                term = torch.full((x1.shape[0], hs2[layer].shape[0]), c_b ** 2,
                                  dtype=hs1[layer].dtype, device=hs1[layer].device)
            if ds1[layer] is not None:                                 # signal Gram
                term.mul_(ds1[layer] @ ds2[layer].T)
            out = term if out is None else out.add_(term)
        if model.alpha != 1.0:
            out.mul_(model.alpha ** 2)
    return out


def _ntk_vp(model, x1, x2, chunk_size):
    r"""Empirical NTK by NTK-vector products: row :math:`i` is :math:`J(x_2) J(x_1)^\top e_i`."""
    params = _trainable(model)
    buffers = dict(model.named_buffers())
    x2 = x1 if x2 is None else x2

    def f(p, x):
        out = functional_call(model, (p, buffers), (x,))
        if out.numel() != x.shape[0]:
            raise ValueError(f"model must have a scalar output per sample, got output shape "
                             f"{tuple(out.shape)} for {x.shape[0]} samples")
        return out.reshape(-1)

    out1, pullback = vjp(lambda p: f(p, x1), params)

    def row(e):
        (tangent,) = pullback(e)                                  # J(x1)^T e, a parameter dict
        return jvp(lambda p: f(p, x2), (params,), (tangent,))[1]  # J(x2) J(x1)^T e

    basis = torch.eye(out1.shape[0], dtype=out1.dtype, device=out1.device)
    return vmap(row, chunk_size=chunk_size)(basis)


def _jacobian_ntk(model, x1, x2, chunk_size):
    j1 = jacobian(model, x1, chunk_size=chunk_size)
    j2 = j1 if x2 is None else jacobian(model, x2, chunk_size=chunk_size)
    out = None
    for name, a in j1.items():
        a = a.reshape(a.shape[0], -1)
        b = j2[name].reshape(j2[name].shape[0], -1)
        term = a @ b.T
        out = term if out is None else out.add_(term)
    return out


def empirical_ntk(model, x1, x2=None, *, chunk_size=None, method="auto") -> torch.Tensor:
    r"""Empirical NTK :math:`\hat\Theta(x_1, x_2) = J(x_1) J(x_2)^\top` of a scalar-output model.

    Parameters
    ----------
    model : torch.nn.Module
        Scalar output per sample (see :func:`jacobian`); all parameters with
        ``requires_grad`` count.
    x1 : torch.Tensor
        Inputs, shape ``(n1, d)``.
    x2 : torch.Tensor, optional
        Inputs, shape ``(n2, d)``; ``None`` means ``x1`` (exactly symmetric result).
    chunk_size : int, optional
        Vectorised chunk of the generic methods: samples per chunk of
        :func:`jacobian` (``"jacobian"``), rows of the kernel per chunk
        (``"ntk_vp"``); ignored by ``"closed_form"``.
    method : str, optional
        ``"closed_form"`` (a :class:`~mflib.nets.MLP` only), ``"jacobian"``,
        ``"ntk_vp"`` or ``"auto"`` (default): the closed form for a
        :class:`~mflib.nets.MLP` whose forward pass is the library's own; for
        any other module the Jacobian contraction, or NTK-vector products
        (rows in chunks of at most :math:`2^{27}/P` when ``chunk_size`` is not
        given) when the two Jacobians would hold more than :math:`2^{27}`
        numbers.  All methods compute the same kernel up to rounding.

    Returns
    -------
    torch.Tensor
        Shape ``(n1, n2)``, on the device and in the dtype of the model's output.

    Raises
    ------
    TypeError
        If ``model`` is not a module (or not an MLP for ``"closed_form"``) or
        an input is not a floating tensor.
    ValueError
        If shapes disagree, an input is not finite, the output is not scalar
        or ``method`` is unknown.

    Notes
    -----
    **Closed form** (fully connected networks).  With layer inputs
    :math:`h^\ell(x)` (:math:`h^0 = x`), pre-activations
    :math:`z^{\ell+1} = c_w^\ell h^\ell W^\ell + c_b^\ell b^\ell`, output
    :math:`f = \alpha z^{L+1}` and backpropagated signals
    :math:`\delta^{L+1} = 1`,
    :math:`\delta^{\ell} = c_w^{\ell}\,(\delta^{\ell+1} W^{\ell\top}) \odot \phi'(z^{\ell})`,
    the chain rule gives :math:`\partial f / \partial W^\ell = \alpha c_w^\ell\, h^{\ell\top} \delta^{\ell+1}`
    and :math:`\partial f / \partial b^\ell = \alpha c_b^\ell\, \delta^{\ell+1}`, so that

    .. math::

       \hat\Theta(x, x') = \alpha^2 \sum_{\ell=0}^{L}
           \scal{\delta^{\ell+1}(x)}{\delta^{\ell+1}(x')}
           \Bigl( (c_w^\ell)^2 \scal{h^\ell(x)}{h^\ell(x')} + (c_b^\ell)^2 \Bigr),

    a sum over layers of Hadamard products of two Gram matrices (the bias
    term only where biases exist), from one forward and one backward pass
    per input batch: :math:`O(n_1 n_2 \sum_\ell n_\ell)` time and
    :math:`O((n_1 + n_2) \sum_\ell n_\ell + n_1 n_2)` memory instead of
    :math:`O(n_1 n_2 P)` and :math:`O((n_1 + n_2) P)` for :math:`P`
    parameters (Arora et al., 2019, derive the same decomposition for the
    infinite-width limit).  The derivative is the MLP's ``dphi``.

    **Jacobian contraction**: ``vmap(jacrev)`` per-sample gradients
    (:func:`jacobian`), then :math:`\sum_p J_{ip} J'_{jp}`; memory
    :math:`(n_1 + n_2) P` numbers.  **NTK-vector products**: one vector-Jacobian
    product on the batch ``x1`` gives :math:`J(x_1)^\top e_i`, one
    Jacobian-vector product on ``x2`` turns it into row :math:`i` of the
    kernel; ``vmap`` over the rows, memory :math:`\text{chunk} \times P`.
    This follows the two strategies of the PyTorch tutorial *Neural Tangent
    Kernels* (``torch.func``).
    """
    _check_module(model)
    _check_pair(x1, x2)
    if chunk_size is not None:
        chunk_size = _checks.integer(chunk_size, "chunk_size", minimum=1)
    if not isinstance(method, str):
        raise TypeError(f"method must be a str, got {type(method).__name__}")
    _checks.choice(method, "method", METHODS)
    if method == "auto":
        if _is_plain_mlp(model):
            method = "closed_form"
        else:
            n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
            n_rows = x1.shape[0] + (0 if x2 is None else x2.shape[0])
            method = "jacobian"
            if n_rows * n_params > _JACOBIAN_LIMIT:
                method = "ntk_vp"
                if chunk_size is None:
                    chunk_size = max(1, _JACOBIAN_LIMIT // max(n_params, 1))
    if method == "closed_form":
        from mflib.nets import MLP

        if not isinstance(model, MLP):
            raise TypeError(f"model must be a mflib.nets.MLP for method='closed_form', "
                            f"got {type(model).__name__}")
        out = _mlp_ntk(model, x1, x2)
    elif method == "ntk_vp":
        out = _ntk_vp(model, x1, x2, chunk_size)
    else:
        out = _jacobian_ntk(model, x1, x2, chunk_size)
    if x2 is None:
        out = (out + out.T) * 0.5
    return out


def empirical_nngp(factory, x1, x2=None, *, n_models=256, generator=None) -> torch.Tensor:
    r"""Output covariance over random initialisations, :math:`\frac1M\sum_k f_k(x_1) f_k(x_2)^\top`.

    Parameters
    ----------
    factory : callable
        ``factory(generator=g)`` returns a freshly initialised scalar-output
        model drawn with the CPU generator ``g``, for instance
        ``functools.partial(mflib.nets.MLP, d, [512])``.
    x1 : torch.Tensor
        Inputs, shape ``(n1, d)``.
    x2 : torch.Tensor, optional
        Inputs, shape ``(n2, d)``; ``None`` means ``x1``.
    n_models : int, optional
        Number :math:`M` of independent initialisations.
    generator : torch.Generator, optional
        CPU generator passed to every ``factory`` call (``mflib.generator(0)``
        if omitted, never the global random state).
        ``n_models`` is at most :math:`10^6` (each model is built in Python).

    Returns
    -------
    torch.Tensor
        Shape ``(n1, n2)``.  Its Monte-Carlo error is of order
        :math:`\sqrt{(\Sigma(x_1,x_1)\Sigma(x_2,x_2) + \Sigma(x_1,x_2)^2)/M}`.
    """
    _checks.function(factory, "factory")
    _check_pair(x1, x2)
    n_models = _checks.size(n_models, "n_models", maximum=10 ** 6)
    generator = _checks.generator(generator)
    xs = x1 if x2 is None else torch.cat([x1, x2])
    _checks.elements(n_models * xs.shape[0], "n_models and x1, x2")
    outs = []
    with torch.no_grad():
        for _ in range(n_models):
            model = factory(generator=generator)
            _check_module(model, "factory(generator=...)")
            model = model.to(device=xs.device)
            y = model(xs).reshape(-1)
            if y.numel() != xs.shape[0]:
                raise ValueError(f"factory's models must have a scalar output per sample, "
                                 f"got {y.numel()} outputs for {xs.shape[0]} samples")
            outs.append(y)
    f = torch.stack(outs)                                  # (M, n1 [+ n2])
    f1, f2 = f[:, :x1.shape[0]], f[:, x1.shape[0]:]
    if x2 is None:
        out = f1.T @ f1 / n_models
        return (out + out.T) * 0.5
    return f1.T @ f2 / n_models


def feature_nngp(model, x1, x2=None) -> torch.Tensor:
    r"""Output covariance over the readout layer of one :class:`~mflib.nets.MLP`.

    With :math:`\phi(h(x)) \in \R^{m}` the last hidden post-activations and the
    readout :math:`f = \alpha(c_w\, \phi(h) \cdot a + c_b b)`, :math:`a_i, b`
    independent with variances :math:`v_a, v_b` at initialisation,

    .. math::

       \hat\Sigma(x, x') = \alpha^2\bigl(c_w^2 v_a\, \phi(h(x)) \cdot \phi(h(x')) + c_b^2 v_b\bigr),

    that is :math:`\alpha^2(\sigma_w^2 \phi\cdot\phi'/m + \sigma_b^2)` in the NTK and
    standard parametrisations and :math:`\alpha^2(\sigma_w^2\phi\cdot\phi'/m^2 + \sigma_b^2)`
    in the mean-field one.  For the NTK parametrisation it converges to
    :func:`mflib.kernels.nngp` at rate :math:`1/\sqrt m`.

    Parameters
    ----------
    model : mflib.nets.MLP
        The network (its current hidden weights are used; the readout weights are not).
    x1 : torch.Tensor
        Inputs, shape ``(n1, d)``.
    x2 : torch.Tensor, optional
        Inputs, shape ``(n2, d)``; ``None`` means ``x1``.

    Returns
    -------
    torch.Tensor
        Shape ``(n1, n2)``.
    """
    from mflib.nets import MLP

    _checks.instance(model, MLP, "model")
    _check_pair(x1, x2)
    with torch.no_grad():
        p1 = model.features(x1)
        p2 = p1 if x2 is None else model.features(x2)
        m = p1.shape[1]
        ws, bs = model.weight_std, model.bias_std
        if model.parametrization == "mean_field":
            scale = ws ** 2 / m ** 2
        else:
            scale = ws ** 2 / m
        out = (p1 @ p2.T).mul_(scale).add_(bs ** 2).mul_(model.alpha ** 2)
        if x2 is None:
            out = (out + out.T) * 0.5
    return out
