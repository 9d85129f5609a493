"""Checks of a prepared latent cache: the index, each clip file's header (cheap), and its values (finite, hash).

Every failure names the file, so a bad clip is found before training rather than as a NaN after step 1.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from ..atomic import file_sha256

CACHE_VERSION = 2
READABLE_VERSIONS = (1, 2)  # version 1 (vidattn before crash-safe prepare-data) has no sizes or hashes in its index
CLIP_KEYS = ("latents", "text_embeds")
CLIP_DTYPE = "F32"


class CacheError(ValueError):
    """A cache folder or one of its clip files is missing, unreadable, inconsistent or holds non-finite values."""


def verify_hint(root: Path) -> str:
    return f"re-run prepare-data into it (it resumes, re-encoding only what is missing), or check all with `vidattn prepare-data --verify --out {root}`"


def read_index(root: str | Path) -> dict:
    """The parsed ``index.json`` of a cache folder; ``CacheError`` when absent, unreadable or of another version."""
    root = Path(root)
    index_file = root / "index.json"
    if not index_file.is_file():
        hint = " (prepare-data was interrupted before finishing? re-run it: it resumes)" if root.is_dir() else ""
        raise CacheError(f"data must be a cache folder written by prepare-data (with index.json), got {str(root)!r}{hint}")
    try:
        index = json.loads(index_file.read_text())
    except (OSError, ValueError) as exc:
        raise CacheError(f"{index_file} is unreadable ({exc}); {verify_hint(root)}") from None
    if not isinstance(index, dict) or index.get("version") not in READABLE_VERSIONS:
        version = index.get("version") if isinstance(index, dict) else None
        raise CacheError(f"cache {root} has version {version!r}, this vidattn reads versions {READABLE_VERSIONS}")
    if not isinstance(index.get("clips"), list) or not all(isinstance(c, dict) and "file" in c and "shape" in c for c in index["clips"]):
        raise CacheError(f"{index_file} has no valid clips list; {verify_hint(root)}")
    if not index["clips"]:
        raise CacheError(f"cache {root} holds no clips")
    return index


def header_problem(path: Path, clip: dict | None = None) -> str | None:
    """Why the clip file at ``path`` cannot be used, from its header and size only (no data read); None if fine.

    Checks: readable safetensors covering the whole file, ``latents`` (4-D) and ``text_embeds`` (2-D) in float32,
    and, given the index entry ``clip``, its recorded shape and byte size."""
    if not path.is_file():
        return "missing"
    if clip is not None and "bytes" in clip and path.stat().st_size != clip["bytes"]:
        return f"{path.stat().st_size} bytes, the index recorded {clip['bytes']} (truncated or overwritten)"
    try:
        with safe_open(str(path), framework="pt") as handle:
            keys = set(handle.keys())
            if keys != set(CLIP_KEYS):
                return f"holds tensors {sorted(keys)}, expected {list(CLIP_KEYS)}"
            slices = {k: handle.get_slice(k) for k in CLIP_KEYS}
            shapes = {k: list(s.get_shape()) for k, s in slices.items()}
            dtypes = {k: s.get_dtype() for k, s in slices.items()}
    except Exception as exc:  # safetensors raises its own error types for every malformed header
        return f"unreadable ({str(exc).splitlines()[0]})"
    if any(d != CLIP_DTYPE for d in dtypes.values()):
        return f"dtypes {dtypes}, expected {CLIP_DTYPE}"
    if len(shapes["latents"]) != 4 or len(shapes["text_embeds"]) != 2:
        return f"shapes {shapes}, expected latents (C, F, H, W) and text_embeds (L, D)"
    if clip is not None and shapes["latents"] != list(clip["shape"]):
        return f"latents have shape {shapes['latents']}, the index says {list(clip['shape'])}"
    return None


def text_shape(path: Path) -> list[int]:
    with safe_open(str(path), framework="pt") as handle:
        return list(handle.get_slice("text_embeds").get_shape())


def check_header(root: Path, clips: list[dict]) -> None:
    """:func:`header_problem` on every clip of the index (and one text-embedding shape for all); ``CacheError`` on the first bad one."""
    text_shapes = {}
    for clip in clips:
        path = root / clip["file"]
        problem = header_problem(path, clip)
        if problem is not None:
            raise CacheError(f"cached clip {path} (from {clip.get('source', '?')}): {problem}; {verify_hint(root)}")
        text_shapes.setdefault(tuple(text_shape(path)), path)
    if len(text_shapes) > 1:
        raise CacheError(f"cached clips disagree on the text_embeds shape: {sorted(text_shapes.items())}; {verify_hint(root)}")


def read_clip(path: Path, clip: dict | None = None) -> tuple[dict[str, torch.Tensor] | None, str | None]:
    """(tensors, None) for a good clip file, or (None, problem): unreadable, other tensors, not the index's shape,
    or holding NaN/inf."""
    try:
        tensors = load_file(str(path))
    except Exception as exc:  # missing, truncated since the index was read, or a malformed file
        return None, f"unreadable ({str(exc).splitlines()[0]})"
    if set(tensors) != set(CLIP_KEYS):
        return None, f"holds tensors {sorted(tensors)}, expected {list(CLIP_KEYS)}"
    if clip is not None and list(tensors["latents"].shape) != list(clip["shape"]):
        return None, f"latents have shape {list(tensors['latents'].shape)}, the index says {list(clip['shape'])}"
    for key in CLIP_KEYS:
        finite = torch.isfinite(tensors[key])
        if not finite.all():
            return None, f"{int((~finite).sum())} non-finite value(s) in {key}"
    return tensors, None


def load_clip(path: Path, clip: dict | None = None) -> dict[str, torch.Tensor]:
    """The tensors of one clip file, checked by :func:`read_clip`; ``CacheError`` naming the file and the problem."""
    tensors, problem = read_clip(path, clip)
    if problem is not None:
        raise CacheError(f"cached clip {path}: {problem}; {verify_hint(path.parent)}")
    return tensors


def verify_cache(root: str | Path) -> tuple[int, list[tuple[str, str]]]:
    """Check every clip of a cache completely (header, recorded size and SHA-256, load, shapes, dtype, finite).

    Returns (clips checked, [(file, problem)]); an unusable index is one problem for ``index.json``."""
    root = Path(root)
    try:
        index = read_index(root)
    except CacheError as exc:
        return 0, [(str(root / "index.json"), str(exc))]
    problems = []
    text_shapes: dict = {}
    for clip in index["clips"]:
        path = root / clip["file"]
        problem = header_problem(path, clip)
        if problem is None and "sha256" in clip and file_sha256(path) != clip["sha256"]:
            problem = "contents differ from the SHA-256 recorded in the index (overwritten or corrupted)"
        if problem is None:
            tensors, problem = read_clip(path, clip)
            if tensors is not None:
                text_shapes.setdefault(tuple(tensors["text_embeds"].shape), str(path))
        if problem is not None:
            problems.append((str(path), problem))
    if len(text_shapes) > 1:
        problems.append((str(root), f"clips disagree on the text_embeds shape: {sorted(text_shapes.items())}"))
    return len(index["clips"]), problems
