"""Every supported transformer class: exact at full density against its stock processor, every method runs, unknown models raise."""

import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0, JointAttnProcessor2_0
from diffusers.models.transformers.transformer_ltx2 import LTX2AudioVideoAttnProcessor
from tiny_families import (
    cosmos_inputs,
    hunyuan15_inputs,
    ltx2_inputs,
    skyreels_inputs,
    tiny_cosmos,
    tiny_hunyuan15,
    tiny_ltx2,
    tiny_skyreels,
    tiny_vace,
    tiny_wan_i2v,
    tiny_wan_ti2v,
    vace_inputs,
    wan_i2v_inputs,
    wan_ti2v_inputs,
)
from tiny_models import cogvideox_inputs, hunyuan_inputs, tiny_cogvideox, tiny_hunyuan, tiny_wan, wan_inputs

from vidattn import VideoLayout
from vidattn.models import MODELS, UnsupportedModelError, model_spec
from vidattn.processors import DenseAttnProcessor, RadialAttnProcessor, apply_method, install_processors, remove_processors
from vidattn.processors.registry import METHODS

# Every case has the latent grid F x 4 x 5 (F = frames), so w_reduce=5 makes Monarch exact.
CASES = {
    "wan-t2v": (tiny_wan, wan_inputs),
    "wan-i2v": (tiny_wan_i2v, wan_i2v_inputs),
    "wan-ti2v": (tiny_wan_ti2v, wan_ti2v_inputs),
    "wan-vace": (tiny_vace, vace_inputs),
    "skyreels-v2": (tiny_skyreels, skyreels_inputs),
    "hunyuan": (tiny_hunyuan, hunyuan_inputs),
    "hunyuan15-i2v": (tiny_hunyuan15, hunyuan15_inputs),
    "hunyuan15-t2v": (tiny_hunyuan15, lambda frames=3: hunyuan15_inputs(frames=frames, t2v=True)),
    "cogvideox-5b": (lambda: tiny_cogvideox(True), lambda frames=3: cogvideox_inputs(True, frames=frames)),
    "cosmos": (tiny_cosmos, cosmos_inputs),
    "ltx2": (tiny_ltx2, ltx2_inputs),
    "ltx2-split-gated": (lambda: tiny_ltx2(rope_type="split", gated=True), ltx2_inputs),
}
SMALL = dict(block_size=8, backend="gather")
# Each method with its sparsity switched off (radial: 2 latent frames, where every frame pair is a full pair).
FULL = {
    "dense": {},
    "radial": dict(decay=1.0, **SMALL),
    "vmoba": dict(threshold=1.0, temporal_chunk=2, spatial_chunk=(2, 2), st_chunk=(2, 2, 3), **SMALL),
    "monarch": dict(w_reduce=5),
    "window": dict(window=(None, None, None), scale_factor=1.0, **SMALL),
}
SPARSE = {
    "dense": {},
    "radial": dict(decay=0.5, **SMALL),
    "vmoba": dict(threshold=0.2, temporal_chunk=2, spatial_chunk=(2, 2), st_chunk=(2, 2, 3), **SMALL),
    "monarch": dict(h_reduce=2),
    "window": dict(window=(1, 1, 1), **SMALL),
}


def _run(model, inputs, video_only=True):
    with torch.no_grad():
        out = model(**inputs)
    return out[0] if video_only else out


def _install(model, method: str, fields: dict):
    if method == "dense":
        return install_processors(model, lambda index, family, context: DenseAttnProcessor(block_size=8, backend="gather", context=context))
    return apply_method(model, method, **fields)


def test_table_is_keyed_by_class_and_covers_the_issue():
    names = {spec.transformer.__name__ for spec in MODELS}
    assert {"WanTransformer3DModel", "WanVACETransformer3DModel", "SkyReelsV2Transformer3DModel", "HunyuanVideoTransformer3DModel",
            "HunyuanVideo15Transformer3DModel", "CogVideoXTransformer3DModel", "LTX2VideoTransformer3DModel", "CosmosTransformer3DModel"} <= names
    assert model_spec(tiny_cogvideox(False)).frames_first and not model_spec(tiny_wan()).frames_first


