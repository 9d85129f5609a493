"""The run folder's durable state: atomic ``checkpoint-N`` folders with a manifest, resume selection, the finished mark.

A checkpoint is written into ``.checkpoint-N.tmp``, synced, sealed by ``manifest.json`` (every file's size and
SHA-256, written last) and renamed into place; older checkpoints are pruned only after that. A folder without a
matching manifest is incomplete and is never resumed from.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from ..atomic import file_sha256, fsync_path, write_json_atomic
from .killpoints import KillPoints

logger = logging.getLogger("vidattn.training")

MANIFEST = "manifest.json"
STATE_FILE = "train_state.json"  # losses so far and the count of skipped non-finite steps
FINISHED = "finished.json"  # written last by a run that exported its LoRA
MANIFEST_VERSION = 1


def checkpoint_step(path: Path) -> int | None:
    """N for a ``checkpoint-N`` folder name, else None."""
    prefix, _, number = path.name.partition("-")
    return int(number) if prefix == "checkpoint" and number.isdigit() else None


def checkpoints(output_dir: str | Path) -> list[Path]:
    """``checkpoint-N`` folders of ``output_dir`` (complete or not), oldest first."""
    found = [p for p in Path(output_dir).glob("checkpoint-*") if p.is_dir() and checkpoint_step(p) is not None]
    return sorted(found, key=checkpoint_step)


def write_manifest(directory: Path, step: int) -> None:
    """Sync every file of ``directory``, then seal it with ``manifest.json`` (relative path -> bytes, sha256)."""
    files = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST):
        fsync_path(path)
        files[path.relative_to(directory).as_posix()] = {"bytes": path.stat().st_size, "sha256": file_sha256(path)}
    write_json_atomic(directory / MANIFEST, {"version": MANIFEST_VERSION, "step": step, "files": files})


def incomplete_reason(directory: Path, check_hashes: bool = True) -> str | None:
    """None when ``directory`` matches its manifest, else why not (missing manifest, missing/short/changed file)."""
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        return "no manifest.json (the save was interrupted, or an older vidattn wrote it)"
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"manifest.json is unreadable ({exc})"
    if manifest.get("step") != checkpoint_step(directory):
        return f"manifest.json is for step {manifest.get('step')!r}"
    for name, entry in files.items():
        path = directory / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != entry["bytes"]:
            return f"{name} has {path.stat().st_size} bytes, the manifest says {entry['bytes']}"
        if check_hashes and file_sha256(path) != entry["sha256"]:
            return f"{name} does not match its SHA-256 in the manifest"
    return None


def newest_complete(output_dir: str | Path) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest complete checkpoint of ``output_dir`` (or None) and the newer incomplete ones skipped, with why."""
    skipped = []
    for candidate in reversed(checkpoints(output_dir)):
        reason = incomplete_reason(candidate)
        if reason is None:
            return candidate, skipped
        skipped.append((candidate, reason))
    return None, skipped


def resolve_resume(resume_from_checkpoint: str | None, output_dir: str | Path) -> Path | None:
    """The checkpoint to resume from: None, ``"latest"`` (the newest complete one, None if none) or a named folder,
    which must be complete (``ValueError`` naming what is wrong otherwise)."""
    if resume_from_checkpoint is None:
        return None
    if resume_from_checkpoint == "latest":
        found, skipped = newest_complete(output_dir)
        for path, reason in skipped:
            logger.warning("skipping incomplete checkpoint %s: %s", path, reason)
        if found is None and skipped:
            logger.warning("no complete checkpoint in %s: starting from step 0", output_dir)
        return found
    path = Path(resume_from_checkpoint)
    if not path.is_dir() or checkpoint_step(path) is None:
        raise ValueError(f"resume_from_checkpoint must be null, 'latest' or an existing checkpoint-<step> folder, got {str(path)!r}")
    reason = incomplete_reason(path)
    if reason is not None:
        newest, _ = newest_complete(path.parent)
        hint = f"the newest complete one is {newest}" if newest is not None else "there is no complete one"
        raise ValueError(f"resume_from_checkpoint {str(path)!r} is incomplete: {reason}; {hint} ('latest' picks it)")
    return path


