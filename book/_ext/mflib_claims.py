"""Sphinx extension: the book's Claims ledger.

Every page states its results through :func:`mflib.claims.claim`, which glues
the measured value for the prose and a JSON record of the claim (value,
prediction, accepted interval, where the tolerance comes from, source,
pass/fail) under a key starting with :data:`mflib.claims.RECORD_PREFIX`.

* **Collecting.** After a page is read (and so executed, or taken from the
  cache), its glue data (``jupyter_execute/<page>.glue.json``, written by
  MyST-NB) is scanned for claim records, which are kept in the build
  environment; cached pages keep their records.
* **Anchors.** The first place in a page's prose where a claim's value is
  pasted (``{glue:text}`key```) gets the HTML id ``claim-<key>``, so that
  the ledger links to the sentence that makes the claim.
* **The table.** The ``{claims-table}`` directive (used by ``book/claims.md``)
  is replaced, when pages are written, by one table per page: statement,
  measured value, prediction and accepted interval, tolerance and its
  origin, source, status and a link to the place of the claim.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from docutils import nodes
from sphinx.addnodes import pending_xref
from sphinx.transforms.post_transforms import SphinxPostTransform
from sphinx.util.docutils import SphinxDirective

RECORD_PREFIX = "mflib-claim/"   # = mflib.claims.RECORD_PREFIX (kept import-free)
PARAM_PREFIX = "mflib-parameter/"
_PASTE_RE = re.compile(r"\{glue:text\}`([^`]+)`")
_FENCE_RE = re.compile(r"^(```+|~~~+)", re.M)


class ClaimsTableNode(nodes.General, nodes.Element):
    """Placeholder replaced by the ledger when pages are written."""


class ClaimsTable(SphinxDirective):
    has_content = False

    def run(self):
        self.env.mflib_claims_pages = getattr(self.env, "mflib_claims_pages", set()) | {self.env.docname}
        # The table is filled in when pages are written, after Sphinx has decided
        # from the parsed page whether it needs MathJax: an (empty) math node in
        # the placeholder makes the page load it for the claims' mathematics.
        return [ClaimsTableNode("", nodes.math("", ""))]


def _glue_file(app, docname: str) -> Path:
    return Path(app.outdir).parent / "jupyter_execute" / f"{docname}.glue.json"


def _records(app, docname: str) -> tuple[list[dict], list[dict]]:
    path = _glue_file(app, docname)
    if not path.exists():
        return [], []
    data = json.loads(path.read_text(encoding="utf-8"))
    claims, params = [], []
    for key, out in data.items():
        text = out.get("data", {}).get("text/plain")
        if text is None or not key.startswith((RECORD_PREFIX, PARAM_PREFIX)):
            continue
        payload = json.loads(text)
        if key.startswith(RECORD_PREFIX):
            claims.append(payload)
        elif key.startswith(PARAM_PREFIX):
            params.append(payload)
    return claims, params


def _prose_paste_keys(source: str) -> list[str]:
    """Keys of ``{glue:text}`` / ``{glue}`` roles in the Markdown cells of a
    MyST notebook, in document order (code cells skipped)."""
    keys, in_code = [], False
    for line in source.splitlines():
        stripped = line.lstrip()
        if stripped.startswith("```{code-cell}"):
            in_code = True
            continue
        if in_code:
            if stripped.startswith("```") and stripped.strip("`").strip() == "":
                in_code = False
            continue
        for m in _PASTE_RE.finditer(line):
            keys.append(m.group(1).split("::")[-1].rsplit(":", 1)[0]
                        if ":" in m.group(1) else m.group(1))
    return keys


def _doctree_read(app, doctree):
    env = app.env
    docname = env.docname
    claims, params = _records(app, docname)
    if not hasattr(env, "mflib_claims"):
        env.mflib_claims = {}
    if not claims and not params:
        env.mflib_claims.pop(docname, None)
        return
    # Anchor: the first pasted occurrence of each claim key in the prose.
    keys = {c["key"] for c in claims}
    anchors = {}
    try:
        source = Path(env.doc2path(docname)).read_text(encoding="utf-8")
    except OSError:
        source = ""
    pasted = [n for n in doctree.findall(nodes.inline) if "pasted-text" in n.get("classes", [])]
    order = _prose_paste_keys(source)
    if len(order) == len(pasted):
        for key, node in zip(order, pasted):
            if key in keys and key not in anchors:
                anchor = f"claim-{key}"
                node["ids"].append(anchor)
                anchors[key] = anchor
    for c in claims:  # fall back to the section that holds the first paste, or the page
        c["anchor"] = anchors.get(c["key"], "")
    env.mflib_claims[docname] = {"claims": claims, "parameters": params,
                                 "title": _title(doctree)}


def _title(doctree) -> str:
    for section in doctree.findall(nodes.section):
        if section.children and isinstance(section[0], nodes.title):
            return section[0].astext()
    return ""


def _merge(app, env, docnames, other):
    env.mflib_claims = {**getattr(env, "mflib_claims", {}),
                        **{d: v for d, v in getattr(other, "mflib_claims", {}).items() if d in docnames}}
    env.mflib_claims_pages = getattr(env, "mflib_claims_pages", set()) | getattr(other, "mflib_claims_pages", set())


def _purge(app, env, docname):
    getattr(env, "mflib_claims", {}).pop(docname, None)
    getattr(env, "mflib_claims_pages", set()).discard(docname)


def _env_updated(app, env):
    """The ledger page is rewritten at every build (claims may have changed)."""
    return sorted(getattr(env, "mflib_claims_pages", set()))


# ------------------------------------------------------------------ table
_ROLE_RE = re.compile(r"\{(prf:ref|ref|numref|cite(?::[pt])?)\}`([^`]+)`|\$([^$]+)\$")


def _inline(text: str, refdoc: str) -> list[nodes.Node]:
    """Light rendering of the MyST that claim texts use: ``{prf:ref}``,
    ``{ref}``, ``{numref}`` (cross-references), ``{cite}`` (keys shown as
    text) and ``$...$`` (math)."""
    out, pos = [], 0
    for m in _ROLE_RE.finditer(text):
        if m.start() > pos:
            out.append(nodes.Text(text[pos:m.start()]))
        role, target, math_src = m.group(1), m.group(2), m.group(3)
        if math_src is not None:
            out.append(nodes.math(math_src, math_src))
        elif role.startswith("cite"):
            out.append(nodes.Text("[" + ", ".join(k.strip() for k in target.split(",")) + "]"))
        else:
            label = target
            explicit = re.match(r"(.*)<([^>]+)>$", target)
            shown = None
            if explicit:
                shown, label = explicit.group(1).strip(), explicit.group(2).strip()
            domain, reftype = ("prf", "ref") if role == "prf:ref" else ("std", role)
            ref = pending_xref("", refdomain=domain, reftype=reftype, reftarget=label.lower()
                               if domain == "std" else label, refdoc=refdoc,
                               refexplicit=shown is not None, refwarn=True)
            if role == "numref" and shown is None:
                shown = None
            ref += nodes.inline(text=shown or label)
            out.append(ref)
        pos = m.end()
    if pos < len(text):
        out.append(nodes.Text(text[pos:]))
    return out


def _fmt(v) -> str:
    if isinstance(v, str):
        return v
    if v is None:
        return "—"
    if not math.isfinite(v):
        return str(v)
    return f"{v:.4g}"


def _prediction(c: dict) -> str:
    lo, hi = c["lower"], c["upper"]
    lo = float(lo) if isinstance(lo, str) else lo
    hi = float(hi) if isinstance(hi, str) else hi
    if c.get("predicted") is not None:
        return f"{_fmt(c['predicted'])}, accept [{_fmt(lo)}, {_fmt(hi)}]"
    if math.isinf(lo):
        return f"≤ {_fmt(hi)}"
    if math.isinf(hi):
        return f"≥ {_fmt(lo)}"
    return f"in [{_fmt(lo)}, {_fmt(hi)}]"


def _entry(*children) -> nodes.entry:
    para = nodes.paragraph()
    for ch in children:
        para += ch
    return nodes.entry("", para)


def _table(app, fromdoc: str, docname: str, claims: list[dict]) -> nodes.table:
    headers = ["Claim", "Measured", "Prediction", "Tolerance from", "Source", "Status"]
    table = nodes.table(classes=["colwidths-auto", "claims-ledger"])
    tgroup = nodes.tgroup(cols=len(headers))
    table += tgroup
    for _ in headers:
        tgroup += nodes.colspec(colwidth=1)
    thead = nodes.thead()
    tgroup += thead
    row = nodes.row()
    for h in headers:
        row += _entry(nodes.Text(h))
    thead += row
    tbody = nodes.tbody()
    tgroup += tbody
    html = app.builder.format == "html"
    for c in claims:
        row = nodes.row()
        what = _inline(c["what"], fromdoc)
        if html:
            uri = app.builder.get_relative_uri(fromdoc, docname)
            if c.get("anchor"):
                uri += "#" + c["anchor"]
            link = nodes.reference("", "", refuri=uri, internal=True)
            link += what
            row += _entry(link)
        else:
            row += _entry(*what)
        row += _entry(nodes.literal(text=_fmt(c["value"])))
        row += _entry(nodes.Text(_prediction(c)))
        row += _entry(*_inline(c["tolerance"], fromdoc))
        row += _entry(*_inline(c["source"], fromdoc))
        row += _entry(nodes.Text("holds" if c["passed"] else "FAILS"))
        tbody += row
    return table


class ClaimsPostTransform(SphinxPostTransform):
    default_priority = 8  # before the reference resolvers (9, 10)

    def run(self, **kwargs):
        data = getattr(self.env, "mflib_claims", {})
        for node in list(self.document.findall(ClaimsTableNode)):
            out = []
            total = sum(len(v["claims"]) for v in data.values())
            failed = sum(not c["passed"] for v in data.values() for c in v["claims"])
            summary = nodes.paragraph(text=(
                f"{total} claims on {sum(bool(v['claims']) for v in data.values())} pages; "
                f"{total - failed} hold, {failed} fail."))
            summary["classes"].append("claims-summary")
            out.append(summary)
            for docname in self._ordered(data):
                entry = data[docname]
                if not entry["claims"]:
                    continue
                section = nodes.section(ids=[f"claims-{docname.replace('/', '-')}"])
                title = nodes.title()
                ref = pending_xref("", refdomain="std", reftype="doc", reftarget="/" + docname,
                                   refdoc=self.env.docname, refexplicit=True, refwarn=True)
                ref += nodes.inline(text=entry["title"] or docname)
                title += ref
                section += title
                section += nodes.paragraph(text=f"{len(entry['claims'])} claims.")
                section += _table(self.app, self.env.docname, docname, entry["claims"])
                out.append(section)
            node.replace_self(out)

    def _ordered(self, data):
        order = list(getattr(self.env, "all_docs", {}))
        try:
            from sphinx.util import docname_join  # noqa: F401
            toc = self.env.toctree_includes
            seen, flat = set(), []

            def walk(doc):
                if doc in seen:
                    return
                seen.add(doc)
                flat.append(doc)
                for child in toc.get(doc, []):
                    walk(child)
            walk(self.app.config.root_doc)
            order = flat + [d for d in order if d not in seen]
        except Exception:  # pragma: no cover - ordering is cosmetic
            pass
        return [d for d in order if d in data] + sorted(d for d in data if d not in order)


def setup(app):
    app.add_node(ClaimsTableNode)
    app.add_directive("claims-table", ClaimsTable)
    app.add_post_transform(ClaimsPostTransform)
    app.connect("doctree-read", _doctree_read)
    app.connect("env-merge-info", _merge)
    app.connect("env-purge-doc", _purge)
    app.connect("env-updated", _env_updated)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
