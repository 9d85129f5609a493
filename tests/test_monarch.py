"""Monarch attention against independent references: dense SDPA (exact settings), a per-token Python-loop
re-derivation of the implied attention matrix (R step / L step from the spec's formulas), per-chunk runs for
block-causal mode, float64 gradcheck and the stock diffusers processors."""

import math

import pytest
import torch
import torch.nn.functional as F
from tiny_models import cogvideox_inputs, hunyuan_inputs, tiny_cogvideox, tiny_hunyuan, tiny_wan, wan_inputs

from vidattn.kernels.monarch import (
    monarch_attention,
    monarch_attention_with_kv_cache,
    monarch_flops,
    monarch_video_attention,
)
from vidattn.layout import VideoLayout
from vidattn.processors import MonarchAttnProcessor, MonarchConfig, apply_monarch_attention, remove_processors


def qkv(layout, batch=1, heads=2, dim=6, sharp=1.0, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    n = layout.total_tokens
    q, k, v = (torch.randn(batch, heads, n, dim, generator=g, dtype=dtype) for _ in range(3))
    return q * sharp, k, v


def tile_coords(layout, f_tied, h_reduce, w_reduce):
    """Per video token (frame-major order): (tile, row-in-tile, column-in-tile), from the spec's index formulas."""
    frames, height, width = layout.grid
    th, tw = height // h_reduce, width // w_reduce
    coords, token = {}, {}
    for t in range(frames):
        for y in range(height):
            for x in range(width):
                tile = ((t // f_tied) * h_reduce + y // th) * w_reduce + x // tw
                row, col = (t % f_tied) * th + y % th, x % tw
                idx = (t * height + y) * width + x
                coords[idx] = (tile, row, col)
                token[(tile, row, col)] = idx
    return coords, token, f_tied * th, tw


def naive_matrix(q, k, layout, f_tied=1, h_reduce=1, w_reduce=1, causal=None, key_valid=None):
    """(N, N) implied attention matrix of one (batch, head), entry by entry (joint order, text included)."""
    scale = 1 / math.sqrt(q.shape[-1])
    n, start, video = layout.total_tokens, layout.video_start, layout.video_tokens
    coords, token, b1, b2 = tile_coords(layout, f_tied, h_reduce, w_reduce)
    tiles = video // (b1 * b2)
    per_group = h_reduce * w_reduce
    text = [i for i in range(n) if not start <= i < start + video]
    valid = [True] * n if key_valid is None else key_valid.tolist()
    A = torch.zeros(n, n, dtype=q.dtype)
    for qi in range(n):
        if qi in text:  # dense row
            logits = torch.stack([scale * q[qi] @ k[j] if valid[j] else torch.tensor(-math.inf, dtype=q.dtype) for j in range(n)])
            A[qi] = logits.softmax(0)
            continue
        a, i, j = coords[qi - start]
        groups, logits = [], []
        for f in range(tiles):
            if causal is not None and (f // per_group) * f_tied // causal > (a // per_group) * f_tied // causal:
                continue
            for kr in range(b1):
                rq = q[start + token[(a, kr, j)]]
                keys = [start + token[(f, kr, l)] for l in range(b2)]
                z = torch.stack([scale * rq @ k[m] for m in keys])
                r = z.softmax(0)
                a_l = sum(r[l] * k[keys[l]] for l in range(b2))
                c_l = (r * (z - z.logsumexp(0))).sum()
                groups.append((keys, r))
                logits.append(scale * q[qi] @ a_l - c_l)
        for t in text:
            groups.append(([t], torch.ones(1, dtype=q.dtype)))
            logits.append(scale * q[qi] @ k[t] if valid[t] else torch.tensor(-math.inf, dtype=q.dtype))
        weights = torch.stack(logits).softmax(0)
        for (keys, r), w in zip(groups, weights):
            for m, rl in zip(keys, r):
                A[qi, m] += w * rl
    return A


@pytest.mark.parametrize("tiling", [dict(w_reduce=4), dict(h_reduce=3), dict(w_reduce=4, f_tied=2)])
def test_exact_settings_equal_dense_sdpa(tiling):
    layout = VideoLayout(2, 3, 4)
    q, k, v = qkv(layout, batch=2, sharp=3.0)
    out = monarch_attention(q, k, v, layout, **tiling)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v), rtol=1e-10, atol=1e-10)


def test_non_exact_settings_differ_from_dense():
    layout = VideoLayout(2, 3, 4)
    q, k, v = qkv(layout, sharp=3.0)
    out = monarch_attention(q, k, v, layout, h_reduce=1)
    assert (out - F.scaled_dot_product_attention(q, k, v)).abs().max() > 1e-3


@pytest.mark.parametrize(
    "layout, tiling",
    [
        (VideoLayout(2, 4, 6), dict(h_reduce=2, w_reduce=2)),
        (VideoLayout(4, 2, 3), dict(f_tied=2)),
        (VideoLayout(2, 2, 3, text=3, text_position="before"), dict()),
    ],
)
def test_implied_matrix_matches_naive_rows_sum_to_one(layout, tiling):
    q, k, v = qkv(layout, sharp=2.0, heads=1)
    n = layout.total_tokens
    # Output is linear in V: V = identity columns reads the kernel's implied matrix off directly.
    implied = monarch_attention(q, k, torch.eye(n, dtype=q.dtype)[None, None], layout, **tiling)[0, 0]
    naive = naive_matrix(q[0, 0], k[0, 0], layout, **tiling)
    torch.testing.assert_close(implied, naive, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(implied.sum(-1), torch.ones(n, dtype=q.dtype))
    assert (implied >= 0).all()
    torch.testing.assert_close(monarch_attention(q, k, v, layout, **tiling)[0, 0], naive @ v[0, 0])
    ones = monarch_attention(q, k, torch.ones_like(v), layout, **tiling)
    torch.testing.assert_close(ones, torch.ones_like(ones))


def test_text_keys_and_padding_against_naive_and_dense():
    layout = VideoLayout(2, 2, 4, text=3, text_position="after")
    q, k, v = qkv(layout, batch=2, heads=1, sharp=2.0)
    valid = torch.ones(2, layout.total_tokens, dtype=torch.bool)
    valid[1, -2:] = False  # second prompt is shorter
    out = monarch_attention(q, k, v, layout, key_valid=valid)
    for b in range(2):
        naive = naive_matrix(q[b, 0], k[b, 0], layout, key_valid=valid[b])
        torch.testing.assert_close(out[b, 0], naive @ v[b, 0])
        assert naive[:, ~valid[b]].abs().sum() == 0
    exact = monarch_attention(q, k, v, layout, w_reduce=4, key_valid=valid)
    torch.testing.assert_close(exact, F.scaled_dot_product_attention(q, k, v, attn_mask=valid[:, None, None]))


@pytest.mark.parametrize("axis", ["h_reduce", "w_reduce"])
def test_error_falls_monotonically_as_tiles_shrink(axis):
    layout = VideoLayout(2, 8, 8)
    g = torch.Generator().manual_seed(1)
    # Smooth random fields along the grid (neighbouring tokens alike, as in video latents) plus noise.
    coarse = torch.randn(3, 1, 6, 2, 3, 3, generator=g, dtype=torch.float64)
    fields = F.interpolate(coarse.flatten(0, 1), size=layout.grid, mode="trilinear", align_corners=True)
    q, k, v = (x.view(1, 6, -1).transpose(1, 2).unsqueeze(0) + 0.3 * torch.randn(1, 1, 128, 6, generator=g, dtype=torch.float64) for x in fields)
    q = q * 2.0
    dense = F.scaled_dot_product_attention(q, k, v)
    errors = [float((monarch_attention(q, k, v, layout, **{axis: r}) - dense).norm() / dense.norm()) for r in (1, 2, 4, 8)]
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 1e-12


def test_block_causal_equals_per_chunk_runs_and_kv_cache():
    layout = VideoLayout(6, 2, 3)
    q, k, v = qkv(layout, batch=2, sharp=2.0)
    tiling = dict(f_tied=2, h_reduce=2)
    out = monarch_attention(q, k, v, layout, block_causal_frames=4, **tiling)
    per_frame = 6
    k_cache, v_cache = torch.zeros_like(k), torch.zeros_like(v)
    for start, stop in ((0, 4), (4, 6)):  # chunks of 4 frames; the last one is short
        s, e = start * per_frame, stop * per_frame
        chunk = monarch_video_attention(q[:, :, s:e], k[:, :, :e], v[:, :, :e], 2, 3, **tiling)
        torch.testing.assert_close(out[:, :, s:e], chunk)
        cached = monarch_attention_with_kv_cache(q[:, :, s:e], k_cache, v_cache, k[:, :, s:e], v[:, :, s:e], s, 2, 3, **tiling)
        torch.testing.assert_close(cached, chunk)
    torch.testing.assert_close(k_cache, k)
    # the first chunk must not see the second; the naive reference with the causal rule agrees
    naive = naive_matrix(q[0, 0], k[0, 0], layout, causal=4, **tiling)
    assert naive[: 4 * per_frame, 4 * per_frame :].abs().max() == 0
    torch.testing.assert_close(out[0, 0], naive @ v[0, 0])


def test_block_causal_with_text_keys_against_naive():
    layout = VideoLayout(4, 2, 3, text=2, text_position="before")
    q, k, v = qkv(layout, heads=1, sharp=2.0)
    out = monarch_attention(q, k, v, layout, block_causal_frames=2, w_reduce=3, query_chunk=1)
    naive = naive_matrix(q[0, 0], k[0, 0], layout, causal=2, w_reduce=3)
    torch.testing.assert_close(out[0, 0], naive @ v[0, 0])
    # exact tiling: each video chunk is dense attention to its visible frames plus all text
    mask = torch.ones(layout.total_tokens, layout.total_tokens, dtype=torch.bool)
    chunk = torch.arange(layout.video_tokens) // 12
    mask[2:, 2:] = chunk[:, None] >= chunk[None, :]
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask))


def test_query_chunking_and_checkpoint_do_not_change_results():
    layout = VideoLayout(3, 2, 4)
    q, k, v = qkv(layout, sharp=2.0)
    base = monarch_attention(q, k, v, layout, w_reduce=2)
    for chunk in (1, 2, 5):
        torch.testing.assert_close(monarch_attention(q, k, v, layout, w_reduce=2, query_chunk=chunk), base)
    q1 = q.clone().requires_grad_()
    monarch_attention(q1, k, v, layout, w_reduce=2, query_chunk=2, checkpoint=True).square().sum().backward()
    q2 = q.clone().requires_grad_()
    monarch_attention(q2, k, v, layout, w_reduce=2).square().sum().backward()
    torch.testing.assert_close(q1.grad, q2.grad)


def test_gradcheck_float64():
    layout = VideoLayout(2, 2, 3, text=2)
    q, k, v = (x.requires_grad_() for x in qkv(layout, heads=1, dim=3, sharp=2.0))
    assert torch.autograd.gradcheck(lambda a, b, c: monarch_attention(a, b, c, layout, f_tied=1, h_reduce=1, query_chunk=1), (q, k, v), fast_mode=True)


def test_float32_and_bfloat16_run_close_to_float64():
    layout = VideoLayout(2, 4, 4)
    q, k, v = qkv(layout, sharp=2.0)
    ref = monarch_attention(q, k, v, layout, h_reduce=2)
    torch.testing.assert_close(monarch_attention(q.float(), k.float(), v.float(), layout, h_reduce=2), ref.float(), rtol=1e-5, atol=1e-5)
    low = monarch_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), layout, h_reduce=2)
    assert low.dtype == torch.bfloat16 and (low.double() - ref).abs().max() < 5e-2


