"""vidattn methods stacked with diffusers' step caches: either install order gives the same run, both act, removal is clean."""

import pytest
import torch
from diffusers.hooks import (
    FasterCacheConfig,
    FirstBlockCacheConfig,
    MagCacheConfig,
    PyramidAttentionBroadcastConfig,
    SeaCacheConfig,
    TaylorSeerCacheConfig,
)
from tiny_models import tiny_wan, wan_inputs

from vidattn.processors import DenseAttnProcessor, apply_method, install_processors, remove_processors
from vidattn.processors.registry import METHODS

pytestmark = pytest.mark.usefixtures("one_thread")

TIMESTEPS = [900, 800, 700, 600]
SPARSE = {
    "radial": dict(decay=0.5, block_size=8, backend="gather"),
    "vmoba": dict(threshold=0.2, temporal_chunk=2, spatial_chunk=(2, 2), st_chunk=(2, 2, 3), block_size=8, backend="gather"),
    "monarch": dict(h_reduce=2),
    "window": dict(window=(1, 1, 1), block_size=8, backend="gather"),
}
_now = {"t": TIMESTEPS[0]}
# Settings that make each cache skip work on this 4-step run (thresholds far above any residual change).
CACHES = {
    "first_block": lambda: FirstBlockCacheConfig(threshold=1e9),
    "taylorseer": lambda: TaylorSeerCacheConfig(
        cache_interval=2, disable_cache_before_step=2, taylor_factors_dtype=torch.float32, cache_identifiers=[r"blocks\.\d+\.attn1"]
    ),
    "mag": lambda: MagCacheConfig(threshold=1e9, max_skip_steps=2, retention_ratio=0.0, num_inference_steps=4, mag_ratios=[1.0] * 4),
    "pyramid_attention_broadcast": lambda: PyramidAttentionBroadcastConfig(
        spatial_attention_block_skip_range=2, spatial_attention_timestep_skip_range=(0, 1000), current_timestep_callback=lambda: _now["t"]
    ),
    # The batch of 2 plays [unconditional, conditional]: FasterCache skips the unconditional half on odd steps (approximating
    # it in frequency space) and the self-attention on odd steps (extrapolating the last two outputs).
    "faster": lambda: FasterCacheConfig(
        spatial_attention_block_skip_range=2, spatial_attention_timestep_skip_range=(-1, 1000), unconditional_batch_skip_range=2,
        unconditional_batch_timestep_skip_range=(-1, 1000), low_frequency_weight_update_timestep_range=(-1, 1000),
        high_frequency_weight_update_timestep_range=(-1, 1000), attention_weight_callback=lambda module: 0.5,
        current_timestep_callback=lambda: _now["t"], tensor_format="BCFHW",
    ),
    # Wan T2V has SeaCache's built-in adapter; it needs the step index, sigma and step count in the cache context.
    "sea": lambda: SeaCacheConfig(threshold=1e9, retention_steps=1, cache_end_steps=1, max_consecutive_cached=2),
}


def _denoise(model) -> list[torch.Tensor]:
    """Four steps as a pipeline calls the transformer (inside a cache context)."""
    outputs = []
    for i, t in enumerate(TIMESTEPS):
        _now["t"] = t
        with torch.no_grad(), model.cache_context("cond", step_index=i, sigma=t / 1000, num_inference_steps=len(TIMESTEPS)):
            outputs.append(model(**{**wan_inputs(frames=5), "timestep": torch.tensor([t, t])})[0])
    return outputs


def _install(model, method: str) -> None:
    if method == "dense":
        install_processors(model, lambda index, family, context: DenseAttnProcessor(block_size=8, backend="gather", context=context))
    else:
        apply_method(model, method, **SPARSE[method])


def _differs(a: list, b: list) -> bool:
    return max((x - y).abs().max().item() for x, y in zip(a, b)) > 1e-6


@pytest.mark.parametrize("cache", CACHES)
def test_methods_stack_with_the_cache_in_either_order(cache):
    stock = _denoise(tiny_wan())
    cache_only = tiny_wan()
    cache_only.enable_cache(CACHES[cache]())
    cache_only = _denoise(cache_only)
    assert _differs(cache_only, stock), f"{cache} should skip work on this run"
    for method in METHODS:
        alone = tiny_wan()
        _install(alone, method)
        alone = _denoise(alone)
        first, second = tiny_wan(), tiny_wan()
        _install(first, method)
        first.enable_cache(CACHES[cache]())
        second.enable_cache(CACHES[cache]())
        _install(second, method)
        stacked = _denoise(first)
        assert all(torch.equal(x, y) for x, y in zip(stacked, _denoise(second))), f"{cache} + {method}: install order matters"
        assert torch.equal(stacked[0], alone[0]), "step 0 is computed in full, by the method's processors"
        assert _differs(stacked, alone), f"{cache} skipped nothing on top of {method}"
        if method != "dense":
            assert _differs(stacked, cache_only), f"{method} under {cache} ran no sparse attention"
        remove_processors(first)
        first.disable_cache()
        second.disable_cache()
        remove_processors(second)
        for model in (first, second):
            assert all(torch.equal(x, y) for x, y in zip(_denoise(model), stock)), f"{cache} + {method} not removed cleanly"


def test_dense_warm_up_counts_steps_the_cache_skips():
    stock_cache = tiny_wan()
    stock_cache.enable_cache(CACHES["first_block"]())
    expected = _denoise(stock_cache)
    model = tiny_wan()
    context = apply_method(model, "radial", dense_steps=2, **SPARSE["radial"])
    model.enable_cache(CACHES["first_block"]())
    got = _denoise(model)
    assert context.step == 3, "the step hook sees every call, skipped blocks or not"
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1]), "warm-up steps run the stock processors"


