"""FreeSwim's cross-attention override as record-then-inject passes through the stock Wan transformer.

A full-attention pass on the noisy latent records every block's cross-attention output (``attn2``); the
window pass then uses those outputs instead of its own. The processors share one controller (the records)
and read the pass (``phase``) and CFG ``branch`` of each transformer call from the controller's
:class:`~vidattn.context.AttentionContext`, set with ``context.call``; outputs are cached for ``cache_steps``
denoising steps. Pipeline machinery of :class:`~vidattn.pipelines.freeswim.FreeSwimPipeline`.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import torch
from diffusers.models.transformers.transformer_wan import WanAttnProcessor

from ..checks import check_bool, check_choice, check_int, check_number
from ..context import AttentionContext
from ..kernels.dense import key_masked_attention
from ..layout import VideoLayout
from ..opaque import OpHandle
from ..processors.base import VideoAttnProcessor
from ..processors.compiled import compiled_attention, owner_call
from ..processors.families import ProjectedCall, detect_family, is_video_self_attention, project
from ..processors.parallel import dense_attend, share_parallel_config
from ..processors.window import entropy_scale_factor

PHASES = ("full_record", "window", "window_inject")
BRANCHES = ("cond", "uncond")


def refresh_steps(num_steps: int, cache_steps: int) -> list[int]:
    """The denoising steps at which the full branch runs and re-records: ``range(0, num_steps, cache_steps)``."""
    return list(range(0, num_steps, cache_steps))


class CrossAttnOverride:
    """The controller: recorded ``attn2`` outputs per (branch, layer) and statistics; the phase and branch of the
    current call are ``context.phase`` / ``context.branch`` (set by :meth:`active`).

    ``cache_steps``: the full branch refreshes the record at steps ``0, cache_steps, 2*cache_steps, ...``
    and the window branch reuses it in between. ``override_uncond``: whether the unconditional CFG pass is
    overridden too (it records its own outputs with the negative prompt); FreeSwim's no-cache code does,
    its cache code does not. ``offload``: keep the record on the CPU between its uses.
    """

    def __init__(
        self,
        num_layers: int,
        cache_steps: int = 1,
        override_uncond: bool = True,
        offload: bool = False,
        context: AttentionContext | None = None,
    ) -> None:
        check_int("num_layers", num_layers, 1)
        check_int("cache_steps", cache_steps, 1)
        check_bool("override_uncond", override_uncond)
        check_bool("offload", offload)
        self.num_layers = num_layers
        self.cache_steps = cache_steps
        self.override_uncond = override_uncond
        self.offload = offload
        self.context = context if context is not None else AttentionContext()
        self.records: dict[str, list[torch.Tensor | None]] = {}
        self.stats = {"full_passes": 0, "window_passes": 0, "injected_passes": 0, "cached_passes": 0}

    # -- state ---------------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget every record and zero the statistics (a new generation)."""
        self.records.clear()
        for name in self.stats:
            self.stats[name] = 0

    @contextmanager
    def active(self, phase: str, branch: str = "cond") -> Iterator["CrossAttnOverride"]:
        """``context.call(phase=..., branch=...)`` for the transformer calls inside the block, with both checked."""
        check_choice("phase", phase, PHASES)
        check_choice("branch", branch, BRANCHES)
        with self.context.call(phase=phase, branch=branch):
            yield self

    def overrides(self, branch: str) -> bool:
        """Whether the window pass of ``branch`` takes the full branch's cross-attention."""
        return branch == "cond" or self.override_uncond

    def needs_refresh(self, step: int, branch: str) -> bool:
        """Refresh on the schedule ``range(0, n, cache_steps)``, or when ``branch`` has no complete record."""
        record = self.records.get(branch)
        return step % self.cache_steps == 0 or record is None or any(r is None for r in record)

    # -- what the processors call --------------------------------------------------------------------
    def store(self, layer: int, output: torch.Tensor) -> None:
        record = self.records.setdefault(self.context.branch, [None] * self.num_layers)
        check_int("layer", layer, 0, self.num_layers - 1)
        record[layer] = output.detach().to("cpu") if self.offload else output.detach()

    def load(self, layer: int, like: torch.Tensor) -> torch.Tensor:
        branch = self.context.branch
        record = self.records.get(branch)
        output = None if record is None else record[layer]
        if output is None:
            raise RuntimeError(f"no recorded cross-attention output for branch {branch!r}, layer {layer}: run a full_record pass first")
        expected = (like.shape[0], like.shape[1], output.shape[-1])
        if tuple(output.shape) != expected:
            raise RuntimeError(f"recorded cross-attention output of layer {layer} has shape {tuple(output.shape)}, the call needs {expected}")
        return output.to(device=like.device, dtype=like.dtype)

    # -- one denoising call --------------------------------------------------------------------------
    def forward(self, transformer: torch.nn.Module, step: int, branch: str = "cond", **kwargs: Any) -> Any:
        """``transformer(**kwargs)`` as the window branch; first a recording full pass when one is due.

        The full pass's own prediction is discarded, as in FreeSwim's batch-of-two scheme.
        """
        check_int("step", step, 0)
        if not self.overrides(branch):
            with self.active("window", branch):
                self.stats["window_passes"] += 1
                return transformer(**kwargs)
        if self.needs_refresh(step, branch):
            with self.active("full_record", branch):
                transformer(**kwargs)
            self.stats["full_passes"] += 1
        else:
            self.stats["cached_passes"] += 1
        with self.active("window_inject", branch):
            self.stats["injected_passes"] += 1
            return transformer(**kwargs)


