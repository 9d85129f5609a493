"""The embedded causal default model: the default model with its transformer fine-tuned for block-causal streaming.

Only the transformer is shipped (``assets/default_model_causal/``); the VAE, text encoder and tokenizer are the
default model's. ``load_causal_pipeline()`` returns a :class:`StreamingWanPipeline` that streams coloured shapes
64x64, 3 latent frames (12 video frames) per chunk, for as many chunks as asked.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import WanTransformer3DModel

from .default_model import load_default_pipeline
from .streaming import StreamingWanPipeline

# How the shipped weights stream best (docs/streaming.md): the VAE restarts its cache every chunk after 2 latents
# of warm-up, since the tiny VAE was trained on 17-frame clips and drifts in colour over a long stream.
CAUSAL_DECODE_CONTEXT = 2
CAUSAL_HEIGHT = CAUSAL_WIDTH = 64
CAUSAL_FRAMES_PER_CHUNK = 3


def causal_model_path() -> str:
    """The folder of the fine-tuned causal transformer inside the package (config.json + safetensors + causal.json)."""
    return str(Path(__file__).resolve().parent.parent / "assets" / "default_model_causal")


def causal_training_info() -> dict:
    """How the shipped causal transformer was trained (``causal.json``: step, chunks, modes, schedule, data)."""
    return json.loads((Path(causal_model_path()) / "causal.json").read_text())


def load_causal_pipeline(torch_dtype: torch.dtype = torch.float32) -> StreamingWanPipeline:
    """The default model (VAE, text encoder, tokenizer) with the causal transformer, as a streaming pipeline; offline."""
    path = Path(causal_model_path())
    if not (path / "diffusion_pytorch_model.safetensors").is_file():
        raise FileNotFoundError(f"the causal default model is missing from {path}; reinstall vidattn or run "
                                "python -m vidattn.pipelines.default_model_causal_train --config configs/default_model_causal.yaml")
    base = load_default_pipeline(torch_dtype)
    dtype = {} if torch_dtype == torch.float32 else {"torch_dtype": torch_dtype}  # as load_default_pipeline
    transformer = WanTransformer3DModel.from_pretrained(str(path), local_files_only=True, **dtype).eval()
    pipe = StreamingWanPipeline.from_pipe(base, transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    return pipe


__all__ = ["CAUSAL_DECODE_CONTEXT", "causal_model_path", "causal_training_info", "load_causal_pipeline"]
