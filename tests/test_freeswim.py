"""FreeSwim: record-then-inject vs an independent two-stream re-derivation, caching schedule, pipeline, errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from diffusers.models.transformers.transformer_wan import WanAttnProcessor

from tiny_models import tiny_wan, wan_inputs
from vidattn.processors.base import VideoAttnProcessor
from vidattn.pipelines.cross_override import (
    CrossAttnOverride,
    FullAttnProcessor,
    freeswim_scale_factor,
    install_cross_override,
    refresh_steps,
    remove_cross_override,
)


class LocalAttn(VideoAttnProcessor):
    """Test stand-in for the window branch: a 3x3 spatial neighbourhood, all frames, explicit boolean mask."""

    def attend(self, query, key, value, layout, key_valid, family):
        _, height, width = layout.grid
        idx = torch.arange(layout.video_tokens)
        row, col = idx // width % height, idx % width
        mask = ((row[:, None] - row[None]).abs() <= 1) & ((col[:, None] - col[None]).abs() <= 1)
        return F.scaled_dot_product_attention(query, key, value, attn_mask=mask)


def two_stream_reference(model, window_inputs: dict, full_inputs: dict | None = None, window=None) -> torch.Tensor:
    """FreeSwim's batch-of-two scheme re-derived by hand, each stream at batch 1 through the model's parts.

    Stream "window" uses ``window`` self-attention, stream "full" stock attention; in every block both
    streams add the *full* stream's cross-attention output. With ``full_inputs=None`` both streams start
    from the same latent (the no-cache scheme); a different ``full_inputs`` is the cache's earlier step.
    Without ``window`` the window stream takes its own cross-attention (no override).
    """
    stock, window = WanAttnProcessor(), window or LocalAttn()
    override = full_inputs is not False
    full_inputs = window_inputs if full_inputs in (None, False) else full_inputs

    def embed(inputs):
        x = inputs["hidden_states"]
        rope = model.rope(x)
        h = model.patch_embedding(x).flatten(2).transpose(1, 2).contiguous()
        temb, proj, text, _ = model.condition_embedder(inputs["timestep"], inputs["encoder_hidden_states"], None)
        return h, rope, temb, proj.unflatten(1, (6, -1)), text, x.shape

    streams = {"window": embed(window_inputs), "full": embed(full_inputs)}
    hidden = {name: s[0] for name, s in streams.items()}
    for block in model.blocks:
        mods = {name: (block.scale_shift_table + s[3].float()).chunk(6, dim=1) for name, s in streams.items()}
        for name, proc in (("window", window), ("full", stock)):
            shift, scale, gate = mods[name][:3]
            x = hidden[name]
            normed = (block.norm1(x.float()) * (1 + scale) + shift).type_as(x)
            hidden[name] = (x.float() + proc(block.attn1, normed, None, None, streams[name][1]) * gate).type_as(x)
        cross = {
            name: stock(block.attn2, block.norm2(hidden[name].float()).type_as(hidden[name]), streams[name][4], None, None)
            for name in ("window", "full")
        }
        for name in ("window", "full"):
            x = hidden[name] + (cross["full"] if override or name == "full" else cross[name])
            c_shift, c_scale, c_gate = mods[name][3:]
            normed = (block.norm3(x.float()) * (1 + c_scale) + c_shift).type_as(x)
            hidden[name] = (x.float() + block.ffn(normed).float() * c_gate).type_as(x)
    h, _, temb, _, _, shape = streams["window"]
    x = hidden["window"]
    shift, scale = (model.scale_shift_table + temb.unsqueeze(1)).chunk(2, dim=1)
    x = model.proj_out((model.norm_out(x.float()) * (1 + scale) + shift).type_as(x))
    b, _, frames, height, width = shape
    x = x.reshape(b, frames, height // 2, width // 2, 1, 2, 2, -1).permute(0, 7, 1, 4, 2, 5, 3, 6)
    return x.flatten(6, 7).flatten(4, 5).flatten(2, 3)


@pytest.fixture(scope="module")
def model():
    return tiny_wan(num_layers=2)


def test_record_then_inject_equals_two_stream_reference_bitwise(model):
    inputs = wan_inputs(batch=1)
    with torch.no_grad():
        reference = two_stream_reference(model, inputs)
        controller = install_cross_override(model, LocalAttn())
        try:
            out = controller.forward(model, 0, "cond", **inputs)[0]
            plain_window = two_stream_reference(model, inputs, full_inputs=False)
        finally:
            remove_cross_override(model)
        stock = model(**inputs)[0]
    assert torch.equal(out, reference)
    assert not torch.allclose(out, plain_window, atol=1e-4)  # the override changes the window branch
    assert not torch.allclose(out, stock, atol=1e-4)  # and the window branch is not full attention
    assert controller.stats == {"full_passes": 1, "window_passes": 0, "injected_passes": 1, "cached_passes": 0}


def test_record_then_inject_matches_true_batch_of_two(model):
    """FreeSwim's own layout, batch [window, full] in one call; equal up to batch-size-dependent fp32 rounding."""

    class BatchSelf:
        def __call__(self, attn, h, e=None, m=None, rope=None, **kw):
            return torch.cat([LocalAttn()(attn, h[:1], e, m, rope), WanAttnProcessor()(attn, h[1:], e, m, rope)])

    class BatchCross:
        def __call__(self, attn, h, e=None, m=None, rope=None, **kw):
            out = WanAttnProcessor()(attn, h[1:], e[1:], m, rope)
            return torch.cat([out, out])

    inputs = wan_inputs(batch=1, seed=3)
    doubled = {k: (v.repeat(2, *[1] * (v.ndim - 1)) if torch.is_tensor(v) else v) for k, v in inputs.items()}
    with torch.no_grad():
        for block in model.blocks:
            block.attn1.set_processor(BatchSelf())
            block.attn2.set_processor(BatchCross())
        batch_two = model(**doubled)[0][:1]
        controller = install_cross_override(model, LocalAttn())
        out = controller.forward(model, 0, "cond", **inputs)[0]
        remove_cross_override(model)
    torch.testing.assert_close(out, batch_two, rtol=1e-5, atol=1e-5)


