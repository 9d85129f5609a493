"""`vidattn generate` and `vidattn demo`: text-to-video with an attention method, or one of the vidattn pipelines."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist

from ..layout import parse_dims
from ..metrics.fidelity import psnr
from ..processors.registry import apply_method
from .distributed import check_parallel_run, enable_context_parallel, init_process_group, parse_context_parallel
from .checks import (
    UsageError, check_model_folder, check_output_file, check_output_folder, check_sizes, check_steps_guidance, check_wan_video,
    int_at_least, number_in, warn, warn_long_prompt,
)
from .params import method_settings, parse_params
from .video import generate_timed, load_pipeline, write_mp4

PIPELINES = ("text2video", "broadway", "freeswim", "streaming")
# `vidattn eval` on the default model: seconds per (prompt x denoising step), warm-ups and decodes included, on a quiet
# 2-core CPU (the default run, 800 prompt-steps: 3 min 45 s at load ~4, 11.5 min at load ~8, 2026-12-01).
EVAL_SECONDS_PER_PROMPT_STEP = 0.3
# `demo --bench-grid`: dense attention of 2 heads on the CPU; Wan 480p (21x30x52) is 32,760 tokens.
DEMO_BENCH_MAX_TOKENS = 80_000
# Denoising at the default model's size takes ~0.1 s: the demo reports each method's best of this many
# interleaved rounds, or of one where a run takes longer than DEMO_REPEAT_SECONDS (a real model via --model).
DEMO_REPEATS = 5
DEMO_REPEAT_SECONDS = 1.0



# `generate --pipeline streaming --model NAME`: the embedded models it takes by name (default: causal).
STREAMING_MODELS = ("causal", "bidirectional")


def embedded_stream_model(args) -> str | None:
    """``causal`` or ``bidirectional`` when ``--pipeline streaming`` runs an embedded model, None for a ``--model`` folder."""
    if getattr(args, "pipeline", "text2video") != "streaming":
        return None
    if not args.model:
        return "causal"
    if args.model in STREAMING_MODELS:
        if Path(args.model).exists():
            raise UsageError(f"--model {args.model}: ambiguous, a folder of that name exists and {args.model!r} also names an "
                             f"embedded streaming model; give ./{args.model} for the folder")
        return args.model
    return None


def _generator(args) -> torch.Generator:
    return torch.Generator().manual_seed(args.seed)


def _text_tokens(args) -> int:
    """Prompt length: the embedded model was trained on 16-token prompts; diffusers' Wan default is 512."""
    from ..evaluation import DEFAULT_MAX_SEQUENCE_LENGTH

    return 512 if args.model and not embedded_stream_model(args) else DEFAULT_MAX_SEQUENCE_LENGTH


def method_params(method: str, args, tiny_grid: bool | None = None, warm_up: bool = True) -> dict:
    """``--param`` settings over the method's registry defaults for generation (radial: the paper's decay 0.2 and,
    with ``warm_up``, a quarter of ``--steps`` dense). On the embedded model (``tiny_grid``) they go over settings that
    suit its 5 x 8 x 8 latent grid."""
    from ..evaluation import method_config
    from ..processors.registry import get_method

    entry = get_method(method)
    params = method_settings(method, args.param)  # registry defaults for generation, then --param
    if warm_up and entry.warm_up:
        params.setdefault("dense_steps", int(args.steps * entry.warm_up))
    tiny_grid = not args.model if tiny_grid is None else tiny_grid
    return method_config(method, params, tiny_grid=tiny_grid)


def check_method(method: str, args) -> dict:
    """The method's settings, built once as its config (which validates the values) before any model is loaded;
    warns when the dense warm-up covers every step."""
    from ..processors.registry import make_config

    params = method_params(method, args)
    try:
        make_config(method, **params)
    except ValueError as error:
        raise UsageError(f"--param: {error}") from None
    dense = params.get("dense_steps", 0)
    if isinstance(dense, int) and dense >= args.steps:
        warn(f"--param dense_steps={dense} >= --steps {args.steps}: every step runs dense attention and {method} is "
             f"never used; give dense_steps < {args.steps}")
    return params


