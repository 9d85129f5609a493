"""vidattn: faster, longer, higher-resolution video generation for diffusers video models."""

from . import processors as _processors
from .context import AttentionContext, attach_context, detach_context
from .layout import VideoLayout
from .models import UnsupportedModelError
from .processors import *  # noqa: F403 - the processors' public names are the package's

__version__ = "0.1.0"

# Pipelines import diffusers' pipeline classes (and through them transformers' image processors), which is slow
# and noisy: they load on first use, so `import vidattn` stays as light as the processors.
_LAZY = {
    "BroadWayAnimateDiffPipeline": "pipelines.broadway",
    "run_broadway_generation": "pipelines.broadway",
    "BroadWayConfig": "pipelines.broadway_guidance",
    "apply_broadway": "pipelines.broadway_guidance",
    "remove_broadway": "pipelines.broadway_guidance",
    "CrossAttnOverride": "pipelines.cross_override",
    "FullAttnProcessor": "pipelines.cross_override",
    "install_cross_override": "pipelines.cross_override",
    "refresh_steps": "pipelines.cross_override",
    "remove_cross_override": "pipelines.cross_override",
    "default_model_path": "pipelines.default_model",
    "load_default_pipeline": "pipelines.default_model",
    "FreeSwimPipeline": "pipelines.freeswim",
    "StreamState": "pipelines.stream_state",
    "apply_streaming_attention": "pipelines.stream_state",
    "remove_streaming_attention": "pipelines.stream_state",
    "StreamingWanPipeline": "pipelines.streaming",
    "stream_to_mp4": "pipelines.streaming",
}


__all__ = sorted({"AttentionContext", "UnsupportedModelError", "VideoLayout", "attach_context", "detach_context", *_processors.__all__, *_LAZY})


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
