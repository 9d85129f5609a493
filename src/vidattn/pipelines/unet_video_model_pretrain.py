"""From-scratch CPU training of the embedded UNet video model (AnimateDiff layout) on the shapes dataset.

Stages (each resumes from its checkpoint in ``--work``): ``vae`` (image VAE on frames), ``latents`` (encode the
dataset once, set the VAE's scaling factor), ``unet`` (DDPM v-prediction), ``decoder`` (more decoder training with
the encoder frozen, so the UNet's latents stay valid), ``assemble`` (the diffusers folder).
Reproduce the shipped weights with
``python -m vidattn.pipelines.unet_video_model_pretrain --config configs/unet_video_model.yaml --work outputs/unet_pretrain --out src/vidattn/assets/unet_video_model``.
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

from ..atomic import replace_synced, save_pretrained_folder_atomic, write_text_atomic
from ..data.shapes import ShapesDataset
from .broadway import build_tokenizer
from .default_model_pretrain import _load_state, _log, _resume, _save_state, run_stages, start_stages  # same log format and file (work/log.txt)
from .unet_video_model import TEXT_TOKENS, build_text_encoder, build_unet, build_vae, sampling_scheduler, training_scheduler

STAGES = ("vae", "latents", "unet", "decoder", "assemble")


@dataclass
class VAESettings:
    block_out_channels: list = field(default_factory=lambda: [16, 32, 32])
    latent_channels: int = 4
    steps: int = 150
    videos_per_batch: int = 4     # every frame of each video: 4 x 16 = 64 frames a step
    learning_rate: float = 2e-3
    warmup: int = 50
    kl_weight: float = 1e-6
    foreground_weight: float = 8.0  # extra loss weight on shape pixels (the frames are mostly black)
    latent_hint_weight: float = 1.0  # latent channels pulled to each cell's mean RGB + shape coverage
    hint_foreground_weight: float = 8.0
    decoder_steps: int = 150         # decoder-only stage (encoder frozen): sharper frames, truer colours, same latents
    decoder_learning_rate: float = 1e-3


@dataclass
class UNetSettings:
    block_out_channels: list = field(default_factory=lambda: [16, 32, 32, 32])
    heads: int = 2
    num_videos: int = 480
    position_jitter: float = 0.2
    steps: int = 1200
    batch_size: int = 8
    learning_rate: float = 1e-3
    warmup: int = 100
    caption_dropout: float = 0.1  # empty prompt 10 % of the time: the unconditional branch of classifier-free guidance
    ema_decay: float = 0.995


@dataclass
class TextEncoderSettings:
    hidden: int = 32
    layers: int = 2
    heads: int = 2


@dataclass
class UNetModelConfig:
    """Everything the UNet video model's training needs; read from YAML with unknown keys rejected."""

    seed: int = 0
    threads: int = 1
    frames: int = 16
    height: int = 32
    width: int = 32
    colors: list = field(default_factory=lambda: ["red", "green", "blue", "yellow", "white"])
    vae: VAESettings = field(default_factory=VAESettings)
    unet: UNetSettings = field(default_factory=UNetSettings)
    text_encoder: TextEncoderSettings = field(default_factory=TextEncoderSettings)
    checkpoint_every: int = 50

    def __post_init__(self) -> None:
        factor = 2 ** (len(self.vae.block_out_channels) - 1 + len(self.unet.block_out_channels) - 1)
        if self.height % factor or self.width % factor:
            raise ValueError(f"height and width must be multiples of {factor} (VAE x UNet downsampling), got {self.height}x{self.width}")


_NESTED = {"vae": VAESettings, "unet": UNetSettings, "text_encoder": TextEncoderSettings}


def _build(cls, data: dict, where: str):
    allowed = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - allowed
    if unknown:
        raise ValueError(f"unknown key(s) {sorted(unknown)} in {where}; allowed: {sorted(allowed)}")
    nested = _NESTED if cls is UNetModelConfig else {}
    return cls(**{k: _build(nested[k], v or {}, f"{where}.{k}") if k in nested else v for k, v in data.items()})


