"""Temporal consistency of one-object videos: how much of each frame-to-frame change the object's own motion explains.

``warping_error``: frame t is shifted by the (rounded) displacement of the shape's centroid from t to t+1, the
vacated border filled with the background colour, and compared with frame t+1 (mean squared difference, pixels in
[0, 1]). A rigidly moving shape scores 0 whatever its speed; flicker, shape or colour changes, blur and jumps that
the centroid does not follow all score > 0. Pairs where either frame shows no shape use a zero shift.
"""

from __future__ import annotations

import numpy as np

from .motion import _as_unit_float
from .prompt_accuracy import background_color, centroids, foreground_masks


def shift_frame(frame: np.ndarray, dx: int, dy: int, fill: np.ndarray) -> np.ndarray:
    """``frame`` (H, W, C) moved by (dx, dy) whole pixels (right, down positive), uncovered pixels set to ``fill``."""
    height, width = frame.shape[:2]
    out = np.empty_like(frame)
    out[:] = fill
    ys, xs = slice(max(dy, 0), height + min(dy, 0)), slice(max(dx, 0), width + min(dx, 0))
    src_y, src_x = slice(max(-dy, 0), height - max(dy, 0)), slice(max(-dx, 0), width - max(dx, 0))
    if ys.start < ys.stop and xs.start < xs.stop:
        out[ys, xs] = frame[src_y, src_x]
    return out


def pair_shifts(video: np.ndarray, threshold: float = 0.3) -> np.ndarray:
    """(F-1, 2) integer (dx, dy) centroid displacement of the shape between consecutive frames (0 where it is missing)."""
    track = centroids(foreground_masks(video, threshold))
    step = np.diff(track, axis=0)
    step[np.isnan(step).any(axis=1)] = 0.0
    return np.round(step).astype(int)


def warping_error(frames, threshold: float = 0.3) -> float:
    """Mean over consecutive pairs of mean((x[t+1] - shift(x[t], centroid motion))^2); 0 for rigid motion.

    ``frames``: (F, H, W, 3), F >= 2, uint8 or float in [0, 1].
    """
    video = _as_unit_float(frames)
    if video.ndim != 4 or video.shape[0] < 2 or video.shape[-1] != 3:
        raise ValueError(f"frames must have shape (F, H, W, 3) with F >= 2, got {video.shape}")
    fill = background_color(video)
    errors = [np.mean((video[t + 1] - shift_frame(video[t], int(dx), int(dy), fill)) ** 2)
              for t, (dx, dy) in enumerate(pair_shifts(video, threshold))]
    return float(np.mean(errors))


def centroid_travel(frames, threshold: float = 0.3) -> float:
    """Pixels between the shape's centroid in the first and the last frame that show it (0 if fewer than two do)."""
    track = centroids(foreground_masks(_as_unit_float(frames), threshold))
    valid = track[~np.isnan(track[:, 0])]
    return float(np.linalg.norm(valid[-1] - valid[0])) if len(valid) >= 2 else 0.0
