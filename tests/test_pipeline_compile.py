"""``torch.compile(model, fullgraph=True)`` with the pipelines' stateful processors: streaming (KV cache and linear
state across chunks), FreeSwim (record/inject cross-attention override) and BroadWay (UNet temporal attention maps).

Each compiles to a fixed number of graphs (counted by a backend that wraps aot_eager) with no recompile across steps,
chunks or phases (``error_on_recompile``), and every output equals the uncompiled twin's to 1e-5 (f32).
"""

from __future__ import annotations

import pytest
import torch

from tiny_models import tiny_wan, wan_inputs
from vidattn.pipelines.cross_override import CrossAttnOverride, FullAttnProcessor, install_cross_override
from vidattn.processors.window import WindowAttnProcessor

pytestmark = pytest.mark.usefixtures("one_thread")


class GraphCounter:
    """A torch.compile backend that counts the graphs it is given and runs them through ``inner`` (aot_eager)."""

    def __init__(self, inner: str = "aot_eager") -> None:
        self.graphs = 0
        self.inner = inner

    def __call__(self, gm, example_inputs):
        self.graphs += 1
        return torch._dynamo.lookup_backend(self.inner)(gm, example_inputs)


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def compiled_with_counter(model, inner: str = "aot_eager"):
    counter = GraphCounter(inner)
    return torch.compile(model, fullgraph=True, backend=counter), counter


# -- FreeSwim -------------------------------------------------------------------------------------------
def freeswim_model(cache_steps: int, override_uncond: bool):
    model = tiny_wan(2)
    window = WindowAttnProcessor(window=(None, 1, 1), backend="gather", block_size=16)
    controller = install_cross_override(model, window, full=FullAttnProcessor(1.05), cache_steps=cache_steps, override_uncond=override_uncond)
    return model, controller


@pytest.mark.parametrize("cache_steps, override_uncond", [(1, True), (2, False)])
def test_freeswim_override_one_graph_for_every_phase(cache_steps, override_uncond):
    """FreeSwim's stage-2 loop (cond then uncond each step; with cache_steps=2 and override_uncond=False the phases
    are full_record, window_inject and plain window): one graph, no recompile when the phase changes, outputs
    equal to the uncompiled twin's, and the same statistics."""
    model, controller = freeswim_model(cache_steps, override_uncond)
    eager_model, eager_controller = freeswim_model(cache_steps, override_uncond)
    compiled, counter = compiled_with_counter(model)
    inputs = wan_inputs(batch=1, frames=2, height=8, width=8)
    negative = torch.randn(inputs["encoder_hidden_states"].shape, generator=torch.Generator().manual_seed(7))
    latents = inputs["hidden_states"]
    with torch.no_grad(), torch._dynamo.config.patch(error_on_recompile=True):
        for step in range(3):
            t = torch.tensor([900.0 - 150 * step])
            outs = []
            for branch, text in (("cond", inputs["encoder_hidden_states"]), ("uncond", negative)):
                call = dict(hidden_states=latents, timestep=t, encoder_hidden_states=text, return_dict=False)
                out = controller.forward(compiled, step, branch, **call)[0]
                expected = eager_controller.forward(eager_model, step, branch, **call)[0]
                torch.testing.assert_close(out, expected, atol=1e-5, rtol=0, msg=f"step {step} {branch}")
                outs.append(out)
            latents = latents - 0.1 * (outs[1] + 3.0 * (outs[0] - outs[1]))
    assert counter.graphs == 1
    assert controller.stats == eager_controller.stats
    assert controller.stats["full_passes"] >= 2 and controller.stats["injected_passes"] == 3 * (1 + override_uncond)


# -- streaming ------------------------------------------------------------------------------------------
STREAM = dict(sink_frames=1, window_frames=3, max_frames=4, block_size=4, backend="gather")


