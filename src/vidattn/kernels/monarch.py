"""Monarch attention (MonarchRT): two-stage factorised video attention in differentiable pure PyTorch.

Tiling: frames are tied in groups of ``f_tied`` and each frame is cut into ``h_reduce x w_reduce`` spatial
tiles; a Monarch tile has ``b1 = f_tied * H / h_reduce`` rows and ``b2 = W / w_reduce`` columns. Query tile
``a`` at (row i, column j) attends to key tile ``f`` at (row k, column l) with weight
``L_{a,j}[i, (f, k)] * R_{a,f,k,j}[l]``:

* R step: ``R = softmax_l(scale * Q[a,k,j] . K[f,k,l])`` (the query at the key's row index), giving the
  aggregated key ``aL = sum_l R K``, value ``Y = sum_l R V`` and entropy term ``cL = sum_l R (z - lse z)``;
* L step: ``softmax`` over every (f, k) of ``scale * Q[a,i,j] . aL - cL``, output ``sum L Y``.

Softmax scale is ``1/sqrt(d)`` everywhere (the official causal path passes ``num_iters`` as the scale; not
copied). The result is exact when ``w_reduce = W`` or when ``h_reduce = H`` with ``f_tied = 1``.

Text tokens (joint attention) are **exact extra keys in the L-step softmax**: each text key is its own group
with logit ``scale * q . k_text`` and zero entropy, value ``v_text``; text queries attend densely to every key.
Memory is bounded by processing query tiles in chunks (optionally with activation checkpointing).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint as _checkpoint

from ..layout import VideoLayout

# Upper bound on the intermediates (R-step logits, aggregated keys/values, L-step logits) of one query chunk.
DEFAULT_CHUNK_BYTES = 256 * 2**20


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def check_tiling(frames: int, height: int, width: int, f_tied: int, h_reduce: int, w_reduce: int) -> None:
    """Raise ``ValueError`` unless ``f_tied | frames``, ``h_reduce | height`` and ``w_reduce | width`` (no padding)."""
    for name, value in (("f_tied", f_tied), ("h_reduce", h_reduce), ("w_reduce", w_reduce)):
        _positive_int(name, value)
    for name, value, size, axis in (
        ("f_tied", f_tied, frames, "frames"),
        ("h_reduce", h_reduce, height, "height"),
        ("w_reduce", w_reduce, width, "width"),
    ):
        if size % value:
            raise ValueError(f"{name}={value} must divide the grid {axis} {size}; allowed values: {_divisors(size)}")


def tile_shape(height: int, width: int, f_tied: int, h_reduce: int, w_reduce: int) -> tuple[int, int]:
    """(b1, b2): rows (``f_tied * height / h_reduce``) and columns (``width / w_reduce``) of one Monarch tile."""
    return f_tied * (height // h_reduce), width // w_reduce


def to_tiles(x: torch.Tensor, height: int, width: int, f_tied: int, h_reduce: int, w_reduce: int) -> torch.Tensor:
    """(B, H, F*height*width, D) frame-major tokens -> (B, H, tiles, b1, b2, D) Monarch tiles (tile = frame group, row tile, column tile)."""
    b, h, n, d = x.shape
    frames = n // (height * width)
    x = x.reshape(b, h, frames // f_tied, f_tied, h_reduce, height // h_reduce, w_reduce, width // w_reduce, d)
    x = x.permute(0, 1, 2, 4, 6, 3, 5, 7, 8)
    b1, b2 = tile_shape(height, width, f_tied, h_reduce, w_reduce)
    return x.reshape(b, h, -1, b1, b2, d)


def from_tiles(x: torch.Tensor, height: int, width: int, f_tied: int, h_reduce: int, w_reduce: int) -> torch.Tensor:
    """Inverse of :func:`to_tiles`: (B, H, tiles, b1, b2, D) -> (B, H, F*height*width, D)."""
    b, h, tiles, _, _, d = x.shape
    groups = tiles // (h_reduce * w_reduce)
    x = x.reshape(b, h, groups, h_reduce, w_reduce, f_tied, height // h_reduce, width // w_reduce, d)
    x = x.permute(0, 1, 2, 5, 3, 6, 4, 7, 8)
    return x.reshape(b, h, groups * f_tied * height * width, d)


def _softmax(logits: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Softmax in at least float32 (half-precision logits are upcast), returned in ``dtype``."""
    work = logits if logits.dtype in (torch.float32, torch.float64) else logits.float()
    return work.softmax(-1).to(dtype)


