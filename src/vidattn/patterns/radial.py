"""Radial attention's block plan, as the official code builds it (spec radial_and_hybrid.md section 1.2).

For frames i, j at distance d = |i - j| with s tokens per frame:
* d <= 1, or j == 0 with the sink on: the whole frame pair is allowed;
* otherwise the pair is kept only if the decimation rule passes, and then a raster band
  |col - row| <= w with w = 2^bitlen(s) / 2^bitlen(d) * decay, floored at the block size.
Each band pair's token mask is reduced to tiles with the strict rule (a tile is kept when more than 60 %
of its non-empty columns have more than a third of their rows set) and OR-ed into the plan. Text rows and
columns are dense. One deliberate difference from the official code, which only matters when frames are not
block-aligned: full pairs (d <= 1, sink) keep every tile they touch, so no query ever loses its own or a
neighbouring frame (the strict rule drops a tile holding only a few boundary rows of a frame).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..checks import check_bool, check_int, check_number, check_power_of_two
from ..layout import VideoLayout
from .plan import BlockPlan

STRICT_COLUMN_DENSITY = 1 / 3
STRICT_COLUMN_SHARE = 0.6


@dataclass(frozen=True)
class RadialPattern:
    """Parameters of the radial mask. ``decimation`` is the code's hard-coded frame-keep threshold (128)."""

    decay: float = 1.0
    block_size: int = 128
    sink: bool = True
    decimation: int = 128

    def __post_init__(self) -> None:
        check_number("decay", self.decay, 0, low_open=True)
        check_power_of_two("block_size", self.block_size)
        check_bool("sink", self.sink)
        check_int("decimation", self.decimation, 1)


def _bitlen(x: int) -> int:
    return int(x).bit_length()


def band_half_width(distance: int, tokens_per_frame: int, decay: float, block_size: int) -> float:
    """Half-width of the allowed raster band between two frames ``distance`` apart (full frame if <= 1)."""
    if distance <= 1:
        return float(tokens_per_frame)
    width = 2 ** _bitlen(tokens_per_frame) / 2 ** _bitlen(distance) * decay
    return max(width, float(block_size))


def frame_pair_kept(distance: int, tokens_per_frame: int, decimation: int = 128) -> bool:
    """Frame decimation: far pairs are kept only every ``decimation / L``-th distance (decay plays no part)."""
    if distance <= 1:
        return True
    length = 2 ** _bitlen(tokens_per_frame) / 2 ** _bitlen(distance)
    if length >= decimation:
        return True
    return distance % int(decimation / length) == 0


def radial_allows(i: int, j: int, row: torch.Tensor, col: torch.Tensor, s: int, pattern: RadialPattern) -> torch.Tensor:
    """Token-level radial rule for query frame i, key frame j, local token indices ``row`` and ``col``."""
    d = abs(i - j)
    if d <= 1 or (pattern.sink and j == 0):
        return torch.ones(torch.broadcast_shapes(row.shape, col.shape), dtype=torch.bool, device=row.device)
    if not frame_pair_kept(d, s, pattern.decimation):
        return torch.zeros(torch.broadcast_shapes(row.shape, col.shape), dtype=torch.bool, device=row.device)
    w = band_half_width(d, s, pattern.decay, pattern.block_size)
    return (col - row).abs() <= w


def _pair_tiles(row_start: int, col_start: int, s: int, block: int, half_width: float | None, device) -> tuple[int, int, torch.Tensor]:
    """Strict tile reduction of one frame pair's mask placed at global offsets (row_start, col_start).

    ``half_width`` None means the full pair. Returns (first row tile, first col tile, kept tiles).
    """
    rt0, ct0 = row_start // block, col_start // block
    rt1, ct1 = (row_start + s - 1) // block, (col_start + s - 1) // block
    tiles_r = torch.arange(rt0, rt1 + 1, device=device)
    lo = (tiles_r * block - row_start).clamp(min=0)  # local rows of each tile inside frame i
    hi = ((tiles_r + 1) * block - row_start).clamp(max=s)
    col = torch.arange(s, device=device)
    if half_width is None:
        counts = (hi - lo).unsqueeze(1).expand(-1, s)
    else:
        w = int(half_width)
        counts = (torch.minimum(hi.unsqueeze(1), col + w + 1) - torch.maximum(lo.unsqueeze(1), col - w)).clamp(min=0)
    col_tile = (col_start + col) // block - ct0
    n_ct = ct1 - ct0 + 1
    nonzero = torch.zeros(len(tiles_r), n_ct, device=device).index_add_(1, col_tile, (counts > 0).float())
    dense = torch.zeros(len(tiles_r), n_ct, device=device).index_add_(1, col_tile, (counts > STRICT_COLUMN_DENSITY * block).float())
    if half_width is None:
        return rt0, ct0, nonzero > 0
    kept = dense > STRICT_COLUMN_SHARE * nonzero
    return rt0, ct0, kept & (nonzero > 0)


def radial_plan(layout: VideoLayout, pattern: RadialPattern, device: torch.device | str = "cpu") -> BlockPlan:
    """Block plan of radial attention for ``layout`` (text tokens dense)."""
    f, s, block = layout.frames, layout.tokens_per_frame, pattern.block_size
    n = layout.total_tokens
    blocks = -(-n // block)
    tiles = torch.zeros(blocks, blocks, dtype=torch.bool, device=device)
    start = layout.video_start
    reduced: dict[tuple, tuple[int, int, torch.Tensor]] = {}
    for i in range(f):
        for j in range(f):
            d = abs(i - j)
            full_pair = d <= 1 or (pattern.sink and j == 0)
            if not full_pair and not frame_pair_kept(d, s, pattern.decimation):
                continue
            width = None if full_pair else band_half_width(d, s, pattern.decay, block)
            row_start, col_start = start + i * s, start + j * s
            # The reduction depends only on the width and the offsets inside a tile: reuse it.
            key = (width, row_start % block, col_start % block)
            if key not in reduced:
                reduced[key] = _pair_tiles(row_start % block, col_start % block, s, block, width, device)
            rt0, ct0, kept = reduced[key]
            r0, c0 = row_start // block - rt0, col_start // block - ct0
            tiles[r0 + rt0 : r0 + rt0 + kept.shape[0], c0 + ct0 : c0 + ct0 + kept.shape[1]] |= kept
    if layout.text:
        text = torch.zeros(blocks, dtype=torch.bool, device=device)
        if layout.text_position == "before":
            text[: -(-layout.text // block)] = True
        else:
            text[layout.video_tokens // block :] = True
        tiles |= text.unsqueeze(0) | text.unsqueeze(1)
    tiles = tiles.view(1, 1, blocks, blocks)
    return BlockPlan(tiles, block, n, full=tiles)
