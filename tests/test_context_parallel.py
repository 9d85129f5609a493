"""Every method under diffusers' Ulysses context parallelism (2 gloo processes) equals its single-process output.

The jobs below run inside both workers (see cp_harness.py); each computes its single-process reference in the
same worker before enabling parallelism and returns max |CP - reference| per case from rank 0.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.distributed as dist
from cp_harness import run_on_two_processes, ulysses_mesh
from tiny_models import cogvideox_inputs, hunyuan_inputs, tiny_cogvideox, tiny_hunyuan

from vidattn import VideoLayout
from vidattn.processors import (
    DenseAttnProcessor,
    MonarchAttnProcessor,
    MonarchConfig,
    RadialAttnProcessor,
    RadialConfig,
    VMoBAAttnProcessor,
    VMoBAConfig,
    WindowAttnProcessor,
    WindowConfig,
    apply_monarch_attention,
    apply_radial_attention,
    apply_vmoba_attention,
    apply_window_attention,
    remove_processors,
    video_attention_layers,
)
from vidattn.processors.parallel import share_parallel_config, vidattn_cp_plan

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="torch.distributed with gloo is unavailable")

TOL = 1e-5
WAN_LAYOUT = VideoLayout(4, 4, 4)  # latent (B, 4, 4, 8, 8) with patch (1, 2, 2): 64 tokens, 32 per rank
VMOBA = dict(temporal_chunk=2, spatial_chunk=(2, 2), st_chunk=(2, 2, 3), block_size=8, backend="gather", threshold=0.2)

# name -> (drop-in processor factory(layout), apply_* installer, its config); every config is sparse on the grid.
METHODS = {
    "dense": (lambda layout: DenseAttnProcessor(block_size=8, backend="gather", layout=layout), None, None),
    "radial": (
        lambda layout: RadialAttnProcessor(decay=0.5, block_size=8, backend="gather", layout=layout),
        apply_radial_attention,
        RadialConfig(decay=0.5, block_size=8, backend="gather", dense_layers=1),
    ),
    "vmoba": (lambda layout: VMoBAAttnProcessor(layout=layout, **VMOBA), apply_vmoba_attention, VMoBAConfig(**VMOBA)),
    "window": (
        lambda layout: WindowAttnProcessor(window=(1, 1, 1), block_size=8, backend="gather", layout=layout),
        apply_window_attention,
        WindowConfig(window=(1, 1, 1), block_size=8, backend="gather"),
    ),
    "monarch": (lambda layout: MonarchAttnProcessor(h_reduce=2, layout=layout), apply_monarch_attention, MonarchConfig(h_reduce=2)),
}


def tiny_wan_cp(heads: int = 4):
    """The spec's tiny Wan (4 heads of 16) with a fixed seed."""
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    return WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=heads, attention_head_dim=16, in_channels=4, out_channels=4,
        text_dim=16, freq_dim=16, ffn_dim=32, num_layers=2, rope_max_seq_len=32,
    ).eval()


def wan_cp_inputs(batch: int = 2) -> dict:
    g = torch.Generator().manual_seed(1)
    return dict(
        hidden_states=torch.randn(batch, 4, 4, 8, 8, generator=g),
        timestep=torch.tensor([500] * batch),
        encoder_hidden_states=torch.randn(batch, 8, 16, generator=g),
        return_dict=False,
    )


def forward(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs)[0]


def enable(model, mesh, cp_plan=None, **config) -> None:
    from diffusers import ContextParallelConfig

    model.enable_parallelism(config=ContextParallelConfig(mesh=mesh, **{"ulysses_degree": 2, **config}), cp_plan=cp_plan)


def install(model, method: str, kind: str, layout) -> None:
    make, apply, config = METHODS[method]
    if kind == "drop-in":
        model.set_attn_processor(make(layout))
    else:
        apply(model, config)


class SeenShapes(RadialAttnProcessor):
    """Radial that records the (B, H, N, D) its kernel sees."""

    seen: list = []

    def attend(self, query, key, value, layout, key_valid, family):
        self.seen.append(tuple(query.shape))
        return super().attend(query, key, value, layout, key_valid, family)


