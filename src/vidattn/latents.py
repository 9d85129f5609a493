"""Latent (de-)normalisation, written once: diffusers video VAEs decode ``z * latents_std + latents_mean``."""

from __future__ import annotations

from typing import Sequence

import torch

Stats = Sequence[float] | torch.Tensor


def latent_stats(vae) -> tuple[Stats, Stats]:
    """The per-channel ``(latents_mean, latents_std)`` a VAE's config stores (Wan, the default model)."""
    return vae.config.latents_mean, vae.config.latents_std


def _channel(stat: Stats, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(stat, dtype=like.dtype, device=like.device).view(1, -1, *[1] * (like.ndim - 2))


def normalise_latents(latents: torch.Tensor, mean: Stats, std: Stats) -> torch.Tensor:
    """``(latents - mean) / std`` per channel (dim 1): what a pipeline denoises, from what the VAE encodes."""
    return (latents - _channel(mean, latents)) / _channel(std, latents)


def denormalise_latents(latents: torch.Tensor, mean: Stats, std: Stats) -> torch.Tensor:
    """``latents * std + mean`` per channel (dim 1): what the VAE decodes, from what a pipeline denoised."""
    return latents * _channel(std, latents) + _channel(mean, latents)
