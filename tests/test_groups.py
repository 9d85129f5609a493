"""backend='groups' (kernels/groups.py): one fused SDPA call per group of query tiles that keep the same key tiles,
against SDPA with an explicit token mask: repeated and unique rows, per-head and per-batch tiles, padding tokens,
key masks that empty a group, gradients in f64, bf16; and auto's choice (STA -> groups, radial -> not)."""

import pytest
import torch
import torch.nn.functional as F
from test_kernels import expand_tiles, masked_sdpa, qkv
from test_sta import naive_sta_mask

from vidattn.kernels import block_sparse_attention, resolve_backend
from vidattn.kernels.groups import grouped_attention, tiles_per_group, token_groups
from vidattn.layout import VideoLayout
from vidattn.patterns.plan import BlockPlan
from vidattn.patterns.radial import RadialPattern, radial_plan
from vidattn.patterns.window import WindowPattern, window_extents, window_plan
from vidattn.processors.window import window_attention


def rows_with_repeats(heads: int, blocks: int, seed: int) -> torch.Tensor:
    """(1, heads, blocks, blocks) tiles whose rows repeat (a few distinct rows, one empty) in a shuffled order."""
    g = torch.Generator().manual_seed(seed)
    distinct = torch.rand(heads, 3, blocks, generator=g) > 0.5
    distinct[:, 0] = False  # an empty row: its queries see nothing
    pick = torch.randint(0, 3, (heads, blocks), generator=g)
    return torch.stack([distinct[h, pick[h]] for h in range(heads)]).unsqueeze(0)


def reference(q, k, v, plan, key_valid=None):
    mask = expand_tiles(plan.tiles, plan.block_size, plan.seq_len)
    if plan.real_keys is not None:
        mask = mask & plan.real_keys.view(1, 1, 1, -1)
    if key_valid is not None:
        mask = mask & key_valid.view(key_valid.shape[0], 1, 1, -1)
    out = masked_sdpa(q, k, v, mask)
    return out.masked_fill(~mask.any(-1, keepdim=True), 0.0)  # rows without a key are zeros


@pytest.mark.parametrize("tile_batch", [1, 2])
def test_groups_equal_masked_sdpa_with_per_head_tiles_padding_and_key_masks(tile_batch):
    n, bs = 45, 8  # 6 tiles, the last one short
    tiles = torch.cat([rows_with_repeats(3, 6, seed) for seed in range(tile_batch)])
    real = torch.ones(n, dtype=torch.bool)
    real[10:13] = False  # padding inside the sequence: never a key, its query rows are dropped
    plan = BlockPlan(tiles, bs, n, real_keys=real)
    q, k, v = qkv(2, 3, n, 16, seed=tile_batch)
    key_valid = torch.ones(2, n, dtype=torch.bool)
    key_valid[1, :24] = False  # empties some groups of batch element 1
    out = grouped_attention(q, k, v, plan, key_valid, scale=16**-0.5)
    expected = reference(q, k, v, plan, key_valid)
    torch.testing.assert_close(out[:, :, real], expected[:, :, real], atol=1e-5, rtol=1e-5)
    assert (out[:, :, ~real] == 0).all()


