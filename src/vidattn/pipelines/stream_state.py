"""The state of a stream (the per-layer rolling KV caches, cached text K/V and RoPE tables) and the installer of
the streaming attention on a Wan transformer. Pipeline machinery: ``StreamingWanPipeline`` drives it chunk by chunk.

Per-call values (the chunk's first frame, the commit pass) are not kept here: they are fields of the transformer's
:class:`~vidattn.context.AttentionContext` (``state.context``), set with ``state.context.call(frame=..., commit=...)``.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import torch
from diffusers.models.embeddings import get_1d_rotary_pos_embed
from diffusers.models.transformers.transformer_wan import WanAttention, WanAttnProcessor

from ..checks import check_int
from ..context import AttentionContext
from ..kernels.linear_state import LinearAttentionState
from ..processors.install import install_processors, remove_processors
from ..processors.streaming import StreamingAttnProcessor, StreamingConfig, linear_proj_of

ROPE_THETA = 10000.0  # WanRotaryPosEmbed's theta (not configurable in WanTransformer3DModel)


def wan_rope_table(frame_positions: list[int], height: int, width: int, head_dim: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Wan's RoPE (cos, sin) as (1, 1, N, head_dim) for frames at ``frame_positions`` (any ints, also past the table).

    Same formula and column split [t | h | w] as ``WanRotaryPosEmbed``, so in-range positions match it exactly.
    """
    h_dim = w_dim = 2 * (head_dim // 6)
    t_dim = head_dim - h_dim - w_dim
    pos = torch.tensor(frame_positions, dtype=torch.int64)
    parts = []
    for dim, positions in ((t_dim, pos), (h_dim, torch.arange(height)), (w_dim, torch.arange(width))):
        parts.append(get_1d_rotary_pos_embed(dim, positions, ROPE_THETA, use_real=True, repeat_interleave_real=True, freqs_dtype=torch.float64))
    frames = len(frame_positions)
    tables = []
    for which in (0, 1):
        t, h, w = (p[which] for p in parts)
        grid = torch.cat(
            [
                t.view(frames, 1, 1, -1).expand(frames, height, width, -1),
                h.view(1, height, 1, -1).expand(frames, height, width, -1),
                w.view(1, 1, width, -1).expand(frames, height, width, -1),
            ],
            dim=-1,
        )
        tables.append(grid.reshape(1, 1, frames * height * width, head_dim).to(device))
    return tables[0], tables[1]


@dataclass
class LayerCache:
    """One layer's rolling cache: un-rotated keys/values (B, H, T, D) of the absolute ``frames``, plus the linear state."""

    key: torch.Tensor | None = None
    value: torch.Tensor | None = None
    frames: list[int] = field(default_factory=list)
    linear: LinearAttentionState | None = None

    def nbytes(self) -> int:
        total = sum(t.numel() * t.element_size() for t in (self.key, self.value) if t is not None)
        return total + (self.linear.nbytes() if self.linear is not None else 0)


class StreamState:
    """The caches of one stream on one transformer: per-layer self-attention caches, per-prompt cross-attention
    K/V, and a bounded table of RoPE (cos, sin) keyed by everything they depend on. ``context`` is the
    transformer's :class:`AttentionContext` (set by :func:`apply_streaming_attention`)."""

    def __init__(self, context: AttentionContext | None = None, max_rope_tables: int = 16) -> None:
        check_int("max_rope_tables", max_rope_tables, 1)
        self.context = context if context is not None else AttentionContext()
        self.prompt_version: int | None = None
        self.layers: dict[object, LayerCache] = {}
        self.cross: dict[object, tuple] = {}
        self.max_rope_tables = max_rope_tables
        self._rope: OrderedDict[tuple, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()

    def new_prompt(self) -> None:
        """Cross-attention K/V are cached per prompt: call this whenever the prompt embeddings change."""
        self.prompt_version = 0 if self.prompt_version is None else self.prompt_version + 1
        self.cross.clear()

    def reset(self) -> None:
        """Forget every cached frame and text K/V (a new stream)."""
        self.layers.clear()
        self.cross.clear()

    def layer(self, key: object) -> LayerCache:
        if key not in self.layers:
            self.layers[key] = LayerCache()
        return self.layers[key]

    def rope(self, positions: list[int], height: int, width: int, head_dim: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """:func:`wan_rope_table` for these frame positions, shared by the layers (LRU of ``max_rope_tables``)."""
        key = (tuple(positions), height, width, head_dim, str(device))
        if key in self._rope:
            self._rope.move_to_end(key)
        else:
            self._rope[key] = wan_rope_table(positions, height, width, head_dim, device)
            if len(self._rope) > self.max_rope_tables:
                self._rope.popitem(last=False)
        return self._rope[key]

    def self_cache_nbytes(self) -> int:
        """Bytes held by the self-attention caches and linear states (what grows with video length, if anything)."""
        return sum(cache.nbytes() for cache in self.layers.values())

    def cross_cache_nbytes(self) -> int:
        return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for _, k, v in self.cross.values())


def cache_frames(state: StreamState) -> dict[object, list[int]]:
    """The absolute frames each self-attention layer holds in its cache (for inspection and tests)."""
    return {key: list(cache.frames) for key, cache in state.layers.items()}


def add_linear_proj(transformer: torch.nn.Module) -> int:
    """Give every Wan self-attention a zero-initialised ``linear_proj = nn.Linear(head_dim, head_dim)`` if it has none.

    Zero after construction, so an untrained hybrid model equals the sliding-window model. Returns how many were added.
    """
    added = 0
    for module in transformer.modules():
        if isinstance(module, WanAttention) and not module.is_cross_attention and linear_proj_of(module) is None:
            head_dim = module.inner_dim // module.heads
            weight = module.to_q.weight
            proj = torch.nn.Linear(head_dim, head_dim, device=weight.device, dtype=weight.dtype)
            torch.nn.init.zeros_(proj.weight)
            torch.nn.init.zeros_(proj.bias)
            module.linear_proj = proj
            added += 1
    return added


def apply_streaming_attention(transformer: torch.nn.Module, config: StreamingConfig | None = None) -> StreamState:
    """Streaming attention on a Wan transformer; returns the :class:`StreamState` that holds its caches.

    Drive it chunk by chunk: ``with state.context.call(frame=first)`` for denoising calls (the cache is read),
    ``with state.context.call(frame=first, commit=True)`` for the refresh pass (the chunk is written, old frames
    evicted). Hybrid mode adds a zero ``linear_proj`` to each self-attention (kept if one is already there, e.g. trained).
    """
    config = config or StreamingConfig()
    if not isinstance(config, StreamingConfig):
        raise ValueError(f"config must be a StreamingConfig, got {type(config).__name__}")
    state = StreamState()

    def make(index: int, family: str, context: AttentionContext):
        if family != "wan":
            raise ValueError(f"streaming attention supports Wan transformers only (family 'wan'), got {family!r}")
        return StreamingAttnProcessor(config, state=state, layer_idx=index, context=context)

    state.context = install_processors(transformer, make)
    cross = [m for m in transformer.modules() if isinstance(m, WanAttention) and m.is_cross_attention]
    for index, module in enumerate(cross):
        module.set_processor(StreamingAttnProcessor(config, state=state, layer_idx=index, context=state.context))
    if config.mode == "hybrid":
        add_linear_proj(transformer)
    return state


def remove_streaming_attention(transformer: torch.nn.Module, keep_linear_proj: bool = False) -> None:
    """Stock processors back on self- and cross-attention, hook removed, ``linear_proj`` deleted unless kept."""
    remove_processors(transformer)
    for module in transformer.modules():
        if isinstance(module, WanAttention):
            if module.is_cross_attention:
                module.set_processor(WanAttnProcessor())
            elif not keep_linear_proj and linear_proj_of(module) is not None:
                del module.linear_proj


__all__ = [
    "LayerCache",
    "StreamState",
    "add_linear_proj",
    "apply_streaming_attention",
    "cache_frames",
    "remove_streaming_attention",
    "wan_rope_table",
]