def _pipeline_params(cls, args, skip: tuple[str, ...] = ()) -> dict:
    """``--param`` for a pipeline's config ``cls`` (a dataclass, or a class whose __init__ takes keyword settings)."""
    import dataclasses
    import inspect

    from ..params import check_field_types

    params = parse_params(args.param)
    if dataclasses.is_dataclass(cls):
        known = {f.name for f in dataclasses.fields(cls)}
    else:
        known = {n for n in inspect.signature(cls.__init__).parameters if n not in ("self", "pipe", *skip)}
    unknown = sorted(set(params) - known)
    if unknown:
        raise UsageError(f"--param: unknown {cls.__name__} parameter(s) {unknown} for --pipeline {args.pipeline}; allowed: {sorted(known)}")
    check_field_types(cls, params, what=cls.__name__)
    return params


def fill_generation_defaults(args) -> None:
    """Frames, size, steps and guidance the user left out: what the embedded model of the pipeline was trained for (the
    UNet video model for broadway, the Wan default model otherwise; also with --model, whose folder may differ)."""
    if getattr(args, "pipeline", "text2video") == "broadway":  # (imported only here: AnimateDiff pulls in image processors)
        from ..pipelines import unet_video_model as unet

        defaults = (unet.UNET_FRAMES, unet.UNET_HEIGHT, unet.UNET_WIDTH, unet.UNET_STEPS, unet.UNET_GUIDANCE)
    else:
        from ..pipelines import default_model as wan

        defaults = (wan.DEFAULT_FRAMES, wan.DEFAULT_HEIGHT, wan.DEFAULT_WIDTH, wan.DEFAULT_STEPS, wan.DEFAULT_GUIDANCE)
    for name, value in zip(("frames", "height", "width", "steps", "guidance"), defaults):
        if getattr(args, name, None) is None:
            setattr(args, name, value)


def _check_common(args) -> None:
    fill_generation_defaults(args)
    int_at_least(args.seed, 0, "--seed")
    if not isinstance(args.prompt, str) or not args.prompt.strip():
        raise UsageError("--prompt must be a non-empty text")
    if args.model and not embedded_stream_model(args):
        check_model_folder(args.model, getattr(args, "pipeline", "text2video"))


def _check_prompt_embedded(args) -> None:
    """The embedded model's tokenizer is built in code: check the prompt before loading anything."""
    embedded = not args.model or embedded_stream_model(args)
    if embedded and getattr(args, "pipeline", "text2video") != "broadway":
        from ..pipelines.default_model import build_tokenizer

        warn_long_prompt(build_tokenizer(), args.prompt, _text_tokens(args))


def check_generate(args) -> dict:
    """Every `vidattn generate` argument, before any model is loaded; returns the pipeline/method settings."""
    _check_common(args)
    check_output_file(args.out)
    if args.pipeline == "broadway":
        from ..pipelines.broadway_guidance import BroadWayConfig

        int_at_least(args.frames, 1, "--frames", " (AnimateDiff's motion modules were trained on 16)")
        check_sizes(args.height, args.width, 8, "the UNet's VAE downsamples 8x")
        check_steps_guidance(args.steps, args.guidance)
        params = _pipeline_params(BroadWayConfig, args)
        try:
            BroadWayConfig.animatediff(**params).check_frames(args.frames)
        except (TypeError, ValueError) as error:
            raise UsageError(f"--param: {error}") from None
        return params
    if args.pipeline == "streaming":
        from ..processors.streaming import StreamingConfig

        int_at_least(args.chunks, 1, "--chunks")
        int_at_least(args.frames_per_chunk, 1, "--frames-per-chunk", " (latent frames; 1 latent frame = 4 video frames)")
        check_sizes(args.height, args.width, 16, "Wan's VAE downsamples 8x and its transformer patches 2x2")
        check_steps_guidance(1, args.guidance)
        params = _pipeline_params(StreamingConfig, args)
        try:
            StreamingConfig(**params)
        except (TypeError, ValueError) as error:
            raise UsageError(f"--param: {error}") from None
    elif args.pipeline == "freeswim":
        from ..pipelines.freeswim import FreeSwimPipeline

        check_wan_video(args.frames, args.height, args.width)
        check_steps_guidance(args.steps, args.guidance)
        base = parse_dims(args.base_size, "HEIGHTxWIDTH", "480x832", "--base-size")
        check_sizes(base[0], base[1], 16, "Wan's VAE downsamples 8x and its transformer patches 2x2", ("--base-size height", "--base-size width"))
        if base[0] > args.height or base[1] > args.width:
            raise UsageError(f"--base-size {args.base_size} must not exceed --height x --width {args.height}x{args.width} (FreeSwim upsamples)")
        number_in(args.strength, 0.0, 1.0, "--strength", " (stage-2 denoising strength)", low_open=True)
        int_at_least(args.cache_steps, 1, "--cache-steps")
        params = _pipeline_params(FreeSwimPipeline, args, skip=("base_size",))
    else:
        check_wan_video(args.frames, args.height, args.width)
        check_steps_guidance(args.steps, args.guidance)
        params = check_method(args.method, args)
    _check_prompt_embedded(args)
    return params


