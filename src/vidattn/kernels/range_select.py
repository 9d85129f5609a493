"""Attention where every query row selects some of a few disjoint contiguous key ranges (MoBA-style), on the CPU.

For each (batch, head, range) the query rows that selected the range are gathered by index (a |rows| x D copy)
and run against the range's keys and values as views (no copy) by ``aten._scaled_dot_product_flash_attention_for_cpu``,
which also returns the log-sum-exp; the pieces are merged per query row by log-sum-exp (online max and rescale)
into an f32 accumulator. The work is exactly the selected (query, key) pairs, with no tile waste. Invalid keys
(``key_valid``) split a range into runs of valid keys. The backward pass runs the fused backward per piece with
the merged output and log-sum-exp gathered at the piece's rows, which gives each piece its exact gradient share.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch

from .cpu_flash import accumulate_dtype, attention_with_lse, flash as _flash, flash_backward as _flash_backward


Ranges = tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class _Piece:
    """Query rows ``rows`` of batch elements [b0, b1) and heads [h0, h1) against the keys of each run in ``runs``."""

    batch: tuple[int, int]
    heads: tuple[int, int]
    rows: torch.Tensor
    runs: Ranges


def range_select_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    selected: torch.Tensor,
    ranges,
    key_valid: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """Attention of (B, H, Nq, D) queries on (B, H, Nk, D) keys/values where query row i of head (b, h) attends the
    keys of range r iff ``selected[b, h, i, r]`` (``selected`` bool (B|1, H|1, Nq, R), ``ranges`` R disjoint
    ``(start, stop)`` key ranges) and, if given, ``key_valid[b, key]`` ((B|1, Nk) bool). CPU only; differentiable.
    A query row with no allowed key returns zeros.
    """
    ranges = check_range_inputs(query, key, value, selected, ranges, key_valid)
    scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else float(scale)
    pieces = _pieces(selected, ranges, key_valid, query.shape[0], query.shape[1])
    return attention_with_lse(query, key, value, partial(_forward, pieces=pieces, scale=scale), partial(_backward, pieces=pieces, scale=scale))


def range_select_reference(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    selected: torch.Tensor,
    ranges,
    key_valid: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """Dense SDPA with the explicit (B|1, H|1, Nq, Nk) token mask of ``selected``/``ranges``: the exact reference."""
    mask = range_token_mask(selected, ranges, key.shape[-2], key_valid)
    out = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scale)
    return out.masked_fill(~mask.any(-1, keepdim=True), 0.0)


def range_token_mask(selected: torch.Tensor, ranges, keys: int, key_valid: torch.Tensor | None = None) -> torch.Tensor:
    """(B|1, H|1, Nq, Nk) bool mask: ``selected[..., i, r]`` for keys in range r, False outside every range."""
    owner = torch.full((keys,), len(ranges), dtype=torch.long, device=selected.device)
    for r, (start, stop) in enumerate(ranges):
        owner[start:stop] = r
    padded = torch.nn.functional.pad(selected, (0, 1), value=False)  # column R: keys in no range
    mask = padded[..., owner]
    if key_valid is not None:
        mask = mask & key_valid.to(mask.device).view(key_valid.shape[0], 1, 1, keys)
    return mask


# ----------------------------------------------------------------------------------------------- checks


def check_range_inputs(query, key, value, selected, ranges, key_valid) -> Ranges:
    """The ranges as a tuple of int pairs; ValueError naming the parameter for anything this kernel cannot run."""
    for name, x in (("query", query), ("key", key), ("value", value)):
        if x.device.type != "cpu":
            raise ValueError(f"backend='ranges' runs on the CPU only, got {name} on {x.device}; use backend='flex' there")
        if x.ndim != 4 or not x.is_floating_point():
            raise ValueError(f"{name} must be a floating (B, H, N, D) tensor, got {x.dtype} {tuple(x.shape)}")
    batch, heads, nq, dim = query.shape
    if key.shape[:2] != (batch, heads) or key.shape[-1] != dim or value.shape[:-1] != key.shape[:-1]:
        raise ValueError(f"key/value must be (B, H, Nk, D) matching query {tuple(query.shape)}, got key {tuple(key.shape)} and value {tuple(value.shape)}")
    if not (query.dtype == key.dtype == value.dtype):
        raise ValueError(f"query, key and value must share a dtype, got {query.dtype}, {key.dtype}, {value.dtype}")
    nk = key.shape[-2]
    try:
        pairs = tuple((int(s), int(e)) for s, e in ranges)
    except (TypeError, ValueError):
        raise ValueError(f"ranges must be (start, stop) int pairs, got {ranges!r}") from None
    last = 0
    for start, stop in sorted(pairs):
        if not 0 <= start <= stop <= nk:
            raise ValueError(f"ranges must satisfy 0 <= start <= stop <= {nk} (keys), got ({start}, {stop})")
        if start < last:
            raise ValueError(f"ranges must be disjoint, got {pairs} (overlap at key {start})")
        last = max(last, stop)
    if not isinstance(selected, torch.Tensor) or selected.dtype != torch.bool or selected.ndim != 4:
        raise ValueError(f"selected must be a bool tensor (B|1, H|1, Nq, R), got {getattr(selected, 'dtype', type(selected))} {tuple(getattr(selected, 'shape', ()))}")
    sb, sh, sq, sr = selected.shape
    if sb not in (1, batch) or sh not in (1, heads) or sq != nq or sr != len(pairs):
        raise ValueError(f"selected must be (B|1, H|1, Nq, R) = ({batch}|1, {heads}|1, {nq}, {len(pairs)}), got {tuple(selected.shape)}")
    if key_valid is not None:
        if key_valid.dtype != torch.bool or key_valid.ndim != 2 or key_valid.shape[0] not in (1, batch) or key_valid.shape[1] != nk:
            raise ValueError(f"key_valid must be a bool tensor (B|1, Nk) = ({batch}|1, {nk}), got {key_valid.dtype} {tuple(key_valid.shape)}")
    return pairs


# ----------------------------------------------------------------------------------------------- planning


def _true_runs(mask: np.ndarray) -> Ranges:
    padded = np.concatenate(([False], mask, [False])).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return tuple(zip(edges[0::2].tolist(), edges[1::2].tolist()))


def _clip(ranges: Ranges, valid: Ranges | None) -> tuple[Ranges, ...]:
    """Per range, its runs of valid keys (the range itself without a key mask)."""
    if valid is None:
        return tuple(((s, e),) if s < e else () for s, e in ranges)
    return tuple(tuple((max(s, vs), min(e, ve)) for vs, ve in valid if max(s, vs) < min(e, ve)) for s, e in ranges)


def _pieces(selected: torch.Tensor, ranges: Ranges, key_valid: torch.Tensor | None, batch: int, heads: int) -> tuple[_Piece, ...]:
    """One piece per (batch group, head group, range) with selecting rows and valid keys. Batch elements (heads)
    share a piece where ``selected`` and ``key_valid`` broadcast over them."""
    sb, sh = selected.shape[0], selected.shape[1]
    columns = selected.to("cpu").permute(0, 1, 3, 2).contiguous()  # (sb, sh, R, Nq): one contiguous row per range
    valid = None if key_valid is None else key_valid.to("cpu")
    if valid is not None and bool(valid.all()):
        valid = None
    per_batch = sb > 1 or (valid is not None and valid.shape[0] > 1)
    batch_groups = [(b, b + 1) for b in range(batch)] if per_batch else [(0, batch)]
    head_groups = [(h, h + 1) for h in range(heads)] if sh > 1 else [(0, heads)]
    if columns.numel() == 0:  # no ranges or no queries
        return ()
    # Every (batch, head, range) row list from one nonzero over the whole table, split by the row counts.
    found = torch.nonzero(columns.view(-1, columns.shape[-1]))[:, 1]
    rows_of = torch.split(found, columns.sum(-1).view(-1).tolist())
    runs_of: dict[int, tuple[Ranges, ...]] = {}
    pieces = []
    for b0, b1 in batch_groups:
        vb = 0 if valid is None or valid.shape[0] == 1 else b0
        if vb not in runs_of:
            runs_of[vb] = _clip(ranges, None if valid is None else _true_runs(valid[vb].numpy()))
        runs = runs_of[vb]
        for h0, h1 in head_groups:
            first = ((b0 if sb > 1 else 0) * sh + (h0 if sh > 1 else 0)) * len(ranges)
            for r, range_runs in enumerate(runs):
                rows = rows_of[first + r]
                if range_runs and rows.numel():
                    pieces.append(_Piece((b0, b1), (h0, h1), rows, range_runs))
    return tuple(pieces)


# ----------------------------------------------------------------------------------------------- forward / backward


def _forward(query, key, value, pieces, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Output (query dtype) and log-sum-exp (accumulate dtype, -inf on rows with no key).

    Each row keeps a reference log-sum-exp (its first piece's); a piece adds ``out * exp(lse - ref)`` with one
    ``index_add_``, and only a piece that exceeds a row's reference by more than ``_RESCALE_MARGIN`` moves it (rare).
    """
    batch, heads, nq, _ = query.shape
    acc_dtype = accumulate_dtype(query.dtype)
    acc = torch.zeros(batch, heads, nq, value.shape[-1], dtype=acc_dtype)
    ref = torch.full((batch, heads, nq), float("-inf"), dtype=acc_dtype)
    weight = torch.zeros(batch, heads, nq, dtype=acc_dtype)
    for piece in pieces:
        sel = (slice(*piece.batch), slice(*piece.heads))
        rows = piece.rows
        q = query[sel].index_select(2, rows)
        for ks, ke in piece.runs:
            out, lse = _flash(q, key[sel][:, :, ks:ke], value[sel][:, :, ks:ke], scale=scale)[:2]
            lse = lse.to(acc_dtype)
            for bi, b in enumerate(range(*piece.batch)):
                for hi, h in enumerate(range(*piece.heads)):
                    _merge(acc[b, h], ref[b, h], weight[b, h], rows, out[bi, hi], lse[bi, hi])
    reached = weight > 0
    out = acc.mul_(torch.where(reached, 1.0 / weight, 0.0).unsqueeze(-1)).to(query.dtype)
    lse = torch.where(reached, ref + torch.log(weight), float("-inf"))
    return out, lse


