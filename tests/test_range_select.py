"""The 'ranges' CPU kernel (per-query selection of contiguous key ranges): outputs and gradients against dense
SDPA with an explicit token mask built by a per-key loop, broadcasting, key masks, bad input."""

import pytest
import torch
import torch.nn.functional as F

from vidattn.kernels import RANGE_BACKENDS, range_select_attention, resolve_backend

RANGES = ((0, 7), (7, 19), (23, 40), (19, 23), (44, 50))  # unordered, keys 40..43 in no range


def naive_mask(selected, ranges, keys, key_valid=None):
    """(B|1, H|1, Nq, Nk) mask by a loop over keys: key j is allowed for row i iff i selected the range holding j."""
    sb, sh, nq, _ = selected.shape
    mask = torch.zeros(sb, sh, nq, keys, dtype=torch.bool)
    for j in range(keys):
        for r, (start, stop) in enumerate(ranges):
            if start <= j < stop:
                mask[..., j] = selected[..., r]
    if key_valid is not None:
        mask = mask & key_valid.view(key_valid.shape[0], 1, 1, keys)
    return mask


def reference(q, k, v, mask):
    """SDPA with an explicit mask; rows with no allowed key are zero."""
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return out.masked_fill(~mask.any(-1, keepdim=True), 0.0)


def inputs(b=2, h=3, nq=37, nk=50, d=16, sel_shape=None, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, nq, d, generator=g, dtype=torch.float64).to(dtype)
    k, v = (torch.randn(b, h, nk, d, generator=g, dtype=torch.float64).to(dtype) for _ in range(2))
    selected = torch.rand(*(sel_shape or (b, h)), nq, len(RANGES), generator=g) < 0.4
    selected[..., 3, :] = False  # a row that selects nothing
    selected[..., 5, :] = False
    selected[..., 5, 1] = True  # a row whose only range is fully masked below
    return q, k, v, selected


def key_mask(b, nk, seed=1):
    g = torch.Generator().manual_seed(seed)
    valid = torch.rand(b, nk, generator=g) > 0.25
    valid[:, 7:19] = False  # range 1 has no valid key: row 5 has no allowed key at all
    valid[-1, 26:30] = False  # a gap inside range 2 for the last batch element only
    return valid


@pytest.mark.parametrize("sel_shape", [(2, 3), (1, 3), (2, 1), (1, 1)])
@pytest.mark.parametrize("masked", ["none", "per-batch", "shared"])
def test_forward_matches_masked_sdpa(sel_shape, masked):
    q, k, v, selected = inputs(sel_shape=sel_shape)
    key_valid = None if masked == "none" else key_mask(2 if masked == "per-batch" else 1, 50)
    mask = naive_mask(selected, RANGES, 50, key_valid)
    out = range_select_attention(q, k, v, selected, RANGES, key_valid)
    torch.testing.assert_close(out, reference(q, k, v, mask), atol=1e-5, rtol=1e-5)
    assert torch.all(out[:, :, 3] == 0), "a row that selects nothing returns zeros"
    if key_valid is not None:
        assert torch.all(out[:, :, 5] == 0), "a row whose keys are all masked returns zeros"


def test_scale_and_f64_exact():
    q, k, v, selected = inputs(dtype=torch.float64)
    mask = naive_mask(selected, RANGES, 50)
    out = range_select_attention(q, k, v, selected, RANGES, scale=0.3)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.3).masked_fill(~mask.any(-1, keepdim=True), 0.0), atol=1e-12, rtol=1e-12)


def test_far_apart_log_sum_exps_rescale_rows():
    """Pieces whose log-sum-exps differ by far more than the merge's rescale margin, and by more than f32's exp
    range (range 2's keys scaled by 100: its lse is in the hundreds), merged first and last."""
    q, k, v, selected = inputs(seed=3)
    k = k.clone()
    k[:, :, 23:40] *= 100.0
    k[:, :, 0:7] *= 0.01
    for order in (RANGES, RANGES[::-1]):
        sel = selected if order is RANGES else selected.flip(-1)
        mask = naive_mask(sel, order, 50)
        torch.testing.assert_close(range_select_attention(q, k, v, sel, order), reference(q, k, v, mask), atol=1e-5, rtol=1e-5)


def test_bf16_close_to_f32_reference():
    q, k, v, selected = inputs(b=1, h=2, nq=300, nk=50, d=64)
    key_valid = key_mask(1, 50)
    ref = reference(q, k, v, naive_mask(selected, RANGES, 50, key_valid))
    out = range_select_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), selected, RANGES, key_valid)
    assert out.dtype == torch.bfloat16
    assert (out.float() - ref).abs().max() < 3e-2
    assert (out.float() - ref).abs().mean() < 3e-3


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.float64, 1e-10)])
@pytest.mark.parametrize("sel_shape", [(2, 3), (1, 1)])
def test_gradients_match_masked_sdpa(dtype, tol, sel_shape):
    q, k, v, selected = inputs(sel_shape=sel_shape, dtype=dtype, seed=2)
    key_valid = key_mask(2, 50)
    mask = naive_mask(selected, RANGES, 50, key_valid)
    upstream = torch.randn(q.shape, generator=torch.Generator().manual_seed(4), dtype=dtype)
    grads = []
    for run in ("ranges", "reference"):
        leaves = [x.clone().requires_grad_(True) for x in (q, k, v)]
        out = range_select_attention(*leaves, selected, RANGES, key_valid) if run == "ranges" else reference(*leaves, mask)
        (out * upstream).sum().backward()
        grads.append([x.grad for x in leaves])
    for name, mine, ref in zip("qkv", *grads):
        torch.testing.assert_close(mine, ref, atol=tol, rtol=tol, msg=f"d{name}")
    dk = grads[0][1]
    assert torch.all(dk[:, :, 40:44] == 0), "keys in no range get no gradient"
    assert torch.all(grads[0][0][:, :, 3] == 0), "a row with no key gets no gradient"


