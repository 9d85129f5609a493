"""FlexAttention for a BlockPlan: a BlockMask whose ``mask_mod`` is the plan's whole token rule, and one compiled
``flex_attention`` with its own recompile budget that raises instead of silently falling back.

Why the mask_mod carries everything: past its recompile limit, compiled flex_attention runs an eager path that
applies only ``mask_mod`` and never reads the BlockMask's tile lists. The compiled kernel skips ``mask_mod`` on
tiles marked full, so the tile lookup costs only on partial tiles (padding, key masks, token-level plans).
Why tensors and buckets: dynamo guards on captured Python ints and on static shapes, so per-call values live in
0-d tensors and tables, and lengths are padded to a few buckets; plans of one kind (one ``mask_mod`` code object)
and bucket then share one compiled kernel (spec flex_compile.md section 1). See docs/flex.md.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from torch._dynamo.exc import FailOnRecompileLimitHit
from torch.nn.attention.flex_attention import BlockMask, flex_attention

from ..patterns.plan import BlockPlan, TokenMask

# Compiled variants vidattn's flex_attention may hold: one per (mask_mod kind x length bucket x dtype x head count
# x block size x scale x device). Batch elements run one at a time, so the batch size never adds a variant.
FLEX_RECOMPILE_LIMIT = 128


class FlexRecompileLimitError(RuntimeError):
    """vidattn's compiled FlexAttention would need more compiled variants than its budget."""


# torch >= 2.13: torch.compile takes a budget of its own (``recompile_limit`` with ``isolate_recompiles``).
COMPILE_HAS_BUDGET = "isolate_recompiles" in inspect.signature(torch.compile).parameters


def compile_flex(recompile_limit: int = FLEX_RECOMPILE_LIMIT, own_budget: bool = COMPILE_HAS_BUDGET):
    """``flex_attention`` compiled for static shapes with an isolated budget of ``recompile_limit`` variants.

    ``fullgraph=True`` makes a hit of the budget (or any graph break) raise instead of running eagerly. Static
    shapes, not ``dynamic=True``: on torch 2.13 the CPU flex template miscompiles symbolic sizes in a mask_mod
    that indexes tables (``cur_kvSplitSize8 was not declared``), so lengths are bucketed instead. Older torch
    (``own_budget`` False) has no per-wrapper budget: every wrapper of ``flex_attention`` shares torch's
    ``torch._dynamo.config.recompile_limit`` (8 by default), which vidattn leaves to the application.
    """
    budget = dict(recompile_limit=recompile_limit, isolate_recompiles=True) if own_budget else {}
    return torch.compile(flex_attention, dynamic=False, fullgraph=True, **budget)


# torch.compile is lazy: nothing is compiled before the first call, and the compiled code lives in torch's cache.
_COMPILED_FLEX = compile_flex()


