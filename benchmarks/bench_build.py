"""Benchmark: the cold full build of the book, from fresh clones, as a reader's
machine or CI would run it.

Target (issue 19): every page executes in at most 90 s at full size on two
cores, and the whole cold build takes at most 6 minutes.

Each run clones the repository (``git clone`` of the committed ``HEAD``, so
no execution cache, no ``_build``, nothing uncommitted) into a temporary
folder and runs the README's build command there,
``jupyter-book build . -W -n --keep-going``, with the Python environment
that runs this script (the install step of the README is timed separately
in the README; ``PYTHONPATH`` points at the clone, so that its ``mflib`` is
the one imported).  It records the wall-clock time of the build and the
kernel time of each page, read from the execution report that the book's
extension writes (``_build/html/_static/execution_report.json``).  Runs are
sequential; the machine's load average at the start of each is recorded,
because other jobs on a shared machine lengthen every time.

Writes benchmarks/results/build.json (shown on the book's Performance page)
and prints a Markdown table.

    python benchmarks/bench_build.py [--runs 2] [--keep]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE_LIMIT_S = 90.0
BUILD_LIMIT_S = 360.0
COMMAND = ["jupyter-book", "build", ".", "-W", "-n", "--keep-going"]


def _git(*args, cwd=ROOT) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True,
                          text=True).stdout.strip()


def one_build(workdir: Path, log: Path) -> dict:
    """Clone HEAD into ``workdir/clone``, build the book there, return the timings."""
    clone = workdir / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    env = dict(os.environ)
    env.pop("MFLIB_QUICK", None)                      # the book is built at full size
    env["PYTHONPATH"] = str(clone)
    exe = Path(sys.executable).with_name("jupyter-book")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    t0 = time.perf_counter()
    with log.open("w") as fh:
        proc = subprocess.run([str(exe), *COMMAND[1:]], cwd=clone, env=env, stdout=fh,
                              stderr=subprocess.STDOUT)
    wall = time.perf_counter() - t0
    report = clone / "_build" / "html" / "_static" / "execution_report.json"
    rows = json.loads(report.read_text()) if report.exists() else []
    pages = {r["page"]: r["seconds"] for r in rows if r.get("seconds") is not None}
    return {"commit": _git("rev-parse", "--short", "HEAD", cwd=clone),
            "date": dt.date.today().isoformat(), "load_average_at_start": load,
            "build_s": round(wall, 1), "kernel_s": round(sum(pages.values()), 1),
            "succeeded": proc.returncode == 0 and all(r.get("succeeded") for r in rows),
            "pages": {k: round(v, 1) for k, v in sorted(pages.items())}}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--keep", action="store_true", help="keep the clones (printed) for inspection")
    ap.add_argument("--output", default=str(Path(__file__).parent / "results" / "build.json"))
    args = ap.parse_args(argv)
    if args.runs < 1:
        raise SystemExit("--runs must be at least 1")
    if _git("status", "--porcelain", "--untracked-files=no"):
        print("note: uncommitted changes are not built (each run clones HEAD)", file=sys.stderr)
    runs = []
    for i in range(args.runs):
        work = Path(tempfile.mkdtemp(prefix="mflib-build-"))
        try:
            r = one_build(work, work / "build.log")
            runs.append(r)
            print(f"run {i + 1}: {r['build_s']:.0f} s build, {r['kernel_s']:.0f} s kernel, "
                  f"{'ok' if r['succeeded'] else 'FAILED (log: ' + str(work / 'build.log') + ')'}",
                  file=sys.stderr)
            if not r["succeeded"]:
                args.keep = True
        finally:
            if args.keep:
                print(f"kept {work}", file=sys.stderr)
            else:
                shutil.rmtree(work, ignore_errors=True)
    pages = sorted({p for r in runs for p in r["pages"]})
    worst = {p: max(r["pages"].get(p, 0.0) for r in runs) for p in pages}
    result = {
        "benchmark": "cold full build from a fresh clone",
        "machine": platform.platform(), "cpu_count": os.cpu_count(),
        "command": " ".join(COMMAND) + "  (in a fresh clone of HEAD, environment already installed)",
        "target": f"every page <= {PAGE_LIMIT_S:.0f} s of kernel time and the build <= "
                  f"{BUILD_LIMIT_S / 60:.0f} min, at full size on this machine",
        "target_met": all(r["succeeded"] for r in runs)
        and max(r["build_s"] for r in runs) <= BUILD_LIMIT_S
        and max(worst.values(), default=0.0) <= PAGE_LIMIT_S,
        "runs": [{k: v for k, v in r.items() if k != "pages"} | {"run": i + 1}
                 for i, r in enumerate(runs)],
        "pages": [{"page": p, **{f"run {i + 1} (s)": r["pages"].get(p) for i, r in enumerate(runs)}}
                  for p in sorted(pages, key=lambda p: -worst[p])],
    }
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print("| run | commit | build (s) | kernel (s) | load at start |\n|---|---|---|---|---|")
    for r in result["runs"]:
        print(f"| {r['run']} | {r['commit']} | {r['build_s']} | {r['kernel_s']} | "
              f"{r['load_average_at_start']} |")
    print(f"target met: {result['target_met']}")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
