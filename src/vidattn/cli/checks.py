"""Checks of command-line arguments, run before any model is loaded or any tensor allocated.

Each raises :class:`UsageError` with one line that names the option, the value and what is allowed; `main` prints
it on stderr and exits with code 2.
"""

from __future__ import annotations

import json
import math
import os
import struct
import sys
import tempfile
from pathlib import Path

GIB = 1024**3


class UsageError(ValueError):
    """A user error found by a check: one line, exit code 2."""


def warn(message: str) -> None:
    """A one-line warning on stderr (the run goes on)."""
    print(f"vidattn: warning: {message}", file=sys.stderr)


def int_at_least(value: int, low: int, option: str, why: str = "") -> None:
    if not isinstance(value, int) or value < low:
        raise UsageError(f"{option} must be an integer >= {low}{why}, got {value!r}")


def number_in(value: float, low: float, high: float, option: str, why: str = "", low_open: bool = False) -> None:
    ok = isinstance(value, (int, float)) and math.isfinite(value) and (value > low if low_open else value >= low) and value <= high
    if not ok:
        bracket = "(" if low_open else "["
        raise UsageError(f"{option} must be a number in {bracket}{low:g}, {high:g}]{why}, got {value!r}")


def _existing_ancestor(path: Path) -> Path:
    for parent in [path, *path.parents]:
        if parent.exists():
            return parent
    return Path(".")


def _probe_writable(folder: Path, option: str, path: Path) -> None:
    """Create and delete a temporary file in ``folder``: the only sure test (root passes os.access even on /proc)."""
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".vidattn-probe-"):
            pass
    except OSError as error:
        raise UsageError(f"{option} {path}: cannot write in {folder} ({error.strerror or error})") from None


def check_output_file(path: str | Path, option: str = "--out") -> None:
    """``path`` can be written as a file: not a folder, not under a file, in a folder where files can be created."""
    path = Path(path)
    if str(path).endswith(os.sep) or path.is_dir():
        raise UsageError(f"{option} {path}: is a folder; give a file name (e.g. {path / 'video.mp4'})")
    base = _existing_ancestor(path.parent)
    if not base.is_dir():
        raise UsageError(f"{option} {path}: {base} is a file, not a folder")
    _probe_writable(base, option, path)


def check_output_folder(path: str | Path, option: str = "--out") -> None:
    """``path`` is (or can be created as) a folder where files can be written."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{option} {path}: is a file; give a folder")
    base = _existing_ancestor(path)
    if not base.is_dir():
        raise UsageError(f"{option} {path}: {base} is a file, not a folder")
    _probe_writable(base, option, path)


def check_wan_video(frames: int, height: int, width: int, frames_option: str = "--frames") -> None:
    """Wan's VAE compresses time 4x (plus the first frame) and space 8x, the transformer patches 2x2: 4k+1 frames, /16 sizes."""
    if not isinstance(frames, int) or frames < 1 or (frames - 1) % 4:
        near = max(1, 4 * round((frames - 1) / 4) + 1) if isinstance(frames, int) else 17
        raise UsageError(f"{frames_option} must be 4k+1 (1, 5, 9, ..., 17, ..., 81): Wan's VAE keeps the first frame and "
                         f"compresses the rest 4x in time; got {frames!r} (nearest: {near})")
    check_sizes(height, width, 16, "Wan's VAE downsamples 8x and its transformer patches 2x2")


def check_sizes(height: int, width: int, multiple: int, why: str, options: tuple[str, str] = ("--height", "--width")) -> None:
    for option, value in zip(options, (height, width)):
        if not isinstance(value, int) or value < multiple or value % multiple:
            raise UsageError(f"{option} must be a positive multiple of {multiple} ({why}), got {value!r}")


def check_steps_guidance(steps: int, guidance: float) -> None:
    int_at_least(steps, 1, "--steps", " (denoising steps; 0 would decode pure noise)")
    if not isinstance(guidance, (int, float)) or not math.isfinite(guidance) or guidance < 1:
        raise UsageError(f"--guidance must be a finite number >= 1 (1: no classifier-free guidance, > 1: guidance "
                         f"with the empty negative prompt), got {guidance!r}")


def token_count(tokenizer, prompt: str) -> int:
    """Text tokens ``prompt`` takes with ``tokenizer`` (with the special tokens it adds)."""
    return len(tokenizer(prompt, add_special_tokens=True)["input_ids"])


