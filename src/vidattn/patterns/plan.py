"""BlockPlan: the contract between patterns and kernels — which (query tile, key tile) pairs to compute."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

# (b, h, q_idx, kv_idx) -> bool tensor. Written with indexing ops only, so that it runs both inside
# FlexAttention's vmap (scalar tensors) and on broadcast index tensors (gather and dense kernels).
TokenMask = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True, eq=False)
class BlockPlan:
    """Tiles of ``block_size x block_size`` tokens to compute for a sequence of ``seq_len`` tokens.

    ``tiles`` is boolean ``(B or 1, H or 1, Qb, Kb)`` with ``Qb = Kb = ceil(seq_len / block_size)``.
    ``full`` (same shape, optional) marks tiles where every token pair is allowed, so kernels may skip
    ``token_mask`` there. ``token_mask`` refines the remaining tiles at token level. Keys past ``seq_len``
    (padding to the block size) are always masked by the kernels, never zero-filled into the softmax.
    ``real_keys`` (optional bool ``(seq_len,)``) marks padding inside the sequence (False: never attended, e.g.
    a 3D tile's padding); kernels fold it into their key mask, and tiles holding such keys are never full. Those
    positions' query rows are not part of the result (the flex kernel may skip them: zeros).
    ``token_mask_within_tiles``: the token mask allows no pair outside a kept tile (it is the whole rule), so a
    kernel evaluating it may skip the tile lookup.
    """

    tiles: torch.Tensor
    block_size: int
    seq_len: int
    full: torch.Tensor | None = None
    token_mask: TokenMask | None = None
    real_keys: torch.Tensor | None = None
    token_mask_within_tiles: bool = False
    memo: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        blocks = -(-self.seq_len // self.block_size)
        if self.tiles.dtype != torch.bool or self.tiles.ndim != 4 or self.tiles.shape[-2:] != (blocks, blocks):
            raise ValueError(
                f"BlockPlan.tiles must be a bool tensor (B|1, H|1, {blocks}, {blocks}); got "
                f"{self.tiles.dtype} {tuple(self.tiles.shape)}"
            )
        if self.full is not None and self.full.shape != self.tiles.shape:
            raise ValueError("BlockPlan.full must have the shape of BlockPlan.tiles")
        if self.real_keys is not None and (self.real_keys.dtype != torch.bool or tuple(self.real_keys.shape) != (self.seq_len,)):
            raise ValueError(f"BlockPlan.real_keys must be a bool tensor ({self.seq_len},); got {self.real_keys.dtype} {tuple(self.real_keys.shape)}")

    @property
    def num_blocks(self) -> int:
        return self.tiles.shape[-1]

    @property
    def tile_density(self) -> float:
        """Fraction of tiles computed (averaged over batch and heads): the kernel's share of dense work."""
        return self.tiles.float().mean().item()

    @property
    def keeps_everything(self) -> bool:
        """Every tile kept, no token mask, no padding key: the plan is dense attention (checked once, memoised)."""
        if "keeps_everything" not in self.memo:
            self.memo["keeps_everything"] = self.token_mask is None and self.real_keys is None and bool(self.tiles.all())
        return self.memo["keeps_everything"]

    @property
    def sparsity(self) -> float:
        return 1.0 - self.tile_density

    def flop_share(self, tokens: int | None = None) -> float:
        """Share of dense attention FLOPs on ``tokens`` real tokens (default ``seq_len``) that the tiles cost.

        Every computed tile costs ``block_size**2`` query-key pairs, padding included; dense attention costs
        ``tokens**2``. This is the unit of every method's ``density`` (Monarch's too).
        """
        tokens = self.seq_len if tokens is None else tokens
        return self.tile_density * (self.num_blocks * self.block_size) ** 2 / tokens**2

    @property
    def density(self) -> float:
        """:meth:`flop_share` on the plan's own sequence: the method contract's ``density``."""
        return self.flop_share()

    def to(self, device: torch.device) -> "BlockPlan":
        full = None if self.full is None else self.full.to(device)
        real = None if self.real_keys is None else self.real_keys.to(device)
        return BlockPlan(self.tiles.to(device), self.block_size, self.seq_len, full, self.token_mask, real, self.token_mask_within_tiles)


def full_plan(seq_len: int, block_size: int, device: torch.device | str = "cpu") -> BlockPlan:
    """Every tile computed: the plan of dense attention."""
    blocks = -(-seq_len // block_size)
    tiles = torch.ones(1, 1, blocks, blocks, dtype=torch.bool, device=device)
    return BlockPlan(tiles, block_size, seq_len, full=tiles)
