"""Render the benchmark result files (``benchmarks/results/*.json``) as
Markdown, for the book's performance page.

Each benchmark script writes one JSON file: scalars (machine, torch version,
threads, notes, settings) and one or more tables, each a list of flat or
nested dicts.  This module turns any such file into Markdown without knowing
its schema: nested dicts in a row become dotted column names, and every list
of dicts becomes a table under a heading named by its path.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def _fmt(v) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        if v == 0:
            return "0"
        mag = abs(v)
        if mag >= 1000 or mag < 1e-3:
            return f"{v:.3g}"
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return ", ".join(_fmt(x) for x in v)
    return str(v).replace("|", "\\|").replace("\n", " ")


def _flatten(row: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in row.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _table(rows: list[dict]) -> str:
    flat = [_flatten(r) for r in rows]
    cols: list[str] = []
    for r in flat:
        cols += [c for c in r if c not in cols]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(r.get(c, "")) for c in cols) + " |" for r in flat]
    return "\n".join(lines)


def _is_table(v) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(r, dict) for r in v)


def _walk(obj: dict, path: str, scalars: list[str], tables: list[tuple[str, str]]):
    for k, v in obj.items():
        name = f"{path}.{k}" if path else k
        if _is_table(v):
            tables.append((name, _table(v)))
        elif isinstance(v, dict):
            _walk(v, name, scalars, tables)
        else:
            scalars.append(f"- **{name}**: {_fmt(v)}")


def render(path: Path | str) -> str:
    """Markdown for one result file: its settings as a list, its tables."""
    path = Path(path)
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path.name}: a result file must hold a JSON object")
    scalars: list[str] = []
    tables: list[tuple[str, str]] = []
    _walk(data, "", scalars, tables)
    parts = [f"## `{path.stem}`", "", *scalars]
    for name, table in tables:
        parts += ["", f"**{name}**", "", table]
    return "\n".join(parts) + "\n"


def render_all(folder: Path | str = RESULTS) -> str:
    """Markdown for every ``*.json`` in ``folder``, sorted by name."""
    files = sorted(Path(folder).glob("*.json"))
    if not files:
        raise FileNotFoundError(f"no benchmark results in {folder}")
    return "\n".join(render(f) for f in files)


if __name__ == "__main__":
    print(render_all())
