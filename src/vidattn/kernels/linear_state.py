"""Running linear-attention state of tokens that left a softmax window (Hybrid Forcing's evicted-frames memory).

The state holds running *means* (not sums) of phi(k) and of k^T v, phi = ReLU, so its scale does not grow with
video length; updating it chunk by chunk equals one update over all the tokens at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def relu_feature(x: torch.Tensor) -> torch.Tensor:
    """phi(x) = ReLU(x), the feature map of Hybrid Forcing's linear branch (``kernel_func="relu"``)."""
    return torch.relu(x)


@dataclass
class LinearAttentionState:
    """``kmean`` (B, H, D): mean phi(k); ``kv`` (B, H, D, Dv): mean k^T v; ``count``: tokens folded in so far."""

    kmean: torch.Tensor
    kv: torch.Tensor
    count: int = 0

    @classmethod
    def zeros(cls, batch: int, heads: int, dim: int, value_dim: int | None = None, *, dtype=torch.float32, device=None) -> "LinearAttentionState":
        value_dim = dim if value_dim is None else value_dim
        return cls(
            torch.zeros(batch, heads, dim, dtype=dtype, device=device),
            torch.zeros(batch, heads, dim, value_dim, dtype=dtype, device=device),
            0,
        )

    def nbytes(self) -> int:
        return self.kmean.numel() * self.kmean.element_size() + self.kv.numel() * self.kv.element_size()


def update_linear_state(
    state: LinearAttentionState, key: torch.Tensor, value: torch.Tensor, key_for_values: torch.Tensor | None = None
) -> LinearAttentionState:
    """Fold (B, H, S, D) keys and (B, H, S, Dv) values into the running means; returns a new state.

    ``kmean`` averages phi(key). ``kv`` averages ``key_for_values^T value`` (default: ``key``); Hybrid Forcing
    passes RoPE-rotated raw keys there, so the numerator is not sign-constrained.
    """
    if key.ndim != 4 or value.shape[:3] != key.shape[:3]:
        raise ValueError(f"key and value must be (B, H, S, D) with the same B, H, S; got {tuple(key.shape)} and {tuple(value.shape)}")
    key_for_values = key if key_for_values is None else key_for_values
    if key_for_values.shape != key.shape:
        raise ValueError(f"key_for_values must have the shape of key {tuple(key.shape)}, got {tuple(key_for_values.shape)}")
    new = key.shape[-2]
    if new == 0:
        return state
    total = state.count + new
    dtype = state.kmean.dtype
    k_sum = relu_feature(key.to(dtype)).sum(-2)
    kv_sum = torch.einsum("bhsd,bhse->bhde", key_for_values.to(dtype), value.to(dtype))
    kmean = (k_sum + state.count * state.kmean) / total
    kv = (kv_sum + state.count * state.kv) / total
    return LinearAttentionState(kmean, kv, total)


def linear_readout(state: LinearAttentionState, query_numerator: torch.Tensor, query: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``query_numerator @ kv / (phi(query) . kmean + eps)`` for (B, H, N, D) queries; zeros while the state is empty.

    ``query_numerator`` is the query feature that meets ``kv`` (Hybrid Forcing: a RoPE-rotated query feature),
    ``query`` the un-rotated query whose phi meets ``kmean``.
    """
    if state.count == 0:
        return query.new_zeros(*query.shape[:-1], state.kv.shape[-1])
    dtype = state.kv.dtype
    numerator = torch.einsum("bhnd,bhde->bhne", query_numerator.to(dtype), state.kv)
    denominator = torch.einsum("bhnd,bhd->bhn", relu_feature(query.to(dtype)), state.kmean).unsqueeze(-1) + eps
    return (numerator / denominator).to(query.dtype)
