"""Precompute VAE latents and text embeddings once (safetensors), so training loads neither VAE nor text encoder.

Layout of a cache folder: ``index.json`` (settings, clips with size and SHA-256, skipped videos) and one
``clip-<key>.safetensors`` per clip holding ``latents`` (C, F, H, W), normalised like WanPipeline expects, and
``text_embeds`` (L, D). The key hashes the source video (path, size, mtime), its caption and the settings, so a
re-run finds the clips it already wrote: every file is written to a temp name and renamed, the index last.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from safetensors.torch import save_file

from ..latents import latent_stats, normalise_latents
from ..layout import parse_dims
from ..atomic import file_sha256, replace_synced, temp_name, write_json_atomic
from .cache_check import CACHE_VERSION, check_header, header_problem, load_clip, read_index, verify_cache
from .dataset import VideoClipDataset, find_videos, load_captions
from .killpoints import KillPoints

CLIP_PREFIX = "clip-"


@dataclass
class PrepareReport:
    """What :func:`prepare_data` wrote: clip count, skipped videos (path, reason), the cache folder, and how many
    clips were found complete from an earlier (interrupted) run and not encoded again."""

    out: str
    clips: int
    skipped: list = field(default_factory=list)
    reused: int = 0


def default_model_folder() -> str | None:
    """The trained default model shipped in the package, or None where it is absent (then a seeded random one)."""
    from ..pipelines import default_model

    locate = getattr(default_model, "default_model_path", None)
    if locate is not None and (Path(locate()) / "model_index.json").is_file():
        return locate()
    return None


def load_pipeline(model_path_or_pipe, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """A Wan pipeline without its transformer: a folder, ``"default"`` (the embedded tiny model) or a pipeline object."""
    if isinstance(model_path_or_pipe, (str, Path)):
        if str(model_path_or_pipe) == "default" and default_model_folder() is None:
            from ..pipelines.default_model import build_default_pipeline

            pipe = build_default_pipeline()
        else:
            model_path_or_pipe = default_model_folder() if str(model_path_or_pipe) == "default" else model_path_or_pipe
            from diffusers import WanPipeline

            if not Path(model_path_or_pipe).is_dir():
                raise ValueError(f"model must be a diffusers pipeline folder, 'default', or a pipeline object; got {str(model_path_or_pipe)!r}")
            pipe = WanPipeline.from_pretrained(str(model_path_or_pipe), transformer=None, torch_dtype=dtype)
    else:
        pipe = model_path_or_pipe
    for name in ("vae", "text_encoder", "tokenizer"):
        if getattr(pipe, name, None) is None:
            raise ValueError(f"model needs a {name} to prepare data; {type(pipe).__name__} has none")
    pipe.vae.to(device)
    pipe.text_encoder.to(device)
    return pipe


@torch.no_grad()
def encode_text(pipe, captions: list[str], max_sequence_length: int) -> torch.Tensor:
    """UMT5 states (B, max_sequence_length, D), zero beyond each prompt's length, exactly as WanPipeline builds them."""
    embeds, _ = pipe.encode_prompt(
        captions, do_classifier_free_guidance=False, max_sequence_length=max_sequence_length, device=pipe.text_encoder.device
    )
    return embeds


