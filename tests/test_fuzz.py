"""Property-based fuzz test of the whole public API of :mod:`mflib`.

Every public function and class of every ``mflib`` module, and every public
method those classes define, is found by introspection; each must have an
entry in :data:`VALID` (a valid call), so that a new public name without one
fails :func:`test_every_public_name_has_a_valid_call` with its name.

For each entry:

* the valid call runs, returns only finite numbers, and a second call in the
  same process (with torch's global random state changed in between) gives
  bit-identical results (one randomness policy: ``generator=None`` is a fixed
  seed, never the global state);
* every argument is replaced, one at a time, by bad values chosen from the
  kind of its valid value (wrong type, wrong dtype, the other float dtype,
  wrong rank, empty, NaN, inf, entries scaled by 1e300, zero, negative and
  huge sizes, huge or tiny reals, non-bool flags, unknown names, missing
  devices); the call must raise ``ValueError`` or ``TypeError`` whose message
  names the argument, or -- for values that may be legitimate (a negative
  mean, a zero count, float32 alone) -- return finite results.  A leaked
  exception of another type, a non-finite result, a call that runs past
  :data:`TIMEOUT` seconds (a hang) and an invalid value accepted without a
  word all fail the test.  Plain result containers (:data:`CONTAINERS`) are
  only built;
* a hypothesis test draws further bad values at random (bounded examples,
  derandomised so that CI is reproducible);
* every training engine, run with a step far too large, raises
  ``mflib.Diverged`` or returns a result flagged as diverged whose record
  series are finite and of one length.

The counts (functions covered, calls, clear errors, leaks, silent non-finite
results, hangs, ...) are printed by the last test, stored in pytest's cache
under ``mflib/fuzz_summary`` when the cache is on, and written as JSON to the
file named by ``MFLIB_FUZZ_SUMMARY`` when it is set.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import json
import math
import os
import pkgutil
import re
import signal
import threading
from collections import Counter

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import mflib  # noqa: E402
from mflib import (arccos, backprop, claims, config, data, empirical, erm, gp, gplimit, kernels,  # noqa: E402
                   landscape, lazy, losses, meanfield, nets, plotting, propagation, stats,
                   threelayer as tl, two_timescale as tt, two_timescale_sgd as tts, universal)
from mflib._checks import Diverged  # noqa: E402
from mflib import activations  # noqa: E402
from mflib.dynamics import loop  # noqa: E402


class _Halve(loop.Engine):
    """A valid engine for the loop's fuzzing: x <- x / 2."""

    def _step(self, x, k):
        return x * 0.5

    def _observe(self, x, k):
        return {"norm": x.norm()}

    in_place = False

D = torch.float64
TIMEOUT = 30.0          # seconds: a call past this is counted as a hang

# Warm up what torch imports lazily on first use (torch.optim pulls in torch._dynamo,
# func transforms compile on first call): an import cut by the time limit would leave
# a half-initialised module behind and break every later call.
_w = torch.zeros(2, dtype=torch.float64, requires_grad=True)
_opt = torch.optim.SGD([_w], lr=0.1)
(_w ** 2).sum().backward()
_opt.step()
torch.func.jacrev(lambda t: (t ** 2).sum())(torch.ones(2))
torch.func.vmap(torch.sin)(torch.ones(2))
torch.func.jvp(torch.sin, (torch.ones(2),), (torch.ones(2),))
del _w, _opt
HYPOTHESIS_EXAMPLES = 250

# ----------------------------------------------------------------------------- small valid inputs


def g(seed=0):
    return mflib.generator(seed)


def randn(*shape, seed=0, dtype=D):
    return torch.randn(*shape, generator=g(seed), dtype=dtype)


X = randn(6, 3, seed=1)
Y = randn(6, seed=2)
T = tt.paper_target()


def _mlp():
    return nets.MLP(2, [4], generator=g(3))


def _params_tl(B=2, n1=3, n2=3, d=3):
    return tl.Params(randn(B, n1, d, seed=4), randn(B, n1, n2, seed=5), randn(B, n2, seed=6))


def _emb():
    return tl.iid_embedding(3, 4, generator=g(7))


def _sample():
    return _emb().sample(3, 3, batch=2, generator=g(8))


def _bp_params():
    return backprop.init_params([3, 4, 2], bias_std=0.1, seed=0)


def _bp_cache():
    return backprop.forward(_bp_params(), X)


def _tt_state(B=2, m=12):
    u = tt.init_positions(m, T, batch=B, generator=g(9))
    return randn(B, m + 1, seed=10), u


def _exp_p0(shift=0.0):
    p = lazy.pairs_init(4, 3, [0.5, 2.0], repeats=2, seed=0)
    return {"a": p["a"] + shift, "b": p["b"]}


def _exp_teacher():
    return lazy.relu_teachers(2, 3, m0=2, seed=1)


def _lazy_model():
    return lazy.as_function(_mlp())


def _spd(n, seed=0):
    a = randn(n, n, seed=seed)
    return a @ a.T / n + torch.eye(n, dtype=D)


def _render(**kw):
    fig, ax = plt.subplots(figsize=(1, 1))
    return fig


def _fig():
    fig, _ = plt.subplots(figsize=(1, 1))
    return fig


def _two():
    return tl.two_layer_init(4, 3, batch=2, generator=g(11))


def _theta():
    return meanfield.init_particles(8, 3, generator=g(12))


def _teacher():
    return meanfield.init_particles(2, 3, generator=g(13))


def _sphere_data():
    return lazy.teacher_student(8, 4, d=2, generator=g(14))


# ----------------------------------------------------------------------------- the table of valid calls
# name -> callable returning the keyword arguments of one valid call

