"""VMoBA block selection (spec vmoba_and_monarch.md section 1): partitions, block gates, threshold rule, plan.

* Partitions: ``1d`` blocks of ``c_t`` whole frames, ``2d`` spatial tubes ``c_h x c_w`` spanning all frames,
  ``3d`` cubes ``c_t x c_h x c_w``. Grids that the chunk does not divide leave smaller tail blocks.
* Gate: every video query scores every block by ``q . mean(K_block)`` in fp32 (no 1/sqrt(d): the threshold
  rule is affine-invariant).
* Selection: the official threshold rule (min-max normalisation in the mode's domain, own block kept,
  others added by descending score until the cumulative share reaches the threshold), or top-k.
* Text tokens are one extra block that every video query attends; text queries attend densely.

The plan is laid out in the *partition order* (each block a contiguous run of tokens, text left in place),
so query and key tiles line up with blocks; callers permute q/k/v with :attr:`Partition.perm` and invert
with :attr:`Partition.inverse`. Nothing of size N x N is ever built.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..layout import VideoLayout
from .plan import BlockPlan

KINDS = ("1d", "2d", "3d")
SELECT_MODES = ("threshold", "topk")
THRESHOLD_TYPES = ("query_head", "head_global")
CHUNK_LENGTH = {"1d": 1, "2d": 2, "3d": 3}
CHUNK_FIELD = {"1d": "temporal_chunk", "2d": "spatial_chunk", "3d": "st_chunk"}
EPS = 1e-6  # the official selectors' epsilon (denominator floor and cumulative-share offset)


def normalize_chunk(kind: str, chunk) -> tuple[int, ...]:
    """``chunk`` as a tuple of positive ints of the length ``kind`` needs (1, 2 or 3); ValueError otherwise."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    values = (chunk,) if isinstance(chunk, int) else tuple(chunk) if isinstance(chunk, (tuple, list)) else None
    name = CHUNK_FIELD[kind]
    if values is None or len(values) != CHUNK_LENGTH[kind] or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise ValueError(f"{name} must be {CHUNK_LENGTH[kind]} int(s) for a {kind} partition, got {chunk!r}")
    if any(v <= 0 for v in values):
        raise ValueError(f"{name} must be > 0 in every axis, got {chunk!r}")
    return values


def layer_kind(layer_idx: int, first_sparse_layer: int = 0, cycle: tuple[int, int, int] = (1, 1, 1)) -> str:
    """Partition of layer ``layer_idx``: ``m = (l - first_sparse_layer) % sum(cycle)``; the first cycle[0] are 1d, ..."""
    if len(cycle) != 3 or not all(isinstance(c, int) and c >= 0 for c in cycle) or sum(cycle) == 0:
        raise ValueError(f"layer_cycle must be three ints >= 0 (1d, 2d, 3d layers) with a positive sum, got {cycle!r}")
    m = (layer_idx - first_sparse_layer) % sum(cycle)
    return "1d" if m < cycle[0] else "2d" if m < cycle[0] + cycle[1] else "3d"


