"""Attention-only timing of 3D window attention against dense SDPA, for the natural and 3D-tiled token orders.

Per token order it prints: plan build time (paid once per grid, then cached), attention time per backend,
speed-up over dense SDPA, token density (share of (query, key) pairs in the window), work share (tiles the
kernel computes, relative to the tiles of dense attention on the unpadded sequence: the predicted time ratio
for a kernel whose cost is proportional to tiles) and the share of computed tiles that need no token mask.

    .venv/bin/python benchmarks/bench_window.py --grid 3x68x120 --orders none,2x8x8
    .venv/bin/python benchmarks/bench_window.py --grid 21x68x120 --plan-only   # FreeSwim 1088x1920: plans only
"""

from __future__ import annotations

import argparse
import math
import time

import torch
import torch.nn.functional as F

from vidattn.benchmarking import best_time
from vidattn.layout import VideoLayout
from vidattn.patterns.window import window_plan
from vidattn.processors.window import FREESWIM_WINDOW, WindowConfig, window_attention


def _parse_tile(spec: str) -> tuple[int, int, int] | None:
    if spec.lower() in ("none", "natural"):
        return None
    return tuple(int(x) for x in spec.lower().split("x"))  # type: ignore[return-value]


def _parse_window(spec: str) -> tuple:
    return tuple(None if part.lower() in ("none", "all", "-1") else int(part) for part in spec.split(","))


def bench_window(
    layout: VideoLayout,
    config: WindowConfig,
    orders: tuple[tuple[int, int, int] | None, ...] = (None, (2, 8, 8)),
    backends: tuple[str, ...] = ("flex",),
    heads: int = 1,
    head_dim: int = 128,
    repeats: int = 1,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    dense: bool = True,
    plan_only: bool = False,
) -> list[dict]:
    """One row per (order, backend) plus the dense SDPA row; times in seconds."""
    dev = torch.device(device)
    n = layout.total_tokens
    g = torch.Generator().manual_seed(0)
    rows = []
    q = k = v = None
    if not plan_only:
        q, k, v = (torch.randn(1, heads, n, head_dim, generator=g).to(dev, dtype) for _ in range(3))
    dense_s = math.nan
    with torch.no_grad():
        if dense and not plan_only:
            dense_s = best_time(lambda: F.scaled_dot_product_attention(q, k, v), repeats, dev)[0]
        rows.append(dict(order="-", backend="sdpa", build_s=0.0, attention_s=dense_s, speedup=1.0, token_density=1.0, work=1.0, full=1.0))
        for tile in orders:
            cfg = WindowConfig(**{**config.__dict__, "tile": tile})
            start = time.perf_counter()
            wplan = window_plan(layout, cfg.pattern(), dev)
            build = time.perf_counter() - start
            work = wplan.tile_density * (wplan.plan.seq_len / n) ** 2
            info = dict(order="natural" if tile is None else "x".join(map(str, tile)), build_s=build, token_density=wplan.token_density(), work=work, full=wplan.full_share)
            scale = cfg.scale_factor / math.sqrt(head_dim)
            for backend in backends:
                t = math.nan if plan_only else best_time(lambda: window_attention(q, k, v, wplan, None, backend, scale), repeats, dev)[0]
                rows.append(dict(info, backend=backend, attention_s=t, speedup=dense_s / t))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--grid", default="3x68x120", help="latent tokens FxHxW (21x68x120 is 81 frames at 1088x1920)")
    p.add_argument("--window", default=",".join("none" if w is None else str(w) for w in FREESWIM_WINDOW), help="half-widths frames,rows,cols (none = whole axis)")
    p.add_argument("--no-inward", action="store_true")
    p.add_argument("--tile-aligned", action="store_true", help="sliding tile attention: --size counts whole tiles of each order")
    p.add_argument("--size", default=None, help="full window sizes frames,rows,cols instead of --window (in tiles with --tile-aligned)")
    p.add_argument("--orders", default="none,1x8x16", help="comma list of token orders: none (frame-major) or FxHxW tiles")
    p.add_argument("--backends", default="flex")
    p.add_argument("--heads", type=int, default=1)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--block-size", type=int, default=128)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--no-dense", action="store_true", help="skip the dense SDPA baseline (too slow on CPU at full size)")
    p.add_argument("--plan-only", action="store_true", help="build the plans and report densities, no attention")
    args = p.parse_args()
    layout = VideoLayout.parse(args.grid)
    window, size = (None, _parse_window(args.size)) if args.size else (_parse_window(args.window), None)
    config = WindowConfig(window=window, size=size, inward=not args.no_inward, block_size=args.block_size, tile_aligned=args.tile_aligned)
    orders = tuple(_parse_tile(s) for s in args.orders.split(","))
    rows = bench_window(
        layout, config, orders, tuple(args.backends.split(",")), args.heads, args.head_dim, args.repeats, args.device,
        getattr(torch, args.dtype), not args.no_dense, args.plan_only,
    )
    print(f"grid {layout} ({layout.total_tokens} tokens), window {args.size or args.window} inward={not args.no_inward} "
          f"tile_aligned={args.tile_aligned}, "
          f"{args.heads} head(s) x {args.head_dim}, {args.dtype}, {args.device}")
    print(f"{'order':<9}{'backend':<8}{'build s':>8}{'attn s':>9}{'dense/x':>9}{'tokens':>8}{'work':>7}{'1/work':>8}{'full':>7}")
    for r in rows:
        print(f"{r['order']:<9}{r['backend']:<8}{r['build_s']:>8.2f}{r['attention_s']:>9.3f}{r['speedup']:>9.2f}"
              f"{r['token_density']:>8.3f}{r['work']:>7.3f}{1 / r['work']:>8.2f}{r['full']:>7.3f}")


if __name__ == "__main__":
    main()
