"""Prompt accuracy of generated shape videos: colour and motion direction read off the frames, checked against the caption.

Simple image statistics only: the background is the median border colour, the shape is every pixel far from it,
its colour is the nearest named colour to the shape's mean, and its direction is the dominant axis of the
least-squares slope of the per-frame centroid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..data.shapes import BACKGROUNDS, COLORS, DIRECTIONS, SHAPE_COLORS, SHAPES


def parse_caption(caption: str) -> dict[str, str | None]:
    """The colour, shape, direction and background a caption names (None where it names none)."""
    words = caption.lower().replace(",", " ").split()
    found: dict[str, str | None] = {"color": None, "shape": None, "direction": None, "background": None}
    for i, word in enumerate(words):
        if word in SHAPES and found["shape"] is None:
            found["shape"] = word
            if i > 0 and words[i - 1] in SHAPE_COLORS:
                found["color"] = words[i - 1]
        elif word in DIRECTIONS and i > 0 and words[i - 1] == "moving":
            found["direction"] = word
        elif word == "background" and i > 0 and words[i - 1] in BACKGROUNDS:
            found["background"] = words[i - 1]
    return found


def _frames(video) -> np.ndarray:
    v = np.asarray(video, dtype=np.float64)
    if v.ndim != 4 or v.shape[-1] != 3:
        raise ValueError(f"video must be an (F, H, W, 3) array in [0, 1], got shape {v.shape}")
    return v


def background_color(video: np.ndarray) -> np.ndarray:
    """The median RGB of the border pixels of every frame."""
    v = _frames(video)
    border = np.concatenate([v[:, 0], v[:, -1], v[:, :, 0], v[:, :, -1]], axis=1).reshape(-1, 3)
    return np.median(border, axis=0)


def foreground_masks(video: np.ndarray, threshold: float = 0.3) -> np.ndarray:
    """(F, H, W) bool: pixels whose RGB distance from the background colour exceeds ``threshold``."""
    v = _frames(video)
    return np.linalg.norm(v - background_color(v), axis=-1) > threshold


def nearest_color(rgb: np.ndarray, exclude: Sequence[str] = ()) -> str:
    """The shape colour name closest (Euclidean RGB) to ``rgb``, skipping ``exclude``."""
    names = [n for n in SHAPE_COLORS if n not in exclude]
    return min(names, key=lambda n: float(np.sum((np.asarray(COLORS[n]) - rgb) ** 2)))


def centroids(masks: np.ndarray) -> np.ndarray:
    """(F, 2) mask centroids (x, y) in pixels; NaN for empty frames."""
    out = np.full((masks.shape[0], 2), np.nan)
    for f, m in enumerate(masks):
        ys, xs = np.nonzero(m)
        if len(xs):
            out[f] = xs.mean() + 0.5, ys.mean() + 0.5
    return out


def motion_direction(track: np.ndarray, min_travel: float = 1.0) -> str | None:
    """left/right/up/down from the least-squares centroid slope; None if under ``min_travel`` px or < 2 points."""
    valid = ~np.isnan(track[:, 0])
    if valid.sum() < 2:
        return None
    t = np.nonzero(valid)[0].astype(np.float64)
    slope = np.polyfit(t, track[valid], 1)[0]  # (dx/dframe, dy/dframe)
    travel = slope * (len(track) - 1)
    axis = int(np.argmax(np.abs(travel)))
    if abs(travel[axis]) < min_travel:
        return None
    return ("right" if travel[0] > 0 else "left") if axis == 0 else ("down" if travel[1] > 0 else "up")


@dataclass(frozen=True)
class Recovered:
    """What the frames show: background and shape colour names and motion direction (None: nothing found)."""

    background: str
    color: str | None
    direction: str | None


def recover(video: np.ndarray, threshold: float = 0.3) -> Recovered:
    """Read the background, shape colour and motion direction off an (F, H, W, 3) video in [0, 1]."""
    v = _frames(video)
    bg = background_color(v)
    background = min(BACKGROUNDS, key=lambda n: float(np.sum((np.asarray(COLORS[n]) - bg) ** 2)))
    masks = np.linalg.norm(v - bg, axis=-1) > threshold
    if not masks.any():
        return Recovered(background, None, None)
    color = nearest_color(v[masks].mean(axis=0), exclude=(background,))
    return Recovered(background, color, motion_direction(centroids(masks)))


@dataclass(frozen=True)
class PromptAccuracy:
    """Share of videos whose colour, direction, and both, match their captions; ``recovered`` per video."""

    accuracy: float
    color: float
    direction: float
    recovered: tuple[Recovered, ...]


def prompt_accuracy(videos: Sequence[np.ndarray], captions: Sequence[str], threshold: float = 0.3) -> PromptAccuracy:
    """Compare what each video shows with what its caption asks for (colour and motion direction)."""
    if len(videos) != len(captions) or not len(videos):
        raise ValueError(f"videos and captions must be non-empty and of equal length, got {len(videos)} and {len(captions)}")
    wanted = [parse_caption(c) for c in captions]
    for caption, w in zip(captions, wanted):
        if w["color"] is None or w["direction"] is None:
            raise ValueError(f"caption must name a colour and a direction ('a red circle moving right ...'), got {caption!r}")
    got = tuple(recover(v, threshold) for v in videos)
    color = [g.color == w["color"] for g, w in zip(got, wanted)]
    direction = [g.direction == w["direction"] for g, w in zip(got, wanted)]
    both = [c and d for c, d in zip(color, direction)]
    return PromptAccuracy(float(np.mean(both)), float(np.mean(color)), float(np.mean(direction)), got)
