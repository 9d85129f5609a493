"""Every family's real diffusers pipeline, tiny and offline, for 2 steps with every registered method installed by
``vidattn.apply(pipe, ...)``: it runs, the warm-up step is the stock run, the sparse step changes the output, the
step context counts pipeline steps (over both Wan 2.2 experts) and ``remove_processors`` gives the stock run back."""

from __future__ import annotations

import pytest
import torch
import tiny_family_pipelines as tiny

import vidattn
from vidattn.models import model_spec
from vidattn.processors import DenseAttnProcessor, install_processors, remove_processors
from vidattn.processors.install import transformers_of
from vidattn.processors.registry import METHODS

pytestmark = pytest.mark.usefixtures("one_thread")

# case -> (builder, transformer calls per pipeline step: 2 where CFG runs the model twice)
CASES = {
    "wan2.1-i2v": (tiny.wan21_i2v, 1),
    "wan2.2-a14b": (tiny.wan22_a14b, 2),
    "wan2.2-ti2v": (tiny.wan22_ti2v, 1),
    "wan2.1-flf2v": (tiny.wan_flf2v, 1),
    "wan-vace": (tiny.wan_vace, 1),
    "skyreels-v2-t2v": (tiny.skyreels_v2_t2v, 2),
    "skyreels-v2-df": (tiny.skyreels_v2, 2),
    "hunyuan": (tiny.hunyuan_video, 1),  # embedded guidance, no CFG call
    "cogvideox-5b": (tiny.cogvideox, 1),  # CFG batched into one call
    "hunyuan15": (tiny.hunyuan15, 2),
    "ltx2": (tiny.ltx2, 1),  # CFG batched into one call
    "cosmos2.5-video2world": (tiny.cosmos25, 2),
}
SMALL = dict(block_size=8, backend="gather")
# Sparse on every case's grid (3-5 latent frames of 4 x 5 tokens or more); with dense_steps=1 the first step runs dense, the second sparse.
SPARSE = {
    "radial": dict(decay=0.5, **SMALL),
    "vmoba": dict(threshold=0.2, temporal_chunk=2, spatial_chunk=(2, 2), st_chunk=(2, 2, 3), **SMALL),
    "monarch": dict(h_reduce=2),
    "window": dict(window=(1, 1, 1), **SMALL),
}


def _full_density(width: int) -> dict:
    return {
        "vmoba": dict(threshold=1.0, temporal_chunk=2, spatial_chunk=(2, 2), st_chunk=(2, 2, 3), **SMALL),
        "monarch": dict(w_reduce=width),
        "window": dict(window=(None, None, None), scale_factor=1.0, **SMALL),
    }


class Calls:
    """Per transformer call, in order: which transformer, the step the context held, the (video) output."""

    def __init__(self, pipe, context=None):
        self.records: list[tuple[int, int | None, torch.Tensor]] = []
        self.handles = [
            module.register_forward_hook(lambda m, args, out, i=i: self.records.append(
                (i, None if context is None else context.step, (out[0] if isinstance(out, tuple) else out.sample).detach().clone())))
            for i, module in enumerate(transformers_of(pipe))
        ]

    def close(self) -> list:
        for handle in self.handles:
            handle.remove()
        return self.records


def _run(pipe, call: dict, context=None) -> tuple[torch.Tensor, list]:
    """The pipeline's latents (LTX-2: video and audio latents, concatenated flat) and its transformer calls."""
    calls = Calls(pipe, context)
    with torch.no_grad():
        out = pipe(**call, generator=torch.Generator().manual_seed(0))
    latents = out.frames if getattr(out, "audio", None) is None else torch.cat([out.frames.flatten(), out.audio.flatten()])
    return latents, calls.close()


def _processor_types(pipe) -> dict:
    return {(i, name): type(m.processor) for i, t in enumerate(transformers_of(pipe)) for name, m in t.named_modules() if hasattr(m, "processor")}


def _video_attention(pipe) -> set:
    return {(i, name) for i, t in enumerate(transformers_of(pipe)) for name, _ in t.named_modules() if model_spec(t).is_video_attention(name)}


def _hooked(pipe) -> bool:
    return any(getattr(t, "_diffusers_hook", None) is not None and t._diffusers_hook.get_hook("vidattn_context") is not None
               for t in transformers_of(pipe))


