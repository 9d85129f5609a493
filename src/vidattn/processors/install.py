"""Install a method's processors on a transformer's video self-attention layers, with the context hook."""

from __future__ import annotations

from typing import Callable

import torch

from ..context import AttentionContext, attach_context, detach_context
from ..models import UnsupportedModelError, model_spec
from .base import VideoAttnProcessor
from .families import stock_processor


def video_attention_layers(transformer: torch.nn.Module) -> list[tuple[str, torch.nn.Module, str]]:
    """(name, module, family) of each video self-attention layer, in module order (the table in :mod:`vidattn.models`).

    Wan: ``blocks.i.attn1`` (VACE: then ``vace_blocks.j.attn1``); HunyuanVideo: double-stream then single-stream
    ``attn``; HunyuanVideo 1.5: ``transformer_blocks.i.attn``; CogVideoX and LTX-2: ``transformer_blocks.i.attn1``.
    An unsupported transformer raises :class:`~vidattn.models.UnsupportedModelError` listing the supported classes.
    """
    spec = model_spec(transformer)
    layers = [(name, module, spec.family) for name, module in transformer.named_modules() if spec.is_video_attention(name)]
    if not layers:
        raise UnsupportedModelError(f"{type(transformer).__name__} has no video attention modules at {spec.video_attention}")
    return layers


def install_processors(transformer: torch.nn.Module, make_processor: Callable[[int, str, AttentionContext], object]) -> AttentionContext:
    """Attach the context hook and give layer i the processor ``make_processor(i, family, context)``.

    A vidattn processor made without ``family`` is bound to the layer's family from the model table.
    """
    layers = video_attention_layers(transformer)
    context = attach_context(transformer)
    for index, (_, module, family) in enumerate(layers):
        processor = make_processor(index, family, context)
        if isinstance(processor, VideoAttnProcessor):
            if processor.family is None:
                processor.family = family
            elif processor.family != family:
                raise ValueError(f"a processor for family {processor.family!r} cannot run on {type(transformer).__name__} (family {family!r})")
        module.set_processor(processor)
    return context


def install_configured(transformer: torch.nn.Module, processor_class: Callable[..., object], config: object) -> AttentionContext:
    """``processor_class(config)`` on every video self-attention layer, all sharing one plan cache, plus the step hook."""
    plan_cache: dict = {}
    return install_processors(
        transformer, lambda index, family, context: processor_class(config, layer_idx=index, context=context, plan_cache=plan_cache)
    )


def remove_processors(transformer: torch.nn.Module) -> None:
    """Undo :func:`install_processors`: stock processors back on the video layers and the hook removed."""
    for _, module, family in video_attention_layers(transformer):
        module.set_processor(stock_processor(family))
    detach_context(transformer)
