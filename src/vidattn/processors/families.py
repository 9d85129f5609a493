"""Model-family adapters: build q/k/v exactly like the stock diffusers processors and finish the output.

Each adapter knows one family's token order (text before/after the video), RoPE, norms and output
projection, and which calls are video self-attention. Everything else is delegated to the stock processor.
Which transformer class uses which adapter is the table in :mod:`vidattn.models`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from diffusers.models.attention_processor import Attention
from diffusers.models.embeddings import apply_rotary_emb
from diffusers.models.normalization import RMSNorm
from diffusers.models.transformers.transformer_ltx2 import LTX2Attention, apply_interleaved_rotary_emb, apply_split_rotary_emb
from diffusers.models.transformers.transformer_skyreels_v2 import SkyReelsV2Attention
from diffusers.models.transformers.transformer_wan import WanAttention, _get_qkv_projections

from ..layout import TextPosition, VideoLayout
from ..models import FAMILY_STOCK, UnsupportedModelError, supported_classes

FAMILIES = tuple(FAMILY_STOCK)
# Families whose stock processor takes the RoPE as its fifth positional argument (the others: image_rotary_emb=).
ROPE_POSITIONAL = ("wan", "skyreels", "ltx2")


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


def detect_family(attn: torch.nn.Module, encoder_hidden_states=None, attention_mask=None, rope=None) -> str | None:
    """Family of an attention module a processor was dropped into without ``family=``; None if unknown.

    Model-specific attention classes name their family. diffusers' generic ``Attention`` is shared by many
    models, so only the calls of the supported ones are recognised, all joint text-video self-attention (encoder
    states given, not a cross-attention module): LayerNorm q/k norms with weights (CogVideoX), or RMS q/k norms
    called with a RoPE (HunyuanVideo; HunyuanVideo 1.5 passes a 2-D text mask). LTX-2's attention class serves
    video, audio and audio-video attention alike, so it needs ``family="ltx2"`` (``apply_*`` sets it on the video
    self-attention only). ``apply_*`` never guesses: it takes the family from the model table.
    """
    if isinstance(attn, SkyReelsV2Attention):
        return "skyreels"
    if isinstance(attn, WanAttention):
        return "wan"
    if type(attn) is Attention and encoder_hidden_states is not None and not attn.is_cross_attention:
        if isinstance(attn.norm_q, torch.nn.LayerNorm) and attn.norm_q.weight is not None:
            return "cogvideox"
        if isinstance(attn.norm_q, (RMSNorm, torch.nn.RMSNorm)) and rope is not None:
            return "hunyuan15" if torch.is_tensor(attention_mask) and attention_mask.ndim == 2 else "hunyuan"
    return None


def unsupported_module_error(attn: torch.nn.Module) -> UnsupportedModelError:
    """The error a vidattn processor raises when the attention module calling it belongs to no supported family."""
    hint = ""
    if isinstance(attn, LTX2Attention):
        hint = (
            " LTX2Attention serves video, audio and audio-video attention alike: install with apply_*(transformer, config), "
            "which puts the processor on transformer_blocks.*.attn1 only, or pass family='ltx2' on those modules."
        )
    elif type(attn) is Attention:
        hint = (
            " This diffusers Attention module is not recognisable as the video attention of a supported model (it may be a "
            "UNet's, SD3's, HunyuanVideo's text refiner, or Cosmos' self-attention, which needs family='cosmos'): put vidattn "
            "processors on the video attention only, with apply_*(transformer, config) or "
            "vidattn.processors.video_attention_layers(transformer)."
        )
    return UnsupportedModelError(
        f"a vidattn processor was called by {type(attn).__name__}, which is not the attention of a supported video "
        f"transformer; supported transformer classes: {supported_classes()}.{hint}"
    )


def stock_processor(family: str | None):
    """The diffusers processor a family's video attention modules ship with (exact dense behaviour)."""
    if family not in FAMILY_STOCK:
        raise UnsupportedModelError(f"no stock processor for family {family!r}; supported families: {FAMILIES}")
    return FAMILY_STOCK[family]()


def is_video_self_attention(family: str, attn, encoder_hidden_states) -> bool:
    """Wan/SkyReels: attn1 (no encoder states); LTX-2, Cosmos: calls without encoder states (apply_* installs on attn1 only);
    HunyuanVideo (1.0, 1.5) and CogVideoX: every joint attention is video self-attention."""
    if family in ("wan", "skyreels"):
        return encoder_hidden_states is None and not attn.is_cross_attention
    if family in ("ltx2", "cosmos"):
        return encoder_hidden_states is None
    return True


def layout_from_rope(rope: tuple[torch.Tensor, torch.Tensor] | None, family: str | None = None) -> VideoLayout | None:
    """Recover (frames, height, width) from a frame-major RoPE table with [t | h | w] column groups.

    LTX-2's RoPE (pixel-space coordinates, interleaved axes) is not such a table: None for ``family="ltx2"``.

    ``sin`` of position 0 differs from every other position in every column, so a column first changes at
    the stride of its axis: 1 (width), W (height) or H*W (frames). Returns None when it cannot be known.
    """
    if family == "ltx2" or not isinstance(rope, (tuple, list)) or len(rope) != 2 or not torch.is_tensor(rope[1]):
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
    adapters = {
        "wan": _project_wan, "skyreels": _project_wan, "hunyuan": _project_hunyuan, "hunyuan15": _project_hunyuan15,
        "cogvideox": _project_cogvideox, "ltx2": _project_ltx2, "cosmos": _project_cosmos,
    }
    return adapters[family](attn, hidden_states, encoder_hidden_states, attention_mask, rope)


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
        raise ValueError(
            "Wan/SkyReels-V2 self-attention with an attention_mask (SkyReels-V2 causal diffusion forcing, "
            "num_frame_per_block > 1) is not supported by vidattn processors: use num_frame_per_block=1 (causal_block_size=1)"
        )

    def finish(out: torch.Tensor):
        out = out.transpose(1, 2).flatten(2, 3).type_as(query)
        return attn.to_out[1](attn.to_out[0](out))

    q, k, v = (x.transpose(1, 2) for x in (query, key, value))
    return ProjectedCall(q, k, v, 0, "after", key_valid, finish)


