"""3D sliding-window (FreeSwim inward window) attention as a diffusers processor (Wan, HunyuanVideo, CogVideoX)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..checks import check_int, check_number
from ..kernels import BACKENDS, block_sparse_attention
from ..kernels.block_sparse import runs_dense
from ..kernels.dense import key_masked_attention
from ..kernels.reordered import block_sparse_attention_in_order
from ..kernels.window_rows import RowBands, row_band_attention, row_bands, same_key_frame_count
from ..layout import VideoLayout
from ..patterns.window import WindowPattern, WindowPlan, window_extents, window_plan
from .base import MethodAttnProcessor
from .config import MethodConfig


def entropy_scale_factor(train_tokens: int, infer_tokens: int) -> float:
    """Entropy-style attention-scale factor ``sqrt(log(infer_tokens) / log(train_tokens))`` (times 1/sqrt(d))."""
    check_int("train_tokens", train_tokens, 2)
    check_int("infer_tokens", infer_tokens, 2)
    return math.sqrt(math.log(infer_tokens) / math.log(train_tokens))


# FreeSwim's code: a fixed factor with the inference token count hard-coded as twice Wan's 30x52 training grid.
FREESWIM_SCALE_FACTOR = entropy_scale_factor(30 * 52, 30 * 52 * 2)  # 1.0461...
# ``rows`` (kernels/window_rows.py, CPU) runs token-level windows without a tile plan; ``auto`` takes it on the CPU.
WINDOW_BACKENDS = (*BACKENDS, "rows")
# FreeSwim's half-widths for Wan 2.1 1.3B (base 480x832 -> 30x52 tokens): all frames, 15 rows, 26 cols.
FREESWIM_WINDOW = (None, 15, 26)


@dataclass(frozen=True)
class WindowConfig(MethodConfig):
    """Window attention (FreeSwim, https://arxiv.org/abs/2511.14712, local branch); defaults are FreeSwim's (all frames x 31 rows x 53 cols, inward, scale 1.046).

    ``window`` gives per-axis half-widths (frames, rows, cols), ``size`` full window sizes instead (give at most
    one); an entry None or -1 is the whole axis. ``scale_factor`` multiplies the default 1/sqrt(head_dim)
    softmax scale (1.0 = plain attention). ``tile`` reorders tokens into 3D tiles (frames, rows, cols) for the
    kernel; None keeps the natural frame-major order; ``"auto"`` takes whichever of the natural order and a
    one-frame brick of ``block_size`` tokens (1x8x16 for 128) computes fewer tiles on the call's grid. The result
    is the same either way; only the kernel's schedule changes (``backend="rows"``, which ``auto`` takes on the CPU
    for token-level windows, always reads the natural order). ``tile_aligned=True`` is sliding tile attention:
    ``window``/``size`` then count whole tiles of shape ``tile`` ("auto": the brick), every kept tile is computed
    whole and mask-free; without ``window``/``size`` it takes FreeSwim's window rounded up to whole tiles. A
    window at least as long as its axis covers the axis.
    """

    window: tuple | None = None
    size: tuple | None = None
    inward: bool = True
    dilation: int | tuple[int, int, int] = 1
    scale_factor: float = FREESWIM_SCALE_FACTOR
    block_size: int = 128
    tile: tuple[int, int, int] | str | None = "auto"
    tile_aligned: bool = False
    backends: ClassVar[tuple[str, ...]] = WINDOW_BACKENDS

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("window", "size"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        if isinstance(self.dilation, list):
            object.__setattr__(self, "dilation", tuple(self.dilation))
        if isinstance(self.tile, list):
            object.__setattr__(self, "tile", tuple(self.tile))
        for tile in self.candidate_tiles():  # validates window/size, dilation, inward, block_size, tile
            self.pattern(tile)
        check_number("scale_factor", self.scale_factor, 0, low_open=True, note="1.0 = default 1/sqrt(d) scale")

    def extents(self, tile: tuple[int, int, int] | None = None):
        """Per-axis (lo, hi) or None (whole axis); in tiles of ``tile`` when ``tile_aligned``."""
        if self.window is not None or self.size is not None:
            return window_extents(self.window, self.size)
        if not self.tile_aligned or tile is None:
            return window_extents(FREESWIM_WINDOW)
        sizes = [None if d is None else -(-(2 * d + 1) // t) for d, t in zip(FREESWIM_WINDOW, tile)]
        return window_extents(size=sizes)

    def brick(self) -> tuple[int, int, int] | None:
        """The one-frame brick of ``block_size`` tokens that ``tile="auto"`` tries (None if not a power of two)."""
        size = self.block_size if isinstance(self.block_size, int) else 0
        bits = size.bit_length() - 1
        if size < 1 or size != 1 << bits:
            return None  # no brick of exactly block_size tokens: keep the natural order
        return (1, 1 << (bits // 2), 1 << (bits - bits // 2))

    def candidate_tiles(self) -> list[tuple[int, int, int] | None]:
        """Token orders to consider: the given ``tile``, or for ``"auto"`` the natural order and the brick."""
        if isinstance(self.tile, str):
            if self.tile != "auto":
                raise ValueError(f"tile must be 'auto', None or three ints (frames, rows, cols), got {self.tile!r}")
            if self.tile_aligned:
                if self.brick() is None:
                    raise ValueError(f"tile_aligned=True with tile='auto' needs a power-of-two block_size, got {self.block_size!r}; give tile=(frames, rows, cols)")
                return [self.brick()]
            return [None] if self.brick() is None else [None, self.brick()]
        return [self.tile]

    def pattern(self, tile: tuple[int, int, int] | None | str = "config") -> WindowPattern:
        """The pattern with token order ``tile`` (default: the config's first candidate)."""
        tile = self.candidate_tiles()[0] if tile == "config" else tile
        extents = self.extents(tile)  # type: ignore[arg-type]
        return WindowPattern(extents, self.dilation, self.inward, self.block_size, tile, self.tile_aligned)  # type: ignore[arg-type]


def window_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    wplan: WindowPlan,
    key_valid: torch.Tensor | None = None,
    backend: str = "auto",
    scale: float | None = None,
) -> torch.Tensor:
    """Attention of original-order (B, H, N, D) tensors under a window plan (reordered into tiles if it says so).

    ``backend="rows"`` (and ``auto`` on the CPU where it applies) runs token-level windows in bands of query rows
    (kernels/window_rows.py) in the natural order; the other backends run the plan's tiles. ``auto`` runs a window
    that covers the grid as what it is, dense SDPA, and a short sequence on the CPU as SDPA with the plan's mask
    (kernels.block_sparse.runs_dense)."""
    if backend not in WINDOW_BACKENDS:
        raise ValueError(f"backend must be one of {WINDOW_BACKENDS}, got {backend!r}")
    if backend == "auto" and wplan.covers_grid:
        return key_masked_attention(query, key, value, key_valid, scale)
    if backend == "rows" or (backend == "auto" and not runs_dense(wplan.plan, query) and _rows_apply(query, wplan, key_valid)):
        return row_band_attention(query, key, value, row_schedule(wplan), wplan.layout, key_valid, scale)
    if wplan.order is None:
        return block_sparse_attention(query, key, value, wplan.plan, key_valid, backend=backend, scale=scale)
    return block_sparse_attention_in_order(
        query, key, value, wplan.plan, wplan.order, padded=True, key_valid=key_valid, backend=backend, scale=scale
    )