# A piece whose log-sum-exp exceeds a row's reference by more than this rescales the row (exp(20) ~ 5e8 stays
# far from f32 overflow and loses no precision in the sum).
_RESCALE_MARGIN = 20.0


def _merge(acc: torch.Tensor, ref: torch.Tensor, weight: torch.Tensor, rows: torch.Tensor, out: torch.Tensor, lse: torch.Tensor) -> None:
    """Add a piece's normalised output ``out`` (|rows|, D) with log-sum-exp ``lse`` to rows ``rows`` of the
    (N, D) accumulator ``acc``, whose (N,) ``weight`` sums exp(lse - ref); all updated in place."""
    ref_rows = ref.index_select(0, rows)
    jump = lse - ref_rows > _RESCALE_MARGIN  # also every row this piece reaches first (ref -inf)
    if bool(jump.any()):
        moved = jump & torch.isfinite(ref_rows)
        if bool(moved.any()):  # rows already holding a sum: rescale it to the new reference
            idx = rows[moved]
            factor = torch.exp(ref_rows[moved] - lse[moved])
            acc.index_copy_(0, idx, acc.index_select(0, idx).mul_(factor.unsqueeze(-1)))
            weight.index_copy_(0, idx, weight.index_select(0, idx).mul_(factor))
        ref_rows = torch.where(jump, lse, ref_rows)
        ref.index_copy_(0, rows, ref_rows)
    share = torch.exp(lse - ref_rows)
    acc.index_add_(0, rows, out.to(acc.dtype).mul_(share.unsqueeze(-1)))
    weight.index_add_(0, rows, share)


