"""`vidattn bench` (attention-only timing of a method against dense SDPA) and `vidattn mask` (its mask as a picture).

Both check their arguments and estimate the memory they need before allocating anything.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time

import torch

from ..layout import VideoLayout
from ..processors.registry import METHODS, get_method, make_processor
from .checks import UsageError, check_output_file, check_output_folder, format_seconds, int_at_least, memory_limit_check, number_in
from .params import config_default, method_settings

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
TILE_BYTES = 8  # per (query tile, key tile): the bool tiles and full masks, the float copy taken for the density, the picture


def parse_grid(spec: str, option: str = "--grid") -> VideoLayout:
    """A latent grid FxHxW from the command line, each size >= 1."""
    from ..layout import parse_dims

    try:
        dims = parse_dims(spec, "FxHxW", "21x30x52", option)
    except ValueError as error:
        raise UsageError(str(error)) from None
    if min(dims) < 1:
        raise UsageError(f"{option} sizes must be >= 1 (latent frames x rows x columns), got {spec!r}")
    return VideoLayout(*dims)


def _layout(args) -> VideoLayout:
    return parse_grid(args.grid)


def _settings(args, layout: VideoLayout) -> dict:
    """Method settings (``--param`` over the CLI defaults), built once as the processor to validate them."""
    params = method_settings(args.method, args.param)
    try:
        make_processor(args.method, layout=layout, **params)
    except (TypeError, ValueError) as error:
        raise UsageError(f"--param: {error}") from None
    return params


def _blocks(method: str, params: dict, tokens: int) -> tuple[int, int]:
    block = config_default(method, "block_size", params) or 128
    return block, -(-tokens // block)


def bench_memory(args, layout: VideoLayout, params: dict) -> tuple[float, str]:
    """Bytes `bench` needs at least (the tensors it must hold), and how that splits."""
    n, heads = layout.total_tokens, args.heads
    tensors = 4 * heads * n * args.head_dim * DTYPE_BYTES[args.dtype]  # q, k, v, output
    if args.mode == "backward":
        tensors *= 2  # their gradients
    block, qb = _blocks(args.method, params, n)
    plan = TILE_BYTES * qb * qb if args.method != "dense" else 0
    select = heads * n * qb * 5 if args.method == "vmoba" else 0  # per-query block scores (fp32) and selection
    explicit = (n * n + heads * n * n * 4) if "dense" in _backends(args) else 0  # N x N mask and scores
    parts = [("q/k/v/out", tensors), (f"{qb}x{qb} tile plan", plan), ("block scores", select), ("dense backend's N x N mask and scores", explicit)]
    total = sum(p for _, p in parts)
    return total, ", ".join(f"{name} {size / 2**30:.2f} GiB" for name, size in parts if size)


def check_bench(args) -> tuple[VideoLayout, dict]:
    layout = _layout(args)
    int_at_least(args.repeats, 1, "--repeats", " (timed calls after one warm-up)")
    int_at_least(args.heads, 1, "--heads")
    int_at_least(args.head_dim, 1, "--head-dim")
    number_in(args.smooth, 0.0, 1.0, "--smooth", " (share of the smooth field in q/k/v)")
    backends = _backends(args)
    allowed = get_method(args.method).config.backends
    bad = [b for b in backends if b not in allowed]
    if bad or not backends:
        raise UsageError(f"--backends must be a comma-separated list of {', '.join(allowed)} ({args.method}'s kernels), got {args.backends!r}")
    if args.mode == "backward" and args.device == "cpu" and "flex" in backends:
        raise UsageError(f"--mode backward: FlexAttention has no backward on the CPU; use --backends {','.join(b for b in allowed if b != 'flex')}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {args.device}: no CUDA device is available here; use --device cpu")
    try:
        torch.device(args.device)
    except RuntimeError:
        raise UsageError(f"--device must be a torch device such as cpu or cuda:0, got {args.device!r}") from None
    params = _settings(args, layout)
    estimate, parts = bench_memory(args, layout, params)
    memory_limit_check(estimate, args.max_memory_gib, f"bench --grid {layout} ({layout.total_tokens:,} tokens)",
                       parts, "use a smaller --grid or fewer --heads, or raise --max-memory-gib")
    return layout, params


def _backends(args) -> list[str]:
    """``--backends``, or every backend of the method except the reference (``dense``) and ``auto``'s alias (those
    that cannot run the call's plan are then left out with a line saying why)."""
    if args.backends:
        return [b.strip() for b in args.backends.split(",")]
    skip = ("auto", "dense", "flex") if args.mode == "backward" and args.device == "cpu" else ("auto", "dense")
    return [b for b in get_method(args.method).config.backends if b not in skip] or ["auto"]


