"""Fidelity of a video to a reference video: PSNR and SSIM (Gaussian window, per frame, averaged).

Videos are arrays (F, H, W, C) or (H, W, C) with values in [0, data_range]; sparse-vs-dense evaluation uses them.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def _pair(a, b) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"videos must have the same shape, got {a.shape} and {b.shape}")
    if a.ndim not in (3, 4):
        raise ValueError(f"videos must be (F, H, W, C) or (H, W, C) arrays, got shape {a.shape}")
    return (a[None] if a.ndim == 3 else a), (b[None] if b.ndim == 3 else b)


def psnr(video: np.ndarray, reference: np.ndarray, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB over the whole video (inf when identical)."""
    if data_range <= 0:
        raise ValueError(f"data_range must be > 0, got {data_range!r}")
    a, b = _pair(video, reference)
    mse = float(np.mean((a - b) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(data_range**2 / mse)


def gaussian_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    """The normalised 1-D Gaussian of SSIM's standard 11-tap, sigma 1.5 window."""
    if size < 1 or size % 2 == 0:
        raise ValueError(f"window size must be an odd int >= 1, got {size!r}")
    x = np.arange(size) - size // 2
    w = np.exp(-(x**2) / (2 * sigma**2))
    return w / w.sum()


def ssim_map(video: np.ndarray, reference: np.ndarray, data_range: float = 1.0, size: int = 11, sigma: float = 1.5) -> np.ndarray:
    """Per-pixel SSIM (F, H', W', C) over the valid window positions (no padding), Wang et al. 2004."""
    a, b = _pair(video, reference)
    f, h, w, c = a.shape
    if h < size or w < size:
        raise ValueError(f"frames of {h}x{w} are smaller than the SSIM window size {size}")
    g = torch.from_numpy(gaussian_window(size, sigma))
    kernel = (g[:, None] * g[None, :]).view(1, 1, size, size)

    def blur(x: np.ndarray) -> torch.Tensor:  # (F, H, W, C) -> (F, C, H', W')
        t = torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).reshape(f * c, 1, h, w)
        return torch.nn.functional.conv2d(t, kernel).view(f, c, h - size + 1, w - size + 1)

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return s.permute(0, 2, 3, 1).numpy()


def ssim(video: np.ndarray, reference: np.ndarray, data_range: float = 1.0, size: int = 11, sigma: float = 1.5) -> float:
    """Mean SSIM over frames, channels and window positions (1.0 when identical)."""
    return float(ssim_map(video, reference, data_range, size, sigma).mean())
