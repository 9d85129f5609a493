"""The embedded UNet video model: a tiny trained AnimateDiff pipeline (``UNetMotionModel``), offline.

It exists so that UNet-only methods (BroadWay) can be measured on a model that has learnt something: coloured
shapes moving on black, 16 frames of 32x32, trained on the CPU by :mod:`vidattn.pipelines.unet_video_model_pretrain`.
``load_unet_video_pipeline()`` loads the shipped weights; the ``build_*`` functions make the (untrained) parts.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AnimateDiffPipeline, AutoencoderKL, DDIMScheduler, DDPMScheduler, UNetMotionModel
from transformers import CLIPTextConfig, CLIPTextModel

from .broadway import build_tokenizer

# What the shipped weights were trained for (configs/unet_video_model.yaml): generate at these settings.
UNET_FRAMES, UNET_HEIGHT, UNET_WIDTH = 16, 32, 32
UNET_STEPS, UNET_GUIDANCE = 20, 4.0  # CFG 4: direction 0.45 -> 0.65 at guidance 1 -> 4 (step-700 checkpoint)
TEXT_TOKENS = 16  # every prompt is padded to this many word tokens (the tokenizer's model_max_length)

# The noise schedule of training (DDPM, v-prediction) and sampling (DDIM with trailing spacing: the first step is t=999).
SCHEDULE = dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02, prediction_type="v_prediction")


def build_text_encoder(hidden: int = 32, layers: int = 2, heads: int = 2, seed: int = 0) -> CLIPTextModel:
    """A random (seeded), frozen CLIP text encoder over :func:`build_tokenizer`'s word vocabulary."""
    torch.manual_seed(seed)
    tokenizer = build_tokenizer(TEXT_TOKENS)
    return CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=heads, max_position_embeddings=TEXT_TOKENS, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )).eval().requires_grad_(False)


def build_vae(block_out_channels: tuple[int, ...] = (16, 32, 32), latent_channels: int = 4, scaling_factor: float = 1.0,
              sample_size: int = UNET_HEIGHT) -> AutoencoderKL:
    """An image VAE with ``2 ** (len(block_out_channels) - 1)``x spatial downsampling (4x: 32x32 frames -> 8x8 latents)."""
    n = len(block_out_channels)
    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(block_out_channels), layers_per_block=1, latent_channels=latent_channels,
        norm_num_groups=8, sample_size=sample_size, scaling_factor=scaling_factor,
    )


def build_unet(block_out_channels: tuple[int, ...] = (16, 32, 32, 32), cross_attention_dim: int = 32, heads: int = 2,
               latent_channels: int = 4, sample_size: int = 8, seed: int = 0) -> UNetMotionModel:
    """A 4-level ``UNetMotionModel`` (AnimateDiff's layout: cross-attention + motion modules; up_blocks.1-3 are BroadWay's)."""
    torch.manual_seed(seed)
    return UNetMotionModel(
        sample_size=sample_size, in_channels=latent_channels, out_channels=latent_channels,
        block_out_channels=tuple(block_out_channels), layers_per_block=1, norm_num_groups=8,
        cross_attention_dim=cross_attention_dim, num_attention_heads=heads, motion_num_attention_heads=heads,
        motion_max_seq_length=32,
    )


def training_scheduler() -> DDPMScheduler:
    """The DDPM schedule the UNet was trained on (noise and velocity targets)."""
    return DDPMScheduler(**SCHEDULE, clip_sample=False)


def sampling_scheduler() -> DDIMScheduler:
    """DDIM on the same betas, trailing timesteps (start at t=999, where the schedule's SNR is ~4e-5)."""
    return DDIMScheduler(**SCHEDULE, clip_sample=False, set_alpha_to_one=False, steps_offset=0, timestep_spacing="trailing")


def unet_video_model_path() -> str:
    """The folder of the trained UNet video model inside the package (diffusers format, safetensors)."""
    return str(Path(__file__).resolve().parent.parent / "assets" / "unet_video_model")


def load_unet_video_pipeline() -> AnimateDiffPipeline:
    """``AnimateDiffPipeline.from_pretrained(unet_video_model_path())``, offline, progress bar off."""
    path = Path(unet_video_model_path())
    if not (path / "model_index.json").is_file():
        raise FileNotFoundError(f"the trained UNet video model is missing from {path}; reinstall vidattn or run "
                                "python -m vidattn.pipelines.unet_video_model_pretrain --config configs/unet_video_model.yaml")
    pipe = AnimateDiffPipeline.from_pretrained(str(path), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe
