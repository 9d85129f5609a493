"""Radial attention as a diffusers attention processor (Wan, HunyuanVideo, CogVideoX)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..checks import check_bool
from ..kernels import block_sparse_attention
from ..layout import VideoLayout
from ..patterns.plan import BlockPlan
from ..patterns.radial import RadialPattern, radial_plan
from .base import MethodAttnProcessor
from .config import MethodConfig

# The official code pins the sink on for Wan and removed it for HunyuanVideo (commit 2f61c30); SkyReels-V2 is a Wan,
# HunyuanVideo 1.5, LTX-2 and Cosmos follow HunyuanVideo.
DEFAULT_SINK = {"wan": True, "skyreels": True, "hunyuan": False, "hunyuan15": False, "cogvideox": False, "ltx2": False, "cosmos": False}


@dataclass(frozen=True)
class RadialConfig(MethodConfig):
    """Radial attention (Li et al. 2025, https://arxiv.org/abs/2506.19852). Paper defaults for Wan 1x: decay 0.2,
    dense_steps 12 of 50, dense_layers 1. ``sink`` None takes the family's default (on for Wan)."""

    decay: float = 1.0
    block_size: int = 128
    sink: bool | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        RadialPattern(decay=self.decay, block_size=self.block_size)  # validates decay and block_size
        check_bool("sink", self.sink, optional=True, note="None = the family's default")

    def pattern(self, family: str) -> RadialPattern:
        sink = DEFAULT_SINK[family] if self.sink is None else self.sink
        return RadialPattern(decay=self.decay, block_size=self.block_size, sink=sink)


class RadialAttnProcessor(MethodAttnProcessor):
    """Drop-in Radial attention: ``transformer.set_attn_processor(RadialAttnProcessor(decay=0.2))``."""

    config_class = RadialConfig

    def plan(self, query: torch.Tensor, key: torch.Tensor, layout: VideoLayout, family: str) -> BlockPlan:
        """The (cached) block plan for ``layout``; static: q and k only give the device."""
        pattern = self.config.pattern(family)
        device = query.device
        return self.cached_plan(("radial", layout, pattern, str(device)), lambda: radial_plan(layout, pattern, device))

    def attend(self, query, key, value, layout, key_valid, family):
        plan = self.plan(query, key, layout, family)
        return block_sparse_attention(query, key, value, plan, key_valid, backend=self.config.backend)
