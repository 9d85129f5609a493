"""Helpers shared by the `demo` and `generate` commands: load a pipeline, generate one video timed, write mp4."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..atomic import replace_synced


def load_pipeline(model: str | None):
    """A diffusers Wan pipeline from ``model`` (a folder), or the embedded trained default model."""
    if model:
        from diffusers import WanPipeline

        from .checks import UsageError

        try:
            pipe = WanPipeline.from_pretrained(model)
        except Exception as error:  # diffusers' errors on a wrong folder are long and cryptic: one line, naming --model
            text = " ".join(str(error).split())[:300]
            raise UsageError(f"--model {model}: could not load a WanPipeline ({type(error).__name__}: {text})") from error
    else:
        from ..pipelines.default_model import load_default_pipeline

        pipe = load_default_pipeline()
    pipe.set_progress_bar_config(disable=False)
    return pipe


def generate_timed(
    pipe, prompt: str, frames: int, height: int, width: int, steps: int, guidance: float, seed: int, text_tokens: int
) -> tuple[np.ndarray, float]:
    """Frames (F, H, W, 3) in [0, 1] and the seconds spent denoising (what attention changes; the VAE decode is excluded)."""
    from ..evaluation import generate

    videos, seconds = generate(
        pipe, [prompt], seed, frames=frames, height=height, width=width, steps=steps, guidance=guidance, max_sequence_length=text_tokens
    )
    return videos[0], seconds


def write_mp4(frames: np.ndarray, path: Path | str, fps: int = 8) -> None:
    """Write (F, H, W, 3) frames in [0, 1] (or uint8) to an mp4 file, under a temporary name renamed into place."""
    import imageio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if frames.dtype != np.uint8:
        frames = (np.clip(frames, 0, 1) * 255).round().astype(np.uint8)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")  # the suffix tells imageio the container
    try:
        imageio.mimwrite(tmp, frames, fps=fps, macro_block_size=1)
        replace_synced(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)

