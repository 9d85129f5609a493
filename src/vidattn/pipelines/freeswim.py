"""FreeSwim: generate at the training size, upsample, re-denoise at high resolution with window attention.

Stage 1 runs the given Wan pipeline (Wan 2.1 T2V/I2V, Wan 2.2 A14B T2V/I2V with its two experts, Wan 2.2
TI2V-5B) at ``base_size``; its video is decoded, every frame resized bilinearly to the target and re-encoded;
stage 2 denoises it SDEdit-style from ``strength`` with window self-attention whose cross-attention is
overridden by a cached full-attention branch. With two experts each has its own record of the full branch
(a record of one expert is never injected into the other), and stage 2 switches expert at the pipeline's
``boundary_ratio`` as the stock pipeline does.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from diffusers.pipelines.wan.pipeline_output import WanPipelineOutput
from diffusers.pipelines.wan.pipeline_wan_i2v import WanImageToVideoPipeline
from diffusers.utils.torch_utils import randn_tensor

from ..checks import check_bool, check_choice, check_int, check_number
from ..latents import denormalise_latents, latent_stats, normalise_latents
from ..layout import VideoLayout
from .cross_override import CrossAttnOverride, FullAttnProcessor, freeswim_scale_factor, install_cross_override

OUTPUT_TYPES = ("np", "pt", "pil", "latent")


def _default_window_processor(window: tuple, inward: bool, scale_factor: float, backend: str) -> Any:
    """The window branch's processor from the window method (issue 5 part A), imported on first use."""
    try:
        from ..processors.window import WindowAttnProcessor
    except ImportError as error:  # pragma: no cover - only before the window method is installed
        raise ValueError("the window method (vidattn.processors.window) is not available: pass window_processor=") from error
    return WindowAttnProcessor(window=window, inward=inward, scale_factor=scale_factor, backend=backend)


