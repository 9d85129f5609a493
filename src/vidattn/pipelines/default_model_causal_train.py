"""CPU fine-tune of the embedded default model's transformer into a block-causal streaming student.

Teacher forcing in the CausVid / diffusion-forcing spirit, through the streaming attention itself: each training
clip (``chunks`` x ``frames_per_chunk`` latent frames of a long, wrapping shapes video) is run chunk by chunk
exactly as ``StreamingWanPipeline.stream_latents`` runs it: the chunk's noisy latents at its own noise level (one of
the few-step schedule's) read the cache; the clean chunk's refresh pass at the context timestep writes it. So the
mask, RoPE positions, eviction and timesteps of training are those of inference by construction. Stages, each
resumable from ``--work``: ``latents`` (encode the clips once), ``transformer`` (the fine-tune, EMA), ``export``
(the transformer alone, safetensors). Reproduce the shipped weights with
``python -m vidattn.pipelines.default_model_causal_train --config configs/default_model_causal.yaml``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml
from safetensors.torch import load_file, save_file

from ..atomic import replace_synced, save_pretrained_atomic, write_text_atomic
from ..checks import check_choice
from ..data.shapes import SHAPE_COLORS, ShapesDataset
from ..latents import latent_stats, normalise_latents
from ..processors.streaming import StreamingConfig
from ..schedulers.few_step import FewStepSchedule
from .default_model import load_default_pipeline
from .default_model_pretrain import _load_state, _log, _resume, _save_state, padding_biases, run_stages, start_stages, to_pixels
from .stream_state import StreamState, apply_streaming_attention, remove_streaming_attention

STAGES = ("latents", "transformer", "export")
# The 17-frame clips of the default model travel 0.4 of the frame in 16 frames: the long clips move as fast.
BASE_SPEED = 0.4 / 16


@dataclass
class CausalDataSettings:
    num_videos: int = 320
    speed: float = BASE_SPEED      # fraction of the frame per video frame
    wrap: bool = True              # the shape wraps around the edges, so it keeps moving the caption's way forever
    position_jitter: float = 0.2
    encode_context: int = 2        # latent frames of warm-up when encoding a piece with a fresh VAE cache


@dataclass
class CausalConfig:
    """The causal fine-tune's settings; read from YAML with unknown keys rejected."""

    seed: int = 0
    threads: int = 1
    height: int = 64
    width: int = 64
    colors: list = field(default_factory=lambda: list(SHAPE_COLORS))
    chunks: int = 7                # chunks per training clip: 7 x 3 = 21 latent frames = max_frames
    frames_per_chunk: int = 3
    modes: list = field(default_factory=lambda: ["window", "dense"])  # streaming attention per step, in turn
    sink_frames: int = 3
    window_frames: int = 9
    max_frames: int = 21
    schedule_steps: list = field(default_factory=lambda: [1000, 750, 500, 250])
    schedule_shift: float = 5.0
    data: CausalDataSettings = field(default_factory=CausalDataSettings)
    steps: int = 700
    batch_size: int = 8
    learning_rate: float = 2e-4
    warmup: int = 20
    ema_decay: float = 0.99
    caption_dropout: float = 0.1
    max_sequence_length: int = 16
    checkpoint_every: int = 25

    def __post_init__(self) -> None:
        for mode in self.modes:
            check_choice("modes", mode, ("window", "dense", "hybrid"))
        self.schedule()  # validates the steps and shift
        for mode in self.modes:
            self.streaming(mode).check_chunk(self.frames_per_chunk)

    @property
    def latent_frames(self) -> int:
        return self.chunks * self.frames_per_chunk

    @property
    def video_frames(self) -> int:
        return 1 + 4 * (self.latent_frames - 1)

    def schedule(self) -> FewStepSchedule:
        return FewStepSchedule(steps=tuple(self.schedule_steps), shift=self.schedule_shift)

    def streaming(self, mode: str) -> StreamingConfig:
        return StreamingConfig(mode=mode, sink_frames=self.sink_frames, window_frames=self.window_frames, max_frames=self.max_frames)


def load_config(path: str | Path | None) -> CausalConfig:
    """The fine-tune's config from YAML (None: the defaults, equal to configs/default_model_causal.yaml)."""
    if path is None:
        return CausalConfig()
    data = yaml.safe_load(Path(path).read_text()) or {}

    def build(cls, values: dict, where: str):
        allowed = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - allowed
        if unknown:
            raise ValueError(f"unknown key(s) {sorted(unknown)} in {where}; allowed: {sorted(allowed)}")
        return cls(**values)

    if "data" in data:
        data = {**data, "data": build(CausalDataSettings, data["data"] or {}, f"{path}.data")}
    return build(CausalConfig, data, str(path))


