"""The finite guard: a non-finite loss, gradient or weight stops training (or skips the step) instead of a NaN LoRA."""

from __future__ import annotations

import math
from typing import Iterable

import torch

from .sharding import local_tensor


class NonFiniteError(RuntimeError):
    """Training produced a non-finite loss, gradient or weight (``vidattn train`` exits with code 3)."""


def nonfinite_step(loss: float, named_params: Iterable[tuple[str, torch.nn.Parameter]], check_grads: bool = True) -> str | None:
    """Why an optimizer step must not be taken (a non-finite loss or gradient), or None. One device sync for the grads.
    Sharded (FSDP) gradients are checked on this rank's shards only: combine the ranks' answers (``sharding.any_rank``)."""
    if not math.isfinite(loss):
        return f"loss is {loss}"
    if not check_grads:
        return None
    named = [(n, local_tensor(p.grad)) for n, p in named_params if p.grad is not None]  # FSDP: this rank's shards
    if not named or bool(torch.stack([torch.isfinite(g).all() for _, g in named]).all()):
        return None
    bad = [n for n, g in named if not torch.isfinite(g).all()]
    return f"the gradient of {len(bad)} parameter(s) is not finite (first: {bad[0]})"


def nonfinite_tensors(named: Iterable[tuple[str, torch.Tensor]]) -> list[str]:
    """Names of the tensors holding a NaN or an infinity."""
    return [name for name, tensor in named if not torch.isfinite(tensor.detach()).all()]
