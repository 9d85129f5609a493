"""`vidattn` command line: demo, generate, bench, mask, eval, make-clips, prepare-data, train.

Every argument is checked before any work; a user error is one line on stderr and exit code 2 (a traceback only
with ``vidattn --debug ...``)."""

from __future__ import annotations

import argparse
import sys

import torch

from ..pipelines.default_model import DEFAULT_FRAMES, DEFAULT_GUIDANCE, DEFAULT_HEIGHT, DEFAULT_STEPS, DEFAULT_WIDTH
from ..processors.families import FAMILIES
from ..processors.registry import METHODS
from .bench import cmd_bench, cmd_mask
from .clips import add_make_clips_arguments, cmd_make_clips
from .generate import PIPELINES, cmd_demo, cmd_eval, cmd_generate

USAGE_EXIT = 2


class OneLineParser(argparse.ArgumentParser):
    """An argparse parser whose errors are one line on stderr (exit code 2), naming the command and the option."""

    def error(self, message: str):  # noqa: D102 - argparse API
        self.exit(USAGE_EXIT, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _add_method_args(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument("--method", "--attention", dest="method", default=default, choices=sorted(METHODS), help="attention method")
    p.add_argument(
        "--param", action="append", metavar="KEY=VALUE",
        help="method setting, repeatable (e.g. --param decay=0.2 --param block_size=64 --param dense_steps=2)",
    )


def _add_generation_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="diffusers model folder (default: the embedded trained tiny model: Wan, "
                                                  "or the UNet video model for --pipeline broadway)")
    p.add_argument("--prompt", default="a red circle moving right on a black background")
    defaults = "default: what the embedded model was trained for (Wan: {}; --pipeline broadway: the UNet model's)"
    p.add_argument("--frames", type=int, default=None, help=defaults.format(DEFAULT_FRAMES))
    p.add_argument("--height", type=int, default=None, help=defaults.format(DEFAULT_HEIGHT))
    p.add_argument("--width", type=int, default=None, help=defaults.format(DEFAULT_WIDTH))
    p.add_argument("--steps", type=int, default=None, help=defaults.format(DEFAULT_STEPS))
    p.add_argument("--guidance", type=float, default=None, help=defaults.format(DEFAULT_GUIDANCE))
    p.add_argument("--seed", type=int, default=0)


def _add_tensor_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--grid", default="21x30x52", help="latent tokens FxHxW")
    p.add_argument("--family", default="wan", choices=FAMILIES)


def _int_list(text: str) -> str:
    """argparse check of a comma-separated list of integers (kept as text)."""
    if not all(part.strip().lstrip("-").isdigit() for part in text.split(",")):
        raise argparse.ArgumentTypeError(f"must be comma-separated integers (e.g. 0,1,2), got {text!r}")
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="vidattn", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="dense vs a sparse method on the default model: two mp4 files, speed and PSNR")
    _add_generation_args(p)
    _add_method_args(p, default="radial")
    p.set_defaults(func=cmd_demo)
    p.add_argument("--out", default="outputs/demo")
    p.add_argument("--bench-grid", default="21x30x52", help="also time attention alone at this latent grid (Wan 480p); '' to skip")

    p = sub.add_parser("generate", help="text-to-video with a chosen attention method or vidattn pipeline")
    _add_generation_args(p)
    _add_method_args(p, default="radial")
    p.add_argument("--pipeline", default="text2video", choices=PIPELINES,
                   help="text2video (Wan + --method), broadway (AnimateDiff/ModelScope --model), freeswim, streaming; "
                   "--param sets the pipeline's config (BroadWayConfig, FreeSwimPipeline, StreamingConfig: e.g. "
                   "--param mode=window, modes hybrid/window/dense)")
    p.add_argument("--base-size", default="64x64", help="freeswim: stage-1 size HEIGHTxWIDTH in pixels")
    p.add_argument("--strength", type=float, default=0.7, help="freeswim: stage-2 denoising strength")
    p.add_argument("--cache-steps", type=int, default=2, help="freeswim: refresh the cross-attention cache every N steps")
    p.add_argument("--chunks", type=int, default=4, help="streaming: number of chunks")
    p.add_argument("--frames-per-chunk", type=int, default=3, help="streaming: latent frames per chunk")
    p.add_argument("--context-parallel", default=None, metavar="ulysses=N",
                   help="text2video under diffusers' Ulysses context parallelism over N torchrun processes; rank 0 writes --out")
    p.add_argument("--out", default="outputs/video.mp4")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("bench", help="attention-only timing of a method against dense SDPA")
    _add_tensor_args(p)
    _add_method_args(p, default="radial")
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--backends", default=None, help="comma-separated, e.g. flex,gather,dense (default: the method's kernels)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--mode", choices=["forward", "backward"], default="forward",
                   help="time the forward call (inference) or the backward pass of one call (training; CPU: not flex)")
    p.add_argument("--smooth", type=float, default=0.0, help="share of a smooth spatio-temporal field in q/k/v (0 = iid noise)")
    p.add_argument("--max-memory-gib", type=float, default=16.0, help="refuse a run estimated to need more memory (GiB)")
    p.add_argument("--suite", choices=("cpu", "gpu"), default=None,
                   help="run a whole suite instead (every method, real model sizes, end to end) and write bench.json + bench.md")
    p.add_argument("--methods", default=None, help="--suite: comma-separated methods (default: every registered method)")
    p.add_argument("--out", default="outputs/bench", help="--suite: output folder")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("mask", help="PNG picture of a method's block mask (VMoBA: its three partitions)")
    _add_tensor_args(p)
    _add_method_args(p, default="radial")
    p.add_argument("--out", default="outputs/mask.png")
    p.add_argument("--max-memory-gib", type=float, default=4.0, help="refuse a picture estimated to need more memory (GiB)")
    p.set_defaults(func=cmd_mask)

    p = sub.add_parser("make-clips", help="write procedural shapes clips (lossless .mkv) and captions.jsonl for prepare-data")
    add_make_clips_arguments(p)
    p.set_defaults(func=cmd_make_clips)

    p = sub.add_parser("eval", help="every method vs dense on the default model (PSNR/SSIM, prompt accuracy, speed), or "
                                    "--pipeline broadway|freeswim|streaming measured on trained tiny models; writes a report")
    p.add_argument("--pipeline", default=None, choices=("broadway", "freeswim", "streaming"),
                   help="measure this pipeline instead of the attention methods (report.md, results.json, frame strips)")
    p.add_argument("--methods", default=None, help="comma-separated method names (default: all registered)")
    p.add_argument("--cache", action="append", default=None, choices=("first_block", "taylorseer"),
                   help="also run each method with this diffusers step cache stacked on it (repeatable): rows method+cache")
    p.add_argument("--prompts", type=int, default=20, help="held-out prompts to generate")
    p.add_argument("--seeds", default="0", type=_int_list, help="comma-separated seeds")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="denoising steps (method eval; each pipeline eval uses its own)")
    p.add_argument("--guidance", type=float, default=DEFAULT_GUIDANCE, help="guidance scale (method eval)")
    p.add_argument("--out", default="outputs/eval")
    p.set_defaults(func=cmd_eval)

    from ..training.cache import add_prepare_data_arguments, run_prepare_data

    p = sub.add_parser("prepare-data", help="cache VAE latents and text embeddings of a video folder for training")
    add_prepare_data_arguments(p)
    p.set_defaults(func=run_prepare_data)

    # Listed for --help only: main() hands `train ...` to the training entry point unparsed.
    sub.add_parser("train", help="LoRA training: `vidattn train --config X.yaml [--set key=value ...] [--overwrite] [--debug]` (or accelerate launch -m vidattn.training.train_lora)")
    return parser


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) < 600 else text[:597] + "..."


