"""The method contract: a method registered in this file only runs through every entry point (drop-in, apply,
bench, eval, LoRA training) without any other file knowing it; plus the contract's shared rules."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from gray_clips import gray_video
from tiny_models import tiny_wan, wan_inputs

import vidattn
from vidattn.kernels import block_sparse_attention
from vidattn.layout import VideoLayout
from vidattn.patterns.plan import BlockPlan
from vidattn.processors import (
    METHODS,
    MethodAttnProcessor,
    MethodConfig,
    PlanCache,
    VideoAttnProcessor,
    apply,
    apply_method,
    install_processors,
    make_processor,
    remove_processors,
)
from vidattn.processors.registry import Method, register_method, unregister_method


# --- the toy method: each video query sees the key frames at most `radius` frames away ----------------------------
def frame_band_plan(layout: VideoLayout, radius: int, block_size: int, device) -> BlockPlan:
    """Pattern: video tokens attend within ``radius`` frames; text rows and columns are dense."""
    n, start, per_frame = layout.total_tokens, layout.video_start, layout.tokens_per_frame
    blocks = -(-n // block_size)

    def frame_of(idx):  # -1 for text
        video = (idx >= start) & (idx < start + layout.video_tokens)
        return torch.where(video, (idx - start) // per_frame, torch.full_like(idx, -1))

    def token_mask(b, h, q_idx, kv_idx):
        fq, fk = frame_of(q_idx), frame_of(kv_idx)
        return (fq < 0) | (fk < 0) | ((fq - fk).abs() <= radius)

    idx = torch.arange(blocks * block_size, device=device)
    allowed = token_mask(None, None, idx.view(-1, 1), idx.view(1, -1)) & (idx.view(1, -1) < n)
    tiles = allowed.view(blocks, block_size, blocks, block_size).any(3).any(1).view(1, 1, blocks, blocks)
    return BlockPlan(tiles, block_size, n, token_mask=token_mask)


@dataclass(frozen=True)
class ToyConfig(MethodConfig):
    radius: int = 1
    block_size: int = 16

    def __post_init__(self) -> None:
        super().__post_init__()
        vidattn.checks.check_int("radius", self.radius, 0)


class ToyAttnProcessor(MethodAttnProcessor):
    config_class = ToyConfig

    def plan(self, query, key, layout, family):
        c = self.config
        return self.cached_plan(("toy", layout, c.radius, c.block_size, str(query.device)), lambda: frame_band_plan(layout, c.radius, c.block_size, query.device))

    def attend(self, query, key, value, layout, key_valid, family):
        return block_sparse_attention(query, key, value, self.plan(query, key, layout, family), key_valid, backend=self.config.backend)


class BandReference(VideoAttnProcessor):
    """Independent reference: SDPA with the explicit frame-band mask built by a loop over frames."""

    def __init__(self, radius: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.radius = radius

    def attend(self, query, key, value, layout, key_valid, family):
        mask = torch.ones(layout.total_tokens, layout.total_tokens, dtype=torch.bool)
        s, start = layout.tokens_per_frame, layout.video_start
        for i in range(layout.frames):
            for j in range(layout.frames):
                if abs(i - j) > self.radius:
                    mask[start + i * s : start + (i + 1) * s, start + j * s : start + (j + 1) * s] = False
        return F.scaled_dot_product_attention(query, key, value, attn_mask=mask)


TOY = Method("toy", ToyAttnProcessor, "frame band (test only)", tiny_grid={"block_size": 32}, generate={"radius": 1})


@pytest.fixture
def toy():
    register_method(TOY)
    try:
        yield TOY
    finally:
        unregister_method("toy")


def _forward(model, inputs):
    with torch.no_grad():
        return model(**inputs)[0]


# --- the toy method through every entry point -----------------------------------------------------------------------
def test_toy_drop_in_and_apply_match_the_reference(toy):
    model, inputs = tiny_wan(), wan_inputs(frames=4)
    install_processors(model, lambda i, fam, ctx: BandReference(1, context=ctx))
    reference = _forward(model, inputs)
    remove_processors(model)
    dense = _forward(model, inputs)

    model.set_attn_processor(ToyAttnProcessor(radius=1, backend="dense"))  # the grid is read off Wan's RoPE
    drop_in = _forward(model, inputs)
    torch.testing.assert_close(drop_in, reference, atol=1e-5, rtol=1e-5)
    assert (drop_in - dense).abs().max() > 1e-3  # the band really prunes

    apply_method(model, "toy", radius=1, backend="gather")
    torch.testing.assert_close(_forward(model, inputs), reference, atol=1e-5, rtol=1e-5)
    apply(model, ToyConfig(radius=10), backend="dense")  # a band wider than the video is dense attention
    torch.testing.assert_close(_forward(model, inputs), dense, atol=1e-5, rtol=1e-5)
    apply_method(model, "dense")
    assert all(type(m.processor).__name__ == "WanAttnProcessor" for n, m in model.named_modules() if n.endswith("attn1"))


def test_toy_through_bench_and_make_processor(toy, capsys):
    from vidattn.cli.main import main

    proc = make_processor("toy", radius=0)
    assert isinstance(proc, ToyAttnProcessor) and proc.config == ToyConfig(radius=0)
    main(["bench", "--method", "toy", "--grid", "4x4x4", "--heads", "1", "--head-dim", "16", "--repeats", "1",
          "--device", "cpu", "--backends", "dense", "--param", "radius=0"])
    row = [line for line in capsys.readouterr().out.splitlines() if line.startswith("toy")]
    assert len(row) == 1
    density = float(row[0].split()[-1])
    assert density == pytest.approx(0.25)  # 4 frames, radius 0: a quarter of the query-key pairs (64 tokens, 1 tile)


def test_toy_through_eval(toy):
    from vidattn.evaluation import evaluate

    report = evaluate(methods=["toy"], num_prompts=1, frames=5, steps=1, out=None, method_args={"toy": {"backend": "dense"}})
    assert [r.method for r in report.results] == ["dense", "toy"]
    assert report.results[1].config == {"block_size": 32, "backend": "dense"}


def test_toy_through_lora_training(toy, tmp_path):
    from vidattn.pipelines.default_model import build_default_pipeline
    from vidattn.training.cache import prepare_data
    from vidattn.training.config import TrainConfig
    from vidattn.training.train_lora import train

    model = tmp_path / "model"
    build_default_pipeline().save_pretrained(str(model))
    clips = tmp_path / "clips"
    clips.mkdir()
    gray_video(clips / "a.mp4", 9, 64, 64, first=0, step=20)
    (tmp_path / "captions.jsonl").write_text(json.dumps({"video": "a.mp4", "caption": "a red circle moving left"}))
    prepare_data(clips, tmp_path / "captions.jsonl", str(model), tmp_path / "cache", num_frames=9, height=64, width=64, buckets=[(64, 64)], max_sequence_length=8)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = train(TrainConfig.from_dict(dict(
            model=str(model), data=str(tmp_path / "cache"), output_dir=str(tmp_path / "run"), lora_rank=4, max_train_steps=2,
            checkpointing_steps=10, progress_bar=False, method="toy", method_args={"radius": 0, "block_size": 16, "backend": "gather"},
            dense_layers=1,
        )))
    finally:
        torch.set_num_threads(threads)
    procs = [blk.attn1.processor for blk in result.transformer.blocks]
    assert all(isinstance(p, ToyAttnProcessor) and p.config.dense_layers == 1 for p in procs)
    assert len(result.losses) == 2 and all(np.isfinite(loss) for _, loss in result.losses)


# --- contract rules every built-in method follows ------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_config_has_the_contract_fields_and_exports(name):
    entry = METHODS[name]
    assert issubclass(entry.config, MethodConfig)
    fields = {f.name: f for f in dataclasses.fields(entry.config)}
    for shared in ("dense_steps", "dense_layers", "backend", "family"):
        assert shared in fields and fields[shared].kw_only
    assert entry.config().backend in entry.config.backends
    for bad in ({"dense_steps": -1}, {"dense_layers": True}, {"backend": "cuda"}, {"family": "flux"}):
        with pytest.raises(ValueError, match=f"{next(iter(bad))} must be"):
            entry.config(**bad)
    assert entry.processor.__name__ in vidattn.__all__ and entry.config.__name__ in vidattn.__all__


@pytest.mark.parametrize("name", sorted(METHODS))
def test_density_is_the_share_of_dense_flops(name):
    """One unit for every method: FLOPs spent over dense attention's FLOPs on the real tokens."""
    layout = VideoLayout(4, 8, 8)
    proc = make_processor(name, **{**METHODS[name].tiny_grid, **({"w_reduce": 8} if name == "monarch" else {})})
    q = torch.randn(1, 2, layout.total_tokens, 16)
    plan = proc.plan(q, q, layout, "wan")
    density = proc.density(q, q, layout, "wan")
    assert density == pytest.approx(plan.density)
    block = getattr(plan, "plan", plan)
    if isinstance(block, BlockPlan):  # tiles x block^2 over tokens^2
        tokens = layout.total_tokens
        assert density == pytest.approx(block.tiles.float().mean().item() * (block.num_blocks * block.block_size) ** 2 / tokens**2)
    if name == "dense":
        assert density == pytest.approx(1.0)  # 256 tokens in 32-token tiles: no padding


