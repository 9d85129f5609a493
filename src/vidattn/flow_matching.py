"""Rectified-flow (flow-matching) training objective for Wan-family transformers.

Matches diffusers' ``FlowMatchEulerDiscreteScheduler`` + ``WanPipeline``: x_s = (1 - s) x0 + s noise, the model
predicts v = noise - x0 at timestep s * 1000, and sampling steps x_next = x_s + (s_next - s) v.
"""

from __future__ import annotations

import torch

from .checks import check_number

NUM_TRAIN_TIMESTEPS = 1000


def shift_sigmas(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    """The scheduler's timestep shift s' = shift * s / (1 + (shift - 1) * s); shift 1 is the identity."""
    if not isinstance(shift, (int, float)) or shift <= 0:
        raise ValueError(f"shift must be a number > 0 (Wan uses 3.0-5.0), got {shift!r}")
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def unshift_sigma(sigma: float, shift: float) -> float:
    """The inverse of :func:`shift_sigmas` for one value: u with shift * u / (1 + (shift - 1) * u) = sigma."""
    return sigma / (shift - (shift - 1) * sigma)


def sample_sigmas(
    batch: int, shift: float, generator: torch.Generator | None = None, device="cpu", sigma_range: tuple[float, float] = (0.0, 1.0)
) -> torch.Tensor:
    """``batch`` noise levels drawn uniformly in (0, 1) and shifted like the sampler's schedule (float32).

    ``sigma_range`` keeps the shifted levels in ``[lo, hi)``, with the same distribution restricted there (a Wan 2.2
    expert trains only on its side of ``boundary_ratio``).
    """
    if not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be an int >= 1, got {batch!r}")
    check_number("shift", shift, 0, low_open=True, note="Wan uses 3.0-5.0")
    lo, hi = sigma_range
    if not 0 <= lo < hi <= 1:
        raise ValueError(f"sigma_range must be (lo, hi) with 0 <= lo < hi <= 1, got {sigma_range!r}")
    gen_device = generator.device if generator is not None else device
    u = torch.rand(batch, generator=generator, device=gen_device, dtype=torch.float32).to(device)
    u_lo, u_hi = unshift_sigma(lo, shift), unshift_sigma(hi, shift)
    u = (u_lo + (u_hi - u_lo) * u).clamp(1e-5, 1 - 1e-5)  # open interval: s = 0 carries no signal to learn from
    return shift_sigmas(u, shift)


def flow_matching_loss(
    transformer: torch.nn.Module,
    latents: torch.Tensor,
    text_embeds: torch.Tensor,
    *,
    shift: float = 5.0,
    generator: torch.Generator | None = None,
    sigmas: torch.Tensor | None = None,
    sigma_range: tuple[float, float] = (0.0, 1.0),
) -> torch.Tensor:
    """Mean squared error (fp32) between the transformer's velocity and noise - x0 at random noise levels.

    ``latents`` are normalised VAE latents (B, C, F, H, W); ``text_embeds`` the encoder states (B, L, D).
    ``sigmas`` (B,) fixes the noise levels; otherwise they are sampled with ``shift`` from ``generator`` in ``sigma_range``.
    """
    if latents.ndim != 5:
        raise ValueError(f"latents must be (B, C, F, H, W), got shape {tuple(latents.shape)}")
    if text_embeds.ndim != 3 or text_embeds.shape[0] != latents.shape[0]:
        raise ValueError(f"text_embeds must be (B, L, D) with B = {latents.shape[0]}, got shape {tuple(text_embeds.shape)}")
    batch, device = latents.shape[0], latents.device
    if sigmas is None:
        sigmas = sample_sigmas(batch, shift, generator, device, sigma_range)
    else:
        sigmas = torch.as_tensor(sigmas, dtype=torch.float32, device=device).reshape(-1)
        if sigmas.numel() != batch:
            raise ValueError(f"sigmas must hold one value per sample ({batch}), got {sigmas.numel()}")
    gen_device = generator.device if generator is not None else device
    noise = torch.randn(latents.shape, generator=generator, device=gen_device, dtype=torch.float32).to(device)
    x0 = latents.float()
    s = sigmas.float().view(-1, 1, 1, 1, 1)
    noisy = (1 - s) * x0 + s * noise
    target = noise - x0
    pred = transformer(
        hidden_states=noisy.to(latents.dtype),
        timestep=sigmas * NUM_TRAIN_TIMESTEPS,
        encoder_hidden_states=text_embeds,
        return_dict=False,
    )[0]
    return torch.nn.functional.mse_loss(pred.float(), target)
