"""Compare the numbers a page shows, before and after a change to the library.

A page's numbers are its glued values (every claim, parameter and pasted
number).  Two ways to get them:

* ``python tools/page_numbers.py run lectures/05_mean_field.md -o before.json [--quick]``
  executes the page (in quick mode with ``--quick``) and writes its glued
  values;
* a full build writes them too: ``_build/jupyter_execute/<page>.glue.json``.

``python tools/page_numbers.py compare before.json after.json [--rtol 1e-9]``
reads either kind of file (or two folders of ``*.glue.json``, matched by
name) and lists every value that differs beyond ``rtol`` (numbers are
compared as numbers, inside claim records too), every value that appeared
and every one that disappeared.  It exits with status 1 when anything
differs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from pathlib import Path

_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


def _text(output) -> str:
    """The plain-text form of a glued output: myst-nb's ``glue`` stores it under
    ``application/papermill.record/text/plain`` (a plain display under ``text/plain``)."""
    data = output.get("data", {}) if isinstance(output, dict) else {}
    for key in ("application/papermill.record/text/plain", "text/plain"):
        if key in data:
            text = data[key]
            return "".join(text) if isinstance(text, list) else str(text)
    return ""


def glued(nb) -> dict[str, str]:
    """The glued values of an executed notebook, by key."""
    out = {}
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            meta = o.get("metadata", {}).get("scrapbook")
            if meta and "name" in meta:
                out[meta["name"]] = _text(o)
    return out


def run(page: str, quick: bool, timeout: int = 1800) -> dict[str, str]:
    import jupytext
    import nbclient

    env_quick = os.environ.get("MFLIB_QUICK")
    if quick:
        os.environ["MFLIB_QUICK"] = "1"
    else:
        os.environ.pop("MFLIB_QUICK", None)
    try:
        nb = jupytext.read(page)
        client = nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3",
                                         resources={"metadata": {"path": str(Path(page).parent)}})
        client.execute()
    finally:
        if env_quick is None:
            os.environ.pop("MFLIB_QUICK", None)
        else:
            os.environ["MFLIB_QUICK"] = env_quick
    return glued(nb)


def load(path: Path) -> dict[str, str]:
    """Glued values from a file written by ``run`` or a build's ``*.glue.json``."""
    data = json.loads(path.read_text())
    return {k: (_text(v) if isinstance(v, dict) else str(v)) for k, v in data.items()}


def _numbers(text: str) -> list[float]:
    return [float(m) for m in _NUMBER.findall(text)]


def differences(a: dict[str, str], b: dict[str, str], rtol: float, atol: float) -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        if k not in b:
            out.append(f"gone     {k}: {a[k][:80]}")
            continue
        if k not in a:
            out.append(f"new      {k}: {b[k][:80]}")
            continue
        if a[k] == b[k]:
            continue
        na, nb_ = _numbers(a[k]), _numbers(b[k])
        strip = lambda s: _NUMBER.sub("#", s)
        if len(na) != len(nb_) or strip(a[k]) != strip(b[k]):
            out.append(f"changed  {k}: {a[k][:100]!r} -> {b[k][:100]!r}")
            continue
        worst = max((abs(x - y) / max(abs(x), abs(y), 1e-300) for x, y in zip(na, nb_)
                     if abs(x - y) > atol and not (math.isnan(x) and math.isnan(y))), default=0.0)
        if worst > rtol:
            out.append(f"differs  {k}: relative {worst:.2e}: {a[k][:60]!r} -> {b[k][:60]!r}")
    return out


def _pairs(a: Path, b: Path):
    if a.is_dir():
        for f in sorted(a.rglob("*.glue.json")):
            yield f.relative_to(a).as_posix(), f, b / f.relative_to(a)
    else:
        yield a.name, a, b


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("page")
    r.add_argument("-o", "--output", required=True)
    r.add_argument("--quick", action="store_true")
    c = sub.add_parser("compare")
    c.add_argument("before")
    c.add_argument("after")
    c.add_argument("--rtol", type=float, default=1e-9)
    c.add_argument("--atol", type=float, default=0.0)
    args = p.parse_args(argv)
    if args.cmd == "run":
        values = run(args.page, args.quick)
        Path(args.output).write_text(json.dumps(values, indent=1, sort_keys=True))
        print(f"{len(values)} glued values from {args.page} -> {args.output}")
        return 0
    bad = 0
    for name, fa, fb in _pairs(Path(args.before), Path(args.after)):
        if not fb.exists():
            print(f"{name}: missing in {args.after}")
            bad += 1
            continue
        a, b = load(fa), load(fb)
        diffs = differences(a, b, args.rtol, args.atol)
        print(f"{name}: {len(a)} values before, {len(b)} after, {len(diffs)} differ")
        for line in diffs:
            print("   ", line)
        bad += bool(diffs)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
