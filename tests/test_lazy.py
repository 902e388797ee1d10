"""Tests of mflib.lazy: data, initialisation, tangent model, rescaled training,
displacement and the relative scale criterion."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch
from torch.func import jacrev

import mflib
from mflib import gp, lazy, stats

F64 = torch.float64


@pytest.fixture
def data():
    return lazy.teacher_student(10, 7, seed=3)


def test_sphere_unit_norm_and_seed():
    x = lazy.sphere(50, 3, seed=1)
    assert x.shape == (50, 3) and x.dtype == F64
    torch.testing.assert_close(x.norm(dim=1), torch.ones(50, dtype=F64))
    torch.testing.assert_close(x, lazy.sphere(50, 3, generator=mflib.generator(1)))
    assert lazy.sphere(4, 2, seed=1, dtype=torch.float32).dtype == torch.float32


def test_teacher_student_labels(data):
    assert data.x_train.shape == (10, 2) and data.y_train.shape == (10,)
    assert data.x_test.shape == (7, 2) and data.y_test.shape == (7,)
    assert data.teacher_a.shape == (3, 2)
    torch.testing.assert_close(data.teacher_b, torch.tensor([1.0, -1.0, 1.0], dtype=F64))
    want = torch.relu(data.x_test @ data.teacher_a.T) @ data.teacher_b
    torch.testing.assert_close(data.y_test, want)


def test_symmetric_init_is_centred_and_balanced():
    p = lazy.two_layer_init(8, 3, tau=0.7, seed=0)
    x = lazy.sphere(20, 3, seed=1)
    assert lazy.two_layer(p, x).abs().max() < 1e-14
    torch.testing.assert_close(p["a"].norm(dim=1), torch.full((8,), 0.7, dtype=F64))
    torch.testing.assert_close(p["b"].abs(), torch.full((8,), 0.7, dtype=F64))
    q = lazy.two_layer_init(7, 3, tau=0.7, seed=0, symmetric=False)
    assert lazy.two_layer(q, x).abs().max() > 0


@pytest.mark.parametrize("call, exc, word", [
    (lambda: lazy.two_layer_init(7, 2), ValueError, "m"),
    (lambda: lazy.two_layer_init(8, 2, tau=0.0), ValueError, "tau"),
    (lambda: lazy.two_layer_init(8, 2, symmetric=1), TypeError, "symmetric"),
    (lambda: lazy.two_layer_init(8, 2.0), TypeError, "d"),
    (lambda: lazy.teacher_student(0, 5), ValueError, "n_train"),
    (lambda: lazy.teacher_student(5, 5, n_teacher="3"), TypeError, "n_teacher"),
    (lambda: lazy.sphere(5, 2, generator=3), TypeError, "generator"),
    (lambda: lazy.sphere(5, 2, dtype=torch.int64), TypeError, "dtype"),
    (lambda: lazy.two_layer({"a": torch.ones(3, 2)}, torch.ones(4, 2)), TypeError, "params"),
    (lambda: lazy.two_layer({"a": torch.ones(3, 2), "b": torch.ones(3)}, torch.ones(4, 3)),
     ValueError, "x"),
    (lambda: lazy.two_layer({"a": torch.ones(3, 2), "b": torch.ones(3)}, torch.ones(4, 2),
                            activation="elu"), ValueError, "activation"),
    (lambda: stats.fit_slope([1, 2], [1, -1]), ValueError, "y"),
    (lambda: lazy.rms(torch.ones(0)), ValueError, "v"),
])
def test_bad_arguments(call, exc, word):
    with pytest.raises(exc, match=word):
        call()


def _quadratic(params, x, A):
    # h(w, x) = (x . 1) * w^T A w / 2: Hessian (x . 1) A at every point.
    w = params["w"]
    return x.sum(1) * (w @ A @ w) / 2


def test_centred_and_two_layer_module():
    net = lazy.TwoLayer(6, 2, symmetric=False, scale=0.5, activation="tanh", seed=0)
    fn, p0 = lazy.as_function(net)
    x = lazy.sphere(9, 2, seed=2)
    torch.testing.assert_close(fn(p0, x), net(x).detach())
    torch.testing.assert_close(fn(p0, x), lazy.two_layer(lazy.two_layer_init(6, 2, symmetric=False, seed=0),
                                                          x, scale=0.5, activation="tanh"))
    fc = lazy.centred(fn, p0)
    assert torch.all(fc(p0, x) == 0)
    with pytest.raises(ValueError, match="activation"):
        lazy.TwoLayer(4, 2, activation="elu")


def _tangent(net):
    return lazy.as_function(gp.Linearized(net))


def test_tangent_model_trains_alpha_independently(data):
    """With h(w0) = 0 and the 1/alpha^2 rescaling, GD on the tangent model learns
    the same alpha*h for every alpha (its function-space dynamics does not see alpha)."""
    m = 12
    fl, p0 = _tangent(lazy.TwoLayer(m, 2, scale=1 / math.sqrt(m), seed=0))
    outs, disps = [], []
    for alpha in (1.0, 10.0):
        r = lazy.train(fl, p0, data.x_train, data.y_train, alpha=alpha, lr=0.5, steps=60)
        assert not r.diverged and r.train_loss[-1] < r.train_loss[0]
        outs.append(alpha * fl(r.params, data.x_test).detach())
        disps.append(lazy.displacement(r.params, p0))
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-9, atol=1e-10)
    assert disps[0] / disps[1] == pytest.approx(10.0, rel=1e-6)


def test_lazy_limit_distance_and_displacement_fall_like_one_over_alpha(data):
    m = 16
    net = lazy.TwoLayer(m, 2, symmetric=False, scale=1 / math.sqrt(m), activation="gelu", seed=1)
    fn, p0 = lazy.as_function(net)
    fl, q0 = _tangent(net)
    fn, fl = lazy.centred(fn, p0), lazy.centred(fl, q0)
    alphas, dist, disp = [8.0, 16.0, 32.0], [], []
    for alpha in alphas:
        r = lazy.train(fn, p0, data.x_train, data.y_train, alpha=alpha, lr=1.0, steps=150)
        rl = lazy.train(fl, q0, data.x_train, data.y_train, alpha=alpha, lr=1.0, steps=150)
        with torch.no_grad():
            dist.append(lazy.rms(alpha * (fn(r.params, data.x_test) - fl(rl.params, data.x_test))))
        disp.append(lazy.displacement(r.params, p0))
    assert -1.25 < stats.fit_slope(alphas, dist) < -0.75
    assert -1.1 < stats.fit_slope(alphas, disp) < -0.9


def test_train_records_and_keeps(data):
    p0 = lazy.two_layer_init(4, 2, tau=0.5, seed=0)
    r = lazy.train(partial(lazy.two_layer, scale=0.25), p0, data.x_train, data.y_train,
                   lr=1.0, steps=20, record_every=5, keep_params=True,
                   x_test=data.x_test, y_test=data.y_test)
    assert r.steps == [0, 5, 10, 15, 20]
    assert len(r.train_loss) == len(r.test_loss) == len(r.history) == 5
    torch.testing.assert_close(r.history[0]["a"], p0["a"])
    torch.testing.assert_close(r.history[-1]["a"], r.params["a"])
    # risk at w0 = 0 is half the mean square label
    assert r.train_loss[0] == pytest.approx(0.5 * float((data.y_train ** 2).mean()))
    assert p0["a"].requires_grad is False


def test_train_minibatch_and_multioutput():
    g = mflib.generator(0)
    x = torch.randn(30, 4, generator=g, dtype=F64)
    y = torch.randn(30, 3, generator=g, dtype=F64)
    net = torch.nn.Linear(4, 3).to(F64)
    fn, p0 = lazy.as_function(net)
    r = lazy.train(fn, p0, x, y, lr=0.1, steps=50, batch_size=10, generator=mflib.generator(1))
    assert r.train_loss[-1] < r.train_loss[0]


def test_divergence_is_reported_not_nan(data):
    p0 = lazy.two_layer_init(4, 2, tau=1.0, seed=0, symmetric=False)
    r = lazy.train(lazy.two_layer, p0, data.x_train, data.y_train, lr=1e6, steps=200,
                   x_test=data.x_test, y_test=data.y_test)
    assert r.diverged
    assert all(math.isfinite(v) for v in r.train_loss)
    assert all(torch.isfinite(v).all() for v in r.params.values())


@pytest.mark.parametrize("kw, exc, word", [
    ({"lr": 0.0}, ValueError, "lr"),
    ({"alpha": "big"}, TypeError, "alpha"),
    ({"alpha": -1.0}, ValueError, "alpha"),
    ({"steps": 1.5}, TypeError, "steps"),
    ({"x_test": torch.ones(3, 2, dtype=F64)}, ValueError, "x_test"),
    ({"y": torch.ones(10, 2, dtype=F64)}, ValueError, "y"),
    ({"x": torch.full((10, 2), float("nan"), dtype=F64)}, ValueError, "x"),
    ({"params0": [1.0]}, TypeError, "params0"),
    ({"fn": 3}, TypeError, "fn"),
])
def test_train_bad_arguments(data, kw, exc, word):
    args = dict(fn=lazy.two_layer, params0=lazy.two_layer_init(4, 2, seed=0), x=data.x_train,
                y=data.y_train, lr=0.1, steps=3)
    args.update(kw)
    with pytest.raises(exc, match=word):
        lazy.train(args.pop("fn"), args.pop("params0"), args.pop("x"), args.pop("y"), **args)


def test_displacement():
    p0 = {"a": torch.zeros(2, 2, dtype=F64), "b": torch.ones(2, dtype=F64)}
    p = {"a": torch.full((2, 2), 1.5, dtype=F64), "b": torch.ones(2, dtype=F64)}
    assert lazy.displacement(p, p0) == pytest.approx(3.0)
    assert lazy.displacement(p, p0, relative=True) == pytest.approx(3.0 / math.sqrt(2))
    with pytest.raises(ValueError, match="keys"):
        lazy.displacement({"a": p["a"]}, p0)


def test_jacobian_norm_matches_explicit_jacobian(data):
    p0 = lazy.two_layer_init(6, 2, tau=1.0, seed=0, symmetric=False)
    fn = partial(lazy.two_layer, activation="tanh")
    jac = jacrev(lambda p: fn(p, data.x_train))(p0)
    J = torch.cat([jac[k].reshape(10, -1) for k in p0], dim=1)
    want = float(torch.linalg.matrix_norm(J, ord=2)) / math.sqrt(10)
    assert lazy.jacobian_norm(fn, p0, data.x_train, seed=0) == pytest.approx(want, rel=1e-8)


def test_hessian_norm_known_quadratic():
    A = torch.diag(torch.tensor([3.0, -5.0, 1.0], dtype=F64))
    x = torch.tensor([[1.0, 0.0], [0.5, 0.5]], dtype=F64)     # x . 1 = 1 at both points
    fn = partial(_quadratic, A=A)
    p = {"w": torch.tensor([0.3, 0.1, -0.2], dtype=F64)}
    assert lazy.hessian_norm(fn, p, x, seed=0) == pytest.approx(5.0, rel=1e-6)
    k = lazy.relative_scale(fn, p, x, torch.zeros(2, dtype=F64), seed=0)
    assert k.hessian == pytest.approx(5.0, rel=1e-6)
    assert k.kappa == pytest.approx(k.residual * k.hessian / k.jacobian ** 2)


def test_relative_scale_homogeneous_model(data):
    """Two-layer relu nets are 2-homogeneous: kappa(tau w0) = kappa(w0) / tau^2."""
    fn = partial(lazy.two_layer, scale=0.5)
    k1 = lazy.relative_scale(fn, lazy.two_layer_init(8, 2, tau=1.0, seed=0), data.x_train,
                             data.y_train, seed=0)
    k3 = lazy.relative_scale(fn, lazy.two_layer_init(8, 2, tau=3.0, seed=0), data.x_train,
                             data.y_train, seed=0)
    assert k3.kappa * 9 == pytest.approx(k1.kappa, rel=1e-6)
    with pytest.raises(ValueError, match="fn"):
        lazy.relative_scale(lambda p, x: p["w"] * x, {"w": torch.ones(2, dtype=F64)},
                            data.x_train, data.y_train)


def test_fit_slope_exact():
    xs = [1.0, 2.0, 4.0, 8.0]
    assert stats.fit_slope(xs, [3 * v ** -1.5 for v in xs]) == pytest.approx(-1.5)


def test_float32_stays_float32(data):
    p0 = lazy.two_layer_init(4, 2, seed=0, dtype=torch.float32)
    x, y = data.x_train.float(), data.y_train.float()
    r = lazy.train(lazy.two_layer, p0, x, y, lr=0.1, steps=3)
    assert r.params["a"].dtype == torch.float32


@pytest.mark.gpu
def test_runs_on_cuda():
    dev = torch.device("cuda")
    d = lazy.teacher_student(10, 5, seed=0, device=dev)
    p0 = lazy.two_layer_init(8, 2, seed=0, device=dev)
    fl, q0 = _tangent(lazy.TwoLayer(8, 2, seed=0, device=dev))
    r = lazy.train(fl, q0, d.x_train, d.y_train, lr=0.5, steps=5, x_test=d.x_test, y_test=d.y_test)
    assert r.params["params.0"].device.type == "cuda"
    k = lazy.relative_scale(lazy.two_layer, p0, d.x_train, d.y_train, seed=0)
    assert k.kappa > 0
    cpu = lazy.teacher_student(10, 5, seed=0)
    torch.testing.assert_close(d.x_train.cpu(), cpu.x_train)


def test_hessian_norm_of_linear_model_is_zero(data):
    fn = lambda p, x: x @ p["w"]  # noqa: E731
    assert lazy.hessian_norm(fn, {"w": torch.ones(2, dtype=F64)}, data.x_train, seed=0) == 0.0


def test_digits_cnn_and_accuracy():
    pytest.importorskip("sklearn")
    d = lazy.digits(50, 30, seed=0)
    assert d.x_train.shape == (50, 1, 8, 8) and d.x_test.shape == (30, 1, 8, 8)
    assert d.x_train.dtype == torch.float32
    torch.testing.assert_close(d.y_train.argmax(1), d.labels_train)
    assert abs(float(d.x_train.mean())) < 1e-5
    with pytest.raises(ValueError, match="n_train"):
        lazy.digits(1700, 200)
    net, net2 = lazy.small_cnn(4, seed=1), lazy.small_cnn(4, seed=1)
    assert sum(p.numel() for p in net.parameters()) == 838
    out = net(d.x_test)
    assert out.shape == (30, 10)
    torch.testing.assert_close(out, net2(d.x_test))
    assert lazy.accuracy(d.y_test, d.labels_test) == 1.0
    with pytest.raises(ValueError, match="labels"):
        lazy.accuracy(out, d.labels_test[:3])
    with pytest.raises(TypeError, match="channels"):
        lazy.small_cnn(2.5)


def test_digits_pixel_centring():
    pytest.importorskip("sklearn")
    d = lazy.digits(200, 30, seed=0, centre="pixel")
    assert float(d.x_train.mean(0).abs().max()) < 1e-5           # the mean training image is zero
    assert abs(float(d.x_train.std()) - 1.0) < 1e-3
    g = lazy.digits(200, 30, seed=0)                             # same split, other scaling
    torch.testing.assert_close(d.labels_test, g.labels_test)
    with pytest.raises(ValueError, match="centre"):
        lazy.digits(20, 10, centre="none")


def test_conv_net_counts_and_matches_small_cnn():
    net = lazy.conv_net(seed=2)
    c, h = 16, 512
    assert sum(p.numel() for p in net.parameters()) == 10 * c + 9 * c * c + c + (16 * c + 1) * h + 10 * (h + 1)
    assert sum(p.numel() for p in net.parameters()) == 139194
    x = torch.randn(7, 1, 8, 8, generator=mflib.generator(0))
    assert net(x).shape == (7, 10)
    torch.testing.assert_close(net(x), lazy.conv_net(seed=2)(x))  # the seed fixes the weights
    a, b = lazy.conv_net(4, 0, seed=1).state_dict(), lazy.small_cnn(4, seed=1).state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert lazy.conv_net(3, 5, dtype=torch.float64).state_dict()["0.weight"].dtype == torch.float64
    with pytest.raises(TypeError, match="hidden"):
        lazy.conv_net(4, 2.0)
    with pytest.raises(ValueError, match="hidden"):
        lazy.conv_net(4, -1)


def test_select_output_is_one_output_of_flattened_images():
    from mflib import empirical
    net = lazy.conv_net(2, 3, seed=0)
    sel = lazy.SelectOutput(net, 4)
    x = torch.randn(5, 64, generator=mflib.generator(1))
    torch.testing.assert_close(sel(x), net(x.reshape(5, 1, 8, 8))[:, 4])
    assert [p for p in sel.parameters()] == [p for p in net.parameters()]  # shared, not copied
    K = empirical.empirical_ntk(sel, x)
    assert K.shape == (5, 5) and float(torch.linalg.eigvalsh(K.double()).min()) > -1e-4 * float(K.diagonal().max())
    with pytest.raises(ValueError, match="x must have 64 columns"):
        sel(torch.randn(5, 63))
    with pytest.raises(TypeError, match="x"):
        sel(x.double())
    with pytest.raises(ValueError, match="index"):
        lazy.SelectOutput(net, 10)(x)
    with pytest.raises(TypeError, match="net"):
        lazy.SelectOutput(lambda t: t, 0)
    with pytest.raises(TypeError, match="shape"):
        lazy.SelectOutput(net, 0, shape=8)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_train_takes_the_steps_of_torch_optim_sgd(data, momentum):
    """train writes SGD's update out: the same parameters, bit for bit."""
    p0 = lazy.two_layer_init(8, 2, tau=0.5, seed=3)
    fn = partial(lazy.two_layer, scale=1 / 8)
    run = lazy.train(fn, p0, data.x_train, data.y_train, lr=0.7, steps=25, momentum=momentum,
                     alpha=2.0)
    params = {k: v.clone().requires_grad_(True) for k, v in p0.items()}
    opt = torch.optim.SGD(list(params.values()), lr=0.7, momentum=momentum)
    for _ in range(25):
        opt.zero_grad()
        (0.5 * ((2.0 * fn(params, data.x_train) - data.y_train) ** 2).mean() / 4.0).backward()
        opt.step()
    assert all(torch.equal(run.params[k], params[k].detach()) for k in params)


