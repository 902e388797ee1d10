"""The book as a whole: strict build, API page coverage, table of contents,
and a real headless browser over every built page.

The browser test also checks a book built elsewhere (the README's full
build, say) instead of building one:

    MFLIB_BOOK_HTML=_build/html python -m pytest tests/test_book.py -p no:xdist -k browser
"""

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
    """Build the whole book strictly (warnings are errors), in quick mode; or
    take the book already built under ``$MFLIB_BOOK_HTML``."""
    prebuilt = os.environ.get("MFLIB_BOOK_HTML")
    if prebuilt:
        html = Path(prebuilt).resolve()
        if not (html / "index.html").exists():
            pytest.fail(f"MFLIB_BOOK_HTML={prebuilt} holds no built book (no index.html)")
        return 0, None, html
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
    if log is None:
        pytest.skip("checking a prebuilt book (MFLIB_BOOK_HTML): its build log is not ours")
    assert rc == 0, "strict book build failed:\n" + log[-6000:]
    assert (html / "index.html").exists()
    assert "build succeeded" in log
    assert (html / "_static" / "mathjax" / "tex-chtml-full.js").exists(), "MathJax is not served offline"


@pytest.mark.book
def test_claims_ledger_lists_every_claim(built_book):
    """The Claims page lists the claims of every lecture, none failing, each
    linked to the sentence that makes it (an id in the target page)."""
    import json

    rc, _, html = built_book
    if rc != 0:
        pytest.skip("the book did not build (see test_book_builds_strictly)")
    page = (html / "book" / "claims.html").read_text(encoding="utf-8")
    m = re.search(r"(\d+) claims on (\d+) pages; (\d+) hold, (\d+) fail", page)
    assert m, "the Claims page has no summary line"
    total, pages, held, failed = map(int, m.groups())
    assert failed == 0 and held == total
    lectures = sorted(p.stem for p in (ROOT / "lectures").glob("*.md"))
    for stem in lectures:
        assert f'id="claims-lectures-{stem}"' in page, f"no claims listed for lecture {stem}"
    assert pages >= len(lectures)
    # every link to a claim's sentence lands on an id that exists
    links = re.findall(r'href="\.\./(lectures/[\w-]+\.html)#(claim-[\w.-]+)"', page)
    assert len(links) >= total // 2, f"only {len(links)} of {total} claims link to their sentence"
    for target, anchor in set(links):
        assert f'id="{anchor}"' in (html / target).read_text(encoding="utf-8"), f"{target}#{anchor} missing"


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
    """Headless Chromium over every page, with no network, in light and in
    dark mode: no JavaScript error, no failed request, mathematics typeset and
    no TeX left over in the text, every image loaded, every button drawn (a
    glyph some font has, an image or an SVG) and named, opaque figures (so
    that they read on the dark theme), one search field, and each interactive
    figure reacts to a real interaction. Screenshots of every page in both
    modes are saved next to the build (``screenshots/``)."""
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
                page.evaluate("() => document.fonts.ready.then(() => null)")
                untypeset = page.evaluate(
                    "() => Array.from(document.querySelectorAll('span.math, div.math'))"
                    ".filter(e => !e.querySelector('mjx-container')).map(e => e.textContent.slice(0, 120))")
                errors += [f"math not typeset: {t!r}" for t in untypeset]
                errors += [f"TeX left in the text: {t}" for t in page.evaluate(_TEX_REMNANTS)]
                broken = page.evaluate(
                    "() => Array.from(document.images).filter(i => i.offsetParent !== null"
                    " && !(i.complete && i.naturalWidth > 0)).map(i => i.src.slice(0, 80))")
                errors += [f"image not loaded: {b}" for b in broken]
                errors += [f"button not drawn: {b}" for b in page.evaluate(_BLANK_BUTTONS)]
                searches = page.evaluate(_SEARCH_FIELDS)
                if searches != 1:
                    errors.append(f"{searches} visible search fields (one expected)")
                errors += [f"figure not opaque (unreadable on the dark theme): {t}"
                           for t in page.evaluate(_TRANSPARENT_FIGURES)]
                if page.evaluate(_DEAD_EXPLORER_CELLS):
                    errors.append("a cell that only calls live_explorer (no-op without a kernel) is shown")
                if rel.startswith("lectures/") and not page.query_selector("p.mflib-runtime"):
                    errors.append("no measured run time under the title")
                errors += _interact(page)
                name = rel.replace("/", "__")
                page.screenshot(path=str(shots / f"{name}.light.png"), full_page=True, timeout=180_000)
                page.evaluate(_DARK_MODE)
                page.wait_for_timeout(100)
                if page.evaluate("() => getComputedStyle(document.body).backgroundColor") in (
                        "rgb(255, 255, 255)", "rgba(0, 0, 0, 0)"):
                    errors.append("dark mode did not darken the page")
                errors += [f"button not drawn (dark mode): {b}" for b in page.evaluate(_BLANK_BUTTONS)]
                page.screenshot(path=str(shots / f"{name}.dark.png"), full_page=True, timeout=180_000)
                problems += [f"{rel}: {e}" for e in errors]
                page.close()
            browser.close()
    finally:
        server.shutdown()
    assert not problems, "\n".join(problems)


