"""Install a method's processors on the video self-attention layers of a transformer or of every transformer of a
pipeline (Wan 2.2's ``transformer`` and ``transformer_2``), with one shared step context."""

from __future__ import annotations

from typing import Callable

import torch

from ..context import AttentionContext, attach_context, detach_context
from .families import detect_family, stock_processor


def transformers_of(target) -> list[torch.nn.Module]:
    """The transformers to install on: ``target`` itself if it is a module, else a pipeline's ``transformer*``
    components in name order (``transformer``, ``transformer_2``)."""
    if isinstance(target, torch.nn.Module):
        return [target]
    components = getattr(target, "components", None)
    if isinstance(components, dict):
        found = [m for name, m in sorted(components.items()) if name.startswith("transformer") and isinstance(m, torch.nn.Module)]
        if found:
            return found
    raise ValueError(
        f"expected a diffusers transformer or a pipeline with a transformer, got {type(target).__name__} "
        "(UNet pipelines such as AnimateDiff take BroadWay, not the attention methods)"
    )


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


def install_processors(target, make_processor: Callable[[int, str, AttentionContext], object]) -> AttentionContext:
    """Attach one step context to every transformer of ``target`` and give layer i the processor
    ``make_processor(i, family, context)``. Sharing the context makes ``dense_steps`` count pipeline steps,
    also across Wan 2.2's switch from ``transformer`` to ``transformer_2``."""
    transformers = transformers_of(target)
    layers = [video_attention_layers(t) for t in transformers]  # every check before anything is changed
    context = AttentionContext()
    for transformer, modules in zip(transformers, layers):
        attach_context(transformer, context)
        for index, (_, module, family) in enumerate(modules):
            module.set_processor(make_processor(index, family, context))
    return context


def remove_processors(target) -> None:
    """Undo :func:`install_processors`: stock processors back on the video layers and the hooks removed."""
    for transformer in transformers_of(target):
        for _, module, family in video_attention_layers(transformer):
            module.set_processor(stock_processor(family))
        detach_context(transformer)
