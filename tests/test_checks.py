import math

import pytest
import torch

from mflib import _checks


def test_tensor_checks():
    x = torch.zeros(3, 2)
    assert _checks.tensor(x, "x", ndim=2) is x
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        _checks.tensor([1.0], "x")
    with pytest.raises(ValueError, match="x must have 1 dimensions"):
        _checks.tensor(x, "x", ndim=1)
    with pytest.raises(ValueError, match="x contains non-finite"):
        _checks.tensor(torch.tensor([math.nan]), "x")
    with pytest.raises(TypeError, match="x must be a floating-point"):
        _checks.tensor(torch.zeros(2, dtype=torch.long), "x")
    assert _checks.tensor(torch.zeros(2, dtype=torch.long), "x", floating=False) is not None


def test_scalar_checks():
    assert _checks.integer(3, "m", minimum=1) == 3
    with pytest.raises(ValueError, match="m must be >= 1"):
        _checks.integer(0, "m", minimum=1)
    with pytest.raises(TypeError, match="m must be an int"):
        _checks.integer(2.0, "m")
    with pytest.raises(TypeError, match="m must be an int"):
        _checks.integer(True, "m")
    assert _checks.real(torch.tensor(2.0), "lr", positive=True) == 2.0
    with pytest.raises(ValueError, match="lr must be > 0"):
        _checks.real(0.0, "lr", positive=True)
    with pytest.raises(ValueError, match="lr must be finite"):
        _checks.real(math.inf, "lr")
    with pytest.raises(TypeError, match="lr must be a real number"):
        _checks.real("1", "lr")
    with pytest.raises(ValueError, match="lam must be >= 0"):
        _checks.real(-1.0, "lam", nonnegative=True)
    with pytest.raises(ValueError, match="act must be one of"):
        _checks.choice("gelu", "act", {"relu", "erf"})
    with pytest.raises(ValueError, match="x and y must have the same number of rows"):
        _checks.same_rows(torch.zeros(3), torch.zeros(4), "x", "y")
