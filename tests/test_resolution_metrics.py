"""Resolution metrics (metrics/resolution.py) against naive loop computations of their definitions."""

import math

import numpy as np
import pytest

from vidattn.metrics.resolution import box_downsample, downsampled_fidelity, edge_band, edge_sharpness, shape_area


def _video(seed: int = 0, size: int = 16, frames: int = 3) -> np.ndarray:
    """A red square on black with noise, moving one pixel a frame."""
    rng = np.random.default_rng(seed)
    v = rng.uniform(0, 0.05, (frames, size, size, 3))
    r, k = size // 4, max(2, size // 3)
    for f in range(frames):
        v[f, r : r + k, r + f : r + f + k, 0] = 0.9 + rng.uniform(0, 0.1, (k, k))
    return v


def test_downsampled_psnr_matches_a_loop_over_boxes():
    big, base = _video(0, 24), _video(1, 12)
    small = np.zeros_like(base)
    for f in range(3):
        for y in range(12):
            for x in range(12):
                for c in range(3):
                    small[f, y, x, c] = (big[f, 2 * y, 2 * x, c] + big[f, 2 * y + 1, 2 * x, c]
                                         + big[f, 2 * y, 2 * x + 1, c] + big[f, 2 * y + 1, 2 * x + 1, c]) / 4
    mse = sum(float((small[i] - base[i]).flat[j] ** 2) for i in range(3) for j in range(small[i].size)) / small.size
    assert np.allclose(box_downsample(big, (12, 12)), small)
    psnr_value, ssim_value = downsampled_fidelity(big, base)
    assert psnr_value == pytest.approx(10 * math.log10(1 / mse), rel=1e-9)
    assert -1 <= ssim_value <= 1


def test_downsampled_fidelity_of_a_nearest_upscale_is_perfect():
    base = _video(2, 12)
    up = base.repeat(2, axis=1).repeat(2, axis=2)
    psnr_value, ssim_value = downsampled_fidelity(up, base)
    assert psnr_value == math.inf and ssim_value == pytest.approx(1.0)


def test_box_downsample_refuses_sizes_that_do_not_divide():
    with pytest.raises(ValueError, match="size"):
        box_downsample(_video(0, 16), (6, 6))
    with pytest.raises(ValueError, match="same whole factor"):
        box_downsample(_video(0, 16), (8, 4))


def _naive_sharpness(video: np.ndarray, threshold: float = 0.3) -> float:
    frames, h, w, _ = video.shape
    border = np.concatenate([video[:, 0], video[:, -1], video[:, :, 0], video[:, :, -1]], axis=1).reshape(-1, 3)
    bg = np.median(border, axis=0)
    per_frame = []
    for f in range(frames):
        inside = [[float(np.sqrt(((video[f, y, x] - bg) ** 2).sum())) > threshold for x in range(w)] for y in range(h)]
        values = []
        for y in range(h):
            for x in range(w):
                near = [(y + dy, x + dx) for dy, dx in ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1)) if 0 <= y + dy < h and 0 <= x + dx < w]
                if any(inside[a][b] for a, b in near) and any(not inside[a][b] for a, b in near):
                    def diff(axis):
                        lo = (y, max(x - 1, 0)) if axis else (max(y - 1, 0), x)
                        hi = (y, min(x + 1, w - 1)) if axis else (min(y + 1, h - 1), x)
                        span = hi[axis] - lo[axis]
                        return (video[f, hi[0], hi[1]] - video[f, lo[0], lo[1]]) / span
                    values.append(float(np.sqrt((diff(0) ** 2 + diff(1) ** 2).sum())))
        if values:
            per_frame.append(np.mean(values))
    return float(np.mean(per_frame))


def test_edge_sharpness_matches_a_loop_over_pixels():
    video = _video(3, 16)
    value, frames = edge_sharpness(video)
    assert frames == 3
    assert value == pytest.approx(_naive_sharpness(video), rel=1e-9)


def test_a_step_edge_is_sharper_than_its_blurred_version():
    step = np.zeros((1, 32, 32, 3))
    step[0, 8:24, 8:24, 0] = 1.0
    blurred = step.copy()
    for axis in (1, 2):  # [1, 2, 1] / 4 blur twice per axis: the edge ramps over ~4 pixels
        for _ in range(2):
            blurred = (np.roll(blurred, 1, axis) + 2 * blurred + np.roll(blurred, -1, axis)) / 4
    sharp, _ = edge_sharpness(step)
    soft, _ = edge_sharpness(blurred)
    band = edge_band(step)[0]
    assert band.sum() == 60 + 64  # the ring inside the 16x16 square and the pixels outside that touch a side
    # central differences over a one-pixel step of a unit channel: 0.5; the square's 4 corners: sqrt(0.5^2 + 0.5^2)
    assert sharp == pytest.approx((120 * 0.5 + 4 * math.sqrt(0.5)) / 124)
    assert soft < 0.7 * sharp


def test_edge_sharpness_without_a_shape_is_nan():
    value, frames = edge_sharpness(np.zeros((2, 8, 8, 3)))
    assert math.isnan(value) and frames == 0


def test_shape_area_is_the_share_of_shape_pixels_at_any_size():
    small = np.zeros((2, 16, 16, 3))
    small[:, 4:8, 4:12, 2] = 1.0  # 32 of 256 pixels
    big = small.repeat(2, axis=1).repeat(2, axis=2)
    assert shape_area(small) == pytest.approx(32 / 256) and shape_area(big) == pytest.approx(32 / 256)
