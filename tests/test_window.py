"""Window attention: the plan against a naive per-token re-derivation, kernels and processors against masked SDPA."""

import math

import pytest
import torch
import torch.nn.functional as F
from tiny_models import cogvideox_inputs, hunyuan_inputs, run_with_processor, tiny_cogvideox, tiny_hunyuan, tiny_wan, wan_inputs

from vidattn.kernels.block_sparse import dense_token_mask
from vidattn.layout import VideoLayout
from vidattn.patterns.window import WindowPattern, window_extents, window_plan
from vidattn.processors import VideoAttnProcessor
from vidattn.processors.window import (
    FREESWIM_SCALE_FACTOR,
    WindowAttnProcessor,
    WindowConfig,
    entropy_scale_factor,
    window_attention,
)
from vidattn.processors import apply_window_attention, remove_processors


# -- naive reference -----------------------------------------------------------------------------------------
def naive_axis(q: int, length: int, extent, dilation: int, inward: bool) -> list[int]:
    """Positions one query sees along one axis: lay the window out around q, slide it into the grid if inward."""
    if extent is None:
        return list(range(length))
    lo, hi = extent
    pos = [q + dilation * k for k in range(-lo, hi + 1)]
    if inward:
        while min(pos) < 0:
            pos = [p + dilation for p in pos]
        while max(pos) > length - 1:
            pos = [p - dilation for p in pos]
    return [p for p in pos if 0 <= p < length]


def naive_mask(layout: VideoLayout, extents, dilation=(1, 1, 1), inward=True) -> torch.Tensor:
    """(N, N) allowed mask in the original joint order, one query at a time; text rows and columns dense."""
    f, h, w = layout.grid
    n, start = layout.total_tokens, layout.video_start
    mask = torch.ones(n, n, dtype=torch.bool)
    for i in range(layout.video_tokens):
        t, r, c = i // (h * w), (i // w) % h, i % w
        sees = [torch.zeros(size, dtype=torch.bool) for size in (f, h, w)]
        for axis, (q, size) in enumerate(zip((t, r, c), (f, h, w))):
            sees[axis][naive_axis(q, size, extents[axis], dilation[axis], inward)] = True
        box = sees[0].view(-1, 1, 1) & sees[1].view(1, -1, 1) & sees[2].view(1, 1, -1)
        mask[start + i, start : start + layout.video_tokens] = box.reshape(-1)
    return mask


def plan_mask_original_order(wplan) -> torch.Tensor:
    """The plan's token mask (tiles included) mapped back to the original token order."""
    mask = dense_token_mask(wplan.plan, None, "cpu")[0, 0]
    if wplan.order is not None:
        mask = mask[wplan.inverse][:, wplan.inverse]
    return mask


def qkv(n: int, batch=1, heads=2, dim=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(batch, heads, n, dim, generator=g) for _ in range(3))


# -- the pattern ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("frames", [2, 3, 4])
@pytest.mark.parametrize("inward", [True, False])
@pytest.mark.parametrize("tile", [None, (2, 2, 4)])
def test_plan_equals_naive_reference(frames, inward, tile):
    layout = VideoLayout(frames, 7, 9)
    extents = window_extents((1 if frames > 2 else 0, 2, 3))
    wplan = window_plan(layout, WindowPattern(extents, inward=inward, block_size=16, tile=tile))
    reference = naive_mask(layout, extents, inward=inward)
    assert torch.equal(plan_mask_original_order(wplan), reference)
    # The token mask alone is the whole rule (flex then skips the tile lookup): it allows nothing outside a kept tile.
    plan, idx = wplan.plan, torch.arange(wplan.plan.seq_len)
    token_only = plan.token_mask(torch.zeros(()), torch.zeros(()), idx.view(-1, 1), idx.view(1, -1))
    kept = plan.tiles[0, 0].repeat_interleave(plan.block_size, 0).repeat_interleave(plan.block_size, 1)[: len(idx), : len(idx)]
    assert plan.token_mask_within_tiles and not (token_only & ~kept).any() and token_only.any()
    counts = reference.sum(-1)
    if inward:  # every query keeps the whole window
        assert (counts == WindowPattern(extents).volume(layout.grid)).all()
    else:  # border queries are truncated, the centre keeps the full window
        assert counts.min() < counts.max() == WindowPattern(extents).volume(layout.grid)


