"""Kernels: compute attention for a BlockPlan (FlexAttention, pure-PyTorch gather, CPU segments, dense SDPA reference).

``backend="auto"`` (``resolve_backend``), from measurements at radial 21x30x52, 2 heads x 128 (docs/benchmarks.md):
* CPU, plan without a token mask -> ``segments``, forward and backward, f32 and bf16. One thread, CPU time:
  forward f32 2.58x dense SDPA (flex 1.42x), bf16 1.72x (flex 1.70x, a tie; flex has no backward and a
  recompile cliff), backward f32 2.27x, bf16 1.36x (flex has no CPU backward; gather's keeps GBs of scores).
* CPU, plan with a token mask (VMoBA, token-level windows) -> ``gather`` when training, else ``flex``.
* other devices -> ``flex`` (``segments`` is CPU only).
"""

from .block_sparse import BACKENDS, block_sparse_attention, plan_token_mask, resolve_backend
from .flex import FlexRecompileLimitError

__all__ = ["BACKENDS", "FlexRecompileLimitError", "block_sparse_attention", "plan_token_mask", "resolve_backend"]
