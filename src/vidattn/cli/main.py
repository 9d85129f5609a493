"""`vidattn` command line: demo, generate, bench, mask."""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch


def _pipeline(model: str | None):
    if model:
        from diffusers import WanPipeline

        return WanPipeline.from_pretrained(model)
    from ..pipelines.default_model import build_default_pipeline

    return build_default_pipeline()


def _set_attention(pipe, attention: str, decay: float, block_size: int, dense_steps: int, dense_layers: int) -> None:
    from ..processors import RadialConfig, apply_radial_attention, remove_processors

    if attention == "dense":
        remove_processors(pipe.transformer)
    elif attention == "radial":
        apply_radial_attention(
            pipe.transformer, RadialConfig(decay=decay, block_size=block_size, dense_steps=dense_steps, dense_layers=dense_layers)
        )
    else:
        raise ValueError(f"--attention must be 'dense' or 'radial', got {attention!r}")


def _generate(pipe, args) -> tuple[np.ndarray, float]:
    """Frames in [0, 1] and the seconds spent denoising (the part attention changes; VAE decode excluded)."""
    start = time.perf_counter()
    latents = pipe(
        args.prompt, num_frames=args.frames, height=args.height, width=args.width, num_inference_steps=args.steps,
        guidance_scale=args.guidance, output_type="latent", generator=torch.Generator().manual_seed(args.seed),
    ).frames
    seconds = time.perf_counter() - start
    with torch.no_grad():
        mean = torch.tensor(pipe.vae.config.latents_mean).view(1, -1, 1, 1, 1)
        std = torch.tensor(pipe.vae.config.latents_std).view(1, -1, 1, 1, 1)
        video = pipe.vae.decode(latents.to(pipe.vae.dtype) * std + mean, return_dict=False)[0]
    frames = pipe.video_processor.postprocess_video(video, output_type="np")[0]
    return frames, seconds


def _write_mp4(frames: np.ndarray, path: Path, fps: int = 8) -> None:
    import imageio

    path.parent.mkdir(parents=True, exist_ok=True)
    imageio.mimwrite(path, (np.clip(frames, 0, 1) * 255).astype(np.uint8), fps=fps, macro_block_size=1)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio of two videos in [0, 1]."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def cmd_generate(args) -> None:
    pipe = _pipeline(args.model)
    _set_attention(pipe, args.attention, args.decay, args.block_size, args.dense_steps, args.dense_layers)
    frames, seconds = _generate(pipe, args)
    _write_mp4(frames, Path(args.out))
    print(f"wrote {args.out} ({frames.shape[0]} frames, denoising {seconds:.2f} s, attention={args.attention})")


def cmd_demo(args) -> None:
    pipe = _pipeline(args.model)
    out = Path(args.out)
    results = {}
    for attention in ("dense", "radial"):
        _set_attention(pipe, attention, args.decay, args.block_size, args.dense_steps, args.dense_layers)
        _generate(pipe, args)  # warm-up (FlexAttention compiles on first use)
        frames, seconds = _generate(pipe, args)
        _write_mp4(frames, out / f"{attention}.mp4")
        results[attention] = (frames, seconds)
    dense, radial = results["dense"], results["radial"]
    print(f"dense : denoising {dense[1]:.2f} s -> {out / 'dense.mp4'}")
    print(f"radial: denoising {radial[1]:.2f} s -> {out / 'radial.mp4'}  (speed-up {dense[1] / radial[1]:.2f}x)")
    print(f"PSNR radial vs dense: {psnr(dense[0], radial[0]):.2f} dB")


