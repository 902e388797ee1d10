"""Benchmark: the two-timescale experiments of Marion & Berthier (2023), the
paper's way (per-sample online SGD) against :mod:`mflib.two_timescale`
(gradient flow of the exact population risk, runs batched), side by side.

* ``sgd loop``: the straightforward per-sample SGD loop a user would write
  (NumPy, one sample per step, the loop of the authors' code but with the exact
  derivative of the cubic step).  Its speed is measured on ``--probe`` steps and
  extrapolated linearly to the number of steps of the paper's settings (h = 1e-5):
  item 1 (eps = 2e-5, tau = 0.035: 1.75e8 steps) and item 3 (eps in
  {0.01, 0.1, 1}, tau = 3, 20 seeds: 6.66e8 steps).
* ``mflib online SGD``: :func:`mflib.two_timescale.train_sgd`, one sample per
  step (the faithful path), on the same probe, for reference.
* ``mflib population flow``: :func:`mflib.two_timescale.train_population`
  running item 1 and item 3 to the end (item 3 as one batch of 60 runs).

The speed-up mixes two effects, and the table separates them only partly: the
flow replaces 1e8 noisy steps by a few hundred deterministic ones (this is the
main one), and runs are batched.  Outcomes: the flow reaches the same
conclusions as SGD in the small-step limit; see the lecture for the check.
Results go to ``benchmarks/results/two_timescale.json``; a Markdown table is
printed.  Timings on a shared machine are inflated by contention.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

import mflib
from mflib import two_timescale as tt

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "two_timescale.json"
ETA, M, H = 4e-3, 20, 1e-5
STEPS_ITEM1 = int(round(0.035 / (H * 2e-5)))
STEPS_ITEM3 = 20 * sum(int(round(3.0 / (H * e))) for e in (0.01, 0.1, 1.0))


def sgd_loop(u, a, eps, h, n_steps, rng, jumps, values):
    """Per-sample online SGD, the obvious NumPy loop (a[0] is the bias)."""
    for _ in range(n_steps):
        x = rng.random()
        y = values[np.searchsorted(jumps, x, side="right")] + rng.uniform(-1, 1)
        z = np.clip((x - u) / ETA, -0.5, 0.5)
        s = np.where(z < 0, 4 * (z + 0.5) ** 3, 1 - 4 * (0.5 - z) ** 3)
        ds = 12 * (0.5 - np.abs(z)) ** 2
        r = a[0] + a[1:] @ s - y
        gu = -2 * r * a[1:] * ds / ETA
        a[0] -= h * 2 * r
        a[1:] -= h * 2 * r * s
        u -= h * eps * gu
    return u, a


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probe", type=int, default=100_000, help="SGD steps timed")
    parser.add_argument("--quick", action="store_true", help="small probe, small sweep (smoke test)")
    args = parser.parse_args()
    probe = 5_000 if args.quick else args.probe
    n_seeds = 3 if args.quick else 20
    torch.set_num_threads(2)
    target = tt.paper_target()
    jumps, values = target.jumps.numpy(), target.values.numpy()
    u0 = tt.init_positions(M, target, generator=mflib.generator(0))
    a0 = torch.zeros(1, M + 1, dtype=torch.float64)

    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    sgd_loop(u0[0].numpy().copy(), np.zeros(M + 1), 2e-5, H, probe, rng, jumps, values)
    per_step_loop = (time.perf_counter() - t0) / probe

    n_torch = max(probe // 10, 1000)
    t0 = time.perf_counter()
    tt.train_sgd(a0, u0, target, ETA, 2e-5, H, n_torch, generator=mflib.generator(1), n_records=2)
    per_step_torch = (time.perf_counter() - t0) / n_torch

    t0 = time.perf_counter()
    item1 = tt.train_population(a0, u0, target, ETA, 2e-5, 0.035)
    time_item1 = time.perf_counter() - t0

    U = tt.init_positions(M, target, batch=n_seeds, generator=mflib.generator(100))
    eps = torch.tensor([e for e in (0.01, 0.1, 1.0) for _ in range(n_seeds)], dtype=torch.float64)
    t0 = time.perf_counter()
    item3 = tt.train_population(torch.zeros(3 * n_seeds, M + 1, dtype=torch.float64),
                                U.repeat(3, 1), target, ETA, eps, 3.0, n_records=31)
    time_item3 = time.perf_counter() - t0
    steps3 = STEPS_ITEM3 * n_seeds // 20

    rows = [
        {"case": "item 1 (eps=2e-5, tau=0.035)", "sgd_steps": STEPS_ITEM1,
         "sgd_loop_s": per_step_loop * STEPS_ITEM1, "mflib_online_sgd_s": per_step_torch * STEPS_ITEM1,
         "population_flow_s": time_item1, "flow_steps": item1.steps,
         "speedup_vs_loop": per_step_loop * STEPS_ITEM1 / time_item1,
         "final_loss": float(item1.loss[0, -1])},
        {"case": f"item 3 (eps sweep, tau=3, {n_seeds} seeds)", "sgd_steps": steps3,
         "sgd_loop_s": per_step_loop * steps3, "mflib_online_sgd_s": per_step_torch * steps3,
         "population_flow_s": time_item3, "flow_steps": item3.steps,
         "speedup_vs_loop": per_step_loop * steps3 / time_item3,
         "final_loss": float(item3.loss[:, -1].median())},
    ]
    out = {"machine": platform.platform(), "processor": platform.processor(),
           "torch": torch.__version__, "threads": torch.get_num_threads(),
           "probe_steps": probe, "per_step_sgd_loop_us": 1e6 * per_step_loop,
           "per_step_mflib_online_sgd_us": 1e6 * per_step_torch,
           "note": "SGD times are extrapolated from the probe; shared 2-core machine, contended",
           "table": rows}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2))
    print(f"per-sample SGD loop: {1e6 * per_step_loop:.1f} us/step (NumPy), "
          f"{1e6 * per_step_torch:.1f} us/step (mflib.train_sgd, torch)\n")
    print("| case | SGD steps (h=1e-5) | SGD loop (extrapolated) | mflib online SGD (extrapolated) "
          "| population flow | flow steps | speed-up vs loop |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['case']} | {r['sgd_steps']:.3g} | {r['sgd_loop_s'] / 3600:.1f} h "
              f"| {r['mflib_online_sgd_s'] / 3600:.1f} h | {r['population_flow_s']:.1f} s "
              f"| {r['flow_steps']} | {r['speedup_vs_loop']:.3g}x |")


if __name__ == "__main__":
    main()