def test_flops_ratio_matches_spec_formula():
    layout = VideoLayout(21, 30, 52)
    flops = monarch_flops(layout, 128)
    assert flops["b1"] == 30 and flops["b2"] == 52
    assert abs(flops["ratio"] - (1.5 / 30 + 1 / 52)) < 1e-12


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(h_reduce=3), "h_reduce=3 must divide the grid height 4"),
        (dict(w_reduce=3), "w_reduce=3 must divide the grid width 5"),
        (dict(f_tied=2), "f_tied=2 must divide the grid frames 3"),
        (dict(h_reduce=0), "h_reduce must be a positive int"),
        (dict(block_causal_frames=3, f_tied=3, h_reduce=1), None),
    ],
)
def test_bad_tiling_errors(kwargs, match):
    layout = VideoLayout(3, 4, 5)
    q, k, v = qkv(layout, dim=2)
    if match is None:
        monarch_attention(q, k, v, layout, **kwargs)
        return
    with pytest.raises(ValueError, match=match):
        monarch_attention(q, k, v, layout, **kwargs)


def test_bad_config_and_inputs_error():
    with pytest.raises(ValueError, match="f_tied=2 must divide block_causal_frames=3"):
        MonarchConfig(f_tied=2, block_causal_frames=3)
    with pytest.raises(ValueError, match="h_reduce must be an int >= 1"):
        MonarchConfig(h_reduce=1.5)
    with pytest.raises(ValueError, match="backend must be one of"):
        MonarchConfig(backend="triton")
    with pytest.raises(ValueError, match="unknown MonarchAttnProcessor argument"):
        MonarchAttnProcessor(decay=0.2)
    with pytest.raises(ValueError, match="w_reduce=4 must divide the grid width 6"):
        MonarchAttnProcessor(w_reduce=4, layout=VideoLayout(2, 2, 6))
    layout = VideoLayout(2, 2, 3, text=2)
    q, k, v = qkv(layout, dim=2)
    bad = torch.ones(1, layout.total_tokens, dtype=torch.bool)
    bad[0, 0] = False
    with pytest.raises(ValueError, match="key_valid may only mask text keys"):
        monarch_attention(q, k, v, layout, key_valid=bad)
    with pytest.raises(ValueError, match="has 14 tokens"):
        monarch_attention(q[:, :, :-1], k, v, layout)


