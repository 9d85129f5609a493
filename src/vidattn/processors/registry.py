"""The method registry: name -> processor (whose ``config_class`` is the method's config) and the settings the CLI,
evaluation and training derive from it. Adding a method is one pattern file, one processor and one :class:`Method`
entry here (or :func:`register_method` from user code); see docs/architecture.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

from ..checks import check_number
from ..context import AttentionContext
from .base import MethodAttnProcessor, PlanCache
from .config import MethodConfig, check_fields, config_fields, config_with_overrides
from .dense import DenseAttnProcessor
from .install import install_processors, remove_processors
from .monarch import MonarchAttnProcessor, MonarchConfig
from .radial import RadialAttnProcessor, RadialConfig
from .vmoba import VMoBAAttnProcessor, VMoBAConfig
from .window import WindowAttnProcessor, WindowConfig

# The embedded default model's latent grid is 5 x 8 x 8 (320 tokens): 128-token blocks would make every plan dense.
_TINY_BLOCK = {"block_size": 32}


@dataclass(frozen=True)
class Method:
    """One attention method as every entry point sees it.

    ``tiny_grid``: config fields that suit the embedded default model's 5 x 8 x 8 grid (evaluation, demo, tests);
    ``generate``: defaults of ``vidattn generate``/``demo`` (the paper's setting where the config keeps the official
    code's); ``warm_up``: share of the denoising steps ``generate`` runs dense by default; ``stock``: installing the
    method means the stock diffusers processors (the ``dense`` baseline).
    """

    name: str
    processor: type[MethodAttnProcessor]
    summary: str
    tiny_grid: Mapping[str, object] = field(default_factory=dict)
    generate: Mapping[str, object] = field(default_factory=dict)
    warm_up: float = 0.0
    stock: bool = False

    def __post_init__(self) -> None:
        if not (isinstance(self.processor, type) and issubclass(self.processor, MethodAttnProcessor)):
            raise ValueError(f"Method.processor must be a MethodAttnProcessor subclass, got {self.processor!r}")
        if not issubclass(getattr(self.processor, "config_class", object), MethodConfig):
            raise ValueError(f"{self.processor.__name__}.config_class must be a MethodConfig subclass")
        check_number("warm_up", self.warm_up, 0, 1, high_open=True)
        for name in (*self.tiny_grid, *self.generate):
            if name not in config_fields(self.config):
                raise ValueError(f"{self.name}: {name!r} is not a field of {self.config.__name__}")
        object.__setattr__(self, "tiny_grid", MappingProxyType(dict(self.tiny_grid)))
        object.__setattr__(self, "generate", MappingProxyType(dict(self.generate)))

    @property
    def config(self) -> type[MethodConfig]:
        return self.processor.config_class


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("dense", DenseAttnProcessor, "full attention (installing it restores the stock processors)", _TINY_BLOCK, stock=True),
        Method("radial", RadialAttnProcessor, "static energy-decay block mask", _TINY_BLOCK, {"decay": 0.2}, warm_up=0.25),
        Method("vmoba", VMoBAAttnProcessor, "per-query top blocks of a layer-cycled 1D/2D/3D partition",
               {**_TINY_BLOCK, "temporal_chunk": 1, "spatial_chunk": (4, 4), "st_chunk": (2, 4, 4)}),
        # MonarchRT's own setting (h_reduce 1) expects a fine-tuned model and erases the shape on the dense-trained
        # default model (prompt accuracy 0.00); 4 row tiles per frame keep it (1.00, 30.5 dB).
        Method("monarch", MonarchAttnProcessor, "MonarchRT two-stage factorised attention", {"h_reduce": 4}),
        Method("window", WindowAttnProcessor, "3D sliding window with inward shift (FreeSwim's local branch)",
               {**_TINY_BLOCK, "window": (1, 2, 2)}),
    )
}


def register_method(method: Method) -> None:
    """Make ``method`` known to :func:`apply_method`, the CLI, evaluation and training (a name may be registered once)."""
    if not isinstance(method, Method):
        raise ValueError(f"method must be a Method, got {type(method).__name__}")
    if method.name in METHODS:
        raise ValueError(f"method {method.name!r} is already registered")
    METHODS[method.name] = method


def unregister_method(name: str) -> None:
    """Forget a method added with :func:`register_method`."""
    get_method(name)
    del METHODS[name]


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"method must be one of {sorted(METHODS)}, got {name!r}")
    return METHODS[name]


def method_of_config(config: MethodConfig) -> Method:
    """The registered method whose config class ``config`` is."""
    for method in METHODS.values():
        if type(config) is method.config:
            return method
    raise ValueError(f"config must be the config of a registered method ({sorted(METHODS)}), got {type(config).__name__}")


def make_processor(method: str, **kwargs) -> MethodAttnProcessor:
    """A drop-in processor of ``method`` built with ``kwargs`` (config fields, ``layout``, ``layer_idx`` ...)."""
    return get_method(method).processor(**kwargs)


def install(target, config: MethodConfig) -> AttentionContext | None:
    """``config``'s method on every video self-attention layer of a transformer or pipeline, with the step hook.

    All layers share one bounded plan cache and one step context (across Wan 2.2's two experts too).
    """
    method = method_of_config(config)
    if method.stock:
        remove_processors(target)
        return None
    plan_cache = PlanCache()
    return install_processors(
        target, lambda index, family, context: method.processor(config, layer_idx=index, context=context, plan_cache=plan_cache)
    )


def make_config(method: str, owner: str | None = None, **fields) -> MethodConfig:
    """``method``'s config built from ``fields``: unknown names and bad values are one ``ValueError`` (``owner`` names
    where the fields came from in the message, e.g. ``"radial method_args"``)."""
    entry = get_method(method)
    check_fields(entry.config, fields, owner or f"{method} parameter")
    return entry.config(**fields)


def apply_method(target, method: str, **fields) -> AttentionContext | None:
    """Install ``method`` (a registered name) with ``fields`` of its config on a transformer or pipeline; ``"dense"``
    restores the stock processors. ``vidattn.apply(pipe, "radial", decay=0.2)`` is the same call."""
    return install(target, make_config(method, **fields))


def apply(target, method: str | MethodConfig, **fields) -> AttentionContext | None:
    """One entry point: ``apply(pipe, "radial", decay=0.2)`` or ``apply(pipe, RadialConfig(decay=0.2))``."""
    if isinstance(method, MethodConfig):
        return install(target, config_with_overrides(type(method), method, fields, "apply"))
    return apply_method(target, method, **fields)


def apply_radial_attention(target, config: RadialConfig | None = None) -> AttentionContext:
    """Radial attention on a transformer or pipeline, with the hook for dense warm-up steps and layers."""
    return install(target, config or RadialConfig())


def apply_vmoba_attention(target, config: VMoBAConfig | None = None) -> AttentionContext:
    """VMoBA on a transformer or pipeline (layer i takes its partition from the 1D-2D-3D cycle), plus the step hook."""
    return install(target, config or VMoBAConfig())


def apply_monarch_attention(target, config: MonarchConfig | None = None) -> AttentionContext:
    """Monarch attention on a transformer or pipeline, with the hook for dense warm-up steps and layers."""
    return install(target, config or MonarchConfig())


def apply_window_attention(target, config: WindowConfig | None = None) -> AttentionContext:
    """Window attention on a transformer or pipeline, with the hook for dense warm-up steps and layers."""
    return install(target, config or WindowConfig())

