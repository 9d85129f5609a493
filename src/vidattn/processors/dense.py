"""Dense attention through vidattn's own path (adapter + kernel): the baseline every method is measured against."""

from __future__ import annotations

from ..kernels import BACKENDS, block_sparse_attention
from ..patterns.plan import full_plan
from .base import VideoAttnProcessor


class DenseAttnProcessor(VideoAttnProcessor):
    """Full attention on video self-attention via the block-sparse kernels with an all-tiles plan.

    Equals the stock processor to float rounding; used as the dense baseline in benchmarks and tests.
    """

    def __init__(self, block_size: int = 128, backend: str = "dense", **kwargs) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        super().__init__(**kwargs)
        self.block_size = block_size
        self.backend = backend

    def attend(self, query, key, value, layout, key_valid, family):
        n = layout.total_tokens
        plan = self.cached_plan(("dense", n, self.block_size, str(query.device)), lambda: full_plan(n, self.block_size, query.device))
        return block_sparse_attention(query, key, value, plan, key_valid, backend=self.backend)