def _project_hunyuan(attn, hidden_states, encoder_hidden_states, attention_mask, rope) -> ProjectedCall:
    key_valid = None
    if attention_mask is not None:
        if attention_mask.dtype != torch.bool or attention_mask.ndim != 4 or attention_mask.shape[-2] != 1:
            raise ValueError("HunyuanVideo attention_mask must be a boolean key mask of shape (B, 1, 1, N)")
        key_valid = attention_mask.reshape(attention_mask.shape[0], -1)
    return _hunyuan_call(attn, hidden_states, encoder_hidden_states, rope, key_valid, zero_masked_queries=False)


def _project_hunyuan15(attn, hidden_states, encoder_hidden_states, attention_mask, rope) -> ProjectedCall:
    """HunyuanVideo 1.5: q/k/v as HunyuanVideo's double stream; the mask is a (B, text) mask of the joint text.

    The stock processor masks padded text tokens as keys and as queries; a query row with no key is zero.
    """
    key_valid = None
    if attention_mask is not None:
        if attention_mask.ndim != 2 or encoder_hidden_states is None or attention_mask.shape[1] != encoder_hidden_states.shape[1]:
            raise ValueError("HunyuanVideo 1.5 attention_mask must be a (B, text tokens) mask of the encoder states")
        video = torch.ones(attention_mask.shape[0], hidden_states.shape[1], dtype=torch.bool, device=attention_mask.device)
        key_valid = torch.cat([video, attention_mask.bool()], dim=1)
    return _hunyuan_call(attn, hidden_states, encoder_hidden_states, rope, key_valid, zero_masked_queries=True)


def _hunyuan_call(attn, hidden_states, encoder_hidden_states, rope, key_valid, zero_masked_queries: bool) -> ProjectedCall:
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

    def finish(out: torch.Tensor):
        if zero_masked_queries and key_valid is not None:
            out = out * key_valid[:, None, :, None].to(out.dtype)
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


def _project_ltx2(attn, hidden_states, encoder_hidden_states, attention_mask, rope) -> ProjectedCall:
    """LTX-2 video self-attention: RMS q/k norms across heads, interleaved or split RoPE, optional per-head gates."""
    if attention_mask is not None:
        raise ValueError("LTX-2 video self-attention with an attention_mask (video_self_attention_mask) is not supported by vidattn processors")
    if attn.inner_kv_dim != attn.inner_dim:
        raise ValueError("LTX-2 video self-attention with grouped key/value heads is not supported by vidattn processors")
    gate_logits = attn.to_gate_logits(hidden_states) if attn.to_gate_logits is not None else None
    query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
    query, key = attn.norm_q(query), attn.norm_k(key)
    if rope is not None:
        rotate = apply_interleaved_rotary_emb if attn.rope_type == "interleaved" else apply_split_rotary_emb
        query, key = rotate(query, rope), rotate(key, rope)
    query, key, value = (x.unflatten(2, (attn.heads, -1)) for x in (query, key, value))

    def finish(out: torch.Tensor):
        out = out.transpose(1, 2).flatten(2, 3).to(query.dtype)
        if gate_logits is not None:
            out = (out.unflatten(2, (attn.heads, -1)) * (2.0 * torch.sigmoid(gate_logits)).unsqueeze(-1)).flatten(2, 3)
        return attn.to_out[1](attn.to_out[0](out))

    q, k, v = (x.transpose(1, 2) for x in (query, key, value))
    return ProjectedCall(q, k, v, 0, "after", None, finish)


def _project_cosmos(attn, hidden_states, encoder_hidden_states, attention_mask, rope) -> ProjectedCall:
    """Cosmos self-attention (attn1): per-head RMS q/k norms, RoPE with (cos, sin) unbound on dim -2, no text."""
    if attention_mask is not None:
        raise ValueError("Cosmos self-attention with an attention_mask is not supported by vidattn processors")
    query, key, value = (proj(hidden_states).unflatten(2, (attn.heads, -1)).transpose(1, 2) for proj in (attn.to_q, attn.to_k, attn.to_v))
    if key.shape[-1] != query.shape[-1]:
        raise ValueError("Cosmos self-attention with grouped key/value heads is not supported by vidattn processors")
    query, key = attn.norm_q(query), attn.norm_k(key)
    if rope is not None:
        query = apply_rotary_emb(query, rope, use_real=True, use_real_unbind_dim=-2)
        key = apply_rotary_emb(key, rope, use_real=True, use_real_unbind_dim=-2)

    def finish(out: torch.Tensor):
        out = out.transpose(1, 2).flatten(2, 3).type_as(query)
        return attn.to_out[1](attn.to_out[0](out))

    return ProjectedCall(query, key, value, 0, "after", None, finish)
