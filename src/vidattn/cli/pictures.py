"""Pictures of attention masks a person can read: a tile plan with frame boundaries, axes in tokens and frames and a
legend; a partition of the video grid as coloured frames. Drawn with matplotlib (the ``plot`` extra)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..atomic import replace_synced, temp_name
from ..layout import VideoLayout
from ..patterns.plan import BlockPlan

SKIPPED, PARTIAL, KEPT = 0, 1, 2
TILE_COLOURS = ("#202020", "#f0a030", "#ffffff")
FRAME_LINE = "#3fa7ff"
MAX_FRAME_LINES = 40


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def tile_classes(plan: BlockPlan) -> np.ndarray:
    """(Qb, Kb) int: 2 kept (every token pair computed), 1 partial (token mask inside the tile), 0 skipped."""
    tiles = plan.tiles[0, 0].cpu()
    full = plan.full[0, 0].cpu() if plan.full is not None else torch.zeros_like(tiles)
    classes = torch.where(tiles, torch.where(full & tiles, KEPT, PARTIAL), SKIPPED)
    return classes.numpy()


def settings_text(method: str, settings: dict, width: int = 100) -> str:
    """``method: key=value, ...`` wrapped to lines of about ``width`` characters (a figure title)."""
    import textwrap

    return textwrap.fill(f"{method}: " + ", ".join(f"{k}={v}" for k, v in settings.items()), width=width, break_long_words=False)


def frame_boundaries(layout: VideoLayout, max_lines: int = MAX_FRAME_LINES) -> tuple[list[int], int]:
    """Token positions of frame starts (after the first) drawn as lines, and the frame step between lines."""
    step = max(1, -(-layout.frames // max_lines))
    return [layout.video_start + f * layout.tokens_per_frame for f in range(step, layout.frames, step)], step


def mask_figure(plan: BlockPlan, layout: VideoLayout, method: str, settings: dict, frame_lines: bool = True, note: str = ""):
    """The plan's (query tile, key tile) grid: kept / partial / skipped tiles, frame boundaries (when the token order
    keeps frames in place), token and frame axes; ``note`` is added to the title."""
    plt = _pyplot()
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    classes = tile_classes(plan)
    extent_tokens = plan.num_blocks * plan.block_size
    fig, ax = plt.subplots(figsize=(7.5, 7.2))
    ax.imshow(classes, cmap=ListedColormap(TILE_COLOURS), vmin=0, vmax=2, interpolation="nearest",
              extent=(0, extent_tokens, extent_tokens, 0))
    ax.set_xlabel("key token")
    ax.set_ylabel("query token")
    step = 1
    if frame_lines:
        lines, step = frame_boundaries(layout)
        for pos in lines:
            ax.axhline(pos, color=FRAME_LINE, linewidth=0.6)
            ax.axvline(pos, color=FRAME_LINE, linewidth=0.6)
        to_frame = lambda t: (np.asarray(t, dtype=float) - layout.video_start) / layout.tokens_per_frame  # noqa: E731
        to_token = lambda f: np.asarray(f, dtype=float) * layout.tokens_per_frame + layout.video_start  # noqa: E731
        from matplotlib.ticker import MaxNLocator

        top = ax.secondary_xaxis("top", functions=(to_frame, to_token))
        right = ax.secondary_yaxis("right", functions=(to_frame, to_token))
        top.set_xlabel("key frame (start)")
        right.set_ylabel("query frame (start)")
        top.xaxis.set_major_locator(MaxNLocator(integer=True))
        right.yaxis.set_major_locator(MaxNLocator(integer=True))
    counts = [int((classes == c).sum()) for c in (KEPT, PARTIAL, SKIPPED)]
    total = classes.size
    handles = [Patch(facecolor=TILE_COLOURS[KEPT], edgecolor="black", label=f"kept: {counts[0]:,} tiles ({counts[0] / total:.1%})"),
               Patch(facecolor=TILE_COLOURS[PARTIAL], edgecolor="black", label=f"partial (token mask): {counts[1]:,} ({counts[1] / total:.1%})"),
               Patch(facecolor=TILE_COLOURS[SKIPPED], edgecolor="black", label=f"skipped: {counts[2]:,} ({counts[2] / total:.1%})")]
    if frame_lines:
        handles.append(plt.Line2D([], [], color=FRAME_LINE, label="frame boundary" + (f" (every {step} frames)" if step > 1 else "")))
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.09), ncol=2, fontsize=8, frameon=False)
    order = f"; {note}" if note else ""
    ax.set_title(f"{settings_text(method, settings)}\ngrid {layout} ({layout.total_tokens:,} tokens), "
                 f"{plan.num_blocks}x{plan.num_blocks} tiles of {plan.block_size}, density {plan.tile_density:.3f}{order}", fontsize=9)
    fig.tight_layout()
    return fig


def partition_figure(maps: dict[str, torch.Tensor], layout: VideoLayout, method: str, settings: dict, max_frames: int = 6):
    """One row per partition (1D, 2D, 3D), one panel per frame of its (F, H, W) block-id map, one colour per block."""
    plt = _pyplot()
    kinds = list(maps)
    frames = min(max_frames, layout.frames)
    fig, axes = plt.subplots(len(kinds), frames, figsize=(1.9 * frames + 0.6, 1.9 * len(kinds) + 0.9), squeeze=False)
    rng = np.random.default_rng(0)
    for row, kind in enumerate(kinds):
        ids = maps[kind].cpu().numpy()
        palette = rng.uniform(0.15, 1.0, size=(int(ids.max()) + 1, 3))
        for col in range(frames):
            ax = axes[row][col]
            ax.imshow(palette[ids[col]], interpolation="nearest")
            ax.set_title(f"frame {col}", fontsize=8)
            ax.tick_params(labelsize=6)
            if col == 0:
                ax.set_ylabel(f"{kind.upper()}: {int(ids.max()) + 1} blocks\ntoken row", fontsize=8)
            if row == len(kinds) - 1:
                ax.set_xlabel("token column", fontsize=8)
    fig.suptitle(f"{settings_text(method, settings)}\ngrid {layout}: the three partitions (one colour per block) of the "
                 f"first {frames} frames", fontsize=9)
    fig.tight_layout()
    return fig


def save_figure(fig, path: str | Path, dpi: int = 110) -> None:
    """Write ``fig`` as PNG through a temporary name renamed into place, then close it."""
    plt = _pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    try:
        fig.savefig(tmp, dpi=dpi, format="png")
        replace_synced(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