VALID = {
    # activations
    "activations.Activation": lambda: dict(name="tanh", fn=torch.tanh, derivative=torch.tanh),
    "activations.Activation.__call__": lambda: dict(self=activations.get("tanh"), z=X),
    "activations.Activation.both": lambda: dict(self=activations.get("relu"), z=X),
    "activations.get": lambda: dict(activation="erf", name="activation", allowed=None),
    "activations.names": lambda: dict(),
    # dynamics.loop
    "dynamics.loop.Engine": lambda: dict(),
    "dynamics.loop.Trajectory": lambda: dict(state=X, steps=torch.tensor([0]), times=torch.tensor([0.0], dtype=D),
                                             values={}, states=None, diverged=False),
    "dynamics.loop.integrate": lambda: dict(engine=_Halve(), state=X, steps=4, record=[0, 2, 4],
                                            keep_states=True, on_diverge="flag", progress=False, aliases=None),
    "dynamics.loop.schedule": lambda: dict(steps=5, record=[0, 3], name="record"),
    "dynamics.loop.every": lambda: dict(steps=5, period=2, name="period"),
    # arccos
    "arccos.angle": lambda: dict(s12=torch.tensor([0.5, -0.2], dtype=D), s11=torch.tensor([1.0, 2.0], dtype=D),
                                 s22=torch.tensor([1.0, 0.5], dtype=D), eps=0.0),
    "arccos.kappa0": lambda: dict(theta=torch.tensor([0.0, 1.0, math.pi], dtype=D)),
    "arccos.kappa1": lambda: dict(theta=torch.tensor([0.0, 1.0, math.pi], dtype=D)),
    "arccos.relu_moments": lambda: dict(s12=torch.tensor([0.5], dtype=D), s11=torch.tensor([1.0], dtype=D),
                                        s22=torch.tensor([2.0], dtype=D)),
    # backprop
    "backprop.activation": lambda: dict(name="tanh"),
    "backprop.param_count": lambda: dict(widths=[3, 4, 1], bias=True),
    "backprop.init_params": lambda: dict(widths=[3, 4, 1], weight_var=2.0, bias_std=0.1, bias=True, seed=0,
                                         dtype=D, device="cpu"),
    "backprop.Cache": lambda: dict(ys=[X], xs=[X]),
    "backprop.forward": lambda: dict(params=_bp_params(), x=X, activation="relu", check=True),
    "backprop.backward": lambda: dict(params=_bp_params(), cache=_bp_cache(), grad_output=randn(6, 2, seed=3),
                                      activation="relu", check=True, return_deltas=False),
    "backprop.mse_gradients": lambda: dict(params=_bp_params(), x=X, y=randn(6, 2, seed=3), activation="relu"),
    "backprop.autograd_gradients": lambda: dict(params=_bp_params(), x=X, y=randn(6, 2, seed=3),
                                                activation="relu"),
    "backprop.relative_error": lambda: dict(grads_a=backprop.mse_gradients(_bp_params(), X, randn(6, 2))[1],
                                            grads_b=backprop.autograd_gradients(_bp_params(), X, randn(6, 2))[1]),
    "backprop.gradient_descent": lambda: dict(params=_bp_params(), x=X, y=randn(6, 2, seed=3), lr=0.1, steps=3,
                                              activation="tanh"),
    "backprop.Timing": lambda: dict(forward=1.0, backward=2.0, autograd_forward=1.0, autograd_backward=2.0),
    "backprop.time_forward_backward": lambda: dict(widths=[3, 4, 2], batch=4, repeats=3, activation="relu",
                                                   dtype=torch.float32, seed=0, threads=1),
    # config
    "config.device": lambda: dict(),
    "config.quick": lambda: dict(),
    "config.sizes": lambda: dict(full=10, quick_value=2),
    "config.seed_everything": lambda: dict(seed=0),
    "config.generator": lambda: dict(seed=0),
    # data
    "data.Dataset": lambda: dict(x=X, y=Y, truth=None, noise=0.0),
    "data.linear_regression": lambda: dict(n=5, d=2, noise=0.5, w_star=torch.tensor([1.0, 0.0], dtype=D),
                                           generator=g(), dtype=D, device="cpu"),
    "data.linear_population_risk": lambda: dict(w=randn(3), w_star=randn(3, seed=1), noise=0.5),
    "data.gaussian_mixture": lambda: dict(n=5, d=2, separation=2.0, generator=g(), dtype=D, device="cpu"),
    "data.nonlinear_1d": lambda: dict(n=5, target="sine", noise=0.1, generator=g(), dtype=D, device="cpu"),
    # empirical
    "empirical.jacobian": lambda: dict(model=_mlp(), x=randn(3, 2), chunk_size=2),
    "empirical.empirical_ntk": lambda: dict(model=_mlp(), x1=randn(3, 2), x2=randn(2, 2, seed=1), chunk_size=2),
    "empirical.empirical_nngp": lambda: dict(factory=functools.partial(nets.MLP, 2, [3]), x1=randn(3, 2),
                                             x2=randn(2, 2, seed=1), n_models=3, generator=g()),
    "empirical.feature_nngp": lambda: dict(model=_mlp(), x1=randn(3, 2), x2=randn(2, 2, seed=1)),
    # erm
    "erm.predict": lambda: dict(w=randn(3), x=X),
    "erm.objective": lambda: dict(w=randn(3), x=X, y=Y, loss="square", lam=0.1),
    "erm.ridge": lambda: dict(x=X, y=Y, lam=0.1),
    "erm.smoothness": lambda: dict(x=X, loss="square", lam=0.1),
    "erm.Run": lambda: dict(w=randn(3), steps=torch.arange(2), grad_evals=torch.arange(2), objective=randn(2),
                            iterates=randn(2, 3), diverged=False),
    "erm.sgd": lambda: dict(x=X, y=Y, loss="square", lam=0.0, lr=0.1, steps=4, batch_size=2, decay=10.0,
                            power=1.0, w0=torch.zeros(3, dtype=D), generator=g(), record_every=2),
    # gp
    "gp.sample_gp": lambda: dict(K=torch.eye(3, dtype=D), n_samples=2, mean=torch.zeros(3, dtype=D), generator=g()),
    "gp.GPPosterior": lambda: dict(mean=Y, cov=None),
    "gp.gp_regression": lambda: dict(K_train=torch.eye(3, dtype=D) * 2, K_test_train=torch.ones(2, 3, dtype=D),
                                     y_train=randn(3), K_test=torch.eye(2, dtype=D) * 3, noise=0.1, rcond=1e-12),
    "gp.Flow": lambda: dict(t=randn(2), train=randn(2, 3), test=None),
    "gp.gradient_flow": lambda: dict(K_train=torch.eye(3, dtype=D), y_train=randn(3), t=torch.tensor([0.0, 1.0], dtype=D),
                                     h0_train=torch.zeros(3, dtype=D), K_test_train=torch.ones(2, 3, dtype=D),
                                     h0_test=torch.zeros(2, dtype=D), lr=1.0),
    "gp.Linearized": lambda: dict(model=_mlp()),
    # gplimit
    "gplimit.radial_kernel": lambda: dict(x1=X, x2=X[:2], kind="se", lengthscale=1.0, variance=1.0),
    "gplimit.sample_network_outputs": lambda: dict(x=randn(3, 2), n_nets=5, width=4, depth=2, activation="relu",
                                                   weight_std=1.0, bias_std=0.1, seed=0, chunk=2),
    "gplimit.excess_kurtosis": lambda: dict(samples=randn(20, 2)),
    "gplimit.ks_distance": lambda: dict(samples=randn(20), std=1.0),
    # kernels
    "kernels.Kernels": lambda: dict(nngp=torch.eye(2, dtype=D), ntk=torch.eye(2, dtype=D)),
    "kernels.nngp_ntk": lambda: dict(x1=X, x2=X[:2], depth=2, activation="relu", weight_std=1.0, bias_std=0.1,
                                     quad_points=8),
    "kernels.nngp": lambda: dict(x1=X, x2=X[:2], depth=2, activation="tanh", weight_std=1.0, bias_std=0.1,
                                 quad_points=8),
    "kernels.ntk": lambda: dict(x1=X, x2=X[:2], depth=2, activation="erf", weight_std=1.0, bias_std=0.1,
                                quad_points=8),
    # landscape
    "landscape.two_layer": lambda: dict(a=randn(2), B=randn(2, 3), x=X, activation=torch.tanh),
    "landscape.risk": lambda: dict(a=randn(2), B=randn(2, 3), x=X, y=Y, activation=torch.tanh),
    "landscape.slice_risk": lambda: dict(a=randn(2), B=randn(2, 3), x=X, y=Y, alphas=torch.linspace(-1, 1, 3, dtype=D),
                                         betas=torch.linspace(-1, 1, 2, dtype=D), activation=torch.tanh),
    "landscape.slice_function": lambda: dict(a=randn(2), B=randn(2, 3), x=X, y=Y, activation=torch.tanh),
    "landscape.hessian": lambda: dict(a=randn(2), B=randn(2, 3), x=X, y=Y, activation=torch.tanh),
    "landscape.saddle_curvature": lambda: dict(x=X, y=Y, slope=1.0),
    "landscape.gradient_descent": lambda: dict(a0=randn(2), B0=randn(2, 3), x=X, y=Y, lr=0.1, steps=3,
                                               activation=torch.tanh, record_every=1, on_diverge="flag"),
    # lazy
    "lazy.TeacherStudent": lambda: dict(x_train=X, y_train=Y, x_test=X, y_test=Y, teacher_a=X, teacher_b=Y),
    "lazy.sphere": lambda: dict(n=4, d=3, generator=g(), seed=None, dtype=D, device="cpu"),
    "lazy.two_layer": lambda: dict(params=lazy.two_layer_init(4, 3, seed=0), x=X, scale=1.0, activation="tanh"),
    "lazy.teacher_student": lambda: dict(n_train=5, n_test=2, d=2, n_teacher=2, generator=g(), seed=None, dtype=D,
                                         device="cpu"),
    "lazy.two_layer_init": lambda: dict(m=4, d=3, tau=1.0, symmetric=True, generator=None, seed=1, dtype=D,
                                        device="cpu"),
    "lazy.TwoLayer": lambda: dict(m=4, d=3, tau=1.0, symmetric=True, scale=1.0, activation="relu", seed=0,
                                  dtype=D, device="cpu"),
    "lazy.as_function": lambda: dict(module=_mlp()),
    "lazy.centred": lambda: dict(fn=_lazy_model()[0], params0=_lazy_model()[1]),
    "lazy.TrainResult": lambda: dict(params={"a": X}),
    "lazy.train": lambda: dict(fn=_lazy_model()[0], params0=_lazy_model()[1], x=randn(5, 2), y=randn(5, seed=1),
                               alpha=2.0, lr=0.1, steps=3, x_test=randn(3, 2, seed=2), y_test=randn(3, seed=3),
                               record_every=1, keep_params=False, batch_size=2, generator=g(), momentum=0.0),
    "lazy.displacement": lambda: dict(params={"a": X + 1}, params0={"a": X}, relative=True),
    "lazy.rms": lambda: dict(v=Y),
    "lazy.jacobian_norm": lambda: dict(fn=_lazy_model()[0], params=_lazy_model()[1], x=randn(4, 2), iters=3,
                                       generator=g(), seed=None),
    "lazy.hessian_norm": lambda: dict(fn=_lazy_model()[0], params=_lazy_model()[1], x=randn(4, 2), iters=2,
                                      rounds=1, restarts=1, generator=None, seed=3),
    "lazy.Kappa": lambda: dict(kappa=1.0, residual=1.0, jacobian=1.0, hessian=1.0),
    "lazy.relative_scale": lambda: dict(fn=_lazy_model()[0], params=_lazy_model()[1], x=randn(4, 2),
                                        y=randn(4, seed=1), iters=2, rounds=1, restarts=1, generator=g(), seed=None),
    "lazy.Digits": lambda: dict(x_train=X, y_train=X, labels_train=Y, x_test=X, y_test=X, labels_test=Y),
    "lazy.digits": lambda: dict(n_train=5, n_test=3, seed=0, dtype=torch.float32, device="cpu", centre="pixel"),
    "lazy.small_cnn": lambda: dict(channels=2, seed=0, dtype=torch.float32, device="cpu"),
    "lazy.conv_net": lambda: dict(channels=2, hidden=3, seed=0, dtype=torch.float32, device="cpu"),
    "lazy.SelectOutput": lambda: dict(net=lazy.small_cnn(2), index=1, shape=(1, 8, 8)),
    "lazy.accuracy": lambda: dict(out=randn(4, 3), labels=torch.tensor([0, 1, 2, 0])),
    "lazy.BatchRun": lambda: dict(a=randn(1, 1, 2, 3), b=randn(1, 1, 2)),
    "lazy.pairs_init": lambda: dict(m=4, d=3, taus=[0.5, 2.0], repeats=2, generator=None, seed=0, dtype=D,
                                    device="cpu"),
    "lazy.relu_teachers": lambda: dict(repeats=2, d=3, m0=2, generator=None, seed=1, dtype=D, device="cpu"),
    "lazy.relu_outputs": lambda: dict(params=_exp_p0(), x=randn(2, 5, 3), tangent_at=_exp_p0(0.1)),
    "lazy.relu_gd": lambda: dict(params0=_exp_p0(), x=randn(2, 5, 3), y=randn(2, 5, seed=1), lr=0.1, steps=3,
                                 x_test=randn(2, 4, 3, seed=2), y_test=randn(2, 4, seed=3), record_every=1,
                                 linearised=False),
    "lazy.relu_online_sgd": lambda: dict(params0=_exp_p0(), teacher=_exp_teacher(), lr=0.1, steps=3, batch=4,
                                         average=2, record_every=1, linearised=True, generator=None, seed=0),
    "lazy.sphere_gated_inner": lambda: dict(gates1=randn(2, 3, 3), vectors1=randn(2, 3, 3, seed=1),
                                            gates2=randn(2, 2, 3, seed=2), vectors2=randn(2, 2, 3, seed=3)),
    "lazy.sphere_relu_loss": lambda: dict(params=_exp_p0(), teacher=_exp_teacher(), tangent_at=_exp_p0(0.1)),
    "lazy.TangentFit": lambda: dict(gates=X, vectors=X, loss=Y, signal=Y),
    "lazy.sphere_tangent_fit": lambda: dict(gates=randn(2, 3, 3), teacher=_exp_teacher()),
    "lazy.relu_tangent_kernel": lambda: dict(params=_exp_p0(), x1=randn(2, 5, 3), x2=randn(2, 4, 3, seed=1)),
    # losses
    "losses.square": lambda: dict(y=Y, y_hat=Y * 0.5),
    "losses.square_derivative": lambda: dict(y=Y, y_hat=Y * 0.5),
    "losses.logistic": lambda: dict(y=Y.sign(), y_hat=Y * 0.5),
    "losses.logistic_derivative": lambda: dict(y=Y.sign(), y_hat=Y * 0.5),
    "losses.hinge": lambda: dict(y=Y.sign(), y_hat=Y * 0.5),
    "losses.hinge_derivative": lambda: dict(y=Y.sign(), y_hat=Y * 0.5),
    "losses.Loss": lambda: dict(name="square", task="regression", value=losses.square,
                                derivative=losses.square_derivative, smooth=True, curvature=1.0),
    "losses.get": lambda: dict(loss="logistic"),
    "losses.empirical_risk": lambda: dict(loss="square", y=Y, y_hat=Y * 0.5),
    # meanfield
    "meanfield.init_particles": lambda: dict(m=4, d=2, bias=False, init="gaussian", radius=1.0,
                                             out_weight="gaussian", generator=g(), dtype=D, device="cpu"),
    "meanfield.forward": lambda: dict(theta=_theta(), x=X, activation="relu", scaling="mf"),
    "meanfield.grad": lambda: dict(theta=_theta(), x=X, y=Y, activation="relu", scaling="lazy"),
    "meanfield.empirical_risk": lambda: dict(theta=_theta(), x=X, y=Y, activation="sigmoid", scaling="mf"),
    "meanfield.population_risk": lambda: dict(theta=_theta(), teacher=_teacher(), scaling="mf", chunk=4),
    "meanfield.population_grad": lambda: dict(theta=_theta(), teacher=_teacher(), scaling=0.75),
    "meanfield.gaussian_teacher_data": lambda: dict(teacher=_teacher(), n=5, activation="relu", bias=False,
                                                    noise=0.1, generator=g()),
    "meanfield.Trajectory": lambda: dict(theta=X, steps=torch.arange(2), times=randn(2), thetas=None, risk=randn(2),
                                         diverged=False),
    "meanfield.train": lambda: dict(theta=_theta(), steps=4, lr=0.1, method="sgd", x=X, y=Y, teacher=None,
                                    activation="relu", teacher_activation=None, scaling="mf", batch=2, bias=False,
                                    reg="l2", lam=0.01, temperature=0.01, record=[0, 2, 4], keep_thetas=True,
                                    on_diverge="flag", generator=g()),
    "meanfield.relative_scale": lambda: dict(theta=_theta(), x=X, y=Y, scaling="mf"),
    "meanfield.rms_displacement": lambda: dict(theta0=_theta(), theta1=_theta() + 0.1),
    "meanfield.relu_kernel": lambda: dict(x1=X, x2=X[:2], kind="ntk"),
    # nets
    "nets.resolve_activation": lambda: dict(activation="erf", name="activation"),
    "nets.MLP": lambda: dict(d_in=2, widths=[3], activation="relu", weight_std=1.0, bias_std=0.1,
                             parametrization="ntk", alpha=1.0, generator=g(), dtype=D, device="cpu"),
    # plotting
    "plotting.use_style": lambda: dict(),
    "plotting.figure": lambda: dict(ncols=1, nrows=1, width=2.0, height=1.0),
    "plotting.quiet": lambda: dict(),
    "plotting.progress": lambda: dict(iterable=[1, 2]),
    "plotting.fig_to_png": lambda: dict(fig=_fig(), close=True),
    "plotting.static_explorer": lambda: dict(render=_render, axes={"k": [1, 2]}, title="t", fmt=str),
    "plotting.live_explorer": lambda: dict(render=_render, axes={"k": [1, 2]}),
    "plotting.animation_html": lambda: dict(fig=_fig(), update=lambda i: None, frames=2, interval=100),
    # propagation
    "propagation.gauss_expect": lambda: dict(f=torch.tanh, q=torch.tensor([0.5, 1.0], dtype=D)),
    "propagation.variance_map": lambda: dict(q=1.0, activation="tanh", weight_var=2.0, bias_var=0.1),
    "propagation.chi": lambda: dict(q=1.0, activation="tanh", weight_var=2.0),
    "propagation.variance_recursion": lambda: dict(q1=1.0, depth=3, activation="erf", weight_var=2.0, bias_var=0.1),
    "propagation.gradient_recursion": lambda: dict(q=torch.tensor([1.0, 1.0], dtype=D), activation="tanh",
                                                   weight_var=2.0),
    "propagation.Propagation": lambda: dict(forward=X, backward=X, predicted_forward=Y, predicted_backward=Y),
    "propagation.measure_propagation": lambda: dict(depth=2, width=4, activation="relu", weight_var=2.0,
                                                    bias_var=0.1, n_nets=2, n_inputs=2, input_dim=3, seed=0),
    # stats
    "stats.fit_slope": lambda: dict(x=[1.0, 2.0, 4.0], y=[1.0, 4.0, 16.5]),
    "stats.slope_fit": lambda: dict(x=[1.0, 2.0, 4.0], y=[1.0, 4.0, 16.5]),
    "stats.slope_over_repeats": lambda: dict(x=[1.0, 2.0, 4.0], y=[[1.0, 4.0, 16.5], [1.0, 4.2, 15.5]]),
    "stats.estimate": lambda: dict(samples=[1.0, 2.0, 3.5]),
    "stats.SlopeFit": lambda: dict(value=-1.0, se=0.1, intercept=0.0, n=4),
    "stats.Estimate": lambda: dict(value=1.0, se=0.1, n=4),
    "stats.relaxation_fit": lambda: dict(times=[float(k) for k in range(20)],
                                         curves=(1.0 - torch.exp(-0.3 * torch.arange(20, dtype=D))
                                                 * torch.tensor([[1.0], [1.1], [0.9]], dtype=D)
                                                 + 1e-3 * randn(3, 20)).tolist(),
                                         t_min=1.0, tail=0.3, threshold=3.0),
    "stats.RelaxationFit": lambda: dict(rate=stats.SlopeFit(value=-0.1, se=0.01, intercept=0.0, n=8),
                                        halves=stats.Estimate(value=0.0, se=0.01, n=3),
                                        stationary=stats.Estimate(value=1.0, se=0.01, n=3),
                                        window=(1.0, 8.0), noise=0.01),
    # claims
    "claims.claim": lambda: dict(key="k", value=0.52, what="w", tolerance="t", source="s", predicted=0.5,
                                 atol=0.05),
    "claims.parameter": lambda: dict(key="m", value=20, what="width"),
    "claims.ledger": lambda: dict(),
    "claims.clear": lambda: dict(),
    "claims.ClaimFailed": lambda: dict(),
    "claims.Claim": lambda: dict(key="k", value=0.5, predicted=0.5, lower=0.4, upper=0.6, se=None, what="w",
                                 tolerance="t", source="s", passed=True),
    "claims.Claim.prediction_text": lambda: dict(self=claims.Claim("k", 0.5, 0.5, 0.4, 0.6, None, "w", "t", "s",
                                                                   True)),
    "claims.Claim.to_json": lambda: dict(self=claims.Claim("k", 0.5, 0.5, 0.4, 0.6, None, "w", "t", "s", True)),
    # threelayer
    "threelayer.Params": lambda: dict(w1=randn(1, 2, 3), w2=randn(1, 2, 2), w3=randn(1, 2)),
    "threelayer.Sample": lambda: dict(params=_params_tl(), c1=torch.zeros(2, 3, dtype=torch.long),
                                      c2=torch.zeros(2, 3, dtype=torch.long)),
    "threelayer.Embedding": lambda: dict(w1=randn(3, 2), w2=randn(3, 4), w3=randn(4)),
    "threelayer.iid_embedding": lambda: dict(d=3, size=(3, 4), w1_mean=0.5, w1_std=1.0, w2_range=(0.0, 1.0),
                                             w3_range=(0.0, 1.0), generator=g(), dtype=D, device="cpu"),
    "threelayer.correlated_embedding": lambda: dict(d=3, size=4, w1_mean=0.0, w1_std=1.0, w3_range=(0.0, 1.0),
                                                    generator=g(), dtype=D, device="cpu"),
    "threelayer.with_bias": lambda: dict(x=X),
    "threelayer.teacher_data": lambda: dict(m=6, d=3, generator=g(), symmetric=True, teacher_seed=1, dtype=D,
                                            device="cpu"),
    "threelayer.Forward": lambda: dict(pre1=X, f1=X, H2=X, f2=X, H3=Y, yhat=Y),
    "threelayer.forward": lambda: dict(params=_params_tl(), x=X, phi=("tanh", "tanh", "identity")),
    "threelayer.output": lambda: dict(params=_params_tl(), x=X, phi=("tanh", "sigmoid", "identity")),
    "threelayer.loss": lambda: dict(params=_params_tl(), x=X, y=Y, phi=("tanh", "tanh", "identity")),
    "threelayer.gradients": lambda: dict(params=_params_tl(), x=X, y=Y, phi=("tanh", "tanh", "identity")),
    "threelayer.autograd_gradients": lambda: dict(params=_params_tl(), x=X, y=Y, phi=("tanh", "tanh", "identity")),
    "threelayer.Run": lambda: dict(params=_params_tl(), times=randn(2), loss=randn(2, 2)),
    "threelayer.train": lambda: dict(params=_params_tl(), x=X, y=Y, lr=0.1, steps=4, xi=(1.0, 1.0, 1.0),
                                     batch_size=3, generator=g(), record_every=2, phi=("tanh", "tanh", "identity"),
                                     on_diverge="flag", snapshots=(0, 2)),
    "threelayer.distance": lambda: dict(params=_sample().params, reference=_emb().ensemble(), c1=_sample().c1,
                                        c2=_sample().c2),
    "threelayer.CoupledRun": lambda: dict(times=randn(2), ref_loss=randn(2), ref_out=randn(2, 3)),
    "threelayer.coupled_training": lambda: dict(embedding=_emb(), x=X, y=Y, widths=[2, 3], seeds=2, lr=0.1,
                                                steps=3, record_every=1, x_eval=X[:2], generator=g(),
                                                xi=(1.0, 1.0, 1.0), phi=("tanh", "tanh", "identity")),
    "threelayer.h2_spread": lambda: dict(params=_params_tl(), x=X, phi=("tanh", "tanh", "identity")),
    "threelayer.first_layer_features": lambda: dict(w1=randn(4, 3), x=X, phi1="tanh"),
    "threelayer.second_layer_features": lambda: dict(params=_params_tl(), x=X, phi=("tanh", "tanh", "identity")),
    "threelayer.lstsq_fit_error": lambda: dict(features_fit=randn(8, 3), target_fit=randn(8, seed=1),
                                               features_test=randn(5, 3, seed=2), target_test=randn(5, seed=3),
                                               ridge=1e-6),
    "threelayer.TwoLayerParams": lambda: dict(w=randn(1, 2, 3), a=randn(1, 2)),
    "threelayer.two_layer_init": lambda: dict(n=4, d=3, batch=2, w_mean=0.5, w_std=1.0, a_range=(0.0, 1.0),
                                              generator=g(), dtype=D, device="cpu"),
    "threelayer.two_layer_output": lambda: dict(params=_two(), x=X),
    "threelayer.two_layer_gradients": lambda: dict(params=_two(), x=X, y=Y),
    "threelayer.train_two_layer": lambda: dict(params=_two(), x=X, y=Y, lr=0.1, steps=3, record_every=1),
    # two_timescale
    "two_timescale.StepTarget": lambda: dict(jumps=torch.tensor([0.5], dtype=D), values=torch.tensor([0.0, 1.0], dtype=D)),
    "two_timescale.paper_target": lambda: dict(dtype=D),
    "two_timescale.smooth_step": lambda: dict(z=torch.linspace(-1, 1, 5, dtype=D)),
    "two_timescale.smooth_step_grad": lambda: dict(z=torch.linspace(-1, 1, 5, dtype=D)),
    "two_timescale.network": lambda: dict(x=torch.linspace(0, 1, 5, dtype=D), a=_tt_state()[0], u=_tt_state()[1],
                                          eta=0.05),
    "two_timescale.population_loss_grad": lambda: dict(a=_tt_state()[0], u=_tt_state()[1], target=T, eta=0.05,
                                                       grad=True),
    "two_timescale.optimal_outer": lambda: dict(u=_tt_state()[1], target=T, eta=0.05),
    "two_timescale.step_floor": lambda: dict(target=T, eta=0.05),
    "two_timescale.excess_risk": lambda: dict(a=_tt_state()[0], u=_tt_state()[1], target=T, eta=0.05),
    "two_timescale.gram_min_eig": lambda: dict(u=_tt_state()[1], target=T, eta=0.05),
    "two_timescale.reduced_risk": lambda: dict(u=_tt_state()[1], target=T, eta=0.05),
    "two_timescale.init_positions": lambda: dict(m=12, target=T, batch=2, generator=g(), min_per_piece=1, dtype=D,
                                                 max_tries=1000),
    "two_timescale.jump_distance": lambda: dict(u=_tt_state()[1], target=T),
    "two_timescale.TrainResult": lambda: dict(tau=randn(2), u=randn(1, 2, 3), a=randn(1, 4), loss=randn(1, 2), steps=1,
                                              diverged=torch.zeros(1, dtype=torch.bool)),
    "two_timescale.train_population": lambda: dict(a0=_tt_state()[0], u0=_tt_state()[1], target=T, eta=0.05,
                                                   eps=0.5, tau_max=0.002, n_records=3, max_disp=0.25,
                                                   max_steps=10_000),
    "two_timescale.train_limit": lambda: dict(u0=_tt_state()[1], target=T, eta=0.05, tau_max=0.002, n_records=3,
                                              max_disp=0.25, max_steps=10_000),
    "two_timescale.heaviside_limit": lambda: dict(u0=_tt_state()[1], target=T, tau_max=0.1, n_steps=10,
                                                  n_records=3),
    "two_timescale.train_sgd": lambda: dict(a0=_tt_state()[0], u0=_tt_state()[1], target=T, eta=0.05, eps=0.5,
                                            h=0.01, n_steps=5, generator=g(), batch_size=2, noise=1.0, n_records=3),
    "two_timescale.FixedSampleResult": lambda: dict(a=randn(1, 2, 3), u=randn(1, 2, 3), rmse=randn(1),
                                                    history=randn(1, 2)),
    "two_timescale.additive_step_problem": lambda: dict(d=2, n=5, generator=g(), thresholds=(0.3, 0.5),
                                                        dtype=torch.float32),
    "two_timescale.relu_teacher_problem": lambda: dict(n=5, generator=g(), kinks=(0.3, 0.5), weights=(1.0, -2.0),
                                                       dtype=torch.float32),
    "two_timescale.train_fixed_sample": lambda: dict(X=tt.additive_step_problem(2, 8, generator=g())[0],
                                                     y=tt.additive_step_problem(2, 8, generator=g())[1], units=2,
                                                     activation="step", lr_a=0.1, lr_u=0.01, epochs=3, runs=2,
                                                     generator=g(), eta=0.05, engine="auto", threads=1),
    # methods
    "losses.Loss.__call__": lambda: dict(self=losses.LOSSES["square"], y=Y, y_hat=Y * 0.5),
    "gp.Linearized.delta": lambda: dict(self=gp.Linearized(_mlp())),
    "gp.Linearized.forward": lambda: dict(self=gp.Linearized(_mlp()), x=randn(3, 2)),
    "lazy.TwoLayer.forward": lambda: dict(self=lazy.TwoLayer(4, 3), x=X),
    "lazy.SelectOutput.forward": lambda: dict(self=lazy.SelectOutput(lazy.small_cnn(2), 3),
                                              x=randn(3, 64, dtype=torch.float32)),
    "nets.MLP.features": lambda: dict(self=_mlp(), x=randn(3, 2)),
    "nets.MLP.forward": lambda: dict(self=_mlp(), x=randn(3, 2)),
    "nets.MLP.extra_repr": lambda: dict(self=_mlp()),
    "threelayer.Params.clone": lambda: dict(self=_params_tl()),
    "threelayer.Embedding.ensemble": lambda: dict(self=_emb()),
    "threelayer.Embedding.sample": lambda: dict(self=_emb(), n1=3, n2=2, batch=2, generator=g()),
    "two_timescale.StepTarget.__call__": lambda: dict(self=T, x=torch.linspace(0, 1, 5, dtype=D)),
    "two_timescale.StepTarget.primitive": lambda: dict(self=T, x=torch.linspace(0, 1, 5, dtype=D), power=2),
    "plotting.InteractiveHTML": lambda: dict(html="<p>frame</p>", png=None),
    "erm.sgd_floor": lambda: dict(x=X, y=Y, lam=0.1, lr=0.05),
    "erm.sgd_moments": lambda: dict(x=X, y=Y, lam=0.1, lr=0.05, steps=6, w0=randn(3), record_every=2),
    "erm.SGDMoments": lambda: dict(steps=None, gap=None, rel_sd=None),
    "gp.ntk_gp": lambda: dict(ntk_train=_spd(4), ntk_test_train=randn(2, 4), nngp_train=_spd(4, seed=1),
                              nngp_test_train=randn(2, 4, seed=2), nngp_test=_spd(2, seed=3), y_train=randn(4)),
    "gplimit.kurtosis_estimate": lambda: dict(samples=randn(50), n_boot=20, seed=0),
    "gplimit.one_unit_ks": lambda: dict(grid=401),
    # samples is documented array-like (a list, as for stats.estimate; Lecture 1 and
    # tests/test_stats.py pass lists): numbers of any real dtype are legitimate samples
    "stats.batch_means": lambda: dict(samples=randn(40).tolist(), n_batches=4),
    "universal.best_polynomial": lambda: dict(x_train=torch.linspace(-1, 1, 8, dtype=D),
                                              y_train=torch.linspace(-1, 1, 8, dtype=D) ** 3,
                                              x_test=torch.linspace(-1, 1, 5, dtype=D), degree=2),
    "meanfield.sgd_stream_distance": lambda: dict(theta=_theta(), teacher=_teacher(), x_eval=randn(5, 3),
                                                  lr=0.1, time=0.5, batch=4, seeds=(0, 1), records=3,
                                                  activation="relu"),
    "meanfield.linearised_displacement": lambda: dict(theta=_theta(), x=randn(5, 3), y=randn(5, seed=1),
                                                      scaling="lazy", activation="relu"),
    "meanfield.cap_particles": lambda: dict(m=6, d=3, radius=1.0, generator=g(), dtype=D, device="cpu"),
    "threelayer.stack_ensembles": lambda: dict(embeddings=[_emb(), tl.iid_embedding(3, 4, generator=g(8))]),
    "threelayer.pairwise_sup_gap": lambda: dict(curves=randn(3, 4)),
    "threelayer.rank_one_fraction": lambda: dict(m=randn(3, 4)),
    "threelayer.w2_speed_esssup": lambda: dict(params=_emb().ensemble(), x=randn(5, 3), y=randn(5, seed=1),
                                               xi2=1.0),
    "threelayer.sgd_noise_distance": lambda: dict(params=_emb().ensemble(), x=randn(6, 3), y=randn(6, seed=1),
                                                  lr=0.1, time=0.3, batch_size=2, generator=g(), records=2),
    # two_timescale_sgd
    "two_timescale_sgd.sgd": lambda: dict(a0=_tt_state()[0], u0=_tt_state()[1], target=T, eta=0.05, eps=0.1,
                                          h=0.01, n_steps=40, seed=0, n_records=3, noise=1.0, threads=1),
    "two_timescale_sgd.sample_stream": lambda: dict(seed=0, stream=1, n_steps=10),
    "two_timescale_sgd.stream_state": lambda: dict(seed=0, stream=1),
    "two_timescale_sgd.SGDResult": lambda: dict(steps=None, tau=None, u=None, a=None, loss=None, diverged=None,
                                                diverged_step=None, n_valid=None),
    # universal
    "universal.Fit": lambda: dict(train_rmse=1.0, test_rmse=1.0, prediction=Y),
    "universal.random_features_fit": lambda: dict(x_train=torch.linspace(-1, 1, 8, dtype=D),
                                                  y_train=torch.linspace(-1, 1, 8, dtype=D) ** 2,
                                                  x_test=torch.linspace(-1, 1, 5, dtype=D),
                                                  y_test=torch.linspace(-1, 1, 5, dtype=D) ** 2,
                                                  width=4, activation="relu", weight_std=4.0, seed=0),
    "universal.best_polynomial_error": lambda: dict(x=torch.linspace(-1, 1, 8, dtype=D),
                                                    y=torch.linspace(-1, 1, 8, dtype=D) ** 3, degree=2),
}

