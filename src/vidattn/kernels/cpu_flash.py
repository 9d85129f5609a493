"""The fused CPU attention kernel the CPU backends (segments, groups, ranges) run their pieces with, and the autograd
wrapper they share: a forward that returns (out, log-sum-exp) and a backward that needs both."""

from __future__ import annotations

from typing import Callable

import torch

flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default
flash_backward = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward.default

Forward = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
Backward = Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


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
