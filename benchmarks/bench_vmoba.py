"""Attention-only timing of VMoBA against dense SDPA, per partition kind (1d, 2d, 3d).

Prints, per kind: selection time (gate + threshold rule + tile plan, paid every call), attention time for each
backend, speed-up of selection + attention over dense SDPA, nominal token density (share of (query, key)
pairs selected) and realised tile density (share of 128 x 128 tiles the kernel computes: a tile is computed
if any of its queries picked any of its key blocks).

    .venv/bin/python benchmarks/bench_vmoba.py --grid 21x30x52 --heads 2 --head-dim 128
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from vidattn.benchmarking import best_time, synthetic_qkv
from vidattn.layout import VideoLayout
from vidattn.patterns.vmoba import KINDS, build_partition, vmoba_plan
from vidattn.processors.vmoba import VMoBAConfig, attention_with_plan


def bench_vmoba(
    layout: VideoLayout,
    config: VMoBAConfig,
    heads: int = 2,
    head_dim: int = 128,
    backends: tuple[str, ...] = ("flex",),
    kinds: tuple[str, ...] = KINDS,
    repeats: int = 2,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    smooth: float = 0.0,
    seed: int = 0,
) -> list[dict]:
    """One row per (kind, backend) plus the dense row: times in seconds, densities, speed-up over dense SDPA."""
    dev = torch.device(device)
    q, k, v = (x.to(dev, dtype) for x in synthetic_qkv(layout, heads, head_dim, smooth, seed))
    rows = []
    with torch.no_grad():
        dense = best_time(lambda: F.scaled_dot_product_attention(q, k, v), repeats, dev)[0]
        rows.append(dict(kind="-", backend="sdpa", select_s=0.0, attention_s=dense, speedup=1.0, token_density=1.0, tile_density=1.0))
        for kind in kinds:
            part = build_partition(layout, kind, config.chunk(kind), dev)
            args = (config.select_mode, config.threshold_type, config.threshold, config.topk_for(kind), config.block_size, config.group_queries)
            select = best_time(lambda: vmoba_plan(q, k, part, *args), repeats, dev)[0]
            vplan = vmoba_plan(q, k, part, *args)
            for backend in backends:
                attention = best_time(lambda: attention_with_plan(q, k, v, vplan, backend=backend), repeats, dev)[0]
                rows.append(
                    dict(
                        kind=kind, backend=backend, blocks=part.num_blocks, select_s=select, attention_s=attention,
                        speedup=dense / (select + attention), token_density=vplan.token_density, tile_density=vplan.tile_density,
                    )
                )
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--grid", default="21x30x52", help="latent tokens FxHxW")
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--backends", default="flex", help="comma-separated: flex, gather, dense")
    p.add_argument("--kinds", default="1d,2d,3d")
    p.add_argument("--temporal-chunk", type=int, default=2)
    p.add_argument("--spatial-chunk", default="4,13")
    p.add_argument("--st-chunk", default="4,4,13")
    p.add_argument("--threshold", type=float, default=0.25)
    p.add_argument("--threshold-type", default="query_head")
    p.add_argument("--select-mode", default="threshold")
    p.add_argument("--topk", default="2,6,18")
    p.add_argument("--block-size", type=int, default=128)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--no-group-queries", action="store_true", help="keep queries in partition order (no per-head regrouping)")
    p.add_argument("--smooth", type=float, default=0.0, help="share of a smooth spatio-temporal field in q/k/v (0 = iid noise)")
    args = p.parse_args(argv)

    ints = lambda s: tuple(int(x) for x in s.split(","))  # noqa: E731
    topk = ints(args.topk)
    config = VMoBAConfig(
        temporal_chunk=args.temporal_chunk, spatial_chunk=ints(args.spatial_chunk), st_chunk=ints(args.st_chunk),
        threshold=args.threshold, threshold_type=args.threshold_type, select_mode=args.select_mode,
        topk=topk[0] if len(topk) == 1 else topk, block_size=args.block_size,
        group_queries=not args.no_group_queries,
    )
    layout = VideoLayout.parse(args.grid)
    rows = bench_vmoba(
        layout, config, args.heads, args.head_dim, tuple(args.backends.split(",")), tuple(args.kinds.split(",")),
        args.repeats, args.device, getattr(torch, args.dtype), args.smooth,
    )
    print(f"grid {layout} ({layout.total_tokens} tokens), {args.heads} heads x {args.head_dim}, {args.dtype}, {args.device}; "
          f"{config.select_mode} {config.threshold_type} threshold {config.threshold}, block {config.block_size}, group queries {config.group_queries}, smooth {args.smooth}")
    print(f"{'kind':<5}{'blocks':>7}{'backend':>8}{'select ms':>11}{'attn ms':>10}{'sel/attn':>9}{'dense/x':>9}"
          f"{'token dens':>11}{'tile dens':>10}{'goal 0.6/tile':>14}")
    for r in rows:
        goal = 0.6 / r["tile_density"]
        print(f"{r['kind']:<5}{r.get('blocks', '-'):>7}{r['backend']:>8}{r['select_s'] * 1e3:>11.1f}{r['attention_s'] * 1e3:>10.1f}"
              f"{r['select_s'] / r['attention_s']:>9.2f}{r['speedup']:>9.2f}{r['token_density']:>11.3f}{r['tile_density']:>10.3f}{goal:>14.2f}")


if __name__ == "__main__":
    main()
