"""Sphinx extension of the book.

* **Offline MathJax.** MathJax 3 is served from the book itself
  (``_static/mathjax``), copied from the ``django-static-mathjax`` package,
  so that pages typeset with no network.
* **A cache that knows the library.** Jupyter Book's execution cache hashes a
  page's code cells only, so a change in ``mflib`` would leave stale pages.
  The hash of each page is extended with a fingerprint of the ``mflib``
  modules the page imports, followed transitively through the package's own
  imports: changing a module re-executes exactly the pages that depend on it.
* **Execution report.** After each build, ``_build/html/_static/execution_report.json``
  lists every executed page with its run time and whether it came from the
  cache; the same table is printed at the end of the build log.
* **Clean pages.** Scripts registered twice by other extensions are
  de-duplicated and the theme gets a default colour mode, so that pages load
  with no JavaScript error.
* Kernels started by the build inherit ``MFLIB_QUIET=1``: progress bars are
  shown when a reader runs a notebook, never in the built pages.
* **No dead code in the static book.** A code cell that only calls
  ``plotting.live_explorer(...)`` needs a live kernel; it is executed (so its
  ``render`` is exercised) but not shown: the page shows the static twin.
* **What a page costs to run.** Under the title of each lecture, its measured
  kernel time at full size and in quick mode, read from
  ``book/_ext/execution_times.json`` (regenerated from the execution report
  by ``python tools/execution_times.py``).
* **Colab.** The theme's Colab button would open the page's Markdown source,
  which Colab cannot read; it is pointed at the page's ``.ipynb`` on the
  ``mflib_notebooks_branch`` branch, where the publishing workflow puts the
  notebooks of ``tools/colab_notebooks.py``.
* **LaTeX/PDF.** The MathJax macros of ``_config.yml`` are turned into LaTeX
  ``\newcommand`` definitions, so that one list serves both builders.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
import os
import re
import shutil
from pathlib import Path

MATHJAX_ENTRY = "mathjax/tex-chtml-full.js"
PACKAGE = "mflib"
TIMES_FILE = Path(__file__).with_name("execution_times.json")


# --------------------------------------------------------------- MathJax
def _mathjax_source() -> Path:
    import mathjax  # provided by django-static-mathjax

    src = Path(mathjax.__file__).parent / "static" / "mathjax" / "es5"
    if not (src / "tex-chtml-full.js").exists():
        raise RuntimeError(f"MathJax not found under {src}; reinstall django-static-mathjax")
    return src


def _copy_mathjax(app, exception):
    if exception is not None or app.builder.format != "html":
        return
    dest = Path(app.outdir) / "_static" / "mathjax"
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(_mathjax_source(), dest,
                    ignore=shutil.ignore_patterns("*-speech.js", "*.map", "sre", "mml-svg*",
                                                  "tex-svg*", "tex-mml-svg*", "svg"))


# ------------------------------------------------- library-aware cache key
_IMPORT_RE = re.compile(
    r"^[ \t]*(?:from[ \t]+({pkg}(?:\.\w+)*)\s+import[ \t]+(\([\w\s,]*\)|[\w \t,*]+)|import[ \t]+({pkg}(?:\.\w+)*))".replace(
        "{pkg}", r"[A-Za-z_]\w*"), re.M)


def _package_dir(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _imported_modules(source: str, package: str, pkg_dir: Path) -> set[str]:
    """Modules of ``package`` (file stems, ``__init__`` for the package) that
    ``source`` imports."""
    found = set()
    for m in _IMPORT_RE.finditer(source):
        dotted = m.group(1) or m.group(3)
        if not dotted or dotted.split(".")[0] != package:
            continue
        found.add("__init__")
        parts = dotted.split(".")
        if len(parts) > 1:
            found.add(parts[1])
        elif m.group(2):  # from package import a, b
            for name in re.split(r"[\s,()]+", m.group(2)):
                if name and (pkg_dir / f"{name}.py").exists():
                    found.add(name)
    return {f for f in found if (pkg_dir / f"{f}.py").exists()}


def _module_imports(path: Path, package: str, pkg_dir: Path) -> set[str]:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except SyntaxError:
        return set()
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative import inside the package
                base = [node.module.split(".")[0]] if node.module else [a.name for a in node.names]
                out.update(base)
            elif node.module and node.module.split(".")[0] == package:
                parts = node.module.split(".")
                out.update([parts[1]] if len(parts) > 1 else [a.name for a in node.names])
        elif isinstance(node, ast.Import):
            for a in node.names:
                parts = a.name.split(".")
                if parts[0] == package and len(parts) > 1:
                    out.add(parts[1])
    return {m for m in out if (pkg_dir / f"{m}.py").exists()}


def library_fingerprint(sources: list[str], package: str = PACKAGE) -> str:
    """Hash of the source of every module of ``package`` that the code cells
    ``sources`` import, directly or through the package's own imports.

    Returns an empty string when the cells do not import the package.
    """
    pkg_dir = _package_dir(package)
    if pkg_dir is None:
        return ""
    todo = set()
    for src in sources:
        todo |= _imported_modules(src, package, pkg_dir)
    if not todo:
        return ""
    todo.add("__init__")  # importing a submodule runs the package's __init__
    seen: set[str] = set()
    while todo:
        mod = todo.pop()
        if mod in seen:
            continue
        seen.add(mod)
        todo |= _module_imports(pkg_dir / f"{mod}.py", package, pkg_dir) - seen
    digest = hashlib.sha256()
    for mod in sorted(seen):
        digest.update(mod.encode() + b"\0" + (pkg_dir / f"{mod}.py").read_bytes() + b"\0")
    return digest.hexdigest()


def _patch_execution_cache(package: str) -> None:
    from jupyter_cache.cache import main as jc

    original = jc.JupyterCacheBase.create_hashed_notebook
    if getattr(original, "_library_aware", False):
        return

    def create_hashed_notebook(self, nb, *args, **kwargs):
        hashed, key = original(self, nb, *args, **kwargs)
        fingerprint = library_fingerprint(
            [c.source for c in nb.cells if c.cell_type == "code"], package)
        if fingerprint:
            key = hashlib.md5((key + fingerprint).encode()).hexdigest()
        return hashed, key

    create_hashed_notebook._library_aware = True
    jc.JupyterCacheBase.create_hashed_notebook = create_hashed_notebook


def _source_read(app, docname, source):
    """Remember the library fingerprint of each page when it is read."""
    if not hasattr(app.env, "mflib_fingerprints"):
        app.env.mflib_fingerprints = {}
    app.env.mflib_fingerprints[docname] = library_fingerprint(
        [source[0]], app.config.mflib_cache_package)


def _outdated_by_library(app, env, added, changed, removed):
    """Sphinx re-reads only pages whose source changed; also re-read the pages
    whose library fingerprint changed (their cache key changed too, so they
    are executed again)."""
    stored = getattr(env, "mflib_fingerprints", {})
    outdated = []
    if getattr(env, "mflib_times_digest", None) != _times_digest():
        # new measured run times: re-read the lectures (their execution is cached)
        env.mflib_times_digest = _times_digest()
        outdated += [d for d in env.found_docs
                     if d.startswith("lectures/") and d not in added | changed | removed]
    for docname, old in stored.items():
        if docname in added or docname in changed or docname in removed:
            continue
        path = Path(env.doc2path(docname))
        if not path.exists():
            continue
        new = library_fingerprint([path.read_text(encoding="utf-8")], app.config.mflib_cache_package)
        if new != old and docname not in outdated:
            outdated.append(docname)
    return outdated


def _merge_fingerprints(app, env, docnames, other):
    env.mflib_fingerprints = {**getattr(env, "mflib_fingerprints", {}),
                              **{d: f for d, f in getattr(other, "mflib_fingerprints", {}).items()
                                 if d in docnames}}


def _purge_fingerprint(app, env, docname):
    getattr(env, "mflib_fingerprints", {}).pop(docname, None)


# ------------------------------------------------------- execution report
def _execution_report(app, exception):
    if exception is not None or app.builder.format != "html":
        return
    from myst_nb.sphinx_ import NbMetadataCollector

    rows = []
    for docname, data in sorted(NbMetadataCollector.get_doc_data(app.env).items()):
        exec_data = data.get("exec_data")
        if not exec_data:
            continue
        rows.append({"page": docname, "quick": quick_mode(), "method": exec_data.get("method"),
                     "seconds": exec_data.get("runtime"),
                     "succeeded": exec_data.get("succeeded"),
                     "executed_at": exec_data.get("mtime")})
    out = Path(app.outdir) / "_static" / "execution_report.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=2))
    if rows:
        lines = ["", "Execution report (seconds of kernel time per page):"]
        for r in sorted(rows, key=lambda r: -(r["seconds"] or 0)):
            secs = f"{r['seconds']:8.1f}" if r["seconds"] is not None else "       -"
            lines.append(f"  {secs}  {r['page']}  ({'ok' if r['succeeded'] else 'FAILED'})")
        total = sum(r["seconds"] or 0 for r in rows)
        lines.append(f"  {total:8.1f}  total")
        print("\n".join(lines))


def quick_mode() -> bool:
    """True when the build's kernels run in quick mode (``MFLIB_QUICK``)."""
    return os.environ.get("MFLIB_QUICK", "").strip().lower() in {"1", "true", "yes", "on"}


