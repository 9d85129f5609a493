"""``torch.compile(transformer, fullgraph=True)`` with every vidattn method, drop-in and installed: one graph for all
denoising steps (dense warm-up and sparse steps alike), outputs equal to the uncompiled model's, and diffusers'
own compile checks (TorchCompileTesterMixin: fullgraph, ``error_on_recompile``, regional compile), and new grids.

The transformer's graphs are counted with a counting backend (it wraps aot_eager, which also checks the custom ops'
fake implementations against functionalisation); inductor is not used here (73 s for one tiny Wan compile on this
CPU, docs/compile.md has its check). vidattn's own compiled FlexAttention inside the attention op compiles
separately, under its own budget: ``error_on_recompile`` (process-wide) is only set where no method runs it.
"""

from __future__ import annotations

import pytest
import torch

import vidattn
from vidattn.processors.registry import METHODS, make_processor
from vidattn.processors import video_attention_layers

from tiny_models import cogvideox_inputs, hunyuan_inputs, tiny_cogvideox, tiny_hunyuan, tiny_wan, wan_inputs

pytestmark = pytest.mark.usefixtures("one_thread")

# name -> (registered method, config fields on top of its tiny-grid settings). The grid is 4 x 8 x 8 tokens.
CASES = {
    "dense": ("dense", {"block_size": 32}),
    "radial": ("radial", {}),
    "vmoba": ("vmoba", {}),
    "window": ("window", {}),
    "sta": ("window", {"window": None, "tile_aligned": True, "tile": (1, 4, 4), "size": (1, 1, 1), "block_size": 16}),
    "monarch": ("monarch", {}),
}
TIMESTEPS = (900, 800, 700)  # steps 0, 1, 2: with dense_steps=1, step 0 is the dense warm-up
# Then a second generation: the timestep rises, the hook restarts the count, step 0 is dense again.
RESTART = TIMESTEPS + (900,)
STEPS = (0, 1, 2, 0)


def fields_of(case: str, backend: str | None = None) -> tuple[str, dict]:
    method, extra = CASES[case]
    fields = {**METHODS[method].tiny_grid, **extra}
    if backend is not None and method != "monarch":  # Monarch has one pure-PyTorch kernel
        fields["backend"] = backend
    return method, fields


def build(case: str, mode: str, backend: str | None = None, dense_layers: int = 1):
    """A tiny Wan (2 layers) with the case's processors: ``drop-in`` (set_processor on every video layer, no hook) or
    ``installed`` (vidattn.apply with one dense warm-up step and ``dense_layers`` dense layers)."""
    method, fields = fields_of(case, backend)
    model = tiny_wan(2)
    if mode == "drop-in":
        for _, module, _ in video_attention_layers(model):
            module.set_processor(make_processor(method, **fields))
        return model, None
    return model, vidattn.apply(model, method, dense_steps=1, dense_layers=dense_layers, **fields)


def step_inputs(call: int, **grid) -> dict:
    inputs = wan_inputs(batch=2, frames=grid.get("frames", 4), height=grid.get("height", 16), width=grid.get("width", 16), seed=call)
    inputs["timestep"] = torch.full((2,), RESTART[call])
    return inputs


class GraphCounter:
    """A torch.compile backend that counts the graphs it is given and runs them through aot_eager."""

    def __init__(self) -> None:
        self.graphs = 0

    def __call__(self, gm, example_inputs):
        self.graphs += 1
        return torch._dynamo.lookup_backend("aot_eager")(gm, example_inputs)


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("mode", ["drop-in", "installed"])
@pytest.mark.parametrize("case", list(CASES))
def test_fullgraph_compile_one_graph_for_all_steps_equals_eager(case, mode):
    """Three steps and the first step of a second generation (installed: steps 0 dense warm-up, layer 0 dense, steps
    1-2 sparse): exactly one graph, compiled at the first call, outputs equal to the uncompiled twin's to 1e-5, and
    the hook's context records the same step and grid as it does uncompiled. The sparse steps really are sparse (far
    from the stock model's output)."""
    compiled_model, context = build(case, mode)
    eager_model, eager_context = build(case, mode)
    counter = GraphCounter()
    compiled = torch.compile(compiled_model, fullgraph=True, backend=counter)
    with torch.no_grad():
        for call, step in enumerate(STEPS):
            inputs = step_inputs(call)
            out = compiled(**inputs)[0]
            expected = eager_model(**inputs)[0]
            torch.testing.assert_close(out, expected, atol=1e-5, rtol=0, msg=f"{case} {mode}, call {call}")
            assert counter.graphs == 1, f"{case} {mode}: call {call} compiled graph {counter.graphs}"
            if context is not None:
                assert (context.step, context.layout) == (eager_context.step, eager_context.layout) == (step, vidattn.VideoLayout(4, 8, 8))
            if case != "dense" and call == 2:
                stock = tiny_wan(2)(**inputs)[0]
                assert (out - stock).abs().max() > 1e-3, f"{case} {mode}: step 2 is not sparse"


