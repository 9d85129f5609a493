"""Twelve grids and batch sizes through the flex backend in one process: time, peak RSS and error of each call.

Before vidattn bucketed lengths and gave its compiled FlexAttention its own budget, calls past torch's recompile
limit (8) ran an unfused eager path (seconds, gigabytes) that also ignored the plan's tiles (wrong output).
Each row: the call's wall time (compiles included), the process's peak RSS during the call (VmHWM, reset before
each call), and the max abs error against SDPA with the plan's explicit mask.

    PYTHONPATH=src .venv/bin/python benchmarks/bench_recompile.py                 # radial at 30x52, 3-9 frames
    PYTHONPATH=src .venv/bin/python benchmarks/bench_recompile.py --method sta
"""

from __future__ import annotations

import argparse
import time

import torch

from vidattn.kernels.block_sparse import block_sparse_attention
from vidattn.layout import VideoLayout
from vidattn.patterns.radial import RadialPattern, radial_plan

# (frames, batch): 12 calls, the last one Wan's 9x30x52 at batch 2 (CFG).
SEQUENCE = [(3, 1), (3, 2), (4, 1), (4, 3), (5, 2), (5, 1), (6, 1), (6, 2), (7, 3), (8, 1), (8, 2), (9, 2)]


def peak_rss_reset() -> bool:
    """Reset the kernel's VmHWM counter for this process (Linux); False where it cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_gb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    return float("nan")


def make_plan(method: str, layout: VideoLayout, block_size: int):
    if method == "radial":
        return radial_plan(layout, RadialPattern(decay=0.2, block_size=block_size)), None
    from vidattn.patterns.window import WindowPattern, window_extents, window_plan

    wplan = window_plan(layout, WindowPattern(window_extents(size=(3, 3, 3)), block_size=block_size, tile=(1, 8, 16), tile_aligned=True))
    return wplan.plan, wplan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", choices=("radial", "sta"), default="radial")
    parser.add_argument("--rows", type=int, default=30)
    parser.add_argument("--cols", type=int, default=52)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--no-check", action="store_true", help="skip the dense reference (saves its memory)")
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    can_reset = peak_rss_reset()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, method {args.method}, {args.dtype}, "
          f"{args.heads}x{args.head_dim}; peak RSS per call: {'VmHWM reset per call' if can_reset else 'process peak'}")
    print(f"{'call':>4} {'grid':>10} {'batch':>5} {'tokens':>7} {'time s':>8} {'peak GB':>8} {'max err':>9}")
    for i, (frames, batch) in enumerate(SEQUENCE):
        layout = VideoLayout(frames, args.rows, args.cols)
        plan, _ = make_plan(args.method, layout, args.block_size)
        g = torch.Generator().manual_seed(i)
        q, k, v = (torch.randn(batch, args.heads, plan.seq_len, args.head_dim, generator=g).to(dtype) for _ in range(3))
        peak_rss_reset()
        start = time.perf_counter()
        with torch.no_grad():
            out = block_sparse_attention(q, k, v, plan, backend="flex")
        seconds = time.perf_counter() - start
        peak = peak_rss_gb()
        err = float("nan")
        if not args.no_check:
            with torch.no_grad():
                ref = block_sparse_attention(q.float(), k.float(), v.float(), plan, backend="dense")
            err = (out.float() - ref).abs().max().item()
        grid = f"{frames}x{args.rows}x{args.cols}"
        print(f"{i + 1:>4} {grid:>10} {batch:>5} {plan.seq_len:>7} {seconds:>8.2f} {peak:>8.2f} {err:>9.2e}", flush=True)


if __name__ == "__main__":
    main()
