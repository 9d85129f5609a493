"""Diffusers attention processors: family adapters, the method contract and one processor class per method."""

from types import ModuleType as _ModuleType

from .base import MethodAttnProcessor, PlanCache, VideoAttnProcessor
from .config import MethodConfig
from .dense import DenseAttnProcessor, DenseConfig
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
from .streaming import StreamingAttnProcessor, StreamingConfig
from .vmoba import VMoBAAttnProcessor, VMoBAConfig, vmoba_partition_maps
from .window import WindowAttnProcessor, WindowConfig

# Everything imported above is public; submodules are not.
__all__ = sorted(n for n, v in globals().items() if not n.startswith("_") and not isinstance(v, _ModuleType))