def test_centred_caches_the_base_output_exactly():
    p0 = lazy.two_layer_init(6, 2, seed=1, symmetric=False)
    h = partial(lazy.two_layer, scale=0.3)
    fc = lazy.centred(h, p0)
    x = torch.randn(5, 2, generator=mflib.generator(2), dtype=torch.float64)
    p = {k: v + 0.1 for k, v in p0.items()}
    first = fc(p, x)
    assert torch.equal(first, h(p, x) - h(p0, x))
    assert torch.equal(fc(p, x), first)                    # cached base, same numbers
    x.mul_(2.0)                                            # in place: the cache must not be used
    assert torch.equal(fc(p, x), h(p, x) - h(p0, x))
    y = torch.randn(3, 2, generator=mflib.generator(3), dtype=torch.float64)
    assert torch.equal(fc(p, y), h(p, y) - h(p0, y))


# ----------------------------------------------------------------------------- numerical experiment (I)

def _exp_setup(R=2, T=2, m=6, d=5, n=40, dtype=torch.float64):
    te = lazy.relu_teachers(R, d, m0=2, seed=1, dtype=dtype)
    x = lazy.sphere(R * n, d, seed=2, dtype=dtype).reshape(R, n, d)
    y = (torch.bmm(x, te["a"].transpose(1, 2)).clamp_min(0) * te["b"][:, None]).sum(-1)
    p0 = lazy.pairs_init(m, d, [0.5, 2.0][:T], repeats=R, seed=3, dtype=dtype)
    return te, x, y, p0