def read_state(directory: Path) -> dict[str, Any]:
    """The loop state saved with a checkpoint: ``losses`` [(step, loss)] so far and ``skipped_steps``."""
    path = directory / STATE_FILE
    state = json.loads(path.read_text()) if path.is_file() else {}
    return {"losses": [tuple(x) for x in state.get("losses", [])], "skipped_steps": int(state.get("skipped_steps", 0))}


def save_checkpoint(
    accelerator, output_dir: str | Path, step: int, state: dict, limit: int | None, kill: KillPoints, save_kwargs: dict | None = None
) -> Path:
    """``accelerator.save_state`` (with ``save_kwargs``) into ``.checkpoint-<step>.tmp``; the main process adds ``state``,
    seals it with the manifest and renames it to ``checkpoint-<step>``, then prunes the oldest complete ones beyond ``limit``."""
    root = Path(output_dir)
    final, tmp = root / f"checkpoint-{step}", root / f".checkpoint-{step}.tmp"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(".checkpoint-*.tmp"):  # left by a save that was killed
            shutil.rmtree(stale)
        for aside in root.glob(".checkpoint-*.old"):  # a replaced checkpoint whose successor is in place
            if incomplete_reason(root / aside.name[1:-4], check_hashes=False) is None:
                shutil.rmtree(aside)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), **(save_kwargs or {}))  # every process writes its files (RNG states) here
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        kill.reach("save_written")
        write_json_atomic(tmp / STATE_FILE, state)
        write_manifest(tmp, step)
        fsync_path(tmp)
        kill.reach("save_sealed")
        aside = root / f".checkpoint-{step}.old"
        if final.exists():  # the same step saved before (a run resumed from an earlier checkpoint)
            shutil.rmtree(aside, ignore_errors=True)
            os.replace(final, aside)
        os.replace(tmp, final)
        fsync_path(root)
        kill.reach("save_renamed")
        shutil.rmtree(aside, ignore_errors=True)
        prune(root, limit, keep=final, kill=kill)
    accelerator.wait_for_everyone()
    return final


def prune(root: Path, limit: int | None, keep: Path, kill: KillPoints) -> None:
    """Delete the oldest complete checkpoints so that at most ``limit`` remain with ``keep``, and the unsealed
    (never resumable) ones older than ``keep``; nothing when ``limit`` is None."""
    if limit is None:
        return
    older = [p for p in checkpoints(root) if checkpoint_step(p) < checkpoint_step(keep)]
    unsealed = [p for p in older if not (p / MANIFEST).is_file()]
    sealed = [p for p in checkpoints(root) if p != keep and (p / MANIFEST).is_file()]
    for stale in unsealed + sealed[: max(0, len(sealed) - limit + 1)]:
        if (stale / MANIFEST).is_file():
            os.remove(stale / MANIFEST)  # unsealed first: a kill mid-delete leaves an incomplete folder, never a broken one
        kill.reach("prune")
        shutil.rmtree(stale)


def read_finished(output_dir: str | Path) -> dict | None:
    """The finished mark of a run that exported its LoRA (``global_step``, file names), or None."""
    path = Path(output_dir) / FINISHED
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        return None


def write_finished(output_dir: str | Path, info: dict) -> None:
    write_json_atomic(Path(output_dir) / FINISHED, info)


def clear_run(output_dir: str | Path, artifacts: tuple[str, ...]) -> list[str]:
    """Delete what a run wrote in ``output_dir`` (checkpoints, temp folders, ``artifacts``) for ``--overwrite``."""
    root, removed = Path(output_dir), []
    if not root.is_dir():
        return removed
    for path in [*checkpoints(root), *root.glob(".checkpoint-*"), *(root / name for name in (FINISHED, *artifacts))]:
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
        else:
            continue
        removed.append(path.name)
    return removed
