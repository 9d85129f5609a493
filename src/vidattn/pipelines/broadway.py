"""BroadWay pipelines: an AnimateDiffPipeline subclass that applies BroadWay per call, and a generic runner.

The runner works with any UNet video pipeline (AnimateDiff and its siblings, TextToVideoSD) and reports the
frame-difference motion energy, so a run with and without BroadWay on the same seed can be compared.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, replace

import numpy as np
import torch
from diffusers import AnimateDiffPipeline, AutoencoderKL, DDIMScheduler, DiffusionPipeline, UNet3DConditionModel, UNetMotionModel
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace
from transformers import CLIPTextConfig, CLIPTextModel, PreTrainedTokenizerFast

from ..metrics.motion import batch_frame_difference_energy
from .broadway_guidance import BroadWayConfig, BroadWayController, apply_broadway, remove_broadway

WORDS = "a an the red green blue yellow white black circle square triangle moving left right up down on background".split()


def _cfg_from_call(pipe, config: BroadWayConfig, call_kwargs: dict) -> BroadWayConfig:
    """Fix ``cond_half`` from the call's guidance scale (CFG iff > 1) when the config leaves it to detection."""
    if config.cond_half is not None:
        return config
    parameter = inspect.signature(pipe.__call__).parameters.get("guidance_scale")
    guidance = call_kwargs.get("guidance_scale", parameter.default if parameter is not None else None)
    return config if guidance is None else replace(config, cond_half=float(guidance) > 1.0)


class BroadWayAnimateDiffPipeline(AnimateDiffPipeline):
    """AnimateDiffPipeline that installs BroadWay on its UNet for the duration of each call, then restores it.

    Components are shared with the source pipeline (``from_pipe``), which stays stock between calls.
    """

    broadway: BroadWayConfig = BroadWayConfig.animatediff()
    broadway_controller: BroadWayController | None = None

    @classmethod
    def from_pipe(cls, pipeline, broadway: BroadWayConfig | None = None, **kwargs) -> "BroadWayAnimateDiffPipeline":
        """Build from an existing AnimateDiff pipeline (no copies); ``broadway`` defaults to the AnimateDiff preset."""
        pipe = super().from_pipe(pipeline, **kwargs)
        pipe.broadway = broadway or BroadWayConfig.animatediff()
        if not isinstance(pipe.broadway, BroadWayConfig):
            raise ValueError(f"broadway must be a BroadWayConfig, got {type(broadway).__name__}")
        return pipe

    def __call__(self, *args, **kwargs):
        frames = kwargs.get("num_frames", inspect.signature(AnimateDiffPipeline.__call__).parameters["num_frames"].default)
        self.broadway.check_frames(int(frames))
        config = _cfg_from_call(self, self.broadway, kwargs)
        self.broadway_controller = apply_broadway(self.unet, config, scheduler=self.scheduler)
        try:
            return super().__call__(*args, **kwargs)
        finally:
            remove_broadway(self.unet)


@dataclass
class BroadWayRun:
    """Frames (B, F, H, W, C) float in [0, 1], their per-video motion energy, and the controller (None if off)."""

    frames: np.ndarray
    motion: list[float]
    controller: BroadWayController | None


def run_broadway_generation(
    pipe, prompt: str | list[str], config: BroadWayConfig | None = None, *, enabled: bool = True, **call_kwargs
) -> BroadWayRun:
    """Generate with BroadWay on ``pipe.unet`` (or stock if ``enabled`` is False) and measure motion; BroadWay is removed after."""
    config = config or BroadWayConfig.animatediff()
    call_kwargs = {"output_type": "np", **call_kwargs}
    controller = None
    if enabled:
        controller = apply_broadway(pipe.unet, _cfg_from_call(pipe, config, call_kwargs), scheduler=pipe.scheduler)
    try:
        output = pipe(prompt=prompt, **call_kwargs)
    finally:
        if enabled:
            remove_broadway(pipe.unet)
    frames = np.asarray(output.frames)
    if frames.ndim == 4:  # TextToVideoSD returns one (F, H, W, C) video per prompt as a list
        frames = frames[None]
    return BroadWayRun(frames=frames, motion=batch_frame_difference_energy(frames), controller=controller)


def build_tokenizer(max_length: int = 8) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over a small fixed vocabulary, built in code (CLIP-style ids: pad 0, bos 1, eos 2)."""
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, **{w: i + 4 for i, w in enumerate(WORDS)}}
    model = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    model.pre_tokenizer = Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=model, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>",
        model_max_length=max_length,
    )


def build_tiny_animatediff_pipeline(seed: int = 0) -> AnimateDiffPipeline:
    """A random-weight AnimateDiffPipeline (UNetMotionModel with 4 levels, 2x VAE, tiny CLIP), offline and seeded.

    Its videos are noise-like; it exists to run BroadWay end to end without a download (16x16 px -> 8x8 latent).
    """
    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    text_encoder = CLIPTextModel(
        CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                       num_attention_heads=2, max_position_embeddings=tokenizer.model_max_length,
                       pad_token_id=0, bos_token_id=1, eos_token_id=2)
    )
    unet = UNetMotionModel(
        block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=4, cross_attention_dim=16,
        num_attention_heads=2, motion_num_attention_heads=2, motion_max_seq_length=32, sample_size=8,
    )
    vae = AutoencoderKL(
        block_out_channels=(8, 8), down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4, norm_num_groups=4, layers_per_block=1, sample_size=16,
    )
    scheduler = DDIMScheduler(beta_schedule="linear", steps_offset=1, clip_sample=False, timestep_spacing="linspace")
    pipe = AnimateDiffPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, motion_adapter=None, scheduler=scheduler
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_broadway_pipeline(model: str | None = None):
    """A UNet video pipeline from a diffusers folder (AnimateDiff / TextToVideoSD), or the tiny offline AnimateDiff."""
    if not model:
        return build_tiny_animatediff_pipeline()
    pipe = DiffusionPipeline.from_pretrained(model)
    if not isinstance(getattr(pipe, "unet", None), (UNetMotionModel, UNet3DConditionModel)):
        raise ValueError(
            f"model must hold a UNetMotionModel (AnimateDiff) or UNet3DConditionModel (TextToVideoSD) unet; "
            f"{model!r} loaded {type(pipe).__name__}"
        )
    return pipe
