"""Token-level window attention on the CPU in bands of query rows (backend ``rows``), forward and backward.

A video query at (t, h, w) sees the keys of frames F(t), rows R(h) and cols C(w) (per-axis boolean tables). A band
of query rows [h0, h1) of one frame sees keys only in rows [r0, r1), the hull of R over the band, of its S key
frames. With the key frames of every query frame stacked side by side inside each row (one S-wide copy of K and
V), that hull is one contiguous run of (r1 - r0) * S * W keys: a band is one fused SDPA call, batched over frames
(views, no gather), with one additive (rows x cols) mask that every frame shares. Each query row lies in one band,
so nothing is merged, except with text: video queries attend the text keys in one more call merged by log-sum-exp,
text queries attend every key in one call. Needs every query frame to see the same number of key frames.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial

import torch

from ..layout import VideoLayout
from .cpu_flash import accumulate_dtype, attention_with_lse, check_key_valid, flash as _flash, flash_backward as _flash_backward

# Query rows per band: enough for the fused kernel's 64-row blocks (it uses 32-row blocks below 192 queries).
BAND_MIN_QUERIES = 192
# Additive masks of a schedule are kept per dtype up to this many bytes; larger ones are built per call.
MASK_MEMO_BYTES = 64 << 20
# The stacked K and V of one pass hold at most this many bytes (heads are taken in chunks; at least one head).
STACK_BYTES = 256 << 20


@dataclass(frozen=True, eq=False)
class RowBands:
    """The band schedule of one window on one grid: ``frames`` (T, S) key frames per query frame (ascending;
    ``shared``: the same for every frame, so the key stack is built once), ``bands`` (h0, h1, r0, r1), and the
    row and col tables the masks come from."""

    grid: tuple[int, int, int]
    frames: torch.Tensor
    shared: bool
    bands: tuple[tuple[int, int, int, int], ...]
    rows: torch.Tensor
    cols: torch.Tensor
    memo: dict = field(default_factory=dict, repr=False)

    def mask(self, band: int, dtype: torch.dtype) -> torch.Tensor:
        """Additive ((h1 - h0) * W, (r1 - r0) * S * W) mask of a band: 0 where the row and col rules allow."""
        h0, h1, r0, r1 = self.bands[band]
        s, w = self.frames.shape[1], self.grid[2]
        allowed = self.rows[h0:h1, r0:r1].view(h1 - h0, 1, r1 - r0, 1, 1) & self.cols.view(1, w, 1, 1, w)
        allowed = allowed.expand(-1, -1, -1, s, -1).reshape((h1 - h0) * w, (r1 - r0) * s * w)
        return torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, float("-inf"))

    def masks(self, dtype: torch.dtype) -> list[torch.Tensor] | None:
        """Every band's additive mask, memoised per dtype when they fit MASK_MEMO_BYTES (else None)."""
        s, w = self.frames.shape[1], self.grid[2]
        size = sum((h1 - h0) * (r1 - r0) for h0, h1, r0, r1 in self.bands) * s * w * w * torch.finfo(dtype).bits // 8
        if size > MASK_MEMO_BYTES:
            return None
        if dtype not in self.memo:
            self.memo[dtype] = [self.mask(i, dtype) for i in range(len(self.bands))]
        return self.memo[dtype]


def same_key_frame_count(frames: torch.Tensor) -> bool:
    """Whether every query frame of a (T, T) frame table sees the same, nonzero number of key frames."""
    counts = frames.sum(1)
    return bool((counts == counts[0]).all()) and int(counts[0]) > 0