def streaming_model(mode: str):
    from vidattn.pipelines.stream_state import apply_streaming_attention
    from vidattn.processors.streaming import StreamingConfig

    model = tiny_wan(2)
    state = apply_streaming_attention(model, StreamingConfig(mode=mode, sparse_keep=0.5, **STREAM))
    if mode == "hybrid":  # a trained-like linear_proj, so the linear state's readout shows in the output
        generator = torch.Generator().manual_seed(3)
        for block in model.blocks:
            with torch.no_grad():
                block.attn1.linear_proj.weight.copy_(torch.randn(block.attn1.linear_proj.weight.shape, generator=generator) * 0.5)
    state.new_prompt()
    return model, state


@pytest.mark.parametrize("mode", ["hybrid", "window", "dense"])
def test_streaming_one_graph_for_every_chunk_and_pass(mode):
    """Five chunks of one frame, each two denoising calls and a commit call (the cache fills, frames are evicted
    into the linear state from chunk 3 on, and in dense mode the cache grows every chunk): one graph, no recompile,
    every output equal to the uncompiled twin's, the same cached frames, and the hybrid readout really contributes."""
    from vidattn.pipelines.stream_state import cache_frames

    model, state = streaming_model(mode)
    eager_model, eager_state = streaming_model(mode)
    compiled, counter = compiled_with_counter(model)
    generator = torch.Generator().manual_seed(0)
    text = torch.randn(2, 5, 16, generator=generator)
    outs = []
    with torch.no_grad(), torch._dynamo.config.patch(error_on_recompile=True):
        for chunk in range(5):
            for t, commit in ((900.0, False), (500.0, False), (0.0, True)):
                x = torch.randn(2, 4, 1, 4, 6, generator=generator)
                args = (x, torch.full((2,), t), text)
                with state.context.call(frame=chunk, commit=commit), eager_state.context.call(frame=chunk, commit=commit):
                    out = compiled(*args, return_dict=False)[0]
                    expected = eager_model(*args, return_dict=False)[0]
                torch.testing.assert_close(out, expected, atol=1e-5, rtol=0, msg=f"{mode}: chunk {chunk}, t {t}")
                outs.append(out)
            assert cache_frames(state) == cache_frames(eager_state)
    assert counter.graphs == 1
    if mode == "hybrid":
        assert state.layers[0].linear.count == eager_state.layers[0].linear.count == 3 * 6
    if mode == "dense":
        assert cache_frames(state)[0] == [0, 1, 2, 3, 4]


# -- BroadWay -------------------------------------------------------------------------------------------
def broadway_unet(kind: str):
    from diffusers import DDIMScheduler, UNet3DConditionModel, UNetMotionModel

    from vidattn.pipelines.broadway_guidance import BroadWayConfig, apply_broadway

    torch.manual_seed(0)
    common = dict(block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=4, cross_attention_dim=16, sample_size=8)
    if kind == "motion":
        unet = UNetMotionModel(num_attention_heads=2, motion_num_attention_heads=2, motion_max_seq_length=32, **common)
    else:
        unet = UNet3DConditionModel(attention_head_dim=4, **common)
    scheduler = DDIMScheduler(steps_offset=1)
    scheduler.set_timesteps(5)
    controller = apply_broadway(unet.eval(), BroadWayConfig(tau=3, steps_fraction=0.4), scheduler=scheduler)
    return unet, controller, scheduler.timesteps


