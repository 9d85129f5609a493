"""Streaming Wan attention with a rolling KV cache: sink + sliding window (Self-Forcing) and Hybrid Forcing.

Each Wan self-attention layer keeps a cache of *un-rotated* keys and values of past chunks: the first
``sink_frames`` frames are pinned, the oldest other frames are evicted once the window is full. RoPE is
re-applied on every call with positions kept inside the trained range (``max_frames``). In ``"hybrid"`` mode
the window runs block-sparse (mean-pooled ``block_size`` blocks, top ``sparse_keep`` of key blocks per query
block) and evicted frames are folded into a running linear-attention state read out through a per-layer
``linear_proj`` (zero-initialised, so an untrained hybrid model equals the sliding-window model).
The stream is driven by a :class:`StreamState` (current chunk, commit pass) that the pipeline updates.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from diffusers.models.embeddings import get_1d_rotary_pos_embed
from diffusers.models.transformers.transformer_wan import WanAttention, WanAttnProcessor

from ..context import AttentionContext
from ..kernels import BACKENDS, block_sparse_attention
from ..kernels.linear_state import LinearAttentionState, linear_readout, relu_feature, update_linear_state
from ..layout import VideoLayout
from ..patterns.plan import BlockPlan
from .base import VideoAttnProcessor, config_with_overrides
from .families import _wan_rope, detect_family, is_video_self_attention, project
from .install import install_processors, remove_processors
from .parallel import refuse_parallel

MODES = ("hybrid", "window", "dense")
ROPE_THETA = 10000.0  # WanRotaryPosEmbed's theta (not configurable in WanTransformer3DModel)


@dataclass(frozen=True)
class HybridConfig:
    """Streaming attention settings; defaults are Hybrid Forcing's (``configs/hybrid_forcing.yaml``).

    ``mode``: ``"hybrid"`` (sparse window + linear state), ``"window"`` (Self-Forcing: dense window with sink,
    evicted frames dropped) or ``"dense"`` (every past frame cached, absolute positions). ``window_frames``
    counts the sink and the current chunk; ``max_frames`` is the model's trained length in latent frames
    (Wan2.1: 21), the range RoPE positions are kept in.
    """

    mode: str = "hybrid"
    sink_frames: int = 3
    window_frames: int = 9
    sparse_keep: float = 0.2
    block_size: int = 64
    max_frames: int = 21
    backend: str = "auto"
    eps: float = 1e-6

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        for name, low in (("sink_frames", 0), ("window_frames", 1), ("block_size", 1), ("max_frames", 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        if self.sink_frames >= self.window_frames:
            raise ValueError(
                f"sink_frames ({self.sink_frames}) must be smaller than window_frames ({self.window_frames}): "
                "the window holds the sink plus at least one chunk"
            )
        if self.window_frames > self.max_frames:
            raise ValueError(f"window_frames ({self.window_frames}) must be <= max_frames ({self.max_frames}) so positions stay in range")
        if isinstance(self.sparse_keep, bool) or not isinstance(self.sparse_keep, (int, float)) or not 0 < self.sparse_keep <= 1:
            raise ValueError(f"sparse_keep must be a number in (0, 1], got {self.sparse_keep!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")

    @classmethod
    def from_attention(cls, attention: "HybridConfig | str") -> "HybridConfig":
        """``"hybrid"``, ``"window"``, ``"dense"`` or a config (returned as is)."""
        if isinstance(attention, HybridConfig):
            return attention
        if attention in MODES:
            return cls(mode=attention)
        raise ValueError(f"attention must be a HybridConfig or one of {MODES}, got {attention!r}")

    def check_chunk(self, frames_per_chunk: int) -> None:
        """A chunk must fit in the window next to the sink."""
        if not isinstance(frames_per_chunk, int) or isinstance(frames_per_chunk, bool) or frames_per_chunk < 1:
            raise ValueError(f"frames_per_chunk must be an int >= 1, got {frames_per_chunk!r}")
        if self.mode != "dense" and self.window_frames - self.sink_frames < frames_per_chunk:
            raise ValueError(
                f"window_frames ({self.window_frames}) must hold sink_frames ({self.sink_frames}) plus one chunk "
                f"(frames_per_chunk={frames_per_chunk}); raise window_frames or lower frames_per_chunk"
            )
        if self.mode != "dense" and frames_per_chunk > self.max_frames:
            raise ValueError(f"frames_per_chunk ({frames_per_chunk}) must be <= max_frames ({self.max_frames})")


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
    """The state of one stream on one transformer: current chunk, commit flag, per-layer self and cross caches.

    Drive it with :meth:`begin` before each transformer call: ``commit=False`` for denoising calls (the cache
    is read), ``commit=True`` for the refresh pass (the chunk's keys/values are written and old frames evicted).
    """

    def __init__(self, config: HybridConfig) -> None:
        self.config = config
        self.frame = 0
        self.commit = False
        self.prompt_version: int | None = None
        self.layers: dict[object, LayerCache] = {}
        self.cross: dict[object, tuple] = {}

    def begin(self, frame: int, commit: bool = False) -> None:
        if not isinstance(frame, int) or frame < 0:
            raise ValueError(f"frame must be an int >= 0 (absolute index of the chunk's first latent frame), got {frame!r}")
        self.frame, self.commit = frame, bool(commit)

    def new_prompt(self) -> None:
        """Cross-attention K/V are cached per prompt: call this whenever the prompt embeddings change."""
        self.prompt_version = 0 if self.prompt_version is None else self.prompt_version + 1
        self.cross.clear()

    def reset(self) -> None:
        self.frame, self.commit = 0, False
        self.layers.clear()
        self.cross.clear()

    def layer(self, key: object) -> LayerCache:
        if key not in self.layers:
            self.layers[key] = LayerCache()
        return self.layers[key]

    def self_cache_nbytes(self) -> int:
        """Bytes held by the self-attention caches and linear states (what grows with video length, if anything)."""
        return sum(cache.nbytes() for cache in self.layers.values())

    def cross_cache_nbytes(self) -> int:
        return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for _, k, v in self.cross.values())


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


def _block_mean(x: torch.Tensor, block_size: int) -> torch.Tensor:
    """Mean of each ``block_size``-token block of (B, H, N, D) over its real tokens (the last block may be short)."""
    n = x.shape[-2]
    blocks = -(-n // block_size)
    padded = F.pad(x, (0, 0, 0, blocks * block_size - n)).unflatten(-2, (blocks, block_size)).sum(-2)
    counts = torch.full((blocks,), float(block_size), device=x.device, dtype=x.dtype)
    counts[-1] = n - (blocks - 1) * block_size
    return padded / counts.view(-1, 1)


def topk_window_plan(query: torch.Tensor, key: torch.Tensor, keep: float, block_size: int) -> BlockPlan:
    """Per (batch, head, query block): the top ``keep`` fraction of key blocks by mean-pooled q . k.

    Queries index blocks from the first query, keys from the start of the window; the plan is square over the
    key length (query blocks past the queries select nothing). Subtracting the key mean (as SLA does) would
    shift each row's scores by a constant, so it is skipped: the selection is the same.
    """
    n_keys = key.shape[-2]
    q_blocks, k_blocks = -(-query.shape[-2] // block_size), -(-n_keys // block_size)
    scores = _block_mean(query.float(), block_size) @ _block_mean(key.float(), block_size).transpose(-1, -2)
    count = max(1, min(k_blocks, int(keep * k_blocks + 1e-9)))
    chosen = scores.topk(count, dim=-1).indices
    tiles = torch.zeros(*scores.shape[:2], k_blocks, k_blocks, dtype=torch.bool, device=query.device)
    tiles[:, :, :q_blocks].scatter_(-1, chosen, True)
    return BlockPlan(tiles, block_size, n_keys)


def window_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, keep: float = 1.0, block_size: int = 64, backend: str = "auto"
) -> torch.Tensor:
    """Queries (B, H, Nq, D) attend to every window key (B, H, Nk, D) with Nk >= Nq; ``keep < 1`` runs top-k block-sparse."""
    n_q, n_k = query.shape[-2], key.shape[-2]
    if n_q > n_k:
        raise ValueError(f"the window must hold at least the queries: {n_q} queries, {n_k} keys")
    if keep >= 1:
        return F.scaled_dot_product_attention(query, key, value)
    plan = topk_window_plan(query, key, keep, block_size)
    padded_query = F.pad(query, (0, 0, 0, n_k - n_q))
    return block_sparse_attention(padded_query, key, value, plan, backend=backend)[..., :n_q, :]


def _frame_tokens(slots: list[int], tokens_per_frame: int, device) -> torch.Tensor:
    """Token indices of the cache slots ``slots`` (each slot one frame of ``tokens_per_frame`` tokens)."""
    slots_t = torch.tensor(slots, dtype=torch.long, device=device).view(-1, 1)
    return (slots_t * tokens_per_frame + torch.arange(tokens_per_frame, device=device)).flatten()


def _linear_proj(attn: torch.nn.Module):
    return getattr(attn, "linear_proj", None)


class HybridAttnProcessor(VideoAttnProcessor):
    """Streaming Wan attention processor (self-attention with the rolling cache; cross-attention with cached K/V).

    Without a :class:`StreamState` driven by a pipeline it streams from frame 0 and never commits, i.e. each
    call is one chunk attending to itself: use :func:`apply_hybrid_attention` or ``StreamingWanPipeline``.
    """

    def __init__(
        self,
        config: HybridConfig | None = None,
        *,
        state: StreamState | None = None,
        layout: VideoLayout | None = None,
        layer_idx: int | None = None,
        context: AttentionContext | None = None,
        **overrides,
    ) -> None:
        config = config_with_overrides(HybridConfig, config, overrides, "HybridAttnProcessor")
        super().__init__(family="wan", layout=layout, layer_idx=layer_idx, context=context)
        self.config = config
        self.state = state if state is not None else StreamState(config)
        self._rope: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    # -- routing -------------------------------------------------------------------------------------
    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None, **kwargs):
        refuse_parallel(self, "HybridAttnProcessor (streaming: rolling K/V cache per chunk)")
        if detect_family(attn) != "wan":
            raise ValueError(f"HybridAttnProcessor supports Wan attention only (family 'wan'), got {type(attn).__name__}")
        cache_key = self.layer_idx if self.layer_idx is not None else id(attn)
        if not is_video_self_attention("wan", attn, encoder_hidden_states):
            return self._cross_attention(attn, hidden_states, encoder_hidden_states, attention_mask, cache_key)
        call = project("wan", attn, hidden_states, None, attention_mask, None)  # un-rotated q, k, v
        layout = self.resolve_layout("wan", rotary_emb, call.query.shape[-2])
        out = self.stream_attend(attn, call.query, call.key, call.value, layout, cache_key)
        return call.finish(out)

    def _cross_attention(self, attn, hidden_states, encoder_hidden_states, attention_mask, cache_key):
        """Text cross-attention with K/V computed once per prompt (``state.new_prompt()`` invalidates them)."""
        if attn.add_k_proj is not None or getattr(attn, "fused_projections", False) or attention_mask is not None:
            return WanAttnProcessor()(attn, hidden_states, encoder_hidden_states, attention_mask, None)
        version = self.state.prompt_version
        signature = (version, tuple(encoder_hidden_states.shape), encoder_hidden_states.dtype, encoder_hidden_states.device)
        entry = self.state.cross.get(cache_key)
        if version is not None and entry is not None and entry[0] == signature:
            key, value = entry[1], entry[2]
        else:
            key = attn.norm_k(attn.to_k(encoder_hidden_states)).unflatten(2, (attn.heads, -1)).transpose(1, 2)
            value = attn.to_v(encoder_hidden_states).unflatten(2, (attn.heads, -1)).transpose(1, 2)
            if version is not None:
                self.state.cross[cache_key] = (signature, key, value)
        query = attn.norm_q(attn.to_q(hidden_states)).unflatten(2, (attn.heads, -1)).transpose(1, 2)
        out = F.scaled_dot_product_attention(query, key, value).transpose(1, 2).flatten(2, 3).type_as(query)
        return attn.to_out[1](attn.to_out[0](out))

    # -- positions -----------------------------------------------------------------------------------
    def positions(self, frames: list[int], query_end: int) -> list[int]:
        """RoPE frame positions: absolute in dense mode; else the sink keeps 0.., the rest shifts so the current
        chunk ends at most at ``max_frames`` (Hybrid Forcing's relative RoPE)."""
        cfg = self.config
        if cfg.mode == "dense":
            return list(frames)
        shift = max(0, query_end - cfg.max_frames)
        return [f if f < cfg.sink_frames else f - shift for f in frames]

    def _rope_table(self, positions: list[int], height: int, width: int, head_dim: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        key = (tuple(positions), height, width, head_dim, str(device))
        if key not in self._rope:
            if len(self._rope) >= 16:
                self._rope.clear()
            self._rope[key] = wan_rope_table(positions, height, width, head_dim, device)
        return self._rope[key]

    def _rotate(self, x: torch.Tensor, positions: list[int], layout: VideoLayout) -> torch.Tensor:
        cos, sin = self._rope_table(positions, layout.height, layout.width, x.shape[-1], x.device)
        return _wan_rope(x, cos, sin)

    # -- attention -----------------------------------------------------------------------------------
    def stream_attend(self, attn, query, key, value, layout: VideoLayout, cache_key) -> torch.Tensor:
        """One chunk's queries over [cached window | chunk] plus, in hybrid mode, the linear readout."""
        cfg, state = self.config, self.state
        cache = state.layer(cache_key)
        first, count = state.frame, layout.frames
        current = list(range(first, first + count))
        if cache.frames and cache.frames[-1] >= first:
            raise ValueError(
                f"chunk starting at frame {first} overlaps cached frames (last {cache.frames[-1]}): advance "
                "state.begin(frame=...) past committed chunks, or state.reset() to start a new stream"
            )
        if cfg.mode != "dense" and count > cfg.max_frames:
            raise ValueError(
                f"a chunk of {count} latent frames exceeds max_frames ({cfg.max_frames}): stream it in chunks "
                "(StreamingWanPipeline) or use mode='dense'"
            )
        if cache.key is not None and cache.key.shape[0] != query.shape[0]:
            raise ValueError(f"batch size changed mid-stream ({cache.key.shape[0]} -> {query.shape[0]}): call state.reset()")
        frames = cache.frames + current
        keys = key if cache.key is None else torch.cat([cache.key, key], dim=-2)
        values = value if cache.value is None else torch.cat([cache.value, value], dim=-2)
        positions = self.positions(frames, first + count)
        rotated_query = self._rotate(query, positions[-count:], layout)
        rotated_keys = self._rotate(keys, positions, layout)
        keep = cfg.sparse_keep if cfg.mode == "hybrid" else 1.0
        out = window_attention(rotated_query, rotated_keys, values, keep, cfg.block_size, cfg.backend)
        proj = _linear_proj(attn)
        if cfg.mode == "hybrid" and proj is not None and cache.linear is not None and cache.linear.count:
            # Training-file readout psi(q) = RoPE(phi(q)): see docs/streaming.md for why not the inference file's RoPE(q).
            numerator_query = self._rotate(relu_feature(query), positions[-count:], layout)
            out = out + proj(linear_readout(cache.linear, numerator_query, query, cfg.eps).to(proj.weight.dtype)).to(out.dtype)
        if state.commit:
            self._commit(cache, key, value, current, layout)
        return out

    def _commit(self, cache: LayerCache, key, value, current: list[int], layout: VideoLayout) -> None:
        """Append the chunk (un-rotated) and evict the oldest non-sink frames that the next chunk's window drops."""
        cfg = self.config
        cache.key = key if cache.key is None else torch.cat([cache.key, key], dim=-2)
        cache.value = value if cache.value is None else torch.cat([cache.value, value], dim=-2)
        cache.frames = cache.frames + current
        if cfg.mode == "dense":
            return
        count = len(current)
        keep_past = cfg.window_frames - cfg.sink_frames - count
        movable = [i for i, f in enumerate(cache.frames) if f >= cfg.sink_frames]
        evict = movable[: max(0, len(movable) - keep_past)]
        if not evict:
            return
        tpf = layout.tokens_per_frame
        evicted = set(evict)
        keep_idx = [i for i in range(len(cache.frames)) if i not in evicted]
        gone, stay = _frame_tokens(evict, tpf, key.device), _frame_tokens(keep_idx, tpf, key.device)
        if cfg.mode == "hybrid":
            evicted_frames = [cache.frames[i] for i in evict]
            next_end = current[-1] + 1 + count
            positions = self.positions(evicted_frames, next_end)
            k_gone, v_gone = cache.key.index_select(-2, gone), cache.value.index_select(-2, gone)
            if cache.linear is None:
                batch, heads, _, dim = key.shape
                cache.linear = LinearAttentionState.zeros(batch, heads, dim, value.shape[-1], device=key.device)
            cache.linear = update_linear_state(cache.linear, k_gone, v_gone, self._rotate(k_gone, positions, layout))
        cache.key, cache.value = cache.key.index_select(-2, stay), cache.value.index_select(-2, stay)
        cache.frames = [cache.frames[i] for i in keep_idx]

    def attend(self, query, key, value, layout, key_valid, family):
        """Stateless softmax branch on rotated (B, H, N, D) tensors (queries are the last ones): for benchmarks."""
        if key_valid is not None:
            raise ValueError("HybridAttnProcessor.attend does not take a key mask (Wan self-attention has none)")
        keep = self.config.sparse_keep if self.config.mode == "hybrid" else 1.0
        return window_attention(query, key, value, keep, self.config.block_size, self.config.backend)


def add_linear_proj(transformer: torch.nn.Module) -> int:
    """Give every Wan self-attention a zero-initialised ``linear_proj = nn.Linear(head_dim, head_dim)`` if it has none.

    Zero after construction, so an untrained hybrid model equals the sliding-window model. Returns how many were added.
    """
    added = 0
    for module in transformer.modules():
        if isinstance(module, WanAttention) and not module.is_cross_attention and _linear_proj(module) is None:
            head_dim = module.inner_dim // module.heads
            weight = module.to_q.weight
            proj = torch.nn.Linear(head_dim, head_dim, device=weight.device, dtype=weight.dtype)
            torch.nn.init.zeros_(proj.weight)
            torch.nn.init.zeros_(proj.bias)
            module.linear_proj = proj
            added += 1
    return added


def apply_hybrid_attention(transformer: torch.nn.Module, config: HybridConfig | None = None) -> StreamState:
    """Streaming attention on a Wan transformer; returns the :class:`StreamState` that drives it.

    Hybrid mode adds a zero ``linear_proj`` to each self-attention (kept if one is already there, e.g. trained).
    """
    config = config or HybridConfig()
    state = StreamState(config)

    def make(index: int, family: str, context: AttentionContext):
        if family != "wan":
            raise ValueError(f"streaming attention supports Wan transformers only (family 'wan'), got {family!r}")
        return HybridAttnProcessor(config, state=state, layer_idx=index, context=context)

    install_processors(transformer, make)
    cross = [m for m in transformer.modules() if isinstance(m, WanAttention) and m.is_cross_attention]
    for index, module in enumerate(cross):
        module.set_processor(HybridAttnProcessor(config, state=state, layer_idx=index))
    if config.mode == "hybrid":
        add_linear_proj(transformer)
    return state


def remove_hybrid_attention(transformer: torch.nn.Module, keep_linear_proj: bool = False) -> None:
    """Stock processors back on self- and cross-attention, hook removed, ``linear_proj`` deleted unless kept."""
    remove_processors(transformer)
    for module in transformer.modules():
        if isinstance(module, WanAttention):
            if module.is_cross_attention:
                module.set_processor(WanAttnProcessor())
            elif not keep_linear_proj and _linear_proj(module) is not None:
                del module.linear_proj


def cache_frames(state: StreamState) -> dict[object, list[int]]:
    """The absolute frames each self-attention layer holds in its cache (for inspection and tests)."""
    return {key: list(cache.frames) for key, cache in state.layers.items()}


__all__ = [
    "HybridAttnProcessor",
    "HybridConfig",
    "LayerCache",
    "MODES",
    "StreamState",
    "add_linear_proj",
    "apply_hybrid_attention",
    "cache_frames",
    "remove_hybrid_attention",
    "topk_window_plan",
    "wan_rope_table",
    "window_attention",
]