def _backward(grad_out, query, key, value, out, lse, pieces, scale: float):
    acc_dtype = accumulate_dtype(query.dtype)
    dq = torch.zeros(query.shape, dtype=acc_dtype)
    dk = torch.zeros(key.shape, dtype=acc_dtype)
    dv = torch.zeros(value.shape, dtype=acc_dtype)
    grad_out = grad_out.to(query.dtype)
    lse = lse.to(torch.float32) if query.dtype != torch.float64 else lse
    for piece in pieces:
        sel = (slice(*piece.batch), slice(*piece.heads))
        rows = piece.rows
        q, g, o, l = (x[sel].index_select(2, rows) for x in (query, grad_out, out, lse))
        gq_sum = None
        for ks, ke in piece.runs:
            gq, gk, gv = _flash_backward(g, q, key[sel][:, :, ks:ke], value[sel][:, :, ks:ke], o, l, 0.0, False, scale=scale)
            gq_sum = gq.to(acc_dtype) if gq_sum is None else gq_sum.add_(gq)
            dk[sel][:, :, ks:ke] += gk
            dv[sel][:, :, ks:ke] += gv
        dq[sel].index_add_(2, rows, gq_sum)
    return dq.to(query.dtype), dk.to(key.dtype), dv.to(value.dtype)