def _load(args):
    """The Wan pipeline of ``--model`` (or the embedded one); with ``--model``, the prompt is checked with its tokenizer."""
    pipe = load_pipeline(args.model)
    if args.model:
        warn_long_prompt(pipe.tokenizer, args.prompt, _text_tokens(args))
    return pipe


def _text2video(args, params: dict) -> str | None:
    degree = parse_context_parallel(getattr(args, "context_parallel", None))
    started = init_process_group(degree) if degree > 1 else False
    try:
        pipe = _load(args)
        apply_method(pipe.transformer, args.method, **params)
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


def _broadway(args, params: dict) -> str:
    from ..pipelines.broadway import load_broadway_pipeline, run_broadway_generation
    from ..pipelines.broadway_guidance import BroadWayConfig
    from ..metrics.prompt_accuracy import parse_caption, recover
    from ..pipelines.unet_video_model import load_unet_video_pipeline

    pipe = load_broadway_pipeline(args.model) if args.model else load_unet_video_pipeline()
    warn_long_prompt(pipe.tokenizer, args.prompt, pipe.tokenizer.model_max_length)
    run = run_broadway_generation(
        pipe, args.prompt, BroadWayConfig.animatediff(**params), num_frames=args.frames, height=args.height,
        width=args.width, num_inference_steps=args.steps, guidance_scale=args.guidance, generator=_generator(args),
    )
    write_mp4(run.frames[0], args.out)
    shown = ""
    if not args.model:  # the embedded model draws the shapes data: say what the frames show
        shown = f" (frames show: {recover(run.frames[0]).verdict(parse_caption(args.prompt)['color'])})"
    return f"{len(run.frames[0])} frames, BroadWay, motion energy {run.motion[0]:.5f}{shown}"


def _freeswim(args, params: dict) -> str:
    from ..pipelines.freeswim import FreeSwimPipeline

    base = parse_dims(args.base_size, "HEIGHTxWIDTH", "480x832", "--base-size")
    freeswim = FreeSwimPipeline.from_pipe(_load(args), base_size=base, **params)
    frames = freeswim(
        args.prompt, height=args.height, width=args.width, num_frames=args.frames, strength=args.strength,
        cache_steps=args.cache_steps, num_inference_steps=args.steps, guidance_scale=args.guidance, generator=_generator(args),
        max_sequence_length=_text_tokens(args),
    ).frames[0]
    write_mp4(frames, args.out)
    return f"{len(frames)} frames, FreeSwim {base[0]}x{base[1]} -> {args.height}x{args.width}, full passes {freeswim.last_stats}"


def _streaming(args, params: dict) -> str:
    """Streams with ``--model`` (a block-causal Wan folder), or the embedded causal model (``--model bidirectional``:
    the embedded bidirectional one); the embedded models decode with the windowed VAE cache (docs/streaming.md)."""
    from ..pipelines.default_model_causal import CAUSAL_DECODE_CONTEXT, load_causal_pipeline
    from ..pipelines.streaming import StreamingWanPipeline, stream_to_mp4
    from ..processors.streaming import StreamingConfig

    embedded = embedded_stream_model(args)
    if embedded == "causal":
        pipe = load_causal_pipeline()
    else:
        pipe = StreamingWanPipeline.from_pipe(load_pipeline(None) if embedded else _load(args))
    written = stream_to_mp4(
        pipe, args.prompt, args.out, args.chunks, attention=StreamingConfig(**params),
        frames_per_chunk=args.frames_per_chunk, height=args.height, width=args.width, guidance_scale=args.guidance, generator=_generator(args),
        max_sequence_length=_text_tokens(args), decode_context=CAUSAL_DECODE_CONTEXT if embedded else None,
    )
    model = f"the embedded {embedded} model" if embedded else args.model
    return f"{written} frames streamed in {args.chunks} chunks with {model}"


