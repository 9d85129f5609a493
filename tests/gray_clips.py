"""Flat-gray mp4 clips for data-preparation and training tests: predictable pixels through the codec."""

from __future__ import annotations

from pathlib import Path

import imageio
import numpy as np


def gray_video(path: Path, frames: int, height: int, width: int, first: int = 10, step: int = 15) -> None:
    """Frame i is a flat gray of value ``first + step * i``."""
    writer = imageio.get_writer(str(path), fps=8, codec="libx264", macro_block_size=1, quality=10)
    for i in range(frames):
        writer.append_data(np.full((height, width, 3), first + step * i, dtype=np.uint8))
    writer.close()
