"""Datasets that need no download: procedural videos with captions for training and evaluating the default model."""

from .shapes import BACKGROUNDS, COLORS, DIRECTIONS, SHAPE_COLORS, SHAPES, ShapeSample, ShapesDataset, make_caption, render_video

__all__ = ["BACKGROUNDS", "COLORS", "DIRECTIONS", "SHAPE_COLORS", "SHAPES", "ShapeSample", "ShapesDataset", "make_caption", "render_video"]