def cmd_generate(args) -> None:
    if getattr(args, "context_parallel", None) is not None and args.pipeline != "text2video":
        raise UsageError(f"--context-parallel supports --pipeline text2video only, got {args.pipeline!r} (see docs/distributed.md)")
    params = check_generate(args)
    run = {"text2video": _text2video, "broadway": _broadway, "freeswim": _freeswim, "streaming": _streaming}[args.pipeline]
    message = run(args, params)
    if message is not None:
        print(f"wrote {args.out}: {message}")


def check_eval(args) -> tuple[list[str] | None, list[int]]:
    """Every `vidattn eval` argument, before the model is loaded; returns the methods and seeds."""
    from ..processors.registry import METHODS

    methods = None
    if args.methods:
        methods = [m.strip() for m in args.methods.split(",")]
        bad = [m for m in methods if m not in METHODS]
        if bad:
            raise UsageError(f"--methods must be names in {sorted(METHODS)} (comma-separated), got {', '.join(bad)}")
    int_at_least(args.prompts, 1, "--prompts")
    try:
        seeds = [int(seed) for seed in args.seeds.split(",")]
    except ValueError:
        raise UsageError(f"--seeds must be comma-separated integers >= 0 (e.g. 0,1,2), got {args.seeds!r}") from None
    if min(seeds) < 0:
        raise UsageError(f"--seeds must be integers >= 0, got {args.seeds!r}")
    check_steps_guidance(args.steps, args.guidance)
    check_output_folder(args.out)
    return methods, seeds


def cmd_eval(args) -> None:
    from ..evaluation import QUALITY_FLOOR, evaluate
    from ..processors.registry import METHODS

    methods, seeds = check_eval(args)
    if args.pipeline is not None:
        if args.methods or args.cache:
            raise UsageError("--pipeline measures a pipeline, not attention methods: drop --methods/--cache, or drop --pipeline")
        from ..pipeline_eval import evaluate_pipeline

        report = evaluate_pipeline(args.pipeline, prompts=args.prompts, seeds=seeds, out=args.out)
        print(report.to_markdown())
        print(f"report and frame strips in {args.out}")
        return
    count = len(set(methods or METHODS) | {"dense"})
    warn_time = count * len(seeds) * args.prompts * args.steps
    print(f"eval: {count} methods x {len(seeds)} seed(s) x {args.prompts} prompts, {args.steps} steps each "
          f"({warn_time} prompt-steps; about {max(1, round(warn_time * EVAL_SECONDS_PER_PROMPT_STEP / 60))} min on a quiet 2-core CPU, "
          f"less on a GPU, more on a busy machine); "
          f"progress and time left below", file=sys.stderr)
    report = evaluate(methods=methods, num_prompts=args.prompts, seeds=seeds, steps=args.steps, guidance=args.guidance,
                      out=args.out, progress=True, caches=args.cache or ())
    print(report.to_markdown())
    print(f"report, plot and frame strips in {args.out}")
    if report.failures:
        for method, why in report.failures.items():
            print(f"vidattn eval: FAILED {method}: {why}", file=sys.stderr)
        raise SystemExit(f"vidattn eval: {len(report.failures)} method(s) below the quality floor ({QUALITY_FLOOR:.0%} of frames "
                         f"showing a shape of the prompt's colour): {', '.join(report.failures)}")


def check_demo(args) -> dict:
    """Every `vidattn demo` argument, before the model is loaded; returns the method's settings."""
    _check_common(args)
    check_wan_video(args.frames, args.height, args.width)
    check_steps_guidance(args.steps, args.guidance)
    check_output_folder(args.out)
    params = check_method(args.method, args)
    if args.bench_grid:
        from .bench import parse_grid

        layout = parse_grid(args.bench_grid, "--bench-grid")
        if layout.total_tokens > DEMO_BENCH_MAX_TOKENS:
            raise UsageError(f"--bench-grid must have sizes >= 1 and at most {DEMO_BENCH_MAX_TOKENS:,} tokens "
                             f"(dense attention on the CPU), got {args.bench_grid!r}; '' skips it")
    _check_prompt_embedded(args)
    return params