def test_pairs_init_centred_and_scaled():
    p = lazy.pairs_init(6, 4, [0.5, 2.0], repeats=3, seed=0)
    assert p["a"].shape == (3, 2, 6, 4) and p["b"].shape == (3, 2, 6)
    x = lazy.sphere(7, 4, seed=1).expand(3, 7, 4)
    assert lazy.relu_outputs(p, x).abs().max() < 1e-12            # h(w0) = 0 by symmetry
    assert torch.allclose(p["a"][:, 1], 4 * p["a"][:, 0]) and torch.allclose(p["b"][:, 1], 4 * p["b"][:, 0])
    assert (p["b"][..., :3] >= 0).all() and torch.equal(p["a"][..., :3, :], p["a"][..., 3:, :])
    with pytest.raises(ValueError, match="m"):
        lazy.pairs_init(5, 4, [1.0])
    with pytest.raises(ValueError, match="taus"):
        lazy.pairs_init(4, 4, [-1.0])


def test_relu_gd_gradient_matches_autograd():
    te, x, y, p0 = _exp_setup()
    run = lazy.relu_gd(p0, x, y, lr=0.3, steps=1)
    a = p0["a"].clone().requires_grad_(True)
    b = p0["b"].clone().requires_grad_(True)
    out = torch.einsum("rtm,rtnm->rtn", b, torch.relu(torch.einsum("rnd,rtmd->rtnm", x, a)))
    (0.5 * ((out - y[:, None]) ** 2).mean(-1)).sum().backward()
    assert torch.allclose(run.a, p0["a"] - 0.3 * a.grad, atol=1e-12)
    assert torch.allclose(run.b, p0["b"] - 0.3 * b.grad, atol=1e-12)
    assert torch.allclose(run.train_loss[0], (0.5 * (y ** 2).mean(-1))[:, None].expand(2, 2))


