"""Benchmark: analytic NNGP+NTK and the empirical NTK, side by side.

(a) Analytic NNGP and NTK, depth-3 relu network, d = 50, n in {1000, 2000, 4000},
    float64 and float32:

    * ``mflib``: :func:`mflib.kernels.nngp_ntk` (blocked, in place);
    * ``naive``: the same recursion written the obvious way with full-size
      temporaries (what a user would write first);
    * ``nt``: neural-tangents' ``kernel_fn`` under ``jax.jit``, warm (compile
      time excluded), when neural-tangents is importable.  It is optional:
      neural-tangents 0.6.5 imports with jax 0.5.3 (not with jax >= 0.6), so it
      lives in its own environment, see ``benchmarks/requirements-nt.txt``::

          /tmp/ntvenv/bin/python benchmarks/bench_kernels.py

(b) Empirical NTK of a depth-2 relu MLP: :func:`mflib.empirical.empirical_ntk`
    (``vmap(jacrev)``) against a per-sample autograd loop.

Each case runs in a fresh subprocess so that its peak memory can be measured:
the increase of the peak resident set size (``ru_maxrss``) during the first
(cold) call, over the process after imports and input creation.  For NT the
cold call includes XLA compilation.  Times are the best of ``--repeat`` warm
calls.  Results go to ``benchmarks/results/kernels.json`` and a Markdown table
is printed.  ``--quick`` runs small sizes only (a smoke test).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "kernels.json"
DEPTH, D, W_STD, B_STD = 3, 50, 1.0, 0.1


# ----------------------------------------------------------------------------- workers

def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # kB on Linux


def _naive(x, depth, w, b):
    """The relu NNGP/NTK recursion with full-size temporaries (reference implementation)."""
    import torch

    s = w ** 2 * (x @ x.T) / x.shape[1] + b ** 2
    t = s.clone()
    for _ in range(depth):
        diag = torch.diagonal(s)
        norm = torch.sqrt(torch.outer(diag, diag))
        cos = torch.clamp(s / norm, -1.0, 1.0)
        theta = torch.arccos(cos)
        k1 = (torch.sin(theta) + (math.pi - theta) * cos) / (2 * math.pi)
        k0 = (math.pi - theta) / (2 * math.pi)
        s = w ** 2 * norm * k1 + b ** 2
        t = s + w ** 2 * k0 * t
    return s, t


def _loop_ntk(model, x):
    """Empirical NTK with one autograd call per sample (reference implementation)."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    rows = []
    for xi in x:
        g = torch.autograd.grad(model(xi[None]).sum(), params)
        rows.append(torch.cat([gi.reshape(-1) for gi in g]))
    j = torch.stack(rows)
    return j @ j.T


def worker(impl: str, n: int, dtype: str, repeat: int) -> dict:
    import numpy as np

    rng = np.random.default_rng(0)
    if impl == "nt":
        import jax

        jax.config.update("jax_enable_x64", True)
        import jax.numpy as jnp
        from neural_tangents import stax

        layers = [stax.Dense(1, W_STD, B_STD)]
        for _ in range(DEPTH):
            layers += [stax.Relu(), stax.Dense(1, W_STD, B_STD)]
        kfn = jax.jit(stax.serial(*layers)[2], static_argnames="get")
        x = jnp.asarray(rng.standard_normal((n, D)), dtype=dtype)

        def run():
            k = kfn(x, None, ("nngp", "ntk"))
            k.ntk.block_until_ready()
            return k
    else:
        import torch

        import mflib.empirical
        import mflib.kernels
        from mflib.nets import MLP

        torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
        tdtype = getattr(torch, dtype)
        if impl in ("mflib", "naive"):
            x = torch.as_tensor(rng.standard_normal((n, D)), dtype=tdtype)
            if impl == "mflib":
                def run():
                    return mflib.kernels.nngp_ntk(x, depth=DEPTH, weight_std=W_STD, bias_std=B_STD)
            else:
                def run():
                    with torch.no_grad():
                        return _naive(x, DEPTH, W_STD, B_STD)
        else:  # empirical NTK
            net = MLP(D, [256, 256], bias_std=B_STD, dtype=tdtype,
                      generator=torch.Generator().manual_seed(0))
            x = torch.as_tensor(rng.standard_normal((n, D)), dtype=tdtype)
            if impl == "emp_mflib":
                def run():
                    return mflib.empirical.empirical_ntk(net, x)
            else:
                def run():
                    return _loop_ntk(net, x)
    base = _peak_mb()
    t0 = time.perf_counter()
    run()
    cold = time.perf_counter() - t0
    peak = _peak_mb() - base
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return {"impl": impl, "n": n, "dtype": dtype, "time_s": min(times), "cold_s": cold,
            "peak_extra_mb": peak}


# ----------------------------------------------------------------------------- driver

def _spawn(python, impl, n, dtype, repeat, threads):
    cmd = [python, str(Path(__file__).resolve()), "--worker", impl, str(n), dtype, str(repeat)]
    env = dict(os.environ, BENCH_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
    if threads == 1:  # XLA's CPU backend: one intra-op thread too, for a like-for-like comparison
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false"
                            " intra_op_parallelism_threads=1").strip()
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=HERE.parent, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"worker {impl} n={n} {dtype} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _add_ratios(rows, ref, others):
    """Add ``<other>_over_<ref>`` time ratios (> 1: ``ref`` is faster) to every row."""
    for r in rows:
        for o in others:
            if o in r:
                r[f"{o}_over_{ref}"] = r[o]["time_s"] / r[ref]["time_s"]


