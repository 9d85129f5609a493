"""Block-sparse kernels: flex and gather against SDPA with an explicit token mask, incl. padding and gradients."""

import pytest
import torch
import torch.nn.functional as F
from test_radial_pattern import naive_radial_tiles

from vidattn.kernels import block_sparse_attention
from vidattn.layout import VideoLayout
from vidattn.patterns.plan import BlockPlan, full_plan
from vidattn.patterns.radial import RadialPattern, radial_plan


def masked_sdpa(q, k, v, token_mask):
    """Independent reference: SDPA with an explicit (B|1, H|1, N, N) boolean mask."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=token_mask)


def expand_tiles(tiles, block, n):
    idx = torch.arange(n)
    return tiles[:, :, idx.view(-1, 1) // block, idx.view(1, -1) // block]


def qkv(b, h, n, d, seed=0, grad=False):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, h, n, d, generator=g, requires_grad=grad) for _ in range(3)]


@pytest.mark.parametrize("layout", [VideoLayout(5, 4, 8), VideoLayout(6, 5, 7, text=9, text_position="before")])
def test_gather_and_dense_equal_masked_sdpa(layout):
    plan = radial_plan(layout, RadialPattern(decay=0.4, block_size=16, decimation=16))
    n = layout.total_tokens
    q, k, v = qkv(2, 3, n, 16)
    naive = naive_radial_tiles(layout, 0.4, 16, sink=True, decimation=16).view(1, 1, *plan.tiles.shape[-2:])
    expected = masked_sdpa(q, k, v, expand_tiles(naive, 16, n))
    for backend in ("gather", "dense"):
        out = block_sparse_attention(q, k, v, plan, backend=backend, gather_chunk=2)
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_flex_equals_masked_sdpa_with_padding_and_key_mask():
    layout = VideoLayout(6, 5, 7, text=9)  # 219 tokens: not a multiple of 32
    plan = radial_plan(layout, RadialPattern(decay=0.3, block_size=32, decimation=32))
    n = layout.total_tokens
    q, k, v = qkv(2, 2, n, 16, seed=1)
    key_valid = torch.ones(2, n, dtype=torch.bool)
    key_valid[1, -4:] = False  # padded text of the second prompt
    naive = naive_radial_tiles(layout, 0.3, 32, sink=True, decimation=32).view(1, 1, *plan.tiles.shape[-2:])
    mask = expand_tiles(naive, 32, n) & key_valid.view(2, 1, 1, n)
    expected = masked_sdpa(q, k, v, mask)
    out = block_sparse_attention(q, k, v, plan, key_valid, backend="flex")
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    gathered = block_sparse_attention(q, k, v, plan, key_valid, backend="gather")
    torch.testing.assert_close(gathered, expected, atol=1e-5, rtol=1e-5)


def test_gather_gradients_match_masked_sdpa():
    layout = VideoLayout(5, 3, 7)
    plan = radial_plan(layout, RadialPattern(decay=0.5, block_size=8, decimation=8))
    n = layout.total_tokens
    q, k, v = qkv(1, 2, n, 8, seed=2, grad=True)
    mask = expand_tiles(plan.tiles, 8, n)
    grad_out = torch.randn(1, 2, n, 8)
    (masked_sdpa(q, k, v, mask) * grad_out).sum().backward()
    expected = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    (block_sparse_attention(q, k, v, plan, backend="gather", gather_chunk=3) * grad_out).sum().backward()
    for t, e in zip((q, k, v), expected):
        torch.testing.assert_close(t.grad, e, atol=1e-5, rtol=1e-4)


def test_auto_uses_gather_for_cpu_training():
    from vidattn.kernels import resolve_backend

    q = torch.randn(1, 1, 4, 4, requires_grad=True)
    assert resolve_backend("auto", q) == "gather"
    with torch.no_grad():
        assert resolve_backend("auto", q) == "flex"
    with pytest.raises(ValueError, match="backend must be one of"):
        resolve_backend("sparse", q)


def test_token_mask_and_per_head_tiles():
    """A per-head plan with a token-level refinement (a causal mask inside tiles) on every backend but flex."""
    n, block = 40, 8
    tiles = torch.rand(1, 2, 5, 5, generator=torch.Generator().manual_seed(3)) > 0.4
    tiles |= torch.eye(5, dtype=torch.bool)
    plan = BlockPlan(tiles, block, n, token_mask=lambda b, h, qi, ki: ki <= qi)
    q, k, v = qkv(2, 2, n, 8, seed=4)
    idx = torch.arange(n)
    mask = expand_tiles(tiles, block, n) & (idx.view(1, -1) <= idx.view(-1, 1))
    expected = masked_sdpa(q, k, v, mask)
    torch.testing.assert_close(block_sparse_attention(q, k, v, plan, backend="gather"), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(block_sparse_attention(q, k, v, plan, backend="dense"), expected, atol=1e-5, rtol=1e-5)


def test_full_plan_is_dense_attention():
    q, k, v = qkv(1, 2, 50, 8, seed=5)
    out = block_sparse_attention(q, k, v, full_plan(50, 16), backend="gather")
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v), atol=1e-5, rtol=1e-5)


def test_auto_runs_a_plan_keeping_every_tile_as_key_masked_sdpa():
    """A plan that keeps every tile is dense attention: auto runs SDPA with the key mask at any length (here past
    DENSE_MAX_MASK); a batch element without any valid key gets zeros, as on every backend."""
    from vidattn.kernels import resolve_backend
    from vidattn.kernels.block_sparse import DENSE_MAX_MASK

    n = 2100
    assert n * n > DENSE_MAX_MASK
    plan = full_plan(n, 128)
    q, k, v = qkv(2, 2, n, 8, seed=6, grad=True)
    key_valid = torch.ones(2, n, dtype=torch.bool)
    key_valid[0, 1500:] = False
    key_valid[1] = False
    for dtype in (torch.float32, torch.bfloat16):
        assert resolve_backend("auto", q.to(dtype), plan) == "dense"
    causal = BlockPlan(plan.tiles, 128, n, token_mask=lambda b, h, qi, ki: ki <= qi)
    assert resolve_backend("auto", q.detach(), causal) == "flex"
    expected = masked_sdpa(q, k, v, key_valid.view(2, 1, 1, n)).nan_to_num(0.0)  # some SDPA kernels give NaN where no key is valid
    out = block_sparse_attention(q, k, v, plan, key_valid)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-6)
    assert out[1].abs().max() == 0
    out.sum().backward()  # differentiable
    assert all(t.grad is not None and t.grad.isfinite().all() for t in (q, k, v))
    with torch.no_grad():
        torch.testing.assert_close(block_sparse_attention(q, k, v, plan), F.scaled_dot_product_attention(q, k, v), atol=0, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_auto_runs_short_cpu_sequences_as_sdpa_with_the_memoised_plan_mask(dtype):
    """Up to DENSE_MAX_MASK mask entries auto runs SDPA with the plan's additive mask (built once per device and
    dtype, memoised on the plan), forward and backward, against the naive radial tiles; longer plans do not."""
    from vidattn.kernels import resolve_backend

    layout = VideoLayout(9, 8, 8)
    plan = radial_plan(layout, RadialPattern(decay=0.4, block_size=16, decimation=16))
    n = layout.total_tokens
    q, k, v = (t.to(dtype).detach().requires_grad_() for t in qkv(2, 2, n, 16, seed=7))
    key_valid = torch.ones(2, n, dtype=torch.bool)
    key_valid[1, 500:] = False
    assert plan.tile_density < 0.8 and resolve_backend("auto", q, plan) == "dense"
    naive = naive_radial_tiles(layout, 0.4, 16, sink=True, decimation=16).view(1, 1, *plan.tiles.shape[-2:])
    mask = expand_tiles(naive, 16, n) & key_valid.view(2, 1, 1, n)
    reference = [t.detach().double().requires_grad_() for t in (q, k, v)]
    expected = masked_sdpa(*reference, mask)
    grad_out = torch.randn(2, 2, n, 16, dtype=torch.float64)
    (expected * grad_out).sum().backward()
    for _ in range(2):  # the second call reads the memoised mask
        out = block_sparse_attention(q, k, v, plan, key_valid)
    assert [key for key in plan.memo if key[0] == "additive_mask"] == [("additive_mask", "cpu", dtype)]
    (out * grad_out.to(dtype)).sum().backward()
    tol = dict(atol=1e-10, rtol=1e-10) if dtype == torch.float64 else dict(atol=3e-2, rtol=3e-2)
    torch.testing.assert_close(out.double(), expected, **tol)
    for t, r in zip((q, k, v), reference):
        torch.testing.assert_close(t.grad.double() / 2, r.grad / 2, **tol)
    long = radial_plan(VideoLayout(9, 16, 16), RadialPattern(decay=0.2, block_size=64))
    with torch.no_grad():
        assert resolve_backend("auto", torch.zeros(1, 1, long.seq_len, 8), long) == "segments"


def test_plan_shape_is_checked():
    with pytest.raises(ValueError, match="tiles"):
        BlockPlan(torch.ones(1, 1, 3, 3, dtype=torch.bool), 16, 64)
    q = torch.randn(1, 1, 10, 4)
    with pytest.raises(ValueError, match="plan is for"):
        block_sparse_attention(q, q, q, full_plan(12, 4))
