"""Dense SDPA with an optional key mask: the exact path wherever every query may see every valid key (a plan that
keeps every tile, a window that covers the grid, dense warm-up steps)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def key_masked_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    key_valid: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """SDPA of (B, H, N, D) tensors where each query sees the keys ``key_valid`` (B|1, Nk) allows (None: all).

    A query row with no valid key returns zeros, as every vidattn backend does (some SDPA kernels give NaN there).
    """
    if key_valid is None:
        return F.scaled_dot_product_attention(query, key, value, scale=scale)
    mask = key_valid.to(device=query.device, dtype=torch.bool)[:, None, None, :]
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scale)
    return out.masked_fill(~mask.any(-1, keepdim=True), 0.0)
