"""Metrics for a video made at a higher resolution than a base video: content kept (fidelity after box
down-sampling to the base size) and edge sharpness (gradient magnitude on the shape's edge band).

Videos are (F, H, W, 3) float arrays in [0, 1]; the shapes data (one shape on a plain background) is assumed by
:func:`edge_sharpness`, which finds the shape as :mod:`vidattn.metrics.prompt_accuracy` does.
"""

from __future__ import annotations

import math

import numpy as np

from .fidelity import psnr, ssim
from .prompt_accuracy import foreground_masks


def _video(video, name: str = "video") -> np.ndarray:
    v = np.asarray(video, dtype=np.float64)
    if v.ndim != 4 or v.shape[-1] != 3:
        raise ValueError(f"{name} must be an (F, H, W, 3) array in [0, 1], got shape {v.shape}")
    return v


def box_downsample(video: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Every frame averaged over ``factor x factor`` pixel boxes to ``size`` = (height, width); the factor must be a
    whole number, the same on both axes (128x128 -> 64x64 averages 2x2 boxes)."""
    v = _video(video)
    f, h, w, c = v.shape
    if not (isinstance(size, (tuple, list)) and len(size) == 2 and all(isinstance(s, int) and s > 0 for s in size)):
        raise ValueError(f"size must be (height, width) in pixels, got {size!r}")
    if h % size[0] or w % size[1] or h // size[0] != w // size[1]:
        raise ValueError(f"size {tuple(size)} must divide the frames' {h}x{w} by the same whole factor on both axes")
    k = h // size[0]
    return v.reshape(f, size[0], k, size[1], k, c).mean(axis=(2, 4))


def downsampled_fidelity(video: np.ndarray, base: np.ndarray) -> tuple[float, float]:
    """(PSNR dB, SSIM) of ``video`` box-down-sampled to ``base``'s size against ``base``: how much of the base
    video's content a higher-resolution version keeps."""
    b = _video(base, "base")
    if len(_video(video)) != len(b):
        raise ValueError(f"video and base must have the same number of frames, got {len(video)} and {len(b)}")
    small = box_downsample(video, b.shape[1:3])
    return psnr(small, b), ssim(small, b)


def shape_area(video: np.ndarray, threshold: float = 0.3) -> float:
    """The shape's mean share of the frame (foreground pixels, as :mod:`vidattn.metrics.prompt_accuracy` finds them):
    a resolution-free size, so a 2x video that redraws the shape smaller shows a lower value than its base."""
    return float(foreground_masks(_video(video), threshold).mean())


def _shift_or(mask: np.ndarray) -> np.ndarray:
    """A mask dilated by one pixel (3x3 cross) within each frame."""
    out = mask.copy()
    out[:, 1:] |= mask[:, :-1]
    out[:, :-1] |= mask[:, 1:]
    out[:, :, 1:] |= mask[:, :, :-1]
    out[:, :, :-1] |= mask[:, :, 1:]
    return out


def edge_band(video: np.ndarray, threshold: float = 0.3) -> np.ndarray:
    """(F, H, W) bool: pixels within one pixel (3x3 cross) of the shape's boundary, the shape being every pixel
    farther than ``threshold`` (RGB distance) from the background (median border colour)."""
    mask = foreground_masks(_video(video), threshold)
    return _shift_or(mask) & _shift_or(~mask)  # the dilated shape minus the eroded shape


def gradient_magnitude(video: np.ndarray) -> np.ndarray:
    """(F, H, W): RGB norm of the central-difference gradient (one-sided at the borders), per pixel of the grid."""
    v = _video(video)
    gy = np.gradient(v, axis=1)
    gx = np.gradient(v, axis=2)
    return np.sqrt((gx**2 + gy**2).sum(axis=-1))


def edge_sharpness(video: np.ndarray, threshold: float = 0.3) -> tuple[float, int]:
    """Mean gradient magnitude (RGB units per pixel) over the shape's edge band, averaged over the frames that show
    a shape, and how many frames that is (NaN, 0 when none does). A step edge from black to a pure colour scores
    about 0.5 (central differences over a one-pixel step); the same edge blurred over r pixels about 1/r of it.
    Compare videos of the same size only: the value is per pixel."""
    v = _video(video)
    band = edge_band(v, threshold)
    grad = gradient_magnitude(v)
    per_frame = [float(g[b].mean()) for g, b in zip(grad, band) if b.any()]
    return (float(np.mean(per_frame)) if per_frame else math.nan), len(per_frame)