@pytest.mark.parametrize("case", ["dilated", "sizes+text-before", "whole-frames+text-after"])
def test_plan_equals_naive_reference_dilation_sizes_text(case):
    if case == "dilated":
        layout, extents, dilation = VideoLayout(4, 7, 9), window_extents((0, 1, 1)), (1, 2, 2)
    elif case == "sizes+text-before":
        layout, extents, dilation = VideoLayout(3, 7, 9, 5, "before"), window_extents(size=(2, 4, 3)), (1, 1, 1)
    else:
        layout, extents, dilation = VideoLayout(3, 7, 9, 6, "after"), window_extents((None, 1, 2)), (1, 1, 1)
    for inward in (True, False):
        for tile in (None, (1, 4, 4)):
            wplan = window_plan(layout, WindowPattern(extents, dilation, inward, block_size=16, tile=tile))
            assert torch.equal(plan_mask_original_order(wplan), naive_mask(layout, extents, dilation, inward)), (inward, tile)


@pytest.mark.parametrize("tile", [None, (1, 4, 4)])
def test_tiles_are_exact_and_full_tiles_need_no_mask(tile):
    layout = VideoLayout(3, 12, 12, 5, "after")
    wplan = window_plan(layout, WindowPattern(window_extents((1, 4, 4)), block_size=16, tile=tile))
    plan, n, bs = wplan.plan, wplan.plan.seq_len, 16
    real = torch.ones(n, dtype=torch.bool) if wplan.order is None else wplan.order < layout.total_tokens
    # The allowed pairs without any tile restriction, in the kernel order.
    allowed = plan.token_mask(0, 0, torch.arange(n).view(-1, 1), torch.arange(n).view(1, -1)) & real.view(-1, 1) & real.view(1, -1)
    blocks = plan.num_blocks
    padded = F.pad(allowed, (0, blocks * bs - n, 0, blocks * bs - n)).view(blocks, bs, blocks, bs)
    any_pair = padded.any(3).any(1)
    assert torch.equal(plan.tiles[0, 0], any_pair), "a tile is kept iff some pair in it is allowed"
    assert plan.full[0, 0].any() and not plan.full[0, 0].all()
    for qi, ki in plan.full[0, 0].nonzero().tolist():
        rows = torch.arange(qi * bs, min((qi + 1) * bs, n))
        assert allowed[rows[real[rows]], ki * bs : (ki + 1) * bs].all()


def test_tiled_order_touches_fewer_tiles():
    layout = VideoLayout(2, 48, 48)
    extents = window_extents((None, 8, 8))
    natural = window_plan(layout, WindowPattern(extents, block_size=64))
    tiled = window_plan(layout, WindowPattern(extents, block_size=64, tile=(1, 8, 8)))
    assert tiled.tile_density < natural.tile_density
    assert tiled.full_share > natural.full_share
    assert natural.token_density() == tiled.token_density() == pytest.approx((17 / 48) ** 2)


def test_auto_tile_keeps_the_order_with_fewer_tiles():
    assert WindowConfig().brick() == (1, 8, 16) and WindowConfig(block_size=16).brick() == (1, 4, 4)
    assert WindowConfig(block_size=96).candidate_tiles() == [None]
    assert WindowConfig(tile=[2, 8, 8]).candidate_tiles() == [(2, 8, 8)]
    layout = VideoLayout(2, 64, 64)
    q = torch.zeros(1, 1, layout.total_tokens, 8)
    natural_chosen = []
    for window in [(None, 4, 8), (None, 8, 8)]:
        densities = [WindowAttnProcessor(window=window, tile=tile).density(q, q, layout, "wan") for tile in (None, (1, 8, 16))]
        auto = WindowAttnProcessor(window=window)
        assert auto.density(q, q, layout, "wan") == min(densities)
        natural_chosen.append(auto.window_plan(layout).order is None)
        assert natural_chosen[-1] == (densities[0] <= densities[1])
    assert natural_chosen == [True, False], "the natural order wins the small window, the brick the larger one"


