"""The video self-attention of a vidattn processor under ``torch.compile``: one custom op, run eagerly at run time.

Everything that depends on data or on per-call Python state (the denoising step for dense warm-up, the grid read
off the RoPE table, plan building and its caches, VMoBA's selection, the kernel choice) happens inside the op's
body, so a compiled transformer holds one graph for every step: dynamo sees q/k/v in and the output out. The op
takes the context hook's token, so it runs after the hook's own op recorded this call (docs/compile.md).
"""

from __future__ import annotations

from typing import Any

import torch

from ..opaque import OPAQUE_OBJECTS, OpHandle, require_opaque_objects
from .families import ProjectedCall
from .parallel import dense_attend


def _video_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    key_valid: torch.Tensor | None,
    rope_cos: torch.Tensor | None,
    rope_sin: torch.Tensor | None,
    token: torch.Tensor | None,
    text: int,
    text_position: str,
    family: str,
    processor: OpHandle,
) -> torch.Tensor:
    """The processor's attention for this call, decided at run time exactly as the eager path decides it."""
    owner = processor.owner
    rope = None if rope_cos is None else (rope_cos, rope_sin)
    if owner.is_dense_now():  # dense warm-up: the stock processor's SDPA on the same q/k/v
        return dense_attend(query, key, value, None, key_valid, family).contiguous()
    layout = owner.resolve_layout(family, rope, query.shape[-2] - text).with_text(text, text_position)
    return owner.attend(query, key, value, layout, key_valid, family).contiguous()


def _video_attention_fake(query, key, value, key_valid, rope_cos, rope_sin, token, text, text_position, family, processor) -> torch.Tensor:
    return query.new_empty((*query.shape[:-1], value.shape[-1]))


video_attention = None
if OPAQUE_OBJECTS:
    video_attention = torch.library.custom_op("vidattn::video_attention", _video_attention, mutates_args=())
    video_attention.register_fake(_video_attention_fake)


def compiled_attention(processor: Any, call: ProjectedCall, family: str, rope: Any) -> torch.Tensor:
    """``processor``'s attention output for a projected call, as one opaque op of the graph being traced."""
    require_opaque_objects()
    if torch.is_grad_enabled() and any(x.requires_grad for x in (call.query, call.key, call.value)):
        raise RuntimeError(
            "a compiled model with vidattn processors runs inference only (the attention op has no backward): call it "
            "under torch.no_grad() / torch.inference_mode(), or train without torch.compile"
        )
    cos, sin = rope if isinstance(rope, (tuple, list)) and len(rope) == 2 and all(torch.is_tensor(r) for r in rope) else (None, None)
    context = processor.context
    token = None if context is None else context.token
    return video_attention(
        call.query, call.key, call.value, call.key_valid, cos, sin, token, call.text, call.text_position, family, processor.handle
    )