def _nt_available(python):
    probe = subprocess.run([python, "-c", "import neural_tangents, jax; print(neural_tangents.__version__, jax.__version__)"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        return None
    return probe.stdout.strip().splitlines()[-1]


def _machine():
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"platform": platform.platform(), "python": platform.python_version(), "cpu": cpu,
            "cpu_count": os.cpu_count(), "load_average_at_start": os.getloadavg()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes only (smoke test)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--nt-python", default=sys.executable,
                   help="interpreter with neural-tangents (default: this one)")
    p.add_argument("--output", default=str(RESULTS))
    p.add_argument("--threads", type=int, default=1,
                   help="intra-op threads for torch and XLA (default 1: the box is shared)")
    args = p.parse_args(argv)

    import torch

    sizes = [200, 400] if args.quick else [1000, 2000, 4000]
    emp_sizes = [16, 32] if args.quick else [64, 256]
    nt = _nt_available(args.nt_python)
    if nt is None:
        print(f"neural-tangents is not importable with {args.nt_python}: the NT column is skipped. "
              f"Install it in a separate environment (benchmarks/requirements-nt.txt) and pass "
              f"--nt-python.", file=sys.stderr)
    rows = []
    for dtype in ("float64", "float32"):
        for n in sizes:
            row = {"n": n, "dtype": dtype}
            for impl in ("mflib", "naive") + (("nt",) if nt else ()):
                r = _spawn(args.nt_python if impl == "nt" else sys.executable, impl, n, dtype,
                           args.repeat, args.threads)
                row[impl] = {k: r[k] for k in ("time_s", "cold_s", "peak_extra_mb")}
                print(f"  {impl:6s} n={n:5d} {dtype}: {r['time_s']:.3f} s, "
                      f"peak +{r['peak_extra_mb']:.0f} MB", file=sys.stderr)
            rows.append(row)
    emp_rows = []
    for n in emp_sizes:
        row = {"n": n, "dtype": "float64"}
        for impl in ("emp_mflib", "emp_loop"):
            r = _spawn(sys.executable, impl, n, "float64", args.repeat, args.threads)
            row[impl] = {k: r[k] for k in ("time_s", "cold_s", "peak_extra_mb")}
            print(f"  {impl:9s} n={n:4d}: {r['time_s']:.3f} s", file=sys.stderr)
        emp_rows.append(row)

    _add_ratios(rows, "mflib", ("naive", "nt"))
    _add_ratios(emp_rows, "emp_mflib", ("emp_loop",))
    result = {
        "benchmark": "kernels",
        "machine": _machine(),
        "torch": torch.__version__,
        "neural_tangents": nt,
        "threads": args.threads,
        "note": ("Shared machine: timings inflated and noisy from other jobs; compare ratios "
                 "within one run.  peak_extra_mb: increase of peak RSS during the first call."),
        "analytic": {"depth": DEPTH, "d": D, "weight_std": W_STD, "bias_std": B_STD,
                     "activation": "relu", "rows": rows},
        "empirical_ntk": {"model": f"MLP({D}, [256, 256]), relu, float64", "rows": emp_rows},
    }
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))

    print(f"\nAnalytic NNGP+NTK, relu, depth {DEPTH}, d = {D} "
          f"(best of {args.repeat}, {args.threads} thread(s); "
          f"NT warm jit{'' if nt else ': not available'})\n")
    head = "| n | dtype | mflib (s) | naive (s) | naive / mflib |"
    sep = "|---|---|---|---|---|"
    if nt:
        head += " NT (s) | NT / mflib |"
        sep += "---|---|"
    head += " peak MB mflib | peak MB naive |" + (" peak MB NT (incl. compile) |" if nt else "")
    sep += "---|---|" + ("---|" if nt else "")
    print(head)
    print(sep)
    for r in rows:
        m, nv = r["mflib"], r["naive"]
        line = (f"| {r['n']} | {r['dtype']} | {m['time_s']:.3f} | {nv['time_s']:.3f} | "
                f"{nv['time_s'] / m['time_s']:.2f} |")
        if nt:
            line += f" {r['nt']['time_s']:.3f} | {r['nt']['time_s'] / m['time_s']:.2f} |"
        line += f" {m['peak_extra_mb']:.0f} | {nv['peak_extra_mb']:.0f} |"
        if nt:
            line += f" {r['nt']['peak_extra_mb']:.0f} |"
        print(line)
    print(f"\nEmpirical NTK, MLP({D}, [256, 256]) relu, float64\n")
    print("| n | mflib vmap(jacrev) (s) | per-sample loop (s) | loop / mflib | peak MB mflib | peak MB loop |")
    print("|---|---|---|---|---|---|")
    for r in emp_rows:
        a, b = r["emp_mflib"], r["emp_loop"]
        print(f"| {r['n']} | {a['time_s']:.3f} | {b['time_s']:.3f} | {b['time_s'] / a['time_s']:.2f} | "
              f"{a['peak_extra_mb']:.0f} | {b['peak_extra_mb']:.0f} |")
    print(f"\nWritten to {out}")
    return result


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        _, _, impl, n, dtype, repeat = sys.argv
        print(json.dumps(worker(impl, int(n), dtype, int(repeat))))
    else:
        main()