#: Plain result containers (dataclasses and named tuples that only hold what a
#: function computed, with no validation of their own): their valid call is made,
#: bad arguments are not tried.  Containers that do validate (``Embedding``,
#: ``StepTarget``) are fuzzed like functions.
CONTAINERS = {
    "activations.Activation", "dynamics.loop.Engine", "dynamics.loop.Trajectory",
    "backprop.Cache", "backprop.Timing", "data.Dataset", "erm.Run", "gp.GPPosterior", "gp.Flow",
    "kernels.Kernels", "lazy.TeacherStudent", "lazy.TrainResult", "lazy.Kappa",
    "lazy.Digits", "lazy.BatchRun", "lazy.TangentFit", "losses.Loss", "meanfield.Trajectory", "propagation.Propagation", "threelayer.Params",
    "threelayer.Sample", "threelayer.Forward", "threelayer.Run", "threelayer.CoupledRun",
    "threelayer.TwoLayerParams", "two_timescale.TrainResult", "two_timescale.FixedSampleResult",
    "universal.Fit", "erm.SGDMoments", "two_timescale_sgd.SGDResult", "plotting.InteractiveHTML", "stats.SlopeFit", "stats.Estimate", "stats.RelaxationFit", "claims.Claim", "claims.ClaimFailed",
}