@pytest.mark.parametrize("kind", ["3d"])  # UNetMotionModel: the AnimateDiff pipeline test below (each compile ~25 s)
def test_broadway_one_graph_for_active_and_stock_steps(kind):
    """Five DDIM steps with CFG halves (BroadWay active at steps 0-1, stock SDPA at 2-4), then the first step of a
    second generation: one graph, no recompile at the switch, outputs equal to the uncompiled twin's, and the same
    record of modified maps (step, block, beta). UNet3DConditionModel runs its graph through the ``eager`` backend:
    aot_eager fails on the stock model itself (``native_group_norm``: "Expected X.is_contiguous(memory_format)")."""
    unet, controller, timesteps = broadway_unet(kind)
    eager_unet, eager_controller, _ = broadway_unet(kind)
    compiled, counter = compiled_with_counter(unet, "aot_eager" if kind == "motion" else "eager")
    generator = torch.Generator().manual_seed(0)
    frames = 8
    text = torch.randn(2, 5, 16, generator=generator)
    if kind == "motion":
        text = text.repeat_interleave(frames, dim=0)
    with torch.no_grad(), torch._dynamo.config.patch(error_on_recompile=True):
        for call, t in enumerate([*timesteps, timesteps[0]]):
            sample = torch.randn(1, 4, frames, 8, 8, generator=generator).repeat(2, 1, 1, 1, 1)
            out = compiled(sample, t, encoder_hidden_states=text).sample
            expected = eager_unet(sample, t, encoder_hidden_states=text).sample
            torch.testing.assert_close(out, expected, atol=1e-5, rtol=0, msg=f"{kind}: call {call}")
            assert controller.active == eager_controller.active == (call in (0, 1, 5))
            assert controller.cond_half and controller.context.step == eager_controller.context.step
    assert counter.graphs == 1
    assert len(controller.history) == len(eager_controller.history) == 12
    for mine, theirs in zip(controller.history, eager_controller.history):
        assert (mine["step"], mine["block"], mine["key"]) == (theirs["step"], theirs["block"], theirs["key"])
        assert mine["beta"] == pytest.approx(theirs["beta"], rel=1e-5)


# -- whole pipelines with a compiled transformer ---------------------------------------------------------
def default_pipe(kind: str):
    from vidattn.pipelines.default_model import build_default_pipeline
    from vidattn.pipelines.streaming import StreamingWanPipeline

    pipe = build_default_pipeline()
    if kind == "streaming":
        pipe = StreamingWanPipeline.from_pipe(pipe)
        pipe.text_encoder.eval()  # built in code, it starts in train mode: dropout would make prompt embeddings random
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_streaming_pipeline_with_compiled_transformer_equals_uncompiled():
    """``pipe.transformer.compile(fullgraph=True)`` (in place: the pipeline installs its processors per stream), two
    hybrid streams of three chunks with CFG: the streamed latents equal the uncompiled pipeline's, and one graph
    serves every call of both streams (the second stream's new processors, state and linear_proj compile nothing)."""
    pipe, eager_pipe = default_pipe("streaming"), default_pipe("streaming")
    counter = GraphCounter()
    pipe.transformer.compile(fullgraph=True, backend=counter)
    kwargs = dict(attention="hybrid", frames_per_chunk=1, height=32, width=32, negative_prompt="black", guidance_scale=3.0)
    graphs = []
    for seed in (0, 1):
        streamed = list(pipe.stream_latents(["a red circle"], 3, generator=torch.Generator().manual_seed(seed), **kwargs))
        expected = list(eager_pipe.stream_latents(["a red circle"], 3, generator=torch.Generator().manual_seed(seed), **kwargs))
        for chunk, (out, ref) in enumerate(zip(streamed, expected)):
            torch.testing.assert_close(out, ref, atol=1e-5, rtol=0, msg=f"stream {seed}, chunk {chunk}")
        graphs.append(counter.graphs)
    assert graphs == [1, 1]


def test_freeswim_pipeline_with_compiled_transformer_equals_uncompiled():
    """FreeSwim end to end (stage 1 stock at 32x32, stage 2 override at 64x64, cache_steps=2) with
    ``pipe.transformer.compile(fullgraph=True)``: frames equal to the uncompiled pipeline's, run twice; two graphs
    (stage 1: stock processors at the base grid; stage 2: the override at the target grid), none more on the second run."""
    from vidattn.pipelines.freeswim import FreeSwimPipeline

    pipe, eager_pipe = default_pipe("wan"), default_pipe("wan")
    counter = GraphCounter()
    pipe.transformer.compile(fullgraph=True, backend=counter)
    graphs = []
    for seed in (0, 1):
        videos = []
        for p in (pipe, eager_pipe):
            fs = FreeSwimPipeline.from_pipe(p, base_size=(32, 32), backend="gather")
            videos.append(fs("a red circle moving left", height=64, width=64, num_frames=5, num_inference_steps=4, strength=0.75,
                             base_num_inference_steps=2, cache_steps=2, max_sequence_length=16, output_type="pt",
                             generator=torch.Generator().manual_seed(seed)).frames)
        torch.testing.assert_close(videos[0], videos[1], atol=1e-5, rtol=0)
        graphs.append(counter.graphs)
    assert graphs == [2, 2]


