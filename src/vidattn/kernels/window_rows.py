"""Token-level window attention on the CPU in bands of query rows (backend ``rows``), forward and backward.

A video query at (t, h, w) sees the keys of frames F(t), rows R(h) and cols C(w) (per-axis boolean tables). The
columns are split into a few blocks; a band of query rows [h0, h1) and columns [c0, c1) of one frame sees keys only in
rows [r0, r1) and columns [k0, k1) (the hulls of R and C over the band) of its S key frames. With the key frames of
every query frame stacked side by side inside each row, cut to the block's key columns (one S-wide copy of K and V per
block), that hull is one contiguous run of (r1 - r0) * S * (k1 - k0) keys: a band is one fused SDPA call, batched over
frames, with one additive mask that every frame shares. Each query lies in one band, so nothing is merged, except
with text: video queries attend the text keys in one more call merged by log-sum-exp, text queries attend every key
in one call. Needs every query frame to see the same number of key frames.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial

import torch

from ..checks import check_int
from ..layout import VideoLayout
from .cpu_flash import accumulate_dtype, attention_with_lse, check_key_valid, flash as _flash, flash_backward as _flash_backward

# Query rows per band: enough for the fused kernel's 64-row blocks (it uses 32-row blocks below 192 queries).
BAND_MIN_QUERIES = 192
# Reduced-precision backward passes run bands of at least this many queries per frame (the fused backward's 256-row
# blocks): 1.58-1.72 vs 1.70-1.89 s at 21x30x52 bf16 (three runs, despite ~50 % more pairs), 2.87 vs 3.26 s at
# 21x45x80; f32 was slower that way (2.11 vs 1.97 s) and keeps the forward's bands. Any bands give the exact
# gradients: the backward reads the saved output and log-sum-exp.
TALL_BACKWARD_DTYPES = (torch.bfloat16, torch.float16)
BACKWARD_BAND_MIN_QUERIES = 768
# Column blocks tried by default: the fewest whose computed work is within COLUMN_BLOCK_SLACK of the least (more
# blocks cut a band's key columns to the window's reach but copy overlapping halos of K and V and shrink the calls).
MAX_COLUMN_BLOCKS = 8
COLUMN_BLOCK_SLACK = 1.05
# Additive masks of a schedule are kept per dtype up to this many bytes; larger ones are built per call.
MASK_MEMO_BYTES = 64 << 20
# The stacked K and V of one pass hold at most this many bytes (heads are taken in chunks; at least one head).
STACK_BYTES = 256 << 20


@dataclass(frozen=True)
class ColumnBlock:
    """Query columns [c0, c1), the key columns [k0, k1) they reach, and the block's bands (h0, h1, r0, r1): query
    rows [h0, h1) see key rows [r0, r1)."""

    c0: int
    c1: int
    k0: int
    k1: int
    bands: tuple[tuple[int, int, int, int], ...]

    def work(self, key_frames: int) -> int:
        """Query-key pairs its calls compute per frame."""
        return sum((h1 - h0) * (r1 - r0) for h0, h1, r0, r1 in self.bands) * (self.c1 - self.c0) * key_frames * (self.k1 - self.k0)


@dataclass(frozen=True, eq=False)
class RowBands:
    """The band schedule of one window on one grid: ``frames`` (T, S) key frames per query frame (ascending;
    ``shared``: the same for every frame, so the key stack is built once), the column ``blocks`` with their bands,
    and the row and col tables the masks come from."""

    grid: tuple[int, int, int]
    frames: torch.Tensor
    shared: bool
    blocks: tuple[ColumnBlock, ...]
    rows: torch.Tensor
    cols: torch.Tensor
    band_rows: int | None = None  # as asked for (None: from the queries per band)
    memo: dict = field(default_factory=dict, repr=False)

    def backward_schedule(self, dtype: torch.dtype) -> RowBands:
        """The schedule the backward pass runs: the same column blocks in bands of BACKWARD_BAND_MIN_QUERIES queries
        per frame for TALL_BACKWARD_DTYPES (unless ``band_rows`` was given), else this one; memoised."""
        if dtype not in TALL_BACKWARD_DTYPES or self.band_rows is not None:
            return self
        if "backward" not in self.memo:
            blocks = _column_blocks(self.rows, self.cols, len(self.blocks), None, BACKWARD_BAND_MIN_QUERIES)
            self.memo["backward"] = RowBands(self.grid, self.frames, self.shared, blocks, self.rows, self.cols)
        return self.memo["backward"]

    def mask(self, block: int, band: int, dtype: torch.dtype) -> torch.Tensor:
        """Additive ((h1 - h0) * (c1 - c0), (r1 - r0) * S * (k1 - k0)) mask of a band: 0 where the row and col rules allow."""
        cb = self.blocks[block]
        h0, h1, r0, r1 = cb.bands[band]
        s, qw, kw = self.frames.shape[1], cb.c1 - cb.c0, cb.k1 - cb.k0
        allowed = self.rows[h0:h1, r0:r1].view(h1 - h0, 1, r1 - r0, 1, 1) & self.cols[cb.c0 : cb.c1, cb.k0 : cb.k1].view(1, qw, 1, 1, kw)
        allowed = allowed.expand(-1, -1, -1, s, -1).reshape((h1 - h0) * qw, (r1 - r0) * s * kw)
        return torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, float("-inf"))

    def masks(self, dtype: torch.dtype) -> list[list[torch.Tensor]] | None:
        """Every band's additive mask (per block), memoised per dtype when they fit MASK_MEMO_BYTES (else None)."""
        size = sum(cb.work(self.frames.shape[1]) for cb in self.blocks) * torch.finfo(dtype).bits // 8
        if size > MASK_MEMO_BYTES:
            return None
        if dtype not in self.memo:
            self.memo[dtype] = [[self.mask(i, j, dtype) for j in range(len(cb.bands))] for i, cb in enumerate(self.blocks)]
        return self.memo[dtype]


