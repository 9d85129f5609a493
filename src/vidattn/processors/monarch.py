"""Monarch attention (MonarchRT) as a diffusers attention processor (Wan, HunyuanVideo, CogVideoX)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..checks import check_bool, check_int
from ..kernels.monarch import check_tiling, monarch_attention, monarch_flops
from ..layout import VideoLayout
from .base import MethodAttnProcessor
from .config import MethodConfig


@dataclass(frozen=True)
class MonarchPlan:
    """Monarch's tiling of one layout; ``density`` is its share of dense attention's matmul FLOPs."""

    layout: VideoLayout
    f_tied: int
    h_reduce: int
    w_reduce: int
    density: float


@dataclass(frozen=True)
class MonarchConfig(MethodConfig):
    """MonarchRT (https://arxiv.org/abs/2602.12271) settings. Its released configs use f_tied=1, h_reduce=1, w_reduce=1
    (~95% effective sparsity).

    ``h_reduce``/``w_reduce`` cut each frame into tiles (more compute, less error; exact at ``w_reduce = W`` or
    ``h_reduce = H`` with ``f_tied = 1``); ``f_tied`` ties frames (cheaper, coarser). ``block_causal_frames``
    makes video attention block-causal in chunks of that many latent frames (Self-Forcing uses 3).
    Monarch is one pure-PyTorch kernel (differentiable, any device): its only backend is ``"auto"``.
    """

    f_tied: int = 1
    h_reduce: int = 1
    w_reduce: int = 1
    block_causal_frames: int | None = None
    query_chunk: int | None = None
    checkpoint: bool = False

    backends: ClassVar[tuple[str, ...]] = ("auto",)

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("f_tied", "h_reduce", "w_reduce"):
            check_int(name, getattr(self, name), 1)
        check_int("block_causal_frames", self.block_causal_frames, 1, optional=True)
        check_int("query_chunk", self.query_chunk, 1, optional=True)
        if self.block_causal_frames is not None and self.block_causal_frames % self.f_tied:
            raise ValueError(f"f_tied={self.f_tied} must divide block_causal_frames={self.block_causal_frames}")
        check_bool("checkpoint", self.checkpoint)

    def check(self, layout: VideoLayout) -> None:
        """Raise ``ValueError`` if the tiling does not divide ``layout``'s grid."""
        check_tiling(layout.frames, layout.height, layout.width, self.f_tied, self.h_reduce, self.w_reduce)

    def flops(self, layout: VideoLayout, head_dim: int) -> dict[str, float]:
        """Matmul FLOPs per (batch, head) of Monarch vs dense on ``layout`` (see :func:`monarch_flops`)."""
        return monarch_flops(layout, head_dim, self.f_tied, self.h_reduce, self.w_reduce)


class MonarchAttnProcessor(MethodAttnProcessor):
    """Drop-in Monarch attention: ``transformer.set_attn_processor(MonarchAttnProcessor(h_reduce=2))``."""

    config_class = MonarchConfig

    def __init__(self, config: MonarchConfig | None = None, *, layout: VideoLayout | None = None, **kwargs) -> None:
        super().__init__(config, layout=layout, **kwargs)
        if layout is not None:
            self.config.check(layout)

    def plan(self, query: torch.Tensor, key: torch.Tensor, layout: VideoLayout, family: str) -> MonarchPlan:
        """The tiling for ``layout`` (checked) and its FLOP share; Monarch has no tiles to cache."""
        c = self.config
        c.check(layout)
        return MonarchPlan(layout, c.f_tied, c.h_reduce, c.w_reduce, c.flops(layout, query.shape[-1])["ratio"])

    def attend(self, query, key, value, layout, key_valid, family):
        c = self.config
        return monarch_attention(
            query, key, value, layout, f_tied=c.f_tied, h_reduce=c.h_reduce, w_reduce=c.w_reduce,
            block_causal_frames=c.block_causal_frames, key_valid=key_valid, query_chunk=c.query_chunk, checkpoint=c.checkpoint,
        )
