"""FlexAttention never computes anything but the plan: many shapes in one process stay compiled and exact, the
uncompiled (eager) path equals the dense reference, and a spent recompile budget raises instead of falling back."""

import pytest
import torch
from torch._dynamo.utils import counters
from torch.nn.attention.flex_attention import flex_attention

from vidattn.kernels.block_sparse import block_sparse_attention, dense_token_mask
from vidattn.kernels.flex import FlexRecompileLimitError, bucket_blocks, compile_flex, flex_block_mask, flex_plan_attention
from vidattn.layout import VideoLayout
from vidattn.patterns.plan import BlockPlan
from vidattn.patterns.radial import RadialPattern, radial_plan
from vidattn.patterns.window import WindowPattern, window_extents, window_plan


def qkv(b, h, n, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, h, n, d, generator=g) for _ in range(3)]


def radial(layout):
    return radial_plan(layout, RadialPattern(decay=0.3, block_size=16, decimation=16))


def sta(layout, tile=(1, 4, 4), size=(3, 3, 3)):
    return window_plan(layout, WindowPattern(window_extents(size=size), block_size=16, tile=tile, tile_aligned=True)).plan


# 12 (plan, batch) cases over 7 grids: two length buckets (13-16 and 17-24 blocks of 16 tokens).
SHAPES = [
    (radial, VideoLayout(4, 6, 10), 1),
    (radial, VideoLayout(4, 6, 10), 2),
    (sta, VideoLayout(4, 7, 9), 3),
    (radial, VideoLayout(5, 5, 9, text=7), 1),
    (sta, VideoLayout(4, 8, 8), 2),
    (radial, VideoLayout(6, 6, 9), 3),
    (sta, VideoLayout(5, 8, 8, text=9, text_position="before"), 1),
    (radial, VideoLayout(7, 6, 8, text=3), 2),
    (sta, VideoLayout(5, 7, 8), 2),
    (radial, VideoLayout(6, 6, 9), 1),
    (sta, VideoLayout(4, 8, 8), 3),
    (radial, VideoLayout(5, 6, 10), 3),
]


def test_twelve_shapes_in_one_process_stay_exact_and_compiled():
    """Each output equals SDPA with the explicit mask; the compiled kernels number the length buckets, not the
    shapes (past torch's default limit of 8 the old wrapper fell back to a path that ignored the tiles)."""
    torch.set_num_threads(1)
    buckets = set()
    compiled_before = counters["frames"]["ok"]
    for i, (make, layout, batch) in enumerate(SHAPES):
        plan = make(layout)
        buckets.add(bucket_blocks(plan.num_blocks))
        q, k, v = qkv(batch, 2, plan.seq_len, seed=i)
        key_valid = torch.ones(batch, plan.seq_len, dtype=torch.bool)
        key_valid[-1, -3:] = batch == 1  # the last element masks its last keys (when there are several)
        out = block_sparse_attention(q, k, v, plan, key_valid, backend="flex")
        expected = block_sparse_attention(q, k, v, plan, key_valid, backend="dense")
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5, msg=f"shape {i}: {layout}, batch {batch}")
    assert len(buckets) == 2
    assert counters["frames"]["ok"] - compiled_before <= len(buckets)


def per_batch_plan():
    """Per-batch, per-head tiles with a token mask that reads b (like VMoBA's): checks the batch offset."""
    n, bs = 40, 8
    tiles = torch.rand(2, 2, 5, 5, generator=torch.Generator().manual_seed(3)) > 0.5
    tiles |= torch.eye(5, dtype=torch.bool)
    causal = torch.stack([torch.ones(n, n, dtype=torch.bool), torch.ones(n, n, dtype=torch.bool).tril()])
    return BlockPlan(tiles, bs, n, token_mask=lambda b, h, qi, ki: causal[b, qi, ki])


PLANS = {
    "radial padded": lambda: radial(VideoLayout(6, 5, 7, text=9)),
    "sta ragged": lambda: sta(VideoLayout(4, 7, 9, text=5)),
    "window natural": lambda: window_plan(VideoLayout(3, 7, 9, text=4), WindowPattern(window_extents((1, 2, 3)), block_size=16)).plan,
    "window tiled": lambda: window_plan(VideoLayout(3, 7, 9), WindowPattern(window_extents((1, 2, 3)), block_size=16, tile=(1, 4, 4))).plan,
    "per batch": per_batch_plan,
}


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("name", list(PLANS))
def test_uncompiled_flex_with_vidattn_block_mask_equals_dense(name):
    """Eager flex_attention applies only mask_mod and ignores the tile lists: equal outputs prove the mask_mod
    carries the whole rule (tiles, real keys, key mask, token mask)."""
    plan = PLANS[name]()
    n = plan.seq_len
    padded = bucket_blocks(plan.num_blocks) * plan.block_size
    q, k, v = qkv(2, 2, n, seed=7)
    key_valid = torch.ones(2, n, dtype=torch.bool)
    key_valid[1, -5:] = False
    mask = dense_token_mask(plan, key_valid, "cpu")
    expected = block_sparse_attention(q, k, v, plan, key_valid, backend="dense")
    assert (~mask).any(), "the plan must mask something"
    for b in range(2):
        block_mask = flex_block_mask(plan, key_valid, "cpu", b)
        pq, pk, pv = (torch.nn.functional.pad(x[b : b + 1], (0, 0, 0, padded - n)) for x in (q, k, v))
        out = flex_attention(pq, pk, pv, block_mask=block_mask)[..., :n, :]  # uncompiled: the eager math path
        torch.testing.assert_close(out, expected[b : b + 1], atol=1e-5, rtol=1e-5)


def test_spent_recompile_budget_raises_instead_of_falling_back():
    plan = radial(VideoLayout(4, 6, 10))
    q, k, v = qkv(1, 2, plan.seq_len)
    with pytest.raises(FlexRecompileLimitError, match="recompile budget"):
        flex_plan_attention(q, k, v, plan, None, 0.25, compiled=compile_flex(recompile_limit=0))


def test_compile_flex_without_its_own_budget_still_computes_the_plan():
    """Older torch (no recompile_limit / isolate_recompiles in torch.compile): the wrapper is compiled without them
    and gives the plan's attention (here on this torch, through the same branch)."""
    plan = radial(VideoLayout(4, 6, 10))
    q, k, v = qkv(1, 2, plan.seq_len, seed=9)
    out = flex_plan_attention(q, k, v, plan, None, 0.3, compiled=compile_flex(own_budget=False))
    torch.testing.assert_close(out, block_sparse_attention(q, k, v, plan, backend="dense", scale=0.3), atol=1e-5, rtol=1e-5)


def test_compiled_flex_with_per_head_tiles_and_batch_token_mask():
    """The two-table mask_mod (per-head tiles, no merged table) and the per-batch offset, compiled."""
    plan = per_batch_plan()
    q, k, v = qkv(2, 2, plan.seq_len, seed=8)
    expected = block_sparse_attention(q, k, v, plan, backend="dense")
    torch.testing.assert_close(block_sparse_attention(q, k, v, plan, backend="flex"), expected, atol=1e-5, rtol=1e-5)
