import pytest
import torch

from mflib.stats import fit_slope


def test_exact_power_law():
    xs = [1.0, 2.0, 4.0, 8.0]
    assert fit_slope(xs, [3 * v ** -0.5 for v in xs]) == pytest.approx(-0.5, abs=1e-12)
    assert fit_slope(torch.tensor(xs), torch.tensor(xs) ** 2) == pytest.approx(2.0, abs=1e-12)


@pytest.mark.parametrize("x, y, name", [([1, 2], [1, -1], "y"), ([0, 2], [1, 2], "x"),
                                        ([1], [1], "length"), ([1, 2, 3], [1, 2], "length")])
def test_bad_input(x, y, name):
    with pytest.raises(ValueError, match=name):
        fit_slope(x, y)


def test_batch_means():
    import math

    import torch

    from mflib import stats

    g = torch.Generator().manual_seed(0)
    # an AR(1) series with correlation time 10: the naive standard error is too small
    z, x = torch.randn(20000, generator=g, dtype=torch.float64), []
    v = 0.0
    for t in range(20000):
        v = 0.9 * v + float(z[t])
        x.append(v)
    e = stats.batch_means(x, 20)
    true_se = math.sqrt(1 / (1 - 0.81)) * math.sqrt((1 + 0.9) / (1 - 0.9) / 20000)
    assert 0.6 < e.se / true_se < 1.5
    import pytest

    with pytest.raises(ValueError, match="n_batches"):
        stats.batch_means(x, 1)
    with pytest.raises(ValueError, match="samples"):
        stats.batch_means([1.0, 2.0], 2)