def row_bands(frames: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, band_rows: int | None = None) -> RowBands:
    """The schedule for per-axis tables (T, T), (H, H), (W, W) bool: may a query at position q see a key at k.

    ``band_rows``: query rows per band (default: the fewest with BAND_MIN_QUERIES queries per frame). Raises
    ValueError if query frames see different numbers of key frames (a window truncated at the borders, or dilated
    along frames): the stack needs one width."""
    frames, rows, cols = (x.to("cpu", torch.bool) for x in (frames, rows, cols))
    if not same_key_frame_count(frames):
        raise ValueError(
            "backend='rows' needs every query frame to see the same number of key frames (an inward window without "
            f"dilation along frames, or all frames); got {sorted(set(frames.sum(1).tolist()))}; use 'flex' or 'auto'"
        )
    grid = (frames.shape[0], rows.shape[0], cols.shape[0])
    if band_rows is not None and (isinstance(band_rows, bool) or not isinstance(band_rows, int) or band_rows < 1):
        raise ValueError(f"band_rows must be a positive int (query rows per band) or None, got {band_rows!r}")
    if band_rows is None:
        band_rows = min(grid[1], -(-BAND_MIN_QUERIES // grid[2]))
    key_frames = torch.stack([row.nonzero().flatten() for row in frames])
    shared = bool((key_frames == key_frames[:1]).all())
    pos = torch.arange(grid[1])
    bands = []
    for h0 in range(0, grid[1], band_rows):
        h1 = min(h0 + band_rows, grid[1])
        seen = pos[rows[h0:h1].any(0)]
        bands.append((h0, h1, int(seen[0]), int(seen[-1]) + 1))
    return RowBands(grid, key_frames, shared, tuple(bands), rows, cols)


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


def _stack(x: torch.Tensor, schedule: RowBands) -> torch.Tensor:
    """(heads, T, H, W, D) -> (T or 1, heads, H, S, W, D): each query frame's key frames side by side per row."""
    frames = schedule.frames[:1] if schedule.shared else schedule.frames
    heads, _, rows, cols, dim = x.shape
    out = x.new_empty(frames.shape[0], heads, rows, frames.shape[1], cols, dim)
    for t, row in enumerate(frames.tolist()):
        for j, f in enumerate(row):
            out[t, :, :, j].copy_(x[:, f])
    return out


def _passes(query: torch.Tensor, schedule: RowBands) -> list[tuple[int, slice]]:
    """(batch element, heads) of each pass over the bands: as many heads as keep the K and V stacks in STACK_BYTES."""
    frames, s = schedule.frames.shape if not schedule.shared else (1, schedule.frames.shape[1])
    per_head = 2 * frames * s * math.prod(schedule.grid[1:]) * query.shape[-1] * query.element_size()
    step = max(1, STACK_BYTES // per_head)
    return [(b, slice(h, h + step)) for b in range(query.shape[0]) for h in range(0, query.shape[1], step)]


def _band_views(q, ks, vs, schedule: RowBands, band: int):
    """A band's queries (T, heads, Lq, D) and its stacked keys/values (T, heads, Lk, D), all views."""
    h0, h1, r0, r1 = schedule.bands[band]
    frames = q.shape[1]
    qq = q[:, :, h0:h1].flatten(2, 3).transpose(0, 1)
    kk, vv = (x[:, :, r0:r1].flatten(2, 4).expand(frames, -1, -1, -1) for x in (ks, vs))
    return qq, kk, vv


def _band_rows(x: torch.Tensor, schedule: RowBands, band: int) -> torch.Tensor:
    """The band's rows of a (heads, T, H, W, ...) tensor as (T, heads, Lq, ...), a view."""
    h0, h1 = schedule.bands[band][:2]
    return x[:, :, h0:h1].flatten(2, 3).transpose(0, 1)


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
    for b, heads in _passes(query, schedule):
        q = _grid_view(query[b, heads], layout)
        ks, vs = (_stack(_grid_view(x[b, heads], layout), schedule) for x in (key, value))
        o_grid, l_grid = _grid_view(out[b, heads], layout), _grid_view(lse[b, heads].unsqueeze(-1), layout).squeeze(-1)
        for i in range(len(schedule.bands)):
            mask = masks[i] if masks is not None else schedule.mask(i, query.dtype)
            o, l = _flash(*_band_views(q, ks, vs, schedule, i), attn_mask=mask, scale=scale)[:2]
            _band_rows(o_grid, schedule, i).copy_(o)
            _band_rows(l_grid, schedule, i).copy_(l)
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
    """Each piece's fused backward with the merged output and log-sum-exp (its exact share); key gradients of the
    stacked copies are summed back onto their frames in (at least) f32."""
    grad_out = grad_out.to(query.dtype)
    dq, dk, dv = (torch.zeros(x.shape, dtype=accumulate_dtype(query.dtype)) for x in (query, key, value))
    masks = schedule.masks(query.dtype)
    video = layout.video_slice
    for b, heads in _passes(query, schedule):
        q, g, o_grid = (_grid_view(x[b, heads], layout) for x in (query, grad_out, out))
        l_grid = _grid_view(lse[b, heads].unsqueeze(-1), layout).squeeze(-1)
        ks, vs = (_stack(_grid_view(x[b, heads], layout), schedule) for x in (key, value))
        dq_grid, dk_grid, dv_grid = (_grid_view(x[b, heads], layout) for x in (dq, dk, dv))
        for i, (h0, h1, r0, r1) in enumerate(schedule.bands):
            mask = masks[i] if masks is not None else schedule.mask(i, query.dtype)
            qq, kk, vv = _band_views(q, ks, vs, schedule, i)
            gq, gk, gv = _flash_backward(
                _band_rows(g, schedule, i).contiguous(), qq, kk, vv, _band_rows(o_grid, schedule, i).contiguous(),
                _band_rows(l_grid, schedule, i).contiguous(), 0.0, False, attn_mask=mask, scale=scale,
            )
            _band_rows(dq_grid, schedule, i).add_(gq)
            for grad, target in ((gk, dk_grid), (gv, dv_grid)):
                _unstack_add(grad.unflatten(2, (r1 - r0, schedule.frames.shape[1], layout.grid[2])), target[:, :, r0:r1], schedule)
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
