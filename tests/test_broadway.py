"""BroadWay tests: map arithmetic against naive DFT / closed-form references, exactness, step gate, spies, CFG, pipeline."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, UNet3DConditionModel, UNetMotionModel
from diffusers.models.attention_processor import AttnProcessor2_0

from vidattn.metrics.motion import batch_frame_difference_energy, frame_difference_energy
from vidattn.pipelines.broadway_guidance import (
    BroadWayAttnProcessor,
    BroadWayConfig,
    BroadWayController,
    adaptive_beta,
    apply_broadway,
    fourier_enhance,
    remove_broadway,
    self_guide,
    split_energy,
    temporal_energy,
)

FRAMES, TAU = 8, 3  # UNet tests: F=8 allows tau 0..3


def random_maps(shape, frames, seed=0, sharpness=3.0):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(sharpness * torch.randn(*shape, frames, frames, generator=g, dtype=torch.float64), dim=-1)


def naive_fme(maps: np.ndarray, beta: float, tau: int, clamp: bool) -> np.ndarray:
    """Explicit DFT matrices and a per-row loop; the high band is bins F//2-tau .. F//2+tau."""
    frames = maps.shape[-1]
    n = np.arange(frames)
    dft = np.exp(-2j * np.pi * np.outer(n, n) / frames)
    gains = np.array([beta if frames // 2 - tau <= k <= frames // 2 + tau else 1.0 for k in range(frames)])
    out = np.empty_like(maps)
    for idx in np.ndindex(maps.shape[:-1]):
        row = (np.conj(dft) @ (gains * (dft @ maps[idx]))).real / frames
        if clamp:
            row = np.where(row > 0, row, 0.0)
        out[idx] = row / row.sum()
    return out


def naive_energy(maps: np.ndarray) -> float:
    frames = maps.shape[-1]
    per_map = [(maps[idx] ** 2).sum() / frames for idx in np.ndindex(maps.shape[:-2])]
    return float(np.mean(per_map))


# ---- config ----


@pytest.mark.parametrize(
    "kwargs, name",
    [({"alpha": -0.1}, "alpha"), ({"alpha": 1.5}, "alpha"), ({"beta": 0.9}, "beta"), ({"beta": float("nan")}, "beta"),
     ({"tau": -1}, "tau"), ({"tau": 2.5}, "tau"), ({"steps_fraction": 1.2}, "steps_fraction"),
     ({"interpolation": "bicubic"}, "interpolation"), ({"clamp_negative": 1}, "clamp_negative"), ({"cond_half": "yes"}, "cond_half")],
)
def test_bad_config_names_the_parameter(kwargs, name):
    with pytest.raises(ValueError, match=name):
        BroadWayConfig(**kwargs)


def test_tau_must_leave_the_dc_bin_alone():
    BroadWayConfig(tau=7).check_frames(16)
    for frames, tau in [(16, 8), (15, 7), (8, 4)]:
        with pytest.raises(ValueError, match="tau must be < frames // 2"):
            BroadWayConfig(tau=tau).check_frames(frames)


def test_presets_are_the_papers():
    ad, vc = BroadWayConfig.animatediff(), BroadWayConfig.videocrafter2()
    assert (ad.tau, ad.alpha, ad.beta, ad.steps_fraction) == (7, 0.6, 1.5, 0.2)
    assert (vc.tau, vc.alpha, vc.beta) == (7, 0.1, 10.0)
    assert BroadWayConfig.animatediff(clamp_negative=False).clamp_negative is False


# ---- map arithmetic ----


@pytest.mark.parametrize("beta", [1.5, 10.0])
def test_fme_closed_form_tau7_f16(beta):
    maps = random_maps((3, 2), 16)
    out = fourier_enhance(maps, beta, 7, clamp_negative=False).double()
    closed = beta * maps + (1 - beta) / 16
    assert torch.allclose(out, closed, atol=1e-6)
    assert (closed < 0).any()  # the clamp matters here
    clamped = fourier_enhance(maps, beta, 7, clamp_negative=True).double()
    ref = closed.clamp_min(0)
    assert torch.allclose(clamped, ref / ref.sum(-1, keepdim=True), atol=1e-6)
    assert (clamped >= 0).all()
    assert torch.allclose(clamped.sum(-1), torch.ones(3, 2, 16, dtype=torch.float64), atol=1e-6)


@pytest.mark.parametrize("frames, tau, clamp", [(12, 2, True), (12, 2, False), (9, 1, True), (8, 0, False)])
def test_fme_matches_naive_dft(frames, tau, clamp):
    maps = random_maps((2, 3), frames, seed=1)
    out = fourier_enhance(maps, 2.0, tau, clamp_negative=clamp)
    ref = naive_fme(maps.numpy(), 2.0, tau, clamp)
    np.testing.assert_allclose(out.numpy(), ref, atol=1e-6)
    np.testing.assert_allclose(out.sum(-1).numpy(), 1.0, atol=1e-6)


def test_energy_split_matches_naive_parseval():
    maps = random_maps((2, 2, 3), 12, seed=2)
    low, high = split_energy(maps, 2)
    assert float(temporal_energy(maps)) == pytest.approx(naive_energy(maps.numpy()), rel=1e-6)
    highs = fourier_enhance(maps, 2.0, 2, clamp_negative=False).double() - maps  # = (beta-1) * high-band part
    assert float(high) == pytest.approx(naive_energy(highs.numpy()), rel=1e-5)
    assert float(low + high) == pytest.approx(naive_energy(maps.numpy()), rel=1e-6)


def test_adaptive_beta_restores_the_energy_tsg_removed():
    maps = random_maps((2, 4, 4, 2), 16, seed=3, sharpness=4.0)
    anchor = random_maps((2, 2, 2, 2), 16, seed=4, sharpness=0.5)  # a smooth anchor: TSG lowers the energy
    e1 = temporal_energy(maps)
    guided = self_guide(maps, anchor, 0.6, "bilinear")
    low, high = split_energy(guided, 7)
    beta = adaptive_beta(1.5, e1, low, high)
    assert beta > 1.5  # the adaptive branch was taken
    e3 = temporal_energy(fourier_enhance(guided, beta, 7, clamp_negative=False))
    assert float(e3) >= float(e1) * (1 - 1e-6)
    assert float(temporal_energy(fourier_enhance(guided, 1.5, 7, clamp_negative=False))) < float(e1)


def test_self_guide_nearest_matches_loop_and_bilinear_keeps_rows_stochastic():
    maps = random_maps((1, 4, 6, 2), 8, seed=5)
    anchor = random_maps((1, 2, 3, 2), 8, seed=6)
    out = self_guide(maps, anchor, 0.25, "nearest")
    ref = maps.clone()
    for h in range(4):
        for w in range(6):
            ref[0, h, w] = 0.75 * maps[0, h, w] + 0.25 * anchor[0, h // 2, w // 2]
    assert torch.allclose(out, ref, atol=1e-12)
    for mode in ("bilinear", "area", "nearest-exact"):
        guided = self_guide(maps, anchor, 0.6, mode)
        assert torch.allclose(guided.sum(-1), torch.ones_like(guided.sum(-1)), atol=1e-9)
    assert self_guide(maps, anchor, 0.0, "bilinear") is maps


# ---- controller gate (no UNet) ----


def test_step_gate_by_count_and_by_timestep():
    sample = torch.zeros(1, 1, FRAMES, 2, 2)
    ctl = BroadWayController(BroadWayConfig(tau=TAU, steps_fraction=0.2), num_steps=10)
    active = []
    for t in range(999, 0, -100):  # 10 steps
        ctl.begin_call(sample, torch.tensor([t]))
        active.append(ctl.active)
    assert active == [True, True] + [False] * 8
    ctl.begin_call(sample, torch.tensor([999]))  # a new generation restarts the count
    assert ctl.active and ctl.context.step == 0
    by_time = BroadWayController(BroadWayConfig(tau=TAU, steps_fraction=0.2))
    flags = []
    for t in (999, 801, 800, 799, 500):
        by_time.begin_call(sample, torch.tensor([t]))
        flags.append(by_time.active)
    assert flags == [True, True, True, False, False]


# ---- tiny UNets ----


@pytest.fixture(scope="module")
def motion_unet():
    torch.manual_seed(0)
    return UNetMotionModel(
        block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=4, cross_attention_dim=16,
        num_attention_heads=2, motion_num_attention_heads=2, motion_max_seq_length=32, sample_size=8,
    ).eval()


@pytest.fixture(scope="module")
def unet3d():
    torch.manual_seed(0)
    return UNet3DConditionModel(
        block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=4, cross_attention_dim=16,
        attention_head_dim=4, sample_size=8,
    ).eval()


def unet_inputs(unet, batch=1, cfg=True, seed=0, size=(8, 6)):
    """CFG layout [uncond, cond] with identical latent halves; UNetMotionModel wants text repeated per frame."""
    g = torch.Generator().manual_seed(seed)
    sample = torch.randn(batch, 4, FRAMES, *size, generator=g)
    text = torch.randn(2 * batch if cfg else batch, 5, 16, generator=g)
    if cfg:
        sample = torch.cat([sample, sample])
    if isinstance(unet, UNetMotionModel):
        text = text.repeat_interleave(FRAMES, dim=0)
    return sample, text


def run(unet, sample, text, t=900):
    with torch.no_grad():
        return unet(sample, t, encoder_hidden_states=text).sample


TARGETS = {
    f"up_blocks.{b}.{kind}.{m}.transformer_blocks.0.{slot}.processor"
    for b in (1, 2, 3) for m in (0, 1) for slot in ("attn1", "attn2") for kind in ("motion_modules", "temp_attentions")
}


@pytest.mark.parametrize("which", ["motion", "3d"])
def test_identity_settings_equal_stock_and_changes_otherwise(which, motion_unet, unet3d):
    unet = motion_unet if which == "motion" else unet3d
    sample, text = unet_inputs(unet, size=(7, 5))  # odd grid: ceil-halving 7x5 -> 4x3 -> 2x2
    stock = run(unet, sample, text)
    try:
        ctl = apply_broadway(unet, BroadWayConfig(alpha=0.0, beta=1.0, tau=TAU))
        same = run(unet, sample, text)
        assert len(ctl.history) == 12 and all(h["beta"] == pytest.approx(1.0) for h in ctl.history)
        assert torch.allclose(same, stock, atol=2e-5, rtol=1e-5)
        ctl = apply_broadway(unet, BroadWayConfig(alpha=0.6, beta=1.5, tau=TAU))
        changed = run(unet, sample, text)
        assert len(ctl.history) == 12 and not torch.allclose(changed, stock, atol=1e-4)
    finally:
        remove_broadway(unet)
    assert torch.equal(run(unet, sample, text), stock)
    assert not any(isinstance(p, BroadWayAttnProcessor) for p in unet.attn_processors.values())


def test_steps_after_the_fraction_are_stock_exactly(motion_unet):
    sample, text = unet_inputs(motion_unet)
    scheduler = DDIMScheduler(steps_offset=1)
    scheduler.set_timesteps(5)
    stock = [run(motion_unet, sample, text, t) for t in scheduler.timesteps]
    try:
        ctl = apply_broadway(motion_unet, BroadWayConfig(tau=TAU, steps_fraction=0.4), scheduler=scheduler)
        outs = [run(motion_unet, sample, text, t) for t in scheduler.timesteps]
    finally:
        remove_broadway(motion_unet)
    assert sorted({h["step"] for h in ctl.history}) == [0, 1]
    for step in (0, 1):
        assert not torch.allclose(outs[step], stock[step], atol=1e-4)
    for step in (2, 3, 4):
        assert torch.equal(outs[step], stock[step])


class Spy(AttnProcessor2_0):
    """The stock processor, counting calls per name."""

    def __init__(self, name, calls):
        super().__init__()
        self.name, self.calls = name, calls

    def __call__(self, *args, **kwargs):
        self.calls[self.name] = self.calls.get(self.name, 0) + 1
        return super().__call__(*args, **kwargs)


def test_only_decoder_temporal_attention_is_modified(motion_unet):
    sample, text = unet_inputs(motion_unet)
    originals = dict(motion_unet.attn_processors)
    stock_calls, bw_calls, maps = {}, {}, []
    try:
        motion_unet.set_attn_processor({name: Spy(name, stock_calls) for name in originals})
        stock = run(motion_unet, sample, text)
        motion_unet.set_attn_processor({name: Spy(name, bw_calls) for name in originals})
        apply_broadway(motion_unet, BroadWayConfig(alpha=0.6, beta=10.0, tau=TAU))
        for name, proc in motion_unet.attn_processors.items():
            if isinstance(proc, BroadWayAttnProcessor):
                modify = proc.modify
                proc.modify = lambda *a, _m=modify, _n=name: maps.append((_n, _m(*a))) or maps[-1][1]
        out = run(motion_unet, sample, text)
    finally:
        remove_broadway(motion_unet)
        motion_unet.set_attn_processor(dict(originals))  # set_attn_processor pops from the dict it gets
    wrapped = {name for name in originals if name in TARGETS}
    assert len(wrapped) == 12 and {n for n, _ in maps} == wrapped
    assert set(stock_calls) == set(originals)
    assert set(bw_calls) == set(originals) - wrapped  # every other layer ran the stock processor ...
    assert all(bw_calls[n] == stock_calls[n] for n in bw_calls)  # ... as often as without BroadWay
    assert not torch.allclose(out, stock, atol=1e-4)
    for _, m in maps:  # beta 10: many closed-form entries go negative; the clamp removes them
        assert (m >= 0).all()
        assert torch.allclose(m.sum(-1), torch.ones_like(m.sum(-1)), atol=1e-5)


def test_energy_uses_only_the_conditional_half(motion_unet):
    sample, text = unet_inputs(motion_unet, batch=2, seed=3)  # 2 videos x CFG
    other = text.clone()
    other[: len(text) // 2] += 1.0  # a different unconditional prompt

    def betas(text_states, cond_half):
        try:
            ctl = apply_broadway(motion_unet, BroadWayConfig(tau=TAU, cond_half=cond_half))
            out = run(motion_unet, sample, text_states)
        finally:
            remove_broadway(motion_unet)
        return [h["beta"] for h in ctl.history], out, ctl

    detected, out_a, ctl = betas(text, None)
    assert ctl.cond_half is True
    again, out_b, _ = betas(other, None)
    assert detected == again and any(b > 1.5 for b in detected)
    assert torch.equal(out_a[2:], out_b[2:])  # cond outputs do not depend on the uncond prompt
    whole_a, _, _ = betas(text, False)
    whole_b, _, _ = betas(other, False)
    assert whole_a != whole_b  # with the whole batch the uncond half would leak into beta


def test_frames_too_few_for_tau_raise(motion_unet):
    sample, text = unet_inputs(motion_unet)
    try:
        apply_broadway(motion_unet, BroadWayConfig(tau=4))
        with pytest.raises(ValueError, match="tau must be < frames // 2"):
            run(motion_unet, sample, text)
    finally:
        remove_broadway(motion_unet)


def test_apply_rejects_models_without_decoder_temporal_attention():
    with pytest.raises(ValueError, match="UNetMotionModel"):
        apply_broadway(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="BroadWayConfig"):
        apply_broadway(torch.nn.Linear(2, 2), {"alpha": 0.5})


# ---- motion metric ----


def test_motion_metric_against_loop():
    g = np.random.default_rng(0)
    video = g.integers(0, 256, size=(4, 3, 5, 3), dtype=np.uint8)
    ref = np.mean([((video[t + 1] / 255.0 - video[t] / 255.0) ** 2).mean() for t in range(3)])
    assert frame_difference_energy(video) == pytest.approx(ref)
    assert frame_difference_energy(torch.from_numpy(video / 255.0)) == pytest.approx(ref)
    assert frame_difference_energy(np.repeat(video[:1], 4, axis=0)) == 0.0
    assert batch_frame_difference_energy(np.stack([video, video[::-1]])) == pytest.approx([ref, ref])
    with pytest.raises(ValueError, match="frames"):
        frame_difference_energy(video[:1])
    with pytest.raises(ValueError, match="frames"):
        frame_difference_energy(video.astype(np.int32))


# ---- pipeline end to end ----


def test_animatediff_pipeline_end_to_end():
    from vidattn.pipelines.broadway import BroadWayAnimateDiffPipeline, build_tiny_animatediff_pipeline, run_broadway_generation

    pipe = build_tiny_animatediff_pipeline()
    kwargs = dict(num_frames=16, height=16, width=16, num_inference_steps=3, guidance_scale=7.5)
    stock = run_broadway_generation(pipe, "a red circle", enabled=False, generator=torch.Generator().manual_seed(0), **kwargs)
    config = BroadWayConfig.animatediff(steps_fraction=0.34)
    bw = run_broadway_generation(pipe, "a red circle", config, generator=torch.Generator().manual_seed(0), **kwargs)
    assert stock.frames.shape == bw.frames.shape == (1, 16, 16, 16, 3)
    assert bw.controller.cond_half is True and {h["step"] for h in bw.controller.history} == {0, 1}
    assert len(stock.motion) == 1 and stock.motion[0] > 0 and bw.motion[0] != stock.motion[0]
    assert not any(isinstance(p, BroadWayAttnProcessor) for p in pipe.unet.attn_processors.values())
    wrapped = BroadWayAnimateDiffPipeline.from_pipe(pipe, broadway=config)
    wrapped.set_progress_bar_config(disable=True)
    out = wrapped("a red circle", generator=torch.Generator().manual_seed(0), output_type="np", **kwargs)
    np.testing.assert_allclose(out.frames, bw.frames, atol=1e-6)
    with pytest.raises(ValueError, match="tau"):
        wrapped("a red circle", num_frames=8, num_inference_steps=1)
