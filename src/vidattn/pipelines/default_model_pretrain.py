"""From-scratch CPU training of the embedded default model on the shapes dataset: VAE, then transformer.

Stages (each resumes from its checkpoint in ``--work``): ``vae`` (reconstruction), ``latents`` (encode the
dataset once, set the VAE's latent mean/std), ``transformer`` (flow matching), ``decoder`` (more decoder
training with the encoder frozen, so the latents stay valid; can run beside ``transformer``), ``assemble``.
Reproduce the committed weights with
``python -m vidattn.pipelines.default_model_pretrain --config configs/default_model.yaml --work outputs/pretrain --out src/vidattn/assets/default_model``.
``--from-shipped --stages decoder,assemble`` fine-tunes only the shipped VAE's decoder and rewrites only its folder.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import io
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml
from safetensors.torch import load_file, save_file

from ..atomic import save_pretrained_atomic, save_pretrained_folder_atomic, write_bytes_atomic
from ..checks import check_choice
from ..data.shapes import COLORS, ShapesDataset
from ..latents import normalise_latents
from ..flow_matching import flow_matching_loss
from .default_model import build_tokenizer, default_model_path

STAGES = ("vae", "latents", "transformer", "decoder", "assemble")


@dataclass
class VAESettings:
    base_dim: int = 8
    z_dim: int = 8
    dim_mult: list = field(default_factory=lambda: [1, 2, 2, 2])
    num_res_blocks: int = 1
    steps: int = 1200
    batch_size: int = 6
    clip_frames: int = 9
    crop: int = 32
    learning_rate: float = 2e-3
    kl_weight: float = 1e-6
    foreground_weight: float = 8.0
    latent_hint_weight: float = 1.0
    decoder_steps: int = 0
    decoder_learning_rate: float = 1e-3
    decoder_clip_frames: int | None = None  # clip length of the decoder stage (None: clip_frames); 17 = whole clips
    decoder_sizes: list | None = None  # frame heights the decoder stage cycles through, step by step (None: height)
    decoder_anchor_weight: float = 0.0  # at the trained size, keep the starting decoder's output on noisy latents
    decoder_anchor_noise: float = 0.5   # ... latents + this x per-channel std x N(0, 1) (off the clean-clip manifold)
    crop_on_shape: bool = True     # centre each crop near the shape (every crop shows one) instead of anywhere
    hint_foreground_weight: float = 8.0  # extra latent-hint weight on cells the shape covers (colour must survive)
    warmup: int = 50


@dataclass
class TransformerSettings:
    num_layers: int = 4
    num_attention_heads: int = 2
    attention_head_dim: int = 32
    ffn_dim: int = 256
    freq_dim: int = 32
    rope_max_seq_len: int = 256
    num_videos: int = 480
    position_jitter: float = 0.2
    steps: int = 4500
    batch_size: int = 16
    learning_rate: float = 1e-3
    shift: float = 3.0
    caption_dropout: float = 0.1
    ema_decay: float = 0.995
    max_sequence_length: int = 16  # text tokens the prompts are padded to; generate with the same value
    warmup: int = 100


@dataclass
class TextEncoderSettings:
    d_model: int = 32
    d_kv: int = 8
    d_ff: int = 64
    num_layers: int = 2
    num_heads: int = 4


@dataclass
class PretrainConfig:
    """Everything the default model's training needs; read from YAML with unknown keys rejected."""

    seed: int = 0
    threads: int = 1
    frames: int = 17
    height: int = 64
    width: int = 64
    colors: list = field(default_factory=lambda: ["red", "green", "blue", "yellow", "white"])
    backgrounds: list = field(default_factory=lambda: ["black"])
    vae: VAESettings = field(default_factory=VAESettings)
    transformer: TransformerSettings = field(default_factory=TransformerSettings)
    text_encoder: TextEncoderSettings = field(default_factory=TextEncoderSettings)
    scheduler_shift: float = 3.0
    checkpoint_every: int = 50

    def __post_init__(self) -> None:
        if (self.frames - 1) % 4:
            raise ValueError(f"frames must be 4k + 1 (the Wan VAE's 4x temporal compression), got {self.frames}")
        if self.height % 8 or self.width % 8:
            raise ValueError(f"height and width must be multiples of 8, got {self.height}x{self.width}")
        for size in self.vae.decoder_sizes or []:
            if not isinstance(size, int) or size % self.height:
                raise ValueError(f"vae.decoder_sizes must be whole multiples of height {self.height} (the width scales "
                                 f"alike), got {self.vae.decoder_sizes!r}")