class FullAttnProcessor(VideoAttnProcessor):
    """Full video self-attention (SDPA) with the softmax scale ``scale_factor / sqrt(head_dim)``.

    FreeSwim runs both branches' self-attention at its entropy-style factor (see :func:`freeswim_scale_factor`).
    """

    def __init__(self, scale_factor: float = 1.0, **kwargs: Any) -> None:
        check_number("scale_factor", scale_factor, 0, low_open=True)
        super().__init__(**kwargs)
        self.scale_factor = float(scale_factor)

    def attend(self, query, key, value, layout: VideoLayout, key_valid, family):
        scale = None if self.scale_factor == 1.0 else self.scale_factor / math.sqrt(query.shape[-1])
        return key_masked_attention(query, key, value, key_valid, scale)


def freeswim_scale_factor(base_tokens: int) -> float:
    """FreeSwim's entropy-style factor ``sqrt(log(2N) / log(N))`` for ``N`` tokens per frame at the base size.

    Its code hard-codes N = 30 * 52 (480x832 on Wan 2.1), giving 1.046.
    """
    return entropy_scale_factor(base_tokens, 2 * base_tokens)


class BranchSelfAttnProcessor:
    """``attn1``: the full processor in the ``full_record`` phase, the window processor otherwise."""

    _attention_backend = None  # read by diffusers' enable_parallelism

    def __init__(self, controller: CrossAttnOverride, window: Any, full: Any = None) -> None:
        self.controller = controller
        self.window = window
        self.full = WanAttnProcessor() if full is None else full
        self.handle = OpHandle(self)  # what torch.compile passes into vidattn::video_attention

    @property
    def _parallel_config(self) -> Any:
        """diffusers' context-parallel config, handed on to both branches (Ulysses; see processors/parallel.py)."""
        return getattr(self.window, "_parallel_config", None)

    @_parallel_config.setter
    def _parallel_config(self, config: Any) -> None:
        for branch in (self.window, self.full):
            if not hasattr(branch, "_parallel_config"):
                raise ValueError(f"the window branch {type(branch).__name__} takes no context-parallel config: use a vidattn processor")
            branch._parallel_config = config

    @property
    def context(self) -> AttentionContext:
        """The controller's context (its ``token`` orders the attention op after a context hook's op, if any)."""
        return self.controller.context

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None, **kwargs):
        if torch.compiler.is_compiling():  # the phase is read when the op runs: one graph for every phase
            return self._compiled_call(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb)
        processor = self.full if self.controller.context.phase == "full_record" else self.window
        return processor(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb, **kwargs)

    def _compiled_call(self, attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb):
        """q/k/v projected in the graph (both branches project alike), the branch's attention in one opaque op."""
        for name, branch in (("full", self.full), ("window", self.window)):
            if not isinstance(branch, VideoAttnProcessor) and type(branch) is not WanAttnProcessor:
                raise ValueError(
                    f"torch.compile of the cross-attention override needs vidattn processors (or the stock WanAttnProcessor) "
                    f"on both branches; the {name} branch is a {type(branch).__name__}: run it uncompiled"
                )
        if self._parallel_config is not None:
            raise ValueError("torch.compile of a context-parallel model with vidattn processors is not supported: run it uncompiled")
        if detect_family(attn) != "wan" or not is_video_self_attention("wan", attn, encoder_hidden_states):
            raise ValueError(f"BranchSelfAttnProcessor belongs on a Wan block's attn1, got a call of {type(attn).__name__}")
        call = project("wan", attn, hidden_states, None, attention_mask, rotary_emb)
        return call.finish(compiled_attention(self, call, "wan", rotary_emb))

    def attention_at_run_time(self, call: ProjectedCall, family: str, rope: Any) -> torch.Tensor:
        """The phase's branch on the projected call, when the compiled op runs (the stock branch: exact SDPA)."""
        branch = self.full if self.controller.context.phase == "full_record" else self.window
        if isinstance(branch, VideoAttnProcessor):
            return branch.attention_at_run_time(call, family, rope)
        return dense_attend(call.query, call.key, call.value, None, call.key_valid, family)