# -- kernels -------------------------------------------------------------------------------------------------
def masked_sdpa(q, k, v, mask, scale):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


@pytest.mark.parametrize("tile", [None, (2, 4, 4)])
def test_gather_equals_masked_sdpa_with_key_padding(tile):
    layout = VideoLayout(3, 7, 9, 5, "after")
    extents = window_extents((1, 2, 3))
    wplan = window_plan(layout, WindowPattern(extents, block_size=16, tile=tile))
    q, k, v = qkv(layout.total_tokens, batch=2)
    key_valid = torch.ones(2, layout.total_tokens, dtype=torch.bool)
    key_valid[1, -2:] = False
    out = window_attention(q, k, v, wplan, key_valid, backend="gather", scale=0.3)
    mask = naive_mask(layout, extents) & key_valid.view(2, 1, 1, -1)
    torch.testing.assert_close(out, masked_sdpa(q, k, v, mask, 0.3), atol=1e-5, rtol=1e-5)


def test_gather_gradients_match_masked_sdpa_in_tiled_order():
    layout = VideoLayout(3, 7, 9, 4, "before")
    extents = window_extents((1, 2, 3))
    wplan = window_plan(layout, WindowPattern(extents, block_size=16, tile=(1, 4, 4)))
    mask = naive_mask(layout, extents)
    upstream = qkv(layout.total_tokens, seed=1)[0]
    grads = []
    for use_plan in (True, False):
        leaves = [x.clone().requires_grad_(True) for x in qkv(layout.total_tokens)]
        out = window_attention(*leaves, wplan, backend="gather") if use_plan else masked_sdpa(*leaves, mask, None)
        (out * upstream).sum().backward()
        grads.append([x.grad for x in leaves])
    for mine, ref in zip(*grads):
        torch.testing.assert_close(mine, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("tile,text_position", [((1, 4, 4), "before"), (None, "before"), (None, "after")])
def test_flex_equals_gather_and_reference(tile, text_position):
    layout = VideoLayout(3, 7, 9, 5, text_position)
    extents = window_extents((1, 2, 3))
    wplan = window_plan(layout, WindowPattern(extents, block_size=16, tile=tile))
    n = layout.total_tokens
    q, k, v = qkv(n, batch=2)
    key_valid = torch.ones(2, n, dtype=torch.bool)
    key_valid[1, layout.video_start - 2 if text_position == "before" else n - 2 :][:2] = False  # padded text
    with torch.no_grad():
        flex = window_attention(q, k, v, wplan, key_valid, backend="flex")
        gather = window_attention(q, k, v, wplan, key_valid, backend="gather")
    torch.testing.assert_close(flex, gather, atol=1e-5, rtol=1e-5)
    expected = masked_sdpa(q, k, v, naive_mask(layout, extents) & key_valid.view(2, 1, 1, n), None)
    torch.testing.assert_close(flex, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("window,inward", [((2, 3, 4), True), ((9, 9, 9), False), ((None, None, None), True)])
def test_window_covering_the_grid_equals_dense(window, inward):
    layout = VideoLayout(5, 7, 9)  # window (2, 3, 4) with inward covers exactly 5 x 7 x 9
    proc = WindowAttnProcessor(window=window, inward=inward, scale_factor=1.0, block_size=32, backend="gather")
    q, k, v = qkv(layout.total_tokens)
    torch.testing.assert_close(proc.attend(q, k, v, layout, None, "wan"), F.scaled_dot_product_attention(q, k, v), atol=1e-5, rtol=1e-5)
    assert proc.plan(q, k, layout, "wan").plan.sparsity == 0.0
    assert proc.window_plan(layout).covers_grid
    auto = WindowAttnProcessor(window=window, inward=inward, scale_factor=1.0, block_size=32)
    assert torch.equal(auto.attend(q, k, v, layout, None, "wan"), F.scaled_dot_product_attention(q, k, v))  # runs SDPA itself
    assert not WindowAttnProcessor(window=(1, 3, 4), inward=inward, block_size=32).window_plan(layout).covers_grid


def test_scale_factor_default_is_freeswim_and_multiplies_the_softmax_scale():
    assert FREESWIM_SCALE_FACTOR == pytest.approx(math.sqrt(math.log(3120) / math.log(1560)))
    assert 1.04 < FREESWIM_SCALE_FACTOR < 1.05
    assert WindowConfig().scale_factor == FREESWIM_SCALE_FACTOR
    layout = VideoLayout(2, 3, 4)
    q, k, v = qkv(layout.total_tokens)
    out = WindowAttnProcessor(window=(None, None, None), scale_factor=1.3, backend="gather").attend(q, k, v, layout, None, "wan")
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, scale=1.3 / math.sqrt(8)), atol=1e-5, rtol=1e-5)


