"""Crash-safe file writing: temp name, fsync, rename into place (a reader sees the old file or the new one, never half)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any


def fsync_path(path: str | Path) -> None:
    """Flush a file's (or a folder's entries') data to disk; a no-op where the OS cannot open folders (Windows)."""
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) if Path(path).is_dir() else os.O_RDONLY
    try:
        fd = os.open(str(path), flags)
    except OSError:
        if Path(path).is_dir():
            return
        raise
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_name(path: str | Path) -> Path:
    """The hidden temp sibling ``.NAME.tmp`` that :func:`write_bytes_atomic` renames onto ``path``."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp")


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a synced temp file and a rename."""
    path = Path(path)
    tmp = temp_name(path)
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_path(path.parent)


def write_text_atomic(path: str | Path, text: str) -> None:
    """:func:`write_bytes_atomic` of ``text`` (UTF-8)."""
    write_bytes_atomic(path, text.encode())


def write_json_atomic(path: str | Path, value: Any, indent: int | None = 1) -> None:
    """:func:`write_bytes_atomic` of ``value`` as JSON."""
    write_bytes_atomic(path, json.dumps(value, indent=indent).encode())


def replace_synced(tmp: str | Path, path: str | Path) -> None:
    """fsync the finished file ``tmp``, then rename it onto ``path`` and sync the folder entry."""
    fsync_path(tmp)
    os.replace(tmp, path)
    fsync_path(Path(path).parent)


def save_pretrained_atomic(model: Any, folder: str | Path) -> None:
    """``model.save_pretrained`` (safetensors) into a temporary sibling folder, then each file it wrote renamed into
    ``folder`` (synced, readable by everyone, e.g. as a package asset): a crash never leaves a half-written file."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=f".{folder.name}.") as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        for written in sorted(Path(tmp).iterdir()):
            written.chmod(0o644)
            replace_synced(written, folder / written.name)


def save_pretrained_folder_atomic(pipeline: Any, folder: str | Path) -> None:
    """A whole ``pipeline.save_pretrained`` folder (safetensors), written beside ``folder`` and swapped in by renames: a
    reader sees the old folder or the new one, never a mix of the two."""
    folder = Path(folder)
    tmp, old = folder.with_name(f".{folder.name}.tmp"), folder.with_name(f".{folder.name}.old")
    shutil.rmtree(tmp, ignore_errors=True)
    pipeline.save_pretrained(str(tmp), safe_serialization=True)
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        folder.replace(old)
    tmp.replace(folder)
    fsync_path(folder.parent)
    shutil.rmtree(old, ignore_errors=True)


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()