def bucket_blocks(blocks: int) -> int:
    """The padded block count FlexAttention runs ``blocks`` query/key blocks at: the next 2^k or 1.5 * 2^k (empty
    padded rows cost no compute, padded q/k/v copies up to 50 % memory of one batch element), so nearby lengths
    share one compiled kernel."""
    if blocks <= 4:
        return blocks
    shift = blocks.bit_length() - 2
    return -(-blocks // (1 << shift)) << shift


def plan_mask_mod(tiles: torch.Tensor, block_size: int, n: torch.Tensor, valid: torch.Tensor, token_mask: TokenMask | None):
    """The plan's token rule as a FlexAttention ``mask_mod``: tile kept, key valid, key < n, token mask.

    ``tiles`` is (1, H|1, Qb, Kb) bool, ``valid`` a (padded,) bool key mask, ``n`` a 0-d tensor: per-call values
    live in tensors of bucketed shapes, so every plan of a kind and bucket shares one compiled kernel.
    """
    heads, qb, kb = tiles.shape[1:]
    flat_tiles = tiles.reshape(-1)
    dims = torch.tensor([heads, qb * kb, kb], dtype=torch.int64, device=tiles.device)
    last = n - 1

    def mask_mod(b, h, q_idx, kv_idx):
        tile = (h % dims[0]) * dims[1] + (q_idx // block_size) * dims[2] + kv_idx // block_size
        allowed = flat_tiles[tile] & valid[kv_idx] & (kv_idx < n)
        if token_mask is not None:  # positions past n (block and bucket padding) are clamped into its tables
            allowed = allowed & token_mask(b, h, torch.minimum(q_idx, last), torch.minimum(kv_idx, last))
        return allowed

    return mask_mod


# Up to this many (query block x key token) entries, the tile and key tables are merged into one lookup table:
# one gather per mask element instead of two, about 1.65x faster on partial tiles on CPU (bf16), at one byte each.
COMBINED_TABLE_LIMIT = 1 << 26


def token_rule_mask_mod(valid: torch.Tensor | None, n: torch.Tensor, token_mask: TokenMask):
    """For a token mask that is the plan's whole rule (``BlockPlan.token_mask_within_tiles``): key valid (if a key
    mask or padding exists), key < n, token mask; no tile lookup (~20 % of a window call on CPU, measured)."""
    last = n - 1

    def mask_mod(b, h, q_idx, kv_idx):
        allowed = (kv_idx < n) & token_mask(b, h, torch.minimum(q_idx, last), torch.minimum(kv_idx, last))
        return allowed if valid is None else allowed & valid[kv_idx]

    return mask_mod


def combined_mask_mod(allowed: torch.Tensor, block_size: int, n: torch.Tensor, token_mask: TokenMask | None):
    """Like :func:`plan_mask_mod` for head-shared tiles, from one (Qb, padded) table of tile-kept-and-key-valid."""
    flat = allowed.reshape(-1)
    row = torch.tensor(allowed.shape[1], dtype=torch.int64, device=allowed.device)
    last = n - 1

    def mask_mod(b, h, q_idx, kv_idx):
        result = flat[(q_idx // block_size) * row + kv_idx] & (kv_idx < n)
        if token_mask is not None:  # positions past n (block and bucket padding) are clamped into its tables
            result = result & token_mask(b, h, torch.minimum(q_idx, last), torch.minimum(kv_idx, last))
        return result

    return mask_mod


# On the CPU, query blocks of this many rows cost ~10 % more per tile than 128-row ones but let the kernel skip rows
# that hold only padding (STA's ragged edge tiles put their padding last): used when that drops >= 15 % of the work.
QUERY_SUBBLOCK = 32
SUBBLOCK_MIN_SAVING = 0.15


def padding_free_rows(tiles: torch.Tensor, real: torch.Tensor, block_size: int, device: torch.device) -> torch.Tensor | None:
    """(Qb * r,) bool: which ``QUERY_SUBBLOCK``-row query blocks hold a real token, when splitting ``block_size``-row
    blocks into them pays on this device (see SUBBLOCK_MIN_SAVING); else None. ``real`` is the padded (Qb * bs,) mask."""
    if device.type != "cpu" or block_size <= QUERY_SUBBLOCK or block_size % QUERY_SUBBLOCK:
        return None
    split = block_size // QUERY_SUBBLOCK
    rows = real.view(-1, split, QUERY_SUBBLOCK).any(-1)
    kept = tiles.sum(-1, dtype=torch.float64).sum((0, 1))  # kept key tiles per query block
    work = (kept.unsqueeze(-1) * rows).sum() / (kept.sum() * split).clamp(min=1)
    return rows.view(-1) if work <= 1 - SUBBLOCK_MIN_SAVING else None


def sorted_indices(selected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(count, indices) of the True entries along the last axis, indices first and ascending."""
    counts = selected.sum(-1, dtype=torch.int32)
    order = torch.argsort(selected.to(torch.int8), dim=-1, descending=True, stable=True)
    return counts, order.to(torch.int32)


def flex_block_mask(plan: BlockPlan, key_valid: torch.Tensor | None, device: torch.device | str, batch: int = 0) -> BlockMask:
    """The BlockMask of batch element ``batch`` of ``plan`` (with an optional (B, N) key mask), over the bucketed
    length ``bucket_blocks(num_blocks) * block_size``; memoised on the plan when it is the same for every element.

    Full tiles are the plan's full tiles minus key tiles holding padding or masked keys (those need the mask_mod).
    The token mask sees b = ``batch`` for a plan with per-batch tiles, else b = 0 (its b indexes the plan's batch).
    On the CPU, query rows of padding tokens (``plan.real_keys`` False) may be skipped: their outputs are zeros.
    """
    device = torch.device(device)
    per_element = key_valid is not None or plan.tiles.shape[0] > 1
    memo_key = ("flex", str(device))
    if not per_element and memo_key in plan.memo:
        return plan.memo[memo_key]
    plan_dev = plan.to(device)
    bs, n, blocks = plan.block_size, plan.seq_len, plan.num_blocks
    padded_blocks = bucket_blocks(blocks)
    padded = padded_blocks * bs
    tiles = plan_dev.tiles[batch if plan.tiles.shape[0] > 1 else 0].unsqueeze(0)
    full = torch.zeros_like(tiles) if plan_dev.full is None else plan_dev.full[batch if plan.tiles.shape[0] > 1 else 0].unsqueeze(0) & tiles
    valid = torch.ones(n, dtype=torch.bool, device=device)
    if key_valid is not None:
        valid = valid & key_valid[batch if key_valid.shape[0] > 1 else 0].to(device=device, dtype=torch.bool)
    if plan_dev.real_keys is not None:
        valid = valid & plan_dev.real_keys
    valid = F.pad(valid, (0, padded - n), value=False)
    extra = padded_blocks - blocks
    tiles, full = (F.pad(t, (0, extra, 0, extra), value=False) for t in (tiles, full))
    full = full & valid.view(padded_blocks, bs).all(-1)
    token_mask = plan_dev.token_mask
    if token_mask is not None and plan.tiles.shape[0] > 1:
        token_mask = _shift_batch(token_mask, batch, device)
    n_t = torch.tensor(n, device=device)
    if token_mask is not None and plan.token_mask_within_tiles:
        mask_mod = token_rule_mask_mod(None if bool(valid[:n].all()) else valid, n_t, token_mask)
    elif tiles.shape[1] == 1 and padded_blocks * padded <= COMBINED_TABLE_LIMIT:
        mask_mod = combined_mask_mod(tiles[0, 0].repeat_interleave(bs, dim=1) & valid, bs, n_t, token_mask)
    else:
        mask_mod = plan_mask_mod(tiles, bs, n_t, valid, token_mask)
    q_bs = bs
    if plan_dev.real_keys is not None:  # query rows of padding tokens are never read: skip them where it pays
        rows = padding_free_rows(tiles, F.pad(plan_dev.real_keys, (0, padded - n), value=False), bs, device)
        if rows is not None:
            q_bs = QUERY_SUBBLOCK
            tiles = tiles.repeat_interleave(bs // q_bs, dim=2) & rows.view(-1, 1)
            full = full.repeat_interleave(bs // q_bs, dim=2) & tiles
    kv_num, kv_idx = sorted_indices(tiles & ~full)
    full_num, full_idx = sorted_indices(full)
    # The query-major lists straight from the tiles (what from_kv_blocks derives with vmap, which fails inside a
    # custom op's body: "Cannot access storage of BatchedTensorImpl"; the same sorted lists either way).
    q_num, q_idx = sorted_indices((tiles & ~full).transpose(-1, -2))
    full_q_num, full_q_idx = sorted_indices(full.transpose(-1, -2))
    block_mask = BlockMask(
        (padded, padded), kv_num, kv_idx, full_num, full_idx, q_num, q_idx, full_q_num, full_q_idx, BLOCK_SIZE=(q_bs, bs), mask_mod=mask_mod
    )
    if not per_element:
        plan.memo[memo_key] = block_mask
    return block_mask


def _shift_batch(token_mask: TokenMask, batch: int, device: torch.device) -> TokenMask:
    """A per-batch token mask seen from one batch element run alone (its b is always 0)."""
    offset = torch.tensor(batch, device=device)

    def shifted(b, h, q_idx, kv_idx):
        return token_mask(b + offset, h, q_idx, kv_idx)

    return shifted


def flex_plan_attention(query, key, value, plan: BlockPlan, key_valid, scale: float, compiled=None) -> torch.Tensor:
    """(B, H, N, D) attention under ``plan`` with compiled FlexAttention (``compiled``: a :func:`compile_flex`
    wrapper, default vidattn's own), one batch element at a time at a bucketed length. Raises
    FlexRecompileLimitError rather than running the unfused eager path (which is slow and memory-hungry)."""
    n = plan.seq_len
    padded = bucket_blocks(plan.num_blocks) * plan.block_size
    compiled = _COMPILED_FLEX if compiled is None else compiled
    outputs = []
    for b in range(query.shape[0]):
        block_mask = flex_block_mask(plan, key_valid, query.device, b)
        q, k, v = (F.pad(x[b : b + 1], (0, 0, 0, padded - n)) for x in (query, key, value))
        try:
            out = compiled(q, k, v, block_mask=block_mask, scale=scale)
        except FailOnRecompileLimitHit as err:
            raise FlexRecompileLimitError(
                "vidattn's compiled FlexAttention reached its recompile budget: this call (dtype "
                f"{query.dtype}, {query.shape[1]} heads, {padded} padded tokens, block_size {plan.block_size}, scale "
                f"{scale:.6g}) would need one more compiled variant, and torch's fallback would run unfused (slow, "
                "N x N memory); use fewer distinct dtypes/head counts/scales/mask kinds per process, or "
                "backend='gather' or 'dense'"
            ) from err
        outputs.append(out[..., :n, :])
    return torch.cat(outputs) if len(outputs) > 1 else outputs[0]
