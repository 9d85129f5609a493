"""Method name -> processor class, config class and installer, so the CLI, benchmarks and evaluation treat every method alike.

Add a method by adding one entry here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .dense import DenseAttnProcessor
from .install import remove_processors
from .monarch import MonarchAttnProcessor, MonarchConfig, apply_monarch_attention
from .radial import RadialAttnProcessor, RadialConfig, apply_radial_attention
from .vmoba import VMoBAAttnProcessor, VMoBAConfig, apply_vmoba_attention
from .window import WindowAttnProcessor, WindowConfig, apply_window_attention


@dataclass(frozen=True)
class Method:
    """One attention method: its drop-in processor, its config dataclass and its ``apply_*`` installer."""

    processor: Callable[..., object]
    config: type | None = None
    apply: Callable[[torch.nn.Module, object], object] | None = None


METHODS: dict[str, Method] = {
    "dense": Method(DenseAttnProcessor),
    "radial": Method(RadialAttnProcessor, RadialConfig, apply_radial_attention),
    "vmoba": Method(VMoBAAttnProcessor, VMoBAConfig, apply_vmoba_attention),
    "monarch": Method(MonarchAttnProcessor, MonarchConfig, apply_monarch_attention),
    "window": Method(WindowAttnProcessor, WindowConfig, apply_window_attention),
}


def _method(method: str) -> Method:
    if method not in METHODS:
        raise ValueError(f"method must be one of {sorted(METHODS)}, got {method!r}")
    return METHODS[method]


def make_processor(method: str, **kwargs) -> object:
    """A drop-in processor of ``method`` (one of :data:`METHODS`) built with ``kwargs`` (config fields, ``layout`` ...)."""
    return _method(method).processor(**kwargs)


def apply_method(transformer: torch.nn.Module, method: str, **config_fields) -> object:
    """Install ``method`` on every video self-attention layer of ``transformer`` (``"dense"`` restores the stock processors)."""
    entry = _method(method)
    if entry.apply is None:
        if config_fields:
            raise ValueError(f"method {method!r} takes no parameters, got {sorted(config_fields)}")
        remove_processors(transformer)
        return None
    known = set(entry.config.__dataclass_fields__)
    unknown = set(config_fields) - known
    if unknown:
        raise ValueError(f"unknown {method} parameter(s) {sorted(unknown)}; allowed: {sorted(known)}")
    return entry.apply(transformer, entry.config(**config_fields))