# -- long clips -> latents -----------------------------------------------------------------------------------
@torch.no_grad()
def encode_windowed(vae, pixels: torch.Tensor, piece: int, context: int) -> torch.Tensor:
    """Latents of a long (B, 3, 1 + 4(n-1), H, W) clip, ``piece`` latent frames at a time, each with a fresh cache
    warmed up on the ``context`` latent frames before it (their outputs dropped).

    The tiny VAE was trained on 17-frame clips: run over 81 frames with one cache its colours drift (red encodes
    as green after ~30 frames). Latent j covers frames 4j-3..4j, so frames 4m..4e give a dummy latent (frame 4m
    alone) and then latents m+1..e exactly aligned with the whole clip's.
    """
    n = (pixels.shape[2] - 1) // 4 + 1
    first = min(piece, n)
    out = [vae.encode(pixels[:, :, : 1 + 4 * (first - 1)]).latent_dist.mode()]
    start = first
    while start < n:
        end = min(n - 1, start + piece - 1)
        m = max(0, start - context - 1)
        z = vae.encode(pixels[:, :, 4 * m : 4 * end + 1]).latent_dist.mode()
        out.append(z[:, :, -(end - start + 1) :])
        start = end + 1
    return torch.cat(out, dim=2)


def long_clips(cfg: CausalConfig, num: int, seed: int) -> ShapesDataset:
    """``num`` wrapping shape clips of ``cfg.video_frames`` frames, moving at the default model's speed."""
    d = cfg.data
    return ShapesDataset(num, frames=cfg.video_frames, height=cfg.height, width=cfg.width, seed=seed, colors=tuple(cfg.colors),
                         travel=d.speed * (cfg.video_frames - 1), wrap=d.wrap, position_jitter=d.position_jitter)


def encode_latents(cfg: CausalConfig, work: Path) -> None:
    """Encode ``data.num_videos`` long clips once with the default model's VAE (normalised with its stats)."""
    if (work / "latents.safetensors").is_file() and (work / "latents.json").is_file():
        _log(work, "latents already encoded")
        return
    pipe = load_default_pipeline()
    vae = pipe.vae.eval()
    data = long_clips(cfg, cfg.data.num_videos, cfg.seed + 10)
    latents, captions = [], []
    for start in range(0, len(data), 8):
        samples = [data[i] for i in range(start, min(start + 8, len(data)))]
        z = encode_windowed(vae, to_pixels(np.stack([s.video for s in samples])), cfg.frames_per_chunk, cfg.data.encode_context)
        latents.append(normalise_latents(z, *latent_stats(vae)))
        captions += [s.caption for s in samples]
        _log(work, f"encoded {len(captions)}/{len(data)}")
    tmp = work / ".latents.safetensors.tmp"
    save_file({"latents": torch.cat(latents).contiguous()}, str(tmp))
    replace_synced(tmp, work / "latents.safetensors")
    write_text_atomic(work / "latents.json", json.dumps({"captions": captions}))


# -- the fine-tune ---------------------------------------------------------------------------------------------
def stream_predictions(transformer, state: StreamState, clean: torch.Tensor, noisy: torch.Tensor, timesteps: torch.Tensor,
                       embeds: torch.Tensor, frames_per_chunk: int, context_timestep: float = 0.0) -> list[torch.Tensor]:
    """Teacher-forced flow predictions, chunk by chunk, through the streaming attention installed as ``state``.

    ``clean``/``noisy`` (B, C, F, H, W); ``timesteps`` (B, chunks): chunk c's noisy latents at timestep
    ``timesteps[:, c]`` read the cache (as a denoising step of ``stream_latents`` does), then the clean chunk at
    ``context_timestep`` is committed (its refresh pass). Differentiable: the cache keeps the graph.
    """
    state.reset()
    state.new_prompt()
    chunks = clean.shape[2] // frames_per_chunk
    batch = clean.shape[0]
    out = []
    for c in range(chunks):
        first = c * frames_per_chunk
        part = slice(first, first + frames_per_chunk)
        with state.context.call(frame=first, commit=False):
            out.append(transformer(hidden_states=noisy[:, :, part], timestep=timesteps[:, c], encoder_hidden_states=embeds, return_dict=False)[0])
        if c + 1 < chunks:
            t = torch.full((batch,), float(context_timestep), device=clean.device)
            with state.context.call(frame=first, commit=True):
                transformer(hidden_states=clean[:, :, part], timestep=t, encoder_hidden_states=embeds, return_dict=False)
    state.reset()
    return out