def row_schedule(wplan: WindowPlan) -> RowBands:
    """The ``rows`` backend's band schedule of a token-level window plan, memoised on the plan."""
    if wplan.pattern.tile_aligned:
        raise ValueError("backend='rows' runs token-level windows; tile_aligned=True (sliding tile attention) runs on 'auto', 'groups' or 'flex'")
    if "rows" not in wplan.memo:
        wplan.memo["rows"] = row_bands(*wplan.axis_tables())
    return wplan.memo["rows"]


def _rows_apply(query: torch.Tensor, wplan: WindowPlan, key_valid: torch.Tensor | None) -> bool:
    """``auto``'s choice of ``rows``: the CPU, a token-level window whose query frames all see the same number of key
    frames, and no masked video key."""
    if query.device.type != "cpu" or wplan.pattern.tile_aligned:
        return False
    if "rows_apply" not in wplan.memo:
        wplan.memo["rows_apply"] = same_key_frame_count(wplan.axis_tables()[0])
    if not wplan.memo["rows_apply"]:
        return False
    return key_valid is None or bool(key_valid[:, wplan.layout.video_slice].all())


class WindowAttnProcessor(MethodAttnProcessor):
    """Drop-in window attention: ``transformer.set_attn_processor(WindowAttnProcessor(window=(3, 15, 26), inward=True))``."""

    config_class = WindowConfig

    def window_plan(self, layout: VideoLayout, device: torch.device | str = "cpu") -> WindowPlan:
        """The cached window plan (with the token order) for ``layout``; ``tile="auto"`` keeps the one of fewer tiles."""
        patterns = [self.config.pattern(tile) for tile in self.config.candidate_tiles()]

        def build() -> WindowPlan:
            plans = [window_plan(layout, pattern, device) for pattern in patterns]
            return min(plans, key=lambda wplan: int(wplan.plan.tiles.sum()))  # ties: the natural order

        return self.cached_plan(("window", layout, tuple(patterns), str(device)), build)

    def plan(self, query: torch.Tensor, key: torch.Tensor, layout: VideoLayout, family: str) -> WindowPlan:
        """The window plan for ``layout``; ``.plan`` is the block plan in the kernel's token order (what ``vidattn mask`` draws)."""
        return self.window_plan(layout, query.device)

    def attend(self, query, key, value, layout, key_valid, family):
        scale = self.config.scale_factor / math.sqrt(query.shape[-1])
        return window_attention(query, key, value, self.window_plan(layout, query.device), key_valid, self.config.backend, scale)
