"""VMoBA against independent references: naive per-token partitions, a per-query loop of the threshold rule,
dense SDPA with a per-token mask built by a naive loop, and the stock diffusers processors."""

import math

import pytest
import torch
import torch.nn.functional as F
from tiny_models import cogvideox_inputs, hunyuan_inputs, tiny_cogvideox, tiny_hunyuan, tiny_wan, wan_inputs

from vidattn import VideoLayout, VMoBAAttnProcessor, VMoBAConfig, apply_vmoba_attention, remove_processors
from vidattn.kernels import resolve_backend
from vidattn.processors import VideoAttnProcessor, install_processors, vmoba_partition_maps
from vidattn.processors.registry import make_processor
from vidattn.processors.vmoba import attention_with_plan
from vidattn.patterns.vmoba import (
    block_gate,
    build_partition,
    layer_kind,
    partition_ids,
    select_blocks,
    vmoba_plan,
)

CHUNKS = {"1d": 2, "2d": (2, 3), "3d": (2, 2, 3)}  # none divides the 5x5x7 grid: ragged tails everywhere


def naive_block(kind, chunk, t, h, w, height, width):
    """Block id of token (t, h, w) written out per partition, blocks numbered row-major."""
    if kind == "1d":
        return t // chunk
    if kind == "2d":
        return (h // chunk[0]) * math.ceil(width / chunk[1]) + w // chunk[1]
    return ((t // chunk[0]) * math.ceil(height / chunk[1]) + h // chunk[1]) * math.ceil(width / chunk[2]) + w // chunk[2]


def naive_blocks(layout, kind, chunk):
    f, hh, ww = layout.grid
    return [naive_block(kind, chunk, t, h, w, hh, ww) for t in range(f) for h in range(hh) for w in range(ww)]


def naive_mask(layout, kind, chunk, selection):
    """(B, H, N, N) mask by a per-token loop: video query i may see video key j iff it selected j's block;
    text keys are seen by everyone and text queries see everything."""
    blocks = naive_blocks(layout, kind, chunk)
    sel = selection.tolist()
    n, start, video = layout.total_tokens, layout.video_start, layout.video_tokens
    is_video = [start <= i < start + video for i in range(n)]
    out = []
    for b in range(len(sel)):
        heads = []
        for h in range(len(sel[b])):
            rows = []
            for i in range(n):
                if not is_video[i]:
                    rows.append([True] * n)
                    continue
                chosen = sel[b][h][i - start]
                rows.append([(not is_video[j]) or chosen[blocks[j - start]] for j in range(n)])
            heads.append(rows)
        out.append(heads)
    return torch.tensor(out)


def naive_threshold(gate_bh, own, threshold, domain):
    """The threshold rule for one (batch, head), written per entry with Python lists (float64)."""
    eps = 1e-6
    s, c = len(gate_bh), len(gate_bh[0])
    chosen = [[j == own[i] for j in range(c)] for i in range(s)]
    groups = [[(i, j) for j in range(c)] for i in range(s)] if domain == "query_head" else [[(i, j) for i in range(s) for j in range(c)]]
    for group in groups:
        values = [gate_bh[i][j] for i, j in group]
        low, high = min(values), max(values)
        denom = high - low if high - low > eps else 1.0
        norm = {(i, j): (gate_bh[i][j] - low) / denom for i, j in group}
        total = sum(norm.values())
        remain = max(threshold - sum(v for (i, j), v in norm.items() if j == own[i]) / (total + eps), 0.0)
        others = sorted(((v, e) for e, v in norm.items() if e[1] != own[e[0]]), key=lambda x: -x[0])
        running = 0.0
        for v, (i, j) in others:
            chosen[i][j] = True
            running += v
            if running / (total + eps) >= remain:
                break
    return chosen


@pytest.mark.parametrize("kind", ["1d", "2d", "3d"])
@pytest.mark.parametrize("text,position", [(0, "after"), (4, "before"), (3, "after")])
def test_partition_matches_naive_ids_and_permutation_round_trips(kind, text, position):
    layout = VideoLayout(5, 5, 7, text, position)
    part = build_partition(layout, kind, CHUNKS[kind])
    assert partition_ids(layout.grid, kind, CHUNKS[kind]).tolist() == naive_blocks(layout, kind, CHUNKS[kind])
    x = torch.randn(2, layout.total_tokens, 3)
    assert torch.equal(x.index_select(1, part.perm).index_select(1, part.inverse), x)
    start, video = layout.video_start, layout.video_tokens
    blocks = part.token_block[start : start + video]
    assert torch.all(blocks[1:] >= blocks[:-1]), "every block must be one contiguous run in partition order"
    assert torch.all(part.token_block[:start] == part.num_blocks) and torch.all(part.token_block[start + video :] == part.num_blocks)
    video_perm = part.perm[start : start + video]
    same_block = blocks[1:] == blocks[:-1]
    assert torch.all(video_perm[1:][same_block] > video_perm[:-1][same_block]), "tokens keep (t, h, w) order inside a block"
    assert part.identity == (kind == "1d")


def test_partition_maps_for_the_cli():
    maps = vmoba_partition_maps(VideoLayout(5, 5, 7), VMoBAConfig(temporal_chunk=2, spatial_chunk=(2, 3), st_chunk=(2, 2, 3)))
    assert {k: v.shape for k, v in maps.items()} == {k: (5, 5, 7) for k in ("1d", "2d", "3d")}
    assert [int(m.max()) + 1 for m in maps.values()] == [3, 9, 27]
    assert maps["2d"][0, 4, 6] == maps["2d"][4, 4, 6] == 8  # tubes span all frames; ragged corner tube


def test_layer_cycle():
    assert [layer_kind(l) for l in range(6)] == ["1d", "2d", "3d", "1d", "2d", "3d"]
    assert [layer_kind(l, first_sparse_layer=1) for l in range(1, 5)] == ["1d", "2d", "3d", "1d"]
    assert [layer_kind(l, cycle=(2, 0, 1)) for l in range(6)] == ["1d", "1d", "3d", "1d", "1d", "3d"]


def test_gate_is_query_against_mean_pooled_keys_in_fp32():
    q, k = torch.randn(1, 2, 10, 4, dtype=torch.bfloat16), torch.randn(1, 2, 10, 4, dtype=torch.bfloat16)
    ids = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 1])
    gate = block_gate(q, k, ids, 3)
    assert gate.dtype == torch.float32
    for c in range(3):
        mean = k.float()[:, :, ids == c].mean(2)
        torch.testing.assert_close(gate[..., c], torch.einsum("bhsd,bhd->bhs", q.float(), mean))


@pytest.mark.parametrize("domain", ["query_head", "head_global"])
@pytest.mark.parametrize("threshold", [0.05, 0.25, 0.6, 1.0])
def test_threshold_rule_matches_naive_loop(domain, threshold):
    g = torch.Generator().manual_seed(7)
    gate = torch.randn(2, 2, 12, 6, generator=g)
    own = torch.randint(0, 6, (12,), generator=g)
    sel = select_blocks(gate, own, "threshold", domain, threshold)
    for b in range(2):
        for h in range(2):
            expected = naive_threshold(gate[b, h].double().tolist(), own.tolist(), threshold, domain)
            assert sel[b, h].tolist() == expected
    if threshold == 1.0:
        assert sel.all()


@pytest.mark.parametrize("threshold", [0.05, 0.25, 0.6])
def test_threshold_rule_partial_sort_matches_naive_loop(monkeypatch, threshold):
    """The top-k shortcut (here 4 or 8 of 30 blocks) and its full-sort fallback give the naive loop's selection, also with
    tied gate values (rounded to quarters) at and around the cut."""
    from vidattn.patterns import vmoba

    monkeypatch.setattr(vmoba, "_PARTIAL_SORT", 4)
    g = torch.Generator().manual_seed(5)
    gate = (torch.randn(2, 2, 16, 30, generator=g) * 4).round() / 4
    own = torch.randint(0, 30, (16,), generator=g)
    sel = select_blocks(gate, own, "threshold", "query_head", threshold)
    for b in range(2):
        for h in range(2):
            assert sel[b, h].tolist() == naive_threshold(gate[b, h].double().tolist(), own.tolist(), threshold, "query_head")
    # A plateau of 100 equal scores that the cut splits (7th entry, inside the partial sort of 8, tied with the 8th):
    # the stable order keeps the lowest block ids; a top-k is arbitrary among ties (on this CPU it is, at this size).
    plateau = torch.zeros(1, 1, 4, 200)
    plateau[..., 50:150] = 1.0
    own = torch.tensor([0, 1, 2, 199])
    monkeypatch.setattr(vmoba, "_PARTIAL_SORT", 8)
    sel = select_blocks(plateau, own, "threshold", "query_head", 0.065)
    expected = naive_threshold(plateau[0, 0].double().tolist(), own.tolist(), 0.065, "query_head")
    assert sel[0, 0].tolist() == expected and sum(expected[0]) == 8  # own block + the 7 lowest plateau ids


def test_topk_selection():
    g = torch.Generator().manual_seed(3)
    gate = torch.randn(1, 2, 9, 5, generator=g)
    own = torch.randint(0, 5, (9,), generator=g)
    sel = select_blocks(gate, own, "topk", "query_head", topk=3)
    for h in range(2):
        for s in range(9):
            others = sorted((c for c in range(5) if c != own[s]), key=lambda c: -gate[0, h, s, c].item())[:2]
            assert set(torch.nonzero(sel[0, h, s]).flatten().tolist()) == {int(own[s]), *others}
    glob = select_blocks(gate, own, "topk", "head_global", topk=2)
    for h in range(2):
        rest = gate[0, h].masked_fill(F.one_hot(own, 5).bool(), float("-inf")).flatten()
        top = set(rest.topk(9).indices.tolist())
        picked = glob[0, h] & ~F.one_hot(own, 5).bool()
        assert set(torch.nonzero(picked.flatten()).flatten().tolist()) == top
        assert glob[0, h][torch.arange(9), own].all()


@pytest.mark.parametrize("domain", ["query_head", "head_global"])
def test_selection_monotone_in_threshold_and_own_block_kept(domain):
    g = torch.Generator().manual_seed(1)
    layout = VideoLayout(4, 6, 6)
    part = build_partition(layout, "3d", (2, 3, 3))
    q, k = torch.randn(2, 3, layout.total_tokens, 8, generator=g), torch.randn(2, 3, layout.total_tokens, 8, generator=g)
    previous = None
    for threshold in (0.01, 0.1, 0.25, 0.4, 0.7, 0.9, 1.0):
        sel = vmoba_plan(q, k, part, threshold_type=domain, threshold=threshold, block_size=16).selection
        assert sel[:, :, torch.arange(layout.video_tokens), part.video_ids].all(), "own block always selected"
        if previous is not None:
            assert torch.all(sel >= previous), f"selection shrank when the threshold rose to {threshold}"
        previous = sel
    assert previous.all()


def test_plan_tiles_are_any_and_full_tiles_are_all_of_the_token_mask():
    g = torch.Generator().manual_seed(2)
    layout = VideoLayout(5, 5, 7, 4, "before")
    part = build_partition(layout, "2d", CHUNKS["2d"])
    n = layout.total_tokens
    q, k = torch.randn(1, 2, n, 8, generator=g), torch.randn(1, 2, n, 8, generator=g)
    vplan = vmoba_plan(q, k, part, threshold=0.2, block_size=16)
    assert vplan.query_order is not None, "grouping the queries should pay off on this input"
    mask = naive_mask(layout, "2d", CHUNKS["2d"], vplan.selection)
    perm = part.perm
    mask = mask[:, :, :, perm]  # keys in partition order, queries in the plan's per-head order
    mask = torch.gather(mask, 2, perm[vplan.query_order].unsqueeze(-1).expand(-1, -1, -1, n))
    ungrouped = vmoba_plan(q, k, part, threshold=0.2, block_size=16, group_queries=False)
    assert ungrouped.query_order is None and ungrouped.tile_density > vplan.tile_density
    blocks = vplan.plan.num_blocks
    pad = blocks * 16 - n
    any_pad = F.pad(mask, (0, pad, 0, pad), value=False).view(1, 2, blocks, 16, blocks, 16)
    all_pad = F.pad(F.pad(mask, (0, pad), value=True), (0, 0, 0, pad), value=True).view(1, 2, blocks, 16, blocks, 16)
    assert torch.equal(vplan.plan.tiles, any_pad.any(5).any(3))
    assert torch.equal(vplan.plan.full, all_pad.all(5).all(3))
    assert vplan.token_density == pytest.approx(mask.float().mean().item(), abs=1e-6)
    assert vplan.tile_density >= vplan.token_density


@pytest.mark.parametrize("kind", ["1d", "2d", "3d"])
@pytest.mark.parametrize("text,position", [(0, "after"), (4, "before"), (3, "after")])
@pytest.mark.parametrize("domain", ["query_head", "head_global"])
def test_output_equals_masked_sdpa_from_naive_loop(kind, text, position, domain):
    g = torch.Generator().manual_seed(5)
    layout = VideoLayout(5, 5, 7, text, position)
    n = layout.total_tokens
    q, k, v = (torch.randn(2, 2, n, 8, generator=g) for _ in range(3))
    key_valid = None
    if text:
        key_valid = torch.ones(2, n, dtype=torch.bool)
        key_valid[1, 0 if position == "before" else n - 1] = False  # a padded text key
    part = build_partition(layout, kind, CHUNKS[kind])
    vplan = vmoba_plan(q, k, part, threshold_type=domain, threshold=0.3, block_size=16)
    mask = naive_mask(layout, kind, CHUNKS[kind], vplan.selection)
    if key_valid is not None:
        mask = mask & key_valid.view(2, 1, 1, n)
    reference = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert not mask.all(), "the selection should be sparse"
    ungrouped = vmoba_plan(q, k, part, threshold_type=domain, threshold=0.3, block_size=16, group_queries=False)
    assert torch.equal(ungrouped.selection, vplan.selection)
    for plan in (vplan, ungrouped):
        for backend in ("gather", "dense"):
            out = attention_with_plan(q, k, v, plan, key_valid, backend=backend)
            torch.testing.assert_close(out, reference, atol=2e-6, rtol=1e-5)


def test_flex_backend_equals_masked_sdpa():
    g = torch.Generator().manual_seed(9)
    layout = VideoLayout(5, 5, 7, 4, "before")
    n = layout.total_tokens
    q, k, v = (torch.randn(1, 2, n, 16, generator=g) for _ in range(3))
    vplan = vmoba_plan(q, k, build_partition(layout, "3d", CHUNKS["3d"]), threshold=0.3, block_size=32)
    reference = F.scaled_dot_product_attention(q, k, v, attn_mask=naive_mask(layout, "3d", CHUNKS["3d"], vplan.selection))
    with torch.no_grad():
        out = attention_with_plan(q, k, v, vplan, backend="flex")
    torch.testing.assert_close(out, reference, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["1d", "2d", "3d"])
@pytest.mark.parametrize("text,position", [(0, "after"), (4, "before"), (3, "after")])
def test_ranges_backend_equals_dense_backend_and_naive_mask(kind, text, position):
    g = torch.Generator().manual_seed(13)
    layout = VideoLayout(5, 5, 7, text, position)
    n = layout.total_tokens
    q, k, v = (torch.randn(2, 2, n, 8, generator=g) for _ in range(3))
    key_valid = torch.ones(2, n, dtype=torch.bool)
    key_valid[1, 0 if position == "before" else n - 1] = False  # a padded text key (or the last video key)
    key_valid[0, layout.video_start + 3] = False  # a masked video key
    part = build_partition(layout, kind, CHUNKS[kind])
    vplan = vmoba_plan(q, k, part, threshold=0.3, block_size=16)
    mask = naive_mask(layout, kind, CHUNKS[kind], vplan.selection) & key_valid.view(2, 1, 1, n)
    assert not mask.all()
    dense = attention_with_plan(q, k, v, vplan, key_valid, backend="dense")
    ranges = attention_with_plan(q, k, v, vplan, key_valid, backend="ranges")
    torch.testing.assert_close(ranges, dense, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ranges, F.scaled_dot_product_attention(q, k, v, attn_mask=mask), atol=1e-5, rtol=1e-5)
    proc = VMoBAAttnProcessor(kind=kind, threshold=0.3, block_size=16, backend="ranges", **{f: CHUNKS[c] for c, f in (("1d", "temporal_chunk"), ("2d", "spatial_chunk"), ("3d", "st_chunk"))})
    torch.testing.assert_close(proc.attend(q, k, v, layout, key_valid, "hunyuan"), dense, atol=1e-5, rtol=1e-5)
    auto = VMoBAAttnProcessor(kind=kind, threshold=0.3, block_size=16, **{f: CHUNKS[c] for c, f in (("1d", "temporal_chunk"), ("2d", "spatial_chunk"), ("3d", "st_chunk"))})
    # auto on the CPU: SDPA with the selection's mask for a short sequence, the range kernel past DENSE_MAX_MASK
    assert resolve_backend("auto", q, ranges=True) == "dense"
    assert resolve_backend("auto", torch.zeros(1, 1, 2100, 8), ranges=True) == "ranges"
    torch.testing.assert_close(auto.attend(q, k, v, layout, key_valid, "hunyuan"), dense, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend,kind", [("gather", "2d"), ("gather", "3d"), ("ranges", "1d"), ("ranges", "3d")])
def test_gradients_match_masked_sdpa(backend, kind):
    """The differentiable CPU backends give masked SDPA's gradients (f64), a padded key included."""
    g = torch.Generator().manual_seed(17)
    layout = VideoLayout(5, 5, 7, 3, "after")
    n = layout.total_tokens
    q, k, v = (torch.randn(2, 2, n, 8, generator=g, dtype=torch.float64) for _ in range(3))
    upstream = torch.randn(2, 2, n, 8, generator=g, dtype=torch.float64)
    key_valid = torch.ones(2, n, dtype=torch.bool)
    key_valid[1, -1] = False
    vplan = vmoba_plan(q, k, build_partition(layout, kind, CHUNKS[kind]), threshold=0.3, block_size=16)
    mask = naive_mask(layout, kind, CHUNKS[kind], vplan.selection) & key_valid.view(2, 1, 1, n)
    grads = []
    for run in (backend, "reference"):
        leaves = [x.clone().requires_grad_(True) for x in (q, k, v)]
        if run == backend:
            out = attention_with_plan(*leaves, vplan, key_valid, backend=backend)
        else:
            out = F.scaled_dot_product_attention(*leaves, attn_mask=mask)
        (out * upstream).sum().backward()
        grads.append([x.grad for x in leaves])
    for mine, ref in zip(*grads):
        torch.testing.assert_close(mine, ref, atol=1e-10, rtol=1e-8)


def test_ranges_backend_choice_and_errors():
    assert VMoBAConfig(backend="ranges").backend == "ranges"
    assert "ranges" in VMoBAConfig.backends and "segments" not in VMoBAConfig.backends
    with pytest.raises(ValueError, match="backend must be one of"):
        VMoBAConfig(backend="segments")  # VMoBA plans carry a token mask: segments never ran them
    proc = VMoBAAttnProcessor(backend="ranges", kind="1d", temporal_chunk=2, block_size=16)
    q = torch.empty(1, 1, VideoLayout(5, 5, 7).total_tokens, 8, device="meta")
    with pytest.raises(ValueError, match="backend='ranges' runs on the CPU only"):
        proc.attend(q, q, q, VideoLayout(5, 5, 7), None, "wan")


# -- processors on the tiny models --------------------------------------------------------------------------
SMALL = dict(temporal_chunk=2, spatial_chunk=(2, 2), st_chunk=(2, 2, 3), block_size=8, backend="gather")
FAMILIES = {
    "wan": (tiny_wan, lambda: wan_inputs(frames=5)),
    "hunyuan": (tiny_hunyuan, lambda: hunyuan_inputs(frames=5)),
    "cogvideox-2b": (lambda: tiny_cogvideox(False), lambda: cogvideox_inputs(False, frames=3)),
    "cogvideox-5b": (lambda: tiny_cogvideox(True), lambda: cogvideox_inputs(True, frames=5)),
}


class NaiveVMoBAReference(VideoAttnProcessor):
    """Reference processor: the same selection, then SDPA with the mask from the naive per-token loop."""

    def __init__(self, config, kind, **kwargs):
        super().__init__(**kwargs)
        self.config, self.kind = config, kind

    def attend(self, query, key, value, layout, key_valid, family):
        chunk = self.config.chunk(self.kind)
        sel = vmoba_plan(query, key, build_partition(layout, self.kind, chunk), threshold=self.config.threshold).selection
        mask = naive_mask(layout, self.kind, chunk[0] if self.kind == "1d" else chunk, sel)
        if key_valid is not None:
            mask = mask & key_valid.view(key_valid.shape[0], 1, 1, -1)
        return F.scaled_dot_product_attention(query, key, value, attn_mask=mask)


@pytest.mark.parametrize("family", FAMILIES)
def test_threshold_one_equals_stock_processor(family):
    build, make_inputs = FAMILIES[family]
    model, inputs = build(), make_inputs()
    with torch.no_grad():
        stock = model(**inputs)[0]
        apply_vmoba_attention(model, VMoBAConfig(threshold=1.0, **SMALL))
        out = model(**inputs)[0]
        remove_processors(model)
        assert torch.equal(model(**inputs)[0], stock)
    assert (out - stock).abs().max() <= 1e-5


@pytest.mark.parametrize("backend", ["gather", "ranges"])
@pytest.mark.parametrize("family", ["hunyuan", "cogvideox-5b"])
def test_layer_cycle_on_model_equals_naive_reference(family, backend):
    build, make_inputs = FAMILIES[family]
    model, inputs = build(), make_inputs()  # hunyuan: joint text after the video, the second prompt padded
    config = VMoBAConfig(threshold=0.2, **{**SMALL, "backend": backend})
    with torch.no_grad():
        stock = model(**inputs)[0]
        install_processors(model, lambda i, fam, ctx: NaiveVMoBAReference(config, layer_kind(i)))
        reference = model(**inputs)[0]
        apply_vmoba_attention(model, config)
        out = model(**inputs)[0]
    torch.testing.assert_close(out, reference, atol=1e-5, rtol=1e-5)
    assert (out - stock).abs().max() > 1e-4, "threshold 0.2 should be sparse on this grid"


def test_training_gradients_ranges_equal_gather_on_model():
    """LoRA-style training step on the tiny HunyuanVideo (joint text, padded prompt): parameter gradients through
    the ranges kernel's backward equal those through the differentiable gather backend."""
    build, make_inputs = FAMILIES["hunyuan"]
    grads = {}
    for backend in ("gather", "ranges"):
        model, inputs = build(), make_inputs()
        model.train()
        apply_vmoba_attention(model, VMoBAConfig(threshold=0.2, **{**SMALL, "backend": backend}))
        model(**inputs)[0].square().mean().backward()
        grads[backend] = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    assert grads["gather"].keys() == grads["ranges"].keys() and grads["gather"]
    for name, ref in grads["gather"].items():
        torch.testing.assert_close(grads["ranges"][name], ref, atol=1e-5, rtol=1e-4, msg=name)


def test_drop_in_dense_steps_and_dense_layers():
    inputs = wan_inputs(frames=5)
    model = tiny_wan()
    with torch.no_grad():
        stock = model(**inputs)[0]
        # Drop-in (one processor everywhere) with a forced kind equals apply() with that kind on every layer.
        model.set_attn_processor(VMoBAAttnProcessor(kind="2d", threshold=0.2, **SMALL))
        drop_in = model(**inputs)[0]
        apply_vmoba_attention(model, VMoBAConfig(kind="2d", threshold=0.2, **SMALL))
        torch.testing.assert_close(model(**inputs)[0], drop_in)
        apply_vmoba_attention(model, VMoBAConfig(threshold=0.2, dense_steps=1, **SMALL))
        assert torch.equal(model(**inputs)[0], stock), "step 0 is a dense warm-up step"
        later = {**inputs, "timestep": torch.tensor([400, 400])}
        assert (model(**later)[0] - tiny_wan()(**later)[0]).abs().max() > 1e-4
        # dense_layers=2 on a 2-layer model: every layer stays stock.
        apply_vmoba_attention(model, VMoBAConfig(threshold=0.2, dense_layers=2, **SMALL))
        assert torch.equal(model(**inputs)[0], stock)
    assert isinstance(make_processor("vmoba", threshold=0.5), VMoBAAttnProcessor)


def test_bad_input_errors():
    with pytest.raises(ValueError, match="temporal_chunk must be > 0"):
        VMoBAConfig(temporal_chunk=0)
    with pytest.raises(ValueError, match="spatial_chunk must be 2 int"):
        VMoBAConfig(spatial_chunk=(4, 4, 4))
    with pytest.raises(ValueError, match="st_chunk must be > 0"):
        VMoBAConfig(st_chunk=(1, -2, 3))
    for bad in (0, -0.1, 1.5, "0.3"):
        with pytest.raises(ValueError, match=r"threshold must be a number in \(0, 1\]"):
            VMoBAConfig(threshold=bad)
    with pytest.raises(ValueError, match="threshold_type must be one of"):
        VMoBAConfig(threshold_type="overall")
    with pytest.raises(ValueError, match="select_mode must be one of"):
        VMoBAConfig(select_mode="random")
    with pytest.raises(ValueError, match="topk must be"):
        VMoBAConfig(select_mode="topk", topk=0)
    with pytest.raises(ValueError, match="kind must be one of"):
        VMoBAConfig(kind="4d")
    with pytest.raises(ValueError, match="layer_cycle"):
        VMoBAConfig(layer_cycle=(0, 0, 0))
    with pytest.raises(ValueError, match="unknown VMoBAAttnProcessor argument"):
        VMoBAAttnProcessor(chunk_size=3)
    with pytest.raises(ValueError, match="st_chunk .* larger than the grid"):
        build_partition(VideoLayout(5, 5, 7), "3d", (2, 6, 3))
    model = tiny_wan()
    apply_vmoba_attention(model, VMoBAConfig(**{**SMALL, "spatial_chunk": (8, 2)}))  # the grid is 5x4x5
    with pytest.raises(ValueError, match="spatial_chunk .* larger than the grid"):
        with torch.no_grad():
            model(**wan_inputs(frames=5))