def test_bf16_gradients_close_to_f32():
    q, k, v, selected = inputs(b=1, h=2, nq=200, nk=50, d=32, seed=6)
    upstream = torch.randn(q.shape, generator=torch.Generator().manual_seed(7))
    grads = []
    for dtype in (torch.float32, torch.bfloat16):
        leaves = [x.detach().to(dtype).clone().requires_grad_(True) for x in (q, k, v)]
        (range_select_attention(*leaves, selected, RANGES).float() * upstream).sum().backward()
        grads.append([x.grad.float() for x in leaves])
    for mine, ref in zip(grads[1], grads[0]):
        assert (mine - ref).abs().max() < 0.05 * ref.abs().max()


def test_empty_ranges_and_no_ranges():
    q, k, v, _ = inputs(b=1, h=1, nq=6, nk=10, d=8)
    ranges = ((0, 0), (0, 10), (10, 10))
    selected = torch.tensor([[True, False, True], [False, True, False]]).repeat(3, 1).view(1, 1, 6, 3)
    out = range_select_attention(q, k, v, selected, ranges)
    torch.testing.assert_close(out, reference(q, k, v, naive_mask(selected, ranges, 10)), atol=1e-5, rtol=1e-5)
    assert torch.all(out[0, 0, 0::2] == 0)
    assert torch.all(range_select_attention(q, k, v, torch.zeros(1, 1, 6, 0, dtype=torch.bool), ()) == 0)
    assert range_select_attention(q[:, :, :0], k, v, selected[:, :, :0], ranges).shape == (1, 1, 0, 8)


def test_resolve_backend_rule():
    q = torch.randn(1, 1, 2100, 8)  # past DENSE_MAX_MASK
    assert "ranges" in RANGE_BACKENDS and "segments" not in RANGE_BACKENDS
    assert resolve_backend("auto", q[:, :, :4], ranges=True) == "dense"  # a short sequence: SDPA with the mask
    assert resolve_backend("auto", q, ranges=True) == "ranges"  # CPU inference
    assert resolve_backend("auto", q.bfloat16(), ranges=True) == "ranges"
    assert resolve_backend("auto", q.requires_grad_(), ranges=True) == "ranges"  # CPU training
    assert resolve_backend("auto", torch.empty(1, 1, 4, 8, device="meta"), ranges=True) == "flex"
    with pytest.raises(ValueError, match="backend must be one of"):
        resolve_backend("ranges", q)  # a plain BlockPlan caller cannot run it
    with pytest.raises(ValueError, match="backend='ranges' runs on the CPU only"):
        resolve_backend("ranges", torch.empty(1, 1, 4, 8, device="meta"), ranges=True)


@pytest.mark.parametrize(
    "change,match",
    [
        (dict(ranges=((0, 7), (5, 19), (23, 40), (19, 23), (44, 50))), "ranges must be disjoint"),
        (dict(ranges=((0, 7), (7, 19), (23, 40), (19, 23), (44, 51))), r"ranges must satisfy 0 <= start <= stop <= 50"),
        (dict(ranges=((0, 7), (7, 19), (23, 40), (19, 23), (44,))), "ranges must be"),
        (dict(ranges=RANGES[:4]), r"selected must be \(B\|1, H\|1, Nq, R\)"),
        (dict(selected="float"), "selected must be a bool tensor"),
        (dict(selected="rows"), r"selected must be \(B\|1, H\|1, Nq, R\)"),
        (dict(key_valid=torch.ones(3, 50, dtype=torch.bool)), r"key_valid must be a bool tensor \(B\|1, Nk\)"),
        (dict(key_valid=torch.ones(2, 49, dtype=torch.bool)), r"key_valid must be a bool tensor \(B\|1, Nk\)"),
        (dict(key="short"), "key/value must be"),
        (dict(query="3d"), "query must be a floating"),
        (dict(query="meta"), "backend='ranges' runs on the CPU only"),
        (dict(value="f64"), "must share a dtype"),
    ],
)
def test_bad_input_is_one_clear_error(change, match):
    q, k, v, selected = inputs()
    args = dict(query=q, key=k, value=v, selected=selected, ranges=RANGES, key_valid=None)
    special = {
        "float": selected.float(), "rows": selected[:, :, :-1], "short": k[:, :, :, :8], "3d": q[0],
        "meta": q.to("meta"), "f64": v.double(),
    }
    args.update({name: special.get(value, value) if isinstance(value, str) else value for name, value in change.items()})
    with pytest.raises(ValueError, match=match):
        range_select_attention(**args)
