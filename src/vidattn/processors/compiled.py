"""vidattn's work that depends on data or on per-call Python state, under ``torch.compile``: custom ops run eagerly
at run time, so a compiled model holds one graph for every step (docs/compile.md).

``vidattn::video_attention``: a processor's video self-attention (dense warm-up, the grid read off the RoPE table,
plan building and its caches, VMoBA's selection, the kernel choice); dynamo sees q/k/v in and the output out.
``vidattn::owner_call``: any other stateful step of a vidattn object (the streaming KV cache, FreeSwim's
record/inject, BroadWay's step gate and map edits): the object's ``run_op(what, inputs)`` at run time, with outputs
shaped like named inputs. Both take the context hook's token, so they run after the hook's own op of that call.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from ..opaque import OPAQUE_OBJECTS, OpHandle, require_opaque_objects
from .families import ProjectedCall

SCALAR = -1  # an ``owner_call`` output given as SCALAR in ``like`` is a 0-d tensor of the first input's dtype and device


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
    rope = None if rope_cos is None else (rope_cos, rope_sin)
    call = ProjectedCall(query, key, value, text, text_position, key_valid, finish=None)  # type: ignore[arg-type]
    return processor.owner.attention_at_run_time(call, family, rope).contiguous()


def _video_attention_fake(query, key, value, key_valid, rope_cos, rope_sin, token, text, text_position, family, processor) -> torch.Tensor:
    return query.new_empty((*query.shape[:-1], value.shape[-1]))


def _shaped_like(inputs: list[torch.Tensor | None], index: int) -> tuple[tuple[int, ...], torch.dtype, torch.device]:
    source = inputs[0 if index == SCALAR else index]
    return (() if index == SCALAR else tuple(source.shape)), source.dtype, source.device


def _owner_call(inputs: list[torch.Tensor | None], token: torch.Tensor | None, what: str, like: list[int], owner: OpHandle) -> list[torch.Tensor]:
    """``owner.run_op(what, inputs)``, checked against the shapes the graph was traced with, made contiguous (like the
    fake outputs); an output that shares memory with an input is copied (a custom op's outputs may not alias its inputs)."""
    outputs = list(owner.owner.run_op(what, inputs))
    if len(outputs) != len(like):
        raise RuntimeError(f"{type(owner.owner).__name__}.run_op({what!r}) returned {len(outputs)} tensors, the graph expects {len(like)}")
    storages = {t.untyped_storage().data_ptr() for t in inputs if t is not None}
    fresh = []
    for out, index in zip(outputs, like):
        shape, dtype, _ = _shaped_like(inputs, index)
        if tuple(out.shape) != shape or out.dtype != dtype:
            raise RuntimeError(
                f"{type(owner.owner).__name__}.run_op({what!r}) returned {tuple(out.shape)} {out.dtype}, the graph expects {shape} {dtype}"
            )
        out = out.contiguous()  # the fake outputs are contiguous: the graph's views assume that layout
        fresh.append(out.clone() if out.untyped_storage().data_ptr() in storages else out)
    return fresh


def _owner_call_fake(inputs, token, what, like, owner) -> list[torch.Tensor]:
    results = []
    for index in like:
        shape, dtype, device = _shaped_like(inputs, index)
        results.append(torch.empty(shape, dtype=dtype, device=device))
    return results


video_attention = owner_op = None
if OPAQUE_OBJECTS:
    video_attention = torch.library.custom_op("vidattn::video_attention", _video_attention, mutates_args=())
    video_attention.register_fake(_video_attention_fake)
    owner_op = torch.library.custom_op("vidattn::owner_call", _owner_call, mutates_args=())
    owner_op.register_fake(_owner_call_fake)


def refuse_training(*tensors: torch.Tensor | None) -> None:
    """The ops have no backward: raise before a compiled forward with gradients builds a graph that cannot train."""
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        raise RuntimeError(
            "a compiled model with vidattn processors runs inference only (the attention op has no backward): call it "
            "under torch.no_grad() / torch.inference_mode(), or train without torch.compile"
        )


def compiled_attention(processor: Any, call: ProjectedCall, family: str, rope: Any) -> torch.Tensor:
    """``processor``'s attention output for a projected call, as one opaque op of the graph being traced; at run time
    the op calls ``processor.attention_at_run_time(call, family, rope)``."""
    require_opaque_objects()
    refuse_training(call.query, call.key, call.value)
    cos, sin = rope if isinstance(rope, (tuple, list)) and len(rope) == 2 and all(torch.is_tensor(r) for r in rope) else (None, None)
    context = processor.context
    token = None if context is None else context.token
    return video_attention(
        call.query, call.key, call.value, call.key_valid, cos, sin, token, call.text, call.text_position, family, processor.handle
    )


def owner_call(
    owner: Any, what: str, inputs: Sequence[torch.Tensor | None], like: Sequence[int], token: torch.Tensor | None = None
) -> list[torch.Tensor]:
    """``owner.run_op(what, inputs)`` as one opaque op of the graph being traced (``owner.handle`` is its
    :class:`OpHandle`). Output i is shaped like ``inputs[like[i]]`` (``SCALAR``: a 0-d tensor); ``token`` orders it
    after the op that made it. The owner must not keep an input tensor itself (a compiled graph may reuse its
    memory): it stores copies."""
    require_opaque_objects()
    refuse_training(*inputs)
    return owner_op(list(inputs), token, what, list(like), owner.handle)