def causal_loss(transformer, state: StreamState, latents: torch.Tensor, embeds: torch.Tensor, schedule: FewStepSchedule,
                frames_per_chunk: int, generator: torch.Generator) -> torch.Tensor:
    """Flow-matching MSE of every chunk, each chunk at its own noise level drawn from the schedule's steps."""
    batch, chunks = latents.shape[0], latents.shape[2] // frames_per_chunk
    sigmas = torch.tensor(schedule.sigmas, dtype=torch.float32)
    pick = torch.randint(len(sigmas), (batch, chunks), generator=generator)
    sigma = sigmas[pick]  # (B, chunks)
    noise = torch.randn(latents.shape, generator=generator, dtype=torch.float32)
    s = sigma.repeat_interleave(frames_per_chunk, dim=1).view(batch, 1, -1, 1, 1)
    noisy = (1 - s) * latents + s * noise
    preds = stream_predictions(transformer, state, latents, noisy, sigma * schedule.num_train_timesteps, embeds,
                               frames_per_chunk, schedule.context_sigma * schedule.num_train_timesteps)
    return torch.nn.functional.mse_loss(torch.cat(preds, dim=2).float(), noise - latents)


def train_transformer(cfg: CausalConfig, work: Path) -> None:
    """Fine-tune the default model's transformer with :func:`causal_loss` (AdamW, cosine, EMA); resumable."""
    z = load_file(str(work / "latents.safetensors"))["latents"]
    captions = json.loads((work / "latents.json").read_text())["captions"]
    pipe = load_default_pipeline()
    unique = sorted(set(captions)) + [""]
    with torch.no_grad():
        embeds, _ = pipe.encode_prompt(unique, do_classifier_free_guidance=False, max_sequence_length=cfg.max_sequence_length, device="cpu")
    caption_index = torch.tensor([unique.index(c) for c in captions])
    transformer = pipe.transformer.train()
    for bias in padding_biases(transformer):
        bias.requires_grad_(False)
    ema = copy.deepcopy(transformer).requires_grad_(False)
    opt = torch.optim.AdamW([p for p in transformer.parameters() if p.requires_grad], lr=cfg.learning_rate, weight_decay=0.01)
    state_path = work / "transformer_state.pt"
    step = _resume(state_path, transformer, opt, ema)
    schedule = cfg.schedule()
    generator = torch.Generator().manual_seed(cfg.seed * 1000 + step)
    while step < cfg.steps:
        mode = cfg.modes[step % len(cfg.modes)]
        lr = cfg.learning_rate * min(1.0, (step + 1) / max(cfg.warmup, 1)) * 0.5 * (1 + np.cos(np.pi * step / cfg.steps))
        for group in opt.param_groups:
            group["lr"] = lr
        idx = torch.randint(len(z), (cfg.batch_size,), generator=generator)
        text = caption_index[idx].clone()
        text[torch.rand(cfg.batch_size, generator=generator) < cfg.caption_dropout] = len(unique) - 1
        state = apply_streaming_attention(transformer, cfg.streaming(mode))
        try:
            loss = causal_loss(transformer, state, z[idx], embeds[text], schedule, cfg.frames_per_chunk, generator)
            opt.zero_grad()
            loss.backward()
        finally:
            remove_streaming_attention(transformer)
        torch.nn.utils.clip_grad_norm_(transformer.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), transformer.parameters()):
                pe.lerp_(p, 1 - min(cfg.ema_decay, (1 + step) / (10 + step)))
        step += 1
        if step % 5 == 0:
            _log(work, f"causal step {step} mode {mode} loss {loss.item():.4f} lr {lr:.2e}")
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            _save_state(state_path, {"model": transformer.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(), "step": step})


# -- export ------------------------------------------------------------------------------------------------------
def export(cfg: CausalConfig, work: Path, out: Path, use_ema: bool = True) -> None:
    """The fine-tuned transformer alone (config.json + safetensors) and ``causal.json`` (how it was trained)."""
    pipe = load_default_pipeline()
    transformer = pipe.transformer
    saved = _load_state(work / "transformer_state.pt")
    transformer.load_state_dict(saved["ema" if use_ema else "model"])
    save_pretrained_atomic(transformer, out)
    info = {"step": saved["step"], "ema": use_ema, **dataclasses.asdict(cfg)}
    write_text_atomic(out / "causal.json", json.dumps(info, indent=1))
    _log(work, f"wrote {out} (step {saved['step']}, ema={use_ema})")


def run(config: str | Path | None, work: str | Path, out: str | Path, stages: tuple[str, ...] = STAGES) -> None:
    """Run the named stages in order (each resumes from ``work``)."""
    cfg, work = start_stages(stages, STAGES, load_config, config, work)
    run_stages(stages, work, {
        "latents": lambda: encode_latents(cfg, work),
        "transformer": lambda: train_transformer(cfg, work),
        "export": lambda: export(cfg, work, Path(out)),
    })


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m vidattn.pipelines.default_model_causal_train", description=__doc__)
    p.add_argument("--config", default="configs/default_model_causal.yaml")
    p.add_argument("--work", default="outputs/causal", help="latents, checkpoints and log (resumable)")
    p.add_argument("--out", default="src/vidattn/assets/default_model_causal")
    p.add_argument("--stages", default=",".join(STAGES))
    args = p.parse_args(argv)
    run(args.config, args.work, args.out, tuple(args.stages.split(",")))


if __name__ == "__main__":
    main()
