"""Benchmark: full-batch gradient descent on a fixed sample (Marion & Berthier
2023, Appendix C), the elementwise autograd engine against the sorted-sample
compiled engine of :func:`mflib.two_timescale.train_fixed_sample`, side by side
in one run.

* ``per epoch``: one run of each problem at the paper's settings (10 units per
  coordinate, eta = 0.01, the two-timescale learning rates 1 and 0.01): the 2-D
  additive step target on 1000 points, the ReLU teacher on 1000 points and the
  10-D additive step target on 1e4 points.  The autograd engine (``engine="torch"``,
  in float32 as the book's page ran it before, and in float64) is timed on
  ``--probe`` epochs, the compiled engine (one thread) on ``--probe-compiled``
  epochs; CPU time of the process (``time.process_time``), so that a machine
  shared with other jobs does not bias the ratio.
* ``sections``: the whole of Lecture 7's Experiment 4 per problem (20 runs per
  regime, 300 standard and 5000 two-timescale epochs) on ``--threads`` threads,
  in wall time, with the autograd engine's time extrapolated linearly from its
  per-epoch probe.

Results go to ``benchmarks/results/fixed_sample.json``; a Markdown table is
printed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numba
import torch

import mflib
from mflib import two_timescale as tt

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "fixed_sample.json"
PROBLEMS = {
    "2-D steps (n=1000)": (lambda dt: tt.additive_step_problem(2, 1000, generator=mflib.generator(0), dtype=dt), "step"),
    "ReLU teacher (n=1000)": (lambda dt: tt.relu_teacher_problem(1000, generator=mflib.generator(0), dtype=dt), "relu"),
    "10-D steps (n=10000)": (lambda dt: tt.additive_step_problem(10, 10_000, generator=mflib.generator(0), dtype=dt),
                             "step"),
}
REGIMES = {"standard": (1.0, 1.0, 300), "two-timescale": (1.0, 0.01, 5000)}


def _cpu(f):
    t0 = time.process_time()
    f()
    return time.process_time() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--probe", type=int, default=10, help="epochs timed with the autograd engine")
    ap.add_argument("--probe-compiled", type=int, default=1000, help="epochs timed with the compiled engine")
    ap.add_argument("--runs", type=int, default=20, help="runs per regime in the sections")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--output", type=Path, default=RESULTS)
    args = ap.parse_args()
    torch.set_num_threads(1)
    load0 = os.getloadavg()[0]
    rows, sections = [], []
    for name, (make, act) in PROBLEMS.items():
        kw = dict(units=10, activation=act, lr_a=1.0, lr_u=0.01, runs=1)
        X64, y64 = make(torch.float64)
        X32, y32 = make(torch.float32)
        tt.train_fixed_sample(X64, y64, epochs=2, engine="compiled", threads=1, generator=mflib.generator(1), **kw)
        t32 = _cpu(lambda: tt.train_fixed_sample(X32, y32, epochs=args.probe, engine="torch",
                                                generator=mflib.generator(1), **kw)) / args.probe
        t64 = _cpu(lambda: tt.train_fixed_sample(X64, y64, epochs=args.probe, engine="torch",
                                                generator=mflib.generator(1), **kw)) / args.probe
        tc = _cpu(lambda: tt.train_fixed_sample(X64, y64, epochs=args.probe_compiled, engine="compiled", threads=1,
                                                generator=mflib.generator(1), **kw)) / args.probe_compiled
        rows.append({"problem": name, "autograd float32 ms/epoch": 1e3 * t32, "autograd float64 ms/epoch": 1e3 * t64,
                     "compiled ms/epoch": 1e3 * tc, "speed-up vs float32": t32 / tc, "speed-up vs float64": t64 / tc})
        wall = 0.0
        for lr_a, lr_u, epochs in REGIMES.values():
            t0 = time.perf_counter()
            tt.train_fixed_sample(X64, y64, units=10, activation=act, lr_a=lr_a, lr_u=lr_u, epochs=epochs,
                                  runs=args.runs, generator=mflib.generator(1), threads=args.threads)
            wall += time.perf_counter() - t0
        n_epochs = args.runs * sum(e for _, _, e in REGIMES.values())
        sections.append({"problem": name, "runs per regime": args.runs, "compiled wall s": wall,
                         "autograd float32 s (extrapolated, one core)": t32 * n_epochs})
        print(rows[-1], sections[-1], flush=True)
    out = {"machine": platform.processor() or platform.machine(), "cpus_available": len(os.sched_getaffinity(0)),
           "load_average_at_start": load0, "load_average_at_end": os.getloadavg()[0],
           "numba": numba.__version__, "torch": torch.__version__, "threads_for_sections": args.threads,
           "note": "CPU time per epoch of one run at the paper's two-timescale settings; sections in wall time",
           "per_epoch_one_core": rows, "sections": sections}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(out, indent=1))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