def test_relu_gd_per_scale_steps_and_records():
    te, x, y, p0 = _exp_setup()
    run = lazy.relu_gd(p0, x, y, lr=torch.tensor([0.5, 0.5 / 16]), steps=30, x_test=x, y_test=y, record_every=10)
    assert run.steps == [0, 10, 20, 30] and run.train_loss.shape == (4, 2, 2)
    assert torch.allclose(run.train_loss, run.eval_loss)           # test set = training set here
    assert (run.train_loss[-1] < run.train_loss[0]).all() and not run.diverged.any()


def test_linearised_is_the_tangent_model_and_lazy_limit():
    """Tangent model: trains like the network for tiny steps; with lr ~ 1/tau^2 its
    function-space trajectory does not depend on tau; the network approaches it as tau grows."""
    te, x, y, _ = _exp_setup()
    p0 = lazy.pairs_init(6, 5, [1.0, 10.0, 100.0], repeats=2, seed=3)
    lr = torch.tensor([0.2, 0.002, 0.00002])
    net = lazy.relu_gd(p0, x, y, lr=lr, steps=50)
    lin = lazy.relu_gd(p0, x, y, lr=lr, steps=50, linearised=True)
    assert torch.allclose(lin.final[:, 0], lin.final[:, 2], rtol=1e-8)
    gap = (net.final - lin.final).abs() / lin.final
    assert (gap[:, 2] < gap[:, 0]).all() and (gap[:, 2] < 1e-3).all()