class CommandError(SystemExit):
    """Exit status ``code`` after the one line already printed on stderr; ``str()`` is that line."""

    def __init__(self, message: str, code: int = USAGE_EXIT) -> None:
        super().__init__(code)
        self.message = message

    def __str__(self) -> str:
        return self.message


def _fail(message: str, code: int) -> CommandError:
    print(message, file=sys.stderr)
    return CommandError(message, code)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:2] == ["--debug", "train"]:  # train takes --debug itself
        argv = ["train", *argv[2:], "--debug"]
    if argv[:1] == ["train"]:
        from ..training.train_lora import main as train_main

        raise SystemExit(train_main(argv[1:]))
    debug = "--debug" in argv  # anywhere on the line: show the traceback of an error instead of one line
    args = build_parser().parse_args([a for a in argv if a != "--debug"])
    try:
        code = args.func(args)
    except (ValueError, OSError) as error:  # user errors (UsageError included): bad values, a missing or unwritable path
        if debug:
            raise
        raise _fail(f"vidattn {args.command}: {_one_line(error)}", USAGE_EXIT) from None
    except KeyboardInterrupt:
        raise _fail(f"vidattn {args.command}: interrupted", 130) from None
    except MemoryError as error:
        if debug:
            raise
        raise _fail(f"vidattn {args.command}: out of memory ({_one_line(error)}); try a smaller size", 1) from None
    except SystemExit:
        raise
    except Exception as error:  # a bug, not a user error: one line unless --debug
        if debug:
            raise
        raise _fail(f"vidattn {args.command}: internal error: {type(error).__name__}: {_one_line(error)} "
                    f"(run `vidattn --debug {args.command} ...` for the traceback)", 1) from None
    if code:
        raise SystemExit(code)

if __name__ == "__main__":
    main()