def cmd_demo(args) -> None:
    import numpy as np

    from ..evaluation import generate
    from ..metrics.fidelity import ssim
    from ..metrics.prompt_accuracy import parse_caption, recover

    params = check_demo(args)
    pipe = load_pipeline(args.model)
    out = Path(args.out)
    methods = (("dense", {}), (args.method, params))
    settings = dict(frames=args.frames, height=args.height, width=args.width, steps=args.steps, guidance=args.guidance,
                    max_sequence_length=_text_tokens(args))
    best = {method: float("inf") for method, _ in methods}
    for _ in range(DEMO_REPEATS):  # interleaved rounds, so that a change in the machine's load hits both methods alike
        for method, config in methods:
            apply_method(pipe.transformer, method, **config)
            generate(pipe, [args.prompt], args.seed, decode=False, **settings)  # warm-up: plans, FlexAttention's compile
            best[method] = min(best[method], generate(pipe, [args.prompt], args.seed, decode=False, **settings)[1])
        if max(best.values()) > DEMO_REPEAT_SECONDS:
            break
    results = {}
    for method, config in methods:
        apply_method(pipe.transformer, method, **config)
        videos, seconds = generate(pipe, [args.prompt], args.seed, **settings)
        write_mp4(videos[0], out / f"{method}.mp4")
        results[method] = (videos[0], min(best[method], seconds))
    (dense, dense_s), (sparse, sparse_s) = results["dense"], results[args.method]
    write_mp4(np.concatenate([dense, sparse], axis=2), out / "side_by_side.mp4")
    wanted = parse_caption(args.prompt)
    print(f"prompt: {args.prompt!r}")
    for name, (frames, seconds) in results.items():
        seen = recover(frames)
        print(f"{name:>8}: denoising {seconds:.2f} s -> {out / (name + '.mp4')}  (frames show: {seen.verdict(wanted['color'])})")
    print(f"speed-up {args.method} vs dense: {dense_s / sparse_s:.2f}x; side by side: {out / 'side_by_side.mp4'}")
    print(f"{args.method} vs dense: PSNR {psnr(sparse, dense):.2f} dB, SSIM {ssim(sparse, dense):.3f}")
    if args.bench_grid:
        _demo_attention_bench(args)


def _demo_attention_bench(args) -> None:
    """At a few hundred tokens attention is a small share of the work; show the method where it is most of it."""
    import torch

    from ..benchmarking import best_times_interleaved, synthetic_qkv
    from ..layout import VideoLayout
    from ..processors.registry import make_processor

    layout = VideoLayout.parse(args.bench_grid)
    params = method_params(args.method, args, tiny_grid=False, warm_up=False)
    warm_up = ("dense_steps", "dense_layers")  # no steps or layers when timing attention alone
    proc = make_processor(args.method, layout=layout, **{k: v for k, v in params.items() if k not in warm_up})
    qkv = synthetic_qkv(layout, heads=2, head_dim=128)
    print(f"attention alone at {layout} tokens ({layout.total_tokens:,}, 2 heads x 128, density {proc.density(*qkv[:2], layout, 'wan'):.2f}):")
    # bf16 is what GPUs run (best of 3 interleaved rounds: its calls take ~1-3 s); f32, this CPU's slow path, one round
    for dtype, rounds in ((torch.bfloat16, 3), (torch.float32, 1)):
        q, k, v = (x.to(dtype) for x in qkv)
        calls = {"dense": lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v),
                 "sparse": lambda: proc.attend(q, k, v, layout, None, "wan")}
        with torch.no_grad():
            times = best_times_interleaved(calls, rounds, torch.device("cpu"))
        dense, sparse = times["dense"], times["sparse"]
        name = str(dtype).replace("torch.", "")
        print(f"  {name:>8}: dense SDPA {dense:.2f} s, {args.method} {sparse:.2f} s ({dense / sparse:.2f}x)")
