"""Block-sparse attention for a BlockPlan with five interchangeable backends (and the name of a sixth).

* ``flex``   FlexAttention with a ``BlockMask`` built by ``from_kv_blocks`` (never an N x N evaluation; see flex.py).
* ``gather`` differentiable pure PyTorch: gathers each query tile's key tiles; runs and trains anywhere.
* ``segments`` CPU, plans without a token mask: fused SDPA on views of the plan's rectangles and diagonal strips,
  merged by log-sum-exp (kernels/segments.py); realises the sparsity forward and backward.
* ``groups`` CPU, plans without a token mask whose query tiles share key sets (STA): one fused SDPA call per group
  on gathered tokens, padding dropped (kernels/groups.py); forward and backward.
* ``dense``  SDPA with the plan's explicit token-level mask: the exact reference, and on the CPU the fastest path for
  short sequences (``auto`` up to DENSE_MAX_MASK mask entries, the mask memoised on the plan); a plan that keeps
  every tile needs only the key mask (``auto`` runs such a plan so on every device).

``ranges`` (kernels/range_select.py) runs a per-query selection of contiguous key ranges, not a BlockPlan: the
methods that have one (VMoBA) call it themselves; ``resolve_backend(..., ranges=True)`` names it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..patterns.plan import BlockPlan
from .dense import key_masked_attention
from .flex import flex_plan_attention, sorted_indices
from .groups import GROUP_MIN_TILES, grouped_attention, tiles_per_group
from .segments import segment_attention

BACKENDS = ("auto", "flex", "gather", "segments", "groups", "dense")
# Up to a mask of this many entries (2,048 tokens with one tile matrix; 16 MB in f32) ``auto`` runs a CPU plan as
# SDPA with its additive mask, memoised on the plan. Measured at radial plans, 2-4 heads, two threads
# (docs/benchmarks.md): 320 tokens 0.12-0.22 ms vs 0.4-1.0 ms on segments/flex, 576 tokens 0.4-0.5 vs 0.9-1.6 ms,
# 2,304 tokens 5.8-16 vs 8.7-19 ms; at 4,992 tokens the sparse kernels win. A plan holds one such mask per device and
# dtype it runs in (a processor's plan cache keeps at most 64 plans, one per grid and method setting).
DENSE_MAX_MASK = 2048 * 2048
# Methods whose plan is a per-query choice of contiguous key ranges (VMoBA) can also run ``ranges``
# (kernels/range_select.py, CPU only); ``segments`` never applies to them (their plans carry a token mask).
RANGE_BACKENDS = ("auto", "flex", "gather", "dense", "ranges")


def resolve_backend(backend: str, query: torch.Tensor, plan: BlockPlan | None = None, ranges: bool = False) -> str:
    """``auto``: ``dense`` for a plan that keeps every tile (it is dense attention) and, on the CPU, for a plan whose
    mask has at most DENSE_MAX_MASK entries (:func:`runs_dense`); else on the CPU ``ranges`` where the caller can run
    it (``ranges=True``: VMoBA; measured fastest for inference and training), else for plans without a token mask
    ``groups`` where query tiles share their key sets (GROUP_MIN_TILES: STA), else ``segments`` (measured fastest
    for training and f32 inference; bf16 inference stays on flex; docs/benchmarks.md); otherwise FlexAttention,
    except where it has no backward (CPU training) -> gather. Without ``plan`` a token mask is assumed possible."""
    allowed = RANGE_BACKENDS if ranges else BACKENDS
    if backend not in allowed:
        raise ValueError(f"backend must be one of {allowed}, got {backend!r}")
    if backend == "ranges" and query.device.type != "cpu":
        raise ValueError(f"backend='ranges' runs on the CPU only, got device {query.device}; use 'flex' or 'auto' there")
    if backend != "auto":
        return backend
    if plan is not None and runs_dense(plan, query):
        return "dense"
    if ranges and query.device.type == "cpu":  # a per-(batch, head) selection: its mask has B x H x N^2 entries
        return "dense" if query.shape[0] * query.shape[1] * query.shape[-2] ** 2 <= DENSE_MAX_MASK else "ranges"
    training = torch.is_grad_enabled() and query.requires_grad
    if query.device.type == "cpu" and plan is not None and plan.token_mask is None:
        if _groups_pay(plan):
            return "groups"
        if training or query.dtype != torch.bfloat16:
            return "segments"
    if query.device.type == "cpu" and training:
        return "gather"
    return "flex"


def runs_dense(plan: BlockPlan, query: torch.Tensor) -> bool:
    """``auto``'s choice of ``dense``: a plan that keeps every tile, or a short sequence on the CPU."""
    return plan.keeps_everything or (query.device.type == "cpu" and _mask_entries(plan) <= DENSE_MAX_MASK)


