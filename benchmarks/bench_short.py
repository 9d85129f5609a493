"""Radial plans at short sequences on the CPU: SDPA without a mask, SDPA with the plan's memoised mask (``dense``,
what ``auto`` runs up to DENSE_MAX_MASK entries), ``segments`` and ``flex``, per call, best of ``--repeats``.

    PYTHONPATH=src .venv/bin/python benchmarks/bench_short.py
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from vidattn.kernels import block_sparse_attention
from vidattn.layout import VideoLayout
from vidattn.patterns.radial import RadialPattern, radial_plan

# (grid, block size, heads, head dim): the default model's grid and a few sizes past it
CASES = [
    ((5, 8, 8), 32, 2, 32),
    ((5, 8, 8), 16, 2, 32),
    ((9, 8, 8), 16, 2, 32),
    ((9, 16, 16), 32, 2, 64),
    ((13, 16, 24), 64, 4, 64),
]


def best_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    print("grid (tokens), block, heads x dim | dtype | sdpa | mask (dense) | segments | flex  [ms]")
    for grid, block, heads, dim in CASES:
        layout = VideoLayout(*grid)
        plan = radial_plan(layout, RadialPattern(decay=0.2, block_size=block))
        for dtype in (torch.float32, torch.bfloat16):
            q, k, v = (torch.randn(1, heads, layout.total_tokens, dim, dtype=dtype) for _ in range(3))
            repeats = args.repeats if layout.total_tokens < 3000 else max(3, args.repeats // 4)
            with torch.no_grad():
                times = [best_ms(lambda: F.scaled_dot_product_attention(q, k, v), repeats)]
                for backend in ("dense", "segments", "flex"):
                    times.append(best_ms(lambda b=backend: block_sparse_attention(q, k, v, plan, backend=b), repeats))
            cells = " | ".join(f"{t:.2f}" for t in times)
            print(f"{layout} ({layout.total_tokens}), {block}, {heads} x {dim} | {str(dtype)[6:]} | {cells}", flush=True)


if __name__ == "__main__":
    main()
