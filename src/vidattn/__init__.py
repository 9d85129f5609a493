"""vidattn: faster, longer, higher-resolution video generation for diffusers video models."""

from .context import AttentionContext, attach_context, detach_context
from .layout import VideoLayout
from .processors import RadialAttnProcessor, RadialConfig, apply_radial_attention, remove_radial_attention
from .processors import VMoBAAttnProcessor, VMoBAConfig, apply_vmoba_attention, remove_vmoba_attention

__all__ = [
    "AttentionContext",
    "RadialAttnProcessor",
    "RadialConfig",
    "VideoLayout",
    "apply_radial_attention",
    "attach_context",
    "detach_context",
    "remove_radial_attention",
    "VMoBAAttnProcessor",
    "VMoBAConfig",
    "apply_vmoba_attention",
    "remove_vmoba_attention",
]
__version__ = "0.1.0"
