"""Radial processors on tiny Wan, HunyuanVideo and CogVideoX models against stock diffusers and a naive mask."""

import pytest
import torch
import torch.nn.functional as F
from test_radial_pattern import naive_radial_tiles
from tiny_models import cogvideox_inputs, hunyuan_inputs, run_with_processor, tiny_cogvideox, tiny_hunyuan, tiny_wan, wan_inputs

from vidattn import RadialAttnProcessor, RadialConfig, VideoLayout, apply_radial_attention, remove_processors
from vidattn.processors import DenseAttnProcessor, VideoAttnProcessor, video_attention_layers

FAMILIES = {
    "wan": (tiny_wan, lambda **kw: wan_inputs(frames=5, **kw), None),
    "hunyuan": (tiny_hunyuan, lambda **kw: hunyuan_inputs(frames=5, **kw), None),
    "cogvideox-2b": (lambda: tiny_cogvideox(False), lambda **kw: cogvideox_inputs(False, frames=3, **kw), VideoLayout(3, 4, 5)),
    "cogvideox-5b": (lambda: tiny_cogvideox(True), lambda **kw: cogvideox_inputs(True, frames=5, **kw), None),
}


class NaiveRadialReference(VideoAttnProcessor):
    """Reference: SDPA with the token mask expanded from the naive per-tile re-derivation."""

    def __init__(self, decay, block, **kwargs):
        super().__init__(**kwargs)
        self.decay, self.block = decay, block

    def attend(self, query, key, value, layout, key_valid, family):
        n = layout.total_tokens
        tiles = naive_radial_tiles(layout, self.decay, self.block, sink=(family == "wan"))
        idx = torch.arange(n)
        mask = tiles[idx.view(-1, 1) // self.block, idx.view(1, -1) // self.block].view(1, 1, n, n)
        if key_valid is not None:
            mask = mask & key_valid.view(key_valid.shape[0], 1, 1, n)
        return F.scaled_dot_product_attention(query, key, value, attn_mask=mask)


@pytest.mark.parametrize("family", FAMILIES)
def test_full_plan_equals_stock_processor(family):
    build, make_inputs, layout = FAMILIES[family]
    model, inputs = build(), make_inputs(batch=2)
    with torch.no_grad():
        stock = model(**inputs)[0]
    out = run_with_processor(model, inputs, lambda: DenseAttnProcessor(block_size=16, backend="gather", layout=layout))
    assert (out - stock).abs().max() <= 1e-5


@pytest.mark.parametrize("family", FAMILIES)
def test_radial_equals_naive_masked_sdpa(family):
    build, make_inputs, layout = FAMILIES[family]
    model, inputs = build(), make_inputs(batch=2)
    ref = run_with_processor(model, inputs, lambda: NaiveRadialReference(0.5, 8, layout=layout))
    out = run_with_processor(model, inputs, lambda: RadialAttnProcessor(decay=0.5, block_size=8, backend="gather", layout=layout))
    stock = run_with_processor(model, inputs, lambda: DenseAttnProcessor(block_size=8, layout=layout))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert (out - stock).abs().max() > 1e-4, "the radial plan should be sparse on this grid"


def test_drop_in_on_wan_discovers_the_grid_and_matches_apply():
    model, inputs = tiny_wan(), wan_inputs(frames=5)
    model.set_attn_processor(RadialAttnProcessor(decay=0.5, block_size=8, backend="gather"))
    with torch.no_grad():
        drop_in = model(**inputs)[0]
    apply_radial_attention(model, RadialConfig(decay=0.5, block_size=8, backend="gather"))
    with torch.no_grad():
        applied = model(**inputs)[0]
    torch.testing.assert_close(drop_in, applied)


def test_dense_steps_give_stock_output_then_sparse():
    model = tiny_wan()
    with torch.no_grad():
        stock = {t: model(**{**wan_inputs(frames=5), "timestep": torch.tensor([t, t])})[0] for t in (900, 800, 700)}
    reference = tiny_wan()
    reference.set_attn_processor(RadialAttnProcessor(decay=0.5, block_size=8, backend="gather"))
    apply_radial_attention(model, RadialConfig(decay=0.5, block_size=8, dense_steps=2, backend="gather"))
    with torch.no_grad():
        for t, expect_stock in [(900, True), (900, True), (800, True), (700, False), (900, True)]:
            out = model(**{**wan_inputs(frames=5), "timestep": torch.tensor([t, t])})[0]
            if expect_stock:
                assert torch.equal(out, stock[t]), f"step of t={t} must be dense"
            else:
                sparse = reference(**{**wan_inputs(frames=5), "timestep": torch.tensor([t, t])})[0]
                torch.testing.assert_close(out, sparse)
                assert (out - stock[t]).abs().max() > 1e-4


def test_dense_layers_keep_first_layers_stock():
    model, inputs = tiny_wan(), wan_inputs(frames=5)
    apply_radial_attention(model, RadialConfig(decay=0.5, block_size=8, dense_layers=1, backend="gather"))
    with torch.no_grad():
        out = model(**inputs)[0]
    reference = tiny_wan()
    (_, first, _), (_, second, _) = video_attention_layers(reference)
    second.set_processor(RadialAttnProcessor(decay=0.5, block_size=8, backend="gather"))
    with torch.no_grad():
        expected = reference(**inputs)[0]
    torch.testing.assert_close(out, expected)
    remove_processors(model)
    with torch.no_grad():
        assert torch.equal(model(**inputs)[0], tiny_wan()(**inputs)[0])


def test_cross_attention_stays_exact():
    model = tiny_wan()
    stock_cross = model.blocks[0].attn2
    with torch.no_grad():
        h = torch.randn(2, 60, 24)
        e = torch.randn(2, 5, 24)
        expected = stock_cross(h, e)
        stock_cross.set_processor(RadialAttnProcessor(decay=0.5, block_size=8))
        assert torch.equal(stock_cross(h, e), expected)


def test_bad_input_errors():
    with pytest.raises(ValueError, match="family"):
        RadialAttnProcessor(family="sora")
    with pytest.raises(ValueError, match="decay"):
        RadialAttnProcessor(decay=0)
    with pytest.raises(ValueError, match="power of two"):
        RadialConfig(block_size=96)
    with pytest.raises(ValueError, match="unknown RadialAttnProcessor argument"):
        RadialAttnProcessor(decay_factor=0.2)
    with pytest.raises(ValueError, match="dense_steps needs"):
        RadialAttnProcessor(dense_steps=3)
    model = tiny_cogvideox(False)  # no RoPE, no hook: the grid cannot be inferred
    model.set_attn_processor(RadialAttnProcessor())
    with pytest.raises(ValueError, match="pass layout="):
        with torch.no_grad():
            model(**cogvideox_inputs(False, batch=1))
    with pytest.raises(ValueError, match="supported families"):
        apply_radial_attention(torch.nn.Linear(2, 2))
