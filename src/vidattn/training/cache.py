"""Precompute VAE latents and text embeddings once (safetensors), so training loads neither VAE nor text encoder.

Layout of a cache folder: ``index.json`` (settings, clips, skipped videos) and one ``NNNNNN.safetensors`` per clip
holding ``latents`` (C, F, H, W), normalised like WanPipeline expects, and ``text_embeds`` (L, D).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from safetensors.torch import load_file, save_file

from ..latents import latent_stats, normalise_latents
from ..layout import parse_dims
from .dataset import VideoClipDataset

CACHE_VERSION = 1


@dataclass
class PrepareReport:
    """What :func:`prepare_data` wrote: clip count, skipped videos (path, reason) and the cache folder."""

    out: str
    clips: int
    skipped: list = field(default_factory=list)


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
    VAE posterior (seeded) instead of taking its mean.
    """
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
    generator = torch.Generator(device="cpu").manual_seed(seed)
    clips = []
    with warnings.catch_warnings():
        warnings.simplefilter("always", RuntimeWarning)  # one warning per skipped video, even for repeated causes
        for index in range(len(dataset)):
            item = dataset[index]
            if item is None:
                continue
            pixels = item["pixels"].unsqueeze(0).to(device=device, dtype=pipe.vae.dtype)
            with torch.no_grad():
                dist = pipe.vae.encode(pixels).latent_dist
                z = dist.mean
                if sample_posterior:
                    z = z + dist.std * torch.randn(z.shape, generator=generator).to(z)
            latents = normalise_latents(z.float(), *latent_stats(pipe.vae))[0]
            text = encode_text(pipe, [item["caption"]], max_sequence_length)[0].float()
            name = f"{len(clips):06d}.safetensors"
            save_file({"latents": latents.contiguous().cpu(), "text_embeds": text.contiguous().cpu()}, str(out / name))
            clips.append({"file": name, "source": str(Path(item["path"]).relative_to(dataset.root)), "caption": item["caption"], "shape": list(latents.shape)})
    if not clips:
        raise ValueError(f"no usable clips under {str(videos)!r}: all {len(dataset)} were skipped ({dataset.skipped[:3]})")
    index = {
        "version": CACHE_VERSION,
        "model": str(model_path_or_pipe) if isinstance(model_path_or_pipe, (str, Path)) else type(model_path_or_pipe).__name__,
        "num_frames": num_frames,
        "max_sequence_length": max_sequence_length,
        "clips": clips,
        "skipped": [{"path": p, "reason": r} for p, r in dataset.skipped],
    }
    (out / "index.json").write_text(json.dumps(index, indent=1))
    return PrepareReport(out=str(out), clips=len(clips), skipped=list(dataset.skipped))


class CachedLatentDataset(torch.utils.data.Dataset):
    """The clips of a :func:`prepare_data` cache: items are ``{"latents": (C,F,H,W), "text_embeds": (L,D)}``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        index_file = self.root / "index.json"
        if not index_file.is_file():
            raise ValueError(f"data must be a cache folder written by prepare_data (with index.json), got {str(self.root)!r}")
        self.index = json.loads(index_file.read_text())
        if self.index.get("version") != CACHE_VERSION:
            raise ValueError(f"cache {self.root} has version {self.index.get('version')!r}, this vidattn reads version {CACHE_VERSION}")
        self.clips = self.index["clips"]
        if not self.clips:
            raise ValueError(f"cache {self.root} holds no clips")

    def __len__(self) -> int:
        return len(self.clips)

    def shape_keys(self) -> list[tuple[int, ...]]:
        """The latent shape of each clip: clips of one batch must share it (aspect buckets)."""
        return [tuple(c["shape"]) for c in self.clips]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return load_file(str(self.root / self.clips[index]["file"]))

    def batch(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        """Stacked latents and text embeddings of ``indices``."""
        items = [self[i] for i in indices]
        return {key: torch.stack([item[key] for item in items]) for key in ("latents", "text_embeds")}


def add_prepare_data_arguments(parser) -> None:
    """The ``vidattn prepare-data`` options on an ``argparse`` (sub)parser; run them with :func:`run_prepare_data`."""
    parser.add_argument("--videos", required=True, help="folder of videos (mp4, webm, mov, avi, mkv, gif; searched recursively)")
    parser.add_argument("--captions", default=None, help="jsonl with {video, caption} per line (default: side-car .txt per video)")
    parser.add_argument("--model", required=True, help="diffusers Wan pipeline folder, or 'default' (the embedded model)")
    parser.add_argument("--out", required=True, help="cache folder to write (index.json + one safetensors per clip)")
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
    """Run :func:`prepare_data` from parsed :func:`add_prepare_data_arguments` options; prints a summary."""
    buckets = [parse_dims(b, "HEIGHTxWIDTH", "480x832", "--bucket") for b in args.bucket] if args.bucket else None
    report = prepare_data(
        args.videos, args.captions, args.model, args.out, num_frames=args.num_frames, height=args.height, width=args.width,
        buckets=buckets, frame_stride=args.frame_stride, max_sequence_length=args.max_sequence_length,
        sample_posterior=args.sample_posterior, device=args.device, dtype=getattr(torch, args.dtype),
    )
    print(f"wrote {report.clips} clip(s) to {report.out}; skipped {len(report.skipped)}")
    for path, reason in report.skipped:
        print(f"  skipped {path}: {reason}")
    return 0
