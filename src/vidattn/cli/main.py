"""`vidattn` command line: demo, generate, bench, mask."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ..processors.registry import METHODS, apply_method
from .bench import cmd_bench, cmd_mask
from .params import parse_params
from .video import generate_timed, load_pipeline, psnr, write_mp4


def _generate(pipe, args):
    return generate_timed(pipe, args.prompt, args.frames, args.height, args.width, args.steps, args.guidance, args.seed)


def cmd_generate(args) -> None:
    pipe = load_pipeline(args.model)
    apply_method(pipe.transformer, args.method, **parse_params(args.param))
    frames, seconds = _generate(pipe, args)
    write_mp4(frames, args.out)
    print(f"wrote {args.out} ({frames.shape[0]} frames, denoising {seconds:.2f} s, method={args.method})")


def cmd_demo(args) -> None:
    pipe = load_pipeline(args.model)
    out = Path(args.out)
    params = {"decay": 0.2} if args.method == "radial" else {}
    params.update(parse_params(args.param))
    results = {}
    for method, method_params in (("dense", {}), (args.method, params)):
        apply_method(pipe.transformer, method, **method_params)
        _generate(pipe, args)  # warm-up: FlexAttention compiles on first use
        frames, seconds = _generate(pipe, args)
        write_mp4(frames, out / f"{method}.mp4")
        results[method] = (frames, seconds)
    (dense, dense_s), (sparse, sparse_s) = results["dense"], results[args.method]
    print(f"dense : denoising {dense_s:.2f} s -> {out / 'dense.mp4'}")
    print(f"{args.method}: denoising {sparse_s:.2f} s -> {out / (args.method + '.mp4')}  (speed-up {dense_s / sparse_s:.2f}x)")
    print(f"PSNR {args.method} vs dense: {psnr(dense, sparse):.2f} dB")


def _add_method_args(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument("--method", default=default, choices=sorted(METHODS), help="attention method")
    p.add_argument(
        "--param", action="append", metavar="KEY=VALUE",
        help="method setting, repeatable (e.g. --param decay=0.2 --param block_size=64 --param dense_steps=2)",
    )


def _add_generation_args(p: argparse.ArgumentParser, frames: int, size: int) -> None:
    p.add_argument("--model", default=None, help="diffusers Wan model folder (default: the embedded tiny model)")
    p.add_argument("--prompt", default="a red circle moving right on a black background")
    p.add_argument("--frames", type=int, default=frames)
    p.add_argument("--height", type=int, default=size)
    p.add_argument("--width", type=int, default=size)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--guidance", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)


def _add_tensor_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--grid", default="21x30x52", help="latent tokens FxHxW")
    p.add_argument("--family", default="wan", choices=["wan", "hunyuan", "cogvideox"])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vidattn", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="dense vs a sparse method on the default model: two mp4 files, speed and PSNR")
    _add_generation_args(p, frames=81, size=256)
    _add_method_args(p, default="radial")
    p.set_defaults(steps=4, func=cmd_demo)
    p.add_argument("--out", default="outputs/demo")

    p = sub.add_parser("generate", help="text-to-video with a chosen attention method")
    _add_generation_args(p, frames=33, size=128)
    _add_method_args(p, default="radial")
    p.add_argument("--out", default="outputs/video.mp4")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("bench", help="attention-only timing of a method against dense SDPA")
    _add_tensor_args(p)
    _add_method_args(p, default="radial")
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--backends", default="flex,gather", help="comma-separated: flex, gather, dense")
    p.add_argument("--repeats", type=int, default=3)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("mask", help="PNG picture of a method's block mask (VMoBA: its three partitions)")
    _add_tensor_args(p)
    _add_method_args(p, default="radial")
    p.add_argument("--out", default="outputs/mask.png")
    p.set_defaults(func=cmd_mask)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except ValueError as error:
        raise SystemExit(f"vidattn {args.command}: {error}") from error


if __name__ == "__main__":
    main()
