"""The book as a whole: strict build, API page coverage, table of contents,
and a real headless browser over every built page."""

from __future__ import annotations

import functools
import http.server
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _toc_files() -> list[str]:
    text = (ROOT / "_toc.yml").read_text()
    return re.findall(r"^\s*(?:-\s*)?(?:file|root):\s*(\S+)", text, flags=re.M)


def test_every_lecture_is_in_the_toc():
    listed = set(_toc_files())
    lectures = {f"lectures/{p.stem}" for p in (ROOT / "lectures").glob("*.md")}
    assert lectures <= listed, f"pages missing from _toc.yml: {sorted(lectures - listed)}"
    for f in listed:
        assert (ROOT / f"{f}.md").exists(), f"_toc.yml lists {f}, which does not exist"


def test_api_page_lists_every_public_module():
    api = (ROOT / "book" / "api.md").read_text()
    modules = sorted(p.stem for p in (ROOT / "mflib").glob("*.py") if not p.stem.startswith("_"))
    missing = [m for m in modules if f"automodule:: mflib.{m}\n" not in api]
    assert not missing, f"book/api.md does not document: {missing}"


@pytest.fixture(scope="module")
def built_book(tmp_path_factory):
    """Build the whole book strictly (warnings are errors), in quick mode."""
    out = tmp_path_factory.mktemp("book")
    jb = Path(sys.executable).with_name("jupyter-book")
    cmd = [str(jb) if jb.exists() else "jupyter-book", "build", str(ROOT),
           "--path-output", str(out), "-W", "-n", "--keep-going"]
    env = dict(os.environ, MFLIB_QUICK="1")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    log = proc.stdout + proc.stderr
    (out / "build.log").write_text(log)
    return proc.returncode, log, out / "_build" / "html"


@pytest.mark.book
def test_book_builds_strictly(built_book):
    rc, log, html = built_book
    assert rc == 0, "strict book build failed:\n" + log[-6000:]
    assert (html / "index.html").exists()
    assert "build succeeded" in log
    assert (html / "_static" / "mathjax" / "tex-chtml-full.js").exists(), "MathJax is not served offline"


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def _pages(html: Path) -> list[Path]:
    skip = {"genindex.html", "search.html", "index.html"}
    return sorted(p for p in html.rglob("*.html")
                  if p.name not in skip and "_static" not in p.parts and "_sources" not in p.parts)


@pytest.mark.book
def test_every_page_in_a_real_browser(built_book):
    """Headless Chromium over every page, with no network: no JavaScript error,
    no failed request, mathematics typeset, every image loaded, and each
    interactive figure reacts to a real interaction. Screenshots are saved
    next to the build (``screenshots/``)."""
    rc, log, html = built_book
    assert rc == 0, "the book did not build; see test_book_builds_strictly"
    chromium = _chromium()
    if chromium is None:
        pytest.skip("no Chromium installed (apt-get install chromium); .ci/run installs it")
    playwright = pytest.importorskip("playwright.sync_api")

    handler = functools.partial(_QuietHandler, directory=str(html))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}/"
    shots = html.parent / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    problems: list[str] = []
    try:
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            for path in _pages(html):
                rel = path.relative_to(html).as_posix()
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                errors: list[str] = []
                page.on("pageerror", lambda e, errors=errors: errors.append(f"JS error: {e}"))
                page.on("console", lambda m, errors=errors: errors.append(f"console: {m.text}")
                        if m.type == "error" else None)
                page.on("requestfailed", lambda r, errors=errors: errors.append(f"failed request: {r.url}"))
                page.on("response", lambda r, errors=errors: errors.append(f"HTTP {r.status}: {r.url}")
                        if r.status >= 400 else None)

                def offline(route, errors=errors):
                    if route.request.url.startswith(base) or route.request.url.startswith("data:"):
                        route.continue_()
                    else:
                        errors.append(f"network request outside the book: {route.request.url}")
                        route.abort()

                page.route("**/*", offline)
                page.goto(base + rel, wait_until="load")
                page.evaluate("() => window.MathJax && MathJax.startup ? MathJax.startup.promise : null")
                try:
                    page.wait_for_function(
                        "() => Array.from(document.querySelectorAll('span.math, div.math'))"
                        ".every(e => e.querySelector('mjx-container'))", timeout=20_000)
                except playwright.TimeoutError:
                    pass  # reported just below
                untypeset = page.evaluate(
                    "() => Array.from(document.querySelectorAll('span.math, div.math'))"
                    ".filter(e => !e.querySelector('mjx-container')).map(e => e.textContent.slice(0, 120))")
                errors += [f"math not typeset: {t!r}" for t in untypeset]
                broken = page.evaluate(
                    "() => Array.from(document.images).filter(i => i.offsetParent !== null"
                    " && !(i.complete && i.naturalWidth > 0)).map(i => i.src.slice(0, 80))")
                errors += [f"image not loaded: {b}" for b in broken]
                errors += _interact(page)
                page.screenshot(path=str(shots / (rel.replace("/", "__") + ".png")), full_page=True)
                problems += [f"{rel}: {e}" for e in errors]
                page.close()
            browser.close()
    finally:
        server.shutdown()
    assert not problems, "\n".join(problems)


def _interact(page) -> list[str]:
    """Move every static-explorer slider and step every animation; the
    displayed image must change."""
    errors = []
    visible = ("(root) => Array.from(root.querySelectorAll('img'))"
               ".filter(i => i.style.display !== 'none').map(i => i.src.length + ':' + i.src.slice(-40)).join()")
    for k, box in enumerate(page.query_selector_all("div.mflib-explorer")):
        before = box.evaluate(visible)
        changed = box.evaluate(
            "(root) => { const s = root.querySelector('input[type=range]'); if (!s) return false;"
            " s.value = s.max; s.dispatchEvent(new Event('input')); return true; }")
        after = box.evaluate(visible)
        if not changed or before == after:
            errors.append(f"explorer {k}: moving the slider did not change the figure")
    for k, anim in enumerate(page.query_selector_all("div.animation")):
        img = anim.query_selector("img")
        if img is None:
            errors.append(f"animation {k}: no frame image")
            continue
        before = img.get_attribute("src")
        buttons = anim.query_selector_all("button")
        forward = [b for b in buttons if "step_animation" in (b.get_attribute("onclick") or "")
                   or "next_frame" in (b.get_attribute("onclick") or "")]
        (forward[0] if forward else buttons[-1]).click()
        page.wait_for_timeout(200)
        if img.get_attribute("src") == before:
            errors.append(f"animation {k}: stepping did not change the frame")
    return errors
