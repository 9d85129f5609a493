"""Diffusers attention processors: family adapters, the method contract and one processor class per method."""

from types import ModuleType as _ModuleType

from .base import MethodAttnProcessor, PlanCache, VideoAttnProcessor
from .broadway import BroadWayConfig, apply_broadway, remove_broadway
from .config import MethodConfig
from .cross_override import CrossAttnOverride, FullAttnProcessor, install_cross_override, refresh_steps, remove_cross_override
from .dense import DenseAttnProcessor, DenseConfig
from .hybrid import HybridAttnProcessor, HybridConfig, apply_hybrid_attention, remove_hybrid_attention
from .install import install_processors, remove_processors, transformers_of, video_attention_layers
from .monarch import MonarchAttnProcessor, MonarchConfig
from .radial import RadialAttnProcessor, RadialConfig
from .registry import (
    METHODS,
    Method,
    apply,
    apply_method,
    apply_monarch_attention,
    apply_radial_attention,
    apply_vmoba_attention,
    apply_window_attention,
    get_method,
    install,
    make_processor,
    register_method,
    unregister_method,
)
from .vmoba import VMoBAAttnProcessor, VMoBAConfig, vmoba_partition_maps
from .window import WindowAttnProcessor, WindowConfig

# Everything imported above is public; submodules are not.
__all__ = sorted(n for n, v in globals().items() if not n.startswith("_") and not isinstance(v, _ModuleType))
