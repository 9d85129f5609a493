"""VMoBA training step on the CPU (selection, forward, backward through the processor): gather vs ranges vs dense SDPA.

One thread, process CPU time, backends interleaved, best of ``--repeats`` after a warm-up round. Gather keeps every
chunk's scores for its backward (GBs at 21x30x52): keep the grid small.

    PYTHONPATH=src .venv/bin/python benchmarks/bench_vmoba_training.py --grid 21x15x26 --dtypes float32,bfloat16
"""

from __future__ import annotations

import argparse
import math
import os
import time

import torch
import torch.nn.functional as F

from vidattn.benchmarking import synthetic_qkv
from vidattn.layout import VideoLayout
from vidattn.processors.registry import make_processor


def bench(layout: VideoLayout, dtype: torch.dtype, kind: str, backends: list[str], heads: int, head_dim: int, repeats: int) -> dict[str, float]:
    """Best CPU seconds of one forward + backward per backend ('sdpa': dense SDPA)."""
    q, k, v = (x.to(dtype) for x in synthetic_qkv(layout, heads, head_dim))
    grad = torch.randn_like(q)
    fns = {"sdpa": F.scaled_dot_product_attention}
    for backend in backends:
        proc = make_processor("vmoba", layout=layout, backend=backend, kind=kind)
        fns[backend] = lambda a, b, c, proc=proc: proc.attend(a, b, c, layout, None, "wan")
    best = {name: math.inf for name in fns}
    for repeat in range(repeats + 1):
        for name, fn in fns.items():
            leaves = [x.clone().requires_grad_(True) for x in (q, k, v)]
            start = time.process_time()
            fn(*leaves).backward(grad)
            seconds = time.process_time() - start
            if repeat:
                best[name] = min(best[name], seconds)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--grid", default="21x15x26")
    p.add_argument("--kind", default="1d")
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--backends", default="gather,ranges")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(1)
    layout = VideoLayout.parse(args.grid)
    print(f"grid {layout} ({layout.total_tokens} tokens), {args.heads} heads x {args.head_dim}, kind {args.kind}, 1 thread, CPU time, load {os.getloadavg()}")
    print("| dtype | backend | forward + backward s | dense / backend |")
    print("|---|---|---:|---:|")
    for name in args.dtypes.split(","):
        best = bench(layout, getattr(torch, name), args.kind, args.backends.split(","), args.heads, args.head_dim, args.repeats)
        for backend, seconds in best.items():
            print(f"| {name} | {'dense SDPA' if backend == 'sdpa' else backend} | {seconds:.3f} | {best['sdpa'] / seconds:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