def cmd_bench(args) -> None:
    from ..layout import VideoLayout
    from ..processors.registry import make_processor

    layout = VideoLayout.parse(args.grid)
    dtype = getattr(torch, args.dtype)
    device = torch.device(args.device)
    n = layout.video_tokens
    g = torch.Generator(device="cpu").manual_seed(0)
    q, k, v = (torch.randn(1, args.heads, n, args.head_dim, generator=g).to(device, dtype) for _ in range(3))

    def timed(fn) -> float:
        fn()
        best = math.inf
        for _ in range(args.repeats):
            start = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - start)
        return best

    with torch.no_grad():
        dense_time = timed(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v))
        print(f"grid {layout} ({n} tokens), {args.heads} heads x {args.head_dim}, {args.dtype}, {device}")
        print(f"{'method':<10}{'backend':<9}{'time (ms)':>11}{'dense/x':>9}{'sparsity':>10}")
        print(f"{'sdpa':<10}{'dense':<9}{dense_time * 1e3:>11.1f}{1.0:>9.2f}{0.0:>10.3f}")
        for backend in args.backends.split(","):
            proc = make_processor(args.method, decay=args.decay, block_size=args.block_size, backend=backend, layout=layout)
            t = timed(lambda: proc.attend(q, k, v, layout, None, args.family))
            plan = proc.plan(layout, args.family, device) if hasattr(proc, "plan") else None
            sparsity = plan.sparsity if plan is not None else float("nan")
            print(f"{args.method:<10}{backend:<9}{t * 1e3:>11.1f}{dense_time / t:>9.2f}{sparsity:>10.3f}")


def cmd_mask(args) -> None:
    import imageio

    from ..layout import VideoLayout
    from ..processors.registry import make_processor

    layout = VideoLayout.parse(args.grid)
    proc = make_processor(args.method, decay=args.decay, block_size=args.block_size)
    if not hasattr(proc, "plan"):
        raise ValueError(f"method {args.method!r} has no static block mask to draw")
    plan = proc.plan(layout, args.family)
    tiles = plan.tiles[0, 0].cpu().numpy()
    image = np.where(tiles, 255, 30).astype(np.uint8)
    scale = max(1, 512 // tiles.shape[0])
    image = image.repeat(scale, 0).repeat(scale, 1)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    imageio.imwrite(args.out, image)
    print(f"wrote {args.out}: {tiles.shape[0]}x{tiles.shape[1]} tiles, sparsity {plan.sparsity:.3f}")


def _add_attention_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--decay", type=float, default=0.2, help="radial band decay factor")
    p.add_argument("--block-size", type=int, default=128)
    p.add_argument("--dense-steps", type=int, default=0)
    p.add_argument("--dense-layers", type=int, default=0)


def _add_generation_args(p: argparse.ArgumentParser, frames: int, size: int) -> None:
    p.add_argument("--model", default=None, help="diffusers Wan model folder (default: the embedded tiny model)")
    p.add_argument("--prompt", default="a red circle moving right on a black background")
    p.add_argument("--frames", type=int, default=frames)
    p.add_argument("--height", type=int, default=size)
    p.add_argument("--width", type=int, default=size)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--guidance", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    _add_attention_args(p)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vidattn", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="dense vs radial on the default model: two mp4 files, speed and PSNR")
    _add_generation_args(p, frames=81, size=256)
    p.set_defaults(steps=4)
    p.add_argument("--out", default="outputs/demo")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("generate", help="text-to-video with a chosen attention")
    _add_generation_args(p, frames=33, size=128)
    p.add_argument("--attention", default="radial", choices=["dense", "radial"])
    p.add_argument("--out", default="outputs/video.mp4")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("bench", help="attention-only timing of a method against dense SDPA")
    p.add_argument("--method", default="radial")
    p.add_argument("--grid", default="21x30x52", help="latent tokens FxHxW")
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--backends", default="flex,gather")
    p.add_argument("--family", default="wan", choices=["wan", "hunyuan", "cogvideox"])
    p.add_argument("--repeats", type=int, default=3)
    _add_attention_args(p)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("mask", help="PNG picture of a method's block mask")
    p.add_argument("--method", default="radial")
    p.add_argument("--grid", default="21x30x52")
    p.add_argument("--family", default="wan", choices=["wan", "hunyuan", "cogvideox"])
    p.add_argument("--out", default="outputs/mask.png")
    _add_attention_args(p)
    p.set_defaults(func=cmd_mask)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
