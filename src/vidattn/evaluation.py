"""`vidattn eval`: every attention method against dense on the default model — fidelity, prompt accuracy, speed.

For each method the same prompts and seeds are generated; PSNR/SSIM compare the decoded frames with dense
attention's, prompt accuracy reads colour and motion off the frames, and the denoising time gives the speed-up.
Writes ``report.md``, ``metrics.png`` and one ``strip_<method>.png`` (dense above, method below) to ``out``.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from .atomic import write_text_atomic
from .latents import denormalise_latents, latent_stats
from .data.shapes import DIRECTIONS, SHAPE_COLORS, SHAPES, make_caption
from .metrics.fidelity import psnr, ssim
from .metrics.prompt_accuracy import prompt_accuracy
from .processors.config import config_fields
from .processors.registry import METHODS, apply_method, get_method
from .pipeline_eval.report import frame_strip, write_png_atomic

# The default model was trained on prompts padded to 16 text tokens (configs/default_model.yaml): WanPipeline's
# own 512 would drown the ~10 real tokens in zero padding. Harmless for other pipelines (prompts are short).
DEFAULT_MAX_SEQUENCE_LENGTH = 16

# Quality floor: a method fails when fewer than this share of its frames show a shape of the prompt's colour (an
# all-black or shapeless output can still score SSIM 0.85 against dense on a mostly black frame).
QUALITY_FLOOR = 0.5


def held_out_prompts(n: int = 20) -> list[str]:
    """``n`` captions cycling through every colour x direction pair (20 = each pair once), shapes in turn."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    directions = list(DIRECTIONS)
    return [
        make_caption(SHAPE_COLORS[i % len(SHAPE_COLORS)], SHAPES[i % len(SHAPES)], directions[(i // len(SHAPE_COLORS)) % len(directions)])
        for i in range(n)
    ]


def method_config(method: str, method_args: dict | None = None, common: dict | None = None, tiny_grid: bool = True) -> dict:
    """The config fields used for ``method``: its registry ``tiny_grid`` settings (the default model's 5 x 8 x 8 grid),
    then the ``common`` fields its config has, then its own ``method_args``."""
    entry = get_method(method)
    fields = set(config_fields(entry.config))
    return {**(entry.tiny_grid if tiny_grid else {}), **{k: v for k, v in (common or {}).items() if k in fields}, **(method_args or {})}


def generate(pipe, prompts: Sequence[str], seed: int, *, frames: int, height: int, width: int, steps: int,
             guidance: float = 1.0, max_sequence_length: int = DEFAULT_MAX_SEQUENCE_LENGTH, on_step: Callable[[], None] | None = None,
             decode: bool = True):
    """Frames (B, F, H, W, 3) in [0, 1] for ``prompts`` and the seconds spent denoising (VAE decode excluded).

    ``on_step`` is called after every denoising step and after the decode (progress bars); ``decode=False`` skips
    the VAE (warm-up runs) and returns None for the frames."""
    extra = {}
    if on_step is not None:
        def callback(_pipe, _step, _t, kwargs):
            on_step()
            return kwargs

        extra["callback_on_step_end"] = callback
    start = time.perf_counter()
    latents = pipe(
        list(prompts), num_frames=frames, height=height, width=width, num_inference_steps=steps, guidance_scale=guidance,
        output_type="latent", generator=torch.Generator().manual_seed(seed), max_sequence_length=max_sequence_length, **extra,
    ).frames
    seconds = time.perf_counter() - start
    if not decode:
        return None, seconds
    with torch.no_grad():
        video = pipe.vae.decode(denormalise_latents(latents.to(pipe.vae.dtype), *latent_stats(pipe.vae)), return_dict=False)[0]
    frames = np.stack(pipe.video_processor.postprocess_video(video, output_type="np"))
    if on_step is not None:
        on_step()
    return frames, seconds


@dataclass
class MethodResult:
    """One method's figures, averaged over prompts and seeds (PSNR/SSIM against dense; inf PSNR = identical)."""

    method: str
    config: dict
    seconds: float
    speedup: float
    psnr: float
    ssim: float
    accuracy: float
    color_accuracy: float
    direction_accuracy: float
    frames: int = 0
    failed_frames: int = 0
    empty_frames: int = 0

    @property
    def failure(self) -> str | None:
        """Why the method failed the quality floor (its output lost the content), or None."""
        if self.frames and self.color_accuracy < QUALITY_FLOOR:
            return (f"only {self.frames - self.failed_frames}/{self.frames} frames show a shape of the prompt's colour "
                    f"({self.empty_frames} show no shape at all); floor {QUALITY_FLOOR:.0%}: PSNR/SSIM say nothing about quality here")
        return None


@dataclass
class EvalReport:
    """All methods' results, the settings used and the files written."""

    results: list[MethodResult]
    settings: dict
    files: list[str] = field(default_factory=list)

    @property
    def failures(self) -> dict[str, str]:
        """Method -> why it failed the quality floor."""
        return {r.method: r.failure for r in self.results if r.failure}

    def to_markdown(self) -> str:
        s = self.settings
        lines = [
            "# vidattn eval: attention methods on the default model",
            "",
            f"{len(s['prompts'])} prompts x seeds {s['seeds']}, {s['frames']} frames {s['height']}x{s['width']}, {s['steps']} steps, "
            f"guidance {s['guidance']}; machine: {s['machine']}; {s['date']}.",
            "PSNR/SSIM: decoded frames against dense attention's on the same prompt and seed. Prompt accuracy: per video, the "
            "share of frames showing a shape of the prompt's colour if the shape moves the prompt's way (centroid tracking), "
            "else 0; colour: share of all frames with a shape of the prompt's colour (a frame with no shape fails); "
            f"direction: share of videos. A method with colour under {QUALITY_FLOOR:.0%} FAILED (its output lost the content). "
            "Time: denoising only.",
            "",
            "| method | config | denoise (s) | speed-up | PSNR (dB) | SSIM | prompt acc. | colour (frames) | direction | verdict |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for r in self.results:
            config = ", ".join(f"{k}={v}" for k, v in r.config.items()) or "—"
            lines.append(
                f"| {r.method} | {config} | {r.seconds:.2f} | {r.speedup:.2f}x | {r.psnr:.2f} | {r.ssim:.4f} | "
                f"{r.accuracy:.2f} | {r.color_accuracy:.2f} | {r.direction_accuracy:.2f} | {'**FAILED**' if r.failure else 'ok'} |"
            )
        for method, why in self.failures.items():
            lines += ["", f"**{method} FAILED**: {why}."]
        lines += ["", "![metrics](metrics.png)", ""] + [f"![{r.method}](strip_{r.method}.png)" for r in self.results]
        return "\n".join(lines) + "\n"


def _plot(results: list[MethodResult], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r.method for r in results]
    panels = [("PSNR vs dense (dB)", [min(r.psnr, 99.0) for r in results]), ("SSIM vs dense", [r.ssim for r in results]),
              ("prompt accuracy", [r.accuracy for r in results]), ("denoising speed-up vs dense", [r.speedup for r in results])]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3))
    for ax, (title, values) in zip(axes, panels):
        ax.bar(names, values, color="tab:blue")
        ax.set_title(title, fontsize=9)
        ax.tick_params(axis="x", labelrotation=45, labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _cache_configs() -> dict:
    """diffusers step caches ``vidattn eval --cache`` can stack on a method, with settings for the 8-step default model."""
    from diffusers.hooks import FirstBlockCacheConfig, TaylorSeerCacheConfig

    # diffusers' default threshold (0.05) never skips a block in 8 steps; 0.2 skips about a third of the denoising
    # time at 36.8 dB PSNR vs dense and prompt accuracy 1.00 (5 held prompts, seed 0, 2026-12-01).
    return {
        "first_block": lambda: FirstBlockCacheConfig(threshold=0.2),
        "taylorseer": lambda: TaylorSeerCacheConfig(
            cache_interval=2, disable_cache_before_step=2, taylor_factors_dtype=torch.float32, cache_identifiers=[r"blocks\.\d+\.attn1"]
        ),
    }


CACHES = ("first_block", "taylorseer")


def evaluate(
    pipe=None,
    *,
    methods: Sequence[str] | None = None,
    prompts: Sequence[str] | None = None,
    num_prompts: int = 20,
    seeds: Sequence[int] = (0,),
    frames: int = 17,
    height: int = 64,
    width: int = 64,
    steps: int = 8,
    guidance: float = 1.0,
    method_args: dict[str, dict] | None = None,
    common_args: dict | None = None,
    out: str | Path | None = "outputs/eval",
    plot: bool = True,
    progress: bool = False,
    caches: Sequence[str] = (),
) -> EvalReport:
    """Evaluate ``methods`` (default: every registered method) against dense on ``pipe`` (default: the trained model).

    ``method_args`` maps a method name to its config fields; ``common_args`` are given to every method whose config
    has them, over the method's registry ``tiny_grid`` settings. With ``out`` set, writes the report, plot and frame strips there.
    ``progress`` shows a bar of denoising steps and decodes on stderr, with the time left. ``caches`` (names in
    :data:`CACHES`) adds, after each method, a row ``method+cache`` with that diffusers step cache stacked on it.
    """
    from .pipelines.default_model import load_default_pipeline

    methods = list(METHODS) if methods is None else list(methods)
    for m in methods:
        if m not in METHODS:
            raise ValueError(f"methods must be names in {sorted(METHODS)}, got {m!r}")
    if "dense" in methods:
        methods.remove("dense")
    methods.insert(0, "dense")
    prompts = held_out_prompts(num_prompts) if prompts is None else list(prompts)
    if not prompts or not seeds:
        raise ValueError("prompts and seeds must be non-empty")
    for cache in caches:
        if cache not in CACHES:
            raise ValueError(f"caches must be names in {CACHES}, got {cache!r}")
    unknown = set(method_args or {}) - set(METHODS)
    if unknown:
        raise ValueError(f"method_args keys must be method names in {sorted(METHODS)}, got {sorted(unknown)}")
    pipe = load_default_pipeline() if pipe is None else pipe
    pipe.set_progress_bar_config(disable=True)
    shape = dict(frames=frames, height=height, width=width)

    outputs: dict[str, list[np.ndarray]] = {}
    results: list[MethodResult] = []
    from tqdm import tqdm

    # units: denoising steps and VAE decodes (one per seed), warm-up step included
    runs = [(method, cache) for method in methods for cache in (None, *caches)]
    bar = tqdm(total=len(runs) * (1 + (steps + 1) * len(seeds)), desc="eval", unit="step", disable=not progress, mininterval=1.0)
    step = lambda: bar.update(1)  # noqa: E731
    try:
        for method, cache in runs:
            name = method if cache is None else f"{method}+{cache}"
            bar.set_description(f"eval {name}")
            config = method_config(method, (method_args or {}).get(method), common_args)
            apply_method(pipe.transformer, method, **config)
            if pipe.transformer.is_cache_enabled:
                pipe.transformer.disable_cache()
            if cache is not None:
                pipe.transformer.enable_cache(_cache_configs()[cache]())
            # warm-up at the timed shapes: FlexAttention compiles
            generate(pipe, prompts, seeds[0], steps=1, guidance=guidance, on_step=step, decode=False, **shape)
            videos, seconds = [], 0.0
            for seed in seeds:
                v, t = generate(pipe, prompts, seed, steps=steps, guidance=guidance, on_step=step, **shape)
                videos.append(v)
                seconds += t
            outputs[name] = videos
            flat = [v for batch in videos for v in batch]
            acc = prompt_accuracy(flat, list(prompts) * len(seeds))
            ref = [v for batch in outputs["dense"] for v in batch]
            results.append(MethodResult(
                name, config, seconds / len(seeds), results[0].seconds / (seconds / len(seeds)) if results else 1.0,
                float(np.mean([psnr(a, b) for a, b in zip(flat, ref)])), float(np.mean([ssim(a, b) for a, b in zip(flat, ref)])),
                acc.accuracy, acc.color, acc.direction, acc.frames, acc.failed_frames, acc.empty_frames,
            ))
    finally:
        bar.close()
        if pipe.transformer.is_cache_enabled:
            pipe.transformer.disable_cache()
        apply_method(pipe.transformer, "dense")
    settings = dict(prompts=list(prompts), seeds=list(seeds), steps=steps, guidance=guidance, **shape,
                    machine=f"{platform.machine()} {platform.processor() or ''} torch {torch.__version__}, {torch.get_num_threads()} threads".replace("  ", " "),
                    date=time.strftime("%Y-%m-%d"))
    report = EvalReport(results, settings)
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        for r in results:
            videos = [outputs["dense"][0][0]] + ([outputs[r.method][0][0]] if r.method != "dense" else [])
            write_png_atomic(out / f"strip_{r.method}.png", frame_strip(videos))
            report.files.append(str(out / f"strip_{r.method}.png"))
        if plot:
            _plot(results, out / "metrics.png")
            report.files.append(str(out / "metrics.png"))
        write_text_atomic(out / "report.md", report.to_markdown())
        rows = [{**dataclasses.asdict(r), "failure": r.failure} for r in results]
        write_text_atomic(out / "results.json", json.dumps(rows, indent=1, default=str))
        report.files += [str(out / "report.md"), str(out / "results.json")]
    return report