def _monarch_chunk(
    q: torch.Tensor,
    k_rows: torch.Tensor,
    k_tiles: torch.Tensor,
    v_tiles: torch.Tensor,
    extra_key: torch.Tensor | None,
    extra_value: torch.Tensor | None,
    extra_bias: torch.Tensor | None,
    scale: float,
) -> torch.Tensor:
    """Monarch output of query tiles ``q`` (B, H, A, b1, b2, D) against every key tile.

    ``k_rows`` (B, H, b1, F*b2, D): keys grouped by tile row k; ``k_tiles``/``v_tiles`` (B, H, b1, F, b2, D|Dv):
    keys and values of row k of tile f. Extra keys (B|1, H, T, D) with bias (B|1, T) join the L step.
    """
    b, h, a, b1, b2, d = q.shape
    tiles, dv = k_tiles.shape[3], v_tiles.shape[-1]
    dtype = q.dtype
    wide = dtype if dtype in (torch.float32, torch.float64) else torch.float32
    q = q * scale  # scale once on the queries: R logits and L logits both take scale * q . k
    # R step, laid out (B, H, k, f, l, (a j)): logits of every query Q[a, k, j] against every key K[f, k, l].
    q_rows = q.transpose(2, 3).reshape(b, h, b1, a * b2, d)
    z = (k_rows @ q_rows.transpose(-1, -2)).view(b, h, b1, tiles, b2, a * b2).to(wide)
    z = z - z.amax(-2, keepdim=True).detach()  # softmax over l is shift-invariant, and so is cL below
    e = z.exp()
    total = e.sum(-2, keepdim=True)
    r = e / total
    c_l = torch.linalg.vecdot(r, z, dim=-2) - total.squeeze(-2).log()  # (B, H, k, f, (a j)): sum_l R (z - lse) = -entropy(R)
    r_t = r.to(dtype).transpose(-1, -2)  # (B, H, k, f, (a j), l)
    a_l, y = r_t @ k_tiles, r_t @ v_tiles  # (B, H, k, f, (a j), D|Dv)
    # L step: query Q[a, i, j] against every (f, k) of its column j, logit scale * q . aL - cL.
    a_l = a_l.view(b, h, b1, tiles, a, b2, d).permute(0, 1, 4, 5, 3, 2, 6).reshape(b, h, a, b2, tiles * b1, d)
    y = y.view(b, h, b1, tiles, a, b2, dv).permute(0, 1, 4, 5, 3, 2, 6).reshape(b, h, a, b2, tiles * b1, dv)
    bias = c_l.view(b, h, b1, tiles, a, b2).permute(0, 1, 4, 5, 3, 2).reshape(b, h, a, b2, 1, tiles * b1)
    q_cols = q.transpose(3, 4)  # (B, H, A, b2, b1, D)
    logits = (q_cols @ a_l.transpose(-1, -2)).to(wide) - bias
    if extra_key is None:
        out = _softmax(logits, dtype) @ y
    else:
        text = extra_key.shape[-2]
        t_logits = (q.reshape(b, h, -1, d) @ extra_key.transpose(-1, -2)).view(b, h, a, b1, b2, text).transpose(3, 4).to(wide)
        if extra_bias is not None:
            t_logits = t_logits + extra_bias.to(wide).view(extra_bias.shape[0], 1, 1, 1, 1, text)
        p = _softmax(torch.cat([logits, t_logits], -1), dtype)
        out = p[..., : tiles * b1] @ y
        p_text = p[..., tiles * b1 :].transpose(3, 4).reshape(b, h, -1, text)
        out = out + (p_text @ extra_value).view(b, h, a, b1, b2, dv).transpose(3, 4)
    return out.transpose(3, 4)  # (B, H, A, b1, b2, Dv)