def test_group_structure():
    tiles = rows_with_repeats(1, 6, seed=3)
    plan = BlockPlan(tiles, 4, 24)
    groups = token_groups(plan)
    assert torch.equal(torch.sort(torch.cat([g.queries for g in groups])).values, torch.nonzero(tiles[0, 0].any(-1).repeat_interleave(4)).flatten())
    for g in groups:  # each group's queries keep exactly its keys
        rows = tiles[0, 0, g.queries // 4]
        assert (rows == rows[0]).all() and torch.equal(g.keys, torch.nonzero(rows[0].repeat_interleave(4)).flatten())
    distinct = {tuple(r.tolist()) for r in tiles[0, 0] if r.any()}
    assert tiles_per_group(plan) == tiles[0, 0].any(-1).sum().item() / len(distinct)


def test_gradients_equal_masked_sdpa_in_float64():
    n, bs = 37, 6
    tiles = rows_with_repeats(2, 7, seed=5)
    real = torch.ones(n, dtype=torch.bool)
    real[20:22] = False
    plan = BlockPlan(tiles, bs, n, real_keys=real)
    q, k, v = (x.double().detach().requires_grad_() for x in qkv(2, 2, n, 8, seed=6))
    key_valid = torch.ones(2, n, dtype=torch.bool)
    key_valid[0, 30:] = False
    grad_out = torch.randn(2, 2, n, 8, dtype=torch.float64) * real.view(1, 1, -1, 1)  # padding rows are dropped
    (reference(q, k, v, plan, key_valid) * grad_out).sum().backward()
    expected = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    (block_sparse_attention(q, k, v, plan, key_valid, backend="groups") * grad_out).sum().backward()
    for t, e in zip((q, k, v), expected):
        torch.testing.assert_close(t.grad, e, atol=1e-10, rtol=1e-10)


def test_sta_on_groups_equals_the_naive_rule_in_bf16_and_f32():
    """Through window_attention: the groups are gathered in the original token order (no permutation)."""
    layout, tile, sizes = VideoLayout(4, 10, 12, text=5), (1, 8, 8), (3, 1, 2)
    wplan = window_plan(layout, WindowPattern(window_extents(size=sizes), block_size=64, tile=tile, tile_aligned=True))
    n = layout.total_tokens
    q, k, v = qkv(2, 2, n, 16, seed=8)
    key_valid = torch.ones(2, n, dtype=torch.bool)
    key_valid[1, -2:] = False  # padded text
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=naive_sta_mask(layout, tile, sizes) & key_valid.view(2, 1, 1, n))
    torch.testing.assert_close(window_attention(q, k, v, wplan, key_valid, backend="groups"), expected, atol=1e-5, rtol=1e-5)
    low = window_attention(*(x.bfloat16() for x in (q, k, v)), wplan, key_valid, backend="groups")
    assert low.dtype == torch.bfloat16 and (low.float() - expected).abs().max() < 3e-2


def test_auto_takes_groups_where_query_tiles_share_key_sets():
    q = torch.randn(1, 1, 8, 4)
    layout = VideoLayout(6, 16, 24)  # 2,304 tokens: past DENSE_MAX_MASK, where auto runs short sequences as SDPA
    sta = window_plan(layout, WindowPattern(window_extents(size=(3, 3, 3)), block_size=32, tile=(1, 4, 8), tile_aligned=True)).plan
    radial = radial_plan(layout, RadialPattern(decay=0.2, block_size=32))
    assert tiles_per_group(sta) >= 3 > tiles_per_group(radial)
    with torch.no_grad():
        assert resolve_backend("auto", q, sta) == "groups"
        assert resolve_backend("auto", q.bfloat16(), radial) == "flex"
    assert resolve_backend("auto", q.requires_grad_(), sta) == "groups"


def test_bad_inputs_are_refused():
    plan = BlockPlan(torch.ones(1, 1, 2, 2, dtype=torch.bool), 4, 8, token_mask=lambda b, h, qi, ki: ki <= qi)
    q = torch.randn(1, 1, 8, 4)
    with pytest.raises(ValueError, match="backend='groups' needs a plan without token_mask"):
        grouped_attention(q, q, q, plan, None, 0.5)
    plain = BlockPlan(torch.ones(1, 1, 2, 2, dtype=torch.bool), 4, 8)
    with pytest.raises(ValueError, match="backend='groups' runs on the CPU only"):
        grouped_attention(q.to("meta"), q.to("meta"), q.to("meta"), plain, None, 0.5)
    with pytest.raises(ValueError, match="key_valid must be a bool tensor"):
        grouped_attention(q, q, q, plain, torch.ones(3, 8, dtype=torch.bool), 0.5)
    with pytest.raises(ValueError, match=r"plan is for 8 positions, got 9 \(order entries\)"):
        grouped_attention(q, q, q, plain, None, 0.5, order=torch.arange(9))
