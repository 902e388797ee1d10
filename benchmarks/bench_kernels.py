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

(b) Empirical NTK of MLP(50, [512, 512]), relu, bias, float64, n in {64, 256, 1024}:

    * ``closed``: :func:`mflib.empirical.empirical_ntk`, which dispatches to the
      closed form for the library's MLPs (sum over layers of the Gram of the
      backpropagated signals times the Gram of the layer inputs);
    * ``jacrev``: the same function with ``method="jacobian"``, the generic
      ``vmap(jacrev)`` per-sample Jacobian and its contraction (the only
      path before the closed form existed);
    * ``loop``: one autograd call per sample, then the contraction.

    The maximum relative difference of the closed form from ``jacrev`` is
    recorded too.

Each case runs in a fresh subprocess so that its peak memory can be measured:
the increase of the peak resident set size (``ru_maxrss``) during the first
(cold) call, over the process after imports and input creation (on CUDA:
``torch.cuda.max_memory_allocated`` during that call).  For NT the cold call
includes XLA compilation.  The machine is shared, so the implementations are
interleaved: ``--rounds`` rounds, each spawning every implementation once in
turn; a spawn times ``--repeat`` warm calls and reports their median, and the
table shows the median over rounds (the peak memory: the largest over
rounds).  The torch cases run on the CPU, and also on CUDA where a GPU is
present (``--devices``).  Results go to ``benchmarks/results/kernels.json``
and a Markdown table is printed.  ``--sections`` reruns only some sections
and keeps the others from the existing file, with the machine they were
measured on.  ``--quick`` runs small sizes only (a smoke test).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "kernels.json"
DEPTH, D, W_STD, B_STD = 3, 50, 1.0, 0.1
EMP_WIDTHS = [512, 512]
ANALYTIC = ("mflib", "naive")
EMPIRICAL = ("closed", "jacrev", "loop")


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


def worker(impl: str, n: int, dtype: str, repeat: int, device: str = "cpu") -> dict:
    import numpy as np

    rng = np.random.default_rng(0)
    sync = lambda: None  # noqa: E731
    extra = {}
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
        dev = torch.device(device)
        if dev.type == "cuda":
            sync = torch.cuda.synchronize
        x = torch.as_tensor(rng.standard_normal((n, D)), dtype=tdtype).to(dev)
        if impl == "mflib":
            def run():
                return mflib.kernels.nngp_ntk(x, depth=DEPTH, weight_std=W_STD, bias_std=B_STD)
        elif impl == "naive":
            def run():
                with torch.no_grad():
                    return _naive(x, DEPTH, W_STD, B_STD)
        else:  # empirical NTK
            net = MLP(D, EMP_WIDTHS, bias_std=B_STD, dtype=tdtype,
                      generator=torch.Generator().manual_seed(0), device=dev)
            if impl == "closed":
                def run():
                    return mflib.empirical.empirical_ntk(net, x)
                # agreement with the generic path, on a subset (cheap)
                sub = x[:64]
                ref = mflib.empirical.empirical_ntk(net, sub, method="jacobian")
                got = mflib.empirical.empirical_ntk(net, sub)
                extra["max_rel_diff_vs_jacrev_n64"] = float((got - ref).abs().max() / ref.abs().max())
            elif impl == "jacrev":
                def run():
                    return mflib.empirical.empirical_ntk(net, x, method="jacobian")
            else:
                def run():
                    return _loop_ntk(net, x)
    base = _peak_mb()
    if device.startswith("cuda"):
        import torch

        torch.cuda.reset_peak_memory_stats()
        base_gpu = torch.cuda.memory_allocated() / 2 ** 20
    t0 = time.perf_counter()
    run()
    sync()
    cold = time.perf_counter() - t0
    peak = _peak_mb() - base
    if device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated() / 2 ** 20 - base_gpu
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        run()
        sync()
        times.append(time.perf_counter() - t0)
    return {"impl": impl, "n": n, "dtype": dtype, "device": device,
            "time_s": statistics.median(times), "cold_s": cold, "peak_extra_mb": peak, **extra}


# ----------------------------------------------------------------------------- driver

