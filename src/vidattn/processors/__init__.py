"""Diffusers attention processors: family adapters plus one processor class per method."""

from .base import VideoAttnProcessor
from .dense import DenseAttnProcessor
from .install import install_processors, remove_processors, video_attention_layers
from .radial import RadialAttnProcessor, RadialConfig, apply_radial_attention, remove_radial_attention
from .vmoba import VMoBAAttnProcessor, VMoBAConfig, apply_vmoba_attention, remove_vmoba_attention, vmoba_partition_maps

__all__ = [
    "DenseAttnProcessor",
    "RadialAttnProcessor",
    "RadialConfig",
    "VideoAttnProcessor",
    "apply_radial_attention",
    "install_processors",
    "remove_processors",
    "remove_radial_attention",
    "video_attention_layers",
    "VMoBAAttnProcessor",
    "VMoBAConfig",
    "apply_vmoba_attention",
    "remove_vmoba_attention",
    "vmoba_partition_maps",
]
