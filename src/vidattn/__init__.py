"""vidattn: faster, longer, higher-resolution video generation for diffusers video models."""

from .context import AttentionContext, attach_context, detach_context
from .layout import VideoLayout
from .processors import (
    BroadWayConfig,
    CrossAttnOverride,
    HybridAttnProcessor,
    HybridConfig,
    MonarchAttnProcessor,
    MonarchConfig,
    RadialAttnProcessor,
    RadialConfig,
    VMoBAAttnProcessor,
    VMoBAConfig,
    WindowAttnProcessor,
    WindowConfig,
    apply_broadway,
    apply_hybrid_attention,
    apply_method,
    apply_monarch_attention,
    apply_radial_attention,
    apply_vmoba_attention,
    apply_window_attention,
    install_cross_override,
    remove_broadway,
    remove_cross_override,
    remove_hybrid_attention,
    remove_monarch_attention,
    remove_processors,
    remove_radial_attention,
    remove_vmoba_attention,
    remove_window_attention,
)

__all__ = [
    "AttentionContext",
    "BroadWayAnimateDiffPipeline",
    "BroadWayConfig",
    "CrossAttnOverride",
    "FreeSwimPipeline",
    "HybridAttnProcessor",
    "HybridConfig",
    "MonarchAttnProcessor",
    "MonarchConfig",
    "RadialAttnProcessor",
    "RadialConfig",
    "StreamingWanPipeline",
    "VMoBAAttnProcessor",
    "VMoBAConfig",
    "VideoLayout",
    "WindowAttnProcessor",
    "WindowConfig",
    "apply_broadway",
    "apply_hybrid_attention",
    "apply_method",
    "apply_monarch_attention",
    "apply_radial_attention",
    "apply_vmoba_attention",
    "apply_window_attention",
    "attach_context",
    "default_model_path",
    "detach_context",
    "install_cross_override",
    "load_default_pipeline",
    "remove_broadway",
    "remove_cross_override",
    "remove_hybrid_attention",
    "remove_monarch_attention",
    "remove_processors",
    "remove_radial_attention",
    "remove_vmoba_attention",
    "remove_window_attention",
    "run_broadway_generation",
    "stream_to_mp4",
]
__version__ = "0.1.0"

# Pipelines import diffusers' pipeline classes (and through them transformers' image processors), which is slow
# and noisy: they load on first use, so `import vidattn` stays as light as the processors.
_LAZY = {
    "BroadWayAnimateDiffPipeline": "pipelines.broadway",
    "run_broadway_generation": "pipelines.broadway",
    "default_model_path": "pipelines.default_model",
    "load_default_pipeline": "pipelines.default_model",
    "FreeSwimPipeline": "pipelines.freeswim",
    "StreamingWanPipeline": "pipelines.streaming",
    "stream_to_mp4": "pipelines.streaming",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