def _suite(args) -> None:
    from ..bench_suite import run_suite

    methods = [m.strip() for m in args.methods.split(",")] if args.methods else None
    bad = [m for m in methods or [] if m not in METHODS]
    if bad:
        raise UsageError(f"--methods must be names in {sorted(METHODS)} (comma-separated), got {', '.join(bad)}")
    check_output_folder(args.out)
    report = run_suite(args.suite, args.out, methods=methods, device=None if args.suite == "gpu" else "cpu")
    print(report.to_markdown())
    print(f"wrote {args.out}/bench.json and bench.md")


def cmd_bench(args) -> None:
    from tqdm import tqdm

    from ..benchmarking import synthetic_qkv

    if args.suite:
        return _suite(args)
    layout, params = check_bench(args)
    device = torch.device(args.device)
    backends = _backends(args)
    backward = args.mode == "backward"
    q, k, v = (x.to(device, getattr(torch, args.dtype)).requires_grad_(backward) for x in synthetic_qkv(layout, args.heads, args.head_dim, args.smooth))
    grad = torch.randn_like(q) if backward else None
    calls = (1 + len(backends)) * (1 + args.repeats)
    bar = tqdm(total=calls, desc=f"bench {args.method} {args.mode}", unit="call", mininterval=1.0)

    def once(fn) -> float:
        """Seconds of one call, or of the backward pass of one (untimed) forward call."""
        run = fn
        if backward:
            out = fn()
            run = lambda: out.backward(grad)  # noqa: E731
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize()
        bar.update(1)
        for x in (q, k, v):
            x.grad = None
        return time.perf_counter() - start

    with torch.set_grad_enabled(backward):
        calls_of = {"dense": lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v)}
        procs = {}
        for backend in backends:
            procs[backend] = proc = make_processor(args.method, layout=layout, backend=backend, **params)
            calls_of[backend] = lambda proc=proc: proc.attend(q, k, v, layout, None, args.family)
        # One warm-up call each (FlexAttention compiles on its first call), then rounds that run dense and every
        # backend in turn: a machine that slows down mid-run slows every row alike, and each row keeps its best.
        for name, fn in list(calls_of.items()):
            try:
                seconds = once(fn)
            except ValueError as err:  # a backend the method cannot run on this plan, e.g. segments on a token mask
                if args.backends or name == "dense":
                    raise
                bar.write(f"bench: {args.method} cannot run backend {name} here, left out: {err}", file=sys.stderr)
                del calls_of[name]
                backends.remove(name)
                continue
            if name == "dense" and seconds > 2:
                bar.write(f"bench: one dense call takes {format_seconds(seconds)}; {calls - 1} more calls follow "
                          f"(sparse ones are usually faster on a GPU, and can be much slower on a CPU)", file=sys.stderr)
        best = dict.fromkeys(calls_of, math.inf)
        for _ in range(args.repeats):
            for name, fn in calls_of.items():
                best[name] = min(best[name], once(fn))
        dense = best["dense"]
    with torch.no_grad():
        rows = [(backend, best[backend], procs[backend].density(q, k, layout, args.family)) for backend in backends]
    bar.close()
    print(f"grid {layout} ({layout.total_tokens} tokens), {args.heads} heads x {args.head_dim}, {args.dtype}, {device}, {args.mode}")
    print(f"{'method':<10}{'backend':<9}{'time (ms)':>11}{'dense/x':>9}{'density':>9}")
    print(f"{'sdpa':<10}{'dense':<9}{dense * 1e3:>11.1f}{1.0:>9.2f}{1.0:>9.3f}")
    for backend, seconds, density in rows:
        shown = "n/a" if density is None else f"{density:.3f}"
        print(f"{args.method:<10}{backend:<9}{seconds * 1e3:>11.1f}{dense / seconds:>9.2f}{shown:>9}")


