"""Write the procedural shapes dataset to disk: lossless video files plus captions, the input `prepare-data` reads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..atomic import replace_synced, write_text_atomic
from .shapes import ShapesDataset

# Lossless FFV1 in Matroska: mp4/h264 would smear the flat colours, and GIF (Pillow) merges identical frames.
CLIP_SUFFIX = ".mkv"


def write_clip(frames: np.ndarray, path: Path, fps: int = 8) -> None:
    """(F, H, W, 3) float frames in [0, 1] -> a lossless FFV1 .mkv, written under a temporary name then renamed."""
    import imageio

    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    writer = imageio.get_writer(str(tmp), fps=fps, codec="ffv1", pixelformat="bgr0", macro_block_size=1, ffmpeg_log_level="error")
    try:
        for frame in (np.clip(frames, 0, 1) * 255).round().astype(np.uint8):
            writer.append_data(frame)
    finally:
        writer.close()
    replace_synced(tmp, path)


def write_shape_clips(folder: str | Path, dataset: ShapesDataset, progress: bool = False) -> Path:
    """Every sample of ``dataset`` as ``clipNNNN.mkv`` with a side-car ``clipNNNN.txt`` caption, and ``captions.jsonl``
    (one ``{"video", "caption"}`` per line); returns the jsonl's path."""
    from tqdm import tqdm

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in tqdm(range(len(dataset)), desc="make-clips", unit="clip", disable=not progress):
        sample = dataset[i]
        name = f"clip{i:04d}{CLIP_SUFFIX}"
        write_clip(sample.video, folder / name)
        (folder / f"clip{i:04d}.txt").write_text(sample.caption + "\n")
        lines.append(json.dumps({"video": name, "caption": sample.caption}))
    captions = folder / "captions.jsonl"
    write_text_atomic(captions, "\n".join(lines) + "\n")
    return captions
