import numpy as np
import pytest
import torch

import mflib
from mflib import config


def test_device_default_and_override(monkeypatch):
    config.device.cache_clear()
    monkeypatch.delenv("MFLIB_DEVICE", raising=False)
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert config.device().type == expected
    config.device.cache_clear()
    monkeypatch.setenv("MFLIB_DEVICE", "cpu")
    assert config.device() == torch.device("cpu")
    config.device.cache_clear()


def test_device_rejects_bad_names(monkeypatch):
    config.device.cache_clear()
    monkeypatch.setenv("MFLIB_DEVICE", "warp-drive")
    with pytest.raises(ValueError, match="MFLIB_DEVICE"):
        config.device()
    config.device.cache_clear()
    if not torch.cuda.is_available():
        monkeypatch.setenv("MFLIB_DEVICE", "cuda")
        with pytest.raises(ValueError, match="MFLIB_DEVICE"):
            config.device()
    config.device.cache_clear()


def test_quick_mode(monkeypatch):
    monkeypatch.setenv("MFLIB_QUICK", "1")
    assert config.quick() and config.sizes(100, 3) == 3
    monkeypatch.setenv("MFLIB_QUICK", "0")
    assert not config.quick() and config.sizes(100, 3) == 100
    monkeypatch.delenv("MFLIB_QUICK")
    assert not config.quick()
    monkeypatch.setenv("MFLIB_QUICK", "maybe")
    with pytest.raises(ValueError, match="MFLIB_QUICK"):
        config.quick()


def test_seed_everything_reproducible():
    g1 = mflib.seed_everything(3)
    a = torch.randn(4, generator=g1), torch.randn(2), np.random.rand()
    g2 = mflib.seed_everything(3)
    b = torch.randn(4, generator=g2), torch.randn(2), np.random.rand()
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[2] == b[2]


@pytest.mark.parametrize("bad, err", [(-1, ValueError), (1.5, TypeError), (True, TypeError), ("3", TypeError)])
def test_seed_rejects_bad(bad, err):
    with pytest.raises(err, match="seed"):
        mflib.seed_everything(bad)
    with pytest.raises(err, match="seed"):
        mflib.generator(bad)


def test_default_dtype_is_float64():
    assert mflib.DTYPE == torch.float64
