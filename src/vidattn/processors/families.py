"""Model-family adapters: build q/k/v exactly like the stock diffusers processors and finish the output.

Each adapter knows one family's token order (text before/after the video), RoPE, norms and output
projection, and which calls are video self-attention. Everything else is delegated to the stock processor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0, CogVideoXAttnProcessor2_0
from diffusers.models.embeddings import apply_rotary_emb
from diffusers.models.transformers.transformer_hunyuan_video import HunyuanVideoAttnProcessor2_0
from diffusers.models.transformers.transformer_wan import WanAttention, WanAttnProcessor, _get_qkv_projections

from ..layout import TextPosition, VideoLayout

FAMILIES = ("wan", "hunyuan", "cogvideox")


@dataclass
class ProjectedCall:
    """q, k, v as (B, H, N, D) in joint-sequence order, plus what is needed to finish the call."""

    query: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor
    text: int
    text_position: TextPosition
    key_valid: torch.Tensor | None
    finish: Callable[[torch.Tensor], object]


def detect_family(attn: torch.nn.Module) -> str | None:
    """Family of a video attention module, or None for modules that are not (e.g. HunyuanVideo's text refiner)."""
    if isinstance(attn, WanAttention):
        return "wan"
    if isinstance(attn, Attention):
        if isinstance(attn.norm_q, torch.nn.LayerNorm):
            return "cogvideox"
        if attn.norm_q is not None:
            return "hunyuan"
    return None


def stock_processor(family: str | None):
    """The diffusers processor a family's attention modules ship with (exact dense behaviour)."""
    return {"wan": WanAttnProcessor, "hunyuan": HunyuanVideoAttnProcessor2_0, "cogvideox": CogVideoXAttnProcessor2_0}.get(
        family, AttnProcessor2_0
    )()


def is_video_self_attention(family: str, attn, encoder_hidden_states) -> bool:
    """Wan: attn1 (no encoder states). HunyuanVideo and CogVideoX: every joint attention is self-attention."""
    if family == "wan":
        return encoder_hidden_states is None and not attn.is_cross_attention
    return True


def layout_from_rope(rope: tuple[torch.Tensor, torch.Tensor] | None) -> VideoLayout | None:
    """Recover (frames, height, width) from a frame-major RoPE table with [t | h | w] column groups.

    ``sin`` of position 0 differs from every other position in every column, so a column first changes at
    the stride of its axis: 1 (width), W (height) or H*W (frames). Returns None when it cannot be known.
    """
    if not isinstance(rope, (tuple, list)) or len(rope) != 2 or not torch.is_tensor(rope[1]):
        return None
    sin = rope[1]
    sin = sin.reshape(sin.shape[-3], -1) if sin.ndim == 4 else sin.reshape(sin.shape[0], -1)
    tokens = sin.shape[0]
    changed = sin != sin[:1]
    first = torch.where(changed.any(0), changed.float().argmax(0), torch.full_like(changed[0], tokens, dtype=torch.long))
    per_frame = int(first[0])
    lead = int((first != first[0]).long().argmax()) if (first != first[0]).any() else len(first)
    tail = len(first) - (int((first.flip(0) != first[-1]).long().argmax()) if (first != first[-1]).any() else len(first))
    middle = first[lead:tail]
    width = int(middle[0]) if len(middle) else per_frame
    if width >= per_frame:
        width = per_frame
    if tokens % per_frame or per_frame % width:
        return None
    return VideoLayout(tokens // per_frame, per_frame // width, width)


def project(family: str, attn, hidden_states, encoder_hidden_states, attention_mask, rope) -> ProjectedCall:
    """q/k/v of a video self-attention call, reproducing the stock processor up to the attention itself."""
    return {"wan": _project_wan, "hunyuan": _project_hunyuan, "cogvideox": _project_cogvideox}[family](
        attn, hidden_states, encoder_hidden_states, attention_mask, rope
    )


def _wan_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = cos[..., 0::2], sin[..., 1::2]
    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2).type_as(x)


def _project_wan(attn, hidden_states, encoder_hidden_states, attention_mask, rope) -> ProjectedCall:
    query, key, value = _get_qkv_projections(attn, hidden_states, None)
    query, key = attn.norm_q(query), attn.norm_k(key)
    query, key, value = (x.unflatten(2, (attn.heads, -1)) for x in (query, key, value))
    if rope is not None:
        query, key = _wan_rope(query, *rope), _wan_rope(key, *rope)
    key_valid = None
    if attention_mask is not None:
        raise ValueError("Wan self-attention with an attention_mask is not supported by vidattn processors")

    def finish(out: torch.Tensor):
        out = out.transpose(1, 2).flatten(2, 3).type_as(query)
        return attn.to_out[1](attn.to_out[0](out))

    q, k, v = (x.transpose(1, 2) for x in (query, key, value))
    return ProjectedCall(q, k, v, 0, "after", key_valid, finish)


def _project_hunyuan(attn, hidden_states, encoder_hidden_states, attention_mask, rope) -> ProjectedCall:
    single_stream = attn.add_q_proj is None and encoder_hidden_states is not None
    if single_stream:
        hidden_states = torch.cat([hidden_states, encoder_hidden_states], dim=1)
    text = 0 if encoder_hidden_states is None else encoder_hidden_states.shape[1]
    query, key, value = (proj(hidden_states).unflatten(2, (attn.heads, -1)) for proj in (attn.to_q, attn.to_k, attn.to_v))
    if attn.norm_q is not None:
        query = attn.norm_q(query)
    if attn.norm_k is not None:
        key = attn.norm_k(key)
    if rope is not None:
        video = query.shape[1] - (text if single_stream else 0)
        query = torch.cat([apply_rotary_emb(query[:, :video], rope, sequence_dim=1), query[:, video:]], dim=1)
        key = torch.cat([apply_rotary_emb(key[:, :video], rope, sequence_dim=1), key[:, video:]], dim=1)
    if attn.add_q_proj is not None and encoder_hidden_states is not None:
        eq, ek, ev = (
            proj(encoder_hidden_states).unflatten(2, (attn.heads, -1)) for proj in (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj)
        )
        if attn.norm_added_q is not None:
            eq = attn.norm_added_q(eq)
        if attn.norm_added_k is not None:
            ek = attn.norm_added_k(ek)
        query, key, value = torch.cat([query, eq], 1), torch.cat([key, ek], 1), torch.cat([value, ev], 1)
    key_valid = None
    if attention_mask is not None:
        if attention_mask.dtype != torch.bool or attention_mask.shape[-2] != 1:
            raise ValueError("HunyuanVideo attention_mask must be a boolean key mask of shape (B, 1, 1, N)")
        key_valid = attention_mask.reshape(attention_mask.shape[0], -1)

    def finish(out: torch.Tensor):
        out = out.transpose(1, 2).flatten(2, 3).to(query.dtype)
        if encoder_hidden_states is None:
            return out
        out, text_out = out[:, :-text], out[:, -text:]
        if getattr(attn, "to_out", None) is not None:
            out = attn.to_out[1](attn.to_out[0](out))
        if getattr(attn, "to_add_out", None) is not None:
            text_out = attn.to_add_out(text_out)
        return out, text_out

    q, k, v = (x.transpose(1, 2) for x in (query, key, value))
    return ProjectedCall(q, k, v, text, "after", key_valid, finish)


def _project_cogvideox(attn, hidden_states, encoder_hidden_states, attention_mask, rope) -> ProjectedCall:
    if attention_mask is not None:
        raise ValueError("CogVideoX joint attention with an attention_mask is not supported by vidattn processors")
    text = encoder_hidden_states.size(1)
    hidden_states = torch.cat([encoder_hidden_states, hidden_states], dim=1)
    batch = hidden_states.shape[0]
    query, key, value = (proj(hidden_states).unflatten(2, (attn.heads, -1)).transpose(1, 2) for proj in (attn.to_q, attn.to_k, attn.to_v))
    if attn.norm_q is not None:
        query = attn.norm_q(query)
    if attn.norm_k is not None:
        key = attn.norm_k(key)
    if rope is not None:
        query = torch.cat([query[:, :, :text], apply_rotary_emb(query[:, :, text:], rope)], dim=2)
        key = torch.cat([key[:, :, :text], apply_rotary_emb(key[:, :, text:], rope)], dim=2)

    def finish(out: torch.Tensor):
        out = out.transpose(1, 2).reshape(batch, -1, out.shape[1] * out.shape[-1])
        out = attn.to_out[1](attn.to_out[0](out))
        text_out, video_out = out.split([text, out.size(1) - text], dim=1)
        return video_out, text_out

    return ProjectedCall(query, key, value, text, "before", None, finish)