def _static_plan(proc, layout: VideoLayout, family: str):
    """The block plan of a method whose plan does not depend on q/k (radial, window, dense), else its own plan."""
    q = torch.empty(1, 1, layout.total_tokens, 1)  # static plans read only the device (and the head dim: Monarch)
    plan = proc.plan(q, q, layout, family)
    return getattr(plan, "plan", plan)  # window: the block plan in the kernel's token order


def mask_methods() -> tuple[str, ...]:
    """Registered methods `vidattn mask` can draw: VMoBA's partitions, and every method whose plan (by its ``plan``
    return type) is a tile plan or wraps one; its q/k-dependent selection aside, read off the class, no work done."""
    import typing

    drawable = []
    for name, entry in METHODS.items():
        try:
            plan_type = typing.get_type_hints(entry.processor.plan).get("return")
        except Exception:  # noqa: BLE001 - an annotation that does not resolve: not drawable
            continue
        fields = {f.name for f in dataclasses.fields(plan_type)} if dataclasses.is_dataclass(plan_type) else set()
        if name == "vmoba" or "tiles" in fields or ("plan" in fields and name != "vmoba"):
            drawable.append(name)
    return tuple(drawable)


def frames_in_place(order: torch.Tensor | None, layout: VideoLayout) -> bool:
    """Whether every kernel position holds a token of the frame it would hold unpermuted (frame lines stay true)."""
    if order is None:
        return True
    n, s = layout.total_tokens, layout.tokens_per_frame
    if len(order) != n or layout.video_start:
        return False
    position = torch.arange(n, device=order.device)
    return bool(((order // s) == (position // s)).all())


def check_mask(args) -> tuple[VideoLayout, dict]:
    drawable = mask_methods()
    if args.method not in drawable:
        raise UsageError(f"--method {args.method} has no block mask to draw; vidattn mask draws {', '.join(drawable)}")
    layout = _layout(args)
    check_output_file(args.out)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UsageError("vidattn mask draws with matplotlib: pip install 'vidattn[plot]'") from None
    params = _settings(args, layout)
    if args.method == "vmoba":
        estimate = 3 * 8 * layout.video_tokens
        parts = "three (F, H, W) partition maps"
    else:
        block, qb = _blocks(args.method, params, layout.total_tokens)
        estimate = TILE_BYTES * qb * qb
        parts = f"{qb:,} x {qb:,} tiles of {block} tokens"
    memory_limit_check(estimate, args.max_memory_gib, f"mask --grid {layout} ({layout.total_tokens:,} tokens)",
                       parts, "use a smaller --grid or a larger --param block_size, or raise --max-memory-gib")
    return layout, params


def cmd_mask(args) -> None:
    from .pictures import mask_figure, partition_figure, save_figure

    layout, params = check_mask(args)
    proc = make_processor(args.method, layout=layout, **params)
    hidden = ("dense_steps", "dense_layers", "backend", "family")
    settings = {f.name: getattr(proc.config, f.name) for f in dataclasses.fields(proc.config) if f.name not in hidden}
    if settings.get("sink", False) is None and hasattr(proc.config, "pattern"):  # radial: the family's default sink
        settings["sink"] = f"{proc.config.pattern(args.family).sink} ({args.family} default)"
    if args.method == "vmoba":
        from ..processors.vmoba import vmoba_partition_maps

        fig = partition_figure(vmoba_partition_maps(layout, proc.config), layout, "vmoba", settings)
        note = "1D, 2D and 3D partitions of the first frames, one colour per block"
    else:
        q = torch.empty(1, 1, layout.total_tokens, 1)
        raw = proc.plan(q, q, layout, args.family)
        plan = getattr(raw, "plan", raw)
        order = getattr(raw, "order", None)  # window may reorder the tokens of each frame into tiles
        fig = mask_figure(plan, layout, args.method, settings, frame_lines=frames_in_place(order, layout),
                          note="" if order is None else "tokens in the kernel's tiled order")
        note = f"{plan.num_blocks}x{plan.num_blocks} tiles, density {plan.tile_density:.3f}"
    save_figure(fig, args.out)
    print(f"wrote {args.out}: {note}")