def _mask_entries(plan: BlockPlan) -> int:
    return plan.tiles.shape[0] * plan.tiles.shape[1] * plan.seq_len**2


def _groups_pay(plan: BlockPlan) -> bool:
    """Whether the plan's query tiles share their key sets enough for ``groups`` (memoised on the plan)."""
    if "groups_pay" not in plan.memo:
        plan.memo["groups_pay"] = tiles_per_group(plan) >= GROUP_MIN_TILES
    return plan.memo["groups_pay"]


def block_sparse_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    plan: BlockPlan,
    key_valid: torch.Tensor | None = None,
    backend: str = "auto",
    scale: float | None = None,
    gather_chunk: int = 16,
) -> torch.Tensor:
    """Attention of ``(B, H, N, D)`` tensors restricted to ``plan``; ``key_valid`` is an optional (B, N) key mask.

    A query row with no allowed key returns zeros on every backend.
    """
    if query.shape[-2] != plan.seq_len or key.shape[-2] != plan.seq_len:
        raise ValueError(f"plan is for {plan.seq_len} tokens, got query {query.shape[-2]} and key {key.shape[-2]}")
    scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else scale
    backend = resolve_backend(backend, query, plan)
    if backend == "flex":
        return flex_plan_attention(query, key, value, plan, key_valid, scale)
    if backend == "segments":
        return segment_attention(query, key, value, plan, key_valid, scale)
    if backend == "groups":
        return grouped_attention(query, key, value, plan, key_valid, scale)
    if backend == "gather":
        return _gather(query, key, value, plan, key_valid, scale, gather_chunk)
    if plan.keeps_everything:
        return key_masked_attention(query, key, value, key_valid, scale)
    bias, has_key = _additive_mask(plan, query.device, query.dtype)
    if key_valid is not None:
        bias = bias.masked_fill(~key_valid.to(query.device, torch.bool)[:, None, None, :], float("-inf"))
        has_key = bias.isfinite().any(-1, keepdim=True)
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=bias, scale=scale)
    return out.masked_fill(~has_key, 0.0)