def _denoise(model, controller, steps, seed=0, spy=None):
    """A tiny CFG loop (Euler-like update) driving the controller: cond then uncond each step."""
    inputs = wan_inputs(batch=1, seed=seed)
    negative = torch.randn(inputs["encoder_hidden_states"].shape, generator=torch.Generator().manual_seed(seed + 1))
    latents, outputs = inputs["hidden_states"], []
    for step in range(steps):
        t = torch.tensor([900 - 150 * step])
        if spy is not None:
            spy["step"] = step
        cond = controller.forward(model, step, "cond", hidden_states=latents, timestep=t, encoder_hidden_states=inputs["encoder_hidden_states"], return_dict=False)[0]
        uncond = controller.forward(model, step, "uncond", hidden_states=latents, timestep=t, encoder_hidden_states=negative, return_dict=False)[0]
        outputs.append((latents, t, cond, uncond))
        latents = latents - 0.1 * (uncond + 3.0 * (cond - uncond))
    return outputs, negative, inputs["encoder_hidden_states"]


def test_cache_steps_1_with_override_uncond_equals_no_cache(model):
    controller = install_cross_override(model, LocalAttn(), cache_steps=1, override_uncond=True)
    try:
        with torch.no_grad():
            outputs, negative, prompt = _denoise(model, controller, steps=3)
    finally:
        remove_cross_override(model)
    with torch.no_grad():
        for latents, t, cond, uncond in outputs:
            for text, out in ((prompt, cond), (negative, uncond)):
                inputs = dict(hidden_states=latents, timestep=t, encoder_hidden_states=text)
                assert torch.equal(out, two_stream_reference(model, inputs))
    assert controller.stats["full_passes"] == 6 and controller.stats["cached_passes"] == 0


