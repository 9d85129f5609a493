"""FreeSwim on Wan 2.2: the two A14B experts switch at the boundary with their own records; TI2V's per-token timesteps."""

from __future__ import annotations

import copy

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, WanImageToVideoPipeline, WanPipeline

from vidattn.pipelines.default_model import build_default_pipeline
from vidattn.pipelines.freeswim import FreeSwimPipeline
from vidattn.processors.window import WindowAttnProcessor

CALL = dict(prompt="a red circle moving left", height=64, width=64, num_frames=5, num_inference_steps=4, strength=1.0,
            base_num_inference_steps=2, max_sequence_length=16, output_type="latent")


def _pipe(cls=WanPipeline, **config):
    base = build_default_pipeline()
    parts = {name: getattr(base, name) for name in ("tokenizer", "text_encoder", "vae", "scheduler", "transformer")}
    pipe = cls(**parts, **config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _freeswim(pipe, **kwargs):
    window = WindowAttnProcessor(window=(None, 1, 1), scale_factor=1.0, backend="gather", block_size=8)
    fs = FreeSwimPipeline.from_pipe(pipe, base_size=(32, 32), window_processor=window)
    return fs, fs(generator=torch.Generator().manual_seed(0), **{**CALL, **kwargs}).frames


def _timesteps_seen(transformer, log: list):
    return transformer.register_forward_pre_hook(lambda module, args, kwargs: log.append(kwargs["timestep"].clone()), with_kwargs=True)


def _stage2_timesteps(steps: int = 4) -> torch.Tensor:
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    scheduler.set_timesteps(steps)
    return scheduler.timesteps


def test_two_identical_experts_equal_one_expert():
    ts = _stage2_timesteps()
    ratio = float(ts[1] + ts[2]) / 2 / 1000  # the switch falls between stage-2 steps 1 and 2
    one = _pipe()
    two = _pipe(transformer_2=None, boundary_ratio=ratio)
    two.transformer_2 = copy.deepcopy(two.transformer)
    two.register_modules(transformer_2=two.transformer_2)
    _, expected = _freeswim(one, cache_steps=1)
    fs, got = _freeswim(two, cache_steps=1)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert fs.last_stats["expert_2_steps"] == 2 and fs.last_stats["steps"] == 4


def test_each_expert_serves_its_side_of_the_boundary_and_gets_its_own_record():
    ts = _stage2_timesteps()
    ratio = float(ts[0] + ts[1]) / 2 / 1000  # switch after stage-2 step 0: an odd step, so cache_steps=2 must refresh there
    pipe = _pipe(boundary_ratio=ratio)
    torch.manual_seed(1)
    pipe.transformer_2 = copy.deepcopy(pipe.transformer)
    for p in pipe.transformer_2.parameters():
        p.data.add_(0.05 * torch.randn_like(p))
    pipe.register_modules(transformer_2=pipe.transformer_2)
    before = [{n: type(p) for n, p in expert.attn_processors.items()} for expert in (pipe.transformer, pipe.transformer_2)]
    high, low = [], []
    hooks = [_timesteps_seen(pipe.transformer, high), _timesteps_seen(pipe.transformer_2, low)]
    fs, video = _freeswim(pipe, cache_steps=2, guidance_scale=3.0)
    for hook in hooks:
        hook.remove()
    boundary = ratio * 1000
    assert high and low and all(float(t.max()) >= boundary for t in high) and all(float(t.max()) < boundary for t in low)
    # cond: expert 1 records at step 0, expert 2 records at its first step (1) and at step 2; step 3 reuses step 2's record
    assert fs.last_stats["full_passes"] == 3 and fs.last_stats["cached_passes"] == 1 and fs.last_stats["expert_2_steps"] == 3
    assert torch.isfinite(video).all()
    after = [{n: type(p) for n, p in expert.attn_processors.items()} for expert in (pipe.transformer, pipe.transformer_2)]
    assert after == before


def test_ti2v_t2v_per_token_timesteps_equal_the_scalar_timestep_run():
    seen: list = []
    pipe = _pipe(expand_timesteps=True)
    hook = _timesteps_seen(pipe.transformer, seen)
    _, got = _freeswim(pipe, cache_steps=1)
    hook.remove()
    _, expected = _freeswim(_pipe(), cache_steps=1)
    assert all(t.ndim == 2 for t in seen), "TI2V calls the transformer with a (B, tokens) timestep"
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_ti2v_i2v_keeps_the_clean_first_frame():
    pipe = _pipe(WanImageToVideoPipeline, image_processor=None, image_encoder=None, expand_timesteps=True)
    image = torch.rand(3, 48, 48, generator=torch.Generator().manual_seed(0))
    # prompt embeddings from the T2V pipeline: the I2V pipeline's prompt cleaning needs ftfy, which this test does not
    embeds = _pipe().encode_prompt(CALL["prompt"], do_classifier_free_guidance=False, max_sequence_length=16)[0]
    seen: list = []
    hook = _timesteps_seen(pipe.transformer, seen)
    _, latents = _freeswim(pipe, prompt=None, prompt_embeds=embeds, image=image, cache_steps=1, guidance_scale=1.0)
    hook.remove()
    pixels = pipe.video_processor.preprocess(image, height=64, width=64).to(torch.float32)
    _, condition, mask = pipe.prepare_latents(pixels, 1, 4, 64, 64, 5, torch.float32, torch.device("cpu"), None, latents)
    assert torch.equal(latents[:, :, 0], condition[:, :, 0])
    tokens_per_frame = (64 // 8 // 2) ** 2
    stage2 = seen[-4:]
    assert all(float(t[0, :tokens_per_frame].abs().max()) == 0 and float(t[0, tokens_per_frame:].min()) > 0 for t in stage2)
