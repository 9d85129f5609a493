"""Procedural text-to-video data: one coloured shape moving in a straight line on a plain background.

Every sample is a pure function of (seed, index), so the dataset is reproducible without files; captions use
only the words of the default model's tokenizer ("a red circle moving right on a black background").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

COLORS: dict[str, tuple[float, float, float]] = {
    "red": (1.0, 0.0, 0.0),
    "green": (0.0, 1.0, 0.0),
    "blue": (0.0, 0.0, 1.0),
    "yellow": (1.0, 1.0, 0.0),
    "white": (1.0, 1.0, 1.0),
    "black": (0.0, 0.0, 0.0),
}
SHAPE_COLORS = ("red", "green", "blue", "yellow", "white")
BACKGROUNDS = ("black", "white")
SHAPES = ("circle", "square", "triangle")
DIRECTIONS: dict[str, tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}


def _check(name: str, value: str, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {tuple(allowed)}, got {value!r}")


def make_caption(color: str, shape: str, direction: str, background: str = "black") -> str:
    """The caption of a sample, e.g. ``a red circle moving right on a black background``."""
    _check("color", color, SHAPE_COLORS)
    _check("shape", shape, SHAPES)
    _check("direction", direction, DIRECTIONS)
    _check("background", background, BACKGROUNDS)
    return f"a {color} {shape} moving {direction} on a {background} background"


def shape_mask(shape: str, cx: float, cy: float, radius: float, height: int, width: int) -> np.ndarray:
    """Boolean (height, width) mask of ``shape`` centred at pixel (cx, cy) with half-size ``radius``."""
    _check("shape", shape, SHAPES)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64) + 0.5  # pixel centres
    dx, dy = x - cx, y - cy
    if shape == "circle":
        return dx * dx + dy * dy <= radius * radius
    if shape == "square":
        half = radius * 0.85  # about the circle's area
        return (np.abs(dx) <= half) & (np.abs(dy) <= half)
    # triangle pointing up, centred on its bounding box: apex (0, -r), base corners (+-r, +r)
    inside_height = (dy >= -radius) & (dy <= radius)
    return inside_height & (np.abs(dx) <= (dy + radius) / 2.0)


def render_video(
    color: str,
    shape: str,
    direction: str,
    background: str = "black",
    *,
    frames: int = 17,
    height: int = 64,
    width: int = 64,
    start: tuple[float, float] = (0.3, 0.5),
    radius: float = 0.14,
    travel: float = 0.4,
    wrap: bool = False,
) -> np.ndarray:
    """A (frames, height, width, 3) float32 video in [0, 1].

    ``start`` is the centre at frame 0 as fractions of (width, height); the shape moves ``travel`` times the
    frame size along ``direction`` over the whole clip (so longer clips move more slowly); ``radius`` is a
    fraction of min(height, width). ``wrap``: the frame is a torus (a shape leaving one edge comes back in at the
    opposite one, drawn in both places while it crosses), so a long clip keeps moving the caption's way.
    """
    _check("color", color, SHAPE_COLORS)
    _check("direction", direction, DIRECTIONS)
    _check("background", background, BACKGROUNDS)
    if color == background:
        raise ValueError(f"color must differ from background, both are {color!r}")
    for name, value in (("frames", frames), ("height", height), ("width", width)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    r = radius * min(height, width)
    ux, uy = DIRECTIONS[direction]
    video = np.empty((frames, height, width, 3), dtype=np.float32)
    video[:] = COLORS[background]
    for f in range(frames):
        t = f / (frames - 1) if frames > 1 else 0.0
        cx = (start[0] + ux * travel * t) * width
        cy = (start[1] + uy * travel * t) * height
        if not wrap:
            video[f][shape_mask(shape, cx, cy, r, height, width)] = COLORS[color]
            continue
        cx, cy = cx % width, cy % height
        for ox in (-width, 0, width):  # the copies one frame size away cover the part past an edge
            for oy in (-height, 0, height):
                video[f][shape_mask(shape, cx + ox, cy + oy, r, height, width)] = COLORS[color]
    return video


@dataclass(frozen=True)
class ShapeSample:
    """One sample: the video (F, H, W, 3) in [0, 1], its caption and the attributes the caption names."""

    video: np.ndarray
    caption: str
    color: str
    shape: str
    direction: str
    background: str


class ShapesDataset:
    """``num_samples`` random shape videos, sample i a pure function of (seed, i); any frame count and size.

    The start position is drawn so that the shape stays fully inside the frame for the whole clip;
    ``position_jitter`` < 1 shrinks its range towards the centre (0: every clip of a direction starts alike).
    ``wrap=True`` (long clips, any ``travel``): the shape wraps around the edges (see :func:`render_video`) and
    starts fully inside the frame, drawn as if it did not move.
    """

    def __init__(
        self,
        num_samples: int = 1000,
        *,
        frames: int = 17,
        height: int = 64,
        width: int = 64,
        seed: int = 0,
        colors: tuple[str, ...] = SHAPE_COLORS,
        shapes: tuple[str, ...] = SHAPES,
        directions: tuple[str, ...] = tuple(DIRECTIONS),
        backgrounds: tuple[str, ...] = ("black",),
        radius: tuple[float, float] = (0.12, 0.16),
        travel: float = 0.4,
        position_jitter: float = 1.0,
        wrap: bool = False,
    ) -> None:
        if not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
        for name, values, allowed in (
            ("colors", colors, SHAPE_COLORS), ("shapes", shapes, SHAPES),
            ("directions", directions, DIRECTIONS), ("backgrounds", backgrounds, BACKGROUNDS),
        ):
            if not values:
                raise ValueError(f"{name} must name at least one of {tuple(allowed)}")
            for v in values:
                _check(name, v, allowed)
        if not 0 <= position_jitter <= 1:
            raise ValueError(f"position_jitter must be in [0, 1] (0: centred starts, 1: anywhere the shape fits), got {position_jitter!r}")
        if not (0 < radius[0] <= radius[1] and travel >= 0 and 2 * radius[1] + (0 if wrap else travel) < 1):
            raise ValueError(f"radius {radius} and travel {travel} must leave room to move: 2 * radius[1] + travel < 1 "
                             "(or wrap=True for long clips)")
        self.num_samples = num_samples
        self.frames, self.height, self.width = frames, height, width
        self.seed = seed
        self.colors, self.shapes, self.directions, self.backgrounds = tuple(colors), tuple(shapes), tuple(directions), tuple(backgrounds)
        self.radius, self.travel, self.position_jitter, self.wrap = radius, travel, position_jitter, wrap

    def __len__(self) -> int:
        return self.num_samples

    def attributes(self, index: int) -> dict:
        """The random draw of sample ``index`` (colour, shape, direction, background, start, radius)."""
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for {self.num_samples} samples")
        rng = np.random.default_rng([self.seed, index])
        background = self.backgrounds[rng.integers(len(self.backgrounds))]
        colors = [c for c in self.colors if c != background] or [c for c in SHAPE_COLORS if c != background]
        color = colors[rng.integers(len(colors))]
        shape = self.shapes[rng.integers(len(self.shapes))]
        direction = self.directions[rng.integers(len(self.directions))]
        radius = float(rng.uniform(*self.radius))
        ux, uy = DIRECTIONS[direction]
        start = []
        short = min(self.height, self.width)
        for u, size in ((ux, self.width), (uy, self.height)):  # per axis: room for the radius at both ends
            r = radius * short / size
            lo, hi = r, 1.0 - r
            if u > 0 and not self.wrap:
                hi -= self.travel
            elif u < 0 and not self.wrap:
                lo += self.travel
            u = float(rng.uniform(lo, hi))
            start.append(u if self.position_jitter == 1 else (lo + hi) / 2 + self.position_jitter * (u - (lo + hi) / 2))
        return dict(color=color, shape=shape, direction=direction, background=background, start=tuple(start), radius=radius)

    def __getitem__(self, index: int) -> ShapeSample:
        a = self.attributes(index)
        video = render_video(
            a["color"], a["shape"], a["direction"], a["background"], frames=self.frames, height=self.height,
            width=self.width, start=a["start"], radius=a["radius"], travel=self.travel, wrap=self.wrap,
        )
        return ShapeSample(video, make_caption(a["color"], a["shape"], a["direction"], a["background"]),
                           a["color"], a["shape"], a["direction"], a["background"])