def test_diverging_batch_is_flagged_and_finite():
    te, x, y, p0 = _exp_setup()
    run = lazy.relu_gd(p0, x, 100 * y, lr=torch.tensor([1e-3, 1e6]), steps=30)
    assert not run.diverged[:, 0].any() and run.diverged[:, 1].all()
    assert torch.isfinite(run.train_loss).all() and torch.isfinite(run.a).all()


def test_online_sgd_learns_and_same_stream():
    te, _, _, p0 = _exp_setup()
    r1 = lazy.relu_online_sgd(p0, te, lr=0.5, steps=300, batch=20, seed=4)
    r2 = lazy.relu_online_sgd(p0, te, lr=0.5, steps=300, batch=20, seed=4)
    assert torch.equal(r1.a, r2.a)
    pop0 = lazy.sphere_relu_loss(p0, te)
    pop = lazy.sphere_relu_loss({"a": r1.a, "b": r1.b}, te)
    assert (pop < 0.5 * pop0).all()
    # the running estimate of the population loss tracks the exact one (sampling error of the mean)
    assert torch.allclose(r1.final, pop, rtol=0.5)


def test_sphere_gated_inner_matches_monte_carlo():
    gen = torch.Generator().manual_seed(0)
    d = 6
    c1, v1 = torch.randn(3, d, generator=gen, dtype=torch.float64), torch.randn(3, d, generator=gen, dtype=torch.float64)
    c2, v2 = torch.randn(2, d, generator=gen, dtype=torch.float64), torch.randn(2, d, generator=gen, dtype=torch.float64)
    c2[0] = c1[0]                        # equal and opposite gates: the degenerate angles
    c2[1] = -c1[1]
    exact = lazy.sphere_gated_inner(c1, v1, c2, v2)
    x = lazy.sphere(400_000, d, seed=5)
    f = lambda c, v: ((x @ c.T > 0) * (x @ v.T)).sum(1)
    prod = f(c1, v1) * f(c2, v2)
    assert abs(float(exact) - float(prod.mean())) < 4 * float(prod.std()) / math.sqrt(len(x))
    # relu . relu: the arc-cosine kernel
    phi = torch.arccos(torch.dot(c1[0], c1[2]) / c1[0].norm() / c1[2].norm())
    arc = c1[0].norm() * c1[2].norm() * (torch.sin(phi) + (math.pi - phi) * torch.cos(phi)) / (2 * math.pi * d)
    assert torch.allclose(lazy.sphere_gated_inner(c1[:1], c1[:1], c1[2:], c1[2:]), arc)


