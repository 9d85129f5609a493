"""Block-sparse attention for plans whose query tiles come in groups that keep the same key tiles (sliding tile
attention: every query tile of a window position sees one box of key tiles): one fused SDPA call per group on the
gathered tokens. Each query row lies in exactly one group, so nothing is merged; padding tokens are dropped from
both sides, so a ragged edge costs nothing. CPU only (``aten._scaled_dot_product_flash_attention_for_cpu``);
exact backward through the fused backward per group. Plans with a ``token_mask`` are refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch

from ..patterns.plan import BlockPlan
from .cpu_flash import accumulate_dtype, attention_with_lse, check_key_valid, flash as _flash, flash_backward as _flash_backward


# ``auto`` takes ``groups`` when a group holds at least this many query tiles on average: the gathered key copies are
# then shared by enough queries (STA 3x3x3 at 21x30x52 has 4.4 and runs 7.1x dense SDPA in bf16, flex 4.3x; radial
# has ~1, a per-tile gather, which ran 0.25x dense).
GROUP_MIN_TILES = 3.0


@dataclass(frozen=True)
class TokenGroup:
    """Query token positions and the key token positions (ascending) all of them attend."""

    queries: torch.Tensor
    keys: torch.Tensor


def token_groups(plan: BlockPlan, tb: int = 0, th: int = 0) -> tuple[TokenGroup, ...]:
    """Groups of the tile matrix ``plan.tiles[tb, th]``: query tiles with identical kept key tiles, as token positions
    below ``seq_len`` that are real (``plan.real_keys``), on the CPU; memoised on the plan."""
    memo = plan.memo.setdefault("groups", {})
    if (tb, th) in memo:
        return memo[(tb, th)]
    tiles = plan.tiles[tb, th].cpu()
    bs, n = plan.block_size, plan.seq_len
    real = torch.arange(plan.num_blocks * bs) < n
    if plan.real_keys is not None:
        real[:n] &= plan.real_keys.cpu()
    offsets = torch.arange(bs)
    rows, which = torch.unique(tiles, dim=0, return_inverse=True)

    def tokens(tile_ids: torch.Tensor) -> torch.Tensor:
        pos = (tile_ids.view(-1, 1) * bs + offsets).flatten()
        return pos[real[pos]]

    groups = []
    for g in range(rows.shape[0]):
        queries, keys = tokens(torch.nonzero(which == g).flatten()), tokens(torch.nonzero(rows[g]).flatten())
        if queries.numel() and keys.numel():
            groups.append(TokenGroup(queries, keys))
    memo[(tb, th)] = result = tuple(groups)
    return result


def tiles_per_group(plan: BlockPlan) -> float:
    """Mean query tiles per group of distinct kept-key rows (over the plan's batch and head tile matrices).

    ``auto`` asks this on every call for plans rebuilt per call (streaming's top-k), so rows are told apart by a
    random-weight code and a 1-D ``unique`` (10x faster than ``unique(dim=0)`` per matrix at 12 x 120 x 120); a
    code collision could only change ``auto``'s choice, never a result (``token_groups`` compares rows exactly)."""
    tiles = plan.tiles.flatten(0, 1).cpu()
    matrices, _, kb = tiles.shape
    nonempty = tiles.any(-1)
    weights = torch.rand(kb, generator=torch.Generator().manual_seed(0), dtype=torch.float64) + 1
    codes = tiles.double() @ weights + torch.arange(matrices, dtype=torch.float64).view(-1, 1) * (2 * kb + 1)
    return float(nonempty.sum()) / max(torch.unique(codes[nonempty]).numel(), 1)


def grouped_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, plan: BlockPlan, key_valid: torch.Tensor | None, scale: float,
    order: torch.Tensor | None = None,
) -> torch.Tensor:
    """Attention of (B, H, N, D) CPU tensors restricted to ``plan`` (no token mask); differentiable. Rows without
    an allowed key, and rows of padding tokens (``plan.real_keys`` False), return zeros.

    ``order``: the plan's position p is token ``order[p]`` of the tensors (positions holding N or more are padding);
    the groups are gathered in that order directly, so the tensors are never permuted. ``key_valid`` is then in the
    tensors' order too."""
    if plan.token_mask is not None:
        raise ValueError("backend='groups' needs a plan without token_mask (tiles all-or-nothing); use 'flex', 'gather' or 'dense'")
    if query.device.type != "cpu":
        raise ValueError(f"backend='groups' runs on the CPU only, got device {query.device}; use 'flex' or 'auto' there")
    batch, heads, n, _ = query.shape
    positions = n if order is None else order.numel()
    if positions != plan.seq_len:
        raise ValueError(f"plan is for {plan.seq_len} positions, got {positions} ({'tokens' if order is None else 'order entries'})")
    valid = check_key_valid(key_valid, batch, n)
    jobs = _jobs(plan, valid, batch, heads, n, None if order is None else order.cpu())
    return attention_with_lse(query, key, value, partial(_forward, jobs=jobs, scale=scale), partial(_backward, jobs=jobs, scale=scale))


def _jobs(plan: BlockPlan, valid: torch.Tensor | None, batch: int, heads: int, n: int, order: torch.Tensor | None) -> list[tuple[slice, slice, list[TokenGroup]]]:
    """(batch slice, head slice, groups) covering the batch and heads, in the tensors' token order; keys masked by
    ``valid`` (checked CPU bool key mask) are dropped."""
    tb, th = plan.tiles.shape[:2]
    if tb not in (1, batch) or th not in (1, heads):
        raise ValueError(f"plan tiles {tuple(plan.tiles.shape)} do not broadcast to batch {batch} x heads {heads}")
    per_batch = tb > 1 or (valid is not None and valid.shape[0] > 1)
    jobs = []
    for b in range(batch) if per_batch else [None]:
        keep = None if valid is None else valid[0 if b is None or valid.shape[0] == 1 else b]
        for h in range(heads) if th > 1 else [None]:
            groups = token_groups(plan, 0 if b is None or tb == 1 else b, 0 if h is None else h)
            if order is not None:
                groups = [_reordered(g, order, n) for g in groups]
            if keep is not None:
                groups = [TokenGroup(g.queries, g.keys[keep[g.keys]]) for g in groups]
            jobs.append((_one(b), _one(h), [g for g in groups if g.keys.numel()]))
    return jobs


def _reordered(group: TokenGroup, order: torch.Tensor, n: int) -> TokenGroup:
    """The group's plan positions as token indices of the tensors (padding positions, >= n, dropped)."""
    queries, keys = order[group.queries], order[group.keys]
    return TokenGroup(queries[queries < n], keys[keys < n])


def _one(index: int | None) -> slice:
    return slice(None) if index is None else slice(index, index + 1)


def _forward(query, key, value, jobs, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    out = torch.zeros_like(query)
    lse = torch.full(query.shape[:-1], float("-inf"), dtype=accumulate_dtype(query.dtype))
    for bsl, hsl, groups in jobs:
        q, k, v, o, l = query[bsl, hsl], key[bsl, hsl], value[bsl, hsl], out[bsl, hsl], lse[bsl, hsl]
        for g in groups:
            piece, piece_lse = _flash(q.index_select(2, g.queries), k.index_select(2, g.keys), v.index_select(2, g.keys), scale=scale)[:2]
            o.index_copy_(2, g.queries, piece)
            l.index_copy_(2, g.queries, piece_lse)
    return out, lse


def _backward(grad_out, query, key, value, out, lse, jobs, scale: float):
    """Each query row's gradient comes from its one group; key gradients are summed over groups in f32."""
    grad_out = grad_out.to(query.dtype)
    dq = torch.zeros_like(query)
    dk, dv = (torch.zeros(x.shape, dtype=accumulate_dtype(x.dtype)) for x in (key, value))
    for bsl, hsl, groups in jobs:
        sel = (bsl, hsl)
        q, k, v, o, l, g_out = query[sel], key[sel], value[sel], out[sel], lse[sel], grad_out[sel]
        dq_, dk_, dv_ = dq[sel], dk[sel], dv[sel]
        for g in groups:
            gq, gk, gv = _flash_backward(
                g_out.index_select(2, g.queries),
                q.index_select(2, g.queries),
                k.index_select(2, g.keys),
                v.index_select(2, g.keys),
                o.index_select(2, g.queries),
                l.index_select(2, g.queries),
                0.0,
                False,
                scale=scale,
            )
            dq_.index_copy_(2, g.queries, gq)
            dk_.index_add_(2, g.keys, gk.to(dk.dtype))
            dv_.index_add_(2, g.keys, gv.to(dv.dtype))
    return dq, dk.to(key.dtype), dv.to(value.dtype)
