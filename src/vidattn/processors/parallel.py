"""Ulysses context parallelism for vidattn processors, on diffusers' own parallel config and all-to-all helpers.

Under ``transformer.enable_parallelism(config=ContextParallelConfig(ulysses_degree=N))`` each rank holds S/N tokens
of the video. A processor exchanges q/k/v to all S tokens and H/N heads (diffusers' ``SeqAllToAllDim``), runs its
unchanged kernel on the full, globally ordered sequence (plans built for the global grid) and exchanges back.
Joint text tokens are replicated on every rank: only the video part goes through the all-to-all.
Ring, unified (ring x Ulysses) and ``*_anything`` configs are refused: a sparse plan needs every key position.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.distributed as dist

from ..kernels.dense import key_masked_attention
from ..layout import VideoLayout
from .families import ProjectedCall

ULYSSES_HINT = "use ContextParallelConfig(ulysses_degree=N) (Ulysses), with N dividing the number of attention heads"


def ulysses_group(parallel_config: Any) -> dist.ProcessGroup | None:
    """The Ulysses process group of the ``ParallelConfig`` diffusers gave a processor (None: not context-parallel).

    Raises ``ValueError`` for configs a vidattn processor cannot honour (ring / unified / ``*_anything``).
    """
    if parallel_config is None:
        return None
    cp = getattr(parallel_config, "context_parallel_config", parallel_config)
    if cp is None:
        return None
    check_ulysses_config(cp)
    mesh = getattr(cp, "_ulysses_mesh", None)
    if mesh is None:
        raise ValueError("the context-parallel config is not set up: call transformer.enable_parallelism(config=...) first")
    return mesh.get_group()


def check_ulysses_config(cp: Any) -> None:
    """Raise ``ValueError`` unless ``cp`` (a ``ContextParallelConfig``) is plain Ulysses."""
    if getattr(cp, "ring_degree", 1) > 1:
        raise ValueError(
            f"ring_degree={cp.ring_degree}: vidattn processors do not support ring or unified context parallelism "
            f"(a sparse plan needs every key position, ring attention passes K/V chunks round); {ULYSSES_HINT}"
        )
    if getattr(cp, "ulysses_anything", False) or getattr(cp, "ring_anything", False):
        raise ValueError(
            "ulysses_anything / ring_anything: vidattn processors do not support uneven context-parallel splits; "
            f"{ULYSSES_HINT} and a token count divisible by N"
        )


def model_ulysses_degree(transformer: torch.nn.Module) -> int:
    """The Ulysses degree ``transformer`` runs under (1: not context-parallel); refuses ring / ``*_anything``."""
    config = getattr(transformer, "_parallel_config", None)
    cp = getattr(config, "context_parallel_config", None)
    if cp is None:
        return 1
    check_ulysses_config(cp)
    return cp.ulysses_degree


def share_parallel_config(transformer: torch.nn.Module) -> None:
    """Give every attention processor of ``transformer`` that takes one the model's context-parallel config.

    ``enable_parallelism`` does this only for the processors present when it runs; call this after installing
    processors on a model that is already parallel (``apply_*`` and ``remove_*`` do).
    """
    config = getattr(transformer, "_parallel_config", None)
    if config is None or getattr(config, "context_parallel_config", None) is None:
        return
    check_ulysses_config(config.context_parallel_config)
    for module in transformer.modules():
        processor = getattr(module, "processor", None)
        if isinstance(processor, _joint_stock_processors()):
            raise ValueError(
                f"the stock {type(processor).__name__} is not correct under context parallelism (joint text tokens would go "
                "through the all-to-all): install a vidattn processor on every video attention layer (DenseAttnProcessor for dense)"
            )
        if processor is not None and hasattr(processor, "_parallel_config"):
            processor._parallel_config = config


def _joint_stock_processors() -> tuple[type, ...]:
    """Stock processors of the joint-text families, wrong under Ulysses with :func:`vidattn_cp_plan`."""
    from diffusers.models.attention_processor import CogVideoXAttnProcessor2_0
    from diffusers.models.transformers.transformer_hunyuan_video import HunyuanVideoAttnProcessor2_0

    return (HunyuanVideoAttnProcessor2_0, CogVideoXAttnProcessor2_0)


def refuse_parallel(processor: Any, what: str) -> None:
    """Raise ``ValueError`` if ``processor`` was handed a context-parallel config it cannot honour (``what`` names it)."""
    if getattr(getattr(processor, "_parallel_config", None), "context_parallel_config", None) is not None:
        raise ValueError(f"{what} does not support context parallelism (it would compute on this rank's shard); run it on one process")


def share_with_stock(processor: Any, stock: Any) -> None:
    """Copy a vidattn processor's parallel config and attention backend onto the stock processor it delegates to."""
    for name in ("_parallel_config", "_attention_backend"):  # written only on change: a write every call would
        value = getattr(processor, name, None)  # add an instance attribute under a compiled graph's guards
        if hasattr(stock, name) and getattr(stock, name) is not value:
            setattr(stock, name, value)