def test_refresh_schedule_and_cached_steps_reuse_the_refresh_record(model):
    spy = {"step": None, "full": []}

    class SpyFull(WanAttnProcessor):
        def __call__(self, attn, h, e=None, m=None, rope=None, **kw):
            if attn is model.blocks[0].attn1:
                spy["full"].append(spy["step"])
            return super().__call__(attn, h, e, m, rope)

    steps, cache_steps = 5, 2
    controller = install_cross_override(model, LocalAttn(), full=SpyFull(), cache_steps=cache_steps, override_uncond=False)
    try:
        with torch.no_grad():
            outputs, negative, prompt = _denoise(model, controller, steps=steps, spy=spy)
    finally:
        remove_cross_override(model)
    assert refresh_steps(steps, cache_steps) == [0, 2, 4]
    assert spy["full"] == [0, 2, 4]  # one full pass per refresh step, the cond branch only
    assert controller.stats == {"full_passes": 3, "window_passes": 5, "injected_passes": 5, "cached_passes": 2}
    with torch.no_grad():
        for step, (latents, t, cond, uncond) in enumerate(outputs):
            refresh = outputs[step - step % cache_steps]
            window = dict(hidden_states=latents, timestep=t, encoder_hidden_states=prompt)
            full = dict(hidden_states=refresh[0], timestep=refresh[1], encoder_hidden_states=prompt)
            assert torch.equal(cond, two_stream_reference(model, window, full))
            # override_uncond=False: the unconditional pass is the plain window branch
            plain = dict(hidden_states=latents, timestep=t, encoder_hidden_states=negative)
            assert torch.equal(uncond, two_stream_reference(model, plain, full_inputs=False))


def test_offloaded_cache_gives_the_same_result(model):
    results = []
    for offload in (False, True):
        controller = install_cross_override(model, LocalAttn(), cache_steps=2, offload=offload)
        try:
            with torch.no_grad():
                results.append(_denoise(model, controller, steps=2)[0][-1][2])
        finally:
            remove_cross_override(model)
    assert torch.equal(results[0], results[1])


def test_full_attn_processor_scale_factor_against_explicit_softmax():
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 12, 8) for _ in range(3))
    factor = freeswim_scale_factor(30 * 52)
    assert math.isclose(factor, math.sqrt(math.log(3120) / math.log(1560)))
    out = FullAttnProcessor(scale_factor=factor).attend(q, k, v, None, None, "wan")
    weights = torch.softmax(q @ k.transpose(-1, -2) * factor / math.sqrt(8), dim=-1)
    torch.testing.assert_close(out, weights @ v)


def test_controller_bad_input(model):
    with pytest.raises(ValueError, match="cache_steps"):
        CrossAttnOverride(2, cache_steps=0)
    with pytest.raises(ValueError, match="override_uncond"):
        CrossAttnOverride(2, override_uncond="yes")
    controller = CrossAttnOverride(2)
    with pytest.raises(ValueError, match="phase"):
        with controller.active("both"):
            pass
    with pytest.raises(ValueError, match="branch"):
        with controller.active("window", "negative"):
            pass
    with pytest.raises(ValueError, match="one per block"):
        install_cross_override(model, [LocalAttn()] * 3)
    with pytest.raises(ValueError, match="Wan transformer"):
        install_cross_override(torch.nn.Linear(2, 2), LocalAttn())
    with pytest.raises(ValueError, match="scale_factor"):
        FullAttnProcessor(scale_factor=0)


# -- FreeSwimPipeline ----------------------------------------------------------------------------------------
from vidattn.pipelines.default_model import build_default_pipeline  # noqa: E402
from vidattn.pipelines.freeswim import FreeSwimPipeline  # noqa: E402


@pytest.fixture(scope="module")
def wan_pipe():
    pipe = build_default_pipeline()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _processor_types(transformer):
    return {name: type(p) for name, p in transformer.attn_processors.items()}


