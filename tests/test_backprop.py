import math

import pytest
import torch

import mflib
from mflib import backprop as bp


@pytest.mark.parametrize("act", ["relu", "tanh", "sigmoid", "erf", "square", "linear"])
@pytest.mark.parametrize("bias", [True, False])
def test_backprop_matches_autograd(act, bias):
    p = bp.init_params([5, 17, 9, 3], bias=bias, bias_std=0.3, seed=1)
    g = mflib.generator(2)
    x = torch.randn(11, 5, generator=g, dtype=torch.float64)
    y = torch.randn(11, 3, generator=g, dtype=torch.float64)
    loss, grads = bp.mse_gradients(p, x, y, activation=act)
    loss2, grads2 = bp.autograd_gradients(p, x, y, activation=act)
    assert abs(float(loss - loss2)) <= 1e-14 * max(1.0, float(loss2))
    assert bp.relative_error(grads, grads2) <= 1e-12
    for (W, b), (dW, db) in zip(p, grads):
        assert dW.shape == W.shape and (db is None) == (b is None)


def test_custom_activation_pair():
    pair = (torch.sin, torch.cos)
    p = bp.init_params([2, 4, 1], seed=0)
    x = torch.randn(3, 2, dtype=torch.float64)
    y = torch.zeros(3, 1, dtype=torch.float64)
    _, g1 = bp.mse_gradients(p, x, y, activation=pair)
    _, g2 = bp.autograd_gradients(p, x, y, activation=pair)
    assert bp.relative_error(g1, g2) < 1e-12


def test_param_count():
    assert bp.param_count([3, 4, 2]) == 3 * 4 + 4 + 4 * 2 + 2
    assert bp.param_count([3, 4, 2], bias=False) == 20
    p = bp.init_params([7, 5, 5, 1])
    assert bp.param_count([7, 5, 5, 1]) == sum(W.numel() + b.numel() for W, b in p)


def test_init_variance():
    p = bp.init_params([400, 300, 1], weight_var=2.0, bias_std=0.5, seed=4)
    W, b = p[0]
    assert abs(float(W.var()) * 400 / 2.0 - 1) < 0.02
    assert abs(float(b.std()) / 0.5 - 1) < 0.15


def test_deltas_and_cache():
    p = bp.init_params([2, 3, 1], seed=0)
    x = torch.randn(4, 2, dtype=torch.float64)
    c = bp.forward(p, x)
    assert len(c.ys) == 2 and len(c.xs) == 2 and c.output.shape == (4, 1)
    grads, deltas = bp.backward(p, c, torch.ones(4, 1, dtype=torch.float64), return_deltas=True)
    assert deltas[-1].shape == (4, 1) and deltas[0].shape == (4, 3)


def test_saddle_at_zero():
    x = torch.randn(8, 3, dtype=torch.float64)
    y = torch.randn(8, 1, dtype=torch.float64)
    for widths in ([3, 5, 1], [3, 5, 5, 1]):
        p = [(torch.zeros_like(W), None) for W, _ in bp.init_params(widths, bias=False)]
        _, grads = bp.mse_gradients(p, x, y, activation="tanh")
        assert all(float(dW.abs().max()) == 0.0 for dW, _ in grads)


def test_gradient_descent_decreases_and_diverges():
    x = torch.linspace(-1, 1, 16, dtype=torch.float64)[:, None]
    y = torch.sin(2 * x)
    p = bp.init_params([1, 8, 1], seed=0)
    losses, _ = bp.gradient_descent(p, x, y, lr=0.1, steps=200, activation="tanh")
    assert losses.shape == (201,) and losses[-1] < 0.5 * losses[0]
    with pytest.raises(mflib.Diverged):
        bp.gradient_descent(p, x, 1e3 * y, lr=1e3, steps=50, activation="relu")


def test_timing_ratio_small():
    t = bp.time_forward_backward([64, 256, 256, 1], batch=64, repeats=9)
    assert t.forward > 0 and t.backward > 0
    assert t.ratio < 5 and t.autograd_ratio < 5
    assert torch.get_num_threads() >= 1


def test_bad_inputs():
    with pytest.raises(TypeError, match="widths"):
        bp.param_count(3)
    with pytest.raises(ValueError, match="widths"):
        bp.param_count([3])
    with pytest.raises(ValueError, match="widths"):
        bp.param_count([3, 0, 1])
    with pytest.raises(ValueError, match="weight_var"):
        bp.init_params([2, 2], weight_var=-1.0)
    with pytest.raises(ValueError, match="activation"):
        bp.activation("softplus2")
    with pytest.raises(TypeError, match="activation"):
        bp.activation(3)
    p = bp.init_params([2, 3, 1])
    with pytest.raises(ValueError, match="x"):
        bp.forward(p, torch.zeros(4, 5, dtype=torch.float64))
    with pytest.raises(TypeError, match="x"):
        bp.forward(p, [[0.0, 0.0]])
    with pytest.raises(ValueError, match="grad_output"):
        bp.backward(p, bp.forward(p, torch.zeros(4, 2, dtype=torch.float64)),
                    torch.zeros(3, 1, dtype=torch.float64))
    with pytest.raises(ValueError, match="params"):
        bp.forward([p[0], (torch.zeros(1, 7, dtype=torch.float64), None)],
                   torch.zeros(4, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="lr"):
        bp.gradient_descent(p, torch.zeros(4, 2, dtype=torch.float64),
                            torch.zeros(4, 1, dtype=torch.float64), lr=0.0, steps=1)
    with pytest.raises(ValueError, match="y"):
        bp.mse_gradients(p, torch.zeros(4, 2, dtype=torch.float64),
                         torch.zeros(4, 2, dtype=torch.float64))