# -- processors on the tiny models ---------------------------------------------------------------------------
FAMILIES = {
    "wan": (tiny_wan, lambda: wan_inputs(frames=5), None),
    "hunyuan": (tiny_hunyuan, lambda: hunyuan_inputs(frames=5), None),
    "cogvideox-2b": (lambda: tiny_cogvideox(False), lambda: cogvideox_inputs(False, frames=3), VideoLayout(3, 4, 5)),
    "cogvideox-5b": (lambda: tiny_cogvideox(True), lambda: cogvideox_inputs(True, frames=5), None),
}
SMALL = dict(window=(1, 1, 1), block_size=8, backend="gather")


class NaiveWindowReference(VideoAttnProcessor):
    """Reference processor: SDPA with the naive per-token window mask and the same softmax scale."""

    def __init__(self, window, inward, scale_factor, **kwargs):
        super().__init__(**kwargs)
        self.extents, self.inward, self.scale_factor = window_extents(window), inward, scale_factor

    def attend(self, query, key, value, layout, key_valid, family):
        mask = naive_mask(layout, self.extents, inward=self.inward)
        if key_valid is not None:
            mask = mask & key_valid.view(key_valid.shape[0], 1, 1, -1)
        return F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=self.scale_factor / math.sqrt(query.shape[-1]))


@pytest.mark.parametrize("family", FAMILIES)
def test_family_processors_equal_masked_sdpa_reference(family):
    build, make_inputs, layout = FAMILIES[family]
    model, inputs = build(), make_inputs()
    with torch.no_grad():
        stock = model(**inputs)[0]
    tile = (1, 2, 2) if family in ("hunyuan", "cogvideox-5b") else None
    ref = run_with_processor(model, inputs, lambda: NaiveWindowReference((1, 1, 1), True, FREESWIM_SCALE_FACTOR, layout=layout))
    out = run_with_processor(model, inputs, lambda: WindowAttnProcessor(tile=tile, layout=layout, **SMALL))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert (out - stock).abs().max() > 1e-4, "a 3x3x3 window should differ from full attention on this grid"


def test_drop_in_on_wan_matches_apply_and_remove_restores_stock():
    model, inputs = tiny_wan(), wan_inputs(frames=5)
    with torch.no_grad():
        stock = model(**inputs)[0]
        model.set_attn_processor(WindowAttnProcessor(window=(1, 1, 2), inward=True, block_size=8, backend="gather"))
        drop_in = model(**inputs)[0]
        apply_window_attention(model, WindowConfig(window=(1, 1, 2), block_size=8, backend="gather"))
        torch.testing.assert_close(model(**inputs)[0], drop_in)
        apply_window_attention(model, WindowConfig(window=(1, 1, 2), block_size=8, backend="gather", dense_layers=2))
        assert torch.equal(model(**inputs)[0], stock), "dense_layers=2 keeps both layers stock"
        remove_processors(model)
        assert torch.equal(model(**inputs)[0], stock)
    assert (drop_in - stock).abs().max() > 1e-4