def test_explicit_layout_that_disagrees_with_the_model_is_an_error():
    model, inputs = tiny_wan(), wan_inputs(frames=4, width=8)  # latent grid 4 x 4 x 4 after patchify
    model.set_attn_processor(make_processor("radial", block_size=16, layout=VideoLayout(2, 4, 8)))  # same 64 tokens
    with pytest.raises(ValueError, match="disagrees with the grid"):
        _forward(model, inputs)
    apply_method(model, "radial", block_size=16)
    for _, module in model.named_modules():
        if isinstance(getattr(module, "processor", None), MethodAttnProcessor):
            module.processor.layout = VideoLayout(2, 4, 8)
    with pytest.raises(ValueError, match="disagrees with the transformer's latent grid"):
        _forward(model, inputs)


def test_plan_cache_is_bounded_lru():
    cache = PlanCache(max_entries=2)
    built = []
    for key in ("a", "b", "a", "c", "b"):
        cache.get((key,), lambda key=key: built.append(key) or key)
    assert built == ["a", "b", "c", "b"] and len(cache) == 2  # "b" was evicted by "c" ("a" was used more recently)


def test_registry_refuses_bad_entries(toy):
    with pytest.raises(ValueError, match="already registered"):
        register_method(TOY)
    with pytest.raises(ValueError, match="not a field of ToyConfig"):
        Method("toy2", ToyAttnProcessor, "x", tiny_grid={"decay": 1})
    with pytest.raises(ValueError, match="method must be one of"):
        apply_method(torch.nn.Linear(2, 2), "nope")