def _chunk_tiles(per_tile_bytes: int, query_chunk: int | None) -> int:
    if query_chunk is not None:
        _positive_int("query_chunk", query_chunk)
        return query_chunk
    return max(1, DEFAULT_CHUNK_BYTES // max(per_tile_bytes, 1))


def monarch_video_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    height: int,
    width: int,
    *,
    f_tied: int = 1,
    h_reduce: int = 1,
    w_reduce: int = 1,
    block_causal_frames: int | None = None,
    extra_key: torch.Tensor | None = None,
    extra_value: torch.Tensor | None = None,
    extra_bias: torch.Tensor | None = None,
    scale: float | None = None,
    query_chunk: int | None = None,
    checkpoint: bool = False,
) -> torch.Tensor:
    """Monarch attention of video-only (B, H, Fq*height*width, D) queries to (B, H, Fk*height*width, D) keys.

    Queries see every key frame, unless ``block_causal_frames = C`` (then Fq = Fk and a query in frame chunk
    m = frame // C sees key frames < (m + 1) * C). ``extra_key``/``extra_value`` (B|1, H, T, D) are exact extra
    keys of the L-step softmax with additive ``extra_bias`` (B|1, T) (use -inf to mask a key). ``query_chunk``
    query tiles are processed at a time (default: as many as fit ``DEFAULT_CHUNK_BYTES``); ``checkpoint``
    recomputes each chunk in backward instead of storing it.
    """
    if query.ndim != 4 or key.ndim != 4 or value.ndim != 4:
        raise ValueError(f"query, key, value must be (B, H, N, D), got {tuple(query.shape)}, {tuple(key.shape)}, {tuple(value.shape)}")
    _positive_int("height", height)
    _positive_int("width", width)
    per_frame = height * width
    if query.shape[-2] % per_frame or key.shape[-2] % per_frame or key.shape[-2] != value.shape[-2] or key.shape[-2] == 0:
        raise ValueError(
            f"query ({query.shape[-2]}) and key/value ({key.shape[-2]}/{value.shape[-2]}) tokens must be equal whole numbers "
            f"of frames of height*width = {per_frame} tokens"
        )
    if query.shape[-1] != key.shape[-1]:
        raise ValueError(f"query and key head dims differ: {query.shape[-1]} vs {key.shape[-1]}")
    q_frames, k_frames = query.shape[-2] // per_frame, key.shape[-2] // per_frame
    check_tiling(q_frames, height, width, f_tied, h_reduce, w_reduce)
    check_tiling(k_frames, height, width, f_tied, h_reduce, w_reduce)
    if block_causal_frames is not None:
        _positive_int("block_causal_frames", block_causal_frames)
        if block_causal_frames % f_tied:
            raise ValueError(f"f_tied={f_tied} must divide block_causal_frames={block_causal_frames}; allowed f_tied: {_divisors(block_causal_frames)}")
        if q_frames != k_frames:
            raise ValueError(f"block_causal_frames needs as many query frames as key frames, got {q_frames} and {k_frames}")
    if (extra_key is None) != (extra_value is None):
        raise ValueError("extra_key and extra_value must be given together")
    scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else scale
    d, dv = key.shape[-1], value.shape[-1]
    tiling = (height, width, f_tied, h_reduce, w_reduce)
    b1, b2 = tile_shape(height, width, f_tied, h_reduce, w_reduce)
    q_tiles = to_tiles(query, *tiling)
    k_tiles, v_tiles = to_tiles(key, *tiling), to_tiles(value, *tiling)
    k_tiles, v_tiles = k_tiles.transpose(2, 3).contiguous(), v_tiles.transpose(2, 3).contiguous()  # (B, H, b1, F, b2, D)
    k_rows = k_tiles.flatten(3, 4)  # (B, H, b1, F*b2, D)
    n_q, n_k = q_tiles.shape[2], k_tiles.shape[3]
    per_group = h_reduce * w_reduce  # tiles per frame group

    # Query-tile ranges [start, stop) with the number of key tiles each may see.
    if block_causal_frames is None:
        spans = [(0, n_q, n_k)]
    else:
        step = block_causal_frames // f_tied * per_group
        spans = [(s, min(s + step, n_q), min(s + step, n_k)) for s in range(0, n_q, step)]
    batch, heads = max(query.shape[0], key.shape[0]), query.shape[1]
    elem = 4 if query.dtype != torch.float64 else 8
    per_tile = batch * heads * b1 * b2 * n_k * (3 * b2 + 2 * (d + dv) + b1 + (extra_key.shape[-2] if extra_key is not None else 0)) * elem
    chunk = _chunk_tiles(per_tile, query_chunk)

    def run(q, k_r, k_t, v_t, ek, ev, eb):
        return _monarch_chunk(q, k_r, k_t, v_t, ek, ev, eb, scale)

    outs = []
    for start, stop, visible in spans:
        k_r, k_t, v_t = k_rows[..., : visible * b2, :], k_tiles[:, :, :, :visible], v_tiles[:, :, :, :visible]
        for s in range(start, stop, chunk):
            q = q_tiles[:, :, s : min(s + chunk, stop)]
            args = (q, k_r, k_t, v_t, extra_key, extra_value, extra_bias)
            if checkpoint and torch.is_grad_enabled():
                outs.append(_checkpoint(run, *args, use_reentrant=False))
            else:
                outs.append(run(*args))
    return from_tiles(outs[0] if len(outs) == 1 else torch.cat(outs, 2), *tiling)