def test_sphere_relu_loss_and_tangent_fit_match_sampling():
    te, _, _, p0 = _exp_setup(d=4)
    x = lazy.sphere(300_000, 4, seed=7)
    xs = x.expand(2, *x.shape)
    y = (torch.bmm(xs, te["a"].transpose(1, 2)).clamp_min(0) * te["b"][:, None]).sum(-1)
    mc = 0.5 * ((lazy.relu_outputs({"a": p0["a"] + 0.3, "b": p0["b"]}, xs) - y[:, None]) ** 2).mean(-1)
    exact = lazy.sphere_relu_loss({"a": p0["a"] + 0.3, "b": p0["b"]}, te)
    assert torch.allclose(exact, mc, rtol=0.02)
    fit = lazy.sphere_tangent_fit(p0["a"][:, 0], te)
    assert fit.gates.shape == (2, 3, 4)                               # the pairs share their gates
    feats = torch.cat([(x @ fit.gates[0, j] > 0)[:, None] * x for j in range(3)], 1)
    sol = torch.linalg.lstsq(feats, y[0][:, None]).solution
    assert torch.allclose(fit.vectors[0].reshape(-1), sol[:, 0], atol=0.02)
    assert abs(float(fit.loss[0]) - float(0.5 * ((feats @ sol[:, 0] - y[0]) ** 2).mean())) < 0.02 * float(fit.signal[0])
    assert (fit.loss < fit.signal).all()


