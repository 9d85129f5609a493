"""Block-sparse attention for a plan laid out in another token order: permute, run the kernel, put the output back.

Window attention reorders tokens into 3D tiles (with padding positions), VMoBA into its partition's blocks (queries
per head, by selection); both then need the same three steps, written once here. The ``groups`` backend gathers its
groups in the plan's order itself, so it skips the permutation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..patterns.plan import BlockPlan
from .block_sparse import block_sparse_attention, resolve_backend
from .groups import grouped_attention


def block_sparse_attention_in_order(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    plan: BlockPlan,
    order: torch.Tensor,
    *,
    query_order: torch.Tensor | None = None,
    padded: bool = False,
    key_valid: torch.Tensor | None = None,
    backend: str = "auto",
    scale: float | None = None,
) -> torch.Tensor:
    """Attention of original-order (B, H, N, D) tensors under ``plan``, whose position p is original token ``order[p]``.

    ``padded``: ``order`` also holds N, a padding position (a zero token; the plan must mask it as a key).
    ``query_order`` (B|1, H|1, M): per-head query order, query position p of head (b, h) being original token
    ``order[query_order[b, h, p]]`` (keys keep ``order``). Returns (B, H, N, D) in the original order.
    """
    n = query.shape[-2]
    if query_order is None and resolve_backend(backend, query, plan) == "groups":  # gathers in this order itself
        scale = query.shape[-1] ** -0.5 if scale is None else scale
        return grouped_attention(query, key, value, plan, key_valid, scale, order=order)
    order = order.to(query.device)
    if padded:  # one extra zero token at index N stands for every padding position
        query, key, value = (F.pad(x, (0, 0, 0, 1)) for x in (query, key, value))
        if key_valid is not None:
            key_valid = F.pad(key_valid, (0, 1), value=False)
    k, v = (x.index_select(-2, order) for x in (key, value))
    if key_valid is not None:
        key_valid = key_valid.index_select(-1, order.to(key_valid.device))
    if query_order is None:
        out = block_sparse_attention(query.index_select(-2, order), k, v, plan, key_valid, backend=backend, scale=scale)
        index = order.view(1, 1, -1, 1).expand_as(out)
    else:
        source = order[query_order.to(query.device)]
        batch = max(query.shape[0], source.shape[0])
        index = source.expand(batch, query.shape[1], -1).unsqueeze(-1).expand(-1, -1, -1, query.shape[-1])
        out = block_sparse_attention(torch.gather(query.expand(batch, -1, -1, -1), 2, index), k, v, plan, key_valid, backend=backend, scale=scale)
    placed = out.new_zeros(out.shape[0], out.shape[1], query.shape[-2], out.shape[-1]).scatter(2, index, out)
    return placed[..., :n, :]
