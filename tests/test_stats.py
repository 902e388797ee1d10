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


# ----------------------------------------------------------------------------- relaxation_fit
def _relaxing(law, reps=8, noise=0.02, seed=0):
    """Curves c_r(t) = 1 + g(t) + AR(1) noise (correlated in time, as in a particle system)."""
    import math
    g = torch.Generator().manual_seed(seed)
    t = torch.linspace(0, 100, 401, dtype=torch.float64)
    base = {"exp": lambda t: -2.0 * torch.exp(-0.1 * t),
            "power": lambda t: -2.0 * (1 + t / 3) ** -1.5}[law](t)
    e = torch.zeros(reps, t.numel(), dtype=torch.float64)
    z = torch.randn(reps, t.numel(), generator=g, dtype=torch.float64)
    rho = math.exp(-0.25)                      # correlation time 4 time units (0.25 per step)
    e[:, 0] = z[:, 0]
    for k in range(1, t.numel()):
        e[:, k] = rho * e[:, k - 1] + math.sqrt(1 - rho ** 2) * z[:, k]
    return t, 1.0 + base + noise * e


def test_relaxation_fit_recovers_an_exponential_rate():
    from mflib.stats import relaxation_fit
    hits = 0
    for seed in range(5):
        t, c = _relaxing("exp", seed=seed)
        fit = relaxation_fit(t, c, t_min=2.0, tail=0.4, threshold=3.0)
        assert fit.rate.se > 0 and fit.rate.n >= 4 and fit.window[0] >= 2.0
        hits += abs(fit.rate.value + 0.1) <= 3 * fit.rate.se
        assert abs(fit.halves.value) <= 4 * fit.halves.se + 1e-3
        assert fit.stationary.value == pytest.approx(1.0, abs=5 * fit.stationary.se + 1e-3)
    assert hits >= 4


def test_relaxation_fit_halves_detect_a_power_law():
    from mflib.stats import relaxation_fit
    t, c = _relaxing("power", noise=0.002)
    fit = relaxation_fit(t, c, t_min=2.0, tail=0.3)
    # rate 1.5 / (3 + t) decreases along the window: the first half is steeper
    assert fit.halves.value < -3 * fit.halves.se


def test_relaxation_fit_bad_input():
    from mflib.stats import relaxation_fit
    t, c = _relaxing("exp")
    with pytest.raises(ValueError, match="curves"):
        relaxation_fit(t, c[:1], t_min=1.0)
    with pytest.raises(ValueError, match="times"):
        relaxation_fit(t.flip(0), c, t_min=1.0)
    with pytest.raises(ValueError, match="t_min"):
        relaxation_fit(t, c, t_min=99.0)
    with pytest.raises(ValueError, match="threshold"):
        relaxation_fit(t, c, t_min=1.0, threshold=1e9)
    with pytest.raises(ValueError, match="tail"):
        relaxation_fit(t, c, t_min=1.0, tail=0.001)
    with pytest.raises(TypeError, match="curves"):
        relaxation_fit(t, "abc", t_min=1.0)
