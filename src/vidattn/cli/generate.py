"""`vidattn generate` and `vidattn demo`: text-to-video with an attention method, or one of the vidattn pipelines."""

from __future__ import annotations

from pathlib import Path

import torch

from ..processors.registry import apply_method
from .params import parse_params
from .video import generate_timed, load_pipeline, psnr, write_mp4

PIPELINES = ("text2video", "broadway", "freeswim", "streaming")


def _size(text: str, name: str) -> tuple[int, int]:
    try:
        height, width = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"{name} must look like HEIGHTxWIDTH in pixels (e.g. 480x832), got {text!r}") from None
    return height, width


def _generator(args) -> torch.Generator:
    return torch.Generator().manual_seed(args.seed)


def _text2video(args) -> str:
    pipe = load_pipeline(args.model)
    apply_method(pipe.transformer, args.method, **parse_params(args.param))
    frames, seconds = generate_timed(pipe, args.prompt, args.frames, args.height, args.width, args.steps, args.guidance, args.seed)
    write_mp4(frames, args.out)
    return f"{frames.shape[0]} frames, denoising {seconds:.2f} s, method={args.method}"


def _broadway(args) -> str:
    from ..pipelines.broadway import load_broadway_pipeline, run_broadway_generation
    from ..processors.broadway import BroadWayConfig

    pipe = load_broadway_pipeline(args.model)
    run = run_broadway_generation(
        pipe, args.prompt, BroadWayConfig.animatediff(**parse_params(args.param)), num_frames=args.frames, height=args.height,
        width=args.width, num_inference_steps=args.steps, guidance_scale=args.guidance, generator=_generator(args),
    )
    write_mp4(run.frames[0], args.out)
    return f"{len(run.frames[0])} frames, BroadWay, motion energy {run.motion[0]:.5f}"


def _freeswim(args) -> str:
    from ..pipelines.freeswim import FreeSwimPipeline

    base = _size(args.base_size, "--base-size")
    freeswim = FreeSwimPipeline.from_pipe(load_pipeline(args.model), base_size=base, **parse_params(args.param))
    frames = freeswim(
        args.prompt, height=args.height, width=args.width, num_frames=args.frames, strength=args.strength,
        cache_steps=args.cache_steps, num_inference_steps=args.steps, guidance_scale=args.guidance, generator=_generator(args),
    ).frames[0]
    write_mp4(frames, args.out)
    return f"{len(frames)} frames, FreeSwim {base[0]}x{base[1]} -> {args.height}x{args.width}, full passes {freeswim.last_stats}"


def _streaming(args) -> str:
    from ..pipelines.streaming import StreamingWanPipeline, stream_to_mp4
    from ..processors.hybrid import HybridConfig

    pipe = StreamingWanPipeline.from_pipe(load_pipeline(args.model))
    written = stream_to_mp4(
        pipe, args.prompt, args.out, args.chunks, attention=HybridConfig(**parse_params(args.param)),
        frames_per_chunk=args.frames_per_chunk, height=args.height, width=args.width, guidance_scale=args.guidance, generator=_generator(args),
    )
    return f"{written} frames streamed in {args.chunks} chunks"


def cmd_generate(args) -> None:
    run = {"text2video": _text2video, "broadway": _broadway, "freeswim": _freeswim, "streaming": _streaming}[args.pipeline]
    print(f"wrote {args.out}: {run(args)}")


def cmd_demo(args) -> None:
    pipe = load_pipeline(args.model)
    out = Path(args.out)
    params = {"decay": 0.2} if args.method == "radial" else {}
    params.update(parse_params(args.param))
    results = {}
    for method, method_params in (("dense", {}), (args.method, params)):
        apply_method(pipe.transformer, method, **method_params)
        generate = lambda: generate_timed(pipe, args.prompt, args.frames, args.height, args.width, args.steps, args.guidance, args.seed)  # noqa: E731
        generate()  # warm-up: FlexAttention compiles on first use
        frames, seconds = generate()
        write_mp4(frames, out / f"{method}.mp4")
        results[method] = (frames, seconds)
    (dense, dense_s), (sparse, sparse_s) = results["dense"], results[args.method]
    print(f"dense : denoising {dense_s:.2f} s -> {out / 'dense.mp4'}")
    print(f"{args.method}: denoising {sparse_s:.2f} s -> {out / (args.method + '.mp4')}  (speed-up {dense_s / sparse_s:.2f}x)")
    print(f"PSNR {args.method} vs dense: {psnr(dense, sparse):.2f} dB")
