"""`vidattn generate --context-parallel ulysses=N` under torchrun: process group, checks, diffusers' enable_parallelism."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def parse_context_parallel(spec: str | None) -> int:
    """The Ulysses degree of ``--context-parallel ulysses=N`` (1 when not given); ring / unified are refused."""
    if spec is None:
        return 1
    key, _, value = spec.partition("=")
    if key.strip() != "ulysses" or not value.strip().isdigit() or int(value) < 2:
        raise ValueError(
            f"--context-parallel must be ulysses=N with N >= 2 (Ulysses; ring and unified context parallelism are not "
            f"supported by vidattn processors), got {spec!r}"
        )
    return int(value)


def init_process_group(degree: int) -> bool:
    """Join (or start, from torchrun's environment) the default process group of ``degree`` ranks; True if started here."""
    started = False
    if not dist.is_initialized():
        if "WORLD_SIZE" not in os.environ:
            raise ValueError(f"--context-parallel ulysses={degree} runs under torchrun: torchrun --nproc_per_node {degree} -m vidattn.cli.main generate ...")
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend)
        started = True
    if dist.get_world_size() != degree:
        if started:
            dist.destroy_process_group()
        raise ValueError(f"--context-parallel ulysses={degree} needs exactly {degree} processes, got {dist.get_world_size()} (torchrun --nproc_per_node {degree})")
    return started


def check_parallel_run(pipe, degree: int, frames: int, height: int, width: int) -> None:
    """Raise ``ValueError`` before generating if the run cannot be split ``degree`` ways (heads, tokens, accelerator)."""
    if torch.accelerator.device_count() < 1:
        raise ValueError(
            "diffusers' enable_parallelism needs an accelerator: it computes rank % torch.accelerator.device_count(), "
            "which is 0 on this CPU-only torch (see docs/distributed.md)"
        )
    config = pipe.transformer.config
    heads = config.num_attention_heads
    if heads % degree:
        raise ValueError(f"--context-parallel ulysses={degree} must divide the transformer's {heads} attention heads")
    p_t, p_h, p_w = config.patch_size
    latent_frames = (frames - 1) // pipe.vae_scale_factor_temporal + 1
    spatial = pipe.vae_scale_factor_spatial
    tokens = (latent_frames // p_t) * (height // spatial // p_h) * (width // spatial // p_w)
    if tokens % degree:
        raise ValueError(
            f"--frames {frames} --height {height} --width {width} give {tokens} video tokens, not divisible by "
            f"ulysses={degree}: diffusers splits the sequence evenly"
        )


def enable_context_parallel(pipe, degree: int) -> None:
    """diffusers' Ulysses on ``pipe.transformer`` (vidattn processors already installed take its config)."""
    from diffusers import ContextParallelConfig

    from ..processors.parallel import vidattn_cp_plan

    if torch.cuda.is_available():
        pipe.to(f"cuda:{torch.cuda.current_device()}")
    transformer = pipe.transformer
    transformer.enable_parallelism(config=ContextParallelConfig(ulysses_degree=degree), cp_plan=vidattn_cp_plan(transformer))