def _spawn(python, impl, n, dtype, repeat, threads, device="cpu"):
    cmd = [python, str(Path(__file__).resolve()), "--worker", impl, str(n), dtype, str(repeat),
           device]
    env = dict(os.environ, BENCH_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
    if threads == 1:  # XLA's CPU backend: one intra-op thread too, for a like-for-like comparison
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false"
                            " intra_op_parallelism_threads=1").strip()
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=HERE.parent, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"worker {impl} n={n} {dtype} {device} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _measure(cases, rounds, repeat, threads):
    """Run every case ``rounds`` times, interleaved (round 1 of every case, then round 2...).

    ``cases`` maps a key to ``(python, impl, n, dtype, device)``; returns for each key
    the median time over rounds, the median cold time and the largest peak memory.
    """
    runs = {key: [] for key in cases}
    for r in range(rounds):
        for key, (python, impl, n, dtype, device) in cases.items():
            out = _spawn(python, impl, n, dtype, repeat, threads, device)
            runs[key].append(out)
            print(f"  round {r + 1}/{rounds} {impl:7s} n={n:5d} {dtype} {device}: "
                  f"{out['time_s']:.4f} s, peak +{out['peak_extra_mb']:.0f} MB", file=sys.stderr)
    res = {}
    for key, outs in runs.items():
        res[key] = {"time_s": statistics.median(o["time_s"] for o in outs),
                    "cold_s": statistics.median(o["cold_s"] for o in outs),
                    "peak_extra_mb": max(o["peak_extra_mb"] for o in outs)}
        for k, v in outs[0].items():
            if k.startswith("max_rel_diff"):
                res[key][k] = max(o[k] for o in outs)
    return res


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


def _devices(arg):
    import torch

    if arg == "auto":
        return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    devs = [d.strip() for d in arg.split(",") if d.strip()]
    if "cuda" in devs and not torch.cuda.is_available():
        raise SystemExit("--devices cuda: no CUDA device is available")
    return devs


def _measured(args, devices):
    import torch

    gpu = torch.cuda.get_device_name(0) if "cuda" in devices else None
    return {"date": time.strftime("%Y-%m-%d", time.gmtime()), "machine": _machine(),
            "torch": torch.__version__, "threads": args.threads, "gpu": gpu or "none",
            "rounds": args.rounds, "repeat": args.repeat}


def run_analytic(args, devices):
    sizes = [200, 400] if args.quick else [1000, 2000, 4000]
    nt = _nt_available(args.nt_python)
    if nt is None:
        print(f"neural-tangents is not importable with {args.nt_python}: the NT column is skipped. "
              f"Install it in a separate environment (benchmarks/requirements-nt.txt) and pass "
              f"--nt-python.", file=sys.stderr)
    cases = {}
    for dtype in ("float64", "float32"):
        for n in sizes:
            for device in devices:
                for impl in ANALYTIC:
                    cases[device, dtype, n, impl] = (sys.executable, impl, n, dtype, device)
            if nt:
                cases["cpu", dtype, n, "nt"] = (args.nt_python, "nt", n, dtype, "cpu")
    res = _measure(cases, args.rounds, args.repeat, args.threads)
    rows = []
    for device in devices:
        for dtype in ("float64", "float32"):
            for n in sizes:
                row = {"n": n, "dtype": dtype, "device": device}
                for impl in ANALYTIC + (("nt",) if nt and device == "cpu" else ()):
                    row[impl] = res[device, dtype, n, impl]
                rows.append(row)
    _add_ratios(rows, "mflib", ("naive", "nt"))
    return {"measured": _measured(args, devices), "neural_tangents": nt, "depth": DEPTH, "d": D,
            "weight_std": W_STD, "bias_std": B_STD, "activation": "relu", "rows": rows}


def run_empirical(args, devices):
    sizes = [16, 64] if args.quick else [64, 256, 1024]
    cases = {}
    for n in sizes:
        for device in devices:
            for impl in EMPIRICAL:
                cases[device, n, impl] = (sys.executable, impl, n, "float64", device)
    res = _measure(cases, args.rounds, args.repeat, args.threads)
    rows = []
    for device in devices:
        for n in sizes:
            row = {"n": n, "device": device}
            for impl in EMPIRICAL:
                row[impl] = res[device, n, impl]
            rows.append(row)
    _add_ratios(rows, "closed", ("jacrev", "loop"))
    sizes_ = [D, *EMP_WIDTHS, 1]
    n_params = sum(a * b + b for a, b in zip(sizes_[:-1], sizes_[1:]))
    for r in rows:  # what each method must hold at once, in MB of float64 (a lower bound)
        n = r["n"]
        r["held_mb_closed"] = 8 * (n * 2 * sum(sizes_[:-1]) + 3 * n * n) / 2 ** 20
        r["held_mb_jacobian"] = 8 * n * n_params / 2 ** 20
    widths = ", ".join(map(str, EMP_WIDTHS))
    return {"measured": _measured(args, devices),
            "model": f"MLP({D}, [{widths}]), relu, bias_std {B_STD}, NTK parametrisation, float64",
            "parameters": n_params,
            "held_mb": ("held_mb_closed: layer inputs and signals of one batch and three n x n "
                        "matrices; held_mb_jacobian: the n x P Jacobian alone (not measured: "
                        "computed from the sizes)"),
            "rows": rows}