def monarch_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    layout: VideoLayout,
    *,
    f_tied: int = 1,
    h_reduce: int = 1,
    w_reduce: int = 1,
    block_causal_frames: int | None = None,
    key_valid: torch.Tensor | None = None,
    scale: float | None = None,
    query_chunk: int | None = None,
    checkpoint: bool = False,
) -> torch.Tensor:
    """Monarch attention of joint-sequence (B, H, N, D) tensors laid out as ``layout`` (video plus text tokens).

    Video queries: Monarch over the video keys with the text keys as exact extra L-step keys. Text queries:
    dense attention to every key. ``key_valid`` (B, N) bool may mask text keys only (video keys must be valid).
    """
    if not isinstance(layout, VideoLayout):
        raise ValueError(f"layout must be a VideoLayout, got {type(layout).__name__}")
    n = layout.total_tokens
    if query.ndim != 4 or query.shape[-2] != n or key.shape[-2] != n or value.shape[-2] != n:
        raise ValueError(f"layout {layout} has {n} tokens; query/key/value must be (B, H, {n}, D), got {tuple(query.shape)}, {tuple(key.shape)}")
    start, video = layout.video_start, layout.video_tokens
    vid = layout.video_slice
    txt = torch.cat([torch.arange(0, start), torch.arange(start + video, n)]).to(query.device) if layout.text else None
    text_bias = None
    if key_valid is not None:
        if key_valid.dtype != torch.bool or key_valid.ndim != 2 or key_valid.shape[-1] != n or key_valid.shape[0] not in (1, query.shape[0]):
            raise ValueError(f"key_valid must be a bool tensor of shape (B, {n}), got {key_valid.dtype} {tuple(key_valid.shape)}")
        if not bool(key_valid[:, vid].all()):
            raise ValueError("key_valid may only mask text keys: Monarch attention needs every video key")
        if txt is not None:
            valid_text = key_valid.index_select(-1, txt.to(key_valid.device))
            text_bias = torch.zeros(valid_text.shape, dtype=torch.float32, device=query.device).masked_fill(~valid_text.to(query.device), -math.inf)
    extra_k = extra_v = None
    if txt is not None:
        extra_k, extra_v = key.index_select(-2, txt), value.index_select(-2, txt)
    out_video = monarch_video_attention(
        query[:, :, vid], key[:, :, vid], value[:, :, vid], layout.height, layout.width,
        f_tied=f_tied, h_reduce=h_reduce, w_reduce=w_reduce, block_causal_frames=block_causal_frames,
        extra_key=extra_k, extra_value=extra_v, extra_bias=text_bias, scale=scale, query_chunk=query_chunk, checkpoint=checkpoint,
    )
    if txt is None:
        return out_video
    mask = None if key_valid is None else key_valid[:, None, None, :].to(query.device)
    out_text = F.scaled_dot_product_attention(query.index_select(-2, txt), key, value, attn_mask=mask, scale=scale)
    parts = [out_video, out_text] if layout.text_position == "after" else [out_text, out_video]
    return torch.cat(parts, -2)