def same_key_frame_count(frames: torch.Tensor) -> bool:
    """Whether every query frame of a (T, T) frame table sees the same, nonzero number of key frames."""
    counts = frames.sum(1)
    return bool((counts == counts[0]).all()) and int(counts[0]) > 0


def row_bands(frames: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, band_rows: int | None = None, column_blocks: int | None = None) -> RowBands:
    """The schedule for per-axis tables (T, T), (H, H), (W, W) bool: may a query at position q see a key at k.

    ``band_rows``: query rows per band (default: the fewest with BAND_MIN_QUERIES queries per frame in the block);
    ``column_blocks``: how many blocks the columns are split into (default: the fewest, up to MAX_COLUMN_BLOCKS and
    with at least BAND_MIN_QUERIES queries per block and frame, whose computed work is within COLUMN_BLOCK_SLACK of
    the least). Raises ValueError if query frames see different numbers of key frames (a window truncated at the
    borders, or dilated along frames): the stack needs one width."""
    frames, rows, cols = (x.to("cpu", torch.bool) for x in (frames, rows, cols))
    if not same_key_frame_count(frames):
        raise ValueError(
            "backend='rows' needs every query frame to see the same number of key frames (an inward window without "
            f"dilation along frames, or all frames); got {sorted(set(frames.sum(1).tolist()))}; use 'flex' or 'auto'"
        )
    grid = (frames.shape[0], rows.shape[0], cols.shape[0])
    check_int("band_rows", band_rows, 1, optional=True, note="query rows per band")
    check_int("column_blocks", column_blocks, 1, grid[2], optional=True, note="at most the grid's columns")
    key_frames = torch.stack([row.nonzero().flatten() for row in frames])
    shared = bool((key_frames == key_frames[:1]).all())
    s = key_frames.shape[1]
    if column_blocks is None:
        # Only blocks whose bands can hold BAND_MIN_QUERIES queries (smaller calls run the kernel's slow regime).
        most = max(1, min(MAX_COLUMN_BLOCKS, grid[2], grid[1] * grid[2] // BAND_MIN_QUERIES))
        options = [_column_blocks(rows, cols, count, band_rows) for count in range(1, most + 1)]
        work = [sum(cb.work(s) for cb in blocks) for blocks in options]
        blocks = next(b for b, w in zip(options, work) if w <= COLUMN_BLOCK_SLACK * min(work))
    else:
        blocks = _column_blocks(rows, cols, column_blocks, band_rows)
    return RowBands(grid, key_frames, shared, blocks, rows, cols, band_rows)


def _hull(table: torch.Tensor) -> tuple[int, int]:
    """[first, last + 1) of the positions any row of a bool table allows."""
    seen = table.any(0).nonzero().flatten()
    return int(seen[0]), int(seen[-1]) + 1


def _bands(rows: torch.Tensor, step: int) -> tuple[tuple[int, int, int, int], ...]:
    """Bands (h0, h1, r0, r1) of ``step`` query rows and the key rows they reach."""
    height = rows.shape[0]
    return tuple((h0, min(h0 + step, height), *_hull(rows[h0 : h0 + step])) for h0 in range(0, height, step))


def _column_blocks(
    rows: torch.Tensor, cols: torch.Tensor, count: int, band_rows: int | None, min_queries: int | None = None
) -> tuple[ColumnBlock, ...]:
    """``count`` near-equal column blocks, each cut into bands of ``band_rows`` query rows (None: the fewest with
    ``min_queries`` queries per frame, default BAND_MIN_QUERIES)."""
    width = cols.shape[0]
    min_queries = BAND_MIN_QUERIES if min_queries is None else min_queries
    blocks = []
    for i in range(count):
        c0, c1 = width * i // count, width * (i + 1) // count
        step = band_rows if band_rows is not None else -(-min_queries // (c1 - c0))
        blocks.append(ColumnBlock(c0, c1, *_hull(cols[c0:c1]), _bands(rows, step)))
    return tuple(blocks)


def row_band_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    schedule: RowBands,
    layout: VideoLayout,
    key_valid: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """Window attention of (B, H, N, D) CPU tensors in ``layout``'s natural token order (text dense); differentiable.

    ``key_valid`` (B|1, N) may mask text keys only (diffusers' encoder attention mask); a masked video key is refused."""
    if query.device.type != "cpu":
        raise ValueError(f"backend='rows' runs on the CPU only, got device {query.device}; use 'flex' or 'auto' there")
    if query.ndim != 4 or key.shape != query.shape or value.shape[:-1] != query.shape[:-1]:
        raise ValueError(f"backend='rows': query, key, value must be (B, H, N, D) with the same B, H, N (and query/key D), got {tuple(query.shape)}, {tuple(key.shape)}, {tuple(value.shape)}")
    batch, _, n, dim = query.shape
    if n != layout.total_tokens or layout.grid != schedule.grid:
        raise ValueError(f"backend='rows': schedule for grid {schedule.grid} with {layout.total_tokens} tokens, got {n} queries, {key.shape[-2]} keys, grid {layout.grid}")
    key_valid = check_key_valid(key_valid, batch, n)
    if key_valid is not None and not bool(key_valid[:, layout.video_slice].all()):
        raise ValueError("backend='rows' supports masked text keys only, key_valid masks video keys; use 'flex' or 'auto'")
    text_valid = key_valid[:, layout.text_slice] if key_valid is not None and layout.text else None
    scale = 1.0 / math.sqrt(dim) if scale is None else float(scale)
    args = dict(schedule=schedule, layout=layout, text_valid=text_valid, scale=scale)
    return attention_with_lse(query, key, value, partial(_forward, **args), partial(_backward, **args))


def _grid_view(x: torch.Tensor, layout: VideoLayout) -> torch.Tensor:
    """(H, N, D) -> the video tokens as (H, T, rows, cols, D), a view."""
    return x[:, layout.video_slice].unflatten(1, layout.grid)


def _stack(x: torch.Tensor, schedule: RowBands, block: ColumnBlock, buffer: torch.Tensor) -> torch.Tensor:
    """(heads, T, H, W, D) -> (T or 1, heads, H, S, k1 - k0, D) in ``buffer``: each query frame's key frames side by
    side per row, cut to the block's key columns."""
    frames = schedule.frames[:1] if schedule.shared else schedule.frames
    heads, _, rows, _, dim = x.shape
    shape = (frames.shape[0], heads, rows, frames.shape[1], block.k1 - block.k0, dim)
    out = buffer[: math.prod(shape)].view(shape)
    for t, row in enumerate(frames.tolist()):
        for j, f in enumerate(row):
            out[t, :, :, j].copy_(x[:, f, :, block.k0 : block.k1])
    return out


def _stack_numel(schedule: RowBands, heads: int, dim: int) -> int:
    """Elements of the widest block's key (or value) stack for ``heads`` heads."""
    frames, s = schedule.frames.shape if not schedule.shared else (1, schedule.frames.shape[1])
    return frames * heads * schedule.grid[1] * s * max(cb.k1 - cb.k0 for cb in schedule.blocks) * dim


def _passes(query: torch.Tensor, schedule: RowBands) -> tuple[int, list[tuple[int, slice]]]:
    """Heads per pass, and (batch element, heads) of each pass over the bands: as many heads as keep one block's K
    and V stacks in STACK_BYTES (at least one)."""
    step = max(1, STACK_BYTES // (2 * _stack_numel(schedule, 1, query.shape[-1]) * query.element_size()))
    step = min(step, query.shape[1])
    return step, [(b, slice(h, h + step)) for b in range(query.shape[0]) for h in range(0, query.shape[1], step)]


def _stack_buffers(key: torch.Tensor, schedule: RowBands, heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat key and value buffers for the widest block's stacks, allocated once per call: a fresh multi-MB tensor
    per block and pass pays its page faults again (measured ~17 ms per 38 MB here, as long as the copy itself)."""
    numel = _stack_numel(schedule, heads, key.shape[-1])
    return key.new_empty(numel), key.new_empty(numel)


def _band(x: torch.Tensor, block: ColumnBlock, band: tuple[int, int, int, int]) -> torch.Tensor:
    """The band's queries of a (heads, T, H, W, ...) tensor as (heads, T, rows, cols, ...), a view."""
    return x[:, :, band[0] : band[1], block.c0 : block.c1]


def _flat(x: torch.Tensor) -> torch.Tensor:
    """(heads, T, rows, cols, ...) -> (T, heads, rows * cols, ...): a view for whole rows, else a copy."""
    return x.transpose(0, 1).flatten(2, 3)


def _unflat(x: torch.Tensor, band_shape: torch.Size) -> torch.Tensor:
    """Inverse of :func:`_flat` onto a band of shape (heads, T, rows, cols, ...), a view."""
    return x.unflatten(2, band_shape[2:4]).transpose(0, 1)


def _keys(x: torch.Tensor, band: tuple[int, int, int, int], frames: int) -> torch.Tensor:
    """A band's stacked keys or values (T, heads, Lk, D) from a block's stack, a view."""
    return x[:, :, band[2] : band[3]].flatten(2, 4).expand(frames, -1, -1, -1)


def _text_mask(text_valid: torch.Tensor | None, b: int, layout: VideoLayout, dtype) -> torch.Tensor | None:
    """Additive (1, N) mask for text queries: every video key, the valid text keys."""
    if text_valid is None:
        return None
    valid = torch.ones(layout.total_tokens, dtype=torch.bool)
    valid[layout.text_slice] = text_valid[b if text_valid.shape[0] > 1 else 0]
    return torch.zeros(1, valid.numel(), dtype=dtype).masked_fill_(~valid, float("-inf"))


def _text_keys(text_valid: torch.Tensor | None, b: int, layout: VideoLayout) -> torch.Tensor:
    """Indices of the valid text keys of batch element b."""
    index = torch.arange(layout.text_slice.start, layout.text_slice.stop)
    return index if text_valid is None else index[text_valid[b if text_valid.shape[0] > 1 else 0]]


def _forward(query, key, value, schedule: RowBands, layout: VideoLayout, text_valid, scale: float):
    out = torch.empty(query.shape, dtype=query.dtype)
    lse = torch.empty(query.shape[:-1], dtype=accumulate_dtype(query.dtype))
    masks = schedule.masks(query.dtype)
    video = layout.video_slice
    step, passes = _passes(query, schedule)
    buffers = _stack_buffers(key, schedule, step)
    for b, heads in passes:
        q = _grid_view(query[b, heads], layout)
        o_grid, l_grid = _grid_view(out[b, heads], layout), _grid_view(lse[b, heads].unsqueeze(-1), layout).squeeze(-1)
        for i, block in enumerate(schedule.blocks):
            ks, vs = (_stack(_grid_view(x[b, heads], layout), schedule, block, buf) for x, buf in zip((key, value), buffers))
            for j, band in enumerate(block.bands):
                mask = masks[i][j] if masks is not None else schedule.mask(i, j, query.dtype)
                o, l = _flash(_flat(_band(q, block, band)), _keys(ks, band, q.shape[1]), _keys(vs, band, q.shape[1]), attn_mask=mask, scale=scale)[:2]
                for target, result in ((o_grid, o), (l_grid, l)):
                    rows = _band(target, block, band)
                    rows.copy_(_unflat(result, rows.shape))
    for b in range(query.shape[0] if layout.text else 0):  # text: dense
        keys = _text_keys(text_valid, b, layout)
        if keys.numel():  # video queries on the text keys, merged by log-sum-exp
            o, l = _flash(query[b : b + 1, :, video], key[b : b + 1, :, keys], value[b : b + 1, :, keys], scale=scale)[:2]
            o_win, l_win = out[b, :, video], lse[b, :, video]
            total = torch.logaddexp(l_win, l[0])
            merged = o_win.to(total.dtype) * (l_win - total).exp().unsqueeze(-1) + o[0].to(total.dtype) * (l[0] - total).exp().unsqueeze(-1)
            o_win.copy_(merged)
            l_win.copy_(total)
        text = layout.text_slice
        mask = _text_mask(text_valid, b, layout, query.dtype)
        o, l = _flash(query[b : b + 1, :, text], key[b : b + 1], value[b : b + 1], attn_mask=mask, scale=scale)[:2]
        out[b, :, text], lse[b, :, text] = o[0], l[0]
    return out, lse


def _backward(grad_out, query, key, value, out, lse, schedule: RowBands, layout: VideoLayout, text_valid, scale: float):
    """Each piece's fused backward with the merged output and log-sum-exp (its exact share), in the schedule's
    backward bands; key gradients of the stacked copies are summed back onto their frames in (at least) f32."""
    grad_out = grad_out.to(query.dtype)
    dq, dk, dv = (torch.zeros(x.shape, dtype=accumulate_dtype(query.dtype)) for x in (query, key, value))
    schedule = schedule.backward_schedule(query.dtype)
    masks = schedule.masks(query.dtype)
    video = layout.video_slice
    step, passes = _passes(query, schedule)
    buffers = _stack_buffers(key, schedule, step)
    for b, heads in passes:
        q, g, o_grid = (_grid_view(x[b, heads], layout) for x in (query, grad_out, out))
        l_grid = _grid_view(lse[b, heads].unsqueeze(-1), layout).squeeze(-1)
        dq_grid, dk_grid, dv_grid = (_grid_view(x[b, heads], layout) for x in (dq, dk, dv))
        for i, block in enumerate(schedule.blocks):
            ks, vs = (_stack(_grid_view(x[b, heads], layout), schedule, block, buf) for x, buf in zip((key, value), buffers))
            for j, band in enumerate(block.bands):
                mask = masks[i][j] if masks is not None else schedule.mask(i, j, query.dtype)
                gq, gk, gv = _flash_backward(
                    *(_flat(_band(x, block, band)).contiguous() for x in (g, q)), _keys(ks, band, q.shape[1]), _keys(vs, band, q.shape[1]),
                    *(_flat(_band(x, block, band)).contiguous() for x in (o_grid, l_grid)), 0.0, False, attn_mask=mask, scale=scale,
                )
                rows = _band(dq_grid, block, band)
                rows.add_(_unflat(gq, rows.shape))
                r0, r1 = band[2:]
                for grad, target in ((gk, dk_grid), (gv, dv_grid)):
                    grad = grad.unflatten(2, (r1 - r0, schedule.frames.shape[1], block.k1 - block.k0))
                    _unstack_add(grad, target[:, :, r0:r1, block.k0 : block.k1], schedule)
    for b in range(query.shape[0] if layout.text else 0):  # text: dense
        keys = _text_keys(text_valid, b, layout)
        if keys.numel():
            sel = (slice(b, b + 1), slice(None), video)
            gq, gk, gv = _flash_backward(
                grad_out[sel].contiguous(), query[sel], key[b : b + 1, :, keys], value[b : b + 1, :, keys],
                out[sel].contiguous(), lse[sel].contiguous(), 0.0, False, scale=scale,
            )
            dq[sel] += gq
            dk[b : b + 1, :, keys] += gk
            dv[b : b + 1, :, keys] += gv
        text = layout.text_slice
        sel = (slice(b, b + 1), slice(None), text)
        gq, gk, gv = _flash_backward(
            grad_out[sel].contiguous(), query[sel], key[b : b + 1], value[b : b + 1], out[sel].contiguous(),
            lse[sel].contiguous(), 0.0, False, attn_mask=_text_mask(text_valid, b, layout, query.dtype), scale=scale,
        )
        dq[sel] += gq
        dk[b : b + 1] += gk
        dv[b : b + 1] += gv
    return dq.to(query.dtype), dk.to(key.dtype), dv.to(value.dtype)


def _unstack_add(grad: torch.Tensor, target: torch.Tensor, schedule: RowBands) -> None:
    """Add (T, heads, rows, S, W, D) gradients of stacked keys onto (heads, T, rows, W, D) frames."""
    if schedule.shared:
        grad = grad.sum(0, keepdim=True, dtype=target.dtype)
    for t, row in enumerate((schedule.frames[:1] if schedule.shared else schedule.frames).tolist()):
        for j, f in enumerate(row):
            target[:, f] += grad[t, :, :, j]
