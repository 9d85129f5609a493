"""Kernels: compute attention for a BlockPlan (FlexAttention, pure-PyTorch gather, CPU segments and groups, dense SDPA
reference).

``backend="auto"`` (``resolve_backend``), from measurements at radial 21x30x52, 2 heads x 128 (docs/benchmarks.md):
* a plan that keeps every tile -> ``dense`` (SDPA with the key mask), on every device: it is dense attention.
* CPU, a plan whose mask has at most DENSE_MAX_MASK entries (2,048 tokens) -> ``dense``, SDPA with the plan's additive
  mask memoised on the plan: at a few hundred tokens every sparse kernel costs 3-6x SDPA's time in per-call work
  (radial 5x8x8, 320 tokens: 0.12-0.22 ms vs 0.4-1.0 ms); windows go there before ``rows``, and VMoBA (B x H x N^2
  entries) runs SDPA with its selection's mask instead of ``ranges``.
* CPU, plan without a token mask, training (any dtype) or inference in f32 (any dtype but bf16) -> ``segments``. Two threads, load ~1.5:
  forward f32 2.24x dense SDPA (flex 1.16x), backward f32 2.41x; bf16 backward 1.58x (load ~1, paired strips);
  one thread, CPU time, load ~3: forward f32 2.76x (flex 1.60x), backward f32 2.45x, bf16 1.57-1.88x (flex has
  no CPU backward; gather's keeps GBs of scores).
* CPU bf16 inference -> ``flex``: segments is not robustly faster (one thread, load 3.4: 1.64x vs flex 1.70x best,
  1.75x vs 2.07x median; two threads, load 1.5: 1.74x vs 2.15x; idle runs overlap: 1.71-2.66x vs 1.75-2.94x).
* CPU, VMoBA (a per-query choice of contiguous key ranges, ``resolve_backend(..., ranges=True)``) -> ``ranges``
  (kernels/range_select.py: fused SDPA per (head, range) on the gathered selecting queries, exact token density,
  forward and backward). One thread, CPU time, 1D at 21x30x52: forward bf16 4.61x dense SDPA (flex 0.66x), f32
  4.71x (flex 1.07x); backward bf16 3.68x, f32 4.96x; a training step at 21x15x26: 3.1-4.4x (gather 0.2x).
* CPU, plan without a token mask whose query tiles share their key sets (>= GROUP_MIN_TILES tiles per distinct row:
  sliding tile attention) -> ``groups`` (kernels/groups.py), inference and training. STA 3x3x3 at 21x30x52, two
  threads: forward bf16 7.1x dense SDPA (flex 4.3x, segments 2.0x), f32 8.2x (flex 3.1x, segments 3.2x); backward
  bf16 6.3x, f32 8.3x (segments 2.1x / 3.1x).
* CPU, token-level windows (a window whose key frames count the same for every query frame, no masked video key)
  -> ``rows`` (kernels/window_rows.py: bands of query rows and blocks of columns against frame-stacked key rows and
  columns, one fused SDPA call per band with an additive mask), inference and training; the window processor decides
  this (``WINDOW_BACKENDS``). Window (1, 7, 13) at 21x30x52, two threads: forward bf16 5.0-7.6x dense SDPA (flex
  2.9-4.4x), f32 9.3x (flex 3.5-4.3x); backward bf16 6.6x, f32 8.2x (flex has none on the CPU; gather keeps GBs of
  scores).
* CPU, other plans with a token mask -> ``gather`` when training, else ``flex``.
* other devices -> ``flex`` (``segments`` and ``ranges`` are CPU only).
"""

from .block_sparse import BACKENDS, RANGE_BACKENDS, block_sparse_attention, plan_token_mask, resolve_backend
from .flex import FlexRecompileLimitError
from .range_select import range_select_attention
from .window_rows import RowBands, row_band_attention, row_bands

__all__ = [
    "BACKENDS",
    "FlexRecompileLimitError",
    "RANGE_BACKENDS",
    "RowBands",
    "block_sparse_attention",
    "plan_token_mask",
    "range_select_attention",
    "resolve_backend",
    "row_band_attention",
    "row_bands",
]
