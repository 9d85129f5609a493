"""Pictures of attention masks: a tile plan as a grey image, a partition of the video grid as coloured frames."""

from __future__ import annotations

import numpy as np
import torch


def tiles_picture(tiles: torch.Tensor, size: int = 512) -> np.ndarray:
    """(Qb, Kb) bool tiles -> uint8 image, computed tiles white, skipped tiles dark, upscaled to about ``size`` px."""
    tiles = tiles.cpu().numpy()
    image = np.where(tiles, 255, 30).astype(np.uint8)
    scale = max(1, size // tiles.shape[0])
    return image.repeat(scale, 0).repeat(scale, 1)


def partition_picture(block_ids: torch.Tensor, max_frames: int = 8, cell: int = 6) -> np.ndarray:
    """(F, H, W) block-id map -> RGB strip of the first ``max_frames`` frames, one colour per block."""
    ids = block_ids[:max_frames].cpu().numpy()
    rng = np.random.default_rng(0)
    palette = rng.integers(40, 255, size=(int(ids.max()) + 1, 3), dtype=np.uint8)
    frames = [palette[f].repeat(cell, 0).repeat(cell, 1) for f in ids]
    gap = np.zeros((frames[0].shape[0], cell, 3), dtype=np.uint8)
    return np.concatenate([x for f in frames for x in (f, gap)][:-1], axis=1)


def stack_rows(images: list[np.ndarray], gap: int = 8) -> np.ndarray:
    """Stack RGB images vertically, left-aligned, with a black gap between them."""
    width = max(image.shape[1] for image in images)
    rows = []
    for image in images:
        row = np.zeros((image.shape[0] + gap, width, 3), dtype=np.uint8)
        row[: image.shape[0], : image.shape[1]] = image
        rows.append(row)
    return np.concatenate(rows, axis=0)[:-gap]