class FreeSwimPipeline:
    """Coarse-to-fine high-resolution Wan video: ``FreeSwimPipeline.from_pipe(wan_pipe)(prompt, 1088, 1920)``.

    ``window``: (frames, rows, cols) half-widths of the window branch in latent tokens; default
    ``(None, base_h / stride / 2, base_w / stride / 2)`` where ``None`` means all frames (FreeSwim's choice)
    and ``stride`` = VAE x patch stride. ``attn_scale_factor``: "freeswim" (``sqrt(log 2N / log N)``, N the
    base tokens per frame), a float, or 1.0 for the default softmax scale; applied to both branches.
    ``window_processor``: any Wan self-attention processor (one, or one per block) replacing the default.
    """

    def __init__(
        self,
        pipe: Any,
        base_size: tuple[int, int] = (480, 832),
        window: tuple[int | None, int, int] | None = None,
        inward: bool = True,
        attn_scale_factor: float | str = "freeswim",
        window_processor: Any | Sequence[Any] | None = None,
        backend: str = "auto",
        offload_cache: bool = False,
    ) -> None:
        for name in ("transformer", "vae", "scheduler", "text_encoder", "tokenizer"):
            if getattr(pipe, name, None) is None:
                raise ValueError(f"pipe must be a diffusers Wan pipeline with a {name}; got {type(pipe).__name__}")
        for name in ("transformer", "transformer_2"):
            expert = getattr(pipe, name, None)
            if expert is not None and not hasattr(expert, "blocks"):
                raise ValueError(f"pipe.{name} must be a WanTransformer3DModel, got {type(expert).__name__}")
        if getattr(pipe, "transformer_2", None) is not None and pipe.config.get("boundary_ratio") is None:
            raise ValueError("a pipeline with transformer_2 needs its boundary_ratio (Wan 2.2 A14B) to choose the expert per step")
        self.pipe = pipe
        self.stride = pipe.vae_scale_factor_spatial * pipe.transformer.config.patch_size[1]
        self.base_size = self._check_size("base_size", base_size)
        check_bool("inward", inward)
        check_bool("offload_cache", offload_cache)
        if window is None:
            window = (None, self.base_size[0] // self.stride // 2, self.base_size[1] // self.stride // 2)
        if not isinstance(window, tuple) or len(window) != 3:
            raise ValueError(f"window must be a (frames, rows, cols) tuple of half-widths (frames may be None), got {window!r}")
        self.window, self.inward, self.backend, self.offload_cache = window, inward, backend, offload_cache
        base_tokens = (self.base_size[0] // self.stride) * (self.base_size[1] // self.stride)
        if attn_scale_factor == "freeswim":
            attn_scale_factor = freeswim_scale_factor(base_tokens)
        check_number("attn_scale_factor", attn_scale_factor, 0, low_open=True, note="or 'freeswim'")
        self.attn_scale_factor = float(attn_scale_factor)
        self.window_processor = window_processor
        self.last_stats: dict[str, int] = {}

    @classmethod
    def from_pipe(cls, pipe: Any, base_size: tuple[int, int] = (480, 832), **kwargs: Any) -> "FreeSwimPipeline":
        """Wrap a loaded Wan pipeline (its components are shared, not copied)."""
        return cls(pipe, base_size=base_size, **kwargs)

    def _check_size(self, name: str, size: Any) -> tuple[int, int]:
        if not isinstance(size, (tuple, list)) or len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size):
            raise ValueError(f"{name} must be (height, width) in pixels, got {size!r}")
        if size[0] % self.stride or size[1] % self.stride:
            raise ValueError(f"{name} {tuple(size)} must be multiples of {self.stride} (VAE stride x patch size)")
        return (int(size[0]), int(size[1]))

    def _window_branch(self, layout: Any = None) -> Any:
        if self.window_processor is not None:
            return self.window_processor
        processor = _default_window_processor(self.window, self.inward, self.attn_scale_factor, self.backend)
        processor.layout = layout  # the global grid under context parallelism (the RoPE describes one rank's shard)
        return processor

    def _experts(self, boundary_ratio, scheduler, guidance_scale: float, guidance_scale_2: float) -> list[tuple[Any, float, float]]:
        """(transformer, lowest timestep it serves, guidance) per expert: Wan 2.2 A14B switches at the boundary."""
        pipe = self.pipe
        if boundary_ratio is None or getattr(pipe, "transformer_2", None) is None:
            return [(pipe.transformer, float("-inf"), guidance_scale)]
        boundary = boundary_ratio * scheduler.config.num_train_timesteps
        return [(pipe.transformer, boundary, guidance_scale), (pipe.transformer_2, float("-inf"), guidance_scale_2)]

    @staticmethod
    def _model_input(latents, condition, frame_mask, t, expert, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The transformer's input and timestep as the stock pipelines build them (concatenated I2V condition,
        or TI2V's first-frame replacement with a per-token timestep)."""
        if frame_mask is None:
            model_input = latents if condition is None else torch.cat([latents, condition], dim=1)
            return model_input, t.expand(batch)
        model_input = latents if condition is None else (1 - frame_mask) * condition + frame_mask * latents
        _, p_h, p_w = expert.config.patch_size
        timestep = (frame_mask[0, 0, :, ::p_h, ::p_w] * t).flatten()
        return model_input, timestep.unsqueeze(0).expand(batch, -1)

    # -- the two stages --------------------------------------------------------------------------------
    def upsample(self, latents: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Decode normalised stage-1 latents, resize every frame bilinearly, re-encode (FreeSwim resizes pixels)."""
        vae = self.pipe.vae
        video = vae.decode(denormalise_latents(latents.to(vae.dtype), *latent_stats(vae)), return_dict=False)[0].clamp(-1, 1)
        batch, channels, frames = video.shape[:3]
        frames_2d = video.transpose(1, 2).flatten(0, 1).float()
        resized = F.interpolate(frames_2d, size=(height, width), mode="bilinear", align_corners=False).clamp(-1, 1)
        video = resized.unflatten(0, (batch, frames)).transpose(1, 2).to(vae.dtype)
        encoded = vae.encode(video).latent_dist.mode()
        return normalise_latents(encoded, *latent_stats(vae)).float()

    def _stage2_scheduler(self, flow_shift: float | None):
        scheduler = self.pipe.scheduler
        if flow_shift is None:
            return type(scheduler).from_config(scheduler.config)
        check_number("flow_shift", flow_shift, 0, low_open=True, note="None keeps the scheduler's")
        for key in ("flow_shift", "shift"):
            if key in scheduler.config:
                return type(scheduler).from_config(scheduler.config, **{key: float(flow_shift)})
        raise ValueError(f"flow_shift needs a flow-matching scheduler with 'flow_shift' or 'shift'; got {type(scheduler).__name__}")

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        height: int = 1088,
        width: int = 1920,
        num_frames: int = 81,
        strength: float = 0.7,
        cache_steps: int = 2,
        flow_shift: float | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 5.0,
        negative_prompt: str | list[str] | None = None,
        image: Any = None,
        override_uncond: bool | None = None,
        generator: torch.Generator | None = None,
        output_type: str = "np",
        return_dict: bool = True,
        base_num_inference_steps: int | None = None,
        base_guidance_scale: float | None = None,
        guidance_scale_2: float | None = None,
        max_sequence_length: int = 512,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
    ) -> WanPipelineOutput | tuple:
        """Stage 1 at ``base_size``, bilinear upsampling, stage 2 at (height, width) from ``strength``.

        ``override_uncond=None`` follows FreeSwim: overridden without caching (``cache_steps=1``), not with it.
        ``flow_shift`` applies to stage 2 only (FreeSwim uses 9.0); ``None`` keeps the pipeline scheduler's.
        ``guidance_scale_2``: Wan 2.2 A14B's low-noise expert (``transformer_2``) guidance in both stages
        (default: ``guidance_scale``, as the stock pipeline).
        """
        pipe = self.pipe
        height, width = self._check_size("(height, width)", (height, width))
        if height < self.base_size[0] or width < self.base_size[1]:
            raise ValueError(f"target (height, width)=({height}, {width}) must be at least base_size {self.base_size} in both dimensions")
        temporal = pipe.vae_scale_factor_temporal
        if not isinstance(num_frames, int) or num_frames < 1 or (num_frames - 1) % temporal:
            raise ValueError(f"num_frames must be 1 + a multiple of {temporal} (e.g. 81), got {num_frames!r}")
        check_number("strength", strength, 0, 1, low_open=True)
        check_int("num_inference_steps", num_inference_steps, 1)
        if int(num_inference_steps * strength) < 1:
            raise ValueError(f"strength={strength} with num_inference_steps={num_inference_steps} leaves no denoising step")
        check_int("cache_steps", cache_steps, 1)
        check_choice("output_type", output_type, OUTPUT_TYPES)
        check_bool("override_uncond", override_uncond, optional=True, note="None: follow FreeSwim")
        i2v = (
            isinstance(pipe, WanImageToVideoPipeline)
            or getattr(pipe, "image_encoder", None) is not None
            or pipe.transformer.config.in_channels != pipe.vae.config.z_dim
        )
        if i2v and image is None:
            raise ValueError("this is an image-to-video pipeline: pass image=")
        if not i2v and image is not None:
            raise ValueError("image= is only for image-to-video pipelines (WanImageToVideoPipeline)")
        boundary_ratio = pipe.config.get("boundary_ratio")
        if guidance_scale_2 is not None and boundary_ratio is None:
            raise ValueError("guidance_scale_2 is for two-expert pipelines (Wan 2.2 A14B, with a boundary_ratio)")
        expand_timesteps = bool(pipe.config.get("expand_timesteps", False))
        override_uncond = cache_steps == 1 if override_uncond is None else override_uncond
        scheduler = self._stage2_scheduler(flow_shift)  # validates flow_shift before stage 1 runs
        base_steps = num_inference_steps if base_num_inference_steps is None else base_num_inference_steps
        base_cfg = guidance_scale if base_guidance_scale is None else base_guidance_scale
        guidance_2 = guidance_scale if guidance_scale_2 is None else guidance_scale_2

        # Prompts are encoded once, for both stages.
        device, dtype = pipe._execution_device, pipe.transformer.dtype
        cfg = guidance_scale > 1.0 or (boundary_ratio is not None and guidance_2 > 1.0)
        prompt_embeds, negative_embeds = pipe.encode_prompt(
            prompt=prompt, negative_prompt=negative_prompt, do_classifier_free_guidance=cfg or base_cfg > 1.0, prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds, max_sequence_length=max_sequence_length, device=device,
        )

        # Stage 1: the stock pipeline at the base size, kept as latents.
        stage1 = dict(height=self.base_size[0], width=self.base_size[1],
                      num_frames=num_frames, num_inference_steps=base_steps, guidance_scale=base_cfg, generator=generator,
                      output_type="latent", max_sequence_length=max_sequence_length, prompt_embeds=prompt_embeds,
                      negative_prompt_embeds=negative_embeds)
        if boundary_ratio is not None:
            stage1["guidance_scale_2"] = guidance_2 if base_guidance_scale is None else base_cfg
        if i2v:
            stage1["image"] = image
        base_latents = pipe(**stage1).frames

        # Upsampling, then stage 2 from `strength`.
        prompt_embeds = prompt_embeds.to(dtype)
        negative_embeds = None if negative_embeds is None else negative_embeds.to(dtype)
        init = self.upsample(base_latents, height, width).to(device)
        scheduler.set_timesteps(num_inference_steps, device=device)
        start = num_inference_steps - min(int(num_inference_steps * strength), num_inference_steps)
        timesteps = scheduler.timesteps[start * scheduler.order :]
        noise = randn_tensor(init.shape, generator=generator, device=device, dtype=torch.float32)
        first = timesteps[:1].repeat(init.shape[0])
        latents = scheduler.add_noise(init, noise, first) if hasattr(scheduler, "add_noise") else scheduler.scale_noise(init, first, noise)

        batch = prompt_embeds.shape[0]
        image_embeds, condition, frame_mask = None, None, None
        if expand_timesteps:  # Wan 2.2 TI2V-5B: per-token timesteps; I2V keeps the clean first latent frame at t = 0
            frame_mask = torch.ones(1, 1, *latents.shape[2:], device=device)
        if i2v:
            if pipe.transformer.config.image_dim is not None:
                image_embeds = pipe.encode_image(image, device).repeat(batch, 1, 1).to(dtype)
            pixels = pipe.video_processor.preprocess(image, height=height, width=width).to(device, torch.float32)
            prepared = pipe.prepare_latents(pixels, batch, pipe.vae.config.z_dim, height, width, num_frames,
                                            torch.float32, device, generator, latents)
            condition = prepared[1]
            if expand_timesteps:
                frame_mask = prepared[2]
                latents = (1 - frame_mask) * condition + frame_mask * latents

        experts = self._experts(boundary_ratio, scheduler, guidance_scale, guidance_2)
        saved = [dict(expert.attn_processors) for expert, _, _ in experts]
        controllers = [CrossAttnOverride(len(expert.blocks), cache_steps, override_uncond, self.offload_cache) for expert, _, _ in experts]
        try:
            for (expert, _, _), controller in zip(experts, controllers):
                grid = None
                if getattr(expert, "_parallel_config", None) is not None:  # Ulysses: processors need the global grid
                    _, p_h, p_w = expert.config.patch_size
                    grid = VideoLayout(latents.shape[2], latents.shape[3] // p_h, latents.shape[4] // p_w)
                install_cross_override(expert, self._window_branch(grid), controller, FullAttnProcessor(self.attn_scale_factor, layout=grid))
            with pipe.progress_bar(total=len(timesteps)) as progress:
                for step, t in enumerate(timesteps):
                    index = next(i for i, (_, low, _) in enumerate(experts) if t >= low)
                    (expert, _, scale), controller = experts[index], controllers[index]
                    model_input, timestep = self._model_input(latents, condition, frame_mask, t, expert, batch)
                    call = dict(hidden_states=model_input.to(dtype), timestep=timestep,
                                encoder_hidden_states_image=image_embeds, return_dict=False)
                    noise_pred = controller.forward(expert, step, "cond", encoder_hidden_states=prompt_embeds, **call)[0]
                    if cfg and negative_embeds is not None:
                        noise_uncond = controller.forward(expert, step, "uncond", encoder_hidden_states=negative_embeds, **call)[0]
                        noise_pred = noise_uncond + scale * (noise_pred - noise_uncond)
                    latents = scheduler.step(noise_pred, t, latents, return_dict=False)[0]
                    if frame_mask is not None and condition is not None:
                        latents = (1 - frame_mask) * condition + frame_mask * latents
                    progress.update()
        finally:
            for (expert, _, _), processors in zip(experts, saved):
                expert.set_attn_processor(processors)
            stats = {name: sum(c.stats[name] for c in controllers) for name in controllers[0].stats}
            self.last_stats = {**stats, "steps": len(timesteps)}
            if len(experts) > 1:
                self.last_stats["expert_2_steps"] = sum(1 for t in timesteps if t < experts[0][1])
            for controller in controllers:
                controller.reset()

        if output_type == "latent":
            video = latents
        else:
            vae = pipe.vae
            video = vae.decode(denormalise_latents(latents.to(vae.dtype), *latent_stats(vae)), return_dict=False)[0]
            video = pipe.video_processor.postprocess_video(video, output_type=output_type)
        pipe.maybe_free_model_hooks()
        return WanPipelineOutput(frames=video) if return_dict else (video,)
