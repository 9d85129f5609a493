"""`vidattn eval --pipeline broadway`: stock vs BroadWay presets on the trained tiny UNet video model.

Each (prompt, seed) is generated once stock and once per preset from the same initial noise, so every comparison
is paired. Metrics: frame-difference motion energy, centroid travel, warping error (temporal consistency) and
per-frame prompt accuracy (colour + direction).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..checks import check_int
from ..evaluation import held_out_prompts
from ..metrics.motion import frame_difference_energy
from ..metrics.prompt_accuracy import parse_caption, prompt_accuracy
from ..metrics.temporal import centroid_travel, warping_error
from ..pipelines.broadway import run_broadway_generation
from ..pipelines.broadway_guidance import BroadWayConfig
from ..pipelines.unet_video_model import UNET_FRAMES, UNET_GUIDANCE, UNET_HEIGHT, UNET_STEPS, UNET_WIDTH, load_unet_video_pipeline
from .report import PipelineReport, Table, frame_strip

# The presets of broadway_guidance (the ByTheWay README's two settings); "stock" is BroadWay off.
PRESETS: dict[str, BroadWayConfig] = {"animatediff": BroadWayConfig.animatediff(), "videocrafter2": BroadWayConfig.videocrafter2()}


def _generate(pipe, prompts: list[str], seed: int, config: BroadWayConfig | None) -> tuple[np.ndarray, int]:
    """Frames (B, F, H, W, 3) and the number of attention maps BroadWay changed (0 for stock)."""
    run = run_broadway_generation(
        pipe, prompts, config, enabled=config is not None, num_frames=UNET_FRAMES, height=UNET_HEIGHT, width=UNET_WIDTH,
        num_inference_steps=UNET_STEPS, guidance_scale=UNET_GUIDANCE, generator=torch.Generator().manual_seed(seed),
    )
    return run.frames, 0 if run.controller is None else len(run.controller.history)


def _video_metrics(videos: np.ndarray, prompts: list[str]) -> dict[str, list[float]]:
    acc = prompt_accuracy(list(videos), prompts)
    frames, wanted = videos.shape[1], [parse_caption(p) for p in prompts]
    return {
        "motion": [frame_difference_energy(v) for v in videos],
        "warp": [warping_error(v) for v in videos],
        "travel": [centroid_travel(v) for v in videos],
        "color": [r.frames_showing(w["color"]) / frames for r, w in zip(acc.recovered, wanted)],
        "direction": [float(r.direction == w["direction"]) for r, w in zip(acc.recovered, wanted)],
    }


def _fmt(values: list[float], digits: int = 4) -> str:
    return f"{np.mean(values):.{digits}f}"


def _pm(value: tuple[float, float], digits: int) -> str:
    return f"{value[0]:+.{digits}f} ± {value[1]:.{digits}f}"


def paired_differences(metrics: dict[str, dict[str, list[float]]], name: str) -> dict[str, tuple[float, float]]:
    """Preset minus stock per (prompt, seed) video: (mean, 95 % half-width 1.96 sd / sqrt(n)) of each metric, plus
    ``accuracy`` (colour share x right direction) and ``direction_flips`` (wrong -> right, right -> wrong counts)."""
    out = {}
    for key in ("motion", "travel", "warp", "accuracy"):
        if key == "accuracy":
            a, b = (np.asarray(metrics[n]["color"]) * np.asarray(metrics[n]["direction"]) for n in (name, "stock"))
        else:
            a, b = np.asarray(metrics[name][key]), np.asarray(metrics["stock"][key])
        d = a - b
        out[key] = (float(d.mean()), float(1.96 * d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan"))
    a, b = np.asarray(metrics[name]["direction"]), np.asarray(metrics["stock"]["direction"])
    out["direction_flips"] = (float(np.sum((a > b))), float(np.sum(a < b)))
    return out


def evaluate(*, prompts: int, seeds: list[int], out: Path | None) -> PipelineReport:
    """Stock vs each BroadWay preset on the shipped UNet video model; the report's table, notes and one frame strip."""
    check_int("prompts", prompts, 1)
    if not seeds or not all(isinstance(s, int) for s in seeds):
        raise ValueError(f"seeds must be a non-empty list of ints, got {seeds!r}")
    captions = held_out_prompts(prompts)
    pipe = load_unet_video_pipeline()
    names = ["stock", *PRESETS]
    per: dict[str, dict[str, list[float]]] = {n: {} for n in names}
    maps_changed: dict[str, list[int]] = {n: [] for n in names}
    changed_pixels: dict[str, list[float]] = {n: [] for n in PRESETS}
    strip_videos = []
    for seed in seeds:
        stock = None
        for name in names:
            videos, changed = _generate(pipe, captions, seed, PRESETS.get(name))
            for key, values in _video_metrics(videos, captions).items():
                per[name].setdefault(key, []).extend(values)
            maps_changed[name].append(changed)
            if name == "stock":
                stock = videos
            else:
                changed_pixels[name].append(float(np.abs(videos - stock).max()))
            if seed == seeds[0]:
                strip_videos.append(videos[0])
    rows = []
    base = per["stock"]
    for name in names:
        m = per[name]
        cfg = PRESETS.get(name)
        setting = "off" if cfg is None else f"alpha {cfg.alpha}, beta {cfg.beta}, tau {cfg.tau}, first {cfg.steps_fraction:.0%}"
        ratio = np.asarray(m["motion"]) / np.maximum(np.asarray(base["motion"]), 1e-12)
        seed_means = np.asarray(m["motion"]).reshape(len(seeds), prompts).mean(1)
        rows.append([
            name, setting, f"{np.mean(m['motion']):.5f} (sd over seeds {seed_means.std():.5f})",
            "-" if cfg is None else f"{np.mean(ratio) - 1:+.1%}", f"{np.mean(m['travel']):.2f}", _fmt(m["warp"], 6),
            f"{np.mean(np.asarray(m['color']) * np.asarray(m['direction'])):.3f}", _fmt(m["color"], 3), _fmt(m["direction"], 3),
            f"{np.mean(maps_changed[name]):.0f}",
        ])
    table = Table(
        f"{prompts} held-out prompts x seeds {seeds}; {UNET_FRAMES} frames {UNET_HEIGHT}x{UNET_WIDTH}, {UNET_STEPS} DDIM steps, "
        f"guidance {UNET_GUIDANCE}; means over all {prompts * len(seeds)} videos",
        ["setting", "BroadWay", "motion energy", "motion vs stock (paired)", "centroid travel (px)", "warping error",
         "prompt accuracy", "colour (per frame)", "direction", "maps changed / run"],
        rows,
    )
    paired = {name: paired_differences(per, name) for name in PRESETS}
    paired_table = Table(
        "Paired differences, preset minus stock on the same (prompt, seed, noise): mean ± 95 % half-width (1.96 sd / sqrt(n))",
        ["setting", "motion energy", "centroid travel (px)", "warping error", "prompt accuracy", "direction wrong->right / right->wrong"],
        [[name, _pm(d["motion"], 5), _pm(d["travel"], 2), _pm(d["warp"], 7), _pm(d["accuracy"], 3),
          f"{d['direction_flips'][0]:.0f} / {d['direction_flips'][1]:.0f}"] for name, d in paired.items()],
    )
    notes = [
        "**Metrics.** motion energy: mean squared difference of consecutive frames (pixels in [0, 1]). centroid travel: "
        "pixels between the shape's centroid in its first and last frame. warping error: mean over consecutive pairs of "
        "mean((x[t+1] - x[t] shifted by the shape's rounded centroid displacement)^2), vacated pixels set to the background "
        "colour (`vidattn.metrics.temporal`); 0 for a rigidly moving shape, higher = less temporally consistent. "
        "prompt accuracy: per video, share of frames showing a shape of the prompt's colour, times 1 if the centroid "
        "moves the prompt's way (`vidattn.metrics.prompt_accuracy`).",
    ]
    for name in PRESETS:
        worse = np.mean(np.asarray(per[name]["warp"]) > np.asarray(base["warp"]))
        more = np.mean(np.asarray(per[name]["motion"]) > np.asarray(base["motion"]))
        notes.append(f"**{name}** vs stock, per (prompt, seed) pair: more motion energy in {more:.0%}, higher warping error in "
                     f"{worse:.0%}; largest pixel change vs stock per seed: {', '.join(f'{v:.3f}' for v in changed_pixels[name])}.")
    return PipelineReport(
        title="BroadWay on the trained tiny UNet video model",
        intro=(f"Model: `vidattn.pipelines.unet_video_model` (AnimateDiffPipeline, UNetMotionModel, trained on the shapes "
               f"data; docs/broadway.md). Settings: {UNET_FRAMES} frames of {UNET_HEIGHT}x{UNET_WIDTH}, {UNET_STEPS} DDIM steps, "
               f"classifier-free guidance {UNET_GUIDANCE} (BroadWay's energy from the conditional half), each preset from the same "
               f"initial noise as stock. Frame strip: prompt {captions[0]!r}, seed {seeds[0]}; rows: {', '.join(names)}."),
        tables=[table, paired_table],
        notes=notes,
        strips={"broadway": frame_strip(strip_videos, count=8, scale=4)},
        data={"prompts": captions, "seeds": seeds, "metrics": per, "paired": paired, "maps_changed": maps_changed, "max_pixel_change": changed_pixels},
    )