@pytest.mark.parametrize("case", CASES)
def test_every_method_at_full_density_equals_stock(case):
    build, make_inputs = CASES[case]
    model = build()
    for method in METHODS:
        inputs = make_inputs(frames=2) if method == "radial" else make_inputs(frames=3)
        stock = _run(model, inputs, video_only=False)
        context = _install(model, method, FULL[method])
        out = _run(model, inputs, video_only=False)
        assert context.layout is not None and context.layout.grid == (inputs_frames(inputs, model), 4, 5), (method, context.layout)
        remove_processors(model)
        for got, want in zip(out, stock):  # LTX-2 also returns its audio, which must stay exact
            assert (got - want).abs().max() <= 1e-5, f"{case} {method}: {(got - want).abs().max():.2e}"
        assert torch.equal(_run(model, inputs), stock[0]), "remove_processors restores the stock model"


def inputs_frames(inputs: dict, model) -> int:
    if "num_frames" in inputs:
        return inputs["num_frames"]
    return inputs["hidden_states"].shape[1 if model_spec(model).frames_first else 2]


@pytest.mark.parametrize("case", CASES)
def test_every_method_runs_sparse_and_only_on_video_self_attention(case):
    build, make_inputs = CASES[case]
    model, inputs = build(), make_inputs(frames=5)
    stock = _run(model, inputs)
    spec = model_spec(model)
    stock_types = {name: type(m.processor) for name, m in model.named_modules() if hasattr(m, "processor")}
    for method in METHODS:
        _install(model, method, SPARSE[method])
        for name, module in model.named_modules():
            if name in stock_types:
                replaced = type(module.processor) is not stock_types[name]
                assert replaced == spec.is_video_attention(name), f"{method} on {name}"
        out = _run(model, inputs)
        remove_processors(model)
        assert torch.isfinite(out).all()
        if method != "dense":
            assert (out - stock).abs().max() > 1e-6, f"{case} {method} should be sparse here"


def test_ltx2_audio_and_cross_modal_attention_stay_exact():
    model, inputs = tiny_ltx2(), ltx2_inputs(frames=5)
    stock_video, stock_audio = _run(model, inputs, video_only=False)
    apply_method(model, "radial", **SPARSE["radial"])
    video, audio = _run(model, inputs, video_only=False)
    for block in model.transformer_blocks:
        for name in ("audio_attn1", "attn2", "audio_attn2", "audio_to_video_attn", "video_to_audio_attn"):
            assert type(getattr(block, name).processor) is LTX2AudioVideoAttnProcessor
    # Audio only sees video through video_to_audio_attn, whose keys are the (now sparse) video states.
    assert (video - stock_video).abs().max() > 1e-6 and audio.shape == stock_audio.shape


@pytest.mark.parametrize("family, build, make_inputs", [("ltx2", tiny_ltx2, ltx2_inputs), ("cosmos", tiny_cosmos, cosmos_inputs)])
def test_drop_in_on_shared_attention_classes_needs_the_family(family, build, make_inputs):
    model, inputs = build(), make_inputs(frames=5)
    video_layers = [module for name, module in model.named_modules() if model_spec(model).is_video_attention(name)]
    for module in video_layers:
        module.set_processor(RadialAttnProcessor(**SPARSE["radial"]))
    with pytest.raises(UnsupportedModelError, match=f"family='{family}'" if family == "ltx2" else "supported transformer classes"):
        _run(model, inputs)
    for module in video_layers:
        module.set_processor(RadialAttnProcessor(family=family, layout=VideoLayout(5, 4, 5), **SPARSE["radial"]))
    drop_in = _run(model, inputs)
    apply_method(model, "radial", **SPARSE["radial"])
    torch.testing.assert_close(_run(model, inputs), drop_in, rtol=0, atol=0)


def test_warm_up_step_of_per_frame_and_per_token_timesteps():
    # SkyReels-V2 diffusion forcing (B, F), Wan 2.2 TI2V (B, N), Cosmos 2.5 (B, 1, F, 1, 1): the step advances when
    # the largest timestep drops; the clean conditioning frame (t = 0) plays no part.
    for build, make_inputs in ((tiny_skyreels, skyreels_inputs), (tiny_wan_ti2v, wan_ti2v_inputs), (tiny_cosmos, cosmos_inputs)):
        model, inputs = build(), make_inputs(frames=5)
        later = {**inputs, "timestep": (inputs["timestep"] * 0.8).to(inputs["timestep"].dtype)}
        stock = {"now": _run(model, inputs), "later": _run(model, later)}
        context = apply_method(model, "radial", dense_steps=1, **SPARSE["radial"])
        assert torch.equal(_run(model, inputs), stock["now"]) and context.step == 0
        assert (_run(model, later) - stock["later"]).abs().max() > 1e-6 and context.step == 1
        remove_processors(model)