#: Calls whose results legitimately differ between two calls (timings).
NONDETERMINISTIC = {"backprop.time_forward_backward"}

#: Values that are legitimately accepted although they look bad, by (entry, argument).
ACCEPTED = {
    ("config.sizes", "full"): "any", ("config.sizes", "quick_value"): "any",
    ("plotting.progress", "iterable"): "any",
    ("nets.resolve_activation", "name"): "any",
    ("erm.objective", "loss"): "names",          # a Loss object or a name
    ("losses.get", "loss"): "names",
    ("activations.get", "activation"): "names",  # a name, an Activation, or any callable
    ("dynamics.loop.integrate", "state"): "any",  # any tensor or container of tensors
    ("dynamics.loop.integrate", "aliases"): "any",
    ("lazy.train", "record_every"): "none", ("erm.sgd", "batch_size"): "none",
    ("erm.sgd", "decay"): "none", ("threelayer.train", "batch_size"): "none",
    ("lazy.train", "batch_size"): "none",
    ("claims.parameter", "value"): "any",
    ("two_timescale_sgd.sgd", "a0"): "any",      # documented: array-like or tensor
    ("two_timescale_sgd.sgd", "u0"): "any",        # a parameter may be any finite number or a string
}


# ----------------------------------------------------------------------------- discovery


