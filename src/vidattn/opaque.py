"""A handle through which ``torch.compile`` passes a vidattn object (the step context, a processor) into vidattn's
custom ops untouched: a reference-type opaque object, a graph input that dynamo never traces into (docs/compile.md)."""

from __future__ import annotations

from typing import Any

try:  # torch >= 2.13: opaque objects as custom-op arguments
    from torch._library.opaque_object import register_opaque_type
    from torch._opaque_base import OpaqueBase
except ImportError:  # pragma: no cover - older torch: eager use only
    OpaqueBase, register_opaque_type = object, None

OPAQUE_OBJECTS = register_opaque_type is not None


class OpHandle(OpaqueBase):  # type: ignore[misc, valid-type]
    """Holds ``owner`` (the object a vidattn custom op reads at run time); its identity never changes."""

    def __init__(self, owner: Any) -> None:
        self.owner = owner


if OPAQUE_OBJECTS:
    register_opaque_type(OpHandle, typ="reference")


def require_opaque_objects() -> None:
    """Raise if this torch cannot pass a vidattn object into a custom op (whole-model compile needs it)."""
    if not OPAQUE_OBJECTS:
        import torch

        raise RuntimeError(f"torch.compile of a model with vidattn processors needs torch >= 2.13 (opaque objects); this is torch {torch.__version__}")
