r"""Fully connected networks in the standard, NTK and mean-field parametrisations.

A network of depth :math:`L` (number of hidden layers) with hidden widths
:math:`n_1, \dots, n_L` maps :math:`x \in \R^{d}` to a scalar.  In the NTK
parametrisation (Jacot, Gabriel & Hongler, 2018) every dense layer computes

.. math::

   z^{\ell+1} = \frac{\sigma_w}{\sqrt{n_\ell}}\, x^{\ell} W^{\ell} + \sigma_b\, b^{\ell},
   \qquad x^{\ell} = \phi(z^{\ell}),\quad W^{\ell}_{ij},\, b^{\ell}_j \sim \N(0, 1),

and the output is :math:`f(x) = \alpha\, z^{L+1}`.  The standard parametrisation
draws :math:`W^\ell_{ij} \sim \N(0, \sigma_w^2/n_\ell)`, :math:`b^\ell_j \sim \N(0, \sigma_b^2)`
and computes :math:`z^{\ell+1} = x^\ell W^\ell + b^\ell`: the same function at
initialisation, but different gradients.  The mean-field two-layer network
(Mei, Montanari & Nguyen, 2018; Chizat & Bach, 2018) is

.. math::

   f(x) = \frac{\alpha}{m} \sum_{i=1}^m a_i\, \phi(w_i \cdot x + b_i),
   \qquad w_i \sim \N(0, \sigma_w^2 I_d / d),\ b_i \sim \N(0, \sigma_b^2),\ a_i \sim \N(0, \sigma_w^2).

The output scale :math:`\alpha` is the lazy-training knob of Chizat, Oyallon &
Bach (2019): a large :math:`\alpha` makes training lazy (the weights barely
move and the network stays close to its linearisation).

Parameters are ordinary ``torch.nn.Parameter`` objects, so ``torch.optim``
and ``torch.func`` (``functional_call``, ``jacrev``, ``vmap``) work on them.
Biases exist only when ``bias_std > 0``.
"""

from __future__ import annotations

import math
import torch

from mflib import _checks
from mflib import activations as _activations
from mflib.config import DTYPE

__all__ = ["PARAMETRIZATIONS", "resolve_activation", "MLP"]

#: The parametrisations understood by :class:`MLP`.
PARAMETRIZATIONS = ("standard", "ntk", "mean_field")


def resolve_activation(activation, name: str = "activation"):
    """Turn an activation argument into ``(key, phi, dphi)``.

    Parameters
    ----------
    activation : str, callable or tuple
        A name of the registry :data:`mflib.activations.ACTIVATIONS`, an
        :class:`mflib.activations.Activation`, an elementwise callable (its
        derivative is then taken by forward-mode automatic differentiation),
        or a pair ``(phi, dphi)`` of callables.
    name : str
        The argument name used in error messages.

    Returns
    -------
    tuple
        ``key`` (the registry name, or ``None`` for a callable), ``phi`` and
        ``dphi``.

    Raises
    ------
    ValueError
        If a name is not in the registry.
    TypeError
        If ``activation`` is neither a string, a callable nor a pair of callables.
    """
    act = _activations.get(activation, name)
    return act.name, act.fn, act.derivative


