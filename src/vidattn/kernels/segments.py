"""Block-sparse attention that realises the sparsity on the CPU: fused SDPA on views, merged by log-sum-exp.

The plan's tiles are covered by rectangles (a query slice against a key slice: one fused SDPA call) and
diagonal strips (query tile r against key tiles [r + c, r + c + w): one batched call whose key windows are
overlapping strided views, no copies); the few tiles left over are gathered and run batched. Each piece
returns its output and log-sum-exp from ``aten._scaled_dot_product_flash_attention_for_cpu``; pieces are merged
online into an f32 accumulator. The backward pass calls the fused backward per piece with the merged output and
log-sum-exp, which gives each piece its exact share of the gradient (bf16 strips as masked pairs of query tiles,
which the fused backward runs faster; bf16 gradients summed in bf16 like dense SDPA's). Plans with a
``token_mask`` are refused (their tiles are not all-or-nothing): run them on ``flex``, ``gather`` or ``dense``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch

from ..patterns.plan import BlockPlan
from .cpu_flash import accumulate_dtype, attention_with_lse, check_key_valid, flash as _flash, flash_backward as _flash_backward
from .segment_plan import SegmentPlan, segment_plan


# Segment plans kept per BlockPlan (one per distinct tile matrix and key-validity pattern).
_MEMO_LIMIT = 32
# A piece whose log-sum-exp exceeds a row's running reference by more than this rescales the row.
_RESCALE_MARGIN = 20.0


@dataclass(frozen=True)
class _Job:
    """One group of batch elements and heads sharing a tile matrix and key validity."""

    batch: tuple[int, int]
    heads: tuple[int, int]
    pieces: SegmentPlan
    valid_runs: tuple[tuple[int, int], ...]  # runs of valid key tokens


def segment_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, plan: BlockPlan, key_valid: torch.Tensor | None, scale: float) -> torch.Tensor:
    """Attention of (B, H, N, D) tensors restricted to ``plan`` (no token mask); differentiable."""
    if plan.token_mask is not None:
        raise ValueError("backend='segments' needs a plan without token_mask (tiles all-or-nothing); use 'flex', 'gather' or 'dense'")
    if query.device.type != "cpu":
        raise ValueError(f"backend='segments' runs on the CPU only, got device {query.device}")
    if query.shape[-2] == 0:
        return query.clone()
    jobs = _jobs(plan, key_valid, query.shape[0], query.shape[1])
    settings = dict(jobs=jobs, bs=plan.block_size, scale=scale)
    return attention_with_lse(query, key, value, partial(_forward, **settings), partial(_backward, **settings))


# ----------------------------------------------------------------------------------------------- planning


def _jobs(plan: BlockPlan, key_valid: torch.Tensor | None, batch: int, heads: int) -> tuple[_Job, ...]:
    tiles = plan.tiles.cpu()
    n, bs = plan.seq_len, plan.block_size
    valid = check_key_valid(key_valid, batch, n)
    if plan.real_keys is not None:  # padding inside the sequence is never attended
        real = plan.real_keys.to("cpu").view(1, n)
        valid = real if valid is None else valid & real
    if valid is not None and bool(valid.all()):
        valid = None
    tb, th = tiles.shape[0], tiles.shape[1]
    if tb not in (1, batch) or th not in (1, heads):
        raise ValueError(f"plan tiles {tuple(tiles.shape)} do not broadcast to batch {batch} x heads {heads}")

    def batch_key(b: int) -> tuple:
        rows = b if tb > 1 else 0
        v = None if valid is None else (b if valid.shape[0] > 1 else 0)
        return (rows, None if v is None else valid[v].numpy().tobytes())

    head_groups = _ranges([tiles[0, h].numpy().tobytes() for h in range(th)]) if th > 1 else [(0, heads)]
    batch_keys = [batch_key(b) for b in range(batch)]
    batch_groups = _ranges(batch_keys) if (tb > 1 or (valid is not None and valid.shape[0] > 1)) else [(0, batch)]
    memo = plan.memo.setdefault("segments", {})
    jobs = []
    for b0, b1 in batch_groups:
        tb_idx = b0 if tb > 1 else 0
        vrow = None if valid is None else valid[b0 if valid.shape[0] > 1 else 0]
        runs = ((0, n),) if vrow is None else _true_runs(vrow.numpy())
        clean = _clean_tiles(vrow, n, bs, plan.num_blocks)
        for h0, h1 in head_groups:
            th_idx = h0 if th > 1 else 0
            memo_key = (tb_idx, th_idx, hashlib.sha1(clean.tobytes()).hexdigest())
            pieces = memo.get(memo_key)
            if pieces is None:
                pieces = segment_plan(tiles[tb_idx, th_idx].numpy(), n // bs, clean)
                if len(memo) >= _MEMO_LIMIT:
                    memo.pop(next(iter(memo)))
                memo[memo_key] = pieces
            jobs.append(_Job((b0, b1), (h0, h1), pieces, runs))
    return tuple(jobs)


def _ranges(keys: list) -> list[tuple[int, int]]:
    """Consecutive runs of equal keys as half-open index ranges."""
    out: list[tuple[int, int]] = []
    for i, k in enumerate(keys):
        if out and keys[out[-1][0]] == k:
            out[-1] = (out[-1][0], i + 1)
        else:
            out.append((i, i + 1))
    return out


def _true_runs(mask: np.ndarray) -> tuple[tuple[int, int], ...]:
    padded = np.concatenate(([False], mask, [False])).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return tuple(zip(edges[0::2].tolist(), edges[1::2].tolist()))


def _clean_tiles(valid: torch.Tensor | None, n: int, bs: int, blocks: int) -> np.ndarray:
    """(Kb,) key tiles that are whole and hold only valid keys (a strip window may use them)."""
    clean = np.zeros(blocks, dtype=bool)
    whole = n // bs
    clean[:whole] = True
    if valid is not None:
        clean[:whole] &= valid[: whole * bs].view(whole, bs).all(-1).numpy()
    return clean


# ----------------------------------------------------------------------------------------------- forward


class _Merger:
    """Online log-sum-exp merge of normalised piece outputs into an f32 accumulator.

    Pieces come in chunks of a few query tiles, so that a chunk's output and the accumulator rows it updates stay
    in cache (fresh multi-MB outputs cost page faults, and reduced-precision outputs are widened through a reused
    f32 buffer, which is faster than a mixed-dtype ``addcmul``).
    """

    def __init__(self, shape, device, dtype=torch.float32):
        self.acc = torch.zeros(shape, dtype=dtype, device=device)
        self.ref = torch.full(shape[:-1], float("-inf"), dtype=dtype, device=device)
        self.weight = torch.zeros(shape[:-1], dtype=dtype, device=device)
        self._buffer = torch.empty(0, dtype=dtype, device=device)

    def merge(self, acc, ref, weight, out, lse) -> None:
        """acc/ref/weight: views of the rows ``out``/``lse`` belong to; updated in place."""
        if out.dtype != self.acc.dtype:
            if self._buffer.numel() < out.numel():
                self._buffer = torch.empty(out.numel(), dtype=self.acc.dtype, device=out.device)
            out = self._buffer[: out.numel()].view(out.shape).copy_(out)
        shift = lse - ref  # +inf on rows no piece has reached yet
        if bool(shift.max() > _RESCALE_MARGIN):
            new_ref = torch.maximum(ref, lse)
            factor = torch.exp(ref - new_ref)
            acc.mul_(factor.unsqueeze(-1))
            weight.mul_(factor)
            ref.copy_(new_ref)
            shift = lse - ref
        w = shift.exp_()
        acc.addcmul_(out, w.unsqueeze(-1))
        weight.add_(w)

    def finish(self, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        inv = torch.where(self.weight > 0, 1.0 / self.weight, 0.0)
        out = (self.acc.mul_(inv.unsqueeze(-1))).to(dtype)
        lse = self.ref + torch.log(self.weight)  # -inf on rows with no key
        return out, lse


# Query tiles per call: rectangles keep >= 768 queries (the fused kernel's large-block regime), strips stay small
# enough for their output and accumulator rows to fit in cache.
RECT_CHUNK_TILES = 16
STRIP_CHUNK_TILES = 16


def _chunks(start: int, stop: int, size: int):
    """Split [start, stop) into near-equal parts of at most ``size``."""
    parts = -(-(stop - start) // size)
    for i in range(parts):
        yield start + (stop - start) * i // parts, start + (stop - start) * (i + 1) // parts


def _tile_view(x: torch.Tensor, start_tile: int, count: int, width: int, bs: int) -> torch.Tensor:
    """(H, count, width*bs, D) view of x (H, N, D): window i holds tokens [(start_tile+i)*bs, (start_tile+i+width)*bs)."""
    h, _, d = x.shape
    sh, sn, sd = x.stride()
    return x.as_strided((h, count, width * bs, d), (sh, bs * sn, sn, sd), x.storage_offset() + start_tile * bs * sn)


def _rect_calls(job: _Job, bs: int, n: int):
    """(query range, key range) token pairs of the job's rectangles (rows chunked, keys split into valid runs)."""
    for r0, r1, c0, c1 in job.pieces.rects:
        ks, ke = c0 * bs, min(c1 * bs, n)
        for vs, ve in job.valid_runs:
            lo, hi = max(ks, vs), min(ke, ve)
            if lo < hi:
                for q0, q1 in _chunks(r0, r1, RECT_CHUNK_TILES):
                    yield (q0 * bs, min(q1 * bs, n)), (lo, hi)