def partition_ids(grid: tuple[int, int, int], kind: str, chunk) -> torch.Tensor:
    """Block id of every video token (frame-major, row-major order) of ``grid = (F, H, W)``; shape (F*H*W,).

    Blocks are numbered like the official re-layout: 1d by frame group, 2d ``(row block, col block)``,
    3d ``(frame block, row block, col block)``, all row-major. Tail blocks are smaller when a chunk does not
    divide the grid. A chunk larger than the grid raises ValueError.
    """
    chunk = normalize_chunk(kind, chunk)
    frames, height, width = grid
    axes = {"1d": (frames,), "2d": (height, width), "3d": (frames, height, width)}[kind]
    names = {"1d": ("frames",), "2d": ("height", "width"), "3d": ("frames", "height", "width")}[kind]
    for size, extent, axis in zip(chunk, axes, names):
        if size > extent:
            raise ValueError(f"{CHUNK_FIELD[kind]} {chunk} is larger than the grid {frames}x{height}x{width} along {axis} ({size} > {extent})")
    t = torch.arange(frames).view(-1, 1, 1)
    h = torch.arange(height).view(1, -1, 1)
    w = torch.arange(width).view(1, 1, -1)
    if kind == "1d":
        ids = (t // chunk[0]).expand(frames, height, width)
    elif kind == "2d":
        ncw = -(-width // chunk[1])
        ids = ((h // chunk[0]) * ncw + w // chunk[1]).expand(frames, height, width)
    else:
        nch, ncw = -(-height // chunk[1]), -(-width // chunk[2])
        ids = ((t // chunk[0]) * nch + h // chunk[1]) * ncw + w // chunk[2]
    return ids.reshape(-1)


def partition_map(layout: VideoLayout, kind: str, chunk) -> torch.Tensor:
    """(F, H, W) map of block ids for ``layout`` and partition ``kind``: what the CLI draws."""
    return partition_ids(layout.grid, kind, chunk).view(layout.grid)


@dataclass(frozen=True, eq=False)
class Partition:
    """The geometry of one (layout, kind, chunk): cached, since it depends on nothing else.

    ``video_ids`` are block ids in the original video order; ``perm[p]`` is the original joint index of the
    token at partition-order position p (text stays in place), ``inverse`` undoes it; ``token_block`` is the
    block id of each partition-order token, text tokens being block ``num_blocks``.
    """

    layout: VideoLayout
    kind: str
    chunk: tuple[int, ...]
    num_blocks: int
    video_ids: torch.Tensor
    perm: torch.Tensor
    inverse: torch.Tensor
    token_block: torch.Tensor
    block_sizes: torch.Tensor
    identity: bool


def build_partition(layout: VideoLayout, kind: str, chunk, device: torch.device | str = "cpu") -> Partition:
    """The :class:`Partition` of ``layout``: block ids, the permutation that makes every block contiguous."""
    chunk = normalize_chunk(kind, chunk)
    ids = partition_ids(layout.grid, kind, chunk)
    num_blocks = int(ids.max()) + 1
    start, n = layout.video_start, layout.total_tokens
    video_perm = torch.argsort(ids, stable=True)  # within a block, tokens keep (t, h, w) order
    perm = torch.arange(n)
    perm[start : start + layout.video_tokens] = video_perm + start
    inverse = torch.empty_like(perm)
    inverse[perm] = torch.arange(n)
    token_block = torch.full((n,), num_blocks, dtype=torch.long)
    token_block[start : start + layout.video_tokens] = ids[video_perm]
    sizes = torch.bincount(token_block, minlength=num_blocks + 1)
    identity = bool(torch.equal(perm, torch.arange(n)))
    return Partition(
        layout, kind, chunk, num_blocks, ids.to(device), perm.to(device), inverse.to(device), token_block.to(device), sizes.to(device), identity
    )


def block_gate(query: torch.Tensor, key: torch.Tensor, block_ids: torch.Tensor, num_blocks: int) -> torch.Tensor:
    """Gate ``q_s . mean(K_c)`` in fp32 for video (B, H, S, D) q/k: shape (B, H, S, num_blocks)."""
    b, h, s, d = key.shape
    sums = torch.zeros(b, h, num_blocks, d, dtype=torch.float32, device=key.device)
    sums.index_add_(2, block_ids, key.float())
    counts = torch.bincount(block_ids, minlength=num_blocks).to(torch.float32).view(1, 1, -1, 1)
    means = sums / counts
    return torch.matmul(query.float(), means.transpose(-1, -2))


def _cut(sorted_vals: torch.Tensor, total: torch.Tensor, remain: torch.Tensor) -> torch.Tensor:
    """Mask (in sorted order) of the entries up to the first cumulative share >= remain, inclusive; all if never."""
    length = sorted_vals.shape[-1]
    ratio = sorted_vals.cumsum(-1) / (total.unsqueeze(-1) + EPS)
    cond = ratio >= remain.unsqueeze(-1)
    cutoff = torch.where(cond.any(-1), cond.to(torch.int8).argmax(-1), torch.full_like(remain, length - 1, dtype=torch.long))
    return torch.arange(length, device=sorted_vals.device) <= cutoff.unsqueeze(-1)


# Entries per query a partial sort (top-k) looks at before the threshold rule falls back to a full stable sort.
_PARTIAL_SORT = 64


def _threshold_per_query(others: torch.Tensor, total: torch.Tensor, remain: torch.Tensor, partial: int = _PARTIAL_SORT) -> torch.Tensor:
    """The threshold rule per row of ``others`` (..., C): entries in stable descending order up to the first whose
    cumulative share of ``total`` reaches ``remain``. A top-``partial`` sort decides every row whose cut falls inside
    it with a strictly smaller next value (then the chosen set does not depend on how ties are ordered); only the
    other rows are sorted in full (3D partitions have ~200 blocks: the full sort was most of the selection's time)."""
    c = others.shape[-1]
    chosen = torch.zeros_like(others, dtype=torch.bool)
    undecided = torch.ones(others.shape[:-1], dtype=torch.bool, device=others.device)
    if partial < c:
        vals, idx = others.topk(partial + 1, dim=-1, sorted=True)
        cond = vals[..., :partial].cumsum(-1) / (total.unsqueeze(-1) + EPS) >= remain.unsqueeze(-1)
        cutoff = cond.to(torch.int8).argmax(-1, keepdim=True)
        decided = cond.any(-1) & (vals.gather(-1, cutoff) > vals.gather(-1, cutoff + 1)).squeeze(-1)
        keep = torch.arange(partial + 1, device=others.device) <= cutoff
        chosen = chosen.scatter(-1, idx, keep & decided.unsqueeze(-1))
        undecided = ~decided
    if bool(undecided.any()):
        rows = others[undecided]
        vals, idx = torch.sort(rows, dim=-1, descending=True, stable=True)
        chosen[undecided] = torch.zeros_like(rows, dtype=torch.bool).scatter(-1, idx, _cut(vals, total[undecided], remain[undecided]))
    return chosen


def _minmax(gate: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    low = gate.amin(dim=dims, keepdim=True)
    denom = gate.amax(dim=dims, keepdim=True) - low
    denom = torch.where(denom <= EPS, torch.ones_like(denom), denom)
    return (gate - low) / denom


def select_blocks(
    gate: torch.Tensor,
    self_block: torch.Tensor,
    select_mode: str = "threshold",
    threshold_type: str = "query_head",
    threshold: float = 0.25,
    topk: int = 1,
) -> torch.Tensor:
    """Selected blocks (B, H, S, C) bool for a gate (B, H, S, C) and each query's own block ``self_block`` (S,).

    ``threshold``: min-max normalise the gate per (query, head) (``query_head``) or per head over all
    (query, block) pairs (``head_global``); ``remain = max(threshold - self_share, 0)``; sort the other
    entries descending and keep them up to the first whose cumulative share of the total reaches ``remain``
    (inclusive; all of them if none does). ``topk``: the own block plus the best ``topk - 1`` others per
    (query, head), or ``topk * S`` entries per head with own blocks first. The own block is always kept.
    Threshold 1 selects everything, as the rule does in exact arithmetic (an fp32 cumulative sum can
    otherwise overshoot by a rounding error and drop zero-score entries at the end of a long domain).
    """
    validate_selection(select_mode, threshold_type, threshold, topk)
    b, h, s, c = gate.shape
    if select_mode == "threshold" and threshold >= 1:
        return torch.ones(b, h, s, c, dtype=torch.bool, device=gate.device)
    own = F.one_hot(self_block, c).bool().view(1, 1, s, c)
    if select_mode == "topk":
        boosted = gate.masked_fill(own, float("inf"))
        if threshold_type == "query_head":
            idx = boosted.topk(min(topk, c), dim=-1).indices
            return torch.zeros(b, h, s, c, dtype=torch.bool, device=gate.device).scatter(-1, idx, True)
        flat = boosted.reshape(b, h, s * c)
        idx = flat.topk(min(topk, c) * s, dim=-1).indices
        return torch.zeros_like(flat, dtype=torch.bool).scatter(-1, idx, True).view(b, h, s, c) | own
    if threshold_type == "query_head":
        norm = _minmax(gate, (-1,))
        total = norm.sum(-1)
        self_share = norm.masked_fill(~own, 0.0).sum(-1) / (total + EPS)
        remain = (threshold - self_share).clamp(min=0.0)
        return _threshold_per_query(norm.masked_fill(own, 0.0), total, remain) | own
    norm = _minmax(gate, (-2, -1))
    total = norm.sum((-2, -1))
    self_share = norm.masked_fill(~own, 0.0).sum((-2, -1)) / (total + EPS)
    remain = (threshold - self_share).clamp(min=0.0)
    vals, idx = torch.sort(norm.masked_fill(own, 0.0).reshape(b, h, s * c), dim=-1, descending=True, stable=True)
    chosen = torch.zeros(b, h, s * c, dtype=torch.bool, device=gate.device).scatter(-1, idx, _cut(vals, total, remain))
    return chosen.view(b, h, s, c) | own


def validate_selection(select_mode: str, threshold_type: str, threshold: float, topk: int) -> None:
    """ValueError naming the parameter for an unknown mode, a threshold outside (0, 1] or topk < 1."""
    if select_mode not in SELECT_MODES:
        raise ValueError(f"select_mode must be one of {SELECT_MODES}, got {select_mode!r}")
    if threshold_type not in THRESHOLD_TYPES:
        raise ValueError(f"threshold_type must be one of {THRESHOLD_TYPES}, got {threshold_type!r}")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold <= 1:
        raise ValueError(f"threshold must be a number in (0, 1], got {threshold!r}")
    if isinstance(topk, bool) or not isinstance(topk, int) or topk < 1:
        raise ValueError(f"topk must be an int >= 1, got {topk!r}")


@dataclass(frozen=True, eq=False)
class VMoBAPlan:
    """A VMoBA plan plus its selection (B, H, S, C) in the original video order.

    The plan's keys are in partition order; its queries too, or, where ``query_order`` (B, H, N) is set, query
    position p of head (b, h) is partition-order token ``query_order[b, h, p]``.
    """

    plan: BlockPlan
    selection: torch.Tensor
    partition: Partition
    token_density: float
    query_order: torch.Tensor | None = None

    @property
    def tile_density(self) -> float:
        """Share of (query tile, key tile) pairs computed: what the kernel pays."""
        return self.plan.tile_density

    @property
    def density(self) -> float:
        """Share of dense attention FLOPs the kernel spends (selection excluded)."""
        return self.plan.density


def selection_rows(selection: torch.Tensor, partition: Partition) -> torch.Tensor:
    """(B, H, N, C + 1) allowed-block table in partition order: video rows = selection + text, text rows all True."""
    layout = partition.layout
    b, h, _, c = selection.shape
    start, video = layout.video_start, layout.video_tokens
    video_perm = partition.perm[start : start + video] - start
    rows = torch.ones(b, h, layout.total_tokens, c + 1, dtype=torch.bool, device=selection.device)
    rows[:, :, start : start + video, :c] = selection[:, :, video_perm]
    return rows


def _grouped_query_order(rows: torch.Tensor) -> torch.Tensor:
    """(B, H, N) order that sorts each head's query rows lexicographically by their selected blocks, so queries
    choosing the same blocks share query tiles (a radix sort over the rows packed into 62-bit words)."""
    b, h, n, c1 = rows.shape
    order = torch.arange(n, device=rows.device).expand(b, h, n)
    for start in reversed(range(0, c1, 62)):  # least significant word first, stable sorts
        bits = rows[..., start : start + 62].long()
        word = (bits << torch.arange(bits.shape[-1] - 1, -1, -1, device=rows.device)).sum(-1)
        order = torch.gather(order, 2, torch.argsort(torch.gather(word, 2, order), dim=-1, stable=True))
    return order


def _tiles(rows: torch.Tensor, overlap: torch.Tensor, block_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(any-rows padded, tiles, full) of a row table: a tile is kept if any of its query rows selects a block
    with keys in it, and full if all its real query rows select all blocks with keys in it."""
    b, h, n, c1 = rows.shape
    blocks = overlap.shape[1]
    pad = blocks * block_size - n
    any_rows = F.pad(rows, (0, 0, 0, pad), value=False)
    any_q = any_rows.view(b, h, blocks, block_size, c1).any(3)
    all_q = F.pad(rows, (0, 0, 0, pad), value=True).view(b, h, blocks, block_size, c1).all(3)
    tiles = torch.matmul(any_q.float(), overlap) > 0
    full = tiles & (torch.matmul((~all_q).float(), overlap) == 0)
    return any_rows, tiles, full


def plan_from_selection(selection: torch.Tensor, partition: Partition, block_size: int = 128, group_queries: bool = True) -> VMoBAPlan:
    """Tile plan ("any" tiles, "all" tiles as full) plus the token-level mask ``rows[b, h, q, block(kv)]``.

    Keys are in partition order. Queries too, unless ``group_queries`` finds, per (batch, head), that sorting
    the queries by their selection computes fewer tiles; then :attr:`VMoBAPlan.query_order` holds that order
    (the result is the same, only the schedule changes: selection is per query token, tiles are per 128).
    """
    if not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be a positive int, got {block_size!r}")
    n = partition.layout.total_tokens
    blocks = -(-n // block_size)
    padded = blocks * block_size
    device = selection.device
    rows = selection_rows(selection, partition)
    b, h, _, c1 = rows.shape
    token_block = F.pad(partition.token_block.to(device), (0, padded - n), value=c1 - 1)
    # Which key tiles each block (text included) has tokens in.
    overlap = torch.zeros(c1, blocks, dtype=torch.float32, device=device)
    overlap[token_block[:n], torch.arange(n, device=device) // block_size] = 1.0
    any_rows, tiles, full = _tiles(rows, overlap, block_size)
    query_order = None
    if group_queries and blocks > 1:
        order = _grouped_query_order(rows)
        g_rows = torch.gather(rows, 2, order.unsqueeze(-1).expand(-1, -1, -1, c1))
        g_any, g_tiles, g_full = _tiles(g_rows, overlap, block_size)
        better = g_tiles.sum((-2, -1)) < tiles.sum((-2, -1))  # (B, H)
        if bool(better.any()):
            pick = better.view(b, h, 1, 1)
            query_order = torch.where(better.view(b, h, 1), order, torch.arange(n, device=device))
            any_rows = torch.where(pick, g_any, any_rows)
            tiles, full = torch.where(pick, g_tiles, tiles), torch.where(pick, g_full, full)

    def token_mask(bi, hi, q_idx, kv_idx):
        return any_rows[bi, hi, q_idx, token_block[kv_idx]]

    sizes = partition.block_sizes.to(device=device, dtype=torch.float32)
    density = (torch.matmul(rows.float(), sizes).sum() / (b * h * n * n)).item()
    plan = BlockPlan(tiles, block_size, n, full=full, token_mask=token_mask)
    return VMoBAPlan(plan, selection, partition, density, query_order)


def vmoba_plan(
    query: torch.Tensor,
    key: torch.Tensor,
    partition: Partition,
    select_mode: str = "threshold",
    threshold_type: str = "query_head",
    threshold: float = 0.25,
    topk: int = 1,
    block_size: int = 128,
    group_queries: bool = True,
) -> VMoBAPlan:
    """Selection and tile plan for joint-sequence (B, H, N, D) post-RoPE q/k in their original token order.

    Depends on q and k, so it is rebuilt every call; only ``partition`` is worth caching. No gradient flows
    through the (discrete) selection.
    """
    selection = vmoba_selection(query, key, partition, select_mode, threshold_type, threshold, topk)
    return plan_from_selection(selection, partition, block_size, group_queries)


def vmoba_selection(
    query: torch.Tensor,
    key: torch.Tensor,
    partition: Partition,
    select_mode: str = "threshold",
    threshold_type: str = "query_head",
    threshold: float = 0.25,
    topk: int = 1,
) -> torch.Tensor:
    """The (B, H, S, C) block selection of video queries (original order) for (B, H, N, D) post-RoPE q/k, without
    the tile plan (what a kernel that runs the selection directly needs). No gradient flows through it."""
    layout = partition.layout
    if query.shape[-2] != layout.total_tokens or key.shape[-2] != layout.total_tokens:
        raise ValueError(f"layout {layout} has {layout.total_tokens} tokens, got query {query.shape[-2]} and key {key.shape[-2]}")
    start, video = layout.video_start, layout.video_tokens
    with torch.no_grad():
        ids = partition.video_ids.to(query.device)
        gate = block_gate(query[..., start : start + video, :], key[..., start : start + video, :], ids, partition.num_blocks)
        return select_blocks(gate, ids, select_mode, threshold_type, threshold, topk)


def block_ranges(partition: Partition) -> tuple[tuple[int, int], ...]:
    """Key range ``(start, stop)`` in partition order of every block, then of the text (empty without text)."""
    layout = partition.layout
    start, video = layout.video_start, layout.video_tokens
    bounds = [start, *(start + torch.cumsum(partition.block_sizes[:-1].cpu(), 0)).tolist()]
    ranges = list(zip(bounds[:-1], bounds[1:]))
    text = (0, start) if start else (start + video, layout.total_tokens)
    return (*ranges, text)


def selection_columns(selection: torch.Tensor, partition: Partition) -> torch.Tensor:
    """(B, H, N, C + 1) allowed-range table with queries in the original order (ranges as :func:`block_ranges`):
    a video query's selected blocks plus the text, a text query every range (the rule of :func:`selection_rows`)."""
    layout = partition.layout
    b, h, _, c = selection.shape
    start, video = layout.video_start, layout.video_tokens
    columns = torch.ones(b, h, layout.total_tokens, c + 1, dtype=torch.bool, device=selection.device)
    columns[:, :, start : start + video, :c] = selection
    return columns