# --- one call per pipeline: Wan 2.2 A14B's two experts share one step context --------------------------------------
def test_pipeline_install_covers_both_experts_and_counts_pipeline_steps():
    import copy

    from diffusers import WanPipeline

    from vidattn.pipelines.default_model import build_default_pipeline
    from vidattn.processors import RadialAttnProcessor, RadialConfig, apply_radial_attention

    base = build_default_pipeline()
    pipe = WanPipeline(base.tokenizer, base.text_encoder, base.vae, base.scheduler, transformer=base.transformer,
                       transformer_2=copy.deepcopy(base.transformer), boundary_ratio=0.5)
    pipe.set_progress_bar_config(disable=True)
    context = apply_radial_attention(pipe, RadialConfig(decay=0.5, block_size=16, dense_steps=2, backend="dense"))
    seen: dict[str, set[int]] = {"transformer": set(), "transformer_2": set()}
    for name in seen:
        procs = [m.processor for n, m in getattr(pipe, name).named_modules() if n.endswith("attn1")]
        assert procs and all(isinstance(p, RadialAttnProcessor) and p.context is context for p in procs)
        for p in procs:
            def record(*args, _attend=p.attend, _name=name, **kwargs):
                seen[_name].add(context.step)
                return _attend(*args, **kwargs)
            p.attend = record
    steps = 6
    pipe("a red circle moving right", num_frames=5, height=32, width=32, num_inference_steps=steps, guidance_scale=1.0,
         max_sequence_length=16, output_type="latent", generator=torch.Generator().manual_seed(0))
    # One count over both experts (a restart at the switch would make the second expert's first steps dense).
    assert seen["transformer"] and seen["transformer_2"] and not (seen["transformer"] & seen["transformer_2"])
    assert seen["transformer"] | seen["transformer_2"] == set(range(2, steps))  # steps 0-1 dense, in whichever expert
    remove_processors(pipe)
    for name in seen:
        assert all(type(m.processor).__name__ == "WanAttnProcessor" for n, m in getattr(pipe, name).named_modules() if n.endswith("attn1"))
        assert getattr(pipe, name)._diffusers_hook.get_hook("vidattn_context") is None
