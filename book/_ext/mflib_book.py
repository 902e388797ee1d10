"""Sphinx extension of the book: offline MathJax, quiet progress bars.

* MathJax 3 is served from the book itself (``_static/mathjax``), copied from
  the ``django-static-mathjax`` package, so that pages typeset with no
  network.
* Scripts registered twice by other extensions are de-duplicated, and the
  theme gets a default colour mode, so that pages load with no JavaScript
  error.
* Kernels started by the build inherit ``MFLIB_QUIET=1``: progress bars are
  shown when a reader runs a notebook, never in the built pages.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

MATHJAX_ENTRY = "mathjax/tex-chtml-full.js"


def _mathjax_source() -> Path:
    import mathjax  # provided by django-static-mathjax

    src = Path(mathjax.__file__).parent / "static" / "mathjax" / "es5"
    if not (src / "tex-chtml-full.js").exists():
        raise RuntimeError(f"MathJax not found under {src}; reinstall django-static-mathjax")
    return src


def _config_inited(app, config):
    os.environ["MFLIB_QUIET"] = "1"
    config.mathjax_path = MATHJAX_ENTRY
    # pydata-sphinx-theme logs a console error when no default mode is set.
    config.html_context.setdefault("default_mode", "light")


def _dedupe_scripts(app, pagename, templatename, context, doctree):
    """Drop scripts added twice (sphinx-thebe registers its inline
    configuration once per read phase, which redeclares a ``const``)."""
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, unique = set(), []
    for js in scripts:
        key = (str(getattr(js, "filename", js) or ""),
               repr(sorted(getattr(js, "attributes", {}).items())))
        if key not in seen:
            seen.add(key)
            unique.append(js)
    scripts[:] = unique  # in place: later handlers append to this very list


def _copy_mathjax(app, exception):
    if exception is not None or app.builder.format != "html":
        return
    dest = Path(app.outdir) / "_static" / "mathjax"
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(_mathjax_source(), dest,
                    ignore=shutil.ignore_patterns("*-speech.js", "*.map", "sre", "mml-svg*"))


def setup(app):
    _mathjax_source()  # fail early with a clear message
    app.connect("config-inited", _config_inited)
    app.connect("html-page-context", _dedupe_scripts, priority=100)
    app.connect("build-finished", _copy_mathjax)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