# ------------------------------------------------ live-explorer cells
def _only_live_explorer(source: str) -> bool:
    """True when every statement of ``source`` is a call of ``live_explorer``."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return False
    if not tree.body:
        return False
    for stmt in tree.body:
        if not (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call)):
            return False
        func = stmt.value.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        if name != "live_explorer":
            return False
    return True


def _remove_live_explorer_cells(app, doctree):
    from docutils import nodes

    for cell in list(doctree.findall(nodes.container)):
        if cell.get("nb_element") != "cell_code":
            continue
        blocks = [b for b in cell.findall(nodes.literal_block)
                  if b.parent.get("nb_element") == "cell_code_source"]
        if blocks and all(_only_live_explorer(b.astext()) for b in blocks):
            cell.parent.remove(cell)


# ------------------------------------------------------- run time per page
def _format_seconds(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes, rest = divmod(seconds, 60)
    return f"{minutes} min {rest:02d} s"


def runtime_sentence(docname: str, times: dict) -> str | None:
    """The sentence shown under a lecture's title, or None without data."""
    parts = []
    for mode, label, extra in (("full", "at full size", None), ("quick", "in quick mode", "MFLIB_QUICK=1")):
        entry = times.get(mode, {})
        secs = entry.get("pages", {}).get(docname)
        if secs is not None:
            where = "; ".join(x for x in (extra, entry.get("machine"), entry.get("measured")) if x)
            parts.append(f"{_format_seconds(secs)} {label}" + (f" ({where})" if where else ""))
    if not parts:
        return None
    return "Time to run this page (kernel time, as measured by the last builds): " + ", ".join(parts) + "."