def test_broadway_animatediff_pipeline_with_compiled_unet_equals_uncompiled():
    """The tiny AnimateDiff pipeline with ``pipe.unet.compile(fullgraph=True)`` (in place: BroadWay is installed per
    call), CFG, steps 0-1 modified and step 2 stock, run twice: frames equal to the uncompiled pipeline's, the same
    modified steps, and one graph for both runs (the second run's new processors and hook compile nothing)."""
    from vidattn.pipelines.broadway import build_tiny_animatediff_pipeline, run_broadway_generation
    from vidattn.pipelines.broadway_guidance import BroadWayConfig

    pipe, eager_pipe = build_tiny_animatediff_pipeline(), build_tiny_animatediff_pipeline()
    counter = GraphCounter()
    pipe.unet.compile(fullgraph=True, backend=counter)
    kwargs = dict(num_frames=16, height=16, width=16, num_inference_steps=3, guidance_scale=7.5)
    config = BroadWayConfig.animatediff(steps_fraction=0.34)
    graphs = []
    for seed in (0, 1):
        runs = [run_broadway_generation(p, "a red circle", config, generator=torch.Generator().manual_seed(seed), **kwargs) for p in (pipe, eager_pipe)]
        torch.testing.assert_close(torch.from_numpy(runs[0].frames), torch.from_numpy(runs[1].frames), atol=1e-5, rtol=0)
        mine, theirs = runs[0].controller.history, runs[1].controller.history
        assert [(h["step"], h["block"], h["key"]) for h in mine] == [(h["step"], h["block"], h["key"]) for h in theirs]
        assert {h["step"] for h in mine} == {0, 1} and [h["beta"] for h in mine] == pytest.approx([h["beta"] for h in theirs], rel=1e-5)
        graphs.append(counter.graphs)
    assert graphs == [1, 1]


# -- what is refused -------------------------------------------------------------------------------------
def test_compiled_refusals_name_the_fix():
    """A custom window branch with its own ``__call__`` cannot go into the op (FreeSwim); a streaming processor
    without ``layer_idx`` has no cache key; installing on torch.compile's wrapper says to install first or compile in
    place. Each is one clear error, raised before any wrong output."""
    from vidattn.models import UnsupportedModelError
    from vidattn.pipelines.stream_state import apply_streaming_attention
    from vidattn.processors.streaming import StreamingAttnProcessor

    class CustomWindow:
        def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None, **kwargs):
            raise AssertionError("not reached: refused while tracing")

    inputs = wan_inputs(batch=1, frames=2, height=8, width=8)
    model = tiny_wan(1)
    controller = install_cross_override(model, CustomWindow(), full=FullAttnProcessor())
    with torch.no_grad(), pytest.raises(Exception, match="needs vidattn processors .* the window branch is a CustomWindow"):
        controller.forward(torch.compile(model, fullgraph=True, backend="eager"), 0, "cond", **inputs)

    model = tiny_wan(1)
    state = apply_streaming_attention(model)
    model.blocks[0].attn1.set_processor(StreamingAttnProcessor(state=state, context=state.context))  # no layer_idx
    with torch.no_grad(), pytest.raises(Exception, match="needs layer_idx"):
        torch.compile(model, fullgraph=True, backend="eager")(**inputs)

    with pytest.raises(UnsupportedModelError, match="torch.compile's wrapper around a WanTransformer3DModel"):
        apply_streaming_attention(torch.compile(tiny_wan(1)))
