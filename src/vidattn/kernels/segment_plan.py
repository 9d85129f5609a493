"""Cover a tile matrix with few large pieces that fused SDPA can run on views: rectangles and diagonal strips.

A *rectangle* ``(r0, r1, c0, c1)`` is query tiles ``[r0, r1)`` against key tiles ``[c0, c1)``: one SDPA call on
a query slice and a key slice. A *strip* ``(r0, r1, c, w)`` is query tile ``r`` against key tiles
``[r + c, r + c + w)`` for every ``r`` in ``[r0, r1)``: one batched SDPA call whose key windows are overlapping
strided views (radial's bands are such strips). Every kept tile is covered exactly once, so the pieces can be
merged by log-sum-exp.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# A rectangle this tall (in tiles) or this wide is worth its own call; smaller ones are left to strips first.
RECT_MIN_ROWS = 4
RECT_MIN_COLS = 8
# A strip must span this many query tiles, else its tiles are run as small rectangles.
STRIP_MIN_ROWS = 3


@dataclass(frozen=True)
class SegmentPlan:
    """The pieces covering one tile matrix, in tile units."""

    rects: tuple[tuple[int, int, int, int], ...]
    strips: tuple[tuple[int, int, int, int], ...]
    # Leftover single-row pieces (row, first key tile, width) inside strip-able rows and columns: gathered and
    # run batched, one call per width.
    singles: tuple[tuple[int, int, int], ...] = ()

    def tiles(self) -> int:
        """Number of tiles covered (for checks and statistics)."""
        return (
            sum((r1 - r0) * (c1 - c0) for r0, r1, c0, c1 in self.rects)
            + sum((r1 - r0) * w for r0, r1, _, w in self.strips)
            + sum(w for _, _, w in self.singles)
        )


def _runs(row: np.ndarray) -> list[tuple[int, int]]:
    """Half-open runs of True in a 1-D bool array."""
    padded = np.concatenate(([False], row, [False])).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return list(zip(edges[0::2].tolist(), edges[1::2].tolist()))


def _sweep(avail: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Rectangles (r0, r1, c0, c1) covering ``avail`` exactly: a column run stays open while each row keeps it."""
    rects = []
    open_runs: dict[tuple[int, int], int] = {}
    for r in range(avail.shape[0]):
        row = avail[r]
        still = {}
        taken = np.zeros_like(row)
        for (c0, c1), start in open_runs.items():
            if row[c0:c1].all():
                still[(c0, c1)] = start
                taken[c0:c1] = True
            else:
                rects.append((start, r, c0, c1))
        for run in _runs(row & ~taken):
            still[run] = r
        open_runs = still
    rects.extend((start, avail.shape[0], c0, c1) for (c0, c1), start in open_runs.items())
    return rects


def _merge_side_by_side(rects: list[tuple[int, int, int, int]]) -> list[tuple[int, int, int, int]]:
    """Join rectangles with the same rows whose key ranges touch (fewer calls, longer key ranges)."""
    merged: list[tuple[int, int, int, int]] = []
    for r0, r1, c0, c1 in sorted(rects):
        if merged and merged[-1][:2] == (r0, r1) and merged[-1][3] == c0:
            merged[-1] = (r0, r1, merged[-1][2], c1)
        else:
            merged.append((r0, r1, c0, c1))
    return merged


def _merge_neighbours(pieces: list[tuple[int, int, int, int]], min_rows: int) -> list[tuple[int, int, int, int]]:
    """Join two pieces whose columns touch over their shared rows when those rows are at least ``min_rows``;
    the rows only one of them spans stay as (shorter) pieces of their own."""
    alive = set(pieces)
    by_start: dict[int, set] = {}
    for p in alive:
        by_start.setdefault(p[2], set()).add(p)
    work = sorted(alive, key=lambda p: (p[2], p[0]))
    while work:
        a = work.pop()
        if a not in alive:
            continue
        a0, a1, ac0, ac1 = a
        for b in sorted(by_start.get(ac1, ())):
            b0, b1, _, bc1 = b
            lo, hi = max(a0, b0), min(a1, b1)
            if hi - lo < min_rows:
                continue
            new = [(lo, hi, ac0, bc1), (a0, lo, ac0, ac1), (hi, a1, ac0, ac1), (b0, lo, ac1, bc1), (hi, b1, ac1, bc1)]
            for old in (a, b):
                alive.discard(old)
                by_start[old[2]].discard(old)
            for p in new:
                if p[1] > p[0]:
                    alive.add(p)
                    by_start.setdefault(p[2], set()).add(p)
                    work.append(p)
            break
    return sorted(alive)


def segment_plan(tiles: np.ndarray, strip_rows: int, strip_cols: np.ndarray) -> SegmentPlan:
    """Decompose a (Qb, Kb) bool tile matrix.

    ``strip_rows``: only query tiles below this index may join a strip (whole tiles, so a reshape is a view);
    ``strip_cols``: (Kb,) bool, key tiles a strip window may hold (whole tiles with every key valid).
    """
    tiles = np.asarray(tiles, dtype=bool)
    qb, kb = tiles.shape
    # 1. Large rectangles: the dense parts (radial's neighbouring frames and sink, text rows and columns).
    rects = []
    avail = tiles.copy()
    for r0, r1, c0, c1 in _merge_neighbours(_sweep(tiles), RECT_MIN_ROWS):
        if r1 - r0 >= RECT_MIN_ROWS or c1 - c0 >= RECT_MIN_COLS:
            rects.append((r0, r1, c0, c1))
            avail[r0:r1, c0:c1] = False
    # 2. Diagonal strips in what is left: a vertical run in the matrix indexed by (row, column - row).
    strips = []
    strippable_cols = np.asarray(strip_cols, dtype=bool)
    strippable = avail.copy()
    strippable[strip_rows:] = False
    strippable[:, ~strippable_cols] = False
    if strippable.any():
        rows = np.arange(qb)[:, None]
        diag = np.zeros((qb, qb + kb - 1), dtype=bool)
        r_idx, c_idx = np.nonzero(strippable)
        diag[r_idx, c_idx - r_idx + qb - 1] = True
        for r0, r1, d0, d1 in _merge_neighbours(_sweep(diag), STRIP_MIN_ROWS):
            if r1 - r0 >= STRIP_MIN_ROWS:
                c = d0 - (qb - 1)
                strips.append((r0, r1, c, d1 - d0))
                cols = rows[r0:r1] + c + np.arange(d1 - d0)
                avail[rows[r0:r1], cols] = False
    # 3. The rest: small rectangles; those inside strip-able rows and columns become gathered single rows.
    singles = []
    for r0, r1, c0, c1 in _sweep(avail):
        if r1 - r0 < RECT_MIN_ROWS and c1 - c0 < RECT_MIN_COLS and r1 <= strip_rows and strippable_cols[c0:c1].all():
            singles.extend((r, c0, c1 - c0) for r in range(r0, r1))
        else:
            rects.append((r0, r1, c0, c1))
    return SegmentPlan(tuple(_merge_side_by_side(rects)), tuple(sorted(strips)), tuple(sorted(singles)))
