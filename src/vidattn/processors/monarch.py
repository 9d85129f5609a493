"""Monarch attention (MonarchRT) as a diffusers attention processor (Wan, HunyuanVideo, CogVideoX)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..context import AttentionContext
from ..kernels import BACKENDS
from ..kernels.monarch import check_tiling, monarch_attention, monarch_flops
from ..layout import VideoLayout
from .base import ConfiguredAttnProcessor
from .install import install_configured, remove_processors


def _check_int(name: str, value, low: int, optional: bool = False) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        extra = " or None" if optional else ""
        raise ValueError(f"{name} must be an int >= {low}{extra}, got {value!r}")


@dataclass(frozen=True)
class MonarchConfig:
    """Monarch settings. MonarchRT's released configs use f_tied=1, h_reduce=1, w_reduce=1 (~95% effective sparsity).

    ``h_reduce``/``w_reduce`` cut each frame into tiles (more compute, less error; exact at ``w_reduce = W`` or
    ``h_reduce = H`` with ``f_tied = 1``); ``f_tied`` ties frames (cheaper, coarser). ``block_causal_frames``
    makes video attention block-causal in chunks of that many latent frames (Self-Forcing uses 3).
    ``backend`` is accepted for CLI uniformity and has no effect (Monarch is one pure-PyTorch kernel).
    """

    f_tied: int = 1
    h_reduce: int = 1
    w_reduce: int = 1
    block_causal_frames: int | None = None
    query_chunk: int | None = None
    checkpoint: bool = False
    dense_steps: int = 0
    dense_layers: int = 0
    backend: str = "auto"
    family: str | None = None

    def __post_init__(self) -> None:
        for name in ("f_tied", "h_reduce", "w_reduce"):
            _check_int(name, getattr(self, name), 1)
        _check_int("block_causal_frames", self.block_causal_frames, 1, optional=True)
        _check_int("query_chunk", self.query_chunk, 1, optional=True)
        if self.block_causal_frames is not None and self.block_causal_frames % self.f_tied:
            raise ValueError(f"f_tied={self.f_tied} must divide block_causal_frames={self.block_causal_frames}")
        if self.checkpoint not in (True, False):
            raise ValueError(f"checkpoint must be True or False, got {self.checkpoint!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS} (ignored by Monarch), got {self.backend!r}")

    def check(self, layout: VideoLayout) -> None:
        """Raise ``ValueError`` if the tiling does not divide ``layout``'s grid."""
        check_tiling(layout.frames, layout.height, layout.width, self.f_tied, self.h_reduce, self.w_reduce)

    def flops(self, layout: VideoLayout, head_dim: int) -> dict[str, float]:
        """Matmul FLOPs per (batch, head) of Monarch vs dense on ``layout`` (see :func:`monarch_flops`)."""
        return monarch_flops(layout, head_dim, self.f_tied, self.h_reduce, self.w_reduce)


class MonarchAttnProcessor(ConfiguredAttnProcessor):
    """Drop-in Monarch attention: ``transformer.set_attn_processor(MonarchAttnProcessor(h_reduce=2))``."""

    config_class = MonarchConfig

    def __init__(self, config: MonarchConfig | None = None, *, layout: VideoLayout | None = None, **kwargs) -> None:
        super().__init__(config, layout=layout, **kwargs)
        if layout is not None:
            self.config.check(layout)

    def density(self, query, key, layout, family):
        """Monarch has no tiles: the share of dense attention's matmul FLOPs it spends."""
        return self.config.flops(layout, query.shape[-1])["ratio"]

    def attend(self, query, key, value, layout, key_valid, family):
        c = self.config
        return monarch_attention(
            query, key, value, layout, f_tied=c.f_tied, h_reduce=c.h_reduce, w_reduce=c.w_reduce,
            block_causal_frames=c.block_causal_frames, key_valid=key_valid, query_chunk=c.query_chunk, checkpoint=c.checkpoint,
        )


def apply_monarch_attention(transformer: torch.nn.Module, config: MonarchConfig | None = None) -> AttentionContext:
    """Monarch attention on every video self-attention layer, with the hook for dense warm-up steps/layers."""
    return install_configured(transformer, MonarchAttnProcessor, config or MonarchConfig())


def remove_monarch_attention(transformer: torch.nn.Module) -> None:
    """Restore the stock processors and remove the hook installed by :func:`apply_monarch_attention`."""
    remove_processors(transformer)