def _strip_calls(job: _Job):
    """(first query tile, tiles, key offset, width) of the job's strips, chunked."""
    for r0, r1, c, w in job.pieces.strips:
        for s0, s1 in _chunks(r0, r1, STRIP_CHUNK_TILES):
            yield s0, s1 - s0, c, w


def _strip_pair_calls(job: _Job):
    """(first query tile, tiles, key offset, width) of the job's strips for the paired backward: chunks of an even
    number of tiles (at most STRIP_CHUNK_TILES), then the odd tile, if any, alone."""
    for r0, r1, c, w in job.pieces.strips:
        pairs = (r1 - r0) // 2
        if pairs:
            for p0, p1 in _chunks(0, pairs, STRIP_CHUNK_TILES // 2):
                yield r0 + 2 * p0, 2 * (p1 - p0), c, w
        if (r1 - r0) % 2:
            yield r1 - 1, 1, c, w


def _single_batches(job: _Job):
    """Gathered calls for the job's single-row pieces: a row's pieces are joined into one list of key tiles, and
    rows with as many key tiles run in one call (few, long calls). Yields (row tiles (P,), key tiles (P, count))."""
    by_row: dict[int, list[int]] = {}
    for r, c0, w in job.pieces.singles:
        by_row.setdefault(r, []).extend(range(c0, c0 + w))
    by_count: dict[int, list[tuple[int, list[int]]]] = {}
    for r, cols in sorted(by_row.items()):
        by_count.setdefault(len(cols), []).append((r, cols))
    for _, items in sorted(by_count.items()):
        yield torch.tensor([r for r, _ in items]), torch.tensor([cols for _, cols in items])


def _gathered(x: torch.Tensor, index: torch.Tensor, bs: int) -> torch.Tensor:
    """(H, P, count*bs, D) copy of x (H, N, D): row p holds the tiles ``index[p]`` (P, count), in order."""
    tiles = _tile_view(x, 0, x.shape[1] // bs, 1, bs)
    return tiles[:, index].reshape(x.shape[0], index.shape[0], index.shape[1] * bs, x.shape[-1])


def _ordered_calls(job: _Job, bs: int, n: int) -> list[tuple]:
    """The job's rectangle and strip calls, in order of their first query row (the accumulator rows they update
    then stay in cache from one call to the next)."""
    calls = [(q0, 0, ("rect", (q0, q1), kr)) for (q0, q1), kr in _rect_calls(job, bs, n)]
    calls += [(r0 * bs, 1, ("strip", r0, t, c, w)) for r0, t, c, w in _strip_calls(job)]
    return [call for _, _, call in sorted(calls, key=lambda x: (x[0], x[1]))]


def _forward(query, key, value, jobs, bs: int, scale: float):
    batch, heads, n, dim = query.shape
    merger = _Merger((batch, heads, n, dim), query.device, accumulate_dtype(query.dtype))
    for job in jobs:
        (b0, b1), (h0, h1) = job.batch, job.heads
        q, k, v = (x[b0:b1, h0:h1] for x in (query, key, value))
        acc, ref, wsum = (x[b0:b1, h0:h1] for x in (merger.acc, merger.ref, merger.weight))
        for call in _ordered_calls(job, bs, n):
            if call[0] == "rect":
                (qs, qe), (ks, ke) = call[1:]
                out, lse = _flash(q[:, :, qs:qe], k[:, :, ks:ke], v[:, :, ks:ke], scale=scale)[:2]
                merger.merge(acc[:, :, qs:qe], ref[:, :, qs:qe], wsum[:, :, qs:qe], out, lse)
                continue
            r0, t, c, w = call[1:]
            rows = slice(r0 * bs, (r0 + t) * bs)
            hh = h1 - h0
            for b in range(b0, b1):
                out, lse = _flash(
                    _tile_view(query[b, h0:h1], r0, t, 1, bs),
                    _tile_view(key[b, h0:h1], r0 + c, t, w, bs),
                    _tile_view(value[b, h0:h1], r0 + c, t, w, bs),
                    scale=scale,
                )[:2]
                merger.merge(
                    merger.acc[b, h0:h1, rows].view(hh, t, bs, dim),
                    merger.ref[b, h0:h1, rows].view(hh, t, bs),
                    merger.weight[b, h0:h1, rows].view(hh, t, bs),
                    out,
                    lse,
                )
        hh = h1 - h0
        for b in range(b0, b1):
            whole = n // bs
            acc_t = merger.acc[b, h0:h1, : whole * bs].view(hh, whole, bs, dim)
            ref_t = merger.ref[b, h0:h1, : whole * bs].view(hh, whole, bs)
            wsum_t = merger.weight[b, h0:h1, : whole * bs].view(hh, whole, bs)
            for rows, cols in _single_batches(job):
                qg = _gathered(query[b, h0:h1], rows.unsqueeze(1), bs)
                kg, vg = (_gathered(x[b, h0:h1], cols, bs) for x in (key, value))
                out, lse = _flash(qg, kg, vg, scale=scale)[:2]
                acc_g, ref_g, wsum_g = acc_t[:, rows], ref_t[:, rows], wsum_t[:, rows]
                merger.merge(acc_g, ref_g, wsum_g, out, lse)
                acc_t[:, rows], ref_t[:, rows], wsum_t[:, rows] = acc_g, ref_g, wsum_g
    return merger.finish(query.dtype)


# ----------------------------------------------------------------------------------------------- backward


def _windows(x: torch.Tensor, start_tile: int, count: int, width: int, step: int, bs: int) -> torch.Tensor:
    """(H, count, width*bs[, D]) view of x (H, N[, D]): window i holds tiles [start + i*step, start + i*step + width)."""
    sh, sn = x.stride()[:2]
    shape, strides = (x.shape[0], count, width * bs), (sh, step * bs * sn, sn)
    if x.dim() == 3:
        shape, strides = shape + (x.shape[2],), strides + (x.stride(2),)
    return x.as_strided(shape, strides, x.storage_offset() + start_tile * bs * sn)


def _pair_mask(width: int, bs: int, dtype: torch.dtype) -> torch.Tensor:
    """Additive mask of a query-tile pair against its ``width + 1`` key tiles: query tile i sees key tiles
    [i, i + width)."""
    mask = torch.zeros(2 * bs, (width + 1) * bs, dtype=dtype)
    mask[:bs, width * bs :] = float("-inf")
    mask[bs:, :bs] = float("-inf")
    return mask


def _strip_backward(tensors, r0: int, t: int, c: int, w: int, bs: int, scale: float, masks: dict, paired: bool) -> None:
    """Gradients of one strip chunk (query tiles r0..r0+t, key tiles r + c .. r + c + w), added into dq/dk/dv.

    Reduced precision runs pairs of query tiles against their w + 1 key tiles with a band mask: the fused
    backward's 256-query regime does more useful work per second there than the 128-query one, despite the
    masked tile (measured 108-111 vs 77-91 GFLOP/s bf16 at w = 3, 59 vs 35-48 at w = 2, one thread). In f32
    the masked tile costs more than it saves, so each tile runs alone, one head per call (contiguous outputs).
    """
    query, key, value, grad_out, out, lse, dq, dk, dv = tensors
    pairs = t // 2 if paired else 0
    if pairs:
        mask = masks.get(w)
        if mask is None:
            mask = masks[w] = _pair_mask(w, bs, query.dtype)
        g_, q_, o_, l_ = (_windows(x, r0, pairs, 2, 2, bs) for x in (grad_out, query, out, lse))
        k_, v_ = (_windows(x, r0 + c, pairs, w + 1, 2, bs) for x in (key, value))
        gq, gk, gv = _flash_backward(g_, q_, k_, v_, o_, l_, 0.0, False, attn_mask=mask, scale=scale)
        _windows(dq, r0, pairs, 2, 2, bs).add_(gq)
        for o in range(w + 1):
            cols = slice(o * bs, (o + 1) * bs)
            _windows(dk, r0 + c + o, pairs, 1, 2, bs).add_(gk[:, :, cols])
            _windows(dv, r0 + c + o, pairs, 1, 2, bs).add_(gv[:, :, cols])
        r0, t = r0 + 2 * pairs, t - 2 * pairs
        if t == 0:
            return
    # One head per call in f32; a reduced-precision leftover tile runs with its heads together (one call).
    for one in [slice(None)] if paired else [slice(h, h + 1) for h in range(query.shape[0])]:
        g_, q_, o_, l_ = (_windows(x[one], r0, t, 1, 1, bs).transpose(0, 1) for x in (grad_out, query, out, lse))
        k_, v_ = (_windows(x[one], r0 + c, t, w, 1, bs).transpose(0, 1) for x in (key, value))
        gq, gk, gv = _flash_backward(g_, q_, k_, v_, o_, l_, 0.0, False, scale=scale)
        _windows(dq[one], r0, t, 1, 1, bs).transpose(0, 1).add_(gq)
        for o in range(w):
            cols = slice(o * bs, (o + 1) * bs)
            _windows(dk[one], r0 + c + o, t, 1, 1, bs).transpose(0, 1).add_(gk[:, :, cols])
            _windows(dv[one], r0 + c + o, t, 1, 1, bs).transpose(0, 1).add_(gv[:, :, cols])


def _backward(grad_out, query, key, value, out, lse, jobs, bs: int, scale: float):
    batch, heads, n, dim = query.shape
    # Reduced precision sums the pieces' gradients in its own dtype, as the fused kernel (and dense SDPA's backward)
    # sums its query blocks: f32 sums cost a widening copy per piece (~8 % of the bf16 backward) for no accuracy
    # dense SDPA has (the bf16 gradient test compares both errors against an f32 reference).
    grad_dtype = query.dtype if query.dtype in (torch.bfloat16, torch.float16) else accumulate_dtype(query.dtype)
    dq, dk, dv = (torch.zeros(batch, heads, n, dim, dtype=grad_dtype, device=query.device) for _ in range(3))
    grad_out = grad_out.to(query.dtype)
    masks: dict[int, torch.Tensor] = {}  # pair masks by strip width, for this call only
    for job in jobs:
        (b0, b1), (h0, h1) = job.batch, job.heads
        sel = (slice(b0, b1), slice(h0, h1))
        q, k, v, o, g, l = query[sel], key[sel], value[sel], out[sel], grad_out[sel], lse[sel]
        for (qs, qe), (ks, ke) in _rect_calls(job, bs, n):
            gq, gk, gv = _flash_backward(
                g[:, :, qs:qe], q[:, :, qs:qe], k[:, :, ks:ke], v[:, :, ks:ke], o[:, :, qs:qe], l[:, :, qs:qe], 0.0, False, scale=scale
            )
            dq[sel][:, :, qs:qe] += gq
            dk[sel][:, :, ks:ke] += gk
            dv[sel][:, :, ks:ke] += gv
        for b in range(b0, b1):
            hh = h1 - h0
            tensors = tuple(x[b, h0:h1] for x in (query, key, value, grad_out, out, lse, dq, dk, dv))
            paired = query.dtype in (torch.bfloat16, torch.float16)
            for r0, t, c, w in _strip_pair_calls(job) if paired else _strip_calls(job):
                _strip_backward(tensors, r0, t, c, w, bs, scale, masks, paired)
            whole = n // bs
            dq_t, dk_t, dv_t = (x[b, h0:h1, : whole * bs].view(hh, whole, bs, dim) for x in (dq, dk, dv))
            for rows, cols in _single_batches(job):
                qg, gg, og = (_gathered(x[b, h0:h1], rows.unsqueeze(1), bs) for x in (query, grad_out, out))
                kg, vg = (_gathered(x[b, h0:h1], cols, bs) for x in (key, value))
                lg = lse[b, h0:h1, : whole * bs].view(hh, whole, bs)[:, rows]
                gq, gk, gvv = _flash_backward(gg, qg, kg, vg, og, lg, 0.0, False, scale=scale)
                dq_t.index_add_(1, rows, gq.to(dq.dtype))
                shape = (hh, len(rows), cols.shape[1], bs, dim)
                gk, gvv = gk.to(dq.dtype).reshape(shape), gvv.to(dq.dtype).reshape(shape)
                for o_ in range(cols.shape[1]):  # index_add_ sums repeated key tiles
                    dk_t.index_add_(1, cols[:, o_], gk[:, :, o_])
                    dv_t.index_add_(1, cols[:, o_], gvv[:, :, o_])
    return dq.to(query.dtype), dk.to(key.dtype), dv.to(value.dtype)
