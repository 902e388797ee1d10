"""Benchmark: the per-sample online SGD of Marion & Berthier (2023) at the
paper's settings, the authors' way (a NumPy loop, one sample per step, vector
operations on the m + 1 neurons) against the compiled engine
:func:`mflib.two_timescale_sgd.sgd`, side by side in one run.

* ``per step``: the NumPy loop written the way the authors' code is (their
  class structure: the activation by ``minimum``/``maximum``, the teacher as a
  network of width 1e-8, the network evaluated in each of the two gradient
  calls, the bias as a neuron at -eta/2), timed on ``--probe`` steps; the
  compiled engine on one thread on ``--probe-compiled`` steps.  Both in CPU
  time of the process (``time.process_time``), so that a machine shared with
  other jobs does not bias the ratio, and in wall time.
* ``figures``: whole figures at full size on ``--threads`` threads, in wall
  time: the configuration of Figs 3-4 (h = 1e-5, eps = 2e-5, tau = 0.035,
  one run of 1.75e8 steps) and the eps-sweep of Fig. 7 (eps in {0.01, 0.1, 1},
  tau = 3, 20 repeats each: 6.66e8 steps), with the NumPy loop's time
  extrapolated linearly from its probe.
* ``cold compile``: a fresh process with an empty numba cache, one call (the
  cost paid once per machine; later processes load the cache).
* ``population flow``: :func:`mflib.two_timescale.train_population` for the
  configuration of Figs 3-4, for reference (the mean dynamics, not SGD).

Results go to ``benchmarks/results/two_timescale.json``; a Markdown table is
printed.  Speeds are reported as ratios; wall times on a shared machine are
inflated by contention (the load average is recorded).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import mflib
from mflib import two_timescale as tt
from mflib import two_timescale_sgd as ts

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "two_timescale.json"
ETA, M, H = 4e-3, 20, 1e-5
EPS_SWEEP, N_REPEATS = (0.01, 0.1, 1.0), 20


def _sigma(x):
    """The authors' activation (clipped pieces of the cubic step)."""
    return (np.minimum(np.maximum(4 * (x + 0.5) ** 3, 0), 0.5)
            + np.minimum(np.maximum(0.5 - 4 * (0.5 - x) ** 3, 0), 0.5))


class AuthorsStyleNet:
    """A network the way the authors' NumPy class is: the bias is a neuron at
    -eta/2, every call evaluates the activation on all m + 1 neurons."""

    def __init__(self, a, u, eta):
        self.a = np.array(a, dtype=float)
        self.u = np.concatenate([[-eta / 2], np.asarray(u, dtype=float)])
        self.eta = eta

    def __call__(self, x):
        return float(np.dot(_sigma((x - self.u) / self.eta), self.a))

    def grad_a(self, teacher, x, noise):
        return -2 * (teacher(x) + noise - self(x)) * _sigma((x - self.u) / self.eta)

    def grad_u(self, teacher, x, noise):
        inside = np.all([x >= self.u - self.eta / 2, x <= self.u + self.eta / 2], axis=0)
        return 2 * (teacher(x) + noise - self(x)) * self.a * inside / self.eta


def authors_style_loop(net, teacher, eps, h, n_steps, rng):
    for _ in range(n_steps):
        x = rng.random()
        noise = 2 * rng.random() - 1
        ga = net.grad_a(teacher, x, noise)
        gu = net.grad_u(teacher, x, noise)
        net.a -= h * ga
        net.u -= h * eps * gu


