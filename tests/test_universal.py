import math

import pytest
import torch

from mflib import universal as U


def _data():
    x = torch.linspace(-1, 1, 200, dtype=torch.float64)
    y = torch.sin(3 * math.pi * x) + 0.5 * x.abs()
    return x, y


def test_relu_improves_with_width_polynomial_plateaus():
    x, y = _data()
    relu = [U.random_features_fit(x, y, x, y, width=m).train_rmse for m in (8, 32, 128)]
    assert relu[2] < 0.2 * relu[0]
    best3 = U.best_polynomial_error(x, y, 3)
    for m in (8, 64, 256):
        e = U.random_features_fit(x, y, x, y, width=m, activation="cube", weight_std=1.0)
        assert e.train_rmse >= best3 * (1 - 1e-8)
        assert e.train_rmse <= best3 * (1 + 1e-6)
    assert relu[2] < 0.1 * best3


def test_prediction_shape():
    x, y = _data()
    f = U.random_features_fit(x, y, x[:7], y[:7], width=5)
    assert f.prediction.shape == (7,)


def test_bad_inputs():
    x, y = _data()
    with pytest.raises(ValueError, match="width"):
        U.random_features_fit(x, y, x, y, width=0)
    with pytest.raises(ValueError, match="weight_std"):
        U.random_features_fit(x, y, x, y, width=3, weight_std=0.0)
    with pytest.raises(ValueError, match="x_train"):
        U.random_features_fit(x, y[:5], x, y, width=3)
    with pytest.raises(TypeError, match="degree"):
        U.best_polynomial_error(x, y, 2.0)


def test_best_polynomial_values_match_the_error():
    import math

    x = torch.linspace(-1, 1, 50, dtype=torch.float64)
    y = torch.sin(3 * x)
    universal = U
    v = universal.best_polynomial(x, y, x, 3)
    assert math.isclose(float(((v - y) ** 2).mean().sqrt()), universal.best_polynomial_error(x, y, 3), rel_tol=1e-10)
    assert torch.allclose(universal.best_polynomial(x, x ** 2, x, 2), x ** 2, atol=1e-12)
