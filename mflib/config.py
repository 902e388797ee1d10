"""Explicit, process-wide configuration: device, dtype, quick mode and seeding.

Everything in :mod:`mflib` that needs a device, a default dtype or a size
asks this module, so that a notebook behaves the same on a CPU laptop and on
a GPU box, and so that the test suite can shrink every experiment at once.

Environment variables (read once, at first use):

``MFLIB_DEVICE``
    ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ... Overrides the automatic choice
    (CUDA when available, else CPU).
``MFLIB_QUICK``
    ``"1"`` switches quick mode on: notebooks run at reduced sizes. The test
    suite sets it; the book build does not.
"""

from __future__ import annotations

import os
import random
from functools import lru_cache

import numpy as np
import torch

from mflib import _checks

__all__ = ["device", "quick", "sizes", "seed_everything", "DTYPE", "generator"]

#: The library's default floating dtype, ``torch.float64``, because most of
#: the book compares numerics against closed forms.  Speed-critical engines
#: take a ``dtype`` argument and use float32 where their tolerance allows.
DTYPE = torch.float64

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}


@lru_cache(maxsize=None)
def device() -> torch.device:
    """Return the device every experiment runs on.

    CUDA when it is available, else the CPU; the environment variable
    ``MFLIB_DEVICE`` overrides the choice.

    Raises
    ------
    ValueError
        If ``MFLIB_DEVICE`` names a device that does not exist here.
    """
    name = os.environ.get("MFLIB_DEVICE", "").strip()
    if not name:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"MFLIB_DEVICE={name!r} is not a torch device name") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"MFLIB_DEVICE={name!r} asks for CUDA, which is not available here")
    return dev


def quick() -> bool:
    """Return True in quick mode (``MFLIB_QUICK=1``, set by the test suite).

    Raises
    ------
    ValueError
        If ``MFLIB_QUICK`` holds something other than a boolean word.
    """
    raw = os.environ.get("MFLIB_QUICK", "").strip().lower()
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise ValueError(f"MFLIB_QUICK must be 0 or 1, got {raw!r}")


def sizes(full, quick_value):
    """Pick a size: ``full`` for the book, ``quick_value`` in quick mode.

    A notebook writes ``n_steps = sizes(20_000, 500)`` once in its setup cell,
    so that the book shows full sizes and the test suite stays fast.
    """
    return quick_value if quick() else full


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch (CPU and CUDA) and return a CPU generator.

    Parameters
    ----------
    seed : int
        An integer in :math:`[0, 2^{63})`.

    Returns
    -------
    torch.Generator
        A fresh CPU generator seeded with ``seed``; pass it to functions that
        draw random numbers so that a cell's results do not depend on what
        ran before it.
    """
    seed = _checks.seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return generator(seed)


def generator(seed: int) -> torch.Generator:
    """Return a CPU ``torch.Generator`` seeded with ``seed``.

    Random draws in :mod:`mflib` are made on the CPU with an explicit
    generator and then moved to the target device, so that a seed gives the
    same numbers on every device.  ``seed`` is an integer in :math:`[0, 2^{63})`.
    """
    seed = _checks.seed(seed)
    g = torch.Generator(device="cpu")
    g.manual_seed(seed)
    return g
