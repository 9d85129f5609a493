"""Dense attention through vidattn's own path (adapter + kernel): the baseline every method is measured against."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..checks import check_int
from ..kernels import block_sparse_attention
from ..layout import VideoLayout
from ..patterns.plan import BlockPlan, full_plan
from .base import MethodAttnProcessor
from .config import MethodConfig


@dataclass(frozen=True)
class DenseConfig(MethodConfig):
    """Full attention; ``backend="dense"`` (SDPA) by default, any block-sparse backend runs the all-tiles plan."""

    block_size: int = 128
    backend: str = field(default="dense", kw_only=True)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("block_size", self.block_size, 1)


class DenseAttnProcessor(MethodAttnProcessor):
    """Full attention on video self-attention via the block-sparse kernels with an all-tiles plan.

    Equals the stock processor to float rounding; used as the dense baseline in benchmarks and tests.
    """

    config_class = DenseConfig

    def plan(self, query: torch.Tensor, key: torch.Tensor, layout: VideoLayout, family: str) -> BlockPlan:
        n, bs, device = layout.total_tokens, self.config.block_size, query.device
        return self.cached_plan(("dense", n, bs, str(device)), lambda: full_plan(n, bs, device))

    def attend(self, query, key, value, layout, key_valid, family):
        return block_sparse_attention(query, key, value, self.plan(query, key, layout, family), key_valid, backend=self.config.backend)