def _additive_mask(plan: BlockPlan, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The plan's (B|1, H|1, N, N) mask as 0 / -inf in ``dtype`` and its (.., N, 1) rows that allow a key; memoised
    on the plan up to DENSE_MAX_MASK entries."""
    memo_key = ("additive_mask", str(device), dtype)
    found = plan.memo.get(memo_key)
    if found is None:
        allowed = dense_token_mask(plan, None, device)
        bias = torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill_(~allowed, float("-inf"))
        found = bias, allowed.any(-1, keepdim=True)
        if _mask_entries(plan) <= DENSE_MAX_MASK:
            plan.memo[memo_key] = found
    return found


def plan_token_mask(plan: BlockPlan, b, h, q_idx, kv_idx) -> torch.Tensor:
    """The plan's token-level rule (tile kept, token mask, real key, key in range) on broadcast index tensors."""
    bs = plan.block_size
    tiles = plan.tiles
    tb = b if tiles.shape[0] > 1 else torch.zeros_like(b)
    th = h if tiles.shape[1] > 1 else torch.zeros_like(h)
    allowed = tiles[tb, th, q_idx // bs, kv_idx // bs] & (kv_idx < plan.seq_len)
    if plan.real_keys is not None:
        allowed = allowed & plan.real_keys[kv_idx.clamp(max=plan.seq_len - 1)]
    if plan.token_mask is not None:
        allowed = allowed & plan.token_mask(b, h, q_idx, kv_idx)
    return allowed


def dense_token_mask(plan: BlockPlan, key_valid: torch.Tensor | None, device) -> torch.Tensor:
    """Materialise the (B|1, H|1, N, N) boolean mask of a plan. For references and small inputs only."""
    n = plan.seq_len
    batch = max(plan.tiles.shape[0], 1 if key_valid is None else key_valid.shape[0])
    b = torch.arange(batch, device=device).view(-1, 1, 1, 1)
    h = torch.arange(plan.tiles.shape[1], device=device).view(1, -1, 1, 1)
    idx = torch.arange(n, device=device)
    mask = plan_token_mask(plan.to(device), b, h, idx.view(1, 1, n, 1), idx.view(1, 1, 1, n))
    if key_valid is not None:
        mask = mask & key_valid.to(device).view(key_valid.shape[0], 1, 1, n)
    return mask


def _pad_tokens(x: torch.Tensor, padded: int) -> torch.Tensor:
    extra = padded - x.shape[-2]
    return x if extra == 0 else F.pad(x, (0, 0, 0, extra))


def _gather(query, key, value, plan: BlockPlan, key_valid, scale: float, chunk: int) -> torch.Tensor:
    batch, heads, n, dim = query.shape
    bs, blocks = plan.block_size, plan.num_blocks
    padded = blocks * bs
    device = query.device
    q, k, v = (_pad_tokens(x, padded) for x in (query, key, value))
    q = q.view(batch, heads, blocks, bs, dim)
    k_flat = k.reshape(batch * heads * blocks, bs, dim)
    v_flat = v.reshape(batch * heads * blocks, bs, dim)

    plan_dev = plan.to(device)
    tiles = plan_dev.tiles.expand(batch, heads, blocks, blocks)
    counts, order = sorted_indices(tiles)
    width = max(int(counts.max().item()), 1)
    order = order[..., :width].long()
    slot_used = torch.arange(width, device=device) < counts.unsqueeze(-1)  # (B, H, Qb, W)
    base = (torch.arange(batch, device=device).view(-1, 1, 1, 1) * heads + torch.arange(heads, device=device).view(1, -1, 1, 1)) * blocks
    if plan_dev.real_keys is not None:
        real = plan_dev.real_keys.view(1, n).expand(batch, n)
        key_valid = real if key_valid is None else key_valid.to(device) & real
    valid = None if key_valid is None else F.pad(key_valid.to(device), (0, padded - n), value=False)
    b_idx = torch.arange(batch, device=device).view(-1, 1, 1, 1, 1)
    h_idx = torch.arange(heads, device=device).view(1, -1, 1, 1, 1)
    offsets = torch.arange(bs, device=device)

    outputs = []
    for start in range(0, blocks, chunk):
        stop = min(start + chunk, blocks)
        sel = order[:, :, start:stop]  # (B, H, c, W)
        k_sel = k_flat[base + sel].flatten(3, 4)  # (B, H, c, W*bs, D)
        v_sel = v_flat[base + sel].flatten(3, 4)
        scores = torch.einsum("bhcqd,bhckd->bhcqk", q[:, :, start:stop], k_sel) * scale
        kv_idx = (sel.unsqueeze(-1) * bs + offsets).flatten(3, 4).unsqueeze(-2)  # (B, H, c, 1, W*bs)
        q_idx = (torch.arange(start, stop, device=device).view(-1, 1) * bs + offsets).view(1, 1, -1, bs, 1)
        allowed = slot_used[:, :, start:stop].repeat_interleave(bs, dim=-1).unsqueeze(-2) & (kv_idx < n)
        if valid is not None:
            allowed = allowed & valid[b_idx, kv_idx]
        if plan_dev.token_mask is not None:
            allowed = allowed & plan_dev.token_mask(b_idx, h_idx, q_idx, kv_idx)
        # A finite fill keeps fully masked rows free of NaN (also in backward); they are zeroed after.
        scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
        probs = torch.softmax(scores, dim=-1) * allowed.any(-1, keepdim=True)
        outputs.append(torch.einsum("bhcqk,bhckd->bhcqd", probs, v_sel))
    out = torch.cat(outputs, dim=2).reshape(batch, heads, padded, dim)
    return out[..., :n, :]
