"""mflib: the library behind the executable lecture notes on the theory of
neural-network optimisation.

Submodules are imported on demand (``from mflib import kernels``); this file
only exposes the configuration.
"""

from mflib.config import DTYPE, device, generator, quick, seed_everything, sizes
from mflib._checks import Diverged

__all__ = ["DTYPE", "Diverged", "device", "generator", "quick", "seed_everything", "sizes"]
__version__ = "0.1.0"