@pytest.mark.parametrize("case", list(CASES))
def test_diffusers_recompilation_and_graph_break_check(case):
    """diffusers' ``test_torch_compile_recompilation_and_graph_break`` on the installed method: fullgraph compile,
    then every step under ``error_on_recompile`` (kernels that compile nothing of their own: gather / Monarch)."""
    model, _ = build(case, "installed", backend="gather")
    compiled = torch.compile(model, fullgraph=True, backend=GraphCounter())
    with torch.no_grad(), torch._dynamo.config.patch(error_on_recompile=True):
        for step in range(len(TIMESTEPS)):
            compiled(**step_inputs(step))


@pytest.mark.parametrize("case", ["radial", "vmoba", "sta", "monarch"])
def test_diffusers_regional_compile_repeated_blocks(case):
    """diffusers' ``test_torch_compile_repeated_blocks``: ``compile_repeated_blocks(fullgraph=True)`` compiles the
    Wan block once for both layers (the hook runs uncompiled around it); no recompile over the steps; equal outputs.
    Without dense layers: a dense layer 0 runs other code than layer 1, so it is a second graph by design."""
    model, _ = build(case, "installed", backend="gather", dense_layers=0)
    eager_model, _ = build(case, "installed", backend="gather", dense_layers=0)
    counter = GraphCounter()
    model.compile_repeated_blocks(fullgraph=True, backend=counter)
    with torch.no_grad(), torch._dynamo.config.patch(error_on_recompile=True):
        for step in range(len(TIMESTEPS)):
            inputs = step_inputs(step)
            torch.testing.assert_close(model(**inputs)[0], eager_model(**inputs)[0], atol=1e-5, rtol=0)
    assert counter.graphs == 1


@pytest.mark.parametrize("case", ["radial", "vmoba", "monarch"])
def test_new_grid_compiles_once_and_plans_follow_the_grid(case):
    """Static shapes (the default): grid A, grid B, grid A again is two graphs (a new latent size is a new shape for
    the stock Wan model too), and every output equals the uncompiled model's: the plan is built for the call's grid
    at run time, never reused from the first grid. (diffusers' ``dynamic=True`` test: stock Wan itself recompiles per
    latent width/height; docs/compile.md.)"""
    model, _ = build(case, "installed", backend="gather")
    eager_model, _ = build(case, "installed", backend="gather")
    counter = GraphCounter()
    compiled = torch.compile(model, fullgraph=True, backend=counter)
    with torch.no_grad():
        for step, (height, width) in enumerate(((16, 16), (16, 24), (16, 16))):
            inputs = step_inputs(step, height=height, width=width)
            torch.testing.assert_close(compiled(**inputs)[0], eager_model(**inputs)[0], atol=1e-5, rtol=0)
    assert counter.graphs == 2


@pytest.mark.parametrize("family", ["hunyuan", "cogvideox"])
def test_joint_text_families_compile_once(family):
    """Joint text tokens (after the video for HunyuanVideo, with a padded prompt's masked keys; before it for
    CogVideoX, with RoPE): radial installed with a dense warm-up step, one graph, equal to uncompiled."""

    def build_family():
        model = tiny_hunyuan() if family == "hunyuan" else tiny_cogvideox(rope=True)
        vidattn.apply(model, "radial", block_size=16, dense_steps=1)
        return model

    model, eager_model = build_family(), build_family()
    counter = GraphCounter()
    compiled = torch.compile(model, fullgraph=True, backend=counter)
    with torch.no_grad():
        for call, timestep in enumerate(TIMESTEPS):
            inputs = hunyuan_inputs(seed=call) if family == "hunyuan" else cogvideox_inputs(True, seed=call)
            inputs["timestep"] = torch.full((2,), timestep)
            torch.testing.assert_close(compiled(**inputs)[0], eager_model(**inputs)[0], atol=1e-5, rtol=0)
    assert counter.graphs == 1


def test_compiled_training_is_refused():
    """The attention op has no backward: a compiled forward with gradients raises before any wrong gradient."""
    model, _ = build("radial", "drop-in")
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    with pytest.raises(Exception, match="runs inference only"):
        compiled(**step_inputs(0))
