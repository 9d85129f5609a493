"""Video + caption folders for training: decoding (imageio/ffmpeg), frame sampling, aspect buckets, batching.

A video that cannot be decoded or is too short is skipped with a warning and counted, never a crash mid-epoch.
"""

from __future__ import annotations

import json
import math
import random
import warnings
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mov", ".avi", ".mkv", ".gif")
CAPTION_KEYS = ("caption", "text", "prompt")
FILE_KEYS = ("video", "file", "path")


def find_videos(videos: str | Path) -> list[Path]:
    """The video files under ``videos`` (recursively), sorted, by extension in :data:`VIDEO_EXTENSIONS`."""
    root = Path(videos)
    if not root.is_dir():
        raise ValueError(f"videos must be a folder of video files, got {str(root)!r}")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file())
    if not files:
        raise ValueError(f"no video files ({', '.join(VIDEO_EXTENSIONS)}) under {str(root)!r}")
    return files


def load_captions(videos: str | Path, files: Sequence[Path], captions: str | Path | None = None) -> dict[Path, str]:
    """Caption of each file: from a jsonl (``{"video": name, "caption": text}`` per line) or side-car ``.txt``.

    Names in the jsonl are relative to ``videos`` (or bare file names). Missing captions raise ``ValueError``.
    """
    root = Path(videos)
    found: dict[Path, str] = {}
    if captions is None:
        for f in files:
            txt = f.with_suffix(".txt")
            if txt.is_file():
                found[f] = txt.read_text().strip()
    else:
        path = Path(captions)
        if not path.is_file():
            raise ValueError(f"captions must be a .jsonl file (or None for side-car .txt files), got {str(path)!r}")
        by_name: dict[str, str] = {}
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
            name = next((row[k] for k in FILE_KEYS if k in row), None) if isinstance(row, dict) else None
            text = next((row[k] for k in CAPTION_KEYS if k in row), None) if isinstance(row, dict) else None
            if not isinstance(name, str) or not isinstance(text, str):
                raise ValueError(f"{path}:{number}: each line needs a file key {FILE_KEYS} and a caption key {CAPTION_KEYS}")
            by_name[name] = text.strip()
        for f in files:
            rel = f.relative_to(root).as_posix()
            text = by_name.get(rel, by_name.get(f.name))
            if text is not None:
                found[f] = text
    missing = [f.relative_to(root).as_posix() for f in files if not found.get(f)]
    if missing:
        source = f"in {captions}" if captions is not None else "as side-car .txt files"
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise ValueError(f"{len(missing)} video(s) have no caption {source}: {shown}")
    return found