def test_relu_tangent_kernel_is_jacobian_gram():
    te, x, y, p0 = _exp_setup(R=1, T=1)
    p = {"a": p0["a"][0, 0], "b": p0["b"][0, 0]}
    J = jacrev(lambda q: lazy.two_layer(q, x[0]))(p)
    J = torch.cat([J["a"].reshape(len(x[0]), -1), J["b"]], 1)
    assert torch.allclose(lazy.relu_tangent_kernel(p0, x, x)[0, 0], J @ J.T, atol=1e-12)


def test_tangent_at_outputs_and_loss():
    te, x, y, p0 = _exp_setup(d=4)
    lin = lazy.relu_gd(p0, x, y, lr=0.3, steps=20, linearised=True)
    out = lazy.relu_outputs({"a": lin.a, "b": lin.b}, x, tangent_at=p0)
    assert torch.allclose(0.5 * ((out - y[:, None]) ** 2).mean(-1), lin.final)
    xs = lazy.sphere(300_000, 4, seed=8).expand(2, 300_000, 4)
    ys = (torch.bmm(xs, te["a"].transpose(1, 2)).clamp_min(0) * te["b"][:, None]).sum(-1)
    mc = 0.5 * ((lazy.relu_outputs({"a": lin.a, "b": lin.b}, xs, tangent_at=p0) - ys[:, None]) ** 2).mean(-1)
    assert torch.allclose(lazy.sphere_relu_loss({"a": lin.a, "b": lin.b}, te, tangent_at=p0), mc, rtol=0.02)
