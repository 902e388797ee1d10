"""Root pytest configuration.

* Quick mode: every test, and every notebook kernel that nbval starts,
  sees ``MFLIB_QUICK=1`` and ``MFLIB_QUIET=1``.
* Notebooks: nbval collects only ``.ipynb`` files; the lectures (and the
  computed pages of ``book/``) are Jupytext MyST Markdown files, so they are
  read with ``jupytext.read``
  and handed to nbval as notebooks (no ``.ipynb`` is ever written).
* ``gpu`` tests are skipped where CUDA is absent.
"""

from __future__ import annotations

import os
import types

os.environ["MFLIB_QUICK"] = "1"
os.environ["MFLIB_QUIET"] = "1"
os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
# Two xdist workers, each with a notebook kernel, share two cores: one
# thread apiece avoids oversubscription (set before torch is imported).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402


def _is_lecture(file_path) -> bool:
    """A Jupytext MyST notebook: a lecture, or a computed page of the book."""
    return (file_path.suffix == ".md" and "_build" not in file_path.parts
            and file_path.read_text(encoding="utf-8").startswith("---\njupytext:"))


def pytest_collect_file(file_path, parent):
    opt = parent.config.option
    if (getattr(opt, "nbval", False) or getattr(opt, "nbval_lax", False)) and _is_lecture(file_path):
        return JupytextNotebook.from_parent(parent, path=file_path)
    return None


try:
    import nbformat
    import jupytext
    from nbval import plugin as _nbval

    class _ReadThroughJupytext(types.ModuleType):
        """Stand-in for the ``nbformat`` module inside nbval: reads with jupytext."""

        def __getattr__(self, name):
            return getattr(nbformat, name)

        @staticmethod
        def read(path, as_version=4):
            return jupytext.read(path)

    _nbval.nbformat = _ReadThroughJupytext("nbformat")

    class JupytextNotebook(_nbval.IPyNbFile):
        """A lecture source file run by nbval, cell by cell, in one kernel."""

except ImportError:  # pragma: no cover - nbval is a test requirement
    JupytextNotebook = None


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Tests use tiny tensors: one intra-op thread per worker is much faster
    than two competing ones on a shared two-core machine."""
    import torch

    torch.set_num_threads(1)
    yield


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device; none is present here")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
