"""Streaming (autoregressive, chunk-by-chunk) text-to-video with a block-causal Wan student.

``StreamingWanPipeline.stream`` denoises ``frames_per_chunk`` latent frames at a time with the few-step
schedule, writes each finished chunk into the per-layer KV cache with a clean refresh pass, and yields decoded
frames as soon as a chunk is done. Attention is the rolling sink + window cache (``"window"``, Self-Forcing),
Hybrid Forcing's sparse window + linear state (``StreamingConfig``) or the full causal cache (``"dense"``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from diffusers import WanPipeline
from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d, unpatchify

from ..checks import check_choice, check_int, check_number
from ..atomic import replace_synced
from ..latents import denormalise_latents, latent_stats
from ..processors.streaming import StreamingConfig
from ..schedulers.few_step import FewStepSchedule
from .stream_state import StreamState, apply_streaming_attention, remove_streaming_attention


class CausalStreamDecoder:
    """Decodes latent chunks in order through Wan's causal VAE, carrying its temporal conv cache across chunks.

    ``context_latents=None``: one cache for the whole stream, so chunk-by-chunk decoding equals decoding all latents
    at once (the VAE decodes frame by frame with the same cache); memory stays bounded (the cache holds the last two
    frames of each causal conv). ``context_latents=k``: each chunk is decoded with a fresh cache after ``k`` latent
    frames of warm-up (the previous chunk's last ones; their frames are dropped): no longer exact, but a VAE trained
    on short clips does not drift over a long stream (the embedded model's turns red into green past ~30 frames).
    """

    def __init__(self, vae, context_latents: int | None = None) -> None:
        if context_latents is not None:
            check_int("context_latents", context_latents, 0)
        self.vae = vae
        self.context_latents = context_latents
        self.convs = sum(isinstance(m, WanCausalConv3d) for m in vae.decoder.modules())
        self.feat_cache: list = [None] * self.convs
        self.first = True
        self.history: torch.Tensor | None = None  # the last context_latents latents (windowed mode)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, z, f, h, w) normalised latents -> (B, 3, T, H, W) video in [-1, 1] (T = 1 + 4(f-1) for the first chunk, else 4f)."""
        if self.context_latents is None:
            return self._decode(latents)
        history = self.history
        x = latents if history is None else torch.cat([history, latents], dim=2)
        self.feat_cache, self.first = [None] * self.convs, True
        out = self._decode(x)
        if history is not None:
            out = out[:, :, 1 + 4 * (history.shape[2] - 1) :]  # warm-up frames: 1 for the first latent, 4 for each other
        self.history = x[:, :, max(0, x.shape[2] - self.context_latents) :] if self.context_latents else None
        return out

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        vae = self.vae
        x = vae.post_quant_conv(denormalise_latents(latents, *latent_stats(vae)).to(vae.dtype))  # kernel 1: no temporal context
        outs = []
        for i in range(x.shape[2]):
            outs.append(vae.decoder(x[:, :, i : i + 1], feat_cache=self.feat_cache, feat_idx=[0], first_chunk=self.first))
            self.first = False
        out = torch.cat(outs, dim=2)
        if vae.config.patch_size is not None:
            out = unpatchify(out, patch_size=vae.config.patch_size)
        return out.clamp(-1.0, 1.0)


class StreamingWanPipeline(WanPipeline):
    """A WanPipeline that streams: build it with ``from_pretrained`` (a block-causal Wan student) or ``from_pipe``."""

    @torch.no_grad()
    def stream_latents(
        self,
        prompt: str | list[str] | None,
        num_chunks: int,
        attention: StreamingConfig | str = "hybrid",
        frames_per_chunk: int = 3,
        height: int = 480,
        width: int = 832,
        negative_prompt: str | list[str] | None = None,
        guidance_scale: float = 1.0,
        schedule: FewStepSchedule | None = None,
        generator: torch.Generator | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        max_sequence_length: int = 512,
        state_out: list | None = None,
    ) -> Iterator[torch.Tensor]:
        """Yield each chunk's clean latents (B, z, frames_per_chunk, h, w); the cache is dropped at the end.

        ``state_out``, if given, receives the :class:`StreamState` (to inspect cache sizes while streaming).
        """
        config = StreamingConfig.from_attention(attention)
        config.check_chunk(frames_per_chunk)
        check_int("num_chunks", num_chunks, 1)
        check_number("guidance_scale", guidance_scale, 1, note="1 = no classifier-free guidance")
        schedule = schedule or FewStepSchedule()
        p_t, p_h, p_w = self.transformer.config.patch_size
        multiple = self.vae_scale_factor_spatial * max(p_h, p_w)
        if height % multiple or width % multiple:
            raise ValueError(f"height and width must be multiples of {multiple}, got {height}x{width}")
        if frames_per_chunk % p_t:
            raise ValueError(f"frames_per_chunk must be a multiple of the temporal patch size {p_t}, got {frames_per_chunk}")

        device = self._execution_device
        dtype = self.transformer.dtype
        cfg = guidance_scale > 1.0
        prompt_embeds, negative_prompt_embeds = self.encode_prompt(
            prompt, negative_prompt, cfg, 1, prompt_embeds, negative_prompt_embeds, max_sequence_length, device
        )
        embeds = torch.cat([prompt_embeds, negative_prompt_embeds]) if cfg else prompt_embeds
        embeds = embeds.to(dtype)
        batch = prompt_embeds.shape[0]
        shape = (batch, self.transformer.config.in_channels, frames_per_chunk, height // self.vae_scale_factor_spatial, width // self.vae_scale_factor_spatial)

        had_proj = any(hasattr(m, "linear_proj") for m in self.transformer.modules())
        state = apply_streaming_attention(self.transformer, config)
        state.new_prompt()
        if state_out is not None:
            state_out.append(state)

        def noise() -> torch.Tensor:
            return torch.randn(shape, generator=generator, device=generator.device if generator else "cpu", dtype=torch.float32).to(device, dtype)

        def model(sample: torch.Tensor, timestep: float) -> torch.Tensor:
            x = torch.cat([sample, sample]) if cfg else sample
            t = torch.full((x.shape[0],), float(timestep), device=device, dtype=torch.float32)
            flow = self.transformer(hidden_states=x, timestep=t, encoder_hidden_states=embeds, return_dict=False)[0]
            if cfg:
                cond, uncond = flow.chunk(2)
                flow = uncond + guidance_scale * (cond - uncond)
            return flow

        try:
            for chunk in range(num_chunks):
                first = chunk * (frames_per_chunk // p_t)
                with state.context.call(frame=first, commit=False):
                    x0 = schedule.denoise(model, noise)
                with state.context.call(frame=first, commit=True):
                    clean, timestep = schedule.context_input(x0, noise)
                    model(clean, timestep)
                yield x0
        finally:
            remove_streaming_attention(self.transformer, keep_linear_proj=had_proj)

    @torch.no_grad()
    def stream(
        self,
        prompt: str | list[str] | None,
        num_chunks: int,
        attention: StreamingConfig | str = "hybrid",
        frames_per_chunk: int = 3,
        output_type: str = "np",
        decode_context: int | None = None,
        **kwargs,
    ) -> Iterator[np.ndarray | torch.Tensor]:
        """Yield decoded frames chunk by chunk: (B, T, H, W, 3) in [0, 1] for ``"np"``, (B, 3, T, H, W) in [-1, 1]
        for ``"pt"``, clean latents for ``"latent"``. ``decode_context``: see :class:`CausalStreamDecoder`
        (``context_latents``; None = exact). Other keyword arguments go to :meth:`stream_latents`."""
        check_choice("output_type", output_type, ("np", "pt", "latent"))
        decoder = CausalStreamDecoder(self.vae, decode_context)
        for latents in self.stream_latents(prompt, num_chunks, attention, frames_per_chunk, **kwargs):
            if output_type == "latent":
                yield latents
                continue
            video = decoder.decode(latents)
            yield video if output_type == "pt" else self.video_processor.postprocess_video(video, output_type="np")


def stream_to_mp4(pipe: StreamingWanPipeline, prompt: str, path: str | Path, num_chunks: int, fps: int = 16, **kwargs) -> int:
    """Stream ``num_chunks`` chunks into an mp4, appending frames as each chunk arrives; returns frames written.

    With several prompts only the first video is written. Keyword arguments go to :meth:`StreamingWanPipeline.stream`.
    """
    import imageio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")  # renamed into place once the last chunk is in
    try:
        with imageio.get_writer(tmp, fps=fps, macro_block_size=1) as writer:
            for frames in pipe.stream(prompt, num_chunks, output_type="np", **kwargs):
                for frame in frames[0]:
                    writer.append_data((np.clip(frame, 0, 1) * 255).round().astype(np.uint8))
                    written += 1
        replace_synced(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return written


__all__ = ["CausalStreamDecoder", "StreamState", "StreamingWanPipeline", "stream_to_mp4"]
