"""The fused CPU attention kernel the CPU backends (segments, groups, ranges, rows) run their pieces with, and what
they share around it: the autograd wrapper (a forward that returns (out, log-sum-exp), a backward that needs both),
the accumulation dtype of merges and gradient sums, and the key-mask check."""

from __future__ import annotations

from typing import Callable

import torch

flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default
flash_backward = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward.default

Forward = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
Backward = Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
    """Merges, log-sum-exps and gradient sums run in f32, or f64 for f64 inputs."""
    return torch.promote_types(dtype, torch.float32)


def check_key_valid(key_valid: torch.Tensor | None, batch: int, n: int) -> torch.Tensor | None:
    """``key_valid`` as a CPU bool tensor after checking it is (B or 1, n); None stays None."""
    if key_valid is None:
        return None
    if key_valid.ndim != 2 or key_valid.shape[-1] != n or key_valid.shape[0] not in (1, batch):
        raise ValueError(f"key_valid must be a bool tensor (B or 1, {n}), got {tuple(key_valid.shape)}")
    return key_valid.to("cpu", torch.bool)


def attention_with_lse(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, forward: Forward, backward: Backward) -> torch.Tensor:
    """``forward(query, key, value) -> (out, lse)``'s output; differentiable, when grads are wanted, through
    ``backward(grad_out, query, key, value, out, lse) -> (dq, dk, dv)``."""
    if torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value)):
        return _WithLse.apply(query, key, value, forward, backward)
    return forward(query, key, value)[0]


class _WithLse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, query, key, value, forward, backward):
        out, lse = forward(query, key, value)
        ctx.save_for_backward(query, key, value, out, lse)
        ctx.backward_fn = backward
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        query, key, value, out, lse = ctx.saved_tensors
        return (*ctx.backward_fn(grad_out, query, key, value, out, lse), None, None)