# -- jobs (run in both workers) -----------------------------------------------------------------------------------
def job_wan_methods() -> dict:
    """max |CP - single process| for each method x (drop-in, apply_*) x (installed before, after enable_parallelism)."""
    mesh, base, inputs = ulysses_mesh(), tiny_wan_cp(), wan_cp_inputs()
    results = {}
    stock_ref = forward(copy.deepcopy(base), inputs)
    model = copy.deepcopy(base)
    enable(model, mesh)
    results["stock"] = (forward(model, inputs) - stock_ref).abs().max().item()
    for method, (_, apply, _) in METHODS.items():
        for kind in ("drop-in", "apply") if apply else ("drop-in",):
            single = copy.deepcopy(base)
            install(single, method, kind, WAN_LAYOUT)
            ref = forward(single, inputs)
            results[f"{method}/{kind}/sparse"] = (ref - stock_ref).abs().max().item()
            for order in ("before", "after"):
                model = copy.deepcopy(base)
                if order == "before":
                    install(model, method, kind, WAN_LAYOUT)
                    enable(model, mesh)
                else:
                    enable(model, mesh)
                    install(model, method, kind, WAN_LAYOUT)
                    share_parallel_config(model)  # a raw set_attn_processor after enable_parallelism needs this
                results[f"{method}/{kind}/{order}"] = (forward(model, inputs) - ref).abs().max().item()
    # Wan 2.1 I2V: image tokens through attn2's added K/V (stock, exact on the query shard); radial on attn1
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    i2v = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=12, out_channels=4, text_dim=16,
        freq_dim=16, ffn_dim=32, num_layers=2, rope_max_seq_len=32, image_dim=16, added_kv_proj_dim=32,
    ).eval()
    g = torch.Generator().manual_seed(2)
    i2v_inputs = {**inputs, "hidden_states": torch.randn(2, 12, 4, 8, 8, generator=g), "encoder_hidden_states_image": torch.randn(2, 5, 16, generator=g)}
    single, model = copy.deepcopy(i2v), copy.deepcopy(i2v)
    for m in (single, model):
        apply_radial_attention(m, RadialConfig(decay=0.5, block_size=8, backend="gather"))
    ref = forward(single, i2v_inputs)
    enable(model, mesh)
    results["i2v radial/apply"] = (forward(model, i2v_inputs) - ref).abs().max().item()
    model = copy.deepcopy(base)
    model.set_attn_processor(SeenShapes(decay=0.5, block_size=8, backend="gather", layout=WAN_LAYOUT))
    enable(model, mesh)
    SeenShapes.seen.clear()
    forward(model, inputs)
    results["seen"] = sorted(set(SeenShapes.seen))
    return results


def _error(fn) -> str:
    try:
        fn()
    except ValueError as error:
        return str(error)
    return "no error"


