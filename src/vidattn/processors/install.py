"""Install a method's processors on the video self-attention layers of a transformer or of every transformer of a
pipeline (Wan 2.2's ``transformer`` and ``transformer_2``), with one shared step context."""

from __future__ import annotations

from typing import Callable

import torch

from ..context import AttentionContext, attach_context, detach_context
from ..models import UnsupportedModelError, model_spec
from .base import VideoAttnProcessor
from .families import stock_processor
from .parallel import share_parallel_config


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


def install_processors(target, make_processor: Callable[[int, str, AttentionContext], object]) -> AttentionContext:
    """Attach one step context to every transformer of ``target`` and give layer i the processor
    ``make_processor(i, family, context)``. Sharing the context makes ``dense_steps`` count pipeline steps,
    also across Wan 2.2's switch from ``transformer`` to ``transformer_2``. A vidattn processor made without
    ``family`` is bound to the layer's family from the model table."""
    transformers = transformers_of(target)
    layers = [video_attention_layers(t) for t in transformers]  # every check before anything is changed
    context = AttentionContext()
    for transformer, modules in zip(transformers, layers):
        attach_context(transformer, context)
        for index, (_, module, family) in enumerate(modules):
            processor = make_processor(index, family, context)
            if isinstance(processor, VideoAttnProcessor):
                if processor.family is None:
                    processor.family = family
                elif processor.family != family:
                    raise ValueError(f"a processor for family {processor.family!r} cannot run on {type(transformer).__name__} (family {family!r})")
            module.set_processor(processor)
        share_parallel_config(transformer)  # a model already under context parallelism hands its config to the new processors
    return context


def remove_processors(target) -> None:
    """Undo :func:`install_processors`: stock processors back on the video layers and the hooks removed."""
    for transformer in transformers_of(target):
        for _, module, family in video_attention_layers(transformer):
            module.set_processor(stock_processor(family))
        share_parallel_config(transformer)
        detach_context(transformer)
