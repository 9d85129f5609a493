"""Diffusers attention processors: family adapters plus one processor class per method."""

from .base import VideoAttnProcessor
from .broadway import BroadWayConfig, apply_broadway, remove_broadway
from .cross_override import CrossAttnOverride, FullAttnProcessor, install_cross_override, refresh_steps, remove_cross_override
from .dense import DenseAttnProcessor
from .hybrid import HybridAttnProcessor, HybridConfig, apply_hybrid_attention, remove_hybrid_attention
from .install import install_processors, remove_processors, video_attention_layers
from .monarch import MonarchAttnProcessor, MonarchConfig, apply_monarch_attention, remove_monarch_attention
from .radial import RadialAttnProcessor, RadialConfig, apply_radial_attention, remove_radial_attention
from .registry import METHODS, apply_method, make_processor
from .vmoba import VMoBAAttnProcessor, VMoBAConfig, apply_vmoba_attention, remove_vmoba_attention, vmoba_partition_maps
from .window import WindowAttnProcessor, WindowConfig, apply_window_attention, remove_window_attention

__all__ = [
    "METHODS",
    "BroadWayConfig",
    "CrossAttnOverride",
    "DenseAttnProcessor",
    "FullAttnProcessor",
    "HybridAttnProcessor",
    "HybridConfig",
    "MonarchAttnProcessor",
    "MonarchConfig",
    "RadialAttnProcessor",
    "RadialConfig",
    "VMoBAAttnProcessor",
    "VMoBAConfig",
    "VideoAttnProcessor",
    "WindowAttnProcessor",
    "WindowConfig",
    "apply_broadway",
    "apply_hybrid_attention",
    "apply_method",
    "apply_monarch_attention",
    "apply_radial_attention",
    "apply_vmoba_attention",
    "apply_window_attention",
    "install_cross_override",
    "install_processors",
    "make_processor",
    "refresh_steps",
    "remove_broadway",
    "remove_cross_override",
    "remove_hybrid_attention",
    "remove_monarch_attention",
    "remove_processors",
    "remove_radial_attention",
    "remove_vmoba_attention",
    "remove_window_attention",
    "video_attention_layers",
    "vmoba_partition_maps",
]