def test_freeswim_end_to_end_t2v_with_the_window_method(wan_pipe):
    before = _processor_types(wan_pipe.transformer)
    fs = FreeSwimPipeline.from_pipe(wan_pipe, base_size=(32, 32), backend="dense")  # window (all frames, 1, 1)
    video = fs("a red circle moving left", height=64, width=64, num_frames=5, num_inference_steps=4, strength=0.75, base_num_inference_steps=1,
               cache_steps=2, flow_shift=9.0, max_sequence_length=16, generator=torch.Generator().manual_seed(0), output_type="pt").frames
    assert video.shape == (1, 5, 3, 64, 64)
    assert torch.isfinite(video).all()
    # 3 of 4 steps run; cond refreshes at steps 0 and 2, uncond is not overridden when caching (FreeSwim's cache code)
    assert fs.last_stats == {"full_passes": 2, "window_passes": 3, "injected_passes": 3, "cached_passes": 1, "steps": 3}
    assert _processor_types(wan_pipe.transformer) == before  # stock processors restored for stage 1 / later calls
    assert wan_pipe.scheduler.config.shift == 3.0  # flow_shift went to a stage-2 copy, not the frozen config


def test_flow_shift_builds_a_stage2_scheduler_copy(wan_pipe):
    fs = FreeSwimPipeline.from_pipe(wan_pipe, base_size=(32, 32), window_processor=LocalAttn())
    stage2 = fs._stage2_scheduler(9.0)
    assert stage2 is not wan_pipe.scheduler and stage2.config.shift == 9.0 and wan_pipe.scheduler.config.shift == 3.0
    stage2.set_timesteps(10)
    same = fs._stage2_scheduler(None)
    same.set_timesteps(10)
    assert (stage2.sigmas[1:-1] > same.sigmas[1:-1]).all()  # a larger shift keeps more noise at every step


def test_freeswim_end_to_end_i2v_image_tokens():
    from tiny_pipelines import tiny_wan_i2v_pipeline

    pipe = tiny_wan_i2v_pipeline()
    pipe.set_progress_bar_config(disable=True)
    image = torch.rand(3, 48, 48, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    embeds, negative = torch.randn(1, 512, 32, generator=g), torch.randn(1, 512, 32, generator=g)
    fs = FreeSwimPipeline.from_pipe(pipe, base_size=(32, 32), window_processor=LocalAttn())
    video = fs(prompt_embeds=embeds, negative_prompt_embeds=negative, image=image, height=32, width=64, num_frames=5,
               num_inference_steps=2, strength=0.5, cache_steps=1, base_num_inference_steps=1, generator=torch.Generator().manual_seed(0),
               output_type="pt").frames
    assert video.shape == (1, 5, 3, 32, 64)
    assert torch.isfinite(video).all()
    assert fs.last_stats["full_passes"] == 2 and fs.last_stats["injected_passes"] == 2  # cond and uncond overridden


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(height=16, width=64), "at least base_size"),
        (dict(height=64, width=72), "multiples of 16"),
        (dict(num_frames=6), "num_frames"),
        (dict(strength=0.0), "strength"),
        (dict(cache_steps=0), "cache_steps"),
        (dict(flow_shift=-1.0), "flow_shift"),
        (dict(output_type="gif"), "output_type"),
        (dict(image=torch.zeros(3, 32, 32)), "image-to-video"),
    ],
)
def test_freeswim_bad_call_arguments(wan_pipe, kwargs, match):
    fs = FreeSwimPipeline.from_pipe(wan_pipe, base_size=(32, 32), window_processor=LocalAttn())
    call = dict(prompt="a red circle", height=64, width=64, num_frames=5, num_inference_steps=2, max_sequence_length=16) | kwargs
    with pytest.raises(ValueError, match=match):
        fs(**call)


def test_freeswim_bad_construction(wan_pipe):
    with pytest.raises(ValueError, match="multiples of 16"):
        FreeSwimPipeline.from_pipe(wan_pipe, base_size=(40, 32))
    with pytest.raises(ValueError, match="base_size"):
        FreeSwimPipeline.from_pipe(wan_pipe, base_size=480)
    with pytest.raises(ValueError, match="attn_scale_factor"):
        FreeSwimPipeline.from_pipe(wan_pipe, base_size=(32, 32), attn_scale_factor="paper")
    with pytest.raises(ValueError, match="window"):
        FreeSwimPipeline.from_pipe(wan_pipe, base_size=(32, 32), window=(1, 1))
    with pytest.raises(ValueError, match="Wan pipeline"):
        FreeSwimPipeline.from_pipe(object())