def public_names():
    """Every public function and class defined in an ``mflib`` module."""
    out = {}
    for info in pkgutil.walk_packages(mflib.__path__, prefix="mflib."):
        rel = info.name[len("mflib."):]
        if any(part.startswith("_") for part in rel.split(".")) or info.ispkg:
            continue
        mod = importlib.import_module(info.name)
        for name in dir(mod):
            obj = getattr(mod, name)
            if name.startswith("_") or not callable(obj):
                continue
            if getattr(obj, "__module__", None) != mod.__name__:
                continue
            out[f"{rel}.{name}"] = obj
            if inspect.isclass(obj):        # and the methods the class itself defines
                for meth, fn in vars(obj).items():
                    if inspect.isfunction(fn) and (not meth.startswith("_") or meth == "__call__"):
                        out[f"{rel}.{name}.{meth}"] = fn
    return out


PUBLIC = public_names()
FUZZED = sorted(n for n in PUBLIC if n in VALID and n not in CONTAINERS)
SUMMARY = Counter()
COVERED = set()


def test_every_public_name_has_a_valid_call():
    missing = sorted(set(PUBLIC) - set(VALID))
    stale = sorted(set(VALID) - set(PUBLIC))
    assert not missing, (f"public names without an entry in tests/test_fuzz.py::VALID (add a valid "
                         f"call for each): {missing}")
    assert not stale, f"entries of VALID that are no longer public names of mflib: {stale}"


