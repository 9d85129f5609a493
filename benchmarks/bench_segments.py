"""Radial attention on the CPU: dense SDPA vs the block-sparse backends (flex, gather, segments), forward and backward.

Backends are interleaved within each repeat (so a load change hits all alike) and the best of ``--repeats`` is kept;
ratios are dense time / backend time from the same run. Backward times one ``backward()`` of a forward run under
autograd (FlexAttention has no CPU backward, so it is skipped there).

    PYTHONPATH=src .venv/bin/python benchmarks/bench_segments.py --grid 21x30x52 --heads 2 --head-dim 128 --repeats 3
    # on a loaded machine: one thread, CPU time (barrier waits of a descheduled OpenMP thread hit the many
    # calls of segments far harder than the one call of dense SDPA)
    OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python benchmarks/bench_segments.py --cpu-time
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F

from vidattn.kernels import block_sparse_attention
from vidattn.layout import VideoLayout
from vidattn.patterns.radial import RadialPattern, radial_plan


def _forward(backend: str, q, k, v, plan):
    if backend == "sdpa":
        return lambda: F.scaled_dot_product_attention(q, k, v)
    return lambda: block_sparse_attention(q, k, v, plan, backend=backend)


CLOCK = {"now": time.perf_counter}


def _timed(fn) -> float:
    start = CLOCK["now"]()
    fn()
    return CLOCK["now"]() - start


def bench(layout: VideoLayout, decay: float, heads: int, head_dim: int, dtype: torch.dtype, backends: list[str], repeats: int, backward: bool, gather_backward: bool = False) -> dict:
    """Best and median time (s) per backend ('times', 'medians'); 'sdpa' is dense SDPA without a mask."""
    plan = radial_plan(layout, RadialPattern(decay=decay, sink=True))
    g = torch.Generator().manual_seed(0)
    n = layout.total_tokens
    q, k, v = (torch.randn(1, heads, n, head_dim, generator=g).to(dtype) for _ in range(3))
    # FlexAttention has no CPU backward; gather's backward keeps every chunk's scores (GBs at this size): opt-in.
    names = ["sdpa"] + [b for b in backends if not (backward and b in ("flex", "gather"))]
    if backward and gather_backward and "gather" in backends:
        names.append("gather")
    all_times: dict[str, list[float]] = {name: [] for name in names}
    if backward:
        grad = torch.randn(1, heads, n, head_dim, generator=g).to(dtype)
        qg, kg, vg = (x.clone().requires_grad_(True) for x in (q, k, v))
        for name in names:
            fn = _forward(name, qg, kg, vg, plan)

            def step(fn=fn):
                out = fn()
                back = _timed(lambda: out.backward(grad))
                for x in (qg, kg, vg):
                    x.grad = None
                return back

            step()  # warm-up
            all_times[name].append(step())
        for _ in range(repeats - 1):
            for name in names:
                fn = _forward(name, qg, kg, vg, plan)
                out = fn()
                all_times[name].append(_timed(lambda: out.backward(grad)))
                for x in (qg, kg, vg):
                    x.grad = None
    else:
        with torch.no_grad():
            fns = {name: _forward(name, q, k, v, plan) for name in names}
            for fn in fns.values():
                fn()  # warm-up (FlexAttention compiles, segments plans)
            for _ in range(repeats):
                for name, fn in fns.items():
                    all_times[name].append(_timed(fn))
    best = {name: min(ts) for name, ts in all_times.items()}
    medians = {name: statistics.median(ts) for name, ts in all_times.items()}
    return dict(density=plan.tile_density, times=best, medians=medians)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--grid", default="21x30x52")
    p.add_argument("--decay", type=float, default=0.2)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--modes", default="forward,backward")
    p.add_argument("--backends", default="flex,gather,segments", help="comma list of block_sparse_attention backends")
    p.add_argument("--gather-backward", action="store_true", help="also time gather's backward (needs several GB at 21x30x52)")
    p.add_argument("--cpu-time", action="store_true", help="time with process CPU time (use with OMP_NUM_THREADS=1 on a loaded machine)")
    args = p.parse_args()
    if args.cpu_time:
        CLOCK["now"] = time.process_time
    layout = VideoLayout.parse(args.grid)
    clock = "process CPU time" if args.cpu_time else "wall time"
    print(f"grid {layout} heads {args.heads} head_dim {args.head_dim} threads {torch.get_num_threads()} {clock} load {os.getloadavg()}")
    print("| mode | dtype | backend | best s | dense / backend (best) | median s | dense / backend (median) | density |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for mode in args.modes.split(","):
        for dtype_name in args.dtypes.split(","):
            dtype = getattr(torch, dtype_name)
            res = bench(layout, args.decay, args.heads, args.head_dim, dtype, args.backends.split(","), args.repeats, mode == "backward", args.gather_backward)
            dense, dense_med = res["times"]["sdpa"], res["medians"]["sdpa"]
            for name, t in res["times"].items():
                med = res["medians"][name]
                label = "dense SDPA" if name == "sdpa" else name
                print(f"| {mode} | {dtype_name} | {label} | {t:.3f} | {dense / t:.2f}x | {med:.3f} | {dense_med / med:.2f}x | {res['density']:.3f} |", flush=True)
    print(f"load after {os.getloadavg()}")


if __name__ == "__main__":
    main()