def job_wan_pipeline_and_refusals() -> dict:
    """The tiny WanPipeline with radial under Ulysses vs one process, and the messages of what must be refused."""
    from vidattn.pipelines.default_model import build_default_pipeline

    ulysses, ring_mesh, inputs = ulysses_mesh(), ulysses_mesh(ring=2, ulysses=1), wan_cp_inputs()
    pipe = build_default_pipeline()
    pipe.set_progress_bar_config(disable=True)
    apply_radial_attention(pipe.transformer, RadialConfig(decay=0.5, block_size=8, backend="gather", dense_steps=1))

    def frames() -> torch.Tensor:  # 9 frames of 64x64 -> a 3x4x4 latent grid (48 tokens); CFG: 2 calls per step
        generator = torch.Generator().manual_seed(0)
        out = pipe("a red circle moving left", negative_prompt="blue", num_frames=9, height=64, width=64,
                   num_inference_steps=2, guidance_scale=3.0, generator=generator, output_type="pt")
        return out.frames

    reference = frames()
    enable(pipe.transformer, ulysses)
    results = {"pipeline": (frames() - reference).abs().max().item(), "pipeline_frames": tuple(reference.shape)}

    def ring():
        model = tiny_wan_cp()
        model.set_attn_processor(RadialAttnProcessor(decay=0.5, block_size=8, layout=WAN_LAYOUT))
        enable(model, ring_mesh, ulysses_degree=1, ring_degree=2)
        forward(model, inputs)

    def ring_apply_after():
        model = tiny_wan_cp()
        enable(model, ring_mesh, ulysses_degree=1, ring_degree=2)
        apply_radial_attention(model, RadialConfig(decay=0.5, block_size=8))

    def anything():
        model = tiny_wan_cp()
        apply_radial_attention(model, RadialConfig(decay=0.5, block_size=8))
        enable(model, ulysses, ulysses_anything=True)
        forward(model, inputs)

    def no_layout():
        model = tiny_wan_cp()
        model.set_attn_processor(RadialAttnProcessor(decay=0.5, block_size=8))
        enable(model, ulysses)
        forward(model, inputs)

    def odd_heads():
        model = tiny_wan_cp(heads=3)
        apply_radial_attention(model, RadialConfig(decay=0.5, block_size=8))
        enable(model, ulysses)
        forward(model, inputs)

    def streaming():
        from vidattn import StreamingAttnProcessor

        model = tiny_wan_cp()
        model.set_attn_processor(StreamingAttnProcessor(layout=WAN_LAYOUT))
        enable(model, ulysses)
        forward(model, inputs)

    cases = dict(ring=ring, ring_apply_after=ring_apply_after, anything=anything, no_layout=no_layout, odd_heads=odd_heads, streaming=streaming)
    results.update({name: _error(fn) for name, fn in cases.items()})
    return results


def job_freeswim() -> dict:
    """FreeSwim (stage 1 stock, stage 2 window + cross-attention override, CFG) under Ulysses vs one process."""
    from vidattn.pipelines.default_model import build_default_pipeline
    from vidattn.pipelines.freeswim import FreeSwimPipeline
    from vidattn.pipelines.cross_override import install_cross_override

    pipe = build_default_pipeline()
    pipe.set_progress_bar_config(disable=True)
    freeswim = FreeSwimPipeline.from_pipe(pipe, base_size=(32, 32), backend="gather")  # window (all frames, 1, 1)

    def frames() -> torch.Tensor:  # stage 1: 2x2x2 latent tokens, stage 2: 2x4x4
        return freeswim("a red circle moving left", height=64, width=64, num_frames=5, num_inference_steps=4, strength=0.75,
                        base_num_inference_steps=2, cache_steps=2, max_sequence_length=16, generator=torch.Generator().manual_seed(0),
                        output_type="pt").frames

    reference = frames()
    enable(pipe.transformer, ulysses_mesh())
    results = {"freeswim": (frames() - reference).abs().max().item(), "stats": freeswim.last_stats}
    results["foreign window"] = _error(lambda: install_cross_override(pipe.transformer, lambda *args, **kwargs: None))
    return results


def _drop_in(model, processor) -> None:
    for _, module, _ in video_attention_layers(model):
        module.set_processor(processor)


def _joint_cases(build, inputs, layout) -> dict:
    """Dense, radial (drop-in with layout=) and radial via apply_* (with a dense layer) under Ulysses with vidattn_cp_plan."""
    mesh, base, results = ulysses_mesh(), build(), {}
    cases = {
        # drop-in on the video attention layers only: HunyuanVideo's text refiner is a plain Attention (refused)
        "dense": lambda m: _drop_in(m, DenseAttnProcessor(block_size=8, backend="gather", layout=layout)),
        "radial/drop-in": lambda m: _drop_in(m, RadialAttnProcessor(decay=0.5, block_size=8, backend="gather", layout=layout)),
        "radial/apply": lambda m: apply_radial_attention(m, RadialConfig(decay=0.5, block_size=8, backend="gather", dense_layers=1)),
        "vmoba/apply": lambda m: apply_vmoba_attention(m, VMoBAConfig(**VMOBA)),
        "window/apply": lambda m: apply_window_attention(m, WindowConfig(window=(1, 1, 1), block_size=8, backend="gather")),
        "monarch/apply": lambda m: apply_monarch_attention(m, MonarchConfig(h_reduce=2)),
    }
    stock_ref = forward(copy.deepcopy(base), inputs)
    for name, setup in cases.items():
        single = copy.deepcopy(base)
        setup(single)
        ref = forward(single, inputs)
        results[f"{name}/sparse"] = (ref - stock_ref).abs().max().item()
        model = copy.deepcopy(base)
        setup(model)
        enable(model, mesh, cp_plan=vidattn_cp_plan(model))
        results[name] = (forward(model, inputs) - ref).abs().max().item()
    return results