def test_hunyuan15_masked_text_and_refiner_stay_exact():
    model, inputs = tiny_hunyuan15(), hunyuan15_inputs(frames=3)
    stock = _run(model, inputs)
    apply_method(model, "window", **FULL["window"])
    assert all(type(block.attn.processor) is AttnProcessor2_0 for block in model.context_embedder.token_refiner.refiner_blocks)
    assert (_run(model, inputs) - stock).abs().max() <= 1e-5


def test_skyreels_causal_diffusion_forcing_is_refused():
    model, inputs = tiny_skyreels(num_frame_per_block=5), skyreels_inputs(frames=5)
    apply_method(model, "radial", **SPARSE["radial"])
    with pytest.raises(ValueError, match="num_frame_per_block"):
        _run(model, inputs)


def test_unknown_attention_modules_raise_listing_the_supported_classes():
    from diffusers.models.transformers.transformer_flux import FluxAttention

    torch.manual_seed(0)
    hidden, text = torch.randn(1, 6, 8), torch.randn(1, 3, 8)
    unet = Attention(query_dim=8, heads=2, dim_head=4)  # a UNet's self-attention
    sd3 = Attention(query_dim=8, heads=2, dim_head=4, added_kv_proj_dim=8, qk_norm="rms_norm", context_pre_only=False, processor=JointAttnProcessor2_0())
    flux = FluxAttention(query_dim=8, heads=2, dim_head=4, added_kv_proj_dim=8)
    # Cosmos' self-attention: RMS q/k norms and a RoPE like HunyuanVideo's, but no joint text: not taken for HunyuanVideo
    cosmos = Attention(query_dim=8, heads=2, dim_head=4, qk_norm="rms_norm", elementwise_affine=True)
    rope = (torch.ones(6, 4), torch.zeros(6, 4))
    cases = ((unet, {}), (sd3, {"encoder_hidden_states": text}), (flux, {"encoder_hidden_states": text}), (cosmos, {"image_rotary_emb": rope}))
    for module, kwargs in cases:
        module.set_processor(DenseAttnProcessor())
        with pytest.raises(UnsupportedModelError, match="supported transformer classes: WanTransformer3DModel, .*LTX2VideoTransformer3DModel"):
            module(hidden, **kwargs)


def test_apply_on_unsupported_transformers_raises():
    from diffusers import FluxTransformer2DModel

    flux = FluxTransformer2DModel(
        patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=8, num_attention_heads=2,
        joint_attention_dim=8, pooled_projection_dim=8, axes_dims_rope=(2, 2, 4),
    )
    for model in (flux, torch.nn.Linear(2, 2)):
        for method in METHODS:
            with pytest.raises(UnsupportedModelError, match="supported transformer classes: .*HunyuanVideo15Transformer3DModel"):
                apply_method(model, method, **({} if method == "dense" else SPARSE[method]))
    with pytest.raises(UnsupportedModelError, match="perturbed_attn"):
        apply_method(tiny_ltx2_perturbed(), "radial")


def tiny_ltx2_perturbed():
    from diffusers import LTX2VideoTransformer3DModel

    return LTX2VideoTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=12, cross_attention_dim=24, audio_in_channels=4,
        audio_out_channels=4, audio_num_attention_heads=2, audio_attention_head_dim=6, audio_cross_attention_dim=12, num_layers=1,
        caption_channels=16, perturbed_attn=True,
    )


def test_hunyuan15_call_outputs_equal_stock_including_padded_text_rows():
    model, inputs = tiny_hunyuan15(), hunyuan15_inputs(frames=3)
    attn, captured = model.transformer_blocks[0].attn, {}
    handle = attn.register_forward_pre_hook(lambda module, args, kwargs: captured.update(kwargs), with_kwargs=True)
    _run(model, inputs)
    handle.remove()
    assert captured["attention_mask"].ndim == 2 and not captured["attention_mask"].all(), "the tiny inputs must pad some text"
    with torch.no_grad():
        stock_video, stock_text = attn(**captured)
        attn.set_processor(DenseAttnProcessor(block_size=8, backend="gather", layout=VideoLayout(3, 4, 5)))
        video, text = attn(**captured)
    assert (video - stock_video).abs().max() <= 1e-5 and (text - stock_text).abs().max() <= 1e-5
