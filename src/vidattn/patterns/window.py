"""3D sliding-window attention pattern (FreeSwim's inward window, spec freeswim_and_broadway.md section 1.2).

Each video query (t, h, w) attends the keys inside a per-axis window around it: ``lo`` positions before and
``hi`` after (a half-width d is lo = hi = d), optionally dilated (every r-th position, the query's own residue),
or the whole axis (``None``). With ``inward`` the window is slid into the grid at the borders instead of being
truncated, so every query keeps exactly the window volume. Text tokens attend and are attended densely.

The plan is built without any N x N evaluation: the tokens of each 128-token block are split into boxes (product
sets of per-axis ranges), a box of queries touches a box of keys iff it does on every axis, and full tiles are
those whose key boxes lie inside every query's window. Optionally the tokens are reordered into 3D tiles:
then every block is one box, fewer tiles are touched and more of them are full. With ``tile_aligned`` the window
itself is counted in whole 3D tiles (sliding tile attention, STA): every kept block is full, no token mask exists.
A window at least as long as its axis covers the axis.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..layout import VideoLayout
from .plan import BlockPlan

AXES = ("frames", "rows", "cols")
# (lo, hi) offsets of one axis, or None for the whole axis.
Extent = tuple[int, int] | None


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def window_extents(window=None, size=None) -> tuple[Extent, Extent, Extent]:
    """Per-axis (lo, hi) from half-widths ``window`` or full sizes ``size`` (frames, rows, cols).

    A half-width d gives (d, d); a size s gives ((s - 1) // 2, s // 2); None or -1 means the whole axis.
    """
    if window is not None and size is not None:
        raise ValueError("give either window (half-widths) or size (full window sizes), not both")
    name, values = ("size", size) if size is not None else ("window", window)
    if not isinstance(values, (tuple, list)) or len(values) != 3:
        raise ValueError(f"{name} must be three entries (frames, rows, cols), each an int or None/-1 for the whole axis; got {values!r}")
    extents = []
    for axis, v in zip(AXES, values):
        if v is None or (_is_int(v) and v == -1):
            extents.append(None)
            continue
        low = 0 if name == "window" else 1
        if not _is_int(v) or v < low:
            raise ValueError(f"{name} along {axis} must be an int >= {low} or None/-1 (whole axis), got {v!r}")
        extents.append((v, v) if name == "window" else ((v - 1) // 2, v // 2))
    return tuple(extents)  # type: ignore[return-value]


def _normalize_triple(name: str, value, low: int) -> tuple[int, int, int]:
    values = (value,) * 3 if _is_int(value) else tuple(value) if isinstance(value, (tuple, list)) else None
    if values is None or len(values) != 3 or not all(_is_int(v) and v >= low for v in values):
        raise ValueError(f"{name} must be an int >= {low} or three such ints (frames, rows, cols), got {value!r}")
    return values  # type: ignore[return-value]


@dataclass(frozen=True)
class WindowPattern:
    """A 3D window: ``extents`` per axis (see :func:`window_extents`), ``dilation`` per axis, ``inward`` shift.

    ``tile`` (frames, rows, cols) reorders the video tokens into 3D tiles of that shape for the kernel (the grid
    is padded up to whole tiles with masked tokens); None keeps the frame-major order. ``tile_aligned`` (STA):
    ``extents`` count whole tiles, and a query sees every token of the tiles around its own tile; needs a
    ``tile`` whose volume is a multiple of ``block_size``, and no dilation.
    """

    extents: tuple[Extent, Extent, Extent] = (None, (15, 15), (26, 26))
    dilation: tuple[int, int, int] = (1, 1, 1)
    inward: bool = True
    block_size: int = 128
    tile: tuple[int, int, int] | None = None
    tile_aligned: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.extents, tuple) or len(self.extents) != 3:
            raise ValueError(f"extents must be three (lo, hi) pairs or None, got {self.extents!r}")
        for axis, ext in zip(AXES, self.extents):
            if ext is not None and not (isinstance(ext, tuple) and len(ext) == 2 and all(_is_int(e) and e >= 0 for e in ext)):
                raise ValueError(f"extent along {axis} must be (lo, hi) ints >= 0 or None, got {ext!r}")
        object.__setattr__(self, "dilation", _normalize_triple("dilation", self.dilation, 1))
        for axis, ext, r in zip(AXES, self.extents, self.dilation):
            if ext is None and r != 1:
                raise ValueError(f"dilation along {axis} must be 1 when the window spans the whole axis, got {r}")
        if not isinstance(self.inward, bool):
            raise ValueError(f"inward must be True or False, got {self.inward!r}")
        if not _is_int(self.block_size) or self.block_size < 1:
            raise ValueError(f"block_size must be a positive int (e.g. 128), got {self.block_size!r}")
        if self.tile is not None:
            object.__setattr__(self, "tile", _normalize_triple("tile", self.tile, 1))
        if not isinstance(self.tile_aligned, bool):
            raise ValueError(f"tile_aligned must be True or False, got {self.tile_aligned!r}")
        if self.tile_aligned:
            if self.tile is None or math.prod(self.tile) % self.block_size:
                raise ValueError(
                    f"tile_aligned=True needs tile=(frames, rows, cols) with a volume that is a multiple of block_size "
                    f"{self.block_size} (e.g. (1, 8, 16) or (6, 8, 8) for 128), got tile {self.tile!r}"
                )
            if self.dilation != (1, 1, 1):
                raise ValueError(f"dilation must be 1 with tile_aligned=True, got {self.dilation!r}")

    def fitted_extents(self, grid: tuple[int, int, int]) -> tuple[Extent, Extent, Extent]:
        """Extents on ``grid`` (in tiles when ``tile_aligned``): an undilated inward window at least as long as its
        axis covers the axis (None); a dilated one keeps its extent and then covers its residue class."""
        if self.tile_aligned:
            grid = tuple(-(-length // t) for length, t in zip(grid, self.tile))  # type: ignore[assignment]

        def covers(ext, r, length):
            if ext is None or r != 1:
                return False
            return ext[0] + ext[1] + 1 >= length if self.inward else min(ext) >= length - 1

        return tuple(None if covers(*args) else args[0] for args in zip(self.extents, self.dilation, grid))  # type: ignore[return-value]

    def volume(self, grid: tuple[int, int, int]) -> int:
        """Keys per video query with ``inward`` on and no dilation: the product of the window lengths, each at most
        its axis (token-level windows only)."""
        return math.prod(length if ext is None else min(length, ext[0] + ext[1] + 1) for ext, length in zip(self.extents, grid))


def axis_allows(q: torch.Tensor, k: torch.Tensor, length: int, extent: Extent, dilation: int = 1, inward: bool = True) -> torch.Tensor | None:
    """May a query at position q see a key at position k along one axis (None: always). Arithmetic only, so it
    runs inside FlexAttention's mask_mod as well as on broadcast index tensors."""
    if extent is None:
        return None
    lo, hi = extent
    span, r = lo + hi, dilation
    if r == 1:
        start = q - lo
        if inward:
            start = start.clamp(0, length - 1 - span)
        return (k >= start) & (k <= start + span)
    m, mk = q // r, k // r  # index inside the residue class q % r
    start = m - lo
    if inward:
        class_len = (length - q % r + r - 1) // r
        start = torch.minimum(start.clamp(min=0), class_len - 1 - span)
    return ((k - q) % r == 0) & (mk >= start) & (mk <= start + span)


def _axis_tables(grid: tuple[int, int, int], pattern: "WindowPattern") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A token-level pattern's (L, L) tables on ``grid``, with its fitted extents (frames, rows, cols)."""
    fitted = pattern.fitted_extents(grid)
    return tuple(axis_table(n, e, r, pattern.inward) for n, e, r in zip(grid, fitted, pattern.dilation))  # type: ignore[return-value]


def axis_table(length: int, extent: Extent, dilation: int = 1, inward: bool = True) -> torch.Tensor:
    """(length, length) bool: may a query at position q see a key at position k along one axis."""
    pos = torch.arange(length)
    allowed = axis_allows(pos.view(-1, 1), pos.view(1, -1), length, extent, dilation, inward)
    return torch.ones(length, length, dtype=torch.bool) if allowed is None else allowed


@dataclass(frozen=True, eq=False)
class WindowPlan:
    """A window plan in the kernel's token order.

    ``order`` (None for the natural order) maps kernel position p to the original joint index, or to
    ``layout.total_tokens`` for a padding token; ``inverse`` maps each original token to its kernel position.
    """

    plan: BlockPlan
    layout: VideoLayout
    pattern: WindowPattern
    order: torch.Tensor | None = None
    inverse: torch.Tensor | None = None
    memo: dict = field(default_factory=dict, repr=False)

    @property
    def tile_density(self) -> float:
        """Share of (query tile, key tile) pairs the kernel computes."""
        return self.plan.tile_density

    @property
    def density(self) -> float:
        """Share of dense attention FLOPs on the layout's real tokens (padding positions of the tiled order cost too)."""
        return self.plan.flop_share(self.layout.total_tokens)

    @property
    def covers_grid(self) -> bool:
        """Whether the window covers every axis of the grid: every query sees every key, dense attention."""
        return all(ext is None for ext in self.pattern.fitted_extents(self.layout.grid))

    @property
    def full_share(self) -> float:
        """Share of computed tiles that need no token mask."""
        return (self.plan.full.sum() / self.plan.tiles.sum().clamp(min=1)).item()

    def axis_tables(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-axis (L, L) bool tables of a token-level window on the layout's grid (frames, rows, cols)."""
        if self.pattern.tile_aligned:
            raise ValueError("axis_tables is for token-level windows; tile_aligned=True counts whole tiles")
        return _axis_tables(self.layout.grid, self.pattern)

    def token_density(self) -> float:
        """Share of (video query, video key) pairs allowed: the window volume over the grid (exact, per axis)."""
        grid, pattern = self.layout.grid, self.pattern
        extents = pattern.fitted_extents(grid)
        if not pattern.tile_aligned:
            return math.prod(table.sum().item() / n**2 for n, table in zip(grid, self.axis_tables()))
        share = 1.0
        for length, t, ext in zip(grid, pattern.tile, extents):
            count = (torch.arange(length) // t).bincount(minlength=-(-length // t)).float()  # real tokens per tile
            share *= (count @ axis_table(count.numel(), ext, 1, pattern.inward).float() @ count).item() / length**2
        return share


def _kernel_order(layout: VideoLayout, tile: tuple[int, int, int] | None, block_size: int, device, clamp: bool = True) -> tuple[torch.Tensor | None, int]:
    """(order, video span): kernel position -> original joint index (pads -> total_tokens). None = natural order.
    ``clamp`` shrinks a tile longer than its axis to the axis (STA keeps the tile and pads)."""
    if tile is None:
        return None, layout.video_tokens
    f, h, w = layout.grid
    tf, th, tw = (min(t, n) if clamp else t for t, n in zip(tile, layout.grid))
    pf, ph, pw = (-(-n // t) * t for n, t in zip((f, h, w), (tf, th, tw)))
    t = torch.arange(pf, device=device).view(-1, 1, 1)
    r = torch.arange(ph, device=device).view(1, -1, 1)
    c = torch.arange(pw, device=device).view(1, 1, -1)
    index = (t * h + r) * w + c + layout.video_start
    index = torch.where((t < f) & (r < h) & (c < w), index, layout.total_tokens)
    # (tile f, tile h, tile w, inner f, inner h, inner w): tiles in raster order, tokens raster inside a tile.
    index = index.view(pf // tf, tf, ph // th, th, pw // tw, tw).permute(0, 2, 4, 1, 3, 5).reshape(-1)
    span = -(-index.numel() // block_size) * block_size
    index = torch.cat([index, torch.full((span - index.numel(),), layout.total_tokens, device=device)])
    text = torch.arange(layout.text, device=device) + (0 if layout.text_position == "before" else layout.video_tokens)
    return torch.cat([index, text]), span


def _coordinate_fn(layout: VideoLayout, tile: tuple[int, int, int] | None, span: int):
    """``coords(p) -> (video, text, t, h, w)`` of kernel positions p, by arithmetic (no lookups): the natural
    frame-major order, or 3D tiles (raster over tiles, raster inside a tile) for ``span`` positions, then text."""
    f, h, w = layout.grid
    n, start, video_tokens = layout.total_tokens, layout.video_start, layout.video_tokens
    if tile is None:

        def coords(p):
            v = p - start
            video = (v >= 0) & (v < video_tokens)
            return video, ~video & (p < n), v // (h * w), (v // w) % h, v % w

        return coords
    tf, th, tw = (min(t, size) for t, size in zip(tile, layout.grid))
    nth, ntw = -(-h // th), -(-w // tw)
    volume = tf * th * tw

    def coords(p):
        tid, inner = p // volume, p % volume
        t = (tid // (nth * ntw)) * tf + inner // (th * tw)
        r = ((tid // ntw) % nth) * th + (inner // tw) % th
        c = (tid % ntw) * tw + inner % tw
        in_span = p < span
        return in_span & (t < f) & (r < h) & (c < w), ~in_span & (p < span + layout.text), t, r, c

    return coords


def _runs(keys: list[torch.Tensor], step: torch.Tensor, cont: torch.Tensor) -> torch.Tensor:
    """Start flags of runs: an item continues the previous run iff every key is equal and ``cont`` holds."""
    same = torch.ones_like(cont)
    for key in keys:
        same = same & (key[1:] == key[:-1])
    starts = torch.ones(step.numel(), dtype=torch.bool, device=step.device)
    starts[1:] = ~(same & cont)
    return starts


def _boxes(block: torch.Tensor, t: torch.Tensor, h: torch.Tensor, w: torch.Tensor) -> dict[str, torch.Tensor]:
    """Split video tokens (given in kernel order with their block) into boxes: runs of consecutive cols in one
    row, merged over consecutive rows with the same cols, then over consecutive frames with the same rows/cols."""
    # Level 1: runs along cols.
    starts = _runs([block, t, h], w, w[1:] == w[:-1] + 1)
    first = starts.nonzero().squeeze(1)
    last = torch.cat([first[1:] - 1, first.new_tensor([w.numel() - 1])])
    b, t1, h1, w0, w1 = block[first], t[first], h[first], w[first], w[last]
    # Level 2: merge consecutive rows with the same col range.
    starts = _runs([b, t1, w0, w1], h1, h1[1:] == h1[:-1] + 1)
    first = starts.nonzero().squeeze(1)
    last = torch.cat([first[1:] - 1, first.new_tensor([h1.numel() - 1])])
    b, t2, h0, h1, w0, w1 = b[first], t1[first], h1[first], h1[last], w0[first], w1[first]
    # Level 3: merge consecutive frames with the same row and col ranges.
    starts = _runs([b, h0, h1, w0, w1], t2, t2[1:] == t2[:-1] + 1)
    first = starts.nonzero().squeeze(1)
    last = torch.cat([first[1:] - 1, first.new_tensor([t2.numel() - 1])])
    return dict(block=b[first], t0=t2[first], t1=t2[last], h0=h0[first], h1=h1[first], w0=w0[first], w1=w1[first])


def _range_tables(table: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """For a (L, L) axis table: per query range [a, b] the hull of keys any query sees (union lo/hi) and the
    range all queries see (intersection lo/hi), each as (L, L) tensors indexed [a, b]."""
    length = table.shape[0]
    pos = torch.arange(length)
    lo = torch.where(table, pos, length).amin(1)
    hi = torch.where(table, pos, -1).amax(1)
    union_lo = torch.full((length, length), length)
    union_hi = torch.full((length, length), -1)
    inter_lo = torch.full((length, length), -1)
    inter_hi = torch.full((length, length), length)
    for a in range(length):
        union_lo[a, a:] = torch.cummin(lo[a:], 0).values
        union_hi[a, a:] = torch.cummax(hi[a:], 0).values
        inter_lo[a, a:] = torch.cummax(lo[a:], 0).values
        inter_hi[a, a:] = torch.cummin(hi[a:], 0).values
    return union_lo, union_hi, inter_lo, inter_hi


def _tiles_from_boxes(qb: dict, kb: dict, tables: list[torch.Tensor], dense_axis: list[bool], blocks: int, chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """(touched, contained) per (query block, key block): some / every query of the block sees some / every key
    of the key block, from pairwise box tests (exact per axis without dilation, a superset with it)."""
    device = qb["block"].device
    ranges = [[r.to(device) for r in _range_tables(tab)] for tab in tables]
    touched = torch.zeros(blocks, blocks, dtype=torch.bool, device=device)
    contained = torch.ones(blocks, blocks, dtype=torch.bool, device=device)
    k_block = kb["block"]
    for start in range(0, qb["block"].numel(), chunk):
        sl = slice(start, start + chunk)
        hit = torch.ones(1, 1, dtype=torch.bool, device=device)
        inside = torch.ones(1, 1, dtype=torch.bool, device=device)
        for axis, (u_lo, u_hi, i_lo, i_hi), dense in zip("thw", ranges, dense_axis):
            a, b = qb[axis + "0"][sl], qb[axis + "1"][sl]
            ka, kz = kb[axis + "0"].view(1, -1), kb[axis + "1"].view(1, -1)
            hit = hit & (u_lo[a, b].view(-1, 1) <= kz) & (u_hi[a, b].view(-1, 1) >= ka)
            # Without dilation the keys a query sees form an interval, so containment is an interval test.
            inside = inside & (i_lo[a, b].view(-1, 1) <= ka) & (i_hi[a, b].view(-1, 1) >= kz) if dense else inside & False
        rows = qb["block"][sl]
        shape = (rows.numel(), k_block.numel())
        hit_per_key_block = torch.zeros(rows.numel(), blocks, device=device).index_add_(1, k_block, hit.expand(shape).float())
        miss_per_key_block = torch.zeros(rows.numel(), blocks, device=device).index_add_(1, k_block, (~inside).expand(shape).float())
        touched |= torch.zeros(blocks, blocks, device=device).index_add_(0, rows, (hit_per_key_block > 0).float()) > 0
        contained &= torch.zeros(blocks, blocks, device=device).index_add_(0, rows, (miss_per_key_block > 0).float()) == 0
    return touched, contained


def _inverse(order: torch.Tensor, layout: VideoLayout) -> torch.Tensor:
    """Kernel position of each original token, for an ``order`` from :func:`_kernel_order`."""
    real = order < layout.total_tokens
    inverse = torch.empty(layout.total_tokens, dtype=torch.long, device=order.device)
    inverse[order[real]] = torch.arange(order.numel(), device=order.device)[real]
    return inverse


def sta_plan(layout: VideoLayout, pattern: WindowPattern, device: torch.device | str = "cpu") -> WindowPlan:
    """Sliding tile attention: tokens tile-major, each query tile keeps the window of tiles around it (slid inward
    at the borders with ``inward``, so exactly kt*kh*kw tiles), every token of a kept tile is allowed. Blocks lie
    inside one tile, so kept blocks are full except where a ragged edge tile holds padding keys. Inside a tile the
    real tokens come first (the rule is the same for every token of a tile): padding ends up in whole trailing query
    rows, which the flex kernel skips (see kernels/flex.py)."""
    device = torch.device(device)
    bs, tile = pattern.block_size, pattern.tile
    order, span = _kernel_order(layout, tile, bs, device, clamp=False)
    by_tile = order[:span].view(-1, math.prod(tile))
    padding_last = torch.sort((by_tile == layout.total_tokens).to(torch.int8), dim=1, stable=True).indices
    order = torch.cat([torch.gather(by_tile, 1, padding_last).view(-1), order[span:]])
    n = order.numel()
    blocks = -(-n // bs)
    counts = [-(-length // t) for length, t in zip(layout.grid, tile)]
    a_t, a_h, a_w = (axis_table(c, e, 1, pattern.inward).to(device) for c, e in zip(counts, pattern.fitted_extents(layout.grid)))
    tile_mask = (a_t.view(-1, 1, 1, a_t.shape[0], 1, 1) & a_h.view(1, -1, 1, 1, a_h.shape[0], 1) & a_w.view(1, 1, -1, 1, 1, a_w.shape[0]))
    per_tile = math.prod(tile) // bs
    video_blocks = span // bs
    tile_mask = tile_mask.reshape(math.prod(counts), math.prod(counts)).repeat_interleave(per_tile, 0).repeat_interleave(per_tile, 1)
    tiles = torch.ones(blocks, blocks, dtype=torch.bool, device=device)  # text rows and columns dense
    tiles[:video_blocks, :video_blocks] = tile_mask
    real = order < layout.total_tokens
    pad_block = F.pad(~real, (0, blocks * bs - n)).view(blocks, bs).any(-1)
    full = tiles & ~pad_block.view(1, -1)
    plan = BlockPlan(tiles.view(1, 1, blocks, blocks), bs, n, full=full.view(1, 1, blocks, blocks), real_keys=real)
    return WindowPlan(plan, layout, pattern, order, _inverse(order, layout))


def _packed_coordinates(video: torch.Tensor, text: torch.Tensor, t: torch.Tensor, h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """One int64 per position: t, h, w in 16 bits each (clamped at 0: only video positions' coordinates are read;
    window_plan refuses grid axes past 16 bits), then the video and text flags."""
    t, h, w = (x.clamp(0, 0xFFFF).long() for x in (t, h, w))
    return t | (h << 16) | (w << 32) | (video.long() << 48) | (text.long() << 49)


def window_plan(layout: VideoLayout, pattern: WindowPattern, device: torch.device | str = "cpu") -> WindowPlan:
    """Block plan of ``pattern`` on ``layout`` (text dense), in the natural or the 3D-tiled token order."""
    if pattern.tile_aligned:
        return sta_plan(layout, pattern, device)
    if max(layout.grid) > 0xFFFF:
        raise ValueError(f"window attention supports grid axes of at most 65535 positions, got grid {layout.grid}")
    device = torch.device(device)
    bs = pattern.block_size
    order, span = _kernel_order(layout, pattern.tile, bs, device)
    n = layout.total_tokens if order is None else order.numel()
    blocks = -(-n // bs)
    coords = _coordinate_fn(layout, pattern.tile, span)
    pos = torch.arange(n, device=device)
    video, text, t, h, w = coords(pos)
    fitted = pattern.fitted_extents(layout.grid)
    tables = _axis_tables(layout.grid, pattern)
    dense_axis = [ext is None or r == 1 for ext, r in zip(fitted, pattern.dilation)]
    boxes = _boxes(pos[video] // bs, t[video], h[video], w[video])
    touched, contained = _tiles_from_boxes(boxes, boxes, tables, dense_axis, blocks)
    # Blocks with text: text queries see everything, every query sees text keys.
    text_block = torch.zeros(blocks, dtype=torch.bool, device=device).index_fill_(0, pos[text] // bs, True)
    tiles = touched | text_block.view(-1, 1) | text_block.view(1, -1)
    # Blocks holding padding keys are never full; text queries and keys are always allowed, so only
    # video-video pairs can break a full tile.
    pad_key_block = torch.zeros(blocks, dtype=torch.bool, device=device).index_fill_(0, pos[~video & ~text] // bs, True)
    full = tiles & ~pad_key_block.view(1, -1) & contained
    grid, extents, dilation, inward = layout.grid, fitted, pattern.dilation, pattern.inward
    # Inside FlexAttention on the CPU one lookup of packed coordinates is far cheaper than integer division.
    packed = _packed_coordinates(*coords(torch.arange(blocks * bs, device=device)))

    def coords(p):  # noqa: F811 - same function, by lookup
        x = packed[p]
        return (x >> 48) & 1 == 1, (x >> 49) & 1 == 1, x & 0xFFFF, (x >> 16) & 0xFFFF, (x >> 32) & 0xFFFF


    def token_mask(b, hh, q_idx, kv_idx):
        q_video, q_text, *q_pos = coords(q_idx)
        k_video, k_text, *k_pos = coords(kv_idx)
        inside = k_video
        for qa, ka, length, ext, r in zip(q_pos, k_pos, grid, extents, dilation):
            allowed = axis_allows(qa, ka, length, ext, r, inward)
            inside = inside if allowed is None else inside & allowed
        return inside | k_text | (q_text & k_video)

    plan = BlockPlan(tiles.view(1, 1, blocks, blocks), bs, n, full=full.view(1, 1, blocks, blocks), token_mask=token_mask, token_mask_within_tiles=True)
    return WindowPlan(plan, layout, pattern, order, None if order is None else _inverse(order, layout))
