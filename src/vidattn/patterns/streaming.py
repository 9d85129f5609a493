"""Streaming attention's pattern, as pure functions: which window frames a chunk keeps, where RoPE puts them,
and which key blocks of the window each query block reads (Hybrid Forcing's top-k by mean-pooled q . k)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .plan import BlockPlan


def rope_positions(frames: list[int], query_end: int, sink_frames: int, max_frames: int, relative: bool = True) -> list[int]:
    """RoPE frame positions of the absolute ``frames``: unchanged if not ``relative``; else the sink keeps 0..,
    the rest shifts so the current chunk (ending at ``query_end``) ends at most at ``max_frames`` (Hybrid Forcing)."""
    if not relative:
        return list(frames)
    shift = max(0, query_end - max_frames)
    return [f if f < sink_frames else f - shift for f in frames]


def frames_to_evict(frames: list[int], sink_frames: int, keep_past: int) -> list[int]:
    """Cache slots (indices into ``frames``) to drop so at most ``keep_past`` non-sink frames stay, oldest first."""
    movable = [i for i, f in enumerate(frames) if f >= sink_frames]
    return movable[: max(0, len(movable) - keep_past)]


def frame_tokens(slots: list[int], tokens_per_frame: int, device) -> torch.Tensor:
    """Token indices of the cache slots ``slots`` (each slot one frame of ``tokens_per_frame`` tokens)."""
    slots_t = torch.tensor(slots, dtype=torch.long, device=device).view(-1, 1)
    return (slots_t * tokens_per_frame + torch.arange(tokens_per_frame, device=device)).flatten()


def block_mean(x: torch.Tensor, block_size: int) -> torch.Tensor:
    """Mean of each ``block_size``-token block of (B, H, N, D) over its real tokens (the last block may be short)."""
    n = x.shape[-2]
    blocks = -(-n // block_size)
    padded = F.pad(x, (0, 0, 0, blocks * block_size - n)).unflatten(-2, (blocks, block_size)).sum(-2)
    counts = torch.full((blocks,), float(block_size), device=x.device, dtype=x.dtype)
    counts[-1] = n - (blocks - 1) * block_size
    return padded / counts.view(-1, 1)


def topk_window_plan(query: torch.Tensor, key: torch.Tensor, keep: float, block_size: int) -> BlockPlan:
    """Per (batch, head, query block): the top ``keep`` fraction of key blocks by mean-pooled q . k.

    Queries index blocks from the first query, keys from the start of the window; the plan is square over the
    key length (query blocks past the queries select nothing). Subtracting the key mean (as SLA does) would
    shift each row's scores by a constant, so it is skipped: the selection is the same.
    """
    n_keys = key.shape[-2]
    q_blocks, k_blocks = -(-query.shape[-2] // block_size), -(-n_keys // block_size)
    scores = block_mean(query.float(), block_size) @ block_mean(key.float(), block_size).transpose(-1, -2)
    count = max(1, min(k_blocks, int(keep * k_blocks + 1e-9)))
    chosen = scores.topk(count, dim=-1).indices
    tiles = torch.zeros(*scores.shape[:2], k_blocks, k_blocks, dtype=torch.bool, device=query.device)
    tiles[:, :, :q_blocks].scatter_(-1, chosen, True)
    return BlockPlan(tiles, block_size, n_keys)
