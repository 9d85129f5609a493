"""Kernels: compute attention for a BlockPlan (FlexAttention, pure-PyTorch gather, dense SDPA reference)."""

from .block_sparse import BACKENDS, block_sparse_attention, plan_token_mask, resolve_backend
from .flex import FlexRecompileLimitError

__all__ = ["BACKENDS", "FlexRecompileLimitError", "block_sparse_attention", "plan_token_mask", "resolve_backend"]
