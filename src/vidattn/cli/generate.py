"""`vidattn generate` and `vidattn demo`: text-to-video with an attention method, or one of the vidattn pipelines."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist

from ..layout import parse_dims
from ..metrics.fidelity import psnr
from ..processors.registry import apply_method
from .distributed import check_parallel_run, enable_context_parallel, init_process_group, parse_context_parallel
from .params import parse_params
from .video import generate_timed, load_pipeline, write_mp4

PIPELINES = ("text2video", "broadway", "freeswim", "streaming")


def _generator(args) -> torch.Generator:
    return torch.Generator().manual_seed(args.seed)


def _text_tokens(args) -> int:
    """Prompt length: the embedded model was trained on 16-token prompts; diffusers' Wan default is 512."""
    from ..evaluation import DEFAULT_MAX_SEQUENCE_LENGTH

    return 512 if args.model else DEFAULT_MAX_SEQUENCE_LENGTH


def method_params(method: str, args, tiny_grid: bool | None = None, warm_up: bool = True) -> dict:
    """``--param`` settings over the method's registry defaults for generation (radial: the paper's decay 0.2 and,
    with ``warm_up``, a quarter of ``--steps`` dense). On the embedded model (``tiny_grid``) they go over settings that
    suit its 5 x 8 x 8 latent grid."""
    from ..evaluation import method_config
    from ..processors.registry import get_method

    entry = get_method(method)
    defaults = dict(entry.generate)
    if warm_up and entry.warm_up:
        defaults["dense_steps"] = int(args.steps * entry.warm_up)
    tiny_grid = not args.model if tiny_grid is None else tiny_grid
    return method_config(method, {**defaults, **parse_params(args.param)}, tiny_grid=tiny_grid)


def _text2video(args) -> str | None:
    degree = parse_context_parallel(getattr(args, "context_parallel", None))
    started = init_process_group(degree) if degree > 1 else False
    try:
        pipe = load_pipeline(args.model)
        apply_method(pipe.transformer, args.method, **method_params(args.method, args))
        if degree > 1:  # Ulysses over `degree` ranks; rank 0 writes the video
            check_parallel_run(pipe, degree, args.frames, args.height, args.width)
            enable_context_parallel(pipe, degree)
        frames, seconds = generate_timed(pipe, args.prompt, args.frames, args.height, args.width, args.steps, args.guidance, args.seed, _text_tokens(args))
        if degree > 1 and dist.get_rank() != 0:
            return None  # rank 0 writes the video
        write_mp4(frames, args.out)
        parallel = f", ulysses={degree}" if degree > 1 else ""
        return f"{frames.shape[0]} frames, denoising {seconds:.2f} s, method={args.method}{parallel}"
    finally:
        if started:
            dist.destroy_process_group()


def _broadway(args) -> str:
    from ..pipelines.broadway import load_broadway_pipeline, run_broadway_generation
    from ..pipelines.broadway_guidance import BroadWayConfig

    pipe = load_broadway_pipeline(args.model)
    run = run_broadway_generation(
        pipe, args.prompt, BroadWayConfig.animatediff(**parse_params(args.param)), num_frames=args.frames, height=args.height,
        width=args.width, num_inference_steps=args.steps, guidance_scale=args.guidance, generator=_generator(args),
    )
    write_mp4(run.frames[0], args.out)
    return f"{len(run.frames[0])} frames, BroadWay, motion energy {run.motion[0]:.5f}"


def _freeswim(args) -> str:
    from ..pipelines.freeswim import FreeSwimPipeline

    base = parse_dims(args.base_size, "HEIGHTxWIDTH", "480x832", "--base-size")
    freeswim = FreeSwimPipeline.from_pipe(load_pipeline(args.model), base_size=base, **parse_params(args.param))
    frames = freeswim(
        args.prompt, height=args.height, width=args.width, num_frames=args.frames, strength=args.strength,
        cache_steps=args.cache_steps, num_inference_steps=args.steps, guidance_scale=args.guidance, generator=_generator(args),
        max_sequence_length=_text_tokens(args),
    ).frames[0]
    write_mp4(frames, args.out)
    return f"{len(frames)} frames, FreeSwim {base[0]}x{base[1]} -> {args.height}x{args.width}, full passes {freeswim.last_stats}"


