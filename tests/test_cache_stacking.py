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
