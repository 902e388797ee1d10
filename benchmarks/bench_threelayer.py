"""Closed-form rescaled gradients of :mod:`mflib.threelayer` against width-rescaled autograd.

``threelayer.gradients`` (closed form, what ``train`` uses) is timed side by side with
``threelayer.autograd_gradients`` (the same quantities through ``torch.autograd``, the
alternative a user would write), on full-batch data of 128 points in dimension 4.
Writes ``benchmarks/results/threelayer.json`` and prints a Markdown table.

Run: ``python benchmarks/bench_threelayer.py``.  On a shared, loaded machine the
absolute times are inflated; the ratio is the quantity of interest.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import torch

from mflib import threelayer as tl


def _time(fn, reps):
    fn()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps


def main():
    g = torch.Generator().manual_seed(0)
    x, y, _ = tl.teacher_data(128, 3, generator=g)
    x = tl.with_bias(x)
    rows = []
    for dtype in (torch.float64, torch.float32):
        for n, batch in ((64, 8), (256, 2), (1024, 1)):
            p = tl.iid_embedding(4, n, generator=g, dtype=dtype).sample(n, n, batch=batch, generator=g).params
            xd, yd = x.to(dtype), y.to(dtype)
            reps = 20 if n < 1024 else 5
            closed = _time(lambda: tl.gradients(p, xd, yd), reps)
            auto = _time(lambda: tl.autograd_gradients(p, xd, yd), reps)
            rows.append({"dtype": str(dtype).replace("torch.", ""), "n1=n2": n, "batch": batch,
                         "closed_form_ms": 1e3 * closed, "autograd_ms": 1e3 * auto,
                         "speedup": auto / closed})
    out = {"machine": platform.platform(), "processor": platform.processor(),
           "threads": torch.get_num_threads(), "torch": torch.__version__, "table": rows}
    path = Path(__file__).parent / "results" / "threelayer.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    print("| dtype | n1=n2 | batch | closed form (ms) | autograd (ms) | speed-up |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['dtype']} | {r['n1=n2']} | {r['batch']} | {r['closed_form_ms']:.2f} | "
              f"{r['autograd_ms']:.2f} | {r['speedup']:.2f} |")


if __name__ == "__main__":
    main()
