"""The ``rows`` backend's column blocks: one block (keys span whole rows) against the default count, with dense
SDPA interleaved in the same rounds, forward or forward + backward, best of ``--repeats`` rounds.

    PYTHONPATH=src .venv/bin/python benchmarks/bench_window_rows.py --grid 21x30x52 --window 1,7,13 --heads 2
    PYTHONPATH=src .venv/bin/python benchmarks/bench_window_rows.py --grid 3x68x120 --window none,15,26 --heads 1 --dtype float32
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from vidattn.benchmarking import best_times_interleaved
from vidattn.kernels.window_rows import row_band_attention, row_bands
from vidattn.layout import VideoLayout
from vidattn.processors.window import WindowAttnProcessor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", default="21x30x52")
    parser.add_argument("--window", default="1,7,13", help="half-widths (frames, rows, cols); 'none' = the whole axis")
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--mode", default="forward", choices=["forward", "backward"])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    grid = tuple(int(x) for x in args.grid.split("x"))
    window = tuple(None if x == "none" else int(x) for x in args.window.split(","))
    layout = VideoLayout(*grid)
    wplan = WindowAttnProcessor(window=window, tile=None).window_plan(layout)
    tables = wplan.axis_tables()
    schedules = {"one block": row_bands(*tables, column_blocks=1), "default": row_bands(*tables)}
    backward = args.mode == "backward"
    q, k, v = (torch.randn(1, args.heads, layout.total_tokens, args.head_dim, dtype=getattr(torch, args.dtype), requires_grad=backward) for _ in range(3))
    grad = torch.randn_like(q)

    def call(attend):
        if not backward:
            return attend
        return lambda: attend().backward(grad)  # the forward is timed too: the backward needs it

    calls = {"dense": call(lambda: F.scaled_dot_product_attention(q, k, v))}
    calls |= {name: call(lambda s=s: row_band_attention(q, k, v, s, layout)) for name, s in schedules.items()}
    with torch.set_grad_enabled(backward):
        best = best_times_interleaved(calls, args.repeats, q.device)
    timed = "forward + backward" if backward else "forward"
    print(f"grid {args.grid}, window {window}, {args.heads} x {args.head_dim}, {args.dtype}, {timed}")
    print(f"tile share {wplan.tile_density:.3f}, token share {wplan.token_density():.3f}")
    for name, seconds in best.items():
        blocks = "" if name == "dense" else f"  {len(schedules[name].blocks)} column block(s)"
        print(f"{name:<10} {seconds * 1e3:9.0f} ms  {best['dense'] / seconds:6.2f}x{blocks}")


if __name__ == "__main__":
    main()
