"""VMoBA (mixture of block attention, layer-wise recurrent 1D/2D/3D partitions) as a diffusers processor."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..checks import check_bool, check_choice, check_int
from ..kernels import RANGE_BACKENDS, block_sparse_attention, range_select_attention, resolve_backend
from ..kernels.range_select import range_select_reference
from ..kernels.reordered import block_sparse_attention_in_order
from ..layout import VideoLayout
from ..patterns.vmoba import (
    KINDS,
    Partition,
    VMoBAPlan,
    block_ranges,
    build_partition,
    layer_kind,
    normalize_chunk,
    partition_map,
    selection_columns,
    validate_selection,
    vmoba_plan,
    vmoba_selection,
)
from .base import MethodAttnProcessor
from .config import MethodConfig


@dataclass(frozen=True)
class VMoBAConfig(MethodConfig):
    """VMoBA (Wu et al. 2025, https://arxiv.org/abs/2506.23858). Defaults are FastVideo's Wan2.1-1.3B training config
    (threshold 0.25, query_head).

    Layer l uses ``layer_kind(l, dense_layers, layer_cycle)`` (1d, 2d, 3d, 1d, ... counted from the first sparse
    layer) unless ``kind`` forces one partition; the first ``dense_layers`` layers and ``dense_steps`` steps run the
    stock processor (the official code's ``first_sparse_layer`` is ``dense_layers``). ``topk`` (for
    ``select_mode="topk"``) is one int or one per kind (1d, 2d, 3d).

    ``backend``: ``auto`` runs ``ranges`` on the CPU (the selection itself, no tiles: kernels/range_select.py), there
    ``dense`` for short sequences (kernels.block_sparse.DENSE_MAX_MASK), and FlexAttention elsewhere; ``dense`` (the
    reference) is SDPA with the selection's token mask; ``flex`` and ``gather`` (differentiable anywhere) run the
    tile plan with its token mask.
    """

    backends: ClassVar[tuple[str, ...]] = RANGE_BACKENDS

    temporal_chunk: int = 2
    spatial_chunk: tuple[int, int] = (4, 13)
    st_chunk: tuple[int, int, int] = (4, 4, 13)
    threshold: float = 0.25
    threshold_type: str = "query_head"
    select_mode: str = "threshold"
    topk: int | tuple[int, int, int] = (2, 6, 18)
    layer_cycle: tuple[int, int, int] = (1, 1, 1)
    kind: str | None = None
    block_size: int = 128
    group_queries: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        for kind in KINDS:  # validate, and store lists as tuples so the config stays hashable
            field = {"1d": "temporal_chunk", "2d": "spatial_chunk", "3d": "st_chunk"}[kind]
            chunk = normalize_chunk(kind, getattr(self, field))
            object.__setattr__(self, field, chunk[0] if kind == "1d" else chunk)
        topk = self.topk if isinstance(self.topk, int) else tuple(self.topk) if isinstance(self.topk, (tuple, list)) else None
        if topk is None or (isinstance(topk, tuple) and len(topk) != 3):
            raise ValueError(f"topk must be an int or three ints (1d, 2d, 3d), got {self.topk!r}")
        object.__setattr__(self, "topk", topk)
        for k in (topk,) if isinstance(topk, int) else topk:
            validate_selection(self.select_mode, self.threshold_type, self.threshold, k)
        object.__setattr__(self, "layer_cycle", tuple(self.layer_cycle))
        layer_kind(0, 0, self.layer_cycle)  # validates the cycle
        if self.kind is not None:
            check_choice("kind", self.kind, KINDS, note="or None for the layer cycle")
        check_int("block_size", self.block_size, 1, note="e.g. 128")
        check_bool("group_queries", self.group_queries)

    def chunk(self, kind: str) -> tuple[int, ...]:
        """The chunk of partition ``kind`` as a tuple (1, 2 or 3 ints)."""
        return normalize_chunk(kind, {"1d": self.temporal_chunk, "2d": self.spatial_chunk, "3d": self.st_chunk}[kind])

    def topk_for(self, kind: str) -> int:
        return self.topk if isinstance(self.topk, int) else self.topk[KINDS.index(kind)]

    def kind_for(self, layer_idx: int | None) -> str:
        """Partition of a layer: the forced ``kind``, else the cycle (layer 0 of the cycle when the index is unknown)."""
        if self.kind is not None:
            return self.kind
        index = self.dense_layers if layer_idx is None else layer_idx
        return layer_kind(index, self.dense_layers, self.layer_cycle)


def vmoba_partition_maps(layout: VideoLayout, config: VMoBAConfig | None = None) -> dict[str, torch.Tensor]:
    """``{"1d" | "2d" | "3d": (F, H, W) block-id map}`` of the three partitions of ``config`` on ``layout``."""
    config = config or VMoBAConfig()
    return {kind: partition_map(layout, kind, config.chunk(kind)) for kind in KINDS}


def attention_with_plan(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    vplan: VMoBAPlan,
    key_valid: torch.Tensor | None = None,
    backend: str = "auto",
    scale: float | None = None,
) -> torch.Tensor:
    """Attention of original-order (B, H, N, D) tensors under a VMoBA plan: permute, block-sparse kernel, unpermute
    (``backend="ranges"``: the plan's selection on the range kernel, its tiles unused)."""
    part = vplan.partition
    resolved = resolve_backend(backend, query, vplan.plan, ranges=True)
    if resolved in ("ranges", "dense"):
        return attention_with_selection(query, key, value, vplan.selection, part, key_valid, scale, reference=resolved == "dense")
    if part.identity and vplan.query_order is None:
        return block_sparse_attention(query, key, value, vplan.plan, key_valid, backend=backend, scale=scale)
    return block_sparse_attention_in_order(
        query, key, value, vplan.plan, part.perm, query_order=vplan.query_order, key_valid=key_valid, backend=backend, scale=scale
    )


def attention_with_selection(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    selection: torch.Tensor,
    partition: Partition,
    key_valid: torch.Tensor | None = None,
    scale: float | None = None,
    reference: bool = False,
) -> torch.Tensor:
    """Attention of original-order (B, H, N, D) tensors under a (B, H, S, C) selection on the CPU range kernel
    (``reference``: SDPA with the selection's explicit token mask, any device): keys/values (and ``key_valid``) go
    to partition order, where each block is one contiguous range; queries stay in place (the kernel gathers them by
    index), so the output needs no unpermuting."""
    if not partition.identity:
        order = partition.perm.to(query.device)
        key, value = (x.index_select(-2, order) for x in (key, value))
        if key_valid is not None:
            key_valid = key_valid.index_select(-1, order.to(key_valid.device))
    columns = selection_columns(selection, partition)
    kernel = range_select_reference if reference else range_select_attention
    return kernel(query, key, value, columns, block_ranges(partition), key_valid, scale)


class VMoBAAttnProcessor(MethodAttnProcessor):
    """Drop-in VMoBA: ``transformer.set_attn_processor(VMoBAAttnProcessor(temporal_chunk=2, ...))``.

    Use :func:`apply_vmoba_attention` for the recurrent 1D-2D-3D layer cycle and dense warm-up steps.
    """

    config_class = VMoBAConfig

    @property
    def kind(self) -> str:
        """This layer's partition (1d, 2d or 3d)."""
        return self.config.kind_for(self.layer_idx)

    def partition(self, layout: VideoLayout, device: torch.device | str = "cpu") -> Partition:
        """The cached partition geometry of ``layout`` for this layer (the selection itself is per call)."""
        kind = self.kind
        chunk = self.config.chunk(kind)
        return self.cached_plan(("vmoba-partition", layout, kind, chunk, str(device)), lambda: build_partition(layout, kind, chunk, device))

    def plan(self, query: torch.Tensor, key: torch.Tensor, layout: VideoLayout, family: str) -> VMoBAPlan:
        """This call's VMoBA plan (selection + tiles) for original-order (B, H, N, D) post-RoPE q/k."""
        c = self.config
        return vmoba_plan(query, key, self.partition(layout, query.device), c.select_mode, c.threshold_type, c.threshold, c.topk_for(self.kind), c.block_size, c.group_queries)

    def selection(self, query: torch.Tensor, key: torch.Tensor, layout: VideoLayout) -> torch.Tensor:
        """This call's (B, H, S, C) block selection, without the tile plan (what ``backend="ranges"`` runs)."""
        c = self.config
        return vmoba_selection(query, key, self.partition(layout, query.device), c.select_mode, c.threshold_type, c.threshold, c.topk_for(self.kind))

    def attend(self, query, key, value, layout, key_valid, family):
        resolved = resolve_backend(self.config.backend, query, ranges=True)
        if resolved in ("ranges", "dense"):  # dense: SDPA with the selection's token mask (no tile plan needed)
            part = self.partition(layout, query.device)
            selection = self.selection(query, key, layout)
            return attention_with_selection(query, key, value, selection, part, key_valid, reference=resolved == "dense")
        return attention_with_plan(query, key, value, self.plan(query, key, layout, family), key_valid, self.config.backend)