# Text of the page, outside code, typeset mathematics and scripts, that still
# holds TeX: a dollar sign, a backslash command, ^{ or _{.  Each hit is
# reported with the nearest id (label, heading) above it.
_TEX_REMNANTS = r"""() => {
  const skip = 'pre, code, kbd, samp, script, style, template, textarea, mjx-container, .math, .MathJax';
  const tex = /\$|\\[A-Za-z]+|\^\{|_\{/;
  const root = document.querySelector('main') || document.body;
  const walker = document.createTreeWalker(root, NodeFilter.SHOW_TEXT);
  const out = [];
  function where(el) {
    for (let n = el; n && n !== root; n = n.parentElement) {
      for (let s = n; s; s = s.previousElementSibling) {
        if (s.id) return '#' + s.id;
        const inner = s !== n && s.querySelectorAll ? [...s.querySelectorAll('[id]')].pop() : null;
        if (inner) return '#' + inner.id;
      }
    }
    return '(top)';
  }
  while (walker.nextNode()) {
    const node = walker.currentNode, el = node.parentElement;
    if (!el || el.closest(skip)) continue;
    const m = tex.exec(node.textContent);
    if (!m) continue;
    const t = node.textContent, i = m.index;
    out.push(JSON.stringify(t.slice(Math.max(0, i - 40), i + 40).replace(/\s+/g, ' ')) + ' near ' + where(el));
  }
  return out;
}"""