def clip_key(settings: dict, source: Path, relative: str, caption: str) -> str:
    """16 hex digits naming a clip: a hash of the settings, the video's relative path, size and mtime, and its caption."""
    stat = source.stat()
    blob = json.dumps({"settings": settings, "source": relative, "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns, "caption": caption}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def prepare_data(
    videos: str | Path,
    captions: str | Path | None,
    model_path_or_pipe,
    out: str | Path,
    *,
    num_frames: int = 81,
    height: int = 480,
    width: int = 832,
    buckets: Sequence[tuple[int, int]] | None = None,
    frame_stride: int = 1,
    max_sequence_length: int = 512,
    sample_posterior: bool = False,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> PrepareReport:
    """Encode every captioned video under ``videos`` into ``out`` (see the module docstring for the layout).

    ``num_frames`` must fit the VAE's temporal compression (Wan: 4k + 1). Undecodable or too-short videos are
    skipped with a warning and listed in the report and in ``index.json``. ``sample_posterior`` draws z from the
    VAE posterior (seeded per clip) instead of taking its mean. Clips already complete in ``out`` (same video,
    caption and settings) are kept, not encoded again, so an interrupted run resumes; clip files the new index
    does not list are deleted once it is written.
    """
    kill = KillPoints.from_env()
    load_captions(videos, find_videos(videos), captions)  # a bad folder or caption file fails before the model loads
    pipe = load_pipeline(model_path_or_pipe, device=device, dtype=dtype)
    temporal = int(getattr(pipe, "vae_scale_factor_temporal", 4))
    spatial = int(getattr(pipe, "vae_scale_factor_spatial", 8))
    if not isinstance(num_frames, int) or num_frames < 1 or (num_frames - 1) % temporal:
        raise ValueError(f"num_frames must be {temporal}k + 1 (1, {temporal + 1}, {2 * temporal + 1}, ..., 81) for this VAE, got {num_frames!r}")
    dataset = VideoClipDataset(
        videos, captions, num_frames=num_frames, height=height, width=width, buckets=buckets, frame_stride=frame_stride, size_multiple=2 * spatial
    )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model_name = str(model_path_or_pipe) if isinstance(model_path_or_pipe, (str, Path)) else type(model_path_or_pipe).__name__
    settings = {
        "model": model_name, "num_frames": num_frames, "buckets": [list(b) for b in dataset.buckets], "frame_stride": frame_stride,
        "max_sequence_length": max_sequence_length, "sample_posterior": sample_posterior, "seed": seed if sample_posterior else None,
        "dtype": str(dtype).replace("torch.", ""),
    }
    previous = previous_index(out)
    known = {c["file"]: c for c in previous.get("clips", []) if isinstance(c, dict) and "file" in c}
    clips, reused = [], 0
    with warnings.catch_warnings():
        warnings.simplefilter("always", RuntimeWarning)  # one warning per skipped video, even for repeated causes
        for index, source in enumerate(dataset.files):
            relative = source.relative_to(dataset.root).as_posix()
            caption = dataset.captions[source]
            key = clip_key(settings, source, relative, caption)
            target = out / f"{CLIP_PREFIX}{key}.safetensors"
            if target.is_file() and header_problem(target) is None:  # written by an earlier run (renamed only when complete)
                clips.append(clip_record(target, relative, caption, known.get(target.name)))
                reused += 1
                continue
            item = dataset[index]
            if item is None:
                continue
            pixels = item["pixels"].unsqueeze(0).to(device=device, dtype=pipe.vae.dtype)
            with torch.no_grad():
                dist = pipe.vae.encode(pixels).latent_dist
                z = dist.mean
                if sample_posterior:  # seeded per clip, so a resumed run draws what an uninterrupted one would
                    generator = torch.Generator(device="cpu").manual_seed(seed * 1_000_003 + int(key[:12], 16))
                    z = z + dist.std * torch.randn(z.shape, generator=generator).to(z)
            latents = normalise_latents(z.float(), *latent_stats(pipe.vae))[0]
            text = encode_text(pipe, [caption], max_sequence_length)[0].float()
            tmp = temp_name(target)
            save_file({"latents": latents.contiguous().cpu(), "text_embeds": text.contiguous().cpu()}, str(tmp), metadata={"source": relative})
            kill.reach("prepare_clip")  # test hook: dies with this clip written under its temp name only
            replace_synced(tmp, target)
            clips.append(clip_record(target, relative, caption))
    if not clips:
        raise ValueError(f"no usable clips under {str(videos)!r}: all {len(dataset)} were skipped ({dataset.skipped[:3]})")
    index = {
        "version": CACHE_VERSION,
        "model": model_name,
        "num_frames": num_frames,
        "max_sequence_length": max_sequence_length,
        "settings": settings,
        "clips": clips,
        "skipped": [{"path": p, "reason": r} for p, r in dataset.skipped],
    }
    write_json_atomic(out / "index.json", index)
    remove_unlisted(out, {c["file"] for c in clips}, set(known))
    return PrepareReport(out=str(out), clips=len(clips), skipped=list(dataset.skipped), reused=reused)


def clip_record(path: Path, source: str, caption: str, known: dict | None = None) -> dict:
    """The index entry of a clip file: name, source, caption, latent shape, size and SHA-256 (reused from ``known``
    when the size matches, so a resumed run does not re-read every clip)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        shape = list(handle.get_slice("latents").get_shape())
    size = path.stat().st_size
    digest = known["sha256"] if known and known.get("bytes") == size and "sha256" in known else file_sha256(path)
    return {"file": path.name, "source": source, "caption": caption, "shape": shape, "bytes": size, "sha256": digest}


def previous_index(out: Path) -> dict:
    """The index an earlier run left in ``out`` ({} if none or unreadable): only used to reuse hashes and find old files."""
    try:
        value = json.loads((out / "index.json").read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def remove_unlisted(out: Path, listed: set[str], previously_listed: set[str]) -> None:
    """Delete clip files of ``out`` that the new index does not list (other settings, removed videos, temp files)."""
    candidates = {p.name for p in out.glob(f"{CLIP_PREFIX}*.safetensors")} | {p.name for p in out.glob(f".{CLIP_PREFIX}*.tmp")}
    candidates |= {name for name in previously_listed if "/" not in name and name.endswith(".safetensors")}
    for name in sorted(candidates - listed):
        try:
            os.remove(out / name)
        except FileNotFoundError:
            pass


class CachedLatentDataset(torch.utils.data.Dataset):
    """The clips of a :func:`prepare_data` cache: items are ``{"latents": (C,F,H,W), "text_embeds": (L,D)}``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.index = read_index(self.root)
        self.clips = self.index["clips"]
        check_header(self.root, self.clips)  # every file present, complete and of the recorded shape: cheap, no data read

    def __len__(self) -> int:
        return len(self.clips)

    def shape_keys(self) -> list[tuple[int, ...]]:
        """The latent shape of each clip: clips of one batch must share it (aspect buckets)."""
        return [tuple(c["shape"]) for c in self.clips]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        """The clip's tensors; ``CacheError`` naming the file if it is unreadable or holds a NaN/inf."""
        return load_clip(self.root / self.clips[index]["file"], self.clips[index])

    def batch(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        """Stacked latents and text embeddings of ``indices``."""
        items = [self[i] for i in indices]
        return {key: torch.stack([item[key] for item in items]) for key in ("latents", "text_embeds")}


def add_prepare_data_arguments(parser) -> None:
    """The ``vidattn prepare-data`` options on an ``argparse`` (sub)parser; run them with :func:`run_prepare_data`."""
    parser.add_argument("--videos", default=None, help="folder of videos (mp4, webm, mov, avi, mkv, gif; searched recursively)")
    parser.add_argument("--captions", default=None, help="jsonl with {video, caption} per line (default: side-car .txt per video)")
    parser.add_argument("--model", default=None, help="diffusers Wan pipeline folder, or 'default' (the embedded model)")
    parser.add_argument("--out", required=True, help="cache folder to write (index.json + one safetensors per clip); a re-run resumes")
    parser.add_argument("--verify", action="store_true", help="only check every clip of the cache --out (loads, shapes, dtype, finite, hash); exit 2 if any is bad")
    parser.add_argument("--num-frames", type=int, default=81, help="frames per clip, 4k+1 for Wan (default 81)")
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--bucket", action="append", default=None, metavar="HxW", help="aspect bucket, repeatable (default: HEIGHTxWIDTH)")
    parser.add_argument("--frame-stride", type=int, default=1, help="take every n-th frame")
    parser.add_argument("--max-sequence-length", type=int, default=512, help="text tokens (WanPipeline's default 512)")
    parser.add_argument("--sample-posterior", action="store_true", help="sample z from the VAE posterior instead of its mean")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")


def run_prepare_data(args) -> int:
    """Run :func:`prepare_data` (or :func:`verify_cache` with ``--verify``) from parsed options; prints a summary.

    Returns 0, or 2 when ``--verify`` found bad clips (each printed with its problem)."""
    if args.verify:
        checked, problems = verify_cache(args.out)
        for path, problem in problems:
            print(f"bad: {path}: {problem}")
        print(f"verified {checked} clip(s) in {args.out}: {len(problems)} problem(s)" + ("" if not problems else "; re-run prepare-data into it to re-encode them"))
        return 2 if problems else 0
    missing = [flag for flag, value in (("--videos", args.videos), ("--model", args.model)) if value is None]
    if missing:
        raise ValueError(f"{' and '.join(missing)} required to prepare data (only --verify works on --out alone)")
    buckets = [parse_dims(b, "HEIGHTxWIDTH", "480x832", "--bucket") for b in args.bucket] if args.bucket else None
    report = prepare_data(
        args.videos, args.captions, args.model, args.out, num_frames=args.num_frames, height=args.height, width=args.width,
        buckets=buckets, frame_stride=args.frame_stride, max_sequence_length=args.max_sequence_length,
        sample_posterior=args.sample_posterior, device=args.device, dtype=getattr(torch, args.dtype),
    )
    print(f"wrote {report.clips} clip(s) to {report.out} ({report.reused} complete from an earlier run); skipped {len(report.skipped)}")
    for path, reason in report.skipped:
        print(f"  skipped {path}: {reason}")
    return 0
