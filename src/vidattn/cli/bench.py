"""`vidattn bench` (attention-only timing of a method against dense SDPA) and `vidattn mask` (its mask as a PNG)."""

from __future__ import annotations

from pathlib import Path

import torch

from ..benchmarking import best_time, synthetic_qkv
from ..layout import VideoLayout
from ..processors.registry import get_method, make_processor
from .params import parse_params
from .pictures import partition_picture, stack_rows, tiles_picture


def cmd_bench(args) -> None:
    if args.suite:
        from ..bench_suite import run_suite

        methods = args.methods.split(",") if args.methods else None
        report = run_suite(args.suite, args.out, methods=methods, device=None if args.suite == "gpu" else "cpu")
        print(report.to_markdown())
        print(f"wrote {args.out}/bench.json and bench.md")
        return
    layout = VideoLayout.parse(args.grid)
    device = torch.device(args.device)
    params = parse_params(args.param)
    q, k, v = (x.to(device, getattr(torch, args.dtype)) for x in synthetic_qkv(layout, args.heads, args.head_dim, args.smooth))
    with torch.no_grad():
        dense, _ = best_time(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v), args.repeats, device)
        print(f"grid {layout} ({layout.total_tokens} tokens), {args.heads} heads x {args.head_dim}, {args.dtype}, {device}")
        print(f"{'method':<10}{'backend':<9}{'time (ms)':>11}{'dense/x':>9}{'density':>9}")
        print(f"{'sdpa':<10}{'dense':<9}{dense * 1e3:>11.1f}{1.0:>9.2f}{1.0:>9.3f}")
        for backend in _backends(args):
            proc = make_processor(args.method, layout=layout, backend=backend, **params)
            seconds, _ = best_time(lambda: proc.attend(q, k, v, layout, None, args.family), args.repeats, device)
            density = proc.density(q, k, layout, args.family)
            shown = "n/a" if density is None else f"{density:.3f}"
            print(f"{args.method:<10}{backend:<9}{seconds * 1e3:>11.1f}{dense / seconds:>9.2f}{shown:>9}")


def _backends(args) -> list[str]:
    """``--backends``, or every backend of the method except the reference (``dense``) and ``auto``'s alias."""
    allowed = get_method(args.method).config.backends
    if args.backends:
        return args.backends.split(",")
    return [b for b in allowed if b not in ("auto", "dense")] or ["auto"]


def cmd_mask(args) -> None:
    import imageio

    layout = VideoLayout.parse(args.grid)
    proc = make_processor(args.method, layout=layout, **parse_params(args.param))
    if args.method == "vmoba":
        from ..processors.vmoba import vmoba_partition_maps

        maps = vmoba_partition_maps(layout, proc.config)
        image = stack_rows([partition_picture(maps[kind]) for kind in ("1d", "2d", "3d")])
        note = "rows: 1D, 2D, 3D partitions of the first frames, one colour per block"
    else:
        q = torch.empty(1, 1, layout.total_tokens, 1)  # static plans read only the device (and the head dim: Monarch)
        plan = proc.plan(q, q, layout, args.family)
        plan = getattr(plan, "plan", plan)  # window: the block plan in the kernel's token order
        if not hasattr(plan, "tiles"):
            raise ValueError(f"method {args.method!r} has no block mask to draw")
        image = tiles_picture(plan.tiles[0, 0])
        note = f"{plan.num_blocks}x{plan.num_blocks} tiles, density {plan.density:.3f}"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    imageio.imwrite(args.out, image)
    print(f"wrote {args.out}: {note}")
