"""Method name -> processor factory, so the CLI, benchmarks and evaluation treat every method alike.

Each entry builds a processor from keyword arguments (the method's config fields plus ``layout``,
``backend`` ...). Add a method by adding one line here.
"""

from __future__ import annotations

from typing import Callable

from .dense import DenseAttnProcessor
from .radial import RadialAttnProcessor
from .vmoba import VMoBAAttnProcessor

METHODS: dict[str, Callable[..., object]] = {
    "dense": DenseAttnProcessor,
    "radial": RadialAttnProcessor,
    "vmoba": VMoBAAttnProcessor,
}


def make_processor(method: str, **kwargs):
    """A processor of ``method`` (one of :data:`METHODS`) built with ``kwargs``."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {sorted(METHODS)}, got {method!r}")
    return METHODS[method](**kwargs)
