"""The diffusers video transformers vidattn supports, keyed by transformer class, and what it must know of each.

One row per class: the family adapter (``processors/families.py``) that rebuilds its q/k/v, where its video
self-attention modules sit, the stock processor they ship with, and how the latent grid is read. Nothing is
guessed from norms or class-name prefixes; a transformer that is not in the table is refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from diffusers.models.attention_processor import CogVideoXAttnProcessor2_0
from diffusers.models.transformers.cogvideox_transformer_3d import CogVideoXTransformer3DModel
from diffusers.models.transformers.transformer_cosmos import CosmosAttnProcessor2_0, CosmosTransformer3DModel
from diffusers.models.transformers.transformer_hunyuan_video import HunyuanVideoAttnProcessor2_0, HunyuanVideoTransformer3DModel
from diffusers.models.transformers.transformer_hunyuan_video15 import HunyuanVideo15AttnProcessor2_0, HunyuanVideo15Transformer3DModel
from diffusers.models.transformers.transformer_ltx2 import LTX2AudioVideoAttnProcessor, LTX2VideoTransformer3DModel
from diffusers.models.transformers.transformer_skyreels_v2 import SkyReelsV2AttnProcessor, SkyReelsV2Transformer3DModel
from diffusers.models.transformers.transformer_wan import WanAttnProcessor, WanTransformer3DModel
from diffusers.models.transformers.transformer_wan_vace import WanVACETransformer3DModel


@dataclass(frozen=True)
class ModelSpec:
    """What vidattn knows of one transformer class.

    ``video_attention``: regular expressions (full match) of the module paths of its video self-attention;
    every other attention module keeps its stock processor. ``frames_first``: latents arrive as (B, F, C, H, W)
    (CogVideoX) instead of (B, C, F, H, W). ``packed``: latents arrive as a (B, N, C) token sequence and the grid
    comes from the forward's ``num_frames``/``height``/``width`` (LTX-2).
    """

    transformer: type
    family: str
    video_attention: tuple[str, ...]
    stock_processor: type
    frames_first: bool = False
    packed: bool = False
    exact: str = "cross-attention"

    def is_video_attention(self, path: str) -> bool:
        return any(re.fullmatch(pattern, path) for pattern in self.video_attention)


MODELS: tuple[ModelSpec, ...] = (
    ModelSpec(WanTransformer3DModel, "wan", (r"blocks\.\d+\.attn1",), WanAttnProcessor, exact="text/image cross-attention (attn2)"),
    ModelSpec(
        WanVACETransformer3DModel, "wan", (r"blocks\.\d+\.attn1", r"vace_blocks\.\d+\.attn1"), WanAttnProcessor,
        exact="text/image cross-attention (attn2)",
    ),
    ModelSpec(SkyReelsV2Transformer3DModel, "skyreels", (r"blocks\.\d+\.attn1",), SkyReelsV2AttnProcessor, exact="text/image cross-attention (attn2)"),
    ModelSpec(
        HunyuanVideoTransformer3DModel, "hunyuan",
        (r"transformer_blocks\.\d+\.attn", r"single_transformer_blocks\.\d+\.attn"), HunyuanVideoAttnProcessor2_0,
        exact="the text token refiner; joint text tokens are attended densely inside each call",
    ),
    ModelSpec(
        HunyuanVideo15Transformer3DModel, "hunyuan15", (r"transformer_blocks\.\d+\.attn",), HunyuanVideo15AttnProcessor2_0,
        exact="the text token refiner; joint text/image tokens are attended densely inside each call",
    ),
    ModelSpec(
        CogVideoXTransformer3DModel, "cogvideox", (r"transformer_blocks\.\d+\.attn1",), CogVideoXAttnProcessor2_0,
        frames_first=True, exact="joint text tokens are attended densely inside each call",
    ),
    ModelSpec(
        CosmosTransformer3DModel, "cosmos", (r"transformer_blocks\.\d+\.attn1",), CosmosAttnProcessor2_0,
        exact="text (and Cosmos 2.5 image-context) cross-attention (attn2)",
    ),
    ModelSpec(
        LTX2VideoTransformer3DModel, "ltx2", (r"transformer_blocks\.\d+\.attn1",), LTX2AudioVideoAttnProcessor,
        packed=True, exact="audio self-attention, text cross-attention, audio-to-video and video-to-audio attention",
    ),
)

FAMILY_STOCK: dict[str, type] = {spec.family: spec.stock_processor for spec in MODELS}


class UnsupportedModelError(ValueError):
    """A transformer or attention module vidattn has no adapter for."""


def supported_classes() -> str:
    """The supported transformer classes, for error messages and docs."""
    return ", ".join(spec.transformer.__name__ for spec in MODELS)


def find_spec(transformer: torch.nn.Module) -> ModelSpec | None:
    """The table row of ``transformer``'s class (or its nearest supported base class), or None."""
    for cls in type(transformer).__mro__:
        for spec in MODELS:
            if spec.transformer is cls:
                return spec
    return None


def model_spec(transformer: torch.nn.Module) -> ModelSpec:
    """The table row of ``transformer``; an unsupported model raises :class:`UnsupportedModelError`."""
    spec = find_spec(transformer)
    if spec is None and find_spec(getattr(transformer, "_orig_mod", None)) is not None:  # torch.compile's wrapper
        raise UnsupportedModelError(
            f"this is torch.compile's wrapper around a {type(transformer._orig_mod).__name__}: install vidattn on the model "
            "before torch.compile(model), or compile in place with model.compile(fullgraph=True) (docs/compile.md)"
        )
    if spec is None:
        raise UnsupportedModelError(
            f"{type(transformer).__name__} is not a supported video transformer; supported transformer classes: "
            f"{supported_classes()} (supported families: {sorted(FAMILY_STOCK)})"
        )
    check_config(spec, transformer)
    return spec


def check_config(spec: ModelSpec, transformer: torch.nn.Module) -> None:
    """Configurations of a supported class whose attention vidattn cannot reproduce are refused here."""
    config = getattr(transformer, "config", {})
    if spec.family == "ltx2" and config.get("perturbed_attn"):
        raise UnsupportedModelError(
            "LTX2VideoTransformer3DModel with perturbed_attn=True (spatio-temporal guidance) is not supported: its "
            "LTX2PerturbedAttnProcessor skips attention per sample; build the transformer with perturbed_attn=False"
        )


def patch_size_of(config) -> tuple[int, int, int]:
    """(p_t, p_h, p_w): Wan/SkyReels store a tuple, HunyuanVideo/CogVideoX/LTX-2 ``patch_size`` plus ``patch_size_t``."""
    patch = config.get("patch_size")
    if isinstance(patch, (tuple, list)):
        return tuple(int(p) for p in patch)  # type: ignore[return-value]
    patch_t = config.get("patch_size_t") or 1
    return (int(patch_t), int(patch), int(patch))
