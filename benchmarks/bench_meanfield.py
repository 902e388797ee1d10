"""Benchmark: one SGD step of the mean-field particle engine against the loop a
user would write (nn.Module + autograd + torch.optim.SGD), side by side in one
run; and the engine's FLOP/s against this machine's matmul FLOP/s for the same
shapes, measured in the same run.

Writes benchmarks/results/meanfield.json and prints a Markdown table.

    python benchmarks/bench_meanfield.py [--m 10000] [--d 100] [--batch 256] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from torch import nn

import mflib
from mflib import meanfield as mfm


class Naive(nn.Module):
    """The two-layer mean-field network as a user would write it."""

    def __init__(self, d, m):
        super().__init__()
        self.hidden = nn.Linear(d, m, bias=False)
        self.out = nn.Linear(m, 1, bias=False)
        self.m = m

    def forward(self, x):
        return self.out(torch.relu(self.hidden(x))).squeeze(1) / self.m


def _time(fn, steps):
    t0 = time.perf_counter()
    fn(steps)
    return (time.perf_counter() - t0) / steps


def run(m, d, batch, dtype, steps, repeats, n_data=8192):
    g = mflib.generator(0)
    teacher = mfm.init_particles(5, d, generator=g, dtype=dtype)
    x, y = mfm.gaussian_teacher_data(teacher, n_data, generator=g)
    theta = mfm.init_particles(m, d, generator=g, dtype=dtype)
    lr = 0.1

    def engine(k):
        mfm.train(theta, steps=k, lr=lr, method="sgd", x=x, y=y, batch=batch,
                  keep_thetas=False, generator=mflib.generator(1))

    net = Naive(d, m).to(dtype)
    with torch.no_grad():
        net.hidden.weight.copy_(theta[:, 1:])
        net.out.weight.copy_(theta[:, :1].T)
    opt = torch.optim.SGD(net.parameters(), lr=lr * m)

    def naive(k):
        gen = mflib.generator(1)
        for _ in range(k):
            idx = torch.randint(0, n_data, (batch,), generator=gen)
            opt.zero_grad()
            loss = 0.5 * ((net(x[idx]) - y[idx]) ** 2).mean()
            loss.backward()
            opt.step()

    # correctness: the two loops take the same steps
    engine_theta = mfm.train(theta, steps=3, lr=lr, method="sgd", x=x, y=y, batch=batch,
                             keep_thetas=False, generator=mflib.generator(1)).theta
    naive(3)
    naive_theta = torch.cat([net.out.weight.detach().T, net.hidden.weight.detach()], 1)
    agree = float((engine_theta - naive_theta).abs().max())

    p = d
    a = torch.randn(batch, p, dtype=dtype)
    b = torch.randn(p, m, dtype=dtype)
    c = torch.randn(m, batch, dtype=dtype)

    def matmul(k):
        for _ in range(k):
            torch.mm(a, b)      # forward shape
            torch.mm(c, a)      # backward shape

    engine(2), naive(2), matmul(2)  # warm up
    te, tn, tm = [], [], []
    for _ in range(repeats):  # interleaved, so that contention hits all three alike
        te.append(_time(engine, steps))
        tn.append(_time(naive, steps))
        tm.append(_time(matmul, steps))
    te, tn, tm = statistics.median(te), statistics.median(tn), statistics.median(tm)
    flops_step = 4 * batch * m * p + 4 * batch * m
    flops_mm = 4 * batch * m * p
    return {
        "dtype": str(dtype).replace("torch.", ""), "m": m, "d": d, "batch": batch,
        "engine_ms": 1e3 * te, "naive_ms": 1e3 * tn, "speedup": tn / te,
        "engine_gflops": flops_step / te / 1e9, "matmul_gflops": flops_mm / tm / 1e9,
        "fraction_of_matmul": (flops_step / te) / (flops_mm / tm), "max_abs_diff_3_steps": agree,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--m", type=int, default=10_000)
    ap.add_argument("--d", type=int, default=100)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = [run(args.m, args.d, args.batch, dt, args.steps, args.repeats)
            for dt in (torch.float32, torch.float64)]
    # a small network, where per-step overheads (autograd, optimizer, Python) dominate
    rows += [run(256, 10, 32, dt, 50 * args.steps, args.repeats)
             for dt in (torch.float32, torch.float64)]
    out = {"machine": platform.platform(), "processor": platform.processor(),
           "torch": torch.__version__, "threads": torch.get_num_threads(),
           "note": "shared 2-core CPU under load from other jobs: absolute times are inflated; "
                   "ratios are measured interleaved in one run",
           "table": rows}
    path = Path(__file__).parent / "results" / "meanfield.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)\n")
    print("| m | d | batch | dtype | engine ms/step | nn.Module+autograd+SGD ms/step | speed-up | engine GFLOP/s "
          "| matmul GFLOP/s | engine / matmul |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['m']} | {r['d']} | {r['batch']} | {r['dtype']} | {r['engine_ms']:.2f} | {r['naive_ms']:.2f} | {r['speedup']:.2f}x "
              f"| {r['engine_gflops']:.1f} | {r['matmul_gflops']:.1f} | "
              f"{100 * r['fraction_of_matmul']:.0f}% |")


if __name__ == "__main__":
    main()
