"""Install a method's processors on a transformer's video self-attention layers, with the context hook."""

from __future__ import annotations

from typing import Callable

import torch

from ..context import AttentionContext, attach_context, detach_context
from .families import detect_family, stock_processor
from .parallel import share_parallel_config


def video_attention_layers(transformer: torch.nn.Module) -> list[tuple[str, torch.nn.Module, str]]:
    """(name, module, family) of each video self-attention layer, in layer order.

    Wan: ``blocks.i.attn1``; HunyuanVideo: double-stream then single-stream ``attn`` (0-19, 20-59);
    CogVideoX: ``transformer_blocks.i.attn1``. Text-only attention (HunyuanVideo's refiner) is skipped.
    """
    layers = []
    for name, module in transformer.named_modules():
        family = detect_family(module)
        if family is None or (family in ("wan", "cogvideox") and not name.endswith("attn1")):
            continue
        layers.append((name, module, family))
    if not layers:
        raise ValueError(
            f"{type(transformer).__name__} has no supported video attention; supported families: Wan "
            "(WanTransformer3DModel and variants), HunyuanVideo, CogVideoX"
        )
    return layers


def install_processors(transformer: torch.nn.Module, make_processor: Callable[[int, str, AttentionContext], object]) -> AttentionContext:
    """Attach the context hook and give layer i the processor ``make_processor(i, family, context)``."""
    layers = video_attention_layers(transformer)
    context = attach_context(transformer)
    for index, (_, module, family) in enumerate(layers):
        module.set_processor(make_processor(index, family, context))
    share_parallel_config(transformer)  # a model already under context parallelism hands its config to the new processors
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
    share_parallel_config(transformer)
    detach_context(transformer)