def job_hunyuan() -> dict:
    # 4 frames x 4 x 5 tokens = 80 video tokens (40 per rank); 6 text tokens, the second prompt padded
    results = _joint_cases(tiny_hunyuan, hunyuan_inputs(frames=4), VideoLayout(4, 4, 5))
    model = tiny_hunyuan()
    apply_radial_attention(model, RadialConfig(decay=0.5, block_size=8))
    enable(model, ulysses_mesh(), cp_plan=vidattn_cp_plan(model))
    results["stock restored"] = _error(lambda: remove_processors(model))
    return results


def job_cogvideox() -> dict:
    # CogVideoX-5b style (RoPE): 4 frames x 4 x 5 = 80 video tokens after 7 text tokens
    results = _joint_cases(lambda: tiny_cogvideox(True), cogvideox_inputs(True, frames=4), VideoLayout(4, 4, 5))
    # CogVideoX-2b style (no RoPE): the plan's RoPE entry is skipped
    base, inputs = tiny_cogvideox(False), cogvideox_inputs(False, frames=4)
    single, model = copy.deepcopy(base), copy.deepcopy(base)
    for m in (single, model):
        apply_radial_attention(m, RadialConfig(decay=0.5, block_size=8, backend="gather"))
    ref = forward(single, inputs)
    enable(model, ulysses_mesh(), cp_plan=vidattn_cp_plan(model))
    results["2b radial/apply"] = (forward(model, inputs) - ref).abs().max().item()
    return results


# -- tests (run in the pytest process) ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def wan_results() -> dict:
    return run_on_two_processes("test_context_parallel", "job_wan_methods")


def test_stock_ulysses_equals_single_process(wan_results):
    assert wan_results["stock"] <= TOL


@pytest.mark.parametrize("method", METHODS)
def test_method_under_ulysses_equals_single_process(wan_results, method):
    kinds = ("drop-in", "apply") if METHODS[method][1] else ("drop-in",)
    for kind in kinds:
        for order in ("before", "after"):
            assert wan_results[f"{method}/{kind}/{order}"] <= TOL, (kind, order, wan_results)
        if method != "dense":
            assert wan_results[f"{method}/{kind}/sparse"] > 1e-4, f"{method} should differ from dense on this grid"


def test_wan_i2v_under_ulysses_equals_single_process(wan_results):
    assert wan_results["i2v radial/apply"] <= TOL


def test_kernel_sees_the_whole_sequence_with_half_the_heads(wan_results):
    assert wan_results["seen"] == [(2, 2, 64, 16)]


@pytest.fixture(scope="module")
def misc_results() -> dict:
    return run_on_two_processes("test_context_parallel", "job_wan_pipeline_and_refusals")


def test_wan_pipeline_with_radial_under_ulysses_writes_the_same_frames(misc_results):
    assert misc_results["pipeline_frames"] == (1, 9, 3, 64, 64)
    assert misc_results["pipeline"] <= TOL


def test_what_cannot_be_honoured_is_refused(misc_results):
    errors = misc_results
    assert "ring_degree=2" in errors["ring"] and "Ulysses" in errors["ring"]
    assert "ring_degree=2" in errors["ring_apply_after"]
    assert "ulysses_anything" in errors["anything"] and "Ulysses" in errors["anything"]
    assert "cannot be read off the RoPE" in errors["no_layout"]
    assert "must divide the number of attention heads (3)" in errors["odd_heads"]
    assert "does not support context parallelism" in errors["streaming"]


