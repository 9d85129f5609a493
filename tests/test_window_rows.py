"""backend='rows' (kernels/window_rows.py): token-level windows in bands of query rows against frame-stacked key
rows, against SDPA with the naive per-token window mask: forward and f64 gradients with text before/after, masked
text keys (one batch element with none), shared and per-frame key frames, several band heights, masks built per
call, passes over head chunks, column blocks (and the default count); bf16; auto's choice through the processor; refusals."""

import pytest
import torch
import torch.nn.functional as F
from test_window import naive_mask

import vidattn.kernels.window_rows as window_rows
from vidattn.kernels.window_rows import row_band_attention, row_bands
from vidattn.layout import VideoLayout
from vidattn.patterns.window import WindowPattern, window_extents, window_plan
from vidattn.processors.window import WindowAttnProcessor, _rows_apply, row_schedule, window_attention


def leaves(n: int, batch: int, dtype=torch.float64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 3, n, 8, generator=g).to(dtype).requires_grad_(True) for _ in range(3)]


def text_key_mask(layout: VideoLayout, batch: int) -> torch.Tensor:
    """Element 0 loses one text key, element 1 every text key."""
    valid = torch.ones(batch, layout.total_tokens, dtype=torch.bool)
    start = 0 if layout.text_position == "before" else layout.video_tokens
    valid[0, start + 1] = False
    valid[1, start : start + layout.text] = False
    return valid


CASES = [  # grid, half-widths, text, text position, band rows, column blocks
    ((5, 6, 7), (1, 2, 3), 0, "after", None, None),  # per-frame key frames, slid inward at the borders
    ((5, 6, 7), (1, 2, 3), 0, "after", 4, 3),  # a ragged last band, uneven column blocks
    ((5, 6, 7), (None, 2, 1), 3, "after", 1, 7),  # all frames: one shared key stack; one column per block
    ((4, 5, 9), (0, 1, 2), 4, "before", 2, 2),  # one key frame, text first
    ((6, 4, 5), (2, None, 1), 2, "before", None, 1),  # whole rows
]


@pytest.mark.parametrize("grid,window,text,position,band_rows,column_blocks", CASES)
def test_rows_equal_masked_sdpa_forward_and_backward(grid, window, text, position, band_rows, column_blocks):
    layout = VideoLayout(*grid).with_text(text, position)
    extents = window_extents(window)
    wplan = window_plan(layout, WindowPattern(extents, block_size=16))
    schedule = row_bands(*wplan.axis_tables(), band_rows=band_rows, column_blocks=column_blocks)
    assert len(schedule.blocks) == (column_blocks or 1)
    batch = 2
    key_valid = text_key_mask(layout, batch) if text else None
    mask = naive_mask(layout, extents) if key_valid is None else naive_mask(layout, extents) & key_valid.view(batch, 1, 1, -1)
    q, k, v = leaves(layout.total_tokens, batch)
    out = row_band_attention(q, k, v, schedule, layout, key_valid, scale=0.4)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.4)
    torch.testing.assert_close(out, expected, atol=1e-10, rtol=1e-10)
    upstream = torch.randn_like(out)
    for mine, ref in zip(torch.autograd.grad(out, (q, k, v), upstream), torch.autograd.grad(expected, (q, k, v), upstream)):
        torch.testing.assert_close(mine, ref, atol=1e-10, rtol=1e-10)


def test_column_blocks_cut_the_work_where_the_window_is_narrow():
    """Wan 480p with a (1, 7, 13) window: two column blocks reach 39 of 52 key columns each, so the default
    schedule takes them; a window over whole rows gains nothing from blocks and keeps one."""
    layout = VideoLayout(21, 30, 52)
    narrow = window_plan(layout, WindowPattern(window_extents((1, 7, 13)), block_size=128)).axis_tables()
    work = {count: sum(block.work(3) for block in row_bands(*narrow, column_blocks=count).blocks) for count in (1, 2)}
    assert work[2] < 0.9 * work[1]
    chosen = row_bands(*narrow)
    assert [(b.c0, b.c1, b.k0, b.k1) for b in chosen.blocks] == [(0, 26, 0, 39), (26, 52, 13, 52)]
    wide = window_plan(layout, WindowPattern(window_extents((1, 7, 26)), block_size=128)).axis_tables()
    assert len(row_bands(*wide).blocks) == 1