@pytest.mark.parametrize("inward", [True, False])
def test_window_wider_than_its_axis_covers_the_axis(inward):
    """Rows: a 9-row window on 7 rows sees every row (inward) or the truncated window (not inward, per the naive
    slide); cols: dilation 2 with a window longer than the residue class sees the query's whole class."""
    layout = VideoLayout(3, 7, 9, text=5)
    wide = window_plan(layout, WindowPattern(window_extents((1, 4, 5)), inward=inward, block_size=16))
    expected = naive_mask(layout, (window_extents((1, 0, 0))[0], None if inward else (4, 4), (5, 5)), inward=inward)
    assert torch.equal(plan_mask_original_order(wide), expected)
    dilated = window_plan(layout, WindowPattern(window_extents((0, 1, 3)), dilation=(1, 1, 2), block_size=16))
    idx = torch.arange(layout.video_tokens)
    cols, frames = idx % 9, idx // 63
    rows_ok = (((idx // 9) % 7).view(-1, 1) - ((idx // 9) % 7).view(1, -1)).abs() <= 1
    rows_ok |= (((idx // 9) % 7).view(-1, 1) == 0) & (((idx // 9) % 7).view(1, -1) == 2)  # inward slide at row 0
    rows_ok |= (((idx // 9) % 7).view(-1, 1) == 6) & (((idx // 9) % 7).view(1, -1) == 4)  # and at row 6
    video = (frames.view(-1, 1) == frames.view(1, -1)) & rows_ok & ((cols.view(-1, 1) - cols.view(1, -1)) % 2 == 0)
    got = plan_mask_original_order(dilated)[: layout.video_tokens, : layout.video_tokens]
    assert torch.equal(got, video)


@pytest.mark.parametrize("grid", [(21, 30, 52), (21, 45, 80), (33, 45, 80), (13, 30, 45)])
def test_default_windows_run_at_every_native_grid(grid):
    """Wan 480p/720p, HunyuanVideo, CogVideoX: the defaults (token and tile-aligned) build a plan; at 30 rows the
    31-row window covers the rows."""
    layout = VideoLayout(*grid)
    for config in (WindowConfig(), WindowConfig(tile_aligned=True)):
        for tile in config.candidate_tiles():
            wplan = window_plan(layout, config.pattern(tile))
            assert wplan.plan.tiles.any()
    rows = WindowConfig().pattern(None).fitted_extents(grid)[1]
    assert (rows is None) == (grid[1] <= 31)


def test_bad_input_errors():
    window_plan(VideoLayout(3, 7, 9), WindowPattern(window_extents((1, 4, 5)), inward=False))  # truncation is fine
    with pytest.raises(ValueError, match="window must be three entries"):
        WindowConfig(window=(3, 3))
    with pytest.raises(ValueError, match="window along rows must be an int >= 0"):
        WindowConfig(window=(1, -2, 3))
    with pytest.raises(ValueError, match="size along frames must be an int >= 1"):
        WindowConfig(size=(0, 3, 3))
    with pytest.raises(ValueError, match="either window"):
        WindowConfig(window=(1, 1, 1), size=(3, 3, 3))
    with pytest.raises(ValueError, match="dilation must be an int >= 1"):
        WindowConfig(dilation=0)
    with pytest.raises(ValueError, match="dilation along frames must be 1"):
        WindowConfig(window=(None, 1, 1), dilation=2)
    with pytest.raises(ValueError, match="scale_factor must be a number > 0"):
        WindowConfig(scale_factor=0)
    with pytest.raises(ValueError, match="backend must be one of"):
        WindowConfig(backend="cuda")
    with pytest.raises(ValueError, match="tile must be"):
        WindowConfig(tile=(1, 8))
    with pytest.raises(ValueError, match="tile must be 'auto'"):
        WindowConfig(tile="big")
    with pytest.raises(ValueError, match="inward must be True or False"):
        WindowConfig(inward="yes")
    with pytest.raises(ValueError, match="unknown WindowAttnProcessor argument"):
        WindowAttnProcessor(decay=0.5)
    with pytest.raises(ValueError, match="grid axes of at most 65535 positions"):  # its packed coordinate table
        window_plan(VideoLayout(1, 2, 70_000), WindowPattern(window_extents((0, 1, 1))))
    with pytest.raises(ValueError, match="train_tokens must be an int >= 2"):
        entropy_scale_factor(1, 10)
    assert entropy_scale_factor(1560, 8160) ** 2 == pytest.approx(math.log(8160) / math.log(1560))