def global_layout(processor: Any, family: str, video_tokens: int) -> VideoLayout:
    """The GLOBAL video grid under context parallelism: explicit ``layout=`` or the transformer hook's, never the RoPE.

    The RoPE table a processor receives under context parallelism describes this rank's shard only.
    """
    layout = processor.known_layout()
    if layout is None:
        raise ValueError(
            f"under context parallelism the video grid of this {family} call cannot be read off the RoPE (it describes "
            "this rank's shard): use apply_*(transformer, config), which installs the hook that sees the whole latent, or "
            "pass layout=VideoLayout(frames, height, width) in latent tokens"
        )
    if layout.video_tokens != video_tokens:
        raise ValueError(
            f"layout {layout} has {layout.video_tokens} video tokens but the call has {video_tokens} over all Ulysses "
            "ranks: the layout must be the whole video's grid"
        )
    return layout


def refuse_sharded_rope(rope: Any) -> None:
    """Raise ``ValueError`` if a RoPE table does not start at position 0 (sin != 0): it is one rank's shard.

    A processor installed with a raw ``set_attn_processor`` after ``enable_parallelism`` never receives the config;
    on ranks >= 1 its RoPE table betrays the split, so the run stops instead of computing on a shard.
    """
    if not isinstance(rope, (tuple, list)) or len(rope) != 2 or not torch.is_tensor(rope[1]):
        return
    sin = rope[1]
    first = sin.reshape(sin.shape[-3], -1)[0] if sin.ndim == 4 else sin.reshape(sin.shape[0], -1)[0]
    if bool((first != 0).any()):
        raise ValueError(
            "this attention call's RoPE table does not start at position 0: the sequence is split (context parallelism?) "
            "but the processor has no parallel config; install vidattn processors before enable_parallelism, with apply_*, "
            "or call vidattn.processors.parallel.share_parallel_config(transformer) after set_attn_processor"
        )


