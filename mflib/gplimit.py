r"""The Gaussian-process limit of wide random networks, measured (Lecture 3).

* :func:`radial_kernel`: the radial covariances :math:`k(\lVert x-x'\rVert)`
  of Rasmussen & Williams (2006, ch. 4): squared exponential and Matérn.
* :func:`sample_network_outputs`: outputs :math:`f(x)` of many independent
  random fully connected networks, drawn in batches, in the NTK
  parametrisation of :mod:`mflib.nets` and :mod:`mflib.kernels`
  (:math:`z^{\ell+1} = \frac{\sigma_w}{\sqrt{n_\ell}} x^\ell W^\ell + \sigma_b b^\ell`,
  standard normal :math:`W, b`, scalar readout), whose covariance tends to
  :func:`mflib.kernels.nngp` as the widths grow (Neal, 1994; Lee et al.,
  2018; Matthews et al., 2018).
* :func:`excess_kurtosis` and :func:`ks_distance`: how far a sample of
  :math:`f(x)` is from a centred Gaussian.
"""

from __future__ import annotations

import math

import torch

from mflib import _checks
from mflib.config import DTYPE, generator as _generator

__all__ = ["RADIAL", "radial_kernel", "sample_network_outputs", "excess_kurtosis", "kurtosis_estimate", "one_unit_ks",
           "ks_distance"]

#: Radial kernels known by name, as functions of :math:`r = \lVert x-x'\rVert/\ell`.
RADIAL = {
    "se": lambda r: torch.exp(-0.5 * r * r),
    "matern12": lambda r: torch.exp(-r),
    "matern32": lambda r: (1 + math.sqrt(3) * r) * torch.exp(-math.sqrt(3) * r),
    "matern52": lambda r: (1 + math.sqrt(5) * r + 5 * r * r / 3) * torch.exp(-math.sqrt(5) * r),
}


def radial_kernel(x1: torch.Tensor, x2: torch.Tensor | None = None, *, kind: str = "se",
                  lengthscale: float = 1.0, variance: float = 1.0) -> torch.Tensor:
    r"""Radial covariance :math:`\Sigma(x, x') = v\, k(\lVert x-x'\rVert/\ell)`.

    ``kind`` is ``"se"`` (:math:`k(r) = e^{-r^2/2}`), ``"matern12"``
    (:math:`e^{-r}`, the Laplace or Ornstein–Uhlenbeck kernel), ``"matern32"``
    (:math:`(1+\sqrt3 r)e^{-\sqrt3 r}`) or ``"matern52"``
    (:math:`(1+\sqrt5 r+\frac53 r^2)e^{-\sqrt5 r}`); Rasmussen & Williams
    (2006), eqs. 4.9 and 4.16--4.17.

    Parameters
    ----------
    x1 : torch.Tensor
        Shape ``(n1, d)``.
    x2 : torch.Tensor, optional
        Shape ``(n2, d)``; ``None`` means ``x1``.
    kind : str
    lengthscale : float
        :math:`\ell > 0`.
    variance : float
        :math:`v > 0`.

    Returns
    -------
    torch.Tensor
        Shape ``(n1, n2)``.
    """
    _checks.tensor(x1, "x1", ndim=2)
    if x2 is None:
        x2 = x1
    _checks.tensor(x2, "x2", ndim=2)
    _checks.matching(x2, x1, "x2", "x1")
    if x1.shape[1] != x2.shape[1]:
        raise ValueError(f"x1 and x2 must have the same number of columns, got {x1.shape[1]} "
                         f"and {x2.shape[1]}")
    _checks.string(kind, "kind")
    _checks.choice(kind, "kind", RADIAL)
    lengthscale = _checks.real(lengthscale, "lengthscale", positive=True)
    variance = _checks.real(variance, "variance", positive=True)
    _checks.elements(x1.shape[0] * x2.shape[0], "x1 and x2")
    r = torch.cdist(x1, x2) / lengthscale
    return _checks.finite_result(variance * RADIAL[kind](r), "the kernel", "variance or lengthscale")


