"""A pipeline evaluation's report: markdown tables, notes and frame strips, written crash-safe to one folder."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..atomic import write_bytes_atomic, write_text_atomic


def frame_strip(videos: list[np.ndarray], count: int = 6, scale: int = 2) -> np.ndarray:
    """Rows of ``count`` evenly spaced frames (videos (F, H, W, 3) in [0, 1]), one row per video, as uint8.

    Videos of different sizes are shown at the size of the first (nearest-neighbour), so rows line up."""
    height, width = videos[0].shape[1:3]
    rows = []
    for v in videos:
        v = np.asarray(v, dtype=np.float32)
        idx = np.linspace(0, len(v) - 1, min(count, len(v))).round().astype(int)
        ys = (np.arange(height) * v.shape[1] // height)
        xs = (np.arange(width) * v.shape[2] // width)
        frames = [np.pad(v[i][ys][:, xs], ((1, 1), (1, 1), (0, 0)), constant_values=0.5) for i in idx]
        frames += [np.full_like(frames[0], 0.5)] * (count - len(frames))
        rows.append(np.concatenate(frames, axis=1))
    image = np.concatenate(rows, axis=0).repeat(scale, 0).repeat(scale, 1)
    return (np.clip(image, 0, 1) * 255).round().astype(np.uint8)


def write_png_atomic(path: Path, image: np.ndarray) -> None:
    """A uint8 image as PNG, written under a temporary name and renamed into place."""
    import imageio.v3 as iio

    buffer = io.BytesIO()
    iio.imwrite(buffer, image, extension=".png")
    write_bytes_atomic(path, buffer.getvalue())


@dataclass
class Table:
    """One markdown table: a caption line, column headers and rows of already formatted cells."""

    caption: str
    headers: list[str]
    rows: list[list[str]]

    def to_markdown(self) -> str:
        lines = [self.caption, "", "| " + " | ".join(self.headers) + " |", "|" + "---|" * len(self.headers)]
        lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in self.rows]
        return "\n".join(lines)


@dataclass
class PipelineReport:
    """What ``vidattn eval --pipeline`` found: tables, free-text notes (method, verdict), strips and raw numbers."""

    title: str
    intro: str
    tables: list[Table]
    notes: list[str] = field(default_factory=list)
    strips: dict[str, np.ndarray] = field(default_factory=dict)  # file stem -> uint8 image (frame_strip)
    data: dict = field(default_factory=dict)  # raw numbers, written as results.json
    files: list[str] = field(default_factory=list)

    def to_markdown(self) -> str:
        parts = [f"# {self.title}", "", self.intro, ""]
        for table in self.tables:
            parts += [table.to_markdown(), ""]
        parts += [note + "\n" for note in self.notes]
        parts += [f"![{name}](strip_{name}.png)" for name in self.strips]
        return "\n".join(parts).rstrip() + "\n"

    def write(self, out: Path) -> None:
        """report.md, results.json and strip_<name>.png in ``out``, each written under a temporary name first."""
        out.mkdir(parents=True, exist_ok=True)
        for name, image in self.strips.items():
            write_png_atomic(out / f"strip_{name}.png", image)
            self.files.append(str(out / f"strip_{name}.png"))
        write_text_atomic(out / "results.json", json.dumps(self.data, indent=1, default=str))
        write_text_atomic(out / "report.md", self.to_markdown())
        self.files += [str(out / "results.json"), str(out / "report.md")]