# Every visible button must be drawn, and named for assistive technology:
# an image, an SVG with a non-empty shape, or text / CSS-generated content
# whose every character some font has.  A character no font has is drawn
# either as nothing or as the same box as U+10FFFD (a code point no font
# covers); both are compared on a canvas, in the button's own font.
_BLANK_BUTTONS = r"""() => {
  const canvas = document.createElement('canvas');
  canvas.width = 96; canvas.height = 96;
  const ctx = canvas.getContext('2d', {willReadFrequently: true});
  function pixels(text, font) {
    ctx.clearRect(0, 0, 96, 96);
    ctx.font = font; ctx.textBaseline = 'top'; ctx.fillStyle = '#000';
    ctx.fillText(text, 8, 8);
    return ctx.getImageData(0, 0, 96, 96).data;
  }
  function same(a, b) { for (let i = 3; i < a.length; i += 4) if (a[i] !== b[i]) return false; return true; }
  function blank(a) { for (let i = 3; i < a.length; i += 4) if (a[i]) return false; return true; }
  const cache = new Map();
  function drawn(ch, cs) {
    const font = `${cs.fontStyle} ${cs.fontWeight} 48px ${cs.fontFamily}`;
    const key = ch + '|' + font;
    if (!cache.has(key)) {
      const a = pixels(ch, font);
      cache.set(key, !blank(a) && !same(a, pixels('\u{10FFFD}', font)) && !same(a, pixels('\u{EFFFD}', font)));
    }
    return cache.get(key);
  }
  function shown(el) {
    const r = el.getBoundingClientRect();
    if (r.width < 1 || r.height < 1) return false;
    for (let n = el; n; n = n.parentElement) {
      const cs = getComputedStyle(n);
      if (cs.display === 'none' || cs.visibility === 'hidden' || parseFloat(cs.opacity) === 0) return false;
    }
    return true;
  }
  function glyphs(el) {
    const out = [];
    for (const n of [el, ...el.querySelectorAll('*')]) {
      if (n.closest('svg') || !shown(n)) continue;
      for (const pseudo of ['::before', '::after']) {
        const cs = getComputedStyle(n, pseudo), c = cs.content;
        if (c && c.startsWith('"') && cs.display !== 'none')
          for (const ch of JSON.parse(c)) if (ch.trim()) out.push([ch, cs]);
      }
      for (const t of n.childNodes)
        if (t.nodeType === 3)
          for (const ch of t.textContent) if (ch.trim()) out.push([ch, getComputedStyle(n)]);
    }
    return out;
  }
  const out = [];
  for (const b of document.querySelectorAll('button, [role=button], a.btn, input[type=button], input[type=submit]')) {
    if (!shown(b)) continue;
    const name = (b.getAttribute('aria-label') || b.getAttribute('title') || b.textContent || b.value || '').trim();
    const label = name.replace(/\s+/g, ' ').slice(0, 40) || b.outerHTML.slice(0, 80);
    if (!name && !b.getAttribute('aria-labelledby')) out.push(`no accessible name: ${label}`);
    const pictures = [...b.querySelectorAll('img, svg')].filter(shown).filter(e => {
      if (e.tagName.toLowerCase() === 'img') return e.complete && e.naturalWidth > 0;
      try { const bb = e.getBBox(); return bb.width > 0 && bb.height > 0; } catch (err) { return false; }
    });
    const chars = glyphs(b);
    const missing = chars.filter(([ch, cs]) => !drawn(ch, cs));
    if (missing.length)
      out.push(`"${label}": no font draws ` +
               [...new Set(missing.map(([ch]) => 'U+' + ch.codePointAt(0).toString(16).toUpperCase()))].join(' '));
    else if (!pictures.length && !chars.length)
      out.push(`"${label}": empty (no text, image or SVG)`);
  }
  return [...new Set(out)];
}"""

_SEARCH_FIELDS = r"""() => [...document.querySelectorAll(
    '.search-button, .search-button-field, input[type=search]')].filter(e => {
  if (e.closest('dialog:not([open])')) return false;
  const r = e.getBoundingClientRect();
  if (r.width < 1 || r.height < 1) return false;
  for (let n = e; n; n = n.parentElement) {
    const cs = getComputedStyle(n);
    if (cs.display === 'none' || cs.visibility === 'hidden') return false;
  }
  return true;
}).length"""

# Figures of the page's content, every frame of the explorers and animations
# included, must be opaque: a transparent PNG puts black axes on the dark theme.
_TRANSPARENT_FIGURES = r"""() => {
  const canvas = document.createElement('canvas');
  const ctx = canvas.getContext('2d', {willReadFrequently: true});
  const out = [];
  for (const im of new Set(document.querySelectorAll('article img'))) {
    if (!(im.complete && im.naturalWidth > 0) || /\.svg$/.test(im.src)) continue;
    const w = Math.min(im.naturalWidth, 200), h = Math.min(im.naturalHeight, 200);
    canvas.width = w; canvas.height = h;
    ctx.clearRect(0, 0, w, h);
    let data;
    try { ctx.drawImage(im, 0, 0, w, h); data = ctx.getImageData(0, 0, w, h).data; }
    catch (err) { continue; }
    let clear = 0;
    for (let i = 3; i < data.length; i += 4) if (data[i] < 250) clear++;
    if (clear > 0.01 * w * h)
      out.push(`${(im.alt || im.src.slice(-50)).slice(0, 60)} (${Math.round(100 * clear / (w * h))}% transparent)`);
  }
  return [...new Set(out)];
}"""

# A code cell whose whole source is one live_explorer(...) call.
_DEAD_EXPLORER_CELLS = r"""() => [...document.querySelectorAll('div.cell div.cell_input pre')].some(
  c => /^[\w.]*live_explorer\([^\n]*\)\s*(#[^\n]*)?$/.test(c.textContent.trim()))"""

# pydata-sphinx-theme takes its colour mode from <html data-theme>.
_DARK_MODE = """() => { document.documentElement.dataset.theme = 'dark';
  document.documentElement.dataset.mode = 'dark'; }"""


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