def test_backward_in_its_own_taller_bands_is_exact(monkeypatch):
    """Reduced precision runs the backward in taller bands than the forward (the saved output makes any bands exact):
    checked in f64 by giving f64 that rule, against SDPA's gradients, with text and two column blocks."""
    monkeypatch.setattr(window_rows, "BAND_MIN_QUERIES", 16)
    monkeypatch.setattr(window_rows, "BACKWARD_BAND_MIN_QUERIES", 48)
    monkeypatch.setattr(window_rows, "TALL_BACKWARD_DTYPES", (torch.float64,))
    layout = VideoLayout(4, 9, 14, 3, "after")
    extents = window_extents((1, 2, 3))
    wplan = window_plan(layout, WindowPattern(extents, block_size=16))
    schedule = row_bands(*wplan.axis_tables(), column_blocks=2)
    tall = schedule.backward_schedule(torch.float64)
    assert [len(b.bands) for b in schedule.blocks] == [3, 3] and [len(b.bands) for b in tall.blocks] == [2, 2]
    assert schedule.backward_schedule(torch.float32) is schedule
    assert row_bands(*wplan.axis_tables(), band_rows=2).backward_schedule(torch.float64).band_rows == 2  # as asked
    q, k, v = leaves(layout.total_tokens, 2)
    out = row_band_attention(q, k, v, schedule, layout, scale=0.4)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=naive_mask(layout, extents), scale=0.4)
    upstream = torch.randn_like(out)
    for mine, ref in zip(torch.autograd.grad(out, (q, k, v), upstream), torch.autograd.grad(expected, (q, k, v), upstream)):
        torch.testing.assert_close(mine, ref, atol=1e-10, rtol=1e-10)
    assert torch.float64 in tall.memo  # the backward ran the tall bands (their masks were built)


def test_dilated_rows_and_cols_equal_masked_sdpa():
    layout = VideoLayout(4, 9, 11, 2, "after")
    extents, dilation = window_extents((1, 2, 2)), (1, 2, 3)
    wplan = window_plan(layout, WindowPattern(extents, dilation, block_size=16))
    q, k, v = (x.detach() for x in leaves(layout.total_tokens, 1))
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=naive_mask(layout, extents, dilation), scale=0.4)
    torch.testing.assert_close(window_attention(q, k, v, wplan, None, backend="rows", scale=0.4), expected, atol=1e-10, rtol=1e-10)
    blocked = row_band_attention(q, k, v, row_bands(*wplan.axis_tables(), column_blocks=3), layout, scale=0.4)  # gaps in the hulls
    torch.testing.assert_close(blocked, expected, atol=1e-10, rtol=1e-10)


def test_masks_built_per_call_when_over_the_memo_budget(monkeypatch):
    layout = VideoLayout(4, 6, 7, 2, "after")
    wplan = window_plan(layout, WindowPattern(window_extents((1, 2, 2)), block_size=16))
    q, k, v = leaves(layout.total_tokens, 1)
    memoised = row_band_attention(q, k, v, row_bands(*wplan.axis_tables()), layout)
    monkeypatch.setattr(window_rows, "MASK_MEMO_BYTES", 0)
    schedule = row_bands(*wplan.axis_tables())
    per_call = row_band_attention(q, k, v, schedule, layout)
    assert schedule.memo == {}
    torch.testing.assert_close(per_call, memoised, atol=0, rtol=0)


def test_passes_over_head_chunks_change_nothing(monkeypatch):
    layout = VideoLayout(4, 6, 7, 3, "before")
    wplan = window_plan(layout, WindowPattern(window_extents((1, 2, 2)), block_size=16))
    q, k, v = leaves(layout.total_tokens, 2)
    runs = []
    for budget in (window_rows.STACK_BYTES, 1):  # all heads in one pass; one head per pass
        monkeypatch.setattr(window_rows, "STACK_BYTES", budget)
        out = row_band_attention(q, k, v, row_bands(*wplan.axis_tables(), column_blocks=2), layout)
        runs.append((out, *torch.autograd.grad(out.square().sum(), (q, k, v))))
    assert len(window_rows._passes(q, row_bands(*wplan.axis_tables()))[1]) == 2 * 3
    for chunked, whole in zip(*runs):
        torch.testing.assert_close(chunked, whole, atol=0, rtol=0)