def _times_digest() -> str:
    return hashlib.sha256(TIMES_FILE.read_bytes()).hexdigest() if TIMES_FILE.exists() else ""


def _insert_runtime(app, doctree):
    from docutils import nodes

    docname = app.env.docname
    if not docname.startswith("lectures/") or not TIMES_FILE.exists():
        return
    text = runtime_sentence(docname, json.loads(TIMES_FILE.read_text()))
    section = next(iter(doctree.findall(nodes.section)), None)
    if text is None or section is None or not isinstance(section[0], nodes.title):
        return
    para = nodes.paragraph(text, text, classes=["mflib-runtime"])
    section.insert(1, para)


# ----------------------------------------------------------------- LaTeX
def latex_macros(macros: dict) -> str:
    """LaTeX definitions of MathJax 3 ``tex.macros`` (``name: body`` or
    ``name: [body, nargs]``)."""
    lines = []
    for name, body in macros.items():
        nargs = 0
        if isinstance(body, (list, tuple)):
            body, nargs = body[0], int(body[1])
        args = f"[{nargs}]" if nargs else ""
        lines.append(f"\\providecommand{{\\{name}}}{{}}\\renewcommand{{\\{name}}}{args}{{{body}}}")
    return "\n".join(lines)


# PDF bookmarks are plain text: mathematics in a heading must expand to
# characters there (with unicode-math, \varepsilon would stop XeLaTeX).
_BOOKMARK_SYMBOLS = {
    "alpha": "α", "beta": "β", "gamma": "γ", "delta": "δ", "epsilon": "ϵ", "varepsilon": "ε",
    "eta": "η", "theta": "θ", "kappa": "κ", "lambda": "λ", "mu": "μ", "nu": "ν", "pi": "π",
    "rho": "ρ", "sigma": "σ", "tau": "τ", "phi": "ϕ", "varphi": "φ", "chi": "χ", "psi": "ψ",
    "omega": "ω", "circ": "∘", "infty": "∞", "to": "→", "times": "×", "le": "≤", "ge": "≥",
}