def _print_analytic(sec):
    nt = sec.get("neural_tangents")
    print(f"\nAnalytic NNGP+NTK, relu, depth {sec['depth']}, d = {sec['d']} "
          f"(median over rounds; NT warm jit{'' if nt else ': not available'})\n")
    head = "| device | n | dtype | mflib (s) | naive (s) | naive / mflib |"
    sep = "|---|---|---|---|---|---|"
    if nt:
        head += " NT (s) | NT / mflib |"
        sep += "---|---|"
    head += " peak MB mflib | peak MB naive |"
    sep += "---|---|"
    print(head)
    print(sep)
    for r in sec["rows"]:
        m, nv = r["mflib"], r["naive"]
        line = (f"| {r.get('device', 'cpu')} | {r['n']} | {r['dtype']} | {m['time_s']:.3f} | "
                f"{nv['time_s']:.3f} | {nv['time_s'] / m['time_s']:.2f} |")
        if nt:
            line += (f" {r['nt']['time_s']:.3f} | {r['nt']['time_s'] / m['time_s']:.2f} |"
                     if "nt" in r else " | |")
        line += f" {m['peak_extra_mb']:.0f} | {nv['peak_extra_mb']:.0f} |"
        print(line)


def _print_empirical(sec):
    print(f"\nEmpirical NTK, {sec['model']} (median over rounds)\n")
    print("| device | n | closed form (s) | vmap(jacrev) (s) | per-sample loop (s) | jacrev / closed "
          "| loop / closed | peak MB closed | peak MB jacrev | peak MB loop | max rel. diff |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in sec["rows"]:
        c, j, lp = r["closed"], r["jacrev"], r["loop"]
        print(f"| {r['device']} | {r['n']} | {c['time_s']:.4f} | {j['time_s']:.3f} | {lp['time_s']:.3f} | "
              f"{r['jacrev_over_closed']:.1f} | {r['loop_over_closed']:.1f} | "
              f"{c['peak_extra_mb']:.0f} | {j['peak_extra_mb']:.0f} | {lp['peak_extra_mb']:.0f} | "
              f"{c['max_rel_diff_vs_jacrev_n64']:.1e} |")


def _carry_over(path):
    """Sections of an existing result file, each with the machine it was measured on."""
    try:
        old = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    out = {}
    for name in ("analytic", "empirical_ntk"):
        sec = old.get(name)
        if not isinstance(sec, dict):
            continue
        if "measured" not in sec:  # files written before sections carried their own machine
            sec = {"measured": {"machine": old.get("machine"), "torch": old.get("torch"),
                                "threads": old.get("threads")},
                   **({"neural_tangents": old.get("neural_tangents")} if name == "analytic" else {}),
                   **sec}
        out[name] = sec
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes only (smoke test)")
    p.add_argument("--repeat", type=int, default=3, help="warm calls per spawn (their median)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved spawns per case (their median)")
    p.add_argument("--nt-python", default=sys.executable,
                   help="interpreter with neural-tangents (default: this one)")
    p.add_argument("--output", default=str(RESULTS))
    p.add_argument("--threads", type=int, default=1,
                   help="intra-op threads for torch and XLA (default 1: the box is shared)")
    p.add_argument("--devices", default="auto",
                   help="comma-separated torch devices, or auto: the CPU, and CUDA where present")
    p.add_argument("--sections", default="analytic,empirical_ntk",
                   help="sections to rerun (the others are kept from --output)")
    args = p.parse_args(argv)
    devices = _devices(args.devices)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    for s in sections:
        if s not in ("analytic", "empirical_ntk"):
            raise SystemExit(f"--sections: unknown section {s!r}")

    out = Path(args.output)
    kept = _carry_over(out)
    result = {
        "benchmark": "kernels",
        "note": ("Shared machine: timings inflated and noisy from other jobs; compare ratios "
                 "within one section (measured in one run, interleaved).  peak_extra_mb: increase "
                 "of peak RSS during the first call (on CUDA: of allocated GPU memory)."),
    }
    if "analytic" in sections:
        result["analytic"] = run_analytic(args, devices)
    elif "analytic" in kept:
        result["analytic"] = kept["analytic"]
    if "empirical_ntk" in sections:
        result["empirical_ntk"] = run_empirical(args, devices)
    elif "empirical_ntk" in kept:
        result["empirical_ntk"] = kept["empirical_ntk"]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))

    if "analytic" in result:
        _print_analytic(result["analytic"])
    if "empirical_ntk" in result and "closed" in result["empirical_ntk"]["rows"][0]:
        _print_empirical(result["empirical_ntk"])
    print(f"\nWritten to {out}")
    return result


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        _, _, impl, n, dtype, repeat, device = sys.argv
        print(json.dumps(worker(impl, int(n), dtype, int(repeat), device)))
    else:
        main()
