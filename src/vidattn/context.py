"""The one per-call state object: what a processor or controller cannot see from its own arguments.

The hook fills the grid, step and timestep once per transformer (or UNet) call; a pipeline sets the fields that
belong to a call it drives (FreeSwim's phase/branch, the streaming chunk's first frame and commit flag) with
:meth:`AttentionContext.call`. Every processor and controller of vidattn reads these from one context.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import torch
from diffusers.hooks import HookRegistry, ModelHook

from .checks import check_bool, check_int
from .layout import VideoLayout
from .models import find_spec, patch_size_of
from .opaque import OPAQUE_OBJECTS, OpHandle, require_opaque_objects

CONTEXT_HOOK_NAME = "vidattn_context"
CALL_FIELDS = ("phase", "branch", "frame", "commit")


@dataclass
class AttentionContext:
    """Shared by the processors (and controller) of one model: the current grid, denoising step and call fields.

    Filled by the hook: ``layout`` (the latent grid), ``step`` and ``last_timestep`` (the call's largest timestep).
    ``step`` counts changes of the ``timestep`` tensor (its largest value and its sum), so classifier-free guidance
    run as two calls or as one batch sees the same step, and per-frame timesteps whose largest value holds while other
    frames move (asynchronous diffusion forcing) still advance it; a largest timestep that rises again means a new
    generation and resets the count.
    Set by a pipeline for the calls it drives, through :meth:`call` only: ``phase`` and ``branch`` (FreeSwim's
    record/inject pass and CFG branch, None outside one), ``frame`` (absolute index of the streaming chunk's
    first latent frame) and ``commit`` (the streaming refresh pass that writes the KV cache).
    Under ``torch.compile`` the hook fills the context from inside a custom op at run time (never while tracing), and
    ``token`` is that op's output, which the processors' ops take as an input so that they run after it.
    """

    layout: VideoLayout | None = None
    step: int = 0
    last_timestep: float | None = None
    last_timestep_sum: float | None = field(default=None, repr=False)
    phase: str | None = None
    branch: str | None = None
    frame: int = 0
    commit: bool = False
    token: torch.Tensor | None = field(default=None, repr=False, compare=False)
    handle: OpHandle = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.handle = OpHandle(self)

    def observe(self, grid: tuple[int, int, int] | None, timestep: float | torch.Tensor | None) -> None:
        """What the hook records for one transformer call: the latent grid (in tokens) and the timestep."""
        if grid is not None:
            self.layout = VideoLayout(*grid)
        if torch.is_tensor(timestep):
            timestep = timestep.detach().to(torch.float64)
            self.observe_timestep(float(timestep.max()), float(timestep.sum()))
        elif timestep is not None:
            self.observe_timestep(float(timestep))

    def observe_timestep(self, timestep: float, total: float | None = None) -> None:
        """Count a step when the timestep changes (largest value or, for a tensor, ``total``, its sum); reset when the
        largest value rises."""
        total = timestep if total is None else total
        if self.last_timestep is None or timestep > self.last_timestep:
            self.step = 0
        elif timestep < self.last_timestep or total != self.last_timestep_sum:
            self.step += 1
        self.last_timestep, self.last_timestep_sum = timestep, total

    @contextmanager
    def call(self, **fields) -> Iterator["AttentionContext"]:
        """Set per-call fields (``phase``, ``branch``, ``frame``, ``commit``) for the model calls inside the block;
        the previous values come back on exit, so calls nest."""
        unknown = sorted(set(fields) - set(CALL_FIELDS))
        if unknown:
            raise ValueError(f"AttentionContext.call takes {CALL_FIELDS}, got {unknown}")
        for name in ("phase", "branch"):
            if name in fields and fields[name] is not None and not isinstance(fields[name], str):
                raise ValueError(f"{name} must be a string or None, got {fields[name]!r}")
        if "frame" in fields:
            check_int("frame", fields["frame"], 0, note="absolute index of the chunk's first latent frame")
        if "commit" in fields:
            check_bool("commit", fields["commit"])
        previous = {name: getattr(self, name) for name in fields}
        for name, value in fields.items():
            setattr(self, name, value)
        try:
            yield self
        finally:
            for name, value in previous.items():
                setattr(self, name, value)

    def reset(self) -> None:
        """Forget the hook-filled fields (a new generation); the call fields belong to the open ``call`` blocks."""
        self.step, self.last_timestep, self.last_timestep_sum, self.layout = 0, None, None, None


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
        grid = None
        if frames is not None:
            p_t, p_h, p_w = self.patch_size
            grid = (max(frames // p_t, 1), height // p_h, width // p_w)
        if torch.compiler.is_compiling():  # the timestep's value is data: read it at run time, inside the op
            require_opaque_objects()
            stamp = timestep if torch.is_tensor(timestep) else None if timestep is None else torch.tensor(float(timestep))
            self.context.token = observe_call(stamp, *(grid or (0, 0, 0)), self.context.handle)
            return args, kwargs
        self.context.observe(grid, timestep)
        return args, kwargs

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        self.context.reset()
        return module


def _observe_call(timestep: torch.Tensor | None, frames: int, height: int, width: int, context: OpHandle) -> torch.Tensor:
    """The hook's record of one call, run eagerly inside a compiled graph: grid (0s: unknown) and timestep into the
    context. Returns the step as a 0-d CPU tensor: the token the processors' ops take to run after this one."""
    ctx = context.owner
    ctx.observe((frames, height, width) if frames else None, timestep)
    return torch.tensor(ctx.step, dtype=torch.int64)


def _observe_call_fake(timestep, frames, height, width, context) -> torch.Tensor:
    return torch.empty((), dtype=torch.int64, device="cpu")


observe_call = None
if OPAQUE_OBJECTS:
    observe_call = torch.library.custom_op("vidattn::observe_call", _observe_call, mutates_args=())
    observe_call.register_fake(_observe_call_fake)


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
