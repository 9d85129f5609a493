"""The shared machinery of every vidattn attention processor (routing, dense warm-up, geometry, plan cache) and the
method contract: :class:`MethodAttnProcessor` with a :class:`~vidattn.processors.config.MethodConfig`."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, ClassVar, Protocol

import torch

from ..checks import check_choice, check_int
from ..context import AttentionContext
from ..layout import VideoLayout
from ..opaque import OpHandle
from .compiled import compiled_attention
from .config import MethodConfig, config_with_overrides
from .families import (
    FAMILIES,
    ProjectedCall,
    ROPE_POSITIONAL,
    detect_family,
    is_video_self_attention,
    layout_from_rope,
    project,
    stock_processor,
    unsupported_module_error,
)
from .parallel import dense_attend, refuse_sharded_rope, share_with_stock, ulysses_attend, ulysses_group


# Families whose RoPE table starts at position 0 with sin = 0, so a table that does not is one rank's shard.
SHARD_CHECKED_ROPE = ("wan", "skyreels", "hunyuan", "cogvideox")


class MethodPlan(Protocol):
    """What a method's ``plan()`` returns: anything with ``density``, the share of dense attention FLOPs it spends."""

    @property
    def density(self) -> float: ...


class PlanCache:
    """Bounded LRU of plans shared by the processors of one transformer; keys hold everything a plan depends on."""

    def __init__(self, max_entries: int = 64) -> None:
        check_int("max_entries", max_entries, 1)
        self.max_entries = max_entries
        self._plans: OrderedDict[tuple, Any] = OrderedDict()

    def get(self, key: tuple, build: Callable[[], Any]) -> Any:
        if key in self._plans:
            self._plans.move_to_end(key)
            return self._plans[key]
        plan = self._plans[key] = build()
        if len(self._plans) > self.max_entries:
            self._plans.popitem(last=False)
        return plan

    def __len__(self) -> int:
        return len(self._plans)