def _timed(fn):
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def cold_compile_seconds() -> float:
    """Wall time of a fresh process's first call with an empty numba cache,
    minus the same process with a warm cache (i.e. the compilation itself)."""
    code = ("import time, torch, mflib; from mflib import two_timescale as tt, two_timescale_sgd as ts;"
            "T = tt.paper_target(); u = tt.init_positions(20, T, generator=mflib.generator(0));"
            "t = time.perf_counter(); ts.sgd(torch.zeros(21, dtype=torch.float64), u, T, 4e-3, 1.0, 1e-5, 10,"
            " seed=0, n_records=2, threads=1); print(time.perf_counter() - t)")
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        cold = float(subprocess.run([sys.executable, "-c", code], env=env, check=True,
                                    capture_output=True, text=True).stdout.split()[-1])
        warm = float(subprocess.run([sys.executable, "-c", code], env=env, check=True,
                                    capture_output=True, text=True).stdout.split()[-1])
    return cold, warm


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probe", type=int, default=20_000, help="NumPy-loop steps timed")
    parser.add_argument("--probe-compiled", type=int, default=20_000_000, help="compiled steps timed (one thread)")
    parser.add_argument("--threads", type=int, default=2, help="threads for the whole figures")
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    scale = 100 if args.quick else 1
    target = tt.paper_target()
    u0 = tt.init_positions(M, target, generator=mflib.generator(0))
    a0 = torch.zeros(1, M + 1, dtype=torch.float64)
    load0 = os.getloadavg()[0]

    # per step, one core
    teacher = AuthorsStyleNet([1.0, 4, -4, 2, -2, 4], np.linspace(0.2, 0.8, 5), 1e-8)
    net = AuthorsStyleNet(np.zeros(M + 1), u0[0].numpy(), ETA)
    probe = max(args.probe // scale, 500)
    _, w_np, c_np = _timed(lambda: authors_style_loop(net, teacher, 2e-5, H, probe, np.random.default_rng(0)))
    ts.sgd(a0, u0, target, ETA, 2e-5, H, 10, seed=0, n_records=2, threads=1)       # load / compile
    probe_c = max(args.probe_compiled // scale, 10_000)
    _, w_c, c_c = _timed(lambda: ts.sgd(a0, u0, target, ETA, 2e-5, H, probe_c, seed=0, n_records=2,
                                        threads=1, with_loss=False))
    per_step = {"numpy_authors_style_us_cpu": 1e6 * c_np / probe, "numpy_authors_style_us_wall": 1e6 * w_np / probe,
                "compiled_us_cpu": 1e6 * c_c / probe_c, "compiled_us_wall": 1e6 * w_c / probe_c,
                "speedup_cpu": (c_np / probe) / (c_c / probe_c),
                "speedup_wall": (w_np / probe) / (w_c / probe_c),
                "numpy_probe_steps": probe, "compiled_probe_steps": probe_c}

    # whole figures, --threads threads, wall time
    steps34 = int(round(0.035 / (H * 2e-5))) // scale
    res34, w34, c34 = _timed(lambda: ts.sgd(a0, u0, target, ETA, 2e-5, H, steps34, seed=42, n_records=101,
                                            threads=args.threads))
    U = tt.init_positions(M, target, batch=N_REPEATS, generator=mflib.generator(100), min_per_piece=0)
    eps = [e for e in EPS_SWEEP for _ in range(N_REPEATS)]
    nst = [int(round(3.0 / (H * e))) // scale for e in eps]
    res7, w7, c7 = _timed(lambda: ts.sgd(torch.zeros(len(eps), M + 1, dtype=torch.float64), U.repeat(3, 1),
                                         target, ETA, eps, H, nst, seed=7, n_records=31, threads=args.threads))
    loop_s = c_np / probe
    figures = [
        {"case": "Figs 3-4 (eps=2e-5, tau=0.035, 1 run)", "sgd_steps": steps34, "compiled_wall_s": w34,
         "compiled_cpu_s": c34, "numpy_loop_extrapolated_s": loop_s * steps34,
         "target_s": 30.0, "meets_target": w34 <= 30.0,
         "final_loss": float(res34.loss[0, -1])},
        {"case": f"Fig. 7 (eps in 0.01/0.1/1, tau=3, {N_REPEATS} repeats)", "sgd_steps": int(sum(nst)),
         "compiled_wall_s": w7, "compiled_cpu_s": c7, "numpy_loop_extrapolated_s": loop_s * sum(nst),
         "target_s": 120.0, "meets_target": w7 <= 120.0,
         "final_loss": float(res7.loss[:, -1].median())},
    ]
    _, w_flow, _ = _timed(lambda: tt.train_population(a0, u0, target, ETA, 2e-5, 0.035))
    cold, warm = cold_compile_seconds()
    out = {"machine": platform.platform(), "cpus_available": len(os.sched_getaffinity(0)),
           "load_average_at_start": load0, "load_average_at_end": os.getloadavg()[0],
           "numpy": np.__version__, "numba": __import__("numba").__version__, "torch": torch.__version__,
           "threads_for_figures": args.threads, "quick": args.quick,
           "per_step_one_core": per_step,
           "cold_compile": {"first_call_empty_cache_s": cold, "first_call_warm_cache_s": warm},
           "population_flow_figs_3_4_s": w_flow,
           "note": "CPU times are per process (immune to other jobs); wall times on a shared 2-core machine",
           "figures": figures}
    if not args.quick:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(out, indent=2))
    p = per_step
    print(f"per step (one core, CPU time): NumPy authors-style {p['numpy_authors_style_us_cpu']:.1f} us, "
          f"compiled {1e3 * p['compiled_us_cpu']:.1f} ns: {p['speedup_cpu']:.0f}x "
          f"(wall {p['speedup_wall']:.0f}x)")
    print(f"cold compile {cold:.1f} s (warm cache {warm:.2f} s); population flow Figs 3-4: {w_flow:.1f} s\n")
    print(f"| case | SGD steps | compiled, {args.threads} threads (wall) | NumPy loop (extrapolated) | target |")
    print("|---|---|---|---|---|")
    for r in figures:
        print(f"| {r['case']} | {r['sgd_steps']:.3g} | {r['compiled_wall_s']:.1f} s "
              f"| {r['numpy_loop_extrapolated_s'] / 3600:.1f} h | {r['target_s']:.0f} s |")


if __name__ == "__main__":
    main()