def sample_network_outputs(x: torch.Tensor, *, n_nets: int, width: int, depth: int,
                           activation="relu", weight_std: float = 1.0, bias_std: float = 0.0,
                           seed: int = 0, chunk: int | None = None) -> torch.Tensor:
    r"""Outputs of ``n_nets`` independent random networks at the inputs ``x``.

    Each network has ``depth`` hidden layers of width ``width`` and a scalar
    readout, in the NTK parametrisation with the conventions of
    :func:`mflib.kernels.nngp`; so, as ``width`` grows, the covariance of the
    returned columns tends to ``nngp(x, depth=depth, ...)``.  The networks
    are drawn ``chunk`` at a time and evaluated with batched matrix products.

    Parameters
    ----------
    x : torch.Tensor
        Inputs, shape ``(n, d)``.
    n_nets : int
        Number of independent networks.
    width, depth : int
        Hidden width and number of hidden layers (``depth >= 1``).
    activation : str or callable
        As in :func:`mflib.nets.resolve_activation`.
    weight_std, bias_std : float
        :math:`\sigma_w > 0`, :math:`\sigma_b \ge 0`.
    seed : int
        Seed of the CPU generator the weights are drawn from.
    chunk : int, optional
        Networks per batch (default: as many as keep a batch of weights
        below about :math:`2^{22}` numbers).  The draws depend on ``seed``
        and ``chunk``: fix both to reproduce a result.

    Returns
    -------
    torch.Tensor
        Shape ``(n_nets, n)``, in the dtype and on the device of ``x``.
    """
    from mflib.nets import resolve_activation

    _checks.tensor(x, "x", ndim=2, nonempty=True)
    n_nets = _checks.size(n_nets, "n_nets")
    width = _checks.size(width, "width")
    depth = _checks.size(depth, "depth")
    weight_std = _checks.real(weight_std, "weight_std", positive=True)
    bias_std = _checks.real(bias_std, "bias_std", nonnegative=True)
    _, phi, _ = resolve_activation(activation)
    seed = _checks.seed(seed)
    n, d = x.shape
    per_net = d * width + (depth - 1) * width * width + width
    _checks.elements(n_nets * n, "n_nets and x")
    _checks.budget(2.0 * n_nets * per_net * (n + 1), "n_nets, width, depth and x")
    if chunk is None:
        chunk = max(1, min(n_nets, (1 << 22) // per_net))
    chunk = _checks.size(chunk, "chunk")
    _checks.elements(chunk * max(per_net, n * width), "chunk, width and depth")
    g = _generator(seed)
    out = []
    done = 0
    while done < n_nets:
        c = min(chunk, n_nets - done)
        h = x.expand(c, n, d)
        n_in = d
        for layer in range(depth + 1):
            n_out = 1 if layer == depth else width
            W = torch.randn(c, n_in, n_out, generator=g).to(x)
            z = torch.bmm(h, W) * (weight_std / math.sqrt(n_in))
            if bias_std > 0:
                z = z + bias_std * torch.randn(c, 1, n_out, generator=g).to(x)
            h = phi(z) if layer < depth else z
            n_in = n_out
        out.append(h[:, :, 0])
        done += c
    return _checks.finite_result(torch.cat(out), "the network outputs",
                                 "weight_std, bias_std, depth or the scale of x")


def excess_kurtosis(samples: torch.Tensor) -> torch.Tensor:
    r"""Excess kurtosis :math:`\E[(f-\bar f)^4]/\Var(f)^2 - 3` along the first axis (0 for a Gaussian)."""
    _checks.tensor(samples, "samples", ndim=(1, 2))
    if samples.shape[0] < 4:
        raise ValueError(f"samples must hold at least 4 draws, got {samples.shape[0]}")
    c = samples - samples.mean(0)
    var = (c ** 2).mean(0)
    if bool((var == 0).any()):
        raise ValueError("samples must not be constant (the kurtosis of a constant is undefined)")
    return _checks.finite_result((c ** 4).mean(0) / var ** 2 - 3, "the kurtosis",
                                 "samples (their scale)")


def kurtosis_estimate(samples: torch.Tensor, *, n_boot: int = 200, seed: int = 0):
    """Excess kurtosis of a one-dimensional sample with its bootstrap standard
    error (``n_boot`` resamples drawn from ``mflib.generator(seed)``), as a
    :class:`mflib.stats.Estimate` for a claim.  The bootstrap is used because the
    Gaussian formula :math:`\\sqrt{24/N}` underestimates the error of heavy-tailed samples."""
    from mflib import stats
    from mflib.config import generator

    _checks.tensor(samples, "samples", ndim=1)
    if samples.shape[0] < 2:
        raise ValueError(f"samples must hold at least 2 values, got {samples.shape[0]}")
    n_boot = _checks.size(n_boot, "n_boot", minimum=2)
    seed = _checks.seed(seed)
    _checks.elements(3 * n_boot * samples.shape[0], "n_boot and samples (its length)")
    s = samples.to(DTYPE).cpu()
    idx = torch.randint(0, s.shape[0], (n_boot, s.shape[0]), generator=generator(seed))
    names = "samples (its scale, or a constant sample)"
    value = _checks.finite_result(float(excess_kurtosis(s)), "the excess kurtosis", names)
    boots = excess_kurtosis(s[idx].T)
    se = _checks.finite_result(float(boots.std(unbiased=True)), "the bootstrap standard error",
                               "samples (its scale, or too few distinct values)")
    return stats.Estimate(value=value, se=se, n=s.shape[0])


def one_unit_ks(grid: int = 40001) -> float:
    r"""Exact Kolmogorov–Smirnov distance between the output of a one-unit relu
    network without bias, :math:`\xi = a\,\relu(z)` with independent centred
    Gaussians :math:`a, z`, and the Gaussian of the same variance.

    With probability :math:`1/2`, :math:`\relu(z) = 0`; otherwise :math:`\xi` has
    the law of a product of two standard Gaussians (up to scale), whose density is
    :math:`K_0(|u|)/\pi`.  So :math:`F(u) = \tfrac12\mathbf 1_{u \ge 0} + \tfrac12 F_\times(u)`
    against :math:`\Phi(\sqrt2\,u)` (the variance of :math:`\xi` is half that of the product);
    the supremum is computed on a grid of ``grid`` points of :math:`(0, 6]` (it is
    symmetric), with the integral of :math:`K_0` by the trapezoidal rule.
    The scale of :math:`a, z` drops out: the value is a constant, about 0.255.
    """
    from scipy import special

    # at most 10**7 points (a few hundred MB of float64 arrays): the value has converged long before
    grid = _checks.size(grid, "grid", minimum=100, maximum=10 ** 7)
    u = torch.linspace(1e-12, 6.0, grid, dtype=DTYPE)
    dens = torch.as_tensor(special.k0(u.numpy()), dtype=DTYPE) / math.pi
    cum = torch.cat([torch.zeros(1, dtype=DTYPE), torch.cumsum((dens[1:] + dens[:-1]) / 2 * torch.diff(u), 0)])
    F = 0.5 + 0.5 * (0.5 + cum)
    Phi = 0.5 * (1 + torch.erf(u))                # Phi(sqrt(2) u)
    return float((F - Phi).abs().max())


def ks_distance(samples: torch.Tensor, std: float) -> float:
    r"""Kolmogorov–Smirnov distance :math:`\sup_t |\hat F(t) - \Phi(t/s)|` to :math:`\mathcal N(0, s^2)`.

    Parameters
    ----------
    samples : torch.Tensor
        One-dimensional sample.
    std : float
        :math:`s > 0`.
    """
    _checks.tensor(samples, "samples", ndim=1)
    std = _checks.real(std, "std", positive=True)
    s, _ = torch.sort(samples.to(DTYPE).cpu())
    n = s.shape[0]
    if n < 1:
        raise ValueError("samples must not be empty")
    cdf = 0.5 * (1 + torch.erf(s / (std * math.sqrt(2))))
    i = torch.arange(1, n + 1, dtype=DTYPE)
    return float(torch.maximum(i / n - cdf, cdf - (i - 1) / n).max())
