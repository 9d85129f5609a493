"""Shared helpers for timing attention: best-of-N wall time and synthetic q/k/v with video-like spatial structure."""

from __future__ import annotations

import math
import time
from typing import Callable, Mapping

import torch
import torch.nn.functional as F

from .layout import VideoLayout


def best_time(fn: Callable[[], object], repeats: int, device: torch.device) -> tuple[float, object]:
    """Best wall time of ``repeats`` calls after one warm-up call (FlexAttention compiles on its first), and the last output."""
    out = fn()
    best = math.inf
    for _ in range(repeats):
        seconds, out = _timed(fn, device)
        best = min(best, seconds)
    return best, out


def best_times_interleaved(calls: Mapping[str, Callable[[], object]], rounds: int, device: torch.device) -> dict[str, float]:
    """Best wall time of each call over ``rounds`` rounds that run every call in turn, after one warm-up call each:
    a machine that slows down mid-run slows every call alike."""
    for fn in calls.values():
        fn()
    best = dict.fromkeys(calls, math.inf)
    for _ in range(rounds):
        for name, fn in calls.items():
            best[name] = min(best[name], _timed(fn, device)[0])
    return best


def _timed(fn: Callable[[], object], device: torch.device) -> tuple[float, object]:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, out


def synthetic_qkv(layout: VideoLayout, heads: int, head_dim: int, smooth: float = 0.0, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """(1, heads, N, head_dim) q, k, v: ``smooth`` of a spatio-temporally smooth field on the video tokens (a coarse
    random grid upsampled trilinearly, so nearby tokens look alike, as in real video models) plus ``1 - smooth`` of iid noise."""
    g = torch.Generator().manual_seed(seed)
    f, h, w = layout.grid
    start, video = layout.video_start, layout.video_tokens
    out = []
    for _ in range(3):
        x = torch.randn(1, heads, layout.total_tokens, head_dim, generator=g)
        if smooth:
            coarse = torch.randn(1, heads * head_dim, max(f // 4, 1), max(h // 6, 1), max(w // 8, 1), generator=g)
            field = F.interpolate(coarse, size=(f, h, w), mode="trilinear", align_corners=True)
            field = field.view(heads, head_dim, -1).transpose(1, 2).unsqueeze(0)
            x[:, :, start : start + video] = smooth * field / field.std() + (1 - smooth) * x[:, :, start : start + video]
        out.append(x)
    return tuple(out)