def choose_bucket(height: int, width: int, buckets: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """The (height, width) bucket whose aspect ratio is closest (in log space) to ``height / width``."""
    target = math.log(height / width)
    return min(buckets, key=lambda b: abs(math.log(b[0] / b[1]) - target))


def frame_indices(total: int, num_frames: int, stride: int = 1) -> list[int]:
    """``num_frames`` frames ``stride`` apart from the middle of a ``total``-frame clip; ``ValueError`` if too short."""
    span = (num_frames - 1) * stride + 1
    if total < span:
        raise ValueError(f"clip has {total} frames, needs at least {span} (num_frames={num_frames}, frame_stride={stride})")
    start = (total - span) // 2
    return [start + i * stride for i in range(num_frames)]


def resize_center_crop(frames: np.ndarray, height: int, width: int) -> torch.Tensor:
    """(F, h, w, 3) uint8 -> (3, F, height, width) float in [-1, 1]: scale to cover, then centre crop."""
    video = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 127.5 - 1  # F, 3, h, w
    h, w = video.shape[-2:]
    scale = max(height / h, width / w)
    new_h, new_w = max(height, round(h * scale)), max(width, round(w * scale))
    if (new_h, new_w) != (h, w):
        video = torch.nn.functional.interpolate(video, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=True)
    top, left = (new_h - height) // 2, (new_w - width) // 2
    return video[:, :, top : top + height, left : left + width].clamp(-1, 1).permute(1, 0, 2, 3).contiguous()


def read_frames(path: Path, num_frames: int, stride: int = 1) -> np.ndarray:
    """Decode the sampled frames of ``path`` as (F, h, w, 3) uint8 (imageio's ffmpeg reader)."""
    import imageio

    reader = imageio.get_reader(str(path), "ffmpeg") if path.suffix.lower() != ".gif" else imageio.get_reader(str(path))
    try:
        frames = [np.asarray(f)[..., :3] for f in reader]
    finally:
        reader.close()
    if not frames:
        raise ValueError("no decodable frames")
    wanted = frame_indices(len(frames), num_frames, stride)
    return np.stack([frames[i] for i in wanted])


class VideoClipDataset(torch.utils.data.Dataset):
    """Clips of ``num_frames`` frames resized to the closest aspect bucket, with their captions.

    ``buckets`` is a list of (height, width); default ``[(height, width)]``. Items are dicts with ``pixels``
    (3, F, H, W) in [-1, 1], ``caption`` and ``path``, or ``None`` for a skipped video (see :attr:`skipped`).
    """

    def __init__(
        self,
        videos: str | Path,
        captions: str | Path | None = None,
        *,
        num_frames: int = 81,
        height: int = 480,
        width: int = 832,
        buckets: Sequence[tuple[int, int]] | None = None,
        frame_stride: int = 1,
        size_multiple: int = 16,
    ) -> None:
        for name, value in (("num_frames", num_frames), ("frame_stride", frame_stride), ("size_multiple", size_multiple)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        buckets = [tuple(b) for b in (buckets or [(height, width)])]
        for b in buckets:
            if len(b) != 2 or not all(isinstance(v, int) and v > 0 and v % size_multiple == 0 for v in b):
                raise ValueError(f"buckets (and height/width) must be (height, width) ints, multiples of {size_multiple}; got {b!r}")
        self.root = Path(videos)
        self.files = find_videos(videos)
        self.captions = load_captions(videos, self.files, captions)
        self.num_frames, self.frame_stride = num_frames, frame_stride
        self.buckets = buckets
        self.skipped: list[tuple[str, str]] = []

    def __len__(self) -> int:
        return len(self.files)

    def load(self, index: int) -> dict:
        """Decode item ``index``; raises on an unreadable or too-short video."""
        path = self.files[index]
        frames = read_frames(path, self.num_frames, self.frame_stride)
        height, width = choose_bucket(frames.shape[1], frames.shape[2], self.buckets)
        return {"pixels": resize_center_crop(frames, height, width), "caption": self.captions[path], "path": str(path)}

    def __getitem__(self, index: int) -> dict | None:
        try:
            return self.load(index)
        except Exception as exc:  # any decoder failure: skip this clip, keep the epoch going
            path = self.files[index]
            reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
            self.skipped.append((str(path), reason))
            warnings.warn(f"skipping video {path}: {reason}", RuntimeWarning, stacklevel=2)
            return None


def drop_none_collate(items: list) -> list:
    """DataLoader collate that drops skipped (None) items and keeps the rest as a list."""
    return [item for item in items if item is not None]


class BucketBatchSampler:
    """Batches of indices that share a shape key, reshuffled per epoch from ``seed``, sharded across ranks.

    Deterministic in (seed, epoch): a resumed run sees the same batches. Rank r of w takes batches r, r+w, ...
    (the tail that does not divide evenly is dropped so every rank takes the same number of steps).
    """

    def __init__(self, keys: Sequence, batch_size: int, *, seed: int = 0, shuffle: bool = True, rank: int = 0, world_size: int = 1) -> None:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank!r}")
        self.keys, self.batch_size, self.seed, self.shuffle = list(keys), batch_size, seed, shuffle
        self.rank, self.world_size = rank, world_size
        if len(self.batches(0)) == 0:
            raise ValueError(
                f"{len(self.keys)} cached clip(s) cannot make one batch of {batch_size} per process on {world_size} process(es) "
                "(clips of one batch share a bucket): lower batch_size or add clips"
            )

    def batches(self, epoch: int) -> list[list[int]]:
        rng = random.Random(self.seed * 1_000_003 + epoch)
        groups: dict = {}
        for index, key in enumerate(self.keys):
            groups.setdefault(key, []).append(index)
        batches = []
        for key in sorted(groups, key=str):
            members = groups[key]
            if self.shuffle:
                rng.shuffle(members)
            batches += [members[i : i + self.batch_size] for i in range(0, len(members) - self.batch_size + 1, self.batch_size)]
        if self.shuffle:
            rng.shuffle(batches)
        usable = len(batches) - len(batches) % self.world_size
        return batches[self.rank : usable : self.world_size]

    def __len__(self) -> int:
        return len(self.batches(0))

    def iterate(self, start: int = 0) -> Iterator[list[int]]:
        """Endless batches over epochs, starting at global batch number ``start`` (for resuming)."""
        per_epoch = len(self)
        epoch, offset = divmod(start, per_epoch)
        while True:
            yield from self.batches(epoch)[offset:]
            epoch, offset = epoch + 1, 0
