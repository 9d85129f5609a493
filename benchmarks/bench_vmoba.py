"""Attention-only timing of VMoBA against dense SDPA, per partition kind (1d, 2d, 3d), forward and backward.

Per kind and backend: the per-call selection (gate + threshold rule, plus the tile plan for the tile backends
flex/gather/dense; ``ranges`` runs the selection itself and builds no tiles), the attention time, the speed-up of
selection + attention over dense SDPA, the token density (share of (query, key) pairs selected: what ``ranges``
computes) and the tile density (share of 128 x 128 tiles the tile kernels compute). Backends are interleaved within
each repeat (a load change hits all alike) and the best of ``--repeats`` is kept. ``--modes backward`` times one
``backward()`` of a forward run under autograd against SDPA's backward (flex has no CPU backward; gather's keeps
GBs of scores at this size: skipped there).

    OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python benchmarks/bench_vmoba.py --grid 21x30x52 --heads 2 --head-dim 128 \\
        --dtypes bfloat16,float32 --backends flex,ranges --modes forward,backward --repeats 3 --cpu-time
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
from vidattn.patterns.vmoba import KINDS, build_partition, vmoba_plan, vmoba_selection
from vidattn.processors.vmoba import VMoBAConfig, attention_with_plan, attention_with_selection

CLOCK = {"now": time.perf_counter}
NO_CPU_BACKWARD = ("flex", "gather")


def _timed(fn) -> float:
    start = CLOCK["now"]()
    fn()
    return CLOCK["now"]() - start


def _calls(backend: str, q, k, v, part, config: VMoBAConfig, kind: str):
    """(select, attend(selected)) callables of one backend: what one VMoBA call runs, split in two."""
    if backend == "sdpa":
        return (lambda: None), (lambda _: F.scaled_dot_product_attention(q, k, v))
    sel = (config.select_mode, config.threshold_type, config.threshold, config.topk_for(kind))
    if backend == "ranges":
        return (lambda: vmoba_selection(q, k, part, *sel)), (lambda s: attention_with_selection(q, k, v, s, part))
    return (lambda: vmoba_plan(q, k, part, *sel, config.block_size, config.group_queries)), (lambda p: attention_with_plan(q, k, v, p, backend=backend))


def bench_vmoba(
    layout: VideoLayout,
    config: VMoBAConfig,
    heads: int = 2,
    head_dim: int = 128,
    backends: tuple[str, ...] = ("flex", "ranges"),
    kinds: tuple[str, ...] = KINDS,
    repeats: int = 2,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    smooth: float = 0.0,
    seed: int = 0,
    backward: bool = False,
) -> list[dict]:
    """One row per (kind, backend) plus the dense row: times in seconds, densities, speed-up over dense SDPA."""
    dev = torch.device(device)
    q, k, v = (x.to(dev, dtype) for x in synthetic_qkv(layout, heads, head_dim, smooth, seed))
    names = [("-", "sdpa")] + [(kind, b) for kind in kinds for b in backends if not (backward and b in NO_CPU_BACKWARD)]
    parts = {kind: build_partition(layout, kind, config.chunk(kind), dev) for kind in kinds}
    densities = {}
    with torch.no_grad():
        for kind, part in parts.items():
            vplan = vmoba_plan(q, k, part, config.select_mode, config.threshold_type, config.threshold, config.topk_for(kind), config.block_size, config.group_queries)
            densities[kind] = (vplan.token_density, vplan.tile_density, part.num_blocks)
    best = {name: [math.inf, math.inf] for name in names}
    grad = torch.randn_like(q)
    leaves = [x.clone().requires_grad_(True) for x in (q, k, v)]
    for repeat in range(repeats + 1):  # round 0 warms up (FlexAttention compiles)
        for kind, backend in names:
            if backward:
                select, attend = _calls(backend, *leaves, parts.get(kind), config, kind)
                with torch.no_grad():
                    chosen = select()
                out = attend(chosen)
                times = (0.0, _timed(lambda: out.backward(grad)))
                for x in leaves:
                    x.grad = None
                del out
            else:
                select, attend = _calls(backend, q, k, v, parts.get(kind), config, kind)
                with torch.no_grad():
                    start = CLOCK["now"]()
                    chosen = select()
                    middle = CLOCK["now"]()
                    attend(chosen)
                    times = (middle - start, CLOCK["now"]() - middle)
            if repeat:
                best[(kind, backend)] = [min(a, b) for a, b in zip(best[(kind, backend)], times)]
    dense = sum(best[("-", "sdpa")])
    rows = []
    for (kind, backend), (select, attention) in best.items():
        token, tile, blocks = densities.get(kind, (1.0, 1.0, "-"))
        rows.append(dict(kind=kind, backend=backend, blocks=blocks, select_s=select, attention_s=attention,
                         speedup=dense / (select + attention), token_density=token, tile_density=tile))
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--grid", default="21x30x52", help="latent tokens FxHxW")
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--dtypes", default="float32", help="comma-separated: float32, bfloat16, float16")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--backends", default="flex,ranges", help="comma-separated: flex, gather, dense, ranges (CPU)")
    p.add_argument("--kinds", default="1d,2d,3d")
    p.add_argument("--modes", default="forward", help="comma-separated: forward, backward")
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
    p.add_argument("--cpu-time", action="store_true", help="time with process CPU time (use with OMP_NUM_THREADS=1 on a loaded machine)")
    args = p.parse_args(argv)
    if args.cpu_time:
        CLOCK["now"] = time.process_time

    ints = lambda s: tuple(int(x) for x in s.split(","))  # noqa: E731
    topk = ints(args.topk)
    config = VMoBAConfig(
        temporal_chunk=args.temporal_chunk, spatial_chunk=ints(args.spatial_chunk), st_chunk=ints(args.st_chunk),
        threshold=args.threshold, threshold_type=args.threshold_type, select_mode=args.select_mode,
        topk=topk[0] if len(topk) == 1 else topk, block_size=args.block_size,
        group_queries=not args.no_group_queries,
    )
    layout = VideoLayout.parse(args.grid)
    print(f"grid {layout} ({layout.total_tokens} tokens), {args.heads} heads x {args.head_dim}, {args.device}, "
          f"threads {torch.get_num_threads()}, {'process CPU time' if args.cpu_time else 'wall time'}, load {os.getloadavg()}; "
          f"{config.select_mode} {config.threshold_type} threshold {config.threshold}, block {config.block_size}, group queries {config.group_queries}, smooth {args.smooth}")
    print("| mode | dtype | kind | blocks | backend | select ms | attn ms | dense / VMoBA | token density | tile density | goal 0.6 / tile |")
    print("|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|")
    for mode in args.modes.split(","):
        for dtype_name in args.dtypes.split(","):
            rows = bench_vmoba(
                layout, config, args.heads, args.head_dim, tuple(args.backends.split(",")), tuple(args.kinds.split(",")),
                args.repeats, args.device, getattr(torch, dtype_name), args.smooth, backward=mode == "backward",
            )
            for r in rows:
                name = "dense SDPA" if r["backend"] == "sdpa" else r["backend"]
                print(f"| {mode} | {dtype_name} | {r['kind']} | {r['blocks']} | {name} | {r['select_s'] * 1e3:.0f} | {r['attention_s'] * 1e3:.0f} | "
                      f"{r['speedup']:.2f}x | {r['token_density']:.3f} | {r['tile_density']:.3f} | {0.6 / r['tile_density']:.2f}x |", flush=True)
    print(f"load after {os.getloadavg()}")


if __name__ == "__main__":
    main()
