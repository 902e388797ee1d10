"""The Colab notebooks (tools/colab_notebooks.py), and one of them run the way
Colab runs it.

Colab is simulated by a fresh virtual environment that holds only what
Colab's image already provides and the page needs (PyTorch, NumPy, SciPy,
matplotlib, scikit-learn, tqdm, ipywidgets and the IPython kernel, linked from
this environment rather than downloaded again), plus an importable
``google.colab``.  Neither ``mflib`` nor ``myst-nb`` is there and the
repository is not on the path: the notebook's own first cell must install
them (mflib from a copy of this checkout, through ``MFLIB_INSTALL``; myst-nb from the
package index, through pip's cache), and the rest must then run top to bottom
in quick mode.  One short lecture is run (Lecture 2, about 15 s of kernel
time in quick mode); the other notebooks differ only in the page they hold.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import colab_notebooks  # noqa: E402

PAGE = "lectures/02_fully_connected"
# What Colab's image already has, among what the pages import.
COLAB_PROVIDES = ["torch", "numpy", "scipy", "matplotlib", "scikit-learn", "tqdm",
                  "ipywidgets", "ipykernel"]


def test_every_notebook_page_gets_a_colab_notebook(tmp_path):
    written = colab_notebooks.main([str(tmp_path), "--ref", "main"])
    lectures = sorted(f"lectures/{p.name}" for p in (ROOT / "lectures").glob("*.md"))
    got = sorted(p.relative_to(tmp_path).with_suffix(".md").as_posix() for p in written)
    assert set(lectures) <= set(got), f"lectures without a Colab notebook: {set(lectures) - set(got)}"
    for path in written:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        first = nb.cells[0]
        assert first.cell_type == "code" and colab_notebooks.MARKER in first.metadata["tags"]
        assert "git+https://github.com/" in first.source and "@main" in first.source
        assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code")
        assert "jupytext" not in nb.metadata


def test_install_cell_does_nothing_outside_colab(monkeypatch):
    source = colab_notebooks.install_cell("mflib").source
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: calls.append(a))
    exec(compile(source, "<install cell>", "exec"), {})
    assert calls == []


def _closure(names: list[str]) -> list[md.Distribution]:
    """The installed distributions ``names`` and everything they require."""
    from packaging.requirements import Requirement

    seen, todo, out = set(), list(names), []
    while todo:
        name = re.sub(r"[-_.]+", "-", todo.pop()).lower()
        if name in seen:
            continue
        seen.add(name)
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue  # an optional requirement that is not installed
        out.append(dist)
        for req in dist.requires or []:
            r = Requirement(req)
            if r.marker is None or r.marker.evaluate({"extra": ""}):
                todo.append(r.name)
    return out


def _colab_image(base: Path) -> None:
    """Link the distributions Colab provides (and their requirements) into
    ``base`` and add an importable ``google.colab``."""
    site = Path(sysconfig.get_paths()["purelib"]).resolve()
    for dist in _closure(COLAB_PROVIDES):
        assert dist.metadata["Name"].lower() != "mflib"
        for entry in {Path(f).parts[0] for f in dist.files or [] if not str(f).startswith("..")}:
            src = Path(dist.locate_file(entry)).resolve()
            if src.exists() and src.parent == site and not (base / entry).exists() \
                    and not entry.endswith((".pth", "__pycache__")):
                (base / entry).symlink_to(src)
    (base / "google" / "colab").mkdir(parents=True)
    (base / "google" / "colab" / "__init__.py").write_text('"""Stands for Colab in tests/test_colab.py."""\n')


def test_colab_notebook_runs_in_a_fresh_environment(tmp_path):
    if os.name != "posix":
        pytest.skip("the simulated Colab environment uses POSIX symlinks")
    colab_notebooks.main([str(tmp_path / "nb")])
    nb_path = tmp_path / "nb" / f"{PAGE}.ipynb"
    assert nb_path.exists()

    # nothing of this checkout or of this environment leaks into the kernel
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"}}
    venv, base = tmp_path / "venv", tmp_path / "colab-image"
    base.mkdir()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    venv_site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                    check=True, capture_output=True, text=True, env=env).stdout.strip())
    _colab_image(base)
    (venv_site / "colab_image.pth").write_text(str(base) + "\n")
    # the fresh environment has neither mflib nor myst-nb
    probe = subprocess.run([str(python), "-c", "import importlib.util as u; "
                            "print(u.find_spec('mflib'), u.find_spec('myst_nb'), u.find_spec('torch') is not None)"],
                           check=True, capture_output=True, text=True, cwd=tmp_path, env=env).stdout.split()
    assert probe == ["None", "None", "True"], probe

    kernels = tmp_path / "jupyter" / "kernels" / "colab"
    kernels.mkdir(parents=True)
    (kernels / "kernel.json").write_text(
        '{"argv": ["%s", "-m", "ipykernel_launcher", "-f", "{connection_file}"], '
        '"display_name": "simulated Colab", "language": "python"}' % python)
    # "from the repository": pip builds mflib from a copy of this checkout's
    # package files, as it does from a git clone (and leaves no build/ here)
    src = tmp_path / "repository"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "mflib", src / "mflib", ignore=shutil.ignore_patterns("__pycache__"))
    env.update(JUPYTER_PATH=str(tmp_path / "jupyter"), MFLIB_INSTALL=str(src),
               MFLIB_QUICK="1", MFLIB_QUIET="1", OMP_NUM_THREADS="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    out = tmp_path / "executed.ipynb"
    run = ("import sys, nbformat, nbclient; nb = nbformat.read(sys.argv[1], as_version=4); "
           "nbclient.NotebookClient(nb, kernel_name='colab', timeout=600).execute(); "
           "nbformat.write(nb, sys.argv[2])")
    proc = subprocess.run([sys.executable, "-c", run, str(nb_path), str(out)],
                          cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"the Colab notebook of {PAGE} failed:\n{proc.stderr[-6000:]}"
    executed = nbformat.read(out, as_version=4)
    assert all(c.get("execution_count") for c in executed.cells if c.cell_type == "code")
    # mflib came from the install cell, into the fresh environment
    where = subprocess.run([str(python), "-c", "import mflib; print(mflib.__file__)"],
                           check=True, capture_output=True, text=True, cwd=tmp_path, env=env).stdout.strip()
    assert where.startswith(str(venv)), where
