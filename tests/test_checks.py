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


def test_dtype_and_pair_checks():
    for bad in (torch.int64, torch.bool, torch.float16, torch.bfloat16):
        with pytest.raises(TypeError, match="x must be a floating-point"):
            _checks.tensor(torch.zeros(2, dtype=bad), "x")
    with pytest.raises(TypeError, match="x must be a real tensor"):
        _checks.tensor(torch.zeros(2, dtype=torch.complex64), "x")
    with pytest.raises(TypeError, match="x must be a real tensor"):
        _checks.tensor(torch.zeros(2, dtype=torch.complex64), "x", floating=False)
    with pytest.raises(ValueError, match="x must not be empty"):
        _checks.tensor(torch.zeros(0, 2), "x", nonempty=True)
    with pytest.raises(ValueError, match=r"x must have shape \(\*, 3\)"):
        _checks.tensor(torch.zeros(2, 2), "x", shape=(None, 3))
    with pytest.raises(TypeError, match="w0 and x must have the same dtype"):
        _checks.matching(torch.zeros(2), torch.zeros(2, dtype=torch.float64), "w0", "x")
    with pytest.raises(ValueError, match="a and b must have the same shape"):
        _checks.same_shape(torch.zeros(2), torch.zeros(3), "a", "b")
    assert _checks.dtype(None, default=torch.float64) is torch.float64
    with pytest.raises(TypeError, match="dtype must be a floating torch.dtype"):
        _checks.dtype(torch.int32)
    with pytest.raises(TypeError, match="dtype must be a floating torch.dtype"):
        _checks.dtype("float32")


def test_device_generator_flag_and_size_checks():
    assert _checks.device(None) == torch.device("cpu")
    assert _checks.device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="device must name a torch device"):
        _checks.device("nonsense")
    with pytest.raises(TypeError, match="device must be a device name"):
        _checks.device(42)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device='cuda' asks for CUDA"):
            _checks.device("cuda")
    # generator=None: a fixed seed, not the global random state
    a = torch.rand(3, generator=_checks.generator(None))
    torch.manual_seed(99)
    assert torch.equal(a, torch.rand(3, generator=_checks.generator(None)))
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        _checks.generator(42)
    assert _checks.flag(True, "b") is True
    for bad in ("yes", 1, None):
        with pytest.raises(TypeError, match="b must be True or False"):
            _checks.flag(bad, "b")
    with pytest.raises(ValueError, match="n_models=1000000000000 is too large"):
        _checks.size(10 ** 12, "n_models")
    assert _checks.seed(2 ** 63 - 1) == 2 ** 63 - 1
    with pytest.raises(ValueError, match="seed must be <="):
        _checks.seed(2 ** 63)
    with pytest.raises(ValueError, match="i must be <= 2"):
        _checks.index(3, "i", 3)
    with pytest.raises(ValueError, match="i must be >= 0"):
        _checks.index(-1, "i", 3)
    with pytest.raises(ValueError, match="steps and x ask for about"):
        _checks.budget(1e20, "steps and x")
    with pytest.raises(ValueError, match="n and d ask for"):
        _checks.elements(2 ** 40, "n and d")


def test_real_overflow_interval_and_results():
    with pytest.raises(ValueError, match="weight_std=1e\\+300 is too large"):
        _checks.real(1e300, "weight_std")
    with pytest.raises(TypeError, match="noise must be a real number"):
        _checks.real(1j, "noise")
    with pytest.raises(TypeError, match="noise must be a real number"):
        _checks.real(torch.tensor(True), "noise")
    assert _checks.interval((0, 1), "a_range") == (0.0, 1.0)
    with pytest.raises(ValueError, match="a_range must be finite"):
        _checks.interval((math.nan, 1), "a_range")
    with pytest.raises(ValueError, match="a_range must have low <= high"):
        _checks.interval((2, 1), "a_range")
    with pytest.raises(TypeError, match="kinks must be a sequence of numbers"):
        _checks.reals("ab", "kinks")
    with pytest.raises(ValueError, match="the kernel is not finite.*weight_std"):
        _checks.finite_result(torch.tensor([math.inf]), "the kernel", "weight_std")
    with pytest.raises(ValueError, match="act must be one of"):
        _checks.choice(["relu"], "act", {"relu", "erf"})