class VideoAttnProcessor:
    """Base diffusers processor: video self-attention of a supported family goes to :meth:`attend`.

    Cross-attention, non-video attention and dense warm-up calls run the family's stock processor, so they
    are exact. Subclasses implement ``attend(query, key, value, layout, key_valid, family) -> out`` on (B, H, N, D).
    Under diffusers' Ulysses context parallelism ``attend`` sees the whole sequence with H/N heads (processors/parallel.py).
    Under ``torch.compile`` the routing and ``attend`` run inside one custom op (processors/compiled.py, docs/compile.md).
    """

    _attention_backend = None  # diffusers' enable_parallelism / set_attention_backend look for these two attributes
    _parallel_config = None

    def __init__(
        self,
        *,
        family: str | None = None,
        layout: VideoLayout | None = None,
        layer_idx: int | None = None,
        context: AttentionContext | None = None,
        dense_steps: int = 0,
        dense_layers: int = 0,
        plan_cache: PlanCache | None = None,
    ) -> None:
        if family is not None:
            check_choice("family", family, FAMILIES, note="or None to detect it")
        check_int("dense_steps", dense_steps, 0)
        check_int("dense_layers", dense_layers, 0)
        if dense_steps and context is None:
            raise ValueError("dense_steps needs the denoising step: use apply_*(transformer, config), which installs the step hook")
        if dense_layers and layer_idx is None:
            raise ValueError("dense_layers needs each processor's layer index: use apply_*(transformer, config)")
        if layout is not None and not isinstance(layout, VideoLayout):
            raise ValueError(f"layout must be a VideoLayout, got {type(layout).__name__}")
        self.family = family
        self.layout = layout
        self.layer_idx = layer_idx
        self.context = context
        self.dense_steps = dense_steps
        self.dense_layers = dense_layers
        self.plan_cache = PlanCache() if plan_cache is None else plan_cache
        # Every family's stock processor up front: a dict filled on first use would change under a compiled graph's guards.
        self._stock: dict[str | None, Any] = {name: stock_processor(name) for name in FAMILIES}
        self.handle = OpHandle(self)  # what torch.compile passes into the attention op (processors/compiled.py)

    # -- routing -------------------------------------------------------------------------------------
    def __call__(
        self,
        attn: torch.nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        rotary_emb: Any = None,
        image_rotary_emb: Any = None,
        **kwargs,
    ):
        rope = rotary_emb if rotary_emb is not None else image_rotary_emb
        family = self.family or detect_family(attn, encoder_hidden_states, attention_mask, rope)
        group = ulysses_group(self._parallel_config)  # None unless context-parallel; refuses ring / *_anything
        video = family is not None and is_video_self_attention(family, attn, encoder_hidden_states)
        if video and torch.compiler.is_compiling():
            return self._compiled_call(family, group, attn, hidden_states, encoder_hidden_states, attention_mask, rope, kwargs)
        if not video or (self.is_dense_now() and group is None):
            return self._run_stock(family, attn, hidden_states, encoder_hidden_states, attention_mask, rope, kwargs)
        call = project(family, attn, hidden_states, encoder_hidden_states, attention_mask, rope)
        if group is not None:  # Ulysses: the kernel (or exact dense warm-up) on the whole sequence with H/N heads
            return call.finish(ulysses_attend(self, call, family, group, dense_attend if self.is_dense_now() else self.attend))
        layout = self.resolve_layout(family, rope, call.query.shape[-2] - call.text).with_text(call.text, call.text_position)
        out = self.attend(call.query, call.key, call.value, layout, call.key_valid, family)
        return call.finish(out)

    def _compiled_call(self, family, group, attn, hidden_states, encoder_hidden_states, attention_mask, rope, kwargs):
        """Video self-attention while torch.compile traces: the projections are traced, the attention is one opaque op
        that decides dense warm-up, the grid and the plan at run time, so no step value becomes a guard."""
        if group is not None:
            raise ValueError(
                "torch.compile of a context-parallel model with vidattn processors is not supported: compile without "
                "enable_parallelism, or run the parallel model uncompiled"
            )
        if self.is_dense_layer():  # fixed per layer: the stock processor, traced like any diffusers code
            return self._run_stock(family, attn, hidden_states, encoder_hidden_states, attention_mask, rope, kwargs)
        call = project(family, attn, hidden_states, encoder_hidden_states, attention_mask, rope)
        return call.finish(compiled_attention(self, call, family, rope))

    def attention_at_run_time(self, call: ProjectedCall, family: str, rope: Any) -> torch.Tensor:
        """The attention of a projected video call, decided when it runs (what ``vidattn::video_attention`` runs
        under torch.compile): the dense warm-up, else the grid and :meth:`attend`."""
        if self.is_dense_now():  # dense warm-up: the stock processor's SDPA on the same q/k/v
            return dense_attend(call.query, call.key, call.value, None, call.key_valid, family)
        layout = self.resolve_layout(family, rope, call.query.shape[-2] - call.text).with_text(call.text, call.text_position)
        return self.attend(call.query, call.key, call.value, layout, call.key_valid, family)

    def _run_stock(self, family, attn, hidden_states, encoder_hidden_states, attention_mask, rope, kwargs):
        if family is None:
            raise unsupported_module_error(attn)
        stock = self._stock[family]
        share_with_stock(self, stock)
        if family in ROPE_POSITIONAL:
            return stock(attn, hidden_states, encoder_hidden_states, attention_mask, rope)
        return stock(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb=rope)

    def is_dense_now(self) -> bool:
        """Dense warm-up: the first ``dense_steps`` denoising steps and the first ``dense_layers`` layers."""
        if self.is_dense_layer():
            return True
        return self.context is not None and self.context.step < self.dense_steps

    def is_dense_layer(self) -> bool:
        """One of the first ``dense_layers`` layers (fixed per processor, unlike the step). ``layer_idx`` is read only
        when there are dense layers: a compiled block is then shared by all layers (diffusers' regional compile)."""
        return self.dense_layers > 0 and self.layer_idx is not None and self.layer_idx < self.dense_layers

    def known_layout(self) -> VideoLayout | None:
        """The grid given explicitly (``layout=``) or recorded by the transformer hook, None if neither.

        An explicit ``layout=`` that disagrees with the grid the hook recorded is an error, not a silently wrong mask.
        """
        observed = self.context.layout if self.context is not None else None
        if self.layout is not None and observed is not None and self.layout.grid != observed.grid:
            raise ValueError(f"layout={self.layout} disagrees with the transformer's latent grid {observed}: drop layout= or fix it")
        return self.layout if self.layout is not None else observed

    def resolve_layout(self, family: str, rope: Any, video_tokens: int) -> VideoLayout:
        """The video grid: :meth:`known_layout`, else read off the RoPE table (an explicit layout is checked against it)."""
        layout = self.known_layout()
        from_hook = self.context is not None and self.context.layout is not None
        if self.layout is not None and not from_hook and self._parallel_config is None:
            from_rope = layout_from_rope(rope, family)  # (under context parallelism the RoPE table is a shard's: not comparable)
            if from_rope is not None and from_rope.grid != layout.grid:
                raise ValueError(f"layout={layout} disagrees with the grid {from_rope} read off the model's RoPE table")
        if layout is None:
            if family in SHARD_CHECKED_ROPE:
                refuse_sharded_rope(rope)
            layout = layout_from_rope(rope, family)
        if layout is None:
            raise ValueError(
                f"cannot infer the video grid of this {family} attention call ({video_tokens} video tokens): pass "
                "layout=VideoLayout(frames, height, width) in latent tokens, or use apply_*(transformer, config)"
            )
        if layout.video_tokens != video_tokens:
            raise ValueError(f"layout {layout} has {layout.video_tokens} video tokens but the call has {video_tokens}")
        return layout

    def cached_plan(self, key: tuple, build):
        """Plans are cached per instance (or per shared ``plan_cache``), keyed by everything they depend on."""
        return self.plan_cache.get(key, build)

    def attend(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, layout: VideoLayout, key_valid: torch.Tensor | None, family: str
    ) -> torch.Tensor:
        raise NotImplementedError


