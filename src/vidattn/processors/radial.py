"""Radial attention as a diffusers attention processor (Wan, HunyuanVideo, CogVideoX)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..context import AttentionContext
from ..kernels import BACKENDS, block_sparse_attention
from ..layout import VideoLayout
from ..patterns.plan import BlockPlan
from ..patterns.radial import RadialPattern, radial_plan
from .base import ConfiguredAttnProcessor
from .install import install_configured, remove_processors

# The official code pins the sink on for Wan and removed it for HunyuanVideo (commit 2f61c30); SkyReels-V2 is a Wan,
# HunyuanVideo 1.5, LTX-2 and Cosmos follow HunyuanVideo.
DEFAULT_SINK = {"wan": True, "skyreels": True, "hunyuan": False, "hunyuan15": False, "cogvideox": False, "ltx2": False, "cosmos": False}


@dataclass(frozen=True)
class RadialConfig:
    """Radial attention settings. Paper defaults for Wan 1x: decay 0.2, dense_steps 12, dense_layers 1."""

    decay: float = 1.0
    block_size: int = 128
    sink: bool | None = None
    dense_steps: int = 0
    dense_layers: int = 0
    backend: str = "auto"
    family: str | None = None

    def __post_init__(self) -> None:
        RadialPattern(decay=self.decay, block_size=self.block_size)  # validates decay and block_size
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.sink not in (None, True, False):
            raise ValueError(f"sink must be True, False or None (family default), got {self.sink!r}")

    def pattern(self, family: str) -> RadialPattern:
        sink = DEFAULT_SINK[family] if self.sink is None else self.sink
        return RadialPattern(decay=self.decay, block_size=self.block_size, sink=sink)


class RadialAttnProcessor(ConfiguredAttnProcessor):
    """Drop-in Radial attention: ``transformer.set_attn_processor(RadialAttnProcessor(decay=0.2))``."""

    config_class = RadialConfig

    def plan(self, layout: VideoLayout, family: str = "wan", device: torch.device | str = "cpu") -> BlockPlan:
        """The (cached) block plan for ``layout``; its ``.sparsity`` is the realised tile sparsity."""
        pattern = self.config.pattern(family)
        key = ("radial", layout, pattern, str(device))
        return self.cached_plan(key, lambda: radial_plan(layout, pattern, device))

    def density(self, query, key, layout, family):
        return self.plan(layout, family, query.device).tile_density

    def attend(self, query, key, value, layout, key_valid, family):
        plan = self.plan(layout, family, query.device)
        return block_sparse_attention(query, key, value, plan, key_valid, backend=self.config.backend)


def apply_radial_attention(transformer: torch.nn.Module, config: RadialConfig | None = None) -> AttentionContext:
    """Radial attention on every video self-attention layer, with the hook for dense warm-up steps/layers."""
    return install_configured(transformer, RadialAttnProcessor, config or RadialConfig())


def remove_radial_attention(transformer: torch.nn.Module) -> None:
    """Restore the stock processors and remove the hook installed by :func:`apply_radial_attention`."""
    remove_processors(transformer)