def _heads_to_seq(x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    """(B, H, S/N, D) -> (B, H/N, S, D) through diffusers' autograd all-to-all."""
    from diffusers.models.attention_dispatch import SeqAllToAllDim

    return SeqAllToAllDim.apply(group, x.transpose(1, 2).contiguous(), 2, 1).transpose(1, 2)


def _seq_to_heads(x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    """(B, H/N, S, D) -> (B, H, S/N, D), the inverse of :func:`_heads_to_seq`."""
    from diffusers.models.attention_dispatch import SeqAllToAllDim

    return SeqAllToAllDim.apply(group, x.transpose(1, 2).contiguous(), 1, 2).transpose(1, 2)


def _gather_heads(x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    """(B, H/N, T, D) on each rank -> (B, H, T, D), heads in rank order (the all-to-all's head assignment)."""
    import torch.distributed._functional_collectives as funcol

    gather = getattr(funcol, "all_gather_single_autograd", None) or funcol.all_gather_tensor_autograd
    out = gather(x.contiguous(), 1, group)
    return out.wait() if isinstance(out, funcol.AsyncCollectiveTensor) else out


def dense_attend(query, key, value, layout, key_valid, family) -> torch.Tensor:
    """Exact dense attention (SDPA with the key mask) for dense warm-up steps/layers under context parallelism."""
    return key_masked_attention(query, key, value, key_valid)


def ulysses_attend(
    processor: Any, call: ProjectedCall, family: str, group: dist.ProcessGroup, attend: Callable[..., torch.Tensor]
) -> torch.Tensor:
    """``attend(q, k, v, layout, key_valid, family)`` on the full sequence with H/N heads; returns this rank's (B, H, S/N+T, D)."""
    degree, rank, heads = dist.get_world_size(group), dist.get_rank(group), call.query.shape[1]
    if heads % degree:
        raise ValueError(f"ulysses_degree={degree} must divide the number of attention heads ({heads}); {ULYSSES_HINT}")
    text, local = call.text, call.query.shape[-2] - call.text
    video = slice(text, None) if call.text_position == "before" else slice(0, local)
    text_part = slice(0, text) if call.text_position == "before" else slice(local, None)
    own = slice(rank * heads // degree, (rank + 1) * heads // degree)
    layout = global_layout(processor, family, local * degree).with_text(text, call.text_position)  # before any exchange
    key_valid = call.key_valid
    if key_valid is not None and key_valid.shape[-1] != layout.total_tokens:
        raise ValueError(
            f"the {family} key mask covers {key_valid.shape[-1]} tokens, the whole sequence has {layout.total_tokens}: "
            "under context parallelism the mask must stay unsplit (use vidattn_cp_plan(transformer))"
        )

    def full(x: torch.Tensor) -> torch.Tensor:
        v = _heads_to_seq(x[:, :, video], group)
        if not text:
            return v
        t = x[:, own, text_part]
        return torch.cat([t, v] if call.text_position == "before" else [v, t], dim=2)

    query, key, value = full(call.query), full(call.key), full(call.value)
    out = attend(query, key, value, layout, key_valid, family)
    start = layout.video_start
    video_out = _seq_to_heads(out[:, :, start : start + layout.video_tokens], group)
    if not text:
        return video_out
    text_out = _gather_heads(out[:, :, :text] if call.text_position == "before" else out[:, :, -text:], group)
    return torch.cat([text_out, video_out] if call.text_position == "before" else [video_out, text_out], dim=2)


def vidattn_cp_plan(transformer: torch.nn.Module) -> dict:
    """A diffusers ``cp_plan`` for transformers diffusers ships without one (HunyuanVideo, CogVideoX); Wan's own otherwise.

    Splits the video tokens (and their RoPE) on entry to the first block, keeps text and the HunyuanVideo key mask
    whole, and gathers the tokens at ``proj_out``. Use: ``transformer.enable_parallelism(config=..., cp_plan=vidattn_cp_plan(transformer))``.
    """
    from diffusers.models._modeling_parallel import ContextParallelInput as Split
    from diffusers.models._modeling_parallel import ContextParallelOutput as Gather

    name = type(transformer).__name__
    if name == "HunyuanVideoTransformer3DModel":
        if getattr(transformer.config, "image_condition_type", None) == "token_replace":
            raise ValueError(
                "HunyuanVideo with image_condition_type='token_replace' (I2V) is not supported under context parallelism: "
                "its blocks slice the first frame's tokens out of the sequence, which a shard does not hold"
            )
        first = "transformer_blocks.0" if len(transformer.transformer_blocks) else "single_transformer_blocks.0"
        rope = Split(split_dim=0, expected_dims=2, split_output=True)
        return {
            "rope": {0: rope, 1: rope},
            first: {"hidden_states": Split(split_dim=1, expected_dims=3)},
            "proj_out": Gather(gather_dim=1, expected_dims=3),
        }
    if name == "CogVideoXTransformer3DModel":
        plan = {
            "transformer_blocks.0": {"hidden_states": Split(split_dim=1, expected_dims=3)},
            "proj_out": Gather(gather_dim=1, expected_dims=3),
        }
        if transformer.config.use_rotary_positional_embeddings:  # the pipeline's RoPE reaches every block from the top-level call
            rope = Split(split_dim=0, expected_dims=2)
            plan[""] = {"image_rotary_emb": [rope, rope]}
        return plan
    plan = getattr(transformer, "_cp_plan", None)
    if plan is None:
        raise ValueError(
            f"{name} has no context-parallel plan; vidattn_cp_plan supports WanTransformer3DModel (diffusers' plan), "
            "HunyuanVideoTransformer3DModel and CogVideoXTransformer3DModel"
        )
    return plan