def latex_bookmark_symbols() -> str:
    defs = "".join(f"\\def\\{name}{{{char}}}" for name, char in _BOOKMARK_SYMBOLS.items())
    return f"\\pdfstringdefDisableCommands{{{defs}}}"


# ------------------------------------------------------------ page hygiene
def _config_inited(app, config):
    os.environ["MFLIB_QUIET"] = "1"
    config.mathjax_path = MATHJAX_ENTRY
    # pydata-sphinx-theme logs a console error when no default mode is set.
    config.html_context.setdefault("default_mode", "light")
    _patch_execution_cache(config.mflib_cache_package)
    macros = (getattr(config, "mathjax3_config", None) or {}).get("tex", {}).get("macros", {})
    if macros:
        elements = dict(config.latex_elements or {})
        elements["preamble"] = (elements.get("preamble", "") + "\n" + latex_macros(macros) + "\n"
                                + latex_bookmark_symbols() + "\n")
        config.latex_elements = elements


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


def _colab_to_notebooks(app, pagename, templatename, context, doctree):
    branch = app.config.mflib_notebooks_branch

    def fix(obj):
        if isinstance(obj, dict):
            if obj.get("text") == "Colab" and isinstance(obj.get("url"), str):
                obj["url"] = re.sub(r"/blob/[^/]+/(.+)\.[A-Za-z]+$", rf"/blob/{branch}/\1.ipynb", obj["url"])
            for value in obj.values():
                fix(value)
        elif isinstance(obj, list):
            for value in obj:
                fix(value)

    fix(context.get("header_buttons"))


def setup(app):
    _mathjax_source()  # fail early with a clear message
    app.add_config_value("mflib_cache_package", PACKAGE, "env")
    app.add_config_value("mflib_notebooks_branch", "notebooks", "html")
    app.connect("config-inited", _config_inited)
    app.connect("source-read", _source_read)
    app.connect("env-get-outdated", _outdated_by_library)
    app.connect("env-merge-info", _merge_fingerprints)
    app.connect("env-purge-doc", _purge_fingerprint)
    app.connect("doctree-read", _remove_live_explorer_cells)
    app.connect("doctree-read", _insert_runtime)
    app.connect("html-page-context", _dedupe_scripts, priority=100)
    app.connect("html-page-context", _colab_to_notebooks, priority=900)
    app.connect("build-finished", _copy_mathjax)
    app.connect("build-finished", _execution_report)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