# ----------------------------------------------------------------------------- running one call


class _Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise _Timeout()


def _call(fn, kwargs):
    """Call with a time limit; returns ("ok", result) or ("error", exception) or ("hang", None)."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        try:                          # no SIGALRM here: no time limit
            return "ok", fn(**kwargs)
        except Exception as err:  # noqa: BLE001
            return "error", err
        finally:
            plt.close("all")
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, TIMEOUT)
    try:
        return "ok", fn(**kwargs)
    except _Timeout:
        return "hang", None
    except Exception as err:  # noqa: BLE001 -- classified by the caller
        return "error", err
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        plt.close("all")


def _numbers(obj, depth=0):
    """The tensors and floats inside a result (for finiteness and reproducibility)."""
    if depth > 6:
        return []
    if isinstance(obj, torch.Tensor):
        return [obj.detach()]
    if isinstance(obj, bool) or obj is None:
        return []
    if isinstance(obj, (int, float)):
        return [torch.tensor(float(obj), dtype=D)]
    if isinstance(obj, torch.nn.Module):
        return [v.detach() for v in obj.state_dict().values()]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return [t for f in dataclasses.fields(obj) for t in _numbers(getattr(obj, f.name), depth + 1)]
    if isinstance(obj, (tuple, list)):
        return [t for v in obj for t in _numbers(v, depth + 1)]
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in _numbers(v, depth + 1)]
    return []


def _finite(result) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in _numbers(result) if t.is_floating_point())


def _names(msg: str, arg: str) -> bool:
    return re.search(rf"(?<![\w.]){re.escape(arg)}(?![\w])", msg) is not None


def classify(fn, kwargs, arg, definite):
    """One call with one bad argument: the outcome category."""
    status, out = _call(fn, kwargs)
    if status == "hang":
        return "hang", None
    if status == "error":
        if isinstance(out, Diverged):
            return "flagged", out
        if isinstance(out, (ValueError, TypeError)):
            return ("clear" if _names(str(out), arg) else "unnamed"), out
        return "leak", out
    if not _finite(out):
        return "nonfinite", None
    return ("accepted" if definite else "fine"), None


GOOD = {"clear", "flagged", "fine"}


# ----------------------------------------------------------------------------- bad values


class _Opaque:
    """An object of no type the library knows."""


def _nan_like(t):
    u = t.clone()
    u.view(-1)[0] = math.nan
    return u


def bad_values(entry, arg, value, default):
    """``(value, definite)`` pairs: ``definite`` values are never valid."""
    if ACCEPTED.get((entry, arg)) == "any":
        return []
    optional = default is None
    out = []
    add = out.append
    if arg == "device":
        add(("nonsense", True))
        add((42, True))
        if not torch.cuda.is_available():
            add(("cuda", True))
        return out
    if arg == "dtype":
        return [(torch.int64, True), ("float32", True), (torch.float16, True), (torch.complex64, True)]
    if isinstance(value, torch.Generator) or arg == "generator":
        return [(42, True), ("seed", True), (_Opaque(), True)]
    if not optional:
        add((None, True))
    if isinstance(value, torch.Tensor):
        add((value.tolist(), True))
        if value.is_floating_point():
            add((value.to(torch.int64), True))
            add((value > 0, True))
            add((value.to(torch.complex128), True))
            add((value.to(torch.float16), True))
            # the other float dtype: mixed with the other tensors it must be refused, alone it may be fine
            add((value.to(torch.float32 if value.dtype == D else D), False))
            if value.numel():
                add((value * 1e300, False))
                add((_nan_like(value), True))
                inf = value.clone()
                inf.view(-1)[-1] = math.inf
                add((inf, True))
        else:
            add((value.to(D), value.dtype == torch.long))
            if value.numel() and value.dtype == torch.long:      # indices: out of range, negative
                add((torch.full_like(value, 10 ** 6), True))
                add((torch.full_like(value, -1), True))
        add((value[None], False))                      # one more dimension
        add((value.reshape(-1)[:0] if value.ndim == 1 else value.reshape(-1), False))
        if value.ndim:
            add((value[:0], False))                    # empty
        return out
    if isinstance(value, bool):
        return out + [("yes", True), (1, True), (2.5, True)]
    if isinstance(value, int):
        return out + [(2.5, True), ("3", True), (True, True), (0, False), (-1, False), (10 ** 12, False),
                      (2 ** 64, False)]
    if isinstance(value, float):
        return out + [(math.nan, True), (math.inf, True), (-math.inf, True), ("1.0", True), (1j, True),
                      (True, True), (0.0, False), (-1.0, False), (1e16, False), (1e300, False),
                      (-1e300, False), (1e-300, False)]
    if isinstance(value, str):
        if ACCEPTED.get((entry, arg)) == "names":
            return out + [("nonsense", False), (3, True)]
        return out + [("nonsense", False), (3, True), (b"relu", True)]
    if isinstance(value, (tuple, list)):
        if value and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            floats = all(isinstance(v, float) for v in value)
            out += [("ab", True), ([], False), ([math.nan] * len(value), True), (2.5, True),
                    (list(value) + list(value), False), ([10 ** 12] * len(value), False)]
            if not floats:
                out.append(([2.5] * len(value), True))
            if floats:
                out += [([1e300] * len(value), False), ([-1.0] * len(value), False)]
            return out
        if value and all(isinstance(v, str) for v in value):
            return out + [(tuple("nonsense" for _ in value), True), (3, True), (value[:1], True)]
        return out + [(3, True), ([], False)]
    if isinstance(value, dict):
        out += [(3, True), ({}, True)]
        if value and all(isinstance(v, torch.Tensor) for v in value.values()):
            k = next(iter(value))
            out += [({**value, k: _nan_like(value[k])}, True), ({**value, k: value[k].to(torch.int64)}, True)]
        return out
    if value is None:
        return out + [("nonsense", False), (_Opaque(), True)]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out += [(3, True), ("x", True)]
        fields = [f.name for f in dataclasses.fields(value)
                  if isinstance(getattr(value, f.name), torch.Tensor) and getattr(value, f.name).is_floating_point()
                  and getattr(value, f.name).numel()]
        if fields:
            try:         # a container that validates itself cannot even be built with NaN
                out.append((dataclasses.replace(value, **{fields[0]: _nan_like(getattr(value, fields[0]))}),
                            True))
            except (ValueError, TypeError):
                pass
        return out
    if callable(value) or isinstance(value, torch.nn.Module):
        return out + [(3, True), (_Opaque(), True)]
    return out + [(_Opaque(), True)]


def _signature(entry):
    obj = PUBLIC[entry]
    return inspect.signature(obj)


def _arguments(entry, kwargs):
    """Every named parameter with its valid value (given, or the default)."""
    out = {}
    for p in _signature(entry).parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.name == "self":
            continue
        if p.name in kwargs:
            out[p.name] = (kwargs[p.name], p.default if p.default is not p.empty else "required")
        elif p.default is not p.empty:
            out[p.name] = (p.default, p.default)
    return out


def _record(outcome):
    SUMMARY["calls"] += 1
    SUMMARY[outcome] += 1


# ----------------------------------------------------------------------------- the tests


@pytest.mark.parametrize("entry", sorted(VALID))
def test_valid_call_is_finite_and_reproducible(entry):
    fn = PUBLIC[entry]
    status, first = _call(fn, VALID[entry]())
    assert status == "ok", f"{entry}: the valid call failed: {first!r}"
    COVERED.add(entry)
    _record("valid")
    assert _finite(first), f"{entry}: the valid call returned non-finite values"
    if entry in NONDETERMINISTIC:
        return
    torch.manual_seed(12345)          # the global random state must not leak into the result
    status, second = _call(fn, VALID[entry]())
    assert status == "ok"
    a, b = _numbers(first), _numbers(second)
    assert len(a) == len(b) and all(torch.equal(p, q) for p, q in zip(a, b)), \
        f"{entry}: two identical calls gave different numbers"


@pytest.mark.parametrize("entry", FUZZED)
def test_bad_arguments_are_refused_by_name(entry):
    fn = PUBLIC[entry]
    failures = []
    for arg, (value, default) in _arguments(entry, VALID[entry]()).items():
        for bad, definite in bad_values(entry, arg, value, default):
            kwargs = VALID[entry]()
            kwargs[arg] = bad
            outcome, err = classify(fn, kwargs, arg, definite)
            _record(outcome)
            if outcome not in GOOD:
                failures.append(f"{arg}={_show(bad)}: {outcome}" + (f" ({type(err).__name__}: {err})" if err else ""))
    assert not failures, f"{entry}:\n  " + "\n  ".join(failures)


def _show(v):
    if isinstance(v, torch.Tensor):
        return f"tensor(shape={tuple(v.shape)}, dtype={v.dtype})"
    s = repr(v)
    return s if len(s) < 40 else s[:37] + "..."


# -- hypothesis: random bad values --------------------------------------------------------

_FLOAT_BAD = st.one_of(st.sampled_from([math.nan, math.inf, -math.inf]),
                       st.floats(min_value=1.01e100, max_value=1e308),
                       st.floats(min_value=-1e308, max_value=-1.01e100),
                       st.text(max_size=3), st.complex_numbers(min_magnitude=1, max_magnitude=10))
_INT_BAD = st.one_of(st.floats(allow_nan=True, allow_infinity=True).filter(lambda v: v != int(v) if math.isfinite(v) else True),
                     st.text(max_size=3), st.booleans())
_INT_MAYBE = st.one_of(st.integers(max_value=0), st.integers(min_value=10 ** 9, max_value=2 ** 70))


def _tensor_bad(value):
    dtypes = st.sampled_from([torch.int32, torch.int64, torch.bool, torch.float16, torch.complex64])
    if value.is_floating_point() and value.numel():
        where = st.integers(0, value.numel() - 1)
        poison = st.sampled_from([math.nan, math.inf, -math.inf])

        def nanify(i, p):
            u = value.clone()
            u.view(-1)[i] = p
            return u
        definite = st.one_of(st.builds(nanify, where, poison), dtypes.map(value.to))
    else:
        definite = st.builds(lambda: value.tolist())
    shapes = st.lists(st.integers(0, 3), min_size=0, max_size=3).map(
        lambda s: torch.zeros(s, dtype=value.dtype))
    return st.one_of(definite.map(lambda v: (v, True)), shapes.map(lambda v: (v, False)))


def _strategy(entry, arg, value, default):
    if ACCEPTED.get((entry, arg)) == "any":
        return None
    if arg in ("device", "dtype") or isinstance(value, torch.Generator):
        return st.sampled_from(bad_values(entry, arg, value, default))
    if isinstance(value, torch.Tensor):
        return _tensor_bad(value)
    if isinstance(value, bool):
        return st.one_of(st.integers(), st.text(max_size=3), st.floats()).map(lambda v: (v, True))
    if isinstance(value, int):
        return st.one_of(_INT_BAD.map(lambda v: (v, True)), _INT_MAYBE.map(lambda v: (v, False)))
    if isinstance(value, float):
        return st.one_of(_FLOAT_BAD.map(lambda v: (v, True)),
                         st.floats(min_value=-1e100, max_value=0.0).map(lambda v: (v, False)))
    if isinstance(value, str):
        return st.one_of(st.text(max_size=8).map(lambda v: (v, False)), st.integers().map(lambda v: (v, True)))
    choices = bad_values(entry, arg, value, default)
    return st.sampled_from(choices) if choices else None


@settings(max_examples=HYPOTHESIS_EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_random_bad_arguments(data):
    entry = data.draw(st.sampled_from(FUZZED), label="entry")
    args = _arguments(entry, VALID[entry]())
    if not args:
        return
    arg = data.draw(st.sampled_from(sorted(args)), label="argument")
    strategy = _strategy(entry, arg, *args[arg])
    if strategy is None:
        return
    bad, definite = data.draw(strategy, label="bad value")
    kwargs = VALID[entry]()
    kwargs[arg] = bad
    outcome, err = classify(PUBLIC[entry], kwargs, arg, definite)
    _record(outcome)
    SUMMARY["hypothesis calls"] += 1
    assert outcome in GOOD, f"{entry}({arg}={_show(bad)}): {outcome} {err!r}"


# -- divergence: every diverging run is flagged -------------------------------------------
# Each engine with a step far too large: it must raise mflib.Diverged or return a
# result flagged as diverged, holding only finite numbers (the records it computed).

def _flag(res):
    d = getattr(res, "diverged", None)
    return bool(torch.as_tensor(d).any()) if d is not None else False


DIVERGING = {
    "erm.sgd": lambda: erm.sgd(X, Y, lr=1e3, steps=200),
    "erm.sgd(batch_size)": lambda: erm.sgd(X, Y, lr=1e3, steps=300, batch_size=2, record_every=7),
    "landscape.gradient_descent": lambda: landscape.gradient_descent(randn(2) * 30, randn(2, 3) * 30, X, Y * 1e3,
                                                                     lr=1e8, steps=40,
                                                                     activation=lambda z: z ** 3),
    "backprop.gradient_descent": lambda: backprop.gradient_descent(_bp_params(), X, randn(6, 2), lr=1e6, steps=40),
    "lazy.train": lambda: lazy.train(*_lazy_model(), randn(5, 2), randn(5), lr=1e6, steps=40),
    "lazy.train(batch_size)": lambda: lazy.train(*_lazy_model(), randn(5, 2), randn(5), lr=1e6, steps=40,
                                                 batch_size=2, x_test=randn(3, 2), y_test=randn(3)),
    "lazy.relu_gd": lambda: lazy.relu_gd(_exp_p0(), randn(2, 5, 3), randn(2, 5) * 1e3, lr=1e8, steps=40,
                                         x_test=randn(2, 4, 3), y_test=randn(2, 4), record_every=3),
    "lazy.relu_online_sgd": lambda: lazy.relu_online_sgd(_exp_p0(), _exp_teacher(), lr=1e9, steps=40, batch=3),
    "meanfield.train(gd)": lambda: meanfield.train(_theta(), steps=40, lr=1e6, x=X, y=Y, record=[0, 1, 2, 40]),
    "meanfield.train(sgd)": lambda: meanfield.train(_theta(), steps=40, lr=1e6, method="sgd", teacher=_teacher(),
                                                    batch=3, record=5),
    "meanfield.train(population)": lambda: meanfield.train(_theta(), steps=40, lr=1e6, method="population",
                                                           teacher=_teacher(), record=5),
    "threelayer.train(flag)": lambda: tl.train(_params_tl(), X, Y * 1e3, lr=1e4, steps=40, on_diverge="flag",
                                               phi=("identity", "identity", "identity"), snapshots=(0, 40)),
    "threelayer.train(raise)": lambda: tl.train(_params_tl(), X, Y * 1e3, lr=1e4, steps=40,
                                                phi=("identity", "identity", "identity")),
    "threelayer.train_two_layer": lambda: tl.train_two_layer(_two(), X, Y * 1e3, lr=1e8, steps=40),
    "threelayer.coupled_training": lambda: tl.coupled_training(_emb(), X, Y * 1e3, widths=[2], seeds=1, lr=1e8,
                                                               steps=40, phi=("identity", "identity", "identity")),
    "two_timescale.train_sgd": lambda: tt.train_sgd(*_tt_state(), T, 0.05, 1.0, 1e3, 50, generator=g(), n_records=11),
    "two_timescale.train_fixed_sample": lambda: tt.train_fixed_sample(
        *tt.additive_step_problem(2, 8, generator=g()), units=2, activation="relu", lr_a=1e100, lr_u=1e100,
        epochs=3, runs=2, generator=g()),
    "two_timescale.train_fixed_sample(compiled)": lambda: tt.train_fixed_sample(
        *tt.additive_step_problem(2, 8, generator=g(), dtype=torch.float64), units=2, activation="relu",
        lr_a=1e100, lr_u=1e100, epochs=3, runs=2, generator=g(), engine="compiled"),
}


@pytest.mark.parametrize("engine", sorted(DIVERGING))
def test_diverging_runs_are_flagged(engine):
    status, res = _call(lambda: DIVERGING[engine](), {})
    assert status != "hang", f"{engine}: no answer within {TIMEOUT} s"
    if status == "error":
        assert isinstance(res, Diverged), f"{engine}: {res!r}"
        SUMMARY["diverging runs raised"] += 1
        return
    assert _flag(res), f"{engine}: the run diverged but is not flagged"
    assert _finite(res), f"{engine}: a flagged run returned non-finite numbers"
    # exactly the records it computed: every record series has one entry per recorded step
    lengths = {name: len(v) if not isinstance(v, torch.Tensor) or v.ndim < 2 else v.shape[-1 if name == "loss" else 0]
               for name, v in vars(res).items()
               if name in ("steps", "times", "risk", "objective", "iterates", "thetas", "train_loss", "loss",
                           "grad_evals") and isinstance(v, (list, torch.Tensor))}
    if "test_loss" in vars(res) and res.test_loss:
        lengths["test_loss"] = len(res.test_loss)
    assert len(set(lengths.values())) <= 1, f"{engine}: record series of different lengths {lengths}"
    SUMMARY["diverging runs flagged"] += 1


def test_zz_summary(request):
    """Print and store the counts (run last: the file's tests run in order)."""
    summary = {
        "public functions, classes and methods": len(PUBLIC),
        "covered by a valid call": len(COVERED),
        "fuzzed with bad arguments": len(FUZZED),
        "calls": SUMMARY["calls"],
        "of which hypothesis": SUMMARY["hypothesis calls"],
        "valid calls": SUMMARY["valid"],
        "clear errors (ValueError/TypeError naming the argument)": SUMMARY["clear"],
        "diverged (flagged or mflib.Diverged)": SUMMARY["flagged"],
        "diverging training runs: flagged": SUMMARY["diverging runs flagged"],
        "diverging training runs: raised mflib.Diverged": SUMMARY["diverging runs raised"],
        "accepted legitimately, finite result": SUMMARY["fine"],
        "errors not naming the argument": SUMMARY["unnamed"],
        "other exceptions (leaked)": SUMMARY["leak"],
        "silent non-finite results": SUMMARY["nonfinite"],
        "invalid values accepted silently": SUMMARY["accepted"],
        "hangs": SUMMARY["hang"],
    }
    text = json.dumps(summary, indent=1)
    print("\nmflib fuzz summary:\n" + text)
    cache = getattr(request.config, "cache", None)
    if cache is not None:
        cache.set("mflib/fuzz_summary", summary)
    path = os.environ.get("MFLIB_FUZZ_SUMMARY")
    if path:
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")
    if SUMMARY["calls"] > SUMMARY["valid"]:      # the fuzzing tests ran in this session
        for key in ("unnamed", "leak", "nonfinite", "accepted", "hang"):
            assert SUMMARY[key] == 0, f"{key}: {SUMMARY[key]}"