class MethodAttnProcessor(VideoAttnProcessor):
    """The method contract's processor half. Settings are one :class:`MethodConfig` (``config_class``); keyword
    overrides are config fields: ``RadialAttnProcessor(decay=0.2)`` == ``RadialAttnProcessor(RadialConfig(decay=0.2))``.

    A method implements ``plan(query, key, layout, family)`` (a plan with ``density``: the share of dense attention
    FLOPs it spends) and ``attend(query, key, value, layout, key_valid, family)`` on (B, H, N, D) tensors.
    """

    config_class: ClassVar[type[MethodConfig]]

    def __init__(
        self,
        config: MethodConfig | None = None,
        *,
        layout: VideoLayout | None = None,
        layer_idx: int | None = None,
        context: AttentionContext | None = None,
        plan_cache: PlanCache | None = None,
        **overrides,
    ) -> None:
        if config is not None and not isinstance(config, self.config_class):
            raise ValueError(f"config must be a {self.config_class.__name__}, got {type(config).__name__}")
        config = config_with_overrides(self.config_class, config, overrides, type(self).__name__)
        super().__init__(
            family=config.family,
            layout=layout,
            layer_idx=layer_idx,
            context=context,
            dense_steps=config.dense_steps,
            dense_layers=config.dense_layers,
            plan_cache=plan_cache,
        )
        self.config = config

    def plan(self, query: torch.Tensor, key: torch.Tensor, layout: VideoLayout, family: str) -> MethodPlan:
        """This call's plan (cached where it depends only on the layout and the config)."""
        raise NotImplementedError

    def density(self, query: torch.Tensor, key: torch.Tensor, layout: VideoLayout, family: str) -> float:
        """Share of dense attention FLOPs (QK^T and PV) this method spends on these inputs."""
        return float(self.plan(query, key, layout, family).density)