def test_freeswim_under_ulysses_equals_single_process():
    results = run_on_two_processes("test_context_parallel", "job_freeswim")
    assert results["freeswim"] <= TOL, results
    assert results["stats"]["window_passes"] > 0 and results["stats"]["injected_passes"] > 0
    assert "takes no context-parallel config" in results["foreign window"]


def job_joint_families() -> dict:
    return {"job_hunyuan": job_hunyuan(), "job_cogvideox": job_cogvideox()}


@pytest.fixture(scope="module")
def joint_results() -> dict:
    return run_on_two_processes("test_context_parallel", "job_joint_families")


@pytest.mark.parametrize("job", ["job_hunyuan", "job_cogvideox"])
def test_joint_text_families_under_ulysses(joint_results, job):
    results = joint_results[job]
    for name in ("dense", "radial/drop-in", "radial/apply", "vmoba/apply", "window/apply", "monarch/apply"):
        assert results[name] <= TOL, (name, results)
        if name != "dense":
            assert results[f"{name}/sparse"] > 1e-4, f"{name} should differ from dense on this grid"
    if job == "job_hunyuan":
        assert "stock HunyuanVideoAttnProcessor2_0 is not correct under context parallelism" in results["stock restored"]
    if job == "job_cogvideox":
        assert results["2b radial/apply"] <= TOL


def test_cp_plan_refuses_unknown_models():
    with pytest.raises(ValueError, match="no context-parallel plan"):
        vidattn_cp_plan(torch.nn.Linear(2, 2))


CLI_ARGS = ["generate", "--method", "radial", "--param", "backend=gather", "--steps", "2", "--frames", "9", "--guidance", "3", "--seed", "3"]


def job_cli(folder: str) -> list:
    """`vidattn generate --context-parallel ulysses=2` on both ranks into ``folder``; the files there afterwards."""
    import os

    from vidattn.cli.main import main

    main([*CLI_ARGS, "--context-parallel", "ulysses=2", "--out", os.path.join(folder, "cp.mp4")])
    dist.barrier()
    return sorted(os.listdir(folder))


def test_cli_generate_under_context_parallel_writes_one_video_from_rank_0(tmp_path):
    import imageio

    from vidattn.cli.main import main

    main([*CLI_ARGS, "--out", str(tmp_path / "single.mp4")])  # the one-process reference, in this process
    files = run_on_two_processes("test_context_parallel", "job_cli", str(tmp_path))
    assert files == ["cp.mp4", "single.mp4"]  # one video from the 2-process run: rank 1 writes nothing
    single, parallel = imageio.mimread(tmp_path / "single.mp4"), imageio.mimread(tmp_path / "cp.mp4")
    assert len(single) == len(parallel) == 9
    assert max(int(abs(a.astype(int) - b.astype(int)).max()) for a, b in zip(single, parallel)) <= 1


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--context-parallel", "ring=2"], "must be ulysses=N"),
        (["--context-parallel", "ulysses=1"], "must be ulysses=N"),
        (["--context-parallel", "ulysses=2", "--pipeline", "freeswim"], "supports --pipeline text2video only"),
        (["--context-parallel", "ulysses=2"], "runs under torchrun"),
    ],
)
def test_cli_context_parallel_bad_input(argv, message, monkeypatch, tmp_path):
    from vidattn.cli.main import main

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(SystemExit, match=message):
        main(["generate", "--out", str(tmp_path / "x.mp4"), *argv])
    assert not (tmp_path / "x.mp4").exists()


def test_a_sharded_rope_without_parallel_config_is_refused():
    """A processor set after enable_parallelism without share_parallel_config: ranks >= 1 see a RoPE not starting at 0."""
    model, inputs = tiny_wan_cp(), wan_cp_inputs()
    cos, sin = model.rope(inputs["hidden_states"])
    whole = RadialAttnProcessor(decay=0.5, block_size=8).resolve_layout("wan", (cos, sin), 64)
    assert whole == WAN_LAYOUT
    with pytest.raises(ValueError, match="does not start at position 0"):
        RadialAttnProcessor(decay=0.5, block_size=8).resolve_layout("wan", (cos[:, 32:], sin[:, 32:]), 32)
