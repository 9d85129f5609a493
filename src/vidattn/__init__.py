"""vidattn: faster, longer, higher-resolution video generation for diffusers video models."""

from .context import AttentionContext, attach_context, detach_context
from .layout import VideoLayout

__all__ = ["AttentionContext", "VideoLayout", "attach_context", "detach_context"]
__version__ = "0.1.0"
