"""A flow-free motion metric: mean squared difference between consecutive frames, on pixels in [0, 1].

It rises with any temporal change (object motion, camera motion, flicker, noise), so compare runs on the same
seed, prompt and model only; it is not optical flow and cannot tell coherent motion from jitter.
"""

from __future__ import annotations

import numpy as np
import torch


def _as_unit_float(frames) -> np.ndarray:
    """(F, H, W, C) uint8 (0..255) or float (0..1) array or tensor -> float64 numpy in [0, 1] units."""
    if torch.is_tensor(frames):
        frames = frames.detach().cpu().numpy()
    array = np.asarray(frames)
    if array.dtype == np.uint8:
        return array.astype(np.float64) / 255.0
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"frames must be uint8 (0..255) or float (0..1), got dtype {array.dtype}")
    return array.astype(np.float64)


def frame_difference_energy(frames) -> float:
    """Mean over consecutive frame pairs and all pixels/channels of (x[t+1] - x[t])^2; 0 for a static video.

    ``frames``: (F, H, W, C) with F >= 2, uint8 in 0..255 or float in 0..1 (numpy array or torch tensor).
    """
    array = _as_unit_float(frames)
    if array.ndim != 4 or array.shape[0] < 2:
        raise ValueError(f"frames must have shape (F, H, W, C) with F >= 2, got {array.shape}")
    return float(np.mean(np.diff(array, axis=0) ** 2))


def batch_frame_difference_energy(videos) -> list[float]:
    """:func:`frame_difference_energy` of each video in a (B, F, H, W, C) batch (e.g. ``pipe(...).frames``)."""
    array = _as_unit_float(videos)
    if array.ndim != 5:
        raise ValueError(f"videos must have shape (B, F, H, W, C), got {array.shape}")
    return [frame_difference_energy(video) for video in array]