# --- every family (transformer level): which diffusers caches apply, and where one does, it stacks with a method ---
FAMILY_CASES = ("wan-i2v", "wan-ti2v", "wan-vace", "skyreels-v2", "hunyuan", "hunyuan15-i2v", "cogvideox-5b", "cosmos", "ltx2")
NO_CACHE_MIXIN = "no CacheMixin"
UNREGISTERED = "not registered"  # diffusers' TransformerBlockRegistry has no entry for the block class (FBC, MagCache, SeaCache)
# (case, cache) -> why the cache cannot act on that model in diffusers 0.42.1, with or without vidattn:
#   an error message the cache alone raises, or None: it runs but skips nothing (SeaCache without a raw-vision adapter).
NOT_APPLICABLE = {
    **{(case, cache): UNREGISTERED for case in ("skyreels-v2", "hunyuan15-i2v", "ltx2") for cache in ("first_block", "mag", "sea")},
    **{(case, "sea"): None for case in ("wan-i2v", "wan-vace", "hunyuan", "cogvideox-5b")},
    ("ltx2", "faster"): "number of dimensions",  # packed (B, N, C) latents: FasterCache's frequency split needs frames x H x W
    # CosmosTransformer3DModel is no CacheMixin: no enable_cache / cache_context, which these caches' state needs; only
    # PAB (context-free) applies, through apply_pyramid_attention_broadcast
    **{("cosmos", cache): NO_CACHE_MIXIN for cache in ("first_block", "taylorseer", "mag", "faster", "sea")},
}


def _family(case: str):
    from test_families import CASES as FAMILIES

    build, make_inputs = FAMILIES[case]
    return build, make_inputs(frames=5)


def _family_config(cache: str, model, inputs: dict):
    """The cache's test config, pointed at the family's video attention (TaylorSeer, FasterCache) and CFG inputs."""
    from vidattn.models import model_spec

    spec, config = model_spec(model), CACHES[cache]()
    if cache == "taylorseer":
        config.cache_identifiers = list(spec.video_attention)
    if cache == "faster":  # the batch of 2 is [unconditional, conditional]: every batched input must be split
        config._unconditional_conditional_input_kwargs_identifiers = [k for k, v in inputs.items() if torch.is_tensor(v) and v.ndim and len(v) == 2]
        config.tensor_format = "BFCHW" if spec.frames_first else "BCFHW"
        config.spatial_attention_block_identifiers = spec.video_attention
    return config


def _family_denoise(model, inputs: dict) -> list[torch.Tensor]:
    outputs = []
    for i, t in enumerate(TIMESTEPS):
        _now["t"] = t
        timestep = inputs["timestep"]  # 500-based (Cosmos: 0.5), per sample, frame or token: scaled to this step
        step = {**inputs, "timestep": (timestep * t / 500).to(timestep.dtype) if timestep.is_floating_point() else timestep * t // 500}
        with torch.no_grad():
            if hasattr(model, "cache_context"):
                with model.cache_context("cond", step_index=i, sigma=t / 1000, num_inference_steps=len(TIMESTEPS)):
                    outputs.append(model(**step)[0])
            else:
                outputs.append(model(**step)[0])
    return outputs


def _enable(model, cache: str, inputs: dict) -> None:
    if hasattr(model, "enable_cache"):
        model.enable_cache(_family_config(cache, model, inputs))
    else:  # Cosmos: the hook applied directly
        from diffusers.hooks import apply_pyramid_attention_broadcast

        apply_pyramid_attention_broadcast(model, _family_config(cache, model, inputs))


def _disable(model) -> None:
    if hasattr(model, "disable_cache"):
        model.disable_cache()
    else:
        from diffusers.hooks import HookRegistry

        HookRegistry.check_if_exists_or_initialize(model).remove_hook("pyramid_attention_broadcast", recurse=True)


@pytest.mark.parametrize("cache", CACHES)
@pytest.mark.parametrize("case", FAMILY_CASES)
def test_each_family_stacks_with_every_cache_that_applies_to_it(case, cache):
    build, inputs = _family(case)
    stock = _family_denoise(build(), inputs)
    if (case, cache) in NOT_APPLICABLE:
        reason, model = NOT_APPLICABLE[(case, cache)], build()
        if reason is NO_CACHE_MIXIN:
            assert not hasattr(model, "enable_cache") and not hasattr(model, "cache_context")
        elif reason is None:  # runs fail-open: the stock outputs, nothing skipped
            _enable(model, cache, inputs)
            assert all(torch.equal(x, y) for x, y in zip(_family_denoise(model, inputs), stock))
        else:  # the limitation is diffusers', without any vidattn processor installed
            with pytest.raises((ValueError, RuntimeError, AttributeError), match=reason):
                _enable(model, cache, inputs)
                _family_denoise(model, inputs)
        return
    cache_only = build()
    _enable(cache_only, cache, inputs)
    cache_only = _family_denoise(cache_only, inputs)
    assert _differs(cache_only, stock), f"{case}: {cache} should skip work on this run"
    first, second = build(), build()
    apply_method(first, "radial", **SPARSE["radial"])
    _enable(first, cache, inputs)
    _enable(second, cache, inputs)
    apply_method(second, "radial", **SPARSE["radial"])
    stacked = _family_denoise(first, inputs)
    assert all(torch.equal(x, y) for x, y in zip(stacked, _family_denoise(second, inputs))), f"{case} {cache}: install order matters"
    assert _differs(stacked, cache_only), f"{case}: radial under {cache} ran no sparse attention"
    remove_processors(first)
    _disable(first)
    _disable(second)
    remove_processors(second)
    for model in (first, second):
        assert all(torch.equal(x, y) for x, y in zip(_family_denoise(model, inputs), stock)), f"{case} {cache}: not removed cleanly"
