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