def _streaming(args) -> str:
    from ..pipelines.streaming import StreamingWanPipeline, stream_to_mp4
    from ..processors.streaming import StreamingConfig

    pipe = StreamingWanPipeline.from_pipe(load_pipeline(args.model))
    written = stream_to_mp4(
        pipe, args.prompt, args.out, args.chunks, attention=StreamingConfig(**parse_params(args.param)),
        frames_per_chunk=args.frames_per_chunk, height=args.height, width=args.width, guidance_scale=args.guidance, generator=_generator(args),
        max_sequence_length=_text_tokens(args),
    )
    return f"{written} frames streamed in {args.chunks} chunks"


def cmd_generate(args) -> None:
    if getattr(args, "context_parallel", None) is not None and args.pipeline != "text2video":
        raise ValueError(f"--context-parallel supports --pipeline text2video only, got {args.pipeline!r} (see docs/distributed.md)")
    run = {"text2video": _text2video, "broadway": _broadway, "freeswim": _freeswim, "streaming": _streaming}[args.pipeline]
    message = run(args)
    if message is not None:
        print(f"wrote {args.out}: {message}")


def cmd_eval(args) -> None:
    from ..evaluation import evaluate

    report = evaluate(
        methods=args.methods.split(",") if args.methods else None, num_prompts=args.prompts,
        seeds=[int(seed) for seed in args.seeds.split(",")], steps=args.steps, guidance=args.guidance, out=args.out,
    )
    print(report.to_markdown())
    print(f"report, plot and frame strips in {args.out}")


def cmd_demo(args) -> None:
    import numpy as np

    from ..metrics.fidelity import ssim
    from ..metrics.prompt_accuracy import recover

    pipe = load_pipeline(args.model)
    out = Path(args.out)
    results = {}
    for method, params in (("dense", {}), (args.method, method_params(args.method, args))):
        apply_method(pipe.transformer, method, **params)
        generate = lambda: generate_timed(pipe, args.prompt, args.frames, args.height, args.width, args.steps, args.guidance, args.seed, _text_tokens(args))  # noqa: E731
        generate()  # warm-up: FlexAttention compiles on first use
        frames, seconds = generate()
        write_mp4(frames, out / f"{method}.mp4")
        results[method] = (frames, seconds)
    (dense, dense_s), (sparse, sparse_s) = results["dense"], results[args.method]
    write_mp4(np.concatenate([dense, sparse], axis=2), out / "side_by_side.mp4")
    print(f"prompt: {args.prompt!r}")
    for name, (frames, seconds) in results.items():
        seen = recover(frames)
        print(f"{name:>8}: denoising {seconds:.2f} s -> {out / (name + '.mp4')}  (frames show: {seen.color} shape moving {seen.direction})")
    print(f"speed-up {args.method} vs dense: {dense_s / sparse_s:.2f}x; side by side: {out / 'side_by_side.mp4'}")
    print(f"{args.method} vs dense: PSNR {psnr(sparse, dense):.2f} dB, SSIM {ssim(sparse, dense):.3f}")
    if args.bench_grid:
        _demo_attention_bench(args)


def _demo_attention_bench(args) -> None:
    """At a few hundred tokens attention is a small share of the work; show the method where it is most of it."""
    import torch

    from ..benchmarking import best_time, synthetic_qkv
    from ..layout import VideoLayout
    from ..processors.registry import make_processor

    layout = VideoLayout.parse(args.bench_grid)
    params = method_params(args.method, args, tiny_grid=False, warm_up=False)
    warm_up = ("dense_steps", "dense_layers")  # no steps or layers when timing attention alone
    proc = make_processor(args.method, layout=layout, **{k: v for k, v in params.items() if k not in warm_up})
    q, k, v = synthetic_qkv(layout, heads=2, head_dim=128)
    with torch.no_grad():
        dense, _ = best_time(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v), 1, torch.device("cpu"))
        sparse, _ = best_time(lambda: proc.attend(q, k, v, layout, None, "wan"), 1, torch.device("cpu"))
    print(f"attention alone at {layout} tokens ({layout.total_tokens:,}, 2 heads x 128): dense SDPA {dense:.2f} s, "
          f"{args.method} {sparse:.2f} s ({dense / sparse:.2f}x)")
