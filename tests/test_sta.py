"""Sliding tile attention (WindowConfig(tile_aligned=True)): the plan against a naive per-token STA rule, the
kernels against SDPA with that explicit mask, full blocks on tile-multiple grids, ragged edges."""

import pytest
import torch
import torch.nn.functional as F

from vidattn.kernels.block_sparse import dense_token_mask
from vidattn.kernels.flex import flex_block_mask
from vidattn.layout import VideoLayout
from vidattn.patterns.window import WindowPattern, window_extents, window_plan
from vidattn.processors.window import WindowAttnProcessor, WindowConfig, window_attention


def naive_sta_mask(layout: VideoLayout, tile, sizes, inward=True) -> torch.Tensor:
    """(N, N) in the original order, one query at a time: the query's tile coordinate per axis, a window of
    ``size`` tiles starting ``(size - 1) // 2`` tiles before it (slid inward, or cut at the border), every token
    of the kept tiles. A size None or at least the tile count covers the axis. Text rows and columns dense."""
    f, h, w = layout.grid
    n, start = layout.total_tokens, layout.video_start
    counts = [-(-length // t) for length, t in zip((f, h, w), tile)]
    mask = torch.ones(n, n, dtype=torch.bool)
    for i in range(layout.video_tokens):
        pos = (i // (h * w), (i // w) % h, i % w)
        sees = []
        for p, t, count, size, length in zip(pos, tile, counts, sizes, (f, h, w)):
            if size is None or (inward and size >= count):
                kept = range(count)
            else:
                first = p // t - (size - 1) // 2
                if inward:
                    first = min(max(first, 0), count - size)
                kept = [c for c in range(first, first + size) if 0 <= c < count]
            axis = torch.zeros(length, dtype=torch.bool)
            for c in kept:
                axis[c * t : (c + 1) * t] = True
            sees.append(axis)
        box = sees[0].view(-1, 1, 1) & sees[1].view(1, -1, 1) & sees[2].view(1, 1, -1)
        mask[start + i, start : start + layout.video_tokens] = box.reshape(-1)
    return mask


def sta_plan(layout, tile, sizes, inward=True, block_size=16):
    return window_plan(layout, WindowPattern(window_extents(size=sizes), inward=inward, block_size=block_size, tile=tile, tile_aligned=True))


def plan_mask_original_order(wplan) -> torch.Tensor:
    mask = dense_token_mask(wplan.plan, None, "cpu")[0, 0]
    return mask[wplan.inverse][:, wplan.inverse]


CASES = [  # layout, tile, sizes in tiles, inward
    (VideoLayout(4, 8, 8), (1, 4, 4), (3, 1, 2), True),  # tile-multiple grid
    (VideoLayout(5, 7, 9), (1, 4, 4), (3, 1, 2), True),  # ragged rows and cols
    (VideoLayout(6, 8, 12, text=5), (2, 4, 4), (2, 3, 2), True),  # even sizes, text after
    (VideoLayout(5, 6, 10, text=7, text_position="before"), (2, 2, 4), (2, None, 5), True),  # a size >= tile count covers
    (VideoLayout(5, 7, 9), (1, 4, 4), (3, 1, 2), False),  # cut at the border instead of slid
]


@pytest.mark.parametrize("layout,tile,sizes,inward", CASES)
def test_plan_equals_naive_sta_rule(layout, tile, sizes, inward):
    wplan = sta_plan(layout, tile, sizes, inward)
    assert torch.equal(plan_mask_original_order(wplan), naive_sta_mask(layout, tile, sizes, inward))


@pytest.mark.parametrize("layout,tile,sizes,inward", CASES[:3])
def test_every_query_tile_keeps_exactly_the_window_and_blocks_are_full(layout, tile, sizes, inward):
    wplan = sta_plan(layout, tile, sizes, inward)
    plan, bs = wplan.plan, wplan.plan.block_size
    per_tile = tile[0] * tile[1] * tile[2] // bs
    counts = [-(-length // t) for length, t in zip(layout.grid, tile)]
    video_blocks = counts[0] * counts[1] * counts[2] * per_tile
    kept = plan.tiles[0, 0, :video_blocks, :video_blocks].sum(-1)
    window = [min(size, count) for size, count in zip(sizes, counts)]  # a window longer than the axis covers it
    assert (kept == window[0] * window[1] * window[2] * per_tile).all()
    assert plan.token_mask is None
    # Partial blocks are exactly the kept key blocks holding padding (a ragged edge tile) or the short text tail.
    tail = plan.num_blocks * bs - plan.seq_len  # keys past seq_len: masked by the kernels, not by the plan
    real = F.pad(plan.real_keys, (0, tail), value=True).view(-1, bs).all(-1)
    assert torch.equal(plan.full[0, 0], plan.tiles[0, 0] & real.view(1, -1))
    block_mask = flex_block_mask(plan, None, "cpu")
    partial = int(block_mask.kv_num_blocks.sum())
    assert (partial == 0) == bool(real.all() and tail == 0)
    if layout.grid[1] % tile[1] == 0 and layout.grid[2] % tile[2] == 0 and layout.grid[0] % tile[0] == 0 and not layout.text:
        assert partial == 0


@pytest.mark.parametrize("backend", ["flex", "gather", "dense"])
@pytest.mark.parametrize("case", [1, 2, 3])
def test_sta_attention_equals_masked_sdpa(backend, case):
    layout, tile, sizes, inward = CASES[case]
    wplan = sta_plan(layout, tile, sizes, inward)
    n = layout.total_tokens
    g = torch.Generator().manual_seed(case)
    q, k, v = (torch.randn(2, 2, n, 8, generator=g) for _ in range(3))
    key_valid = torch.ones(2, n, dtype=torch.bool)
    if layout.text:
        key_valid[1, layout.video_start + layout.video_tokens - 1 if layout.text_position == "after" else 0] = False
    mask = naive_sta_mask(layout, tile, sizes, inward) & key_valid.view(2, 1, 1, n)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    out = window_attention(q, k, v, wplan, key_valid, backend=backend)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_padding_rows_are_last_in_a_tile_and_skipped_by_flex_exactly():
    """Ragged edge tiles put their padding last, and the CPU flex kernel then runs 32-row query blocks that skip
    padding-only rows; the answer still equals SDPA with the naive STA mask (text, key mask, 64-token blocks)."""
    layout, tile, sizes = VideoLayout(3, 10, 12, text=5), (1, 8, 8), (3, 1, 2)
    wplan = window_plan(layout, WindowPattern(window_extents(size=sizes), block_size=64, tile=tile, tile_aligned=True))
    real = (wplan.order < layout.total_tokens)[: 12 * 64].view(12, 64)  # 3 x 2 x 2 tiles of 64 positions
    assert torch.equal(real, torch.sort(real.to(torch.int8), dim=1, descending=True).values.bool())  # real first
    assert flex_block_mask(wplan.plan, None, "cpu").BLOCK_SIZE[0] == 32
    n = layout.total_tokens
    g = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(2, 2, n, 16, generator=g) for _ in range(3))
    key_valid = torch.ones(2, n, dtype=torch.bool)
    key_valid[1, :3] = False
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=naive_sta_mask(layout, tile, sizes) & key_valid.view(2, 1, 1, n))
    torch.testing.assert_close(window_attention(q, k, v, wplan, key_valid, backend="flex"), expected, atol=1e-5, rtol=1e-5)
    # Without padding there is nothing to skip: the plan's own 64-row blocks.
    whole = window_plan(VideoLayout(3, 8, 16), WindowPattern(window_extents(size=sizes), block_size=64, tile=tile, tile_aligned=True))
    assert flex_block_mask(whole.plan, None, "cpu").BLOCK_SIZE[0] == 64


def test_config_tile_aligned():
    config = WindowConfig(tile_aligned=True, size=(3, 1, 2), block_size=16, scale_factor=1.0, backend="gather")
    assert config.candidate_tiles() == [(1, 4, 4)]  # "auto": the one-frame brick of block_size tokens
    layout = VideoLayout(4, 8, 8)
    assert WindowAttnProcessor(config).window_plan(layout).plan.token_mask is None
    default = WindowConfig(tile_aligned=True).pattern()  # FreeSwim's 31x53 rounded up to 1x8x16 tiles
    assert default.tile == (1, 8, 16) and default.extents == (None, (1, 2), (1, 2))
    with pytest.raises(ValueError, match="tile_aligned=True needs tile"):
        WindowConfig(tile_aligned=True, tile=(1, 3, 5))
    with pytest.raises(ValueError, match="tile_aligned=True needs tile"):
        WindowConfig(tile_aligned=True, tile=None)
    with pytest.raises(ValueError, match="dilation must be 1 with tile_aligned"):
        WindowConfig(tile_aligned=True, dilation=2, window=(1, 1, 1))
    with pytest.raises(ValueError, match="tile_aligned must be True or False"):
        WindowConfig(tile_aligned="yes")
