"""Record the measured kernel time of each page, shown under each lecture's title.

    python tools/execution_times.py [REPORT] [--machine TEXT]

Reads the execution report of the last build (default
``_build/html/_static/execution_report.json``, written by the book's
extension) and stores its times in ``book/_ext/execution_times.json``, under
``full`` or ``quick`` according to the mode the build ran in (``MFLIB_QUICK``,
recorded in the report).  The other mode's entry is kept.  Run it after a
full build and after a quick one, on the machine that built, and commit the
JSON; the next build shows the new times.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TIMES = ROOT / "book" / "_ext" / "execution_times.json"


def update(report: list[dict], times: dict, machine: str) -> tuple[str, dict]:
    """Fold one execution report into ``times``; returns the mode and the new entry."""
    modes = {row.get("quick") for row in report}
    if len(modes) != 1 or None in modes:
        raise ValueError("report: every row must say whether the build ran in quick mode "
                         "(rebuild with the current book/_ext/mflib_book.py)")
    mode = "quick" if modes.pop() else "full"
    rows = [r for r in report if r.get("succeeded") and r.get("seconds") is not None]
    if not rows:
        raise ValueError("report: no page executed successfully")
    when = max(r["executed_at"] for r in rows if r.get("executed_at"))
    entry = {
        "machine": machine,
        "measured": dt.datetime.fromtimestamp(when, dt.timezone.utc).strftime("%Y-%m-%d"),
        "pages": {r["page"]: round(float(r["seconds"]), 1) for r in sorted(rows, key=lambda r: r["page"])},
    }
    times[mode] = entry
    return mode, entry


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("report", nargs="?", type=Path,
                        default=ROOT / "_build" / "html" / "_static" / "execution_report.json")
    parser.add_argument("--machine", default=f"{os.cpu_count()} CPU cores",
                        help="how to describe the machine that ran the build (default: its core count)")
    parser.add_argument("--output", type=Path, default=TIMES)
    args = parser.parse_args(argv)
    times = json.loads(args.output.read_text()) if args.output.exists() else {}
    mode, entry = update(json.loads(args.report.read_text()), times, args.machine)
    args.output.write_text(json.dumps(times, indent=2, sort_keys=True) + "\n")
    print(f"{mode}: {len(entry['pages'])} pages, measured {entry['measured']} on {entry['machine']} -> {args.output}")
    return times


if __name__ == "__main__":
    main(sys.argv[1:])