class MLP(torch.nn.Module):
    r"""Fully connected network with scalar output.

    Parameters
    ----------
    d_in : int
        Input dimension :math:`d`.
    widths : int or list of int
        Hidden widths :math:`n_1, \dots, n_L` (``L = len(widths)`` hidden
        layers; ``[]`` gives a linear model).
    activation : str, callable or tuple, optional
        See :func:`resolve_activation`; default ``"relu"``.
    weight_std, bias_std : float, optional
        :math:`\sigma_w > 0` and :math:`\sigma_b \ge 0`; no bias parameters
        are created when ``bias_std == 0``.
    parametrization : str, optional
        ``"ntk"`` (default), ``"standard"`` or ``"mean_field"``, see the module docstring; ``"mean_field"`` needs exactly one hidden layer.
    alpha : float, optional
        Output scale :math:`\alpha > 0`.
    generator : torch.Generator, optional
        CPU generator used for the initialisation (``mflib.generator(0)`` if
        omitted, never the global random state); weights are drawn on the CPU
        and moved to ``device``.
    dtype : torch.dtype, optional
        Floating dtype of the parameters (default ``mflib.DTYPE``, float64).
    device : torch.device or str, optional
        Device of the parameters (default CPU).

    Notes
    -----
    ``forward`` maps ``(n, d)`` to ``(n,)`` (and ``(d,)`` to a scalar, which
    makes ``torch.func.vmap`` over samples natural).  With the same generator
    state the three parametrisations draw the same standard normal numbers;
    ``"standard"`` and ``"ntk"`` then compute the same function at
    initialisation, while in ``"mean_field"`` the readout sum is
    :math:`\sqrt m` times smaller.
    """

    def __init__(self, d_in, widths, *, activation="relu", weight_std=1.0, bias_std=0.0,
                 parametrization="ntk", alpha=1.0, generator=None, dtype=None, device=None):
        super().__init__()
        d_in = _checks.size(d_in, "d_in")
        if isinstance(widths, bool):
            raise TypeError("widths must be an int or a sequence of ints, got bool")
        if isinstance(widths, int):
            widths = [widths]
        if isinstance(widths, (str, bytes)):
            raise TypeError("widths must be an int or a sequence of ints, got str")
        try:
            widths = list(widths)
        except TypeError:
            raise TypeError(f"widths must be an int or a sequence of ints, "
                            f"got {type(widths).__name__}") from None
        widths = [_checks.size(w, "widths") for w in widths]
        sizes = [d_in, *widths, 1]
        _checks.elements(sum(a * b for a, b in zip(sizes[:-1], sizes[1:])), "d_in and widths")
        self.activation_key, self.phi, self.dphi = resolve_activation(activation)
        self.weight_std = _checks.real(weight_std, "weight_std", positive=True)
        self.bias_std = _checks.real(bias_std, "bias_std", nonnegative=True)
        _checks.string(parametrization, "parametrization")
        self.parametrization = _checks.choice(parametrization, "parametrization", PARAMETRIZATIONS)
        if parametrization == "mean_field" and len(widths) != 1:
            raise ValueError(f"widths must have exactly one hidden layer for the mean_field "
                             f"parametrization, got {widths}")
        self.alpha = _checks.real(alpha, "alpha", positive=True)
        generator = _checks.generator(generator)
        dtype = _checks.dtype(dtype, default=DTYPE)
        device = _checks.device(device)
        self.d_in = d_in
        self.widths = tuple(widths)
        self.depth = len(widths)

        sizes = [d_in, *widths, 1]
        weights, biases = [], []
        for layer, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            w = torch.randn(n_in, n_out, generator=generator, dtype=dtype)
            b = torch.randn(n_out, generator=generator, dtype=dtype) if self.bias_std > 0 else None
            w, b = self._initial_values(layer, n_in, w, b)
            weights.append(torch.nn.Parameter(w.to(device)))
            if b is not None:
                biases.append(torch.nn.Parameter(b.to(device)))
        self.weights = torch.nn.ParameterList(weights)
        self.biases = torch.nn.ParameterList(biases)

    # -- initialisation and per-layer scales -------------------------------------------------
    def _is_last(self, layer: int) -> bool:
        return layer == self.depth

    def _initial_values(self, layer, n_in, w, b):
        """Scale standard normal draws to the parameter values of ``layer``."""
        p = self.parametrization
        if p == "ntk":
            return w, b
        if p == "standard" or (p == "mean_field" and not self._is_last(layer)):
            w = w * (self.weight_std / math.sqrt(n_in))
            b = None if b is None else b * self.bias_std
            return w, b
        # mean-field readout: a_i ~ N(0, weight_std^2), b ~ N(0, bias_std^2)
        return w * self.weight_std, (None if b is None else b * self.bias_std)

    def _scales(self, layer: int, n_in: int) -> tuple[float, float]:
        """Multipliers ``(c_w, c_b)`` with ``z = c_w x W + c_b b`` for ``layer``."""
        p = self.parametrization
        if p == "ntk":
            return self.weight_std / math.sqrt(n_in), self.bias_std
        if p == "mean_field" and self._is_last(layer):
            return 1.0 / n_in, 1.0
        return 1.0, 1.0

    # -- forward --------------------------------------------------------------------------
    def _dense(self, layer: int, h: torch.Tensor) -> torch.Tensor:
        n_in = h.shape[-1]
        c_w, c_b = self._scales(layer, n_in)
        z = h @ self.weights[layer]
        if c_w != 1.0:
            z = z * c_w
        if len(self.biases):
            b = self.biases[layer]
            z = z + (b * c_b if c_b != 1.0 else b)
        return z

    def _check_x(self, x):
        _checks.tensor(x, "x", ndim=(1, 2))
        if x.shape[-1] != self.d_in:
            raise ValueError(f"x must have shape (n, {self.d_in}) or ({self.d_in},), "
                             f"got {tuple(x.shape)}")
        if x.dtype != self.weights[0].dtype:
            raise TypeError(f"x must have the dtype of the parameters ({self.weights[0].dtype}), "
                            f"got {x.dtype}")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Post-activations of the last hidden layer, shape ``(n, n_L)`` (``x`` itself if depth 0)."""
        self._check_x(x)
        return self._features(x)

    def _features(self, x):
        h = x
        for layer in range(self.depth):
            h = self.phi(self._dense(layer, h))
        return h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Evaluate the network: ``(n, d) -> (n,)`` or ``(d,) -> ()``."""
        self._check_x(x)
        out = self._dense(self.depth, self._features(x)).squeeze(-1)
        return out * self.alpha if self.alpha != 1.0 else out

    def extra_repr(self) -> str:
        act = self.activation_key or getattr(self.phi, "__name__", "callable")
        return (f"d_in={self.d_in}, widths={list(self.widths)}, activation={act}, "
                f"weight_std={self.weight_std}, bias_std={self.bias_std}, "
                f"parametrization={self.parametrization!r}, alpha={self.alpha}")
