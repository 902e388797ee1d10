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
from torch.func import functional_call, jacrev, vmap

from mflib import _checks

__all__ = ["empirical_ntk", "empirical_nngp", "feature_nngp", "jacobian"]


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
    params = {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}
    if not params:
        raise ValueError("model must have at least one trainable parameter")
    buffers = dict(model.named_buffers())

    def f(p, xi):
        out = functional_call(model, (p, buffers), (xi.unsqueeze(0),))
        if out.numel() != 1:
            raise ValueError(f"model must have a scalar output per sample, got output shape "
                             f"{tuple(out.shape)} for one sample")
        return out.reshape(())

    return vmap(jacrev(f), in_dims=(None, 0), chunk_size=chunk_size)(params, x)


def empirical_ntk(model, x1, x2=None, *, chunk_size=None) -> torch.Tensor:
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
        Passed to :func:`jacobian`.

    Returns
    -------
    torch.Tensor
        Shape ``(n1, n2)``, on the device and in the dtype of the model's output.

    Raises
    ------
    TypeError
        If ``model`` is not a module or an input is not a floating tensor.
    ValueError
        If shapes disagree, an input is not finite or the output is not scalar.

    Notes
    -----
    Memory is that of the Jacobians, :math:`(n_1 + n_2) \times P` numbers for
    :math:`P` parameters.
    """
    _check_module(model)
    _check_pair(x1, x2)
    j1 = jacobian(model, x1, chunk_size=chunk_size)
    j2 = j1 if x2 is None else jacobian(model, x2, chunk_size=chunk_size)
    out = None
    for name, a in j1.items():
        a = a.reshape(a.shape[0], -1)
        b = j2[name].reshape(j2[name].shape[0], -1)
        term = a @ b.T
        out = term if out is None else out.add_(term)
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