def _build(cls, data: dict, where: str):
    allowed = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(allowed)
    if unknown:
        raise ValueError(f"unknown key(s) {sorted(unknown)} in {where}; allowed: {sorted(allowed)}")
    nested = {"vae": VAESettings, "transformer": TransformerSettings, "text_encoder": TextEncoderSettings}
    kwargs = {k: _build(nested[k], v, f"{where}.{k}") if k in nested and cls is PretrainConfig else v for k, v in data.items()}
    return cls(**kwargs)


def load_config(path: str | Path | None) -> PretrainConfig:
    """The training config from a YAML file (None: the defaults, equal to configs/default_model.yaml)."""
    if path is None:
        return PretrainConfig()
    return _build(PretrainConfig, yaml.safe_load(Path(path).read_text()) or {}, str(path))


# -- the models ------------------------------------------------------------------------------------------
def build_vae(cfg: PretrainConfig, latents_mean=None, latents_std=None):
    from diffusers import AutoencoderKLWan

    z = cfg.vae.z_dim
    return AutoencoderKLWan(
        base_dim=cfg.vae.base_dim, z_dim=z, dim_mult=list(cfg.vae.dim_mult), num_res_blocks=cfg.vae.num_res_blocks,
        latents_mean=list(latents_mean or [0.0] * z), latents_std=list(latents_std or [1.0] * z),
    )


def build_text_encoder(cfg: PretrainConfig, tokenizer):
    from transformers import UMT5Config, UMT5EncoderModel

    t = cfg.text_encoder
    torch.manual_seed(cfg.seed)
    return UMT5EncoderModel(UMT5Config(
        vocab_size=len(tokenizer), d_model=t.d_model, d_kv=t.d_kv, d_ff=t.d_ff, num_layers=t.num_layers,
        num_heads=t.num_heads, relative_attention_num_buckets=8,
    )).eval()


def build_transformer(cfg: PretrainConfig):
    """The Wan transformer, with the biases that would turn WanPipeline's zero text padding into signal set to 0."""
    from diffusers import WanTransformer3DModel

    t = cfg.transformer
    torch.manual_seed(cfg.seed)
    transformer = WanTransformer3DModel(
        patch_size=(1, 1, 1), num_attention_heads=t.num_attention_heads, attention_head_dim=t.attention_head_dim,
        in_channels=cfg.vae.z_dim, out_channels=cfg.vae.z_dim, text_dim=cfg.text_encoder.d_model, freq_dim=t.freq_dim,
        ffn_dim=t.ffn_dim, num_layers=t.num_layers, rope_max_seq_len=t.rope_max_seq_len,
    )
    for bias in padding_biases(transformer):
        torch.nn.init.zeros_(bias)
    return transformer


def padding_biases(transformer) -> list[torch.nn.Parameter]:
    """Text-projection and cross-attention key/value biases. WanPipeline pads every prompt with zero vectors to
    512 tokens and cross-attention has no mask; with these biases at 0 (and kept there) a pad token has key 0 and
    value 0, so the ~10 real tokens are not drowned by 500 identical pad tokens and the text is learnt quickly."""
    proj = transformer.condition_embedder.text_embedder
    biases = [proj.linear_1.bias, proj.linear_2.bias]
    for block in transformer.blocks:
        biases += [block.attn2.to_k.bias, block.attn2.to_v.bias]
    return biases


def to_pixels(videos: np.ndarray) -> torch.Tensor:
    """(B, F, H, W, 3) in [0, 1] -> (B, 3, F, H, W) in [-1, 1], the VAE's input."""
    return torch.from_numpy(np.ascontiguousarray(videos)).permute(0, 4, 1, 2, 3).float() * 2 - 1