class OverrideCrossAttnProcessor:
    """``attn2`` of block ``layer``: records in ``full_record``, injects in ``window_inject``, else its own."""

    def __init__(self, controller: CrossAttnOverride, layer: int, base: Any = None) -> None:
        self.controller = controller
        self.layer = layer
        self.base = WanAttnProcessor() if base is None else base
        self.handle = OpHandle(self)  # what torch.compile passes into vidattn::owner_call

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None, **kwargs):
        if torch.compiler.is_compiling():  # computed in the graph every pass; recorded or replaced when the op runs
            output = self.base(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb, **kwargs)
            return owner_call(self, "cross", [output], [0], self.controller.context.token)[0]
        phase = self.controller.context.phase
        if phase == "window_inject":
            return self.controller.load(self.layer, hidden_states)
        output = self.base(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb, **kwargs)
        if phase == "full_record":
            self.controller.store(self.layer, output)
        return output

    def run_op(self, what: str, inputs: list) -> list[torch.Tensor]:
        """The compiled pass's phase work on this call's own output (``vidattn::owner_call``): record a copy, or
        return the record instead."""
        (output,) = inputs
        phase = self.controller.context.phase
        if phase == "window_inject":
            return [self.controller.load(self.layer, output).clone()]
        if phase == "full_record":
            self.controller.store(self.layer, output.clone())
        return [output]


def _wan_blocks(transformer: torch.nn.Module) -> Sequence[torch.nn.Module]:
    blocks = getattr(transformer, "blocks", None)
    if blocks is None or not len(blocks) or not all(hasattr(b, "attn1") and hasattr(b, "attn2") for b in blocks):
        raise ValueError(
            f"the cross-attention override needs a Wan transformer (blocks with attn1/attn2, e.g. WanTransformer3DModel); "
            f"got {type(transformer).__name__}"
        )
    return blocks


def install_cross_override(
    transformer: torch.nn.Module,
    window: Any | Sequence[Any],
    controller: CrossAttnOverride | None = None,
    full: Any = None,
    *,
    cache_steps: int = 1,
    override_uncond: bool = True,
    offload: bool = False,
) -> CrossAttnOverride:
    """Put the branch processors on every block of a Wan transformer and return their controller.

    ``window``: the window branch's self-attention processor (one shared instance, or one per block); any
    diffusers processor for Wan ``attn1`` works. ``full``: the full branch's (default: stock Wan attention).
    Undo with :func:`remove_cross_override` (or ``transformer.set_attn_processor(saved)``).
    """
    blocks = _wan_blocks(transformer)
    windows = list(window) if isinstance(window, (list, tuple)) else [window] * len(blocks)
    if len(windows) != len(blocks):
        raise ValueError(f"window must be one processor or one per block ({len(blocks)}), got {len(windows)}")
    if controller is None:
        controller = CrossAttnOverride(len(blocks), cache_steps, override_uncond, offload)
    elif controller.num_layers != len(blocks):
        raise ValueError(f"controller is for {controller.num_layers} layers, the transformer has {len(blocks)} blocks")
    for index, block in enumerate(blocks):
        block.attn1.set_processor(BranchSelfAttnProcessor(controller, windows[index], full))
        block.attn2.set_processor(OverrideCrossAttnProcessor(controller, index))
    share_parallel_config(transformer)  # under Ulysses: both branches of attn1 take the model's config
    return controller


def remove_cross_override(transformer: torch.nn.Module) -> None:
    """Stock Wan processors back on every block's ``attn1`` and ``attn2``."""
    for block in _wan_blocks(transformer):
        block.attn1.set_processor(WanAttnProcessor())
        block.attn2.set_processor(WanAttnProcessor())