def monarch_attention_with_kv_cache(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    new_key: torch.Tensor,
    new_value: torch.Tensor,
    start: int,
    height: int,
    width: int,
    *,
    visible_from: int = 0,
    f_tied: int = 1,
    h_reduce: int = 1,
    w_reduce: int = 1,
    scale: float | None = None,
    query_chunk: int | None = None,
) -> torch.Tensor:
    """Streaming step: write ``new_key``/``new_value`` into the caches at token ``start`` (in place), then attend
    ``query`` (the current chunk's frames) to cached tokens ``[visible_from, start + new)`` without a mask.

    Caches are (B, H, capacity, D); positions and lengths must be whole frames. With ``visible_from = 0`` and
    chunks written in order this reproduces ``block_causal_frames`` = chunk length on the whole video.
    """
    per_frame = height * width
    end = start + new_key.shape[-2]
    if new_key.shape[-2] != new_value.shape[-2]:
        raise ValueError(f"new_key and new_value must have the same token count, got {tuple(new_key.shape)} and {tuple(new_value.shape)}")
    if not (0 <= visible_from <= start and end <= key_cache.shape[-2] and end <= value_cache.shape[-2]):
        raise ValueError(f"need 0 <= visible_from ({visible_from}) <= start ({start}) and start + new ({end}) <= cache capacity ({key_cache.shape[-2]})")
    if start % per_frame or visible_from % per_frame or new_key.shape[-2] % per_frame:
        raise ValueError(f"start ({start}), visible_from ({visible_from}) and new tokens ({new_key.shape[-2]}) must be whole frames of {per_frame} tokens")
    key_cache[:, :, start:end].copy_(new_key)
    value_cache[:, :, start:end].copy_(new_value)
    return monarch_video_attention(
        query, key_cache[:, :, visible_from:end], value_cache[:, :, visible_from:end], height, width,
        f_tied=f_tied, h_reduce=h_reduce, w_reduce=w_reduce, scale=scale, query_chunk=query_chunk,
    )


def monarch_flops(layout: VideoLayout, head_dim: int, f_tied: int = 1, h_reduce: int = 1, w_reduce: int = 1) -> dict[str, float]:
    """Matmul FLOPs per (batch, head) of Monarch and of dense attention over the video tokens (text excluded).

    R step: logits + R @ [K | V] (3 GEMMs); L step: logits + L @ Y (2 GEMMs). Ratio ~ 1.5 / b1 + 1 / b2.
    """
    check_tiling(layout.frames, layout.height, layout.width, f_tied, h_reduce, w_reduce)
    b1, b2 = tile_shape(layout.height, layout.width, f_tied, h_reduce, w_reduce)
    n = layout.video_tokens
    r_step = 2 * n * (n // b1) * head_dim * 3  # each query row-group x every key row: logits, aL, Y
    l_step = 2 * n * (n // b2) * head_dim * 2  # each query x every (tile, row) group: logits, output
    dense = 4 * n * n * head_dim
    return {"monarch": float(r_step + l_step), "dense": float(dense), "ratio": (r_step + l_step) / dense, "b1": b1, "b2": b2}
