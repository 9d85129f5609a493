"""Generation helpers shared by the `demo` and `generate` commands: load a pipeline, time denoising, write mp4."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch


def load_pipeline(model: str | None):
    """A diffusers Wan pipeline from ``model`` (a folder), or the embedded default model."""
    if model:
        from diffusers import WanPipeline

        return WanPipeline.from_pretrained(model)
    from ..pipelines.default_model import build_default_pipeline

    return build_default_pipeline()


def generate_timed(pipe, prompt: str, frames: int, height: int, width: int, steps: int, guidance: float, seed: int) -> tuple[np.ndarray, float]:
    """Frames (F, H, W, 3) in [0, 1] and the seconds spent denoising (what attention changes; the VAE decode is excluded)."""
    start = time.perf_counter()
    latents = pipe(
        prompt, num_frames=frames, height=height, width=width, num_inference_steps=steps,
        guidance_scale=guidance, output_type="latent", generator=torch.Generator().manual_seed(seed),
    ).frames
    seconds = time.perf_counter() - start
    with torch.no_grad():
        mean = torch.tensor(pipe.vae.config.latents_mean).view(1, -1, 1, 1, 1)
        std = torch.tensor(pipe.vae.config.latents_std).view(1, -1, 1, 1, 1)
        video = pipe.vae.decode(latents.to(pipe.vae.dtype) * std + mean, return_dict=False)[0]
    return pipe.video_processor.postprocess_video(video, output_type="np")[0], seconds


def write_mp4(frames: np.ndarray, path: Path | str, fps: int = 8) -> None:
    """Write (F, H, W, 3) frames in [0, 1] (or uint8) to an mp4 file."""
    import imageio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if frames.dtype != np.uint8:
        frames = (np.clip(frames, 0, 1) * 255).round().astype(np.uint8)
    imageio.mimwrite(path, frames, fps=fps, macro_block_size=1)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio of two videos in [0, 1]."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)
