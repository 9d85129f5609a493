"""Streaming Wan attention over a rolling KV cache: sink + sliding window (Self-Forcing) and Hybrid Forcing.

Each Wan self-attention layer reads a cache of *un-rotated* keys and values of past chunks: the first
``sink_frames`` frames are pinned, the oldest other frames are evicted once the window is full. RoPE is
re-applied on every call with positions kept inside the trained range (``max_frames``). In ``"hybrid"`` mode
the window runs block-sparse (mean-pooled ``block_size`` blocks, top ``sparse_keep`` of key blocks per query
block) and evicted frames are folded into a running linear-attention state read out through a per-layer
``linear_proj`` (zero-initialised, so an untrained hybrid model equals the sliding-window model).

Stateful, so deliberately not in the method registry: a call's output depends on the chunks committed before
it, which the registry's stateless contract (one plan per call; bench, eval and LoRA training run calls
independently) cannot express. The cache is a ``vidattn.pipelines.stream_state.StreamState``; the chunk's
first frame and the commit pass come from the :class:`~vidattn.context.AttentionContext` (``context.call``).
Install with ``vidattn.pipelines.stream_state.apply_streaming_attention`` or use ``StreamingWanPipeline``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.models.transformers.transformer_wan import WanAttnProcessor

from ..checks import check_choice, check_int, check_number
from ..context import AttentionContext
from ..kernels import BACKENDS, block_sparse_attention
from ..kernels.linear_state import LinearAttentionState, linear_readout, relu_feature, update_linear_state
from ..layout import VideoLayout
from ..patterns.streaming import frame_tokens, frames_to_evict, rope_positions, topk_window_plan
from .base import VideoAttnProcessor
from .compiled import SCALAR, owner_call
from .config import config_with_overrides
from .families import _wan_rope, detect_family, is_video_self_attention, project
from .parallel import refuse_parallel

MODES = ("hybrid", "window", "dense")


@dataclass(frozen=True)
class StreamingConfig:
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
        check_choice("mode", self.mode, MODES)
        check_int("sink_frames", self.sink_frames, 0)
        check_int("window_frames", self.window_frames, 1)
        check_int("block_size", self.block_size, 1)
        check_int("max_frames", self.max_frames, 1)
        if self.sink_frames >= self.window_frames:
            raise ValueError(
                f"sink_frames ({self.sink_frames}) must be smaller than window_frames ({self.window_frames}): "
                "the window holds the sink plus at least one chunk"
            )
        if self.window_frames > self.max_frames:
            raise ValueError(f"window_frames ({self.window_frames}) must be <= max_frames ({self.max_frames}) so positions stay in range")
        check_number("sparse_keep", self.sparse_keep, 0, 1, low_open=True)
        check_choice("backend", self.backend, BACKENDS)
        check_number("eps", self.eps, 0, low_open=True)

    @classmethod
    def from_attention(cls, attention: "StreamingConfig | str") -> "StreamingConfig":
        """``"hybrid"``, ``"window"``, ``"dense"`` or a config (returned as is)."""
        if isinstance(attention, StreamingConfig):
            return attention
        if attention in MODES:
            return cls(mode=attention)
        raise ValueError(f"attention must be a StreamingConfig or one of {MODES}, got {attention!r}")

    def check_chunk(self, frames_per_chunk: int) -> None:
        """A chunk must fit in the window next to the sink."""
        check_int("frames_per_chunk", frames_per_chunk, 1)
        if self.mode != "dense" and self.window_frames - self.sink_frames < frames_per_chunk:
            raise ValueError(
                f"window_frames ({self.window_frames}) must hold sink_frames ({self.sink_frames}) plus one chunk "
                f"(frames_per_chunk={frames_per_chunk}); raise window_frames or lower frames_per_chunk"
            )
        if self.mode != "dense" and frames_per_chunk > self.max_frames:
            raise ValueError(f"frames_per_chunk ({frames_per_chunk}) must be <= max_frames ({self.max_frames})")


def topk_window_attention(
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


def linear_proj_of(attn: torch.nn.Module):
    """The Hybrid Forcing ``linear_proj`` attached to a Wan self-attention, or None."""
    return getattr(attn, "linear_proj", None)


class StreamingAttnProcessor(VideoAttnProcessor):
    """Streaming Wan attention processor (self-attention over the rolling cache; cross-attention with cached K/V).

    ``state``: the stream's caches (``StreamState``: ``layer(key)``, ``cross``, ``prompt_version``, ``rope(...)``);
    ``context``: the transformer's :class:`AttentionContext`, whose ``frame`` and ``commit`` say which chunk this
    call is and whether it writes the cache (without one, every call is a chunk at frame 0 that never commits).
    ``attend`` alone (benchmarks) needs no state.
    """

    def __init__(
        self,
        config: StreamingConfig | None = None,
        *,
        state: Any = None,
        layout: VideoLayout | None = None,
        layer_idx: int | None = None,
        context: AttentionContext | None = None,
        **overrides,
    ) -> None:
        config = config_with_overrides(StreamingConfig, config, overrides, "StreamingAttnProcessor")
        super().__init__(family="wan", layout=layout, layer_idx=layer_idx, context=context)
        self.config = config
        self.state = state

    # -- routing -------------------------------------------------------------------------------------
    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None, **kwargs):
        refuse_parallel(self, "StreamingAttnProcessor (streaming: rolling K/V cache per chunk)")
        if detect_family(attn) != "wan":
            raise ValueError(f"StreamingAttnProcessor supports Wan attention only (family 'wan'), got {type(attn).__name__}")
        if self.state is None:
            raise ValueError("StreamingAttnProcessor needs state= (a StreamState): use apply_streaming_attention(transformer, config)")
        cache_key = self.layer_idx if self.layer_idx is not None else id(attn)
        if not is_video_self_attention("wan", attn, encoder_hidden_states):
            return self._cross_attention(attn, hidden_states, encoder_hidden_states, attention_mask, cache_key)
        call = project("wan", attn, hidden_states, None, attention_mask, None)  # un-rotated q, k, v
        if torch.compiler.is_compiling():
            return call.finish(self._compiled_stream_attend(attn, call, rotary_emb))
        layout = self.resolve_layout("wan", rotary_emb, call.query.shape[-2])
        out = self.stream_attend(attn, call.query, call.key, call.value, layout, cache_key)
        return call.finish(out)

    def _cross_attention(self, attn, hidden_states, encoder_hidden_states, attention_mask, cache_key):
        """Text cross-attention with K/V computed once per prompt (``state.new_prompt()`` invalidates them)."""
        if attn.add_k_proj is not None or getattr(attn, "fused_projections", False) or attention_mask is not None:
            return WanAttnProcessor()(attn, hidden_states, encoder_hidden_states, attention_mask, None)
        # Compiled: K/V in the graph on every call (the cache is Python state; the values are the same).
        version = None if torch.compiler.is_compiling() else self.state.prompt_version
        signature = (version, tuple(encoder_hidden_states.shape), encoder_hidden_states.dtype, encoder_hidden_states.device)
        entry = None if version is None else self.state.cross.get(cache_key)
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
        """RoPE frame positions: absolute in dense mode, else relative (see :func:`~vidattn.patterns.streaming.rope_positions`)."""
        cfg = self.config
        return rope_positions(frames, query_end, cfg.sink_frames, cfg.max_frames, relative=cfg.mode != "dense")

    def _rotate(self, x: torch.Tensor, positions: list[int], layout: VideoLayout) -> torch.Tensor:
        cos, sin = self.state.rope(positions, layout.height, layout.width, x.shape[-1], x.device)
        return _wan_rope(x, cos, sin)

    # -- attention -----------------------------------------------------------------------------------
    def stream_attend(self, attn, query, key, value, layout: VideoLayout, cache_key) -> torch.Tensor:
        """One chunk's queries over [cached window | chunk] plus, in hybrid mode, the linear readout."""
        proj = linear_proj_of(attn)
        out, readout = self._stream_core(query, key, value, layout, cache_key, with_readout=proj is not None)
        if readout is not None:
            out = out + proj(readout.to(proj.weight.dtype)).to(out.dtype)
        return out

    def _compiled_stream_attend(self, attn, call, rope) -> torch.Tensor:
        """Under torch.compile: the cache, RoPE, attention, linear readout and commit in one opaque op
        (``vidattn::owner_call``, :meth:`run_op`); ``linear_proj`` stays in the graph, gated by the op (0 while the
        state is empty, as the eager path skips it)."""
        if self.layer_idx is None:
            raise ValueError("torch.compile of StreamingAttnProcessor needs layer_idx=: install with apply_streaming_attention(transformer, config)")
        if not (isinstance(rope, (tuple, list)) and len(rope) == 2):
            raise ValueError("torch.compile of StreamingAttnProcessor needs the Wan transformer's (cos, sin) RoPE tables")
        proj = linear_proj_of(attn) if self.config.mode == "hybrid" else None
        token = None if self.context is None else self.context.token
        inputs = [call.query, call.key, call.value, rope[0], rope[1]]
        if proj is None:
            return owner_call(self, "stream", inputs, [2], token)[0]
        out, readout, gate = owner_call(self, "stream_readout", inputs, [2, 2, SCALAR], token)
        return out + gate * proj(readout.to(proj.weight.dtype)).to(out.dtype)

    def run_op(self, what: str, inputs: list) -> list[torch.Tensor]:
        """The compiled call's stream step (``vidattn::owner_call``): ``"stream"`` -> [out]; ``"stream_readout"`` ->
        [out, linear readout, gate] with gate 1 if the linear state holds frames, else 0 (and a zero readout)."""
        query, key, value, cos, sin = inputs
        layout = self.resolve_layout("wan", (cos, sin), query.shape[-2])
        with_readout = what == "stream_readout"
        out, readout = self._stream_core(query, key, value, layout, self.layer_idx, with_readout)
        if not with_readout:
            return [out]
        gate = query.new_tensor(0.0 if readout is None else 1.0)
        return [out, torch.zeros_like(value) if readout is None else readout.to(value.dtype), gate]

    def _stream_core(self, query, key, value, layout: VideoLayout, cache_key, with_readout: bool):
        """(softmax output, linear readout or None) of one chunk; commits the chunk on the commit pass."""
        cfg = self.config
        cache = self.state.layer(cache_key)
        first = self.context.frame if self.context is not None else 0
        commit = self.context.commit if self.context is not None else False
        count = layout.frames
        current = list(range(first, first + count))
        if cache.frames and cache.frames[-1] >= first:
            raise ValueError(
                f"chunk starting at frame {first} overlaps cached frames (last {cache.frames[-1]}): advance "
                "context.call(frame=...) past committed chunks, or state.reset() to start a new stream"
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
        out = topk_window_attention(rotated_query, rotated_keys, values, keep, cfg.block_size, cfg.backend)
        readout = None
        if cfg.mode == "hybrid" and with_readout and cache.linear is not None and cache.linear.count:
            # Training-file readout psi(q) = RoPE(phi(q)): see docs/streaming.md for why not the inference file's RoPE(q).
            numerator_query = self._rotate(relu_feature(query), positions[-count:], layout)
            readout = linear_readout(cache.linear, numerator_query, query, cfg.eps)
        if commit:
            self._commit(cache, key, value, current, layout)
        return out, readout

    def _commit(self, cache, key, value, current: list[int], layout: VideoLayout) -> None:
        """Append the chunk (un-rotated) and evict the oldest non-sink frames that the next chunk's window drops."""
        cfg = self.config
        # Copies, never the call's own tensors: a compiled graph may reuse their memory after the op.
        cache.key = key.clone() if cache.key is None else torch.cat([cache.key, key], dim=-2)
        cache.value = value.clone() if cache.value is None else torch.cat([cache.value, value], dim=-2)
        cache.frames = cache.frames + current
        if cfg.mode == "dense":
            return
        count = len(current)
        evict = frames_to_evict(cache.frames, cfg.sink_frames, cfg.window_frames - cfg.sink_frames - count)
        if not evict:
            return
        tpf = layout.tokens_per_frame
        evicted = set(evict)
        keep_idx = [i for i in range(len(cache.frames)) if i not in evicted]
        gone, stay = frame_tokens(evict, tpf, key.device), frame_tokens(keep_idx, tpf, key.device)
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
            raise ValueError("StreamingAttnProcessor.attend does not take a key mask (Wan self-attention has none)")
        keep = self.config.sparse_keep if self.config.mode == "hybrid" else 1.0
        return topk_window_attention(query, key, value, keep, self.config.block_size, self.config.backend)
