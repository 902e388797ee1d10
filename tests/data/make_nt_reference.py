"""Regenerate ``nt_reference.npz``: analytic kernels computed by neural-tangents.

Run with the optional neural-tangents environment (see
``benchmarks/requirements-nt.txt``)::

    /tmp/ntvenv/bin/python tests/data/make_nt_reference.py

The file holds ``x1`` (6 points in d = 3: four random points, a point
parallel to the first and one antipodal to the second, to stress x = x' and
antipodal numerics), ``x2`` (4 random points), and for every activation in
(relu, erf), depth in (1, 2, 3) and bias_std in (0, 0.4), with W_std = 1.3,
the arrays ``{act}_L{depth}_b{bias}_{nngp|ntk}_{11|12}`` from
``stax.serial(Dense(1, W_std, b_std), [act, Dense(1, W_std, b_std)] * depth)``
in the NTK parameterisation, in float64.
"""

from __future__ import annotations

import pathlib

import jax
import numpy as np

jax.config.update("jax_enable_x64", True)

import neural_tangents as nt  # noqa: E402
from neural_tangents import stax  # noqa: E402

W_STD = 1.3
BIASES = (0.0, 0.4)
DEPTHS = (1, 2, 3)
ACTS = {"relu": stax.Relu, "erf": stax.Erf}


def points():
    rng = np.random.default_rng(20260101)
    x = rng.standard_normal((4, 3))
    x1 = np.concatenate([x, 2.0 * x[:1], -x[1:2]], axis=0)
    x2 = rng.standard_normal((4, 3))
    return x1, x2


def kernel_fn(act, depth, b_std):
    layers = [stax.Dense(1, W_std=W_STD, b_std=b_std, parameterization="ntk")]
    for _ in range(depth):
        layers += [ACTS[act](), stax.Dense(1, W_std=W_STD, b_std=b_std, parameterization="ntk")]
    return stax.serial(*layers)[2]


def main():
    x1, x2 = points()
    out = {"x1": x1, "x2": x2, "weight_std": np.array(W_STD),
           "nt_version": np.array(nt.__version__), "jax_version": np.array(jax.__version__)}
    for act in ACTS:
        for depth in DEPTHS:
            for b in BIASES:
                fn = kernel_fn(act, depth, b)
                for tag, args in (("11", (x1, None)), ("12", (x1, x2))):
                    k = fn(*args, ("nngp", "ntk"))
                    out[f"{act}_L{depth}_b{b}_nngp_{tag}"] = np.asarray(k.nngp, dtype=np.float64)
                    out[f"{act}_L{depth}_b{b}_ntk_{tag}"] = np.asarray(k.ntk, dtype=np.float64)
    path = pathlib.Path(__file__).with_name("nt_reference.npz")
    np.savez_compressed(path, **out)
    print(f"wrote {path} ({path.stat().st_size} bytes, {len(out)} arrays)")


if __name__ == "__main__":
    main()