def load_config(path: str | Path | None) -> UNetModelConfig:
    """The training config from a YAML file (None: the defaults, equal to configs/unet_video_model.yaml)."""
    if path is None:
        return UNetModelConfig()
    return _build(UNetModelConfig, yaml.safe_load(Path(path).read_text()) or {}, str(path))


def _dataset(cfg: UNetModelConfig, num: int, seed: int, position_jitter: float = 1.0) -> ShapesDataset:
    return ShapesDataset(num, frames=cfg.frames, height=cfg.height, width=cfg.width, seed=seed, colors=tuple(cfg.colors),
                         position_jitter=position_jitter)


def _vae(cfg: UNetModelConfig, scaling_factor: float = 1.0):
    return build_vae(tuple(cfg.vae.block_out_channels), cfg.vae.latent_channels, scaling_factor, cfg.height)


def _unet(cfg: UNetModelConfig):
    factor = 2 ** (len(cfg.vae.block_out_channels) - 1)
    return build_unet(tuple(cfg.unet.block_out_channels), cfg.text_encoder.hidden, cfg.unet.heads, cfg.vae.latent_channels,
                      cfg.height // factor, cfg.seed)


def _text_encoder(cfg: UNetModelConfig):
    t = cfg.text_encoder
    return build_text_encoder(t.hidden, t.layers, t.heads, cfg.seed)


def _lr(base: float, step: int, total: int, warmup: int) -> float:
    return base * min(1.0, (step + 1) / max(warmup, 1)) * 0.5 * (1 + np.cos(np.pi * step / total))


# -- stage 1: the image VAE -----------------------------------------------------------------------------------
def frames_to_pixels(videos: np.ndarray) -> torch.Tensor:
    """(B, F, H, W, 3) in [0, 1] -> (B*F, 3, H, W) in [-1, 1], the image VAE's input."""
    x = torch.from_numpy(np.ascontiguousarray(videos)).float()
    return x.reshape(-1, *x.shape[2:]).permute(0, 3, 1, 2) * 2 - 1


def latent_hint(x: torch.Tensor, foreground: torch.Tensor, factor: int) -> torch.Tensor:
    """(N, 4, H/f, W/f): each latent cell's mean RGB in [0, 1] and shape coverage (black background -> 0).

    The first four latent channels are pulled towards it, so the latent is a smooth low-resolution picture of
    the frame (easy for a tiny UNet to model) and the colour survives in it.
    """
    v = torch.cat([(x + 1) / 2, foreground.float()], dim=1)
    return torch.nn.functional.avg_pool2d(v, factor)


def train_vae(cfg: UNetModelConfig, work: Path, decoder_only: bool = False) -> None:
    """Reconstruction (foreground-weighted MSE + tiny KL + latent hint) of the posterior mean on whole frames.

    ``decoder_only``: continue from the ``vae`` stage with the encoder frozen (the UNet's latents stay valid).
    """
    v = cfg.vae
    vae = _vae(cfg)
    total, base_lr = (v.decoder_steps, v.decoder_learning_rate) if decoder_only else (v.steps, v.learning_rate)
    if decoder_only:
        vae.load_state_dict(_load_state(work / "vae_state.pt")["model"])
        for module in (vae.encoder, vae.quant_conv):
            module.requires_grad_(False)
    opt = torch.optim.AdamW([p for p in vae.parameters() if p.requires_grad], lr=base_lr, weight_decay=0.0)
    path = work / ("vae_decoder_state.pt" if decoder_only else "vae_state.pt")
    step = _resume(path, vae, opt)
    data = _dataset(cfg, 10**6, cfg.seed + (3 if decoder_only else 1))
    rng = np.random.default_rng([cfg.seed, 3 if decoder_only else 1, step])
    factor = 2 ** (len(v.block_out_channels) - 1)
    vae.train()
    while step < total:
        lr = _lr(base_lr, step, total, v.warmup)
        for group in opt.param_groups:
            group["lr"] = lr
        x = frames_to_pixels(np.stack([data[int(rng.integers(len(data)))].video for _ in range(v.videos_per_batch)]))
        posterior = vae.encode(x).latent_dist
        latents = posterior.mode()
        recon = vae.decode(latents).sample
        foreground = (x + 1).abs().amax(1, keepdim=True) > 0.2  # black background: any channel above ~0.1
        rec = ((1 + v.foreground_weight * foreground.float()) * (recon - x) ** 2).mean()
        hint = latent_hint(x, foreground, factor)
        cell_weight = 1 + v.hint_foreground_weight * hint[:, 3:4]
        loss = rec + v.kl_weight * posterior.kl().mean() / x[0].numel()
        if not decoder_only:
            loss = loss + v.latent_hint_weight * (cell_weight * (latents[:, :4] - hint) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        step += 1
        if step % 10 == 0:
            _log(work, f"{'decoder' if decoder_only else 'vae'} step {step} rec {rec.item():.4f} total {loss.item():.4f} lr {lr:.2e}")
        if step % cfg.checkpoint_every == 0 or step == total:
            _save_state(path, {"model": vae.state_dict(), "opt": opt.state_dict(), "step": step})


# -- stage 2: latents ---------------------------------------------------------------------------------------
def encode_latents(cfg: UNetModelConfig, work: Path) -> None:
    """Encode ``num_videos`` dataset videos frame by frame (posterior mode); scale them to unit std."""
    vae = _vae(cfg)
    vae.load_state_dict(_load_state(work / "vae_state.pt")["model"])
    vae.eval()
    data = _dataset(cfg, cfg.unet.num_videos, cfg.seed + 2, position_jitter=cfg.unet.position_jitter)
    latents, captions = [], []
    with torch.no_grad():
        for start in range(0, len(data), 16):
            samples = [data[i] for i in range(start, min(start + 16, len(data)))]
            z = vae.encode(frames_to_pixels(np.stack([s.video for s in samples]))).latent_dist.mode()
            latents.append(z.reshape(len(samples), cfg.frames, *z.shape[1:]).permute(0, 2, 1, 3, 4))  # (B, C, F, h, w)
            captions += [s.caption for s in samples]
    z = torch.cat(latents)
    scaling = float(1.0 / z.std())
    save_file({"latents": (z * scaling).contiguous()}, str(work / ".latents.tmp.safetensors"))
    replace_synced(work / ".latents.tmp.safetensors", work / "latents.safetensors")
    write_text_atomic(work / "latents.json", json.dumps({"captions": captions, "scaling_factor": scaling}))
    _log(work, f"encoded {len(captions)} videos, latent shape {tuple(z.shape[1:])}, scaling_factor {scaling:.4f}")


# -- stage 3: the UNet --------------------------------------------------------------------------------------
def caption_embeddings(cfg: UNetModelConfig, captions: list[str]) -> torch.Tensor:
    """(len(captions), TEXT_TOKENS, hidden): what AnimateDiffPipeline.encode_prompt gives the UNet for each caption."""
    tokenizer, encoder = build_tokenizer(TEXT_TOKENS), _text_encoder(cfg)
    ids = tokenizer(captions, padding="max_length", max_length=TEXT_TOKENS, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        return encoder(ids)[0]


def train_unet(cfg: UNetModelConfig, work: Path) -> None:
    """DDPM v-prediction on the cached latents with an EMA copy; resumable."""
    u = cfg.unet
    z = load_file(str(work / "latents.safetensors"))["latents"]
    meta = json.loads((work / "latents.json").read_text())
    unique = sorted(set(meta["captions"])) + [""]
    embeds = caption_embeddings(cfg, unique)
    caption_index = torch.tensor([unique.index(c) for c in meta["captions"]])
    scheduler = training_scheduler()
    unet = _unet(cfg)
    ema = copy.deepcopy(unet).requires_grad_(False)
    opt = torch.optim.AdamW(unet.parameters(), lr=u.learning_rate, weight_decay=0.01)
    path = work / "unet_state.pt"
    step = _resume(path, unet, opt, ema)
    generator = torch.Generator().manual_seed(cfg.seed * 1000 + step)
    frames = z.shape[2]
    unet.train()
    while step < u.steps:
        lr = _lr(u.learning_rate, step, u.steps, u.warmup)
        for group in opt.param_groups:
            group["lr"] = lr
        idx = torch.randint(len(z), (u.batch_size,), generator=generator)
        text = caption_index[idx].clone()
        text[torch.rand(u.batch_size, generator=generator) < u.caption_dropout] = len(unique) - 1
        x0 = z[idx]
        noise = torch.randn(x0.shape, generator=generator)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (u.batch_size,), generator=generator)
        pred = unet(scheduler.add_noise(x0, noise, t), t, encoder_hidden_states=embeds[text].repeat_interleave(frames, 0)).sample
        loss = torch.nn.functional.mse_loss(pred, scheduler.get_velocity(x0, noise, t))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            decay = min(u.ema_decay, (1 + step) / (10 + step))
            for pe, p in zip(ema.parameters(), unet.parameters()):
                pe.lerp_(p, 1 - decay)
        step += 1
        if step % 10 == 0:
            _log(work, f"unet step {step} loss {loss.item():.4f} lr {lr:.2e}")
        if step % cfg.checkpoint_every == 0 or step == u.steps:
            _save_state(path, {"model": unet.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(), "step": step})


# -- stage 4: the diffusers folder ----------------------------------------------------------------------------
def assemble(cfg: UNetModelConfig, work: Path, out: Path, use_ema: bool = True) -> None:
    """Write the AnimateDiffPipeline folder (safetensors) from the checkpoints: into a temp folder, then renamed."""
    from diffusers import AnimateDiffPipeline

    meta = json.loads((work / "latents.json").read_text())
    vae = _vae(cfg, meta["scaling_factor"])
    decoder_path = work / "vae_decoder_state.pt"  # the decoder stage keeps the encoder the latents came from
    vae.load_state_dict(_load_state(decoder_path if decoder_path.exists() else work / "vae_state.pt")["model"])
    unet = _unet(cfg)
    state = _load_state(work / "unet_state.pt")
    unet.load_state_dict(state["ema" if use_ema else "model"])
    pipe = AnimateDiffPipeline(vae=vae.eval(), text_encoder=_text_encoder(cfg), tokenizer=build_tokenizer(TEXT_TOKENS),
                               unet=unet.eval(), motion_adapter=None, scheduler=sampling_scheduler())
    save_pretrained_folder_atomic(pipe, out)
    _log(work, f"wrote {out} (unet step {state['step']}, ema={use_ema})")


def run(config: str | Path | None, work: str | Path, out: str | Path, stages: tuple[str, ...] = STAGES) -> None:
    """Run the named stages in order (each resumes from ``work``)."""
    cfg, work = start_stages(stages, STAGES, load_config, config, work)
    run_stages(stages, work, {
        "vae": lambda: train_vae(cfg, work),
        "latents": lambda: encode_latents(cfg, work),
        "unet": lambda: train_unet(cfg, work),
        "decoder": lambda: train_vae(cfg, work, decoder_only=True),
        "assemble": lambda: assemble(cfg, work, Path(out)),
    })


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m vidattn.pipelines.unet_video_model_pretrain", description=__doc__)
    p.add_argument("--config", default="configs/unet_video_model.yaml")
    p.add_argument("--work", default="outputs/unet_pretrain", help="checkpoints and log (resumable)")
    p.add_argument("--out", default="src/vidattn/assets/unet_video_model")
    p.add_argument("--stages", default=",".join(STAGES))
    args = p.parse_args(argv)
    run(args.config, args.work, args.out, tuple(args.stages.split(",")))


if __name__ == "__main__":
    main()