@pytest.mark.parametrize("case", CASES)
def test_every_method_runs_in_the_real_pipeline(case):
    build, per_step = CASES[case]
    pipe, call = build()
    pipe.set_progress_bar_config(disable=True)
    steps = call["num_inference_steps"]
    stock, stock_calls = _run(pipe, call)
    assert len(stock_calls) == steps * per_step and torch.isfinite(stock).all()
    first_step = [out for _, _, out in stock_calls[:per_step]]

    stock_types = _processor_types(pipe)
    assert vidattn.apply(pipe, "dense") is None and _processor_types(pipe) == stock_types, "dense is the stock processors"

    # At full density vidattn equals the stock pipeline to float rounding: its own dense path (adapter + all-tiles
    # kernel), and each method with its sparsity switched off (radial: tests/test_families.py, on 2 latent frames)
    context = install_processors(pipe, lambda index, family, context: DenseAttnProcessor(context=context, **SMALL))
    grids = set()
    handle = transformers_of(pipe)[0].register_forward_hook(lambda module, args, out: grids.add(context.layout.grid))
    dense, _ = _run(pipe, call)  # (the pipeline resets the context's hooks when it ends: read the grid during the run)
    handle.remove()
    remove_processors(pipe)
    (width,) = {grid[2] for grid in grids}
    assert (dense - stock).abs().max() <= 2e-6 * stock.abs().max(), f"{case} dense: {(dense - stock).abs().max():.2e}"
    for method, fields in _full_density(width).items():
        vidattn.apply(pipe, method, **fields)
        full, _ = _run(pipe, call)
        remove_processors(pipe)
        assert (full - stock).abs().max() <= 2e-6 * stock.abs().max(), f"{case} {method} at full density: {(full - stock).abs().max():.2e}"

    expected_steps = [c // per_step for c in range(steps * per_step)]
    for method in SPARSE:
        assert method in METHODS
        context = vidattn.apply(pipe, method, dense_steps=1, **SPARSE[method])
        replaced = {key for key, kind in _processor_types(pipe).items() if kind is not stock_types[key]}
        assert replaced == _video_attention(pipe), f"{case} {method}: only video self-attention takes the method"
        out, calls = _run(pipe, call, context)
        assert torch.isfinite(out).all(), f"{case} {method}"
        assert [step for _, step, _ in calls] == expected_steps, f"{case} {method}: the context counts pipeline steps"
        assert [i for i, _, _ in calls] == [i for i, _, _ in stock_calls], "the same transformer serves each call"
        assert all(torch.equal(got, want) for (_, _, got), want in zip(calls, first_step)), f"{case} {method}: warm-up step is stock"
        assert (out - stock).abs().max() > 1e-6, f"{case} {method}: the sparse step should change the output"
        remove_processors(pipe)
        assert _processor_types(pipe) == stock_types and not _hooked(pipe), f"{case} {method}: not removed"
    assert torch.equal(_run(pipe, call)[0], stock), f"{case}: after remove_processors the pipeline runs stock, bitwise"
    assert set(SPARSE) | {"dense"} == set(METHODS), "a newly registered method needs a sparse setting here"


def test_wan22_a14b_both_experts_share_one_context():
    pipe, call = tiny.wan22_a14b()
    pipe.set_progress_bar_config(disable=True)
    context = vidattn.apply(pipe, "radial", dense_steps=1, **SPARSE["radial"])
    _, calls = _run(pipe, call, context)
    # the boundary falls between the two steps: step 0 on the high-noise expert, step 1 on the low-noise one
    assert [(i, step) for i, step, _ in calls] == [(0, 0), (0, 0), (1, 1), (1, 1)]
    for transformer in transformers_of(pipe):
        processors = [m.processor for n, m in transformer.named_modules() if n.endswith("attn1")]
        assert processors and all(p.context is context for p in processors)


def _skyreels_rows(**call):
    """Per transformer call of SkyReels-V2 diffusion forcing: (pipeline step index within the segment, context step)."""
    pipe, base = tiny.skyreels_v2()
    pipe.set_progress_bar_config(disable=True)
    context = vidattn.apply(pipe, "radial", dense_steps=1, **SPARSE["radial"])
    row, seen = [0], []
    pipe.transformer.register_forward_hook(lambda module, args, out: seen.append((row[0], context.step)))

    def next_row(pipe, i, t, tensors):
        row[0] = i + 1
        return {}

    with torch.no_grad():
        pipe(**{**base, **call}, callback_on_step_end=next_row, generator=torch.Generator().manual_seed(0))
    return seen


def test_skyreels_synchronous_diffusion_forcing_warm_up_counts_pipeline_steps():
    # Synchronous mode (ar_step=0): every frame shares the step's timestep, so the context step is the pipeline's step
    # index, for both CFG calls of a step.
    seen = _skyreels_rows()
    assert seen == [(0, 0), (0, 0), (1, 1), (1, 1)]
    # A long video runs segment after segment, each from full noise: the step index restarts with each segment, and
    # so does the warm-up (the largest timestep rises back to the top).
    long = _skyreels_rows(num_frames=33, base_num_frames=17, overlap_history=9)
    assert [step for _, step in long] == [0, 0, 1, 1] * 3


def test_skyreels_asynchronous_diffusion_forcing_warm_up_counts_pipeline_steps():
    seen = _skyreels_rows(ar_step=1, causal_block_size=1)
    rows = [row for row, _ in seen]
    assert rows == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5], "the staggered schedule has F + 1 rows"
    assert [step for _, step in seen] == rows


def test_skyreels_causal_diffusion_forcing_through_the_pipeline_is_refused():
    pipe, call = tiny.skyreels_v2()
    pipe.set_progress_bar_config(disable=True)
    vidattn.apply(pipe, "radial", **SPARSE["radial"])
    with pytest.raises(ValueError, match="causal_block_size=1"), torch.no_grad():
        pipe(**call, ar_step=1, causal_block_size=5)  # the pipeline sets a block-causal self-attention mask
