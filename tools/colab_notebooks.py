"""Convert the book's notebook pages to ``.ipynb`` files that Colab can open.

    python tools/colab_notebooks.py OUTDIR [--repo URL] [--ref REF]

Every page of ``_toc.yml`` that is a Jupytext notebook (the lectures and the
computed pages of ``book/``) becomes ``OUTDIR/<its path>.ipynb``, without
outputs.  Its first cell installs ``mflib`` from the repository (and
``myst-nb``, whose ``glue`` the pages call) when it runs in Colab, and does
nothing anywhere else: a local reader has installed ``requirements.txt``.
Colab already provides PyTorch, NumPy, SciPy, matplotlib, scikit-learn, tqdm
and ipywidgets.

The publishing workflow (``.github/workflows/book.yml``) runs this command and
pushes ``OUTDIR`` to the ``notebooks`` branch, where the Colab button of each
page points (``book/_ext/mflib_book.py``).  ``tests/test_colab.py`` runs one
generated notebook the way Colab does, in a fresh environment.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import jupytext
import nbformat

ROOT = Path(__file__).resolve().parents[1]
MARKER = "mflib-colab-install"

INSTALL_CELL = '''\
# In Colab only: install mflib from the repository, and myst-nb (its `glue` is
# used below).  Anywhere else this cell does nothing: install the repository's
# requirements.txt instead.  MFLIB_INSTALL overrides what is installed.
import importlib.util, os, subprocess, sys
if importlib.util.find_spec("google") and importlib.util.find_spec("google.colab"):
    subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                    os.environ.get("MFLIB_INSTALL", {spec!r}), "myst-nb"], check=True)'''


def _config() -> tuple[str, str]:
    """Repository URL and branch from ``_config.yml``."""
    text = (ROOT / "_config.yml").read_text(encoding="utf-8")
    block = text.split("\nrepository:", 1)[1]
    url = re.search(r"^\s+url:\s*(\S+)", block, re.M).group(1)
    branch = re.search(r"^\s+branch:\s*(\S+)", block, re.M).group(1)
    return url, branch


def notebook_pages(root: Path = ROOT) -> list[Path]:
    """The pages of ``_toc.yml`` that are Jupytext notebooks, in book order."""
    toc = (root / "_toc.yml").read_text(encoding="utf-8")
    pages = []
    for name in re.findall(r"^\s*(?:-\s*)?(?:file|root):\s*(\S+)", toc, flags=re.M):
        path = root / f"{name}.md"
        head = path.read_text(encoding="utf-8").split("\n---", 1)[0] if path.exists() else ""
        if head.startswith("---") and "kernelspec:" in head:
            pages.append(path)
    return pages


def install_cell(spec: str) -> nbformat.NotebookNode:
    cell = nbformat.v4.new_code_cell(INSTALL_CELL.format(spec=spec))
    cell.metadata["tags"] = [MARKER]
    return cell


def convert(page: Path, spec: str) -> nbformat.NotebookNode:
    """One page as a notebook whose first cell is the Colab install cell."""
    nb = jupytext.read(page)
    nb.metadata.pop("jupytext", None)  # a plain notebook, not paired with the .md
    nb.cells.insert(0, install_cell(spec))
    return nb


def main(argv: list[str] | None = None) -> list[Path]:
    url, branch = _config()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--repo", default=url, help=f"repository to install mflib from (default {url})")
    parser.add_argument("--ref", default=branch, help=f"branch, tag or commit (default {branch})")
    args = parser.parse_args(argv)
    spec = f"mflib @ git+{args.repo.rstrip('/')}.git@{args.ref}"
    written = []
    for page in notebook_pages():
        out = args.outdir / page.relative_to(ROOT).with_suffix(".ipynb")
        out.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(convert(page, spec), out)
        written.append(out)
    print(f"{len(written)} notebooks written under {args.outdir} (mflib from {spec})")
    return written


if __name__ == "__main__":
    main(sys.argv[1:])