def test_bf16_is_close_to_the_f32_reference():
    layout = VideoLayout(4, 8, 16, 5, "after")
    extents = window_extents((1, 3, 5))
    wplan = window_plan(layout, WindowPattern(extents, block_size=32))
    q, k, v = (x.detach() for x in leaves(layout.total_tokens, 1, torch.float32, seed=2))
    out = row_band_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), row_schedule(wplan), layout)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=naive_mask(layout, extents))
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expected, atol=2e-2, rtol=2e-2)


def test_auto_runs_short_sequences_as_sdpa_with_the_mask_and_longer_ones_on_rows():
    """Up to DENSE_MAX_MASK entries auto runs the plan on ``dense`` (SDPA with its mask), past that on ``rows``."""
    for grid, expected in (((3, 8, 16), "dense"), ((3, 24, 32), "rows")):  # 384 and 2,304 tokens
        layout = VideoLayout(*grid)
        wplan = WindowAttnProcessor(window=(1, 2, 3), tile=None, block_size=16).window_plan(layout)
        q, k, v = (torch.randn(1, 1, layout.total_tokens, 8, generator=torch.Generator().manual_seed(i)) for i in range(3))
        auto = window_attention(q, k, v, wplan)
        assert torch.equal(auto, window_attention(q, k, v, wplan, backend=expected))
        reference = F.scaled_dot_product_attention(q, k, v, attn_mask=naive_mask(layout, window_extents((1, 2, 3))))
        torch.testing.assert_close(auto, reference, atol=1e-5, rtol=1e-5)


def test_auto_takes_rows_on_the_cpu_where_it_applies():
    layout = VideoLayout(5, 6, 7, 3, "after")
    proc = WindowAttnProcessor(window=(1, 2, 3), tile=None, block_size=16)
    wplan = proc.window_plan(layout)
    q, k, v = (x.detach() for x in leaves(layout.total_tokens, 2, torch.float32))
    assert _rows_apply(q, wplan, None)
    valid = torch.ones(2, layout.total_tokens, dtype=torch.bool)
    valid[1, -1] = False  # a text key: still rows
    assert _rows_apply(q, wplan, valid)
    valid[1, 0] = False  # a video key: rows refuses, auto runs the tiles
    assert not _rows_apply(q, wplan, valid)
    with pytest.raises(ValueError, match="masks video keys"):
        window_attention(q, k, v, wplan, valid, backend="rows")
    mask = naive_mask(layout, window_extents((1, 2, 3))) & valid.view(2, 1, 1, -1)
    torch.testing.assert_close(window_attention(q, k, v, wplan, valid, backend="auto"), F.scaled_dot_product_attention(q, k, v, attn_mask=mask), atol=1e-5, rtol=1e-5)
    # A window truncated at the borders: query frames see 2 or 3 key frames, so no stack width fits.
    truncated = window_plan(layout, WindowPattern(window_extents((1, 2, 3)), inward=False, block_size=16))
    assert not _rows_apply(q, truncated, None)
    with pytest.raises(ValueError, match="same number of key frames"):
        window_attention(q, k, v, truncated, None, backend="rows")
    with pytest.raises(ValueError, match="same B, H, N"):
        window_attention(q, k[:, :1], v, wplan, None, backend="rows")
    with pytest.raises(ValueError, match=r"band_rows must be an int >= 1 or None \(query rows per band\)"):
        row_bands(*wplan.axis_tables(), band_rows=0)
    with pytest.raises(ValueError, match=r"column_blocks must be an int in \[1, 7\]"):
        row_bands(*wplan.axis_tables(), column_blocks=8)
    sta = window_plan(layout, WindowPattern(window_extents((1, 1, 1)), block_size=16, tile=(1, 4, 4), tile_aligned=True))
    assert not _rows_apply(q, sta, None)
    with pytest.raises(ValueError, match="token-level windows"):
        window_attention(q, k, v, sta, None, backend="rows")


def test_processor_rows_ignores_the_tiled_order():
    """tile='auto' may pick a 3D-tiled order for the tile backends; rows runs the same window in the natural order."""
    layout = VideoLayout(3, 8, 16)
    q, k, v = (x.detach() for x in leaves(layout.total_tokens, 1, torch.float32, seed=3))
    outs = {}
    for backend in ("rows", "flex"):
        proc = WindowAttnProcessor(window=(1, 3, 5), tile=(1, 4, 8), block_size=32, backend=backend, scale_factor=1.0)
        outs[backend] = proc.attend(q, k, v, layout, None, "wan")
    assert proc.window_plan(layout).order is not None
    torch.testing.assert_close(outs["rows"], outs["flex"], atol=1e-5, rtol=1e-5)