def _dataset(cfg: PretrainConfig, num: int, seed: int, frames: int | None = None, position_jitter: float = 1.0,
             scale: int = 1) -> ShapesDataset:
    """The shapes dataset at ``scale`` times the config's frame size (shape radius and travel scale with it)."""
    return ShapesDataset(num, frames=frames or cfg.frames, height=scale * cfg.height, width=scale * cfg.width, seed=seed,
                         colors=tuple(cfg.colors), backgrounds=tuple(cfg.backgrounds), position_jitter=position_jitter)


def _log(work: Path, message: str) -> None:
    line = f"{time.strftime('%H:%M:%S')} {message}"
    print(line, flush=True)
    with open(work / "log.txt", "a") as f:
        f.write(line + "\n")


def _save_state(path: Path, state: dict) -> None:
    """A training checkpoint: torch.save through :func:`vidattn.atomic.write_bytes_atomic` (a crash leaves the previous one)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_bytes_atomic(path, buffer.getvalue())


def _load_state(path: Path) -> dict:
    """A checkpoint written by :func:`_save_state` (this project's own work folder: optimizer states hold numpy
    scalars, so not tensors-only), checked: a file that does not load, or whose weights are not finite, is named."""
    try:
        state = torch.load(path, weights_only=False)
    except Exception as exc:
        raise RuntimeError(f"training checkpoint {path} does not load ({type(exc).__name__}: {exc}); delete it to restart that stage") from exc
    for part in ("model", "ema"):
        bad = [name for name, t in state.get(part, {}).items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
        if bad:
            raise RuntimeError(f"training checkpoint {path} has non-finite {part} weights ({', '.join(bad[:3])}); delete it to restart that stage")
    return state


def _resume(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, ema: torch.nn.Module | None = None) -> int:
    """Model, EMA and optimizer from the checkpoint at ``path`` if there is one; the step to continue from (0: none)."""
    if not path.exists():
        return 0
    state = _load_state(path)
    model.load_state_dict(state["model"])
    if ema is not None:
        ema.load_state_dict(state["ema"])
    opt.load_state_dict(state["opt"])
    return state["step"]


# -- stage 1: VAE ----------------------------------------------------------------------------------------
def latent_hint(x: torch.Tensor, foreground: torch.Tensor) -> torch.Tensor:
    """(B, 4, F', H/8, W/8): mean RGB and shape coverage per latent cell (frame 0 alone, then groups of 4).

    The first four latent channels are pulled towards it; without this hint a tiny VAE sits for hundreds of
    steps on the plateau where it draws a constant frame.
    """
    v = torch.cat([x, foreground.float() * 2 - 1], dim=1)
    b, c, f, h, w = v.shape
    chunks = torch.cat([v[:, :, :1], v[:, :, 1:].reshape(b, c, (f - 1) // 4, 4, h, w).mean(3)], dim=2)
    return torch.nn.functional.avg_pool3d(chunks, (1, 8, 8))


def shipped_vae_path() -> Path:
    """The VAE folder of the embedded default model (the start of ``--from-shipped``)."""
    return Path(default_model_path()) / "vae"


def train_vae(cfg: PretrainConfig, work: Path, decoder_only: bool = False, init: Path | None = None) -> None:
    """Reconstruction (foreground-weighted MSE + tiny KL) of the posterior mean on random crops of short clips.

    ``decoder_only``: continue from the ``vae`` stage (or from the VAE folder ``init``) with the encoder frozen
    (its latents stay valid), cycling through the frame sizes ``decoder_sizes`` (crops scale with the size).
    """
    v = cfg.vae
    vae = build_vae(cfg)
    total, base_lr = (v.decoder_steps, v.decoder_learning_rate) if decoder_only else (v.steps, v.learning_rate)
    if decoder_only:
        start = load_file(str(init / "diffusion_pytorch_model.safetensors")) if init else _load_state(work / "vae_state.pt")["model"]
        vae.load_state_dict(start)
        for module in (vae.encoder, vae.quant_conv):
            module.requires_grad_(False)
    teacher = copy.deepcopy(vae).eval().requires_grad_(False) if decoder_only and v.decoder_anchor_weight else None
    opt = torch.optim.AdamW([p for p in vae.parameters() if p.requires_grad], lr=base_lr, weight_decay=0.0)
    state_path = work / ("vae_decoder_state.pt" if decoder_only else "vae_state.pt")
    step = _resume(state_path, vae, opt)
    sizes = (v.decoder_sizes or [cfg.height]) if decoder_only else [cfg.height]
    datasets = {size: _dataset(cfg, 10**6, cfg.seed + (3 if decoder_only else 1), scale=size // cfg.height) for size in sizes}
    # The causal VAE decodes chunk by chunk through a cache: clips of 9 frames never train the third chunk onwards,
    # and it drifted in colour there (red decoded yellow in frames 13-16); the decoder stage sees whole clips.
    clip_frames = v.decoder_clip_frames if decoder_only and v.decoder_clip_frames else v.clip_frames
    rng = np.random.default_rng([cfg.seed, 1, step] + ([3] if init else []))
    vae.train()
    while step < total:
        lr = base_lr * min(1.0, (step + 1) / max(v.warmup, 1)) * 0.5 * (1 + np.cos(np.pi * step / total))
        for group in opt.param_groups:
            group["lr"] = lr
        # a step per size in turn: FreeSwim decodes at 2x the trained size, where the shape is twice as large
        size = sizes[step % len(sizes)]
        data, scale = datasets[size], size // cfg.height
        crop, height, width = v.crop * scale, cfg.height * scale, cfg.width * scale
        clips, backgrounds = [], []
        for _ in range(v.batch_size):
            sample = data[int(rng.integers(len(data)))]
            video = sample.video
            backgrounds.append(COLORS[sample.background])
            f0 = int(rng.integers(cfg.frames - clip_frames + 1))
            y0, x0 = (int(rng.integers(s - crop + 1)) for s in (height, width))
            if v.crop_on_shape:
                mid = video[f0 + clip_frames // 2]
                ys, xs = np.nonzero(np.abs(mid - np.asarray(COLORS[sample.background])).max(-1) > 0.1)
                if len(xs):
                    y0, x0 = (int(np.clip(round(c) - crop // 2 + rng.integers(-crop // 4, crop // 4 + 1), 0, s - crop))
                              for c, s in ((ys.mean(), height), (xs.mean(), width)))
            clips.append(video[f0 : f0 + clip_frames, y0 : y0 + crop, x0 : x0 + crop])
        x = to_pixels(np.stack(clips))
        posterior = vae.encode(x).latent_dist
        latents = posterior.mode()  # a deterministic autoencoder: the mean is the latent
        recon = vae.decode(latents).sample
        background = torch.tensor(backgrounds).view(-1, 3, 1, 1, 1) * 2 - 1
        foreground = (x - background).abs().amax(1, keepdim=True) > 0.1
        weight = 1 + v.foreground_weight * foreground.float()
        rec = (weight * (recon - x) ** 2).mean()
        kl = posterior.kl().mean() / x[0].numel()
        loss = rec + v.kl_weight * kl
        if teacher is not None and size == cfg.height:
            # generated latents are not clean encodings: keep the starting decoder's (right) colours near them
            noisy = latents + v.decoder_anchor_noise * latents.std(dim=(0, 2, 3, 4), keepdim=True) * torch.randn_like(latents)
            with torch.no_grad():
                target = teacher.decode(noisy).sample
            loss = loss + v.decoder_anchor_weight * ((vae.decode(noisy).sample - target) ** 2).mean()
        if not decoder_only:
            hint = latent_hint(x, foreground)
            cell_weight = 1 + v.hint_foreground_weight * (hint[:, 3:4] + 1) / 2  # coverage in [0, 1]
            loss = loss + v.latent_hint_weight * (cell_weight * (latents[:, :4] - hint) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        step += 1
        if step % 10 == 0:
            _log(work, f"{'decoder' if decoder_only else 'vae'} step {step} size {size} rec {rec.item():.4f} total {loss.item():.4f} lr {lr:.2e}")
        if step % cfg.checkpoint_every == 0 or step == total:
            _save_state(state_path, {"model": vae.state_dict(), "opt": opt.state_dict(), "step": step})


# -- stage 2: latents --------------------------------------------------------------------------------------
def encode_latents(cfg: PretrainConfig, work: Path) -> None:
    """Encode ``num_videos`` dataset videos (posterior mode), store per-channel stats and normalised latents."""
    vae = build_vae(cfg)
    vae.load_state_dict(_load_state(work / "vae_state.pt")["model"])
    vae.eval()
    data = _dataset(cfg, cfg.transformer.num_videos, cfg.seed + 2, position_jitter=cfg.transformer.position_jitter)
    latents, captions = [], []
    with torch.no_grad():
        for start in range(0, len(data), 16):
            samples = [data[i] for i in range(start, min(start + 16, len(data)))]
            latents.append(vae.encode(to_pixels(np.stack([s.video for s in samples]))).latent_dist.mode())
            captions += [s.caption for s in samples]
            _log(work, f"encoded {len(captions)}/{len(data)}")
    z = torch.cat(latents)
    mean = z.mean(dim=(0, 2, 3, 4))
    std = z.std(dim=(0, 2, 3, 4))
    z = normalise_latents(z, mean, std)
    save_file({"latents": z.contiguous()}, str(work / "latents.safetensors"))
    (work / "latents.json").write_text(json.dumps({"captions": captions, "latents_mean": mean.tolist(), "latents_std": std.tolist()}))


# -- stage 3: transformer ----------------------------------------------------------------------------------
def _text_pipeline(cfg: PretrainConfig):
    from diffusers import WanPipeline

    tokenizer = build_tokenizer()
    return WanPipeline(tokenizer=tokenizer, text_encoder=build_text_encoder(cfg, tokenizer), vae=None, transformer=None, scheduler=None)


def train_transformer(cfg: PretrainConfig, work: Path) -> None:
    """Flow matching (the LoRA trainer's objective) on the cached latents with an EMA copy; resumable."""
    t = cfg.transformer
    z = load_file(str(work / "latents.safetensors"))["latents"]
    meta = json.loads((work / "latents.json").read_text())
    pipe = _text_pipeline(cfg)
    unique = sorted(set(meta["captions"])) + [""]
    with torch.no_grad():
        # WanPipeline.__call__ pads to max_sequence_length (default 512): generate with the value trained here
        embeds, _ = pipe.encode_prompt(unique, do_classifier_free_guidance=False, max_sequence_length=t.max_sequence_length, device="cpu")
    caption_index = torch.tensor([unique.index(c) for c in meta["captions"]])
    transformer = build_transformer(cfg)
    for bias in padding_biases(transformer):
        bias.requires_grad_(False)
    ema = copy.deepcopy(transformer).requires_grad_(False)
    opt = torch.optim.AdamW([p for p in transformer.parameters() if p.requires_grad], lr=t.learning_rate, weight_decay=0.01)
    state_path = work / "transformer_state.pt"
    step = _resume(state_path, transformer, opt, ema)
    generator = torch.Generator().manual_seed(cfg.seed * 1000 + step)
    transformer.train()
    warmup = t.warmup
    while step < t.steps:
        lr = t.learning_rate * min(1.0, (step + 1) / warmup) * 0.5 * (1 + np.cos(np.pi * step / t.steps))
        for group in opt.param_groups:
            group["lr"] = lr
        idx = torch.randint(len(z), (t.batch_size,), generator=generator)
        text = caption_index[idx].clone()
        text[torch.rand(t.batch_size, generator=generator) < t.caption_dropout] = len(unique) - 1
        loss = flow_matching_loss(transformer, z[idx], embeds[text], shift=t.shift, generator=generator)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(transformer.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            decay = min(t.ema_decay, (1 + step) / (10 + step))
            for pe, p in zip(ema.parameters(), transformer.parameters()):
                pe.lerp_(p, 1 - decay)
        step += 1
        if step % 10 == 0:
            _log(work, f"transformer step {step} loss {loss.item():.4f} lr {lr:.2e}")
        if step % cfg.checkpoint_every == 0 or step == t.steps:
            _save_state(state_path, {"model": transformer.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(), "step": step})


# -- stage 4: the diffusers folder --------------------------------------------------------------------------
def assemble(cfg: PretrainConfig, work: Path, out: Path, use_ema: bool = True) -> None:
    """Write the WanPipeline folder (safetensors weights) from the VAE and transformer checkpoints."""
    from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline

    meta = json.loads((work / "latents.json").read_text())
    vae = build_vae(cfg, meta["latents_mean"], meta["latents_std"])
    decoder_path = work / "vae_decoder_state.pt"  # the decoder stage keeps the encoder the latents came from
    vae.load_state_dict(_load_state(decoder_path if decoder_path.exists() else work / "vae_state.pt")["model"])
    transformer = build_transformer(cfg)
    state = _load_state(work / "transformer_state.pt")
    transformer.load_state_dict(state["ema" if use_ema else "model"])
    text = _text_pipeline(cfg)
    pipe = WanPipeline(tokenizer=text.tokenizer, text_encoder=text.text_encoder, vae=vae.eval(), transformer=transformer.eval(),
                       scheduler=FlowMatchEulerDiscreteScheduler(shift=cfg.scheduler_shift))
    save_pretrained_folder_atomic(pipe, out)
    _log(work, f"wrote {out} (transformer step {state['step']}, ema={use_ema})")


def write_vae(cfg: PretrainConfig, work: Path, out: Path, init: Path) -> None:
    """``--from-shipped`` assemble: only ``<out>/vae``, the decoder-stage weights with ``init``'s config (latent stats)."""
    from diffusers import AutoencoderKLWan

    vae = AutoencoderKLWan.from_config(AutoencoderKLWan.load_config(str(init)))  # from_config: no _name_or_path
    state = _load_state(work / "vae_decoder_state.pt")
    vae.load_state_dict(state["model"])
    target = out / "vae"
    save_pretrained_atomic(vae.eval(), target)
    _log(work, f"wrote {target} (decoder step {state['step']}, from {init})")


def start_stages(stages: tuple[str, ...], allowed: tuple[str, ...], load, config, work: str | Path):
    """The common start of a CPU training script: every stage name checked, the config loaded with ``load``, threads
    and seed set from it, the work folder made. Returns (cfg, work)."""
    for stage in stages:
        check_choice("stage", stage, allowed)
    cfg = load(config)
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    return cfg, work


def run_stages(stages: tuple[str, ...], work: Path, handlers: dict) -> None:
    """Each stage's handler in order (each resumes from ``work`` by itself), logged."""
    for stage in stages:
        _log(work, f"stage {stage}")
        handlers[stage]()


def run(config: str | Path | None, work: str | Path, out: str | Path, stages: tuple[str, ...] = STAGES,
        from_shipped: bool = False) -> None:
    """Run the named stages in order (each resumes from ``work``).

    ``from_shipped``: only ``decoder`` and ``assemble`` may run; the decoder stage starts from the shipped VAE
    (``shipped_vae_path()``) and assemble rewrites only ``<out>/vae``.
    """
    for stage in stages:
        check_choice("stage", stage, STAGES)
    if from_shipped and not set(stages) <= {"decoder", "assemble"}:
        raise ValueError(f"--from-shipped runs only the stages decoder and assemble, got {','.join(stages)}")
    cfg, work = start_stages(stages, STAGES, load_config, config, work)
    init = shipped_vae_path() if from_shipped else None
    if init is not None and not (work / "init_vae").exists():
        # a copy of the starting VAE: resuming or assembling later must not start from weights already overwritten
        shutil.copytree(init, work / "init_vae.tmp", dirs_exist_ok=True)
        (work / "init_vae.tmp").replace(work / "init_vae")
    init = work / "init_vae" if init is not None else None
    run_stages(stages, work, {
        "vae": lambda: train_vae(cfg, work),
        "latents": lambda: encode_latents(cfg, work),
        "transformer": lambda: train_transformer(cfg, work),
        "decoder": lambda: train_vae(cfg, work, decoder_only=True, init=init),
        "assemble": lambda: write_vae(cfg, work, Path(out), init) if init is not None else assemble(cfg, work, Path(out)),
    })


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m vidattn.pipelines.default_model_pretrain", description=__doc__)
    p.add_argument("--config", default="configs/default_model.yaml")
    p.add_argument("--work", default="outputs/pretrain", help="checkpoints and log (resumable)")
    p.add_argument("--out", default="src/vidattn/assets/default_model")
    p.add_argument("--stages", default=",".join(STAGES))
    p.add_argument("--from-shipped", action="store_true",
                   help="decoder stage from the shipped VAE (copied to <work>/init_vae); assemble writes only <out>/vae")
    args = p.parse_args(argv)
    run(args.config, args.work, args.out, tuple(args.stages.split(",")), from_shipped=args.from_shipped)


if __name__ == "__main__":
    main()