def test_backend_is_checked_not_ignored():
    layout = VideoLayout(2, 3, 4)
    with pytest.raises(ValueError, match=r"backend must be one of \('auto',\), got 'flex'"):
        MonarchAttnProcessor(layout=layout, backend="flex", w_reduce=4)
    proc = MonarchAttnProcessor(layout=layout, backend="auto", w_reduce=4)
    q, k, v = qkv(layout, dtype=torch.float32)
    torch.testing.assert_close(proc.attend(q, k, v, layout, None, "wan"), F.scaled_dot_product_attention(q, k, v), rtol=1e-5, atol=1e-5)


def _run(model, inputs):
    with torch.no_grad():
        return model(**inputs)[0]


@pytest.mark.parametrize("family", ["wan", "hunyuan", "cogvideox"])
def test_processors_on_tiny_models(family):
    # latent grid 3 x 4 x 5 in every family: w_reduce=5 (or h_reduce=4) is exact
    if family == "wan":
        model, inputs = tiny_wan(), wan_inputs()
    elif family == "hunyuan":
        model, inputs = tiny_hunyuan(), hunyuan_inputs()
    else:
        model, inputs = tiny_cogvideox(rope=True), cogvideox_inputs(rope=True)
    stock = _run(model, inputs)
    for exact in (MonarchConfig(w_reduce=5), MonarchConfig(h_reduce=4)):
        context = apply_monarch_attention(model, exact)
        torch.testing.assert_close(_run(model, inputs), stock, rtol=1e-4, atol=1e-5)
        assert context.layout is not None and context.layout.grid == (3, 4, 5)
        remove_processors(model)
    apply_monarch_attention(model, MonarchConfig(h_reduce=2))
    approx = _run(model, inputs)
    remove_processors(model)
    assert torch.isfinite(approx).all() and (approx - stock).abs().max() > 1e-6
    torch.testing.assert_close(_run(model, inputs), stock)


def test_drop_in_set_attn_processor_and_dense_layers():
    model, inputs = tiny_wan(), wan_inputs()
    stock = _run(model, inputs)
    model.set_attn_processor(MonarchAttnProcessor(h_reduce=2))  # geometry read off the RoPE table
    drop_in = _run(model, inputs)
    assert (drop_in - stock).abs().max() > 1e-6
    apply_monarch_attention(model, MonarchConfig(h_reduce=2, dense_layers=2))  # every layer dense
    torch.testing.assert_close(_run(model, inputs), stock, rtol=1e-4, atol=1e-5)
    remove_processors(model)


def test_training_backward_through_tiny_wan():
    model, inputs = tiny_wan(num_layers=1), wan_inputs(batch=1)
    apply_monarch_attention(model, MonarchConfig(h_reduce=2, checkpoint=True))
    model.train()
    model(**inputs)[0].square().mean().backward()
    grads = [p.grad for n, p in model.named_parameters() if "attn1.to_q" in n]
    assert grads and all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)
