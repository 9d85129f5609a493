"""Motion direction of a shape that may wrap around the frame edges (long streams of the causal default model).

``prompt_accuracy``'s direction fits a line to the per-frame centroid: a shape that leaves on the right and comes
back on the left jumps back by a frame width, and a shape split over both edges has its centroid in the middle.
Here each axis is read as an angle (a torus): the centroid is the circular mean of the shape's pixels and each
frame-to-frame step is taken the short way round, so wrapping costs nothing.
"""

from __future__ import annotations

import numpy as np

from .prompt_accuracy import foreground_masks


def circular_centroids(masks: np.ndarray) -> np.ndarray:
    """(F, 2) circular-mean centroids (x, y) in pixels of (F, H, W) boolean masks; NaN for empty frames."""
    frames, height, width = masks.shape
    out = np.full((frames, 2), np.nan)
    for f, mask in enumerate(masks):
        ys, xs = np.nonzero(mask)
        if not len(xs):
            continue
        for axis, (coords, size) in enumerate(((xs + 0.5, width), (ys + 0.5, height))):
            angle = 2 * np.pi * coords / size
            out[f, axis] = (np.arctan2(np.sin(angle).mean(), np.cos(angle).mean()) % (2 * np.pi)) * size / (2 * np.pi)
    return out


def wrapped_steps(track: np.ndarray, height: int, width: int) -> np.ndarray:
    """(F-1, 2) frame-to-frame centroid steps (dx, dy), each taken the short way round the torus (NaN next to gaps)."""
    steps = np.diff(track, axis=0)
    size = np.array([width, height], dtype=np.float64)
    return (steps + size / 2) % size - size / 2


def wrapped_direction(video: np.ndarray, min_travel: float = 1.0, threshold: float = 0.3) -> str | None:
    """left/right/up/down of the summed wrap-aware steps of an (F, H, W, 3) video; None under ``min_travel`` px."""
    masks = foreground_masks(video, threshold)
    steps = wrapped_steps(circular_centroids(masks), masks.shape[1], masks.shape[2])
    valid = ~np.isnan(steps[:, 0])
    if not valid.any():
        return None
    travel = steps[valid].sum(axis=0)
    axis = int(np.argmax(np.abs(travel)))
    if abs(travel[axis]) < min_travel:
        return None
    return ("right" if travel[0] > 0 else "left") if axis == 0 else ("down" if travel[1] > 0 else "up")


__all__ = ["circular_centroids", "wrapped_direction", "wrapped_steps"]
