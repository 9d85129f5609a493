"""The method contract's config half: fields every attention method's config has, checked in one place."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar, TypeVar

from ..checks import check_choice, check_int
from ..kernels import BACKENDS
from .families import FAMILIES

ConfigT = TypeVar("ConfigT")


@dataclass(frozen=True, kw_only=True)
class MethodConfig:
    """Base of every method config (frozen, hashable: plans are cached by it).

    ``dense_steps``: the first denoising steps run the stock processor (needs ``apply_*``, which installs the step
    hook); ``dense_layers``: the first video self-attention layers do; ``backend``: the kernel, one of the class's
    ``backends``; ``family``: force a model family instead of detecting it. Subclasses add the method's own fields
    (positional, in their order) and call ``super().__post_init__()``.
    """

    dense_steps: int = 0
    dense_layers: int = 0
    backend: str = "auto"
    family: str | None = None

    backends: ClassVar[tuple[str, ...]] = BACKENDS

    def __post_init__(self) -> None:
        check_int("dense_steps", self.dense_steps, 0)
        check_int("dense_layers", self.dense_layers, 0)
        check_choice("backend", self.backend, self.backends)
        if self.family is not None:
            check_choice("family", self.family, FAMILIES, note="or None to detect it")


def config_fields(config_cls: type) -> tuple[str, ...]:
    """The settable field names of a config class (class constants such as ``backends`` excluded)."""
    return tuple(f.name for f in dataclasses.fields(config_cls))


def check_fields(config_cls: type, names, owner: str) -> None:
    """``ValueError`` naming the unknown ones among ``names`` and the allowed fields of ``config_cls``."""
    unknown = set(names) - set(config_fields(config_cls))
    if unknown:
        raise ValueError(f"unknown {owner} argument(s) {sorted(unknown)}; allowed: {sorted(config_fields(config_cls))}")


def config_with_overrides(config_cls: type[ConfigT], config: ConfigT | None, overrides: dict, owner: str) -> ConfigT:
    """``config`` (or the defaults) with keyword ``overrides`` applied; unknown names are a ``ValueError``."""
    config = config if config is not None else config_cls()
    check_fields(config_cls, overrides, owner)
    return dataclasses.replace(config, **overrides) if overrides else config