def warn_long_prompt(tokenizer, prompt: str, limit: int) -> None:
    """Warn when ``prompt`` is cut to the model's text length, and when the embedded tokenizer does not know its words."""
    count = token_count(tokenizer, prompt)
    if count > limit:
        warn(f"--prompt has {count} tokens; the model reads only the first {limit} (the rest is cut)")
    unk = getattr(tokenizer, "unk_token_id", None)
    vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
    if unk is not None and len(vocab) < 1000:  # a word-level toy vocabulary: say which words it ignores
        unknown = [w for w in prompt.lower().replace(",", " ").split() if w not in vocab]
        if unknown:
            warn(f"--prompt words the embedded model does not know (read as <unk>): {' '.join(unknown[:10])}; "
                 f"it knows: {' '.join(sorted(w for w in vocab if not w.startswith('<') and not w.startswith('</')))}")


def _safetensors_problem(path: Path) -> str | None:
    """Why ``path`` is not a readable safetensors file (header length, header JSON, data size), or None."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return "shorter than a safetensors header"
        (length,) = struct.unpack("<Q", head)
        if length > size - 8 or length > 100 * 1024**2:
            return "its header length is past the end of the file"
        try:
            header = json.loads(f.read(length))
        except (ValueError, UnicodeDecodeError):
            return "its header is not valid JSON"
    if not isinstance(header, dict):
        return "its header is not a mapping"
    ends = [int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__" and isinstance(t, dict) and "data_offsets" in t]
    if ends and 8 + length + max(ends) > size:
        return f"it is truncated ({size} bytes, the header needs {8 + length + max(ends)})"
    return None


WAN_CLASSES = ("WanPipeline", "WanImageToVideoPipeline", "WanVideoToVideoPipeline")
UNET_CLASSES = ("AnimateDiffPipeline", "TextToVideoSDPipeline", "AnimateDiffVideoToVideoPipeline")


def check_model_folder(model: str, pipeline: str) -> None:
    """``--model`` is a diffusers folder of the kind ``pipeline`` needs, with readable safetensors (headers only)."""
    path = Path(model)
    if not path.exists():
        raise UsageError(f"--model {model}: no such folder (give a diffusers pipeline folder, or leave --model out for the embedded model)")
    if not path.is_dir():
        raise UsageError(f"--model {model}: is a file; give a diffusers pipeline folder (with model_index.json)")
    index = path / "model_index.json"
    if not index.is_file():
        raise UsageError(f"--model {model}: not a diffusers pipeline folder (no model_index.json)")
    try:
        name = json.loads(index.read_text()).get("_class_name", "?")
    except (ValueError, AttributeError):
        raise UsageError(f"--model {model}: model_index.json is not valid JSON") from None
    wanted = UNET_CLASSES if pipeline == "broadway" else WAN_CLASSES
    if name not in wanted:
        hint = "AnimateDiff/ModelScope folders go with --pipeline broadway" if name in UNET_CLASSES else \
            "Wan folders go with --pipeline text2video, freeswim or streaming" if name in WAN_CLASSES else "unsupported pipeline"
        raise UsageError(f"--model {model}: model_index.json names {name}; --pipeline {pipeline} needs one of {', '.join(wanted)} ({hint})")
    for file in sorted(path.rglob("*.safetensors")):
        problem = _safetensors_problem(file)
        if problem:
            raise UsageError(f"--model {model}: {file.relative_to(path)} is not a valid safetensors file: {problem}")


def memory_limit_check(estimate: float, limit_gib: float, what: str, parts: str, hint: str) -> None:
    """Refuse work whose ``estimate`` (bytes, split as ``parts``) is above ``limit_gib``, showing the estimate."""
    if limit_gib <= 0 or not math.isfinite(limit_gib):
        raise UsageError(f"--max-memory-gib must be a finite number > 0, got {limit_gib!r}")
    if estimate > limit_gib * GIB:
        raise UsageError(f"{what} needs about {estimate / GIB:.1f} GiB ({parts}), above --max-memory-gib {limit_gib:g}; {hint}")


def format_seconds(seconds: float) -> str:
    """``75`` -> ``1 min 15 s``: an estimate read by a person."""
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, sec = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {sec} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"
