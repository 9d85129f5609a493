"""The 'segments' CPU backend: piece cover of the tiles, and outputs/gradients against SDPA with an explicit mask."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vidattn.kernels import block_sparse_attention, resolve_backend
from vidattn.kernels.segment_plan import segment_plan
from vidattn.layout import VideoLayout
from vidattn.patterns.plan import BlockPlan
from vidattn.patterns.radial import RadialPattern, radial_plan


def expand_tiles(tiles, block, n):
    idx = torch.arange(n)
    return tiles[:, :, idx.view(-1, 1) // block, idx.view(1, -1) // block]


def reference(q, k, v, mask):
    """SDPA with an explicit (B|1, H|1, N, N) mask; rows with no allowed key are zero."""
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return out.masked_fill(~mask.any(-1, keepdim=True), 0.0)


def qkv(b, h, n, d, seed=0, grad=False, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, h, n, d, generator=g).to(dtype).requires_grad_(grad) for _ in range(3)]


def cover_count(tiles: np.ndarray, pieces) -> np.ndarray:
    count = np.zeros(tiles.shape, dtype=int)
    for r0, r1, c0, c1 in pieces.rects:
        count[r0:r1, c0:c1] += 1
    for r0, r1, c, w in pieces.strips:
        for r in range(r0, r1):
            count[r, r + c : r + c + w] += 1
    for r, c0, w in pieces.singles:
        count[r, c0 : c0 + w] += 1
    return count


@pytest.mark.parametrize("layout", [VideoLayout(21, 30, 52), VideoLayout(9, 8, 16, text=20), VideoLayout(12, 8, 16, text=9, text_position="before")])
def test_pieces_cover_every_tile_once(layout):
    block = 128 if layout.frames == 21 else 16
    tiles = radial_plan(layout, RadialPattern(decay=0.2, block_size=block, decimation=block)).tiles[0, 0].numpy()
    n_blocks = tiles.shape[0]
    pieces = segment_plan(tiles, n_blocks - 1, np.arange(n_blocks) < n_blocks - 1)
    assert (cover_count(tiles, pieces) == tiles).all()
    assert pieces.strips, "radial bands should run as strips"
    for r0, r1, c, w in pieces.strips:  # strips stay inside whole rows and allowed columns
        assert r1 <= n_blocks - 1 and r1 - 1 + c + w <= n_blocks - 1


def test_pieces_cover_random_tiles():
    g = np.random.default_rng(0)
    for _ in range(20):
        tiles = g.random((23, 23)) > 0.6
        cols = g.random(23) > 0.2
        pieces = segment_plan(tiles, 20, cols)
        assert (cover_count(tiles, pieces) == tiles).all()
        for r0, r1, c, w in pieces.strips:
            assert r1 <= 20 and all(cols[r + c : r + c + w].all() for r in range(r0, r1))
        for r, c0, w in pieces.singles:
            assert r < 20 and cols[c0 : c0 + w].all()


RADIAL_CASES = [
    (VideoLayout(5, 4, 8), 16),
    (VideoLayout(6, 5, 7, text=9, text_position="before"), 16),
    (VideoLayout(6, 5, 7, text=9), 32),  # 219 tokens: a partial last tile
    (VideoLayout(12, 8, 16, text=20), 16),  # long enough for strips
]


@pytest.mark.parametrize("layout,block", RADIAL_CASES)
def test_radial_output_and_gradients_match_masked_sdpa(layout, block):
    plan = radial_plan(layout, RadialPattern(decay=0.3, block_size=block, decimation=block))
    n = layout.total_tokens
    key_valid = torch.ones(2, n, dtype=torch.bool)
    key_valid[1, -5:] = False  # padded text of the second prompt
    key_valid[0, 3:7] = False  # and a hole inside a tile
    mask = expand_tiles(plan.tiles, block, n) & key_valid.view(2, 1, 1, n)
    q, k, v = qkv(2, 3, n, 16, seed=1, grad=True)
    grad_out = torch.randn(2, 3, n, 16, generator=torch.Generator().manual_seed(9))
    (reference(q, k, v, mask) * grad_out).sum().backward()
    expected = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    out = block_sparse_attention(q, k, v, plan, key_valid, backend="segments")
    torch.testing.assert_close(out, reference(q, k, v, mask), atol=1e-5, rtol=1e-5)
    (out * grad_out).sum().backward()
    for t, e in zip((q, k, v), expected):
        torch.testing.assert_close(t.grad, e, atol=1e-5, rtol=1e-4)


def test_strips_run_on_non_contiguous_inputs_and_match_dense_backend():
    layout = VideoLayout(12, 8, 16)
    plan = radial_plan(layout, RadialPattern(decay=0.3, block_size=16, decimation=16))
    n = layout.total_tokens
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(2, n, 4, 16, generator=g).transpose(1, 2) for _ in range(3))  # (B, H, N, D) views
    out = block_sparse_attention(q, k, v, plan, backend="segments")
    torch.testing.assert_close(out, block_sparse_attention(q, k, v, plan, backend="dense"), atol=1e-5, rtol=1e-5)


def test_per_head_and_per_batch_tiles_with_empty_rows():
    n, block = 70, 8  # 9 tiles, the last one partial
    g = torch.Generator().manual_seed(3)
    tiles = torch.rand(2, 3, 9, 9, generator=g) > 0.5
    tiles[0, 1, 4] = False  # query tile with no key at all: zeros
    tiles[1, :, :, 2:5] |= torch.eye(9, dtype=torch.bool)[:, :3]  # some diagonal structure
    plan = BlockPlan(tiles, block, n)
    mask = expand_tiles(tiles, block, n)
    q, k, v = qkv(2, 3, n, 8, seed=4, grad=True)
    out = block_sparse_attention(q, k, v, plan, backend="segments")
    torch.testing.assert_close(out, reference(q, k, v, mask), atol=1e-5, rtol=1e-5)
    assert out[0, 1, 32:40].abs().max() == 0
    out.sum().backward()
    assert q.grad[0, 1, 32:40].abs().max() == 0


def test_large_logits_take_the_rescale_path():
    """Pieces whose log-sum-exp differ by far more than the merge margin still merge exactly."""
    layout = VideoLayout(12, 8, 16)
    plan = radial_plan(layout, RadialPattern(decay=0.3, block_size=16, decimation=16))
    n = layout.total_tokens
    q, k, v = qkv(1, 2, n, 16, seed=5)
    q = q * 12.0
    mask = expand_tiles(plan.tiles, 16, n)
    torch.testing.assert_close(block_sparse_attention(q, k, v, plan, backend="segments"), reference(q, k, v, mask), atol=1e-5, rtol=1e-5)


def test_bfloat16_close_to_float32_reference():
    layout = VideoLayout(12, 8, 16, text=20)
    plan = radial_plan(layout, RadialPattern(decay=0.3, block_size=16, decimation=16))
    n = layout.total_tokens
    q, k, v = qkv(1, 2, n, 32, seed=6)
    expected = reference(q, k, v, expand_tiles(plan.tiles, 16, n))
    out = block_sparse_attention(*(t.bfloat16() for t in (q, k, v)), plan, backend="segments")
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expected, atol=3e-2, rtol=3e-2)


def test_token_mask_plans_are_refused():
    tiles = torch.ones(1, 1, 4, 4, dtype=torch.bool)
    plan = BlockPlan(tiles, 8, 32, token_mask=lambda b, h, qi, ki: ki <= qi)
    q = torch.randn(1, 1, 32, 8)
    with pytest.raises(ValueError, match="token_mask"):
        block_sparse_attention(q, q, q, plan, backend="segments")


def test_auto_rule():
    tiles = torch.ones(1, 1, 4, 4, dtype=torch.bool).tril()  # distinct rows: nothing for groups to share
    n = 4096  # past DENSE_MAX_MASK: a short sequence runs as SDPA with the plan's mask
    plain = BlockPlan(tiles, n // 4, n)
    masked = BlockPlan(tiles, n // 4, n, token_mask=lambda b, h, qi, ki: ki <= qi)
    q = torch.randn(1, 1, n, 8, requires_grad=True)
    assert resolve_backend("auto", q[:, :, :32], BlockPlan(tiles, 8, 32)) == "dense"
    assert resolve_backend("auto", q, plain) == "segments"  # CPU training
    assert resolve_backend("auto", q, masked) == "gather"
    assert resolve_backend("auto", q.detach().bfloat16().requires_grad_(), plain) == "segments"  # bf16 training
    with torch.no_grad():
        assert resolve_backend("auto", q, plain) == "segments"  # CPU f32 inference
        assert resolve_backend("auto", q.bfloat16(), plain) == "flex"  # CPU bf16 inference: flex measured faster
        assert resolve_backend("auto", q, masked) == "flex"


def test_real_keys_are_never_attended():
    """Padding inside the sequence (BlockPlan.real_keys) is masked like key_valid, and combines with it."""
    layout = VideoLayout(12, 8, 16)
    base = radial_plan(layout, RadialPattern(decay=0.3, block_size=16, decimation=16))
    n = layout.total_tokens
    real = torch.ones(n, dtype=torch.bool)
    real[100:120] = False
    real[500:503] = False
    plan = BlockPlan(base.tiles, 16, n, full=None, real_keys=real)
    key_valid = torch.ones(2, n, dtype=torch.bool)
    key_valid[1, -7:] = False
    mask = expand_tiles(plan.tiles, 16, n) & real.view(1, 1, 1, n) & key_valid.view(2, 1, 1, n)
    q, k, v = qkv(2, 2, n, 16, seed=7)
    out = block_sparse_attention(q, k, v, plan, key_valid, backend="segments")
    torch.testing.assert_close(out, reference(q, k, v, mask), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_reduced_precision_gradients_close_to_float32_reference(dtype):
    """bf16/f16 strips run their backward as masked pairs of query tiles (an odd last tile alone) and sum the
    gradients in their own dtype: the error stays within twice dense SDPA's own error in that dtype."""
    layout = VideoLayout(12, 8, 16, text=20)
    plan = radial_plan(layout, RadialPattern(decay=0.3, block_size=16, decimation=16))
    n = layout.total_tokens
    pieces = segment_plan(plan.tiles[0, 0].numpy(), n // 16, np.arange(plan.num_blocks) < n // 16)
    lengths = [r1 - r0 for r0, r1, _, _ in pieces.strips]
    assert any(t >= 2 for t in lengths) and any(t % 2 for t in lengths), "the case should hold paired and odd strips"
    q, k, v = (t.to(dtype).float().requires_grad_(True) for t in qkv(1, 2, n, 32, seed=8))
    grad = torch.randn(1, 2, n, 32, generator=torch.Generator().manual_seed(9)).to(dtype)
    reference(q, k, v, expand_tiles(plan.tiles, 16, n)).backward(grad.float())
    expected = [t.grad for t in (q, k, v)]
    qb, kb, vb = (t.detach().to(dtype).requires_grad_(True) for t in (q, k, v))
    block_sparse_attention(qb, kb, vb, plan, backend="segments").backward(grad)
    qd, kd, vd = (t.detach().to(dtype).requires_grad_(True) for t in (q, k, v))  # dense SDPA's own error
    reference(qd, kd, vd, expand_tiles(plan.tiles, 16, n)).backward(grad)
    for got, dense, want in zip((qb.grad, kb.grad, vb.grad), (qd.grad, kd.grad, vd.grad), expected):
        assert got.dtype == dtype
        torch.testing.assert_close(got.float(), want, atol=3e-2 * want.abs().max().item(), rtol=0)
        err, dense_err = ((x.float() - want).abs().mean().item() for x in (got, dense))
        assert err <= 2 * dense_err, (err, dense_err)
