"""Per-call state a processor cannot see (grid, denoising step), filled by a diffusers ModelHook on the transformer."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from diffusers.hooks import HookRegistry, ModelHook

from .layout import VideoLayout
from .models import find_spec, patch_size_of

CONTEXT_HOOK_NAME = "vidattn_context"


@dataclass
class AttentionContext:
    """Shared by the processors of one transformer: the current grid and denoising step.

    ``step`` counts changes of the ``timestep`` value, so classifier-free guidance run as two calls or as one
    batch sees the same step; a timestep that rises again means a new generation and resets the count.
    """

    layout: VideoLayout | None = None
    step: int = 0
    last_timestep: float | None = None
    calls: int = field(default=0)

    def observe_timestep(self, timestep: float) -> None:
        if self.last_timestep is None or timestep > self.last_timestep:
            self.step = 0
        elif timestep < self.last_timestep:
            self.step += 1
        self.last_timestep = timestep

    def reset(self) -> None:
        self.step, self.last_timestep, self.calls, self.layout = 0, None, 0, None


def _patch_size(config) -> tuple[int, int, int]:
    """(p_t, p_h, p_w) from a diffusers transformer config (the reader of every class in :data:`vidattn.models.MODELS`)."""
    return patch_size_of(config)


def _frames_first(transformer: torch.nn.Module) -> bool:
    """Whether latents arrive as (B, F, C, H, W) (CogVideoX), from the model table."""
    spec = find_spec(transformer)
    return spec is not None and spec.frames_first


class AttentionContextHook(ModelHook):
    """Records the latent grid and the denoising step of each transformer call into an AttentionContext."""

    _is_stateful = True

    def __init__(self, context: AttentionContext, patch_size: tuple[int, int, int], frames_first: bool) -> None:
        super().__init__()
        self.context = context
        self.patch_size = patch_size
        self.frames_first = frames_first

    def pre_forward(self, module: torch.nn.Module, *args, **kwargs):
        hidden_states = kwargs.get("hidden_states", args[0] if args else None)
        timestep = kwargs.get("timestep", args[1] if len(args) > 1 else None)
        frames = height = width = None
        if hidden_states is not None and hidden_states.ndim == 5:
            if self.frames_first:
                frames, height, width = hidden_states.shape[1], hidden_states.shape[3], hidden_states.shape[4]
            else:
                frames, height, width = hidden_states.shape[2:]
        elif all(isinstance(kwargs.get(name), int) for name in ("num_frames", "height", "width")):  # packed latents (LTX-2)
            frames, height, width = kwargs["num_frames"], kwargs["height"], kwargs["width"]
        if frames is not None:
            p_t, p_h, p_w = self.patch_size
            self.context.layout = VideoLayout(max(frames // p_t, 1), height // p_h, width // p_w)
        if timestep is not None:
            value = timestep.max().item() if torch.is_tensor(timestep) else float(timestep)
            self.context.observe_timestep(float(value))
        self.context.calls += 1
        return args, kwargs

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        self.context.reset()
        return module


def attach_context(transformer: torch.nn.Module, context: AttentionContext | None = None) -> AttentionContext:
    """Install (or replace) the context hook on ``transformer`` and return the context it fills."""
    context = context or AttentionContext()
    config = getattr(transformer, "config", {})
    hook = AttentionContextHook(context, _patch_size(config), _frames_first(transformer))
    registry = HookRegistry.check_if_exists_or_initialize(transformer)
    if registry.get_hook(CONTEXT_HOOK_NAME) is not None:
        registry.remove_hook(CONTEXT_HOOK_NAME, recurse=False)
    registry.register_hook(hook, CONTEXT_HOOK_NAME)
    return context


def detach_context(transformer: torch.nn.Module) -> None:
    """Remove the context hook installed by :func:`attach_context`, if any."""
    registry = getattr(transformer, "_diffusers_hook", None)
    if registry is not None and registry.get_hook(CONTEXT_HOOK_NAME) is not None:
        registry.remove_hook(CONTEXT_HOOK_NAME, recurse=False)
