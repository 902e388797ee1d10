"""The book's execution cache re-runs a page when a library module it
imports changes, and only then (book/_ext/mflib_book.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "book" / "_ext"))
import mflib_book  # noqa: E402

PAGE = """---
jupytext:
  text_representation:
    extension: .md
    format_name: myst
kernelspec:
  display_name: Python 3
  language: python
  name: python3
---

# Page {name}

```{{code-cell}} ipython3
{code}
```
"""


def _write_book(tmp: Path) -> None:
    pkg = tmp / "fakelib"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from fakelib import base\n")
    (pkg / "base.py").write_text("ONE = 1\n")
    (pkg / "alpha.py").write_text("from fakelib.base import ONE\n\ndef f():\n    return ONE + 1\n")
    (pkg / "beta.py").write_text("def g():\n    return 3\n")
    (tmp / "a.md").write_text(PAGE.format(name="a", code="from fakelib import alpha\nprint(alpha.f())"))
    (tmp / "b.md").write_text(PAGE.format(name="b", code="import fakelib.beta as beta\nprint(beta.g())"))
    (tmp / "c.md").write_text(PAGE.format(name="c", code="print(42)"))
    (tmp / "intro.md").write_text("# Intro\n")
    (tmp / "_toc.yml").write_text("format: jb-book\nroot: intro\nchapters:\n- file: a\n- file: b\n- file: c\n")
    (tmp / "_config.yml").write_text(textwrap.dedent(f"""\
        title: cache test
        only_build_toc_files: true
        execute:
          execute_notebooks: cache
        sphinx:
          local_extensions:
            mflib_book: {ROOT / 'book' / '_ext'}
          config:
            mflib_cache_package: fakelib
            nb_execution_raise_on_error: true
        """))


def _build(tmp: Path) -> set[str]:
    """Build and return the pages whose notebook was executed."""
    jb = Path(sys.executable).with_name("jupyter-book")
    env = dict(os.environ, PYTHONPATH=f"{tmp}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    proc = subprocess.run([str(jb) if jb.exists() else "jupyter-book", "build", str(tmp), "-W"],
                          cwd=tmp, env=env, capture_output=True, text=True)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    return {page for page in "abc" for line in log.splitlines()
            if f"{os.sep}{page}.md: Executing notebook" in line}


def test_fingerprint_follows_imports():
    fp = mflib_book.library_fingerprint
    assert fp(["x = 1"]) == ""
    assert fp(["import mflib"]) != ""
    # plotting imports _checks; the fingerprint differs from the bare package's
    assert fp(["from mflib import plotting"]) != fp(["import mflib"])
    assert fp(["from mflib import plotting"]) == fp(["import mflib.plotting as p"])


@pytest.mark.book
def test_changing_a_module_reexecutes_exactly_its_pages(tmp_path):
    _write_book(tmp_path)
    assert _build(tmp_path) == {"a", "b", "c"}
    # Nothing changed in the library: nothing runs again.
    (tmp_path / "intro.md").write_text("# Intro, edited\n")
    assert _build(tmp_path) == set()
    # A module that page a imports only indirectly (alpha -> base) changes;
    # b imports fakelib.beta, hence the package __init__, which imports base.
    (tmp_path / "fakelib" / "base.py").write_text("ONE = 10\n")
    assert _build(tmp_path) == {"a", "b"}
    # beta changes: only b runs again.
    (tmp_path / "fakelib" / "beta.py").write_text("def g():\n    return 4\n")
    assert _build(tmp_path) == {"b"}
