"""The shared machinery of every vidattn attention processor: routing, dense warm-up, geometry, plan cache."""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

import torch

from ..context import AttentionContext
from ..layout import VideoLayout
from .families import FAMILIES, detect_family, is_video_self_attention, layout_from_rope, project, stock_processor
from .parallel import dense_attend, refuse_sharded_rope, share_with_stock, ulysses_attend, ulysses_group

ConfigT = TypeVar("ConfigT")


def config_with_overrides(config_cls: type[ConfigT], config: ConfigT | None, overrides: dict, owner: str) -> ConfigT:
    """``config`` (or the defaults) with keyword ``overrides`` applied; unknown names are a ``ValueError``."""
    config = config if config is not None else config_cls()
    fields = {f.name for f in dataclasses.fields(config_cls)}
    unknown = set(overrides) - fields
    if unknown:
        raise ValueError(f"unknown {owner} argument(s) {sorted(unknown)}; allowed: {sorted(fields)}")
    return dataclasses.replace(config, **overrides) if overrides else config


class VideoAttnProcessor:
    """Base diffusers processor: video self-attention of a supported family goes to :meth:`attend`.

    Cross-attention, non-video attention and dense warm-up calls run the family's stock processor, so they
    are exact. Subclasses implement ``attend(query, key, value, layout, key_valid, family) -> out`` on (B, H, N, D).
    Under diffusers' Ulysses context parallelism ``attend`` sees the whole sequence with H/N heads (processors/parallel.py).
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
        plan_cache: dict | None = None,
    ) -> None:
        if family is not None and family not in FAMILIES:
            raise ValueError(f"family must be one of {FAMILIES} (or None to detect it), got {family!r}")
        if not isinstance(dense_steps, int) or dense_steps < 0:
            raise ValueError(f"dense_steps must be an int >= 0, got {dense_steps!r}")
        if not isinstance(dense_layers, int) or dense_layers < 0:
            raise ValueError(f"dense_layers must be an int >= 0, got {dense_layers!r}")
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
        self.plan_cache = {} if plan_cache is None else plan_cache
        self._stock: dict[str | None, Any] = {}

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
        family = self.family or detect_family(attn)
        rope = rotary_emb if rotary_emb is not None else image_rotary_emb
        group = ulysses_group(self._parallel_config)  # None unless context-parallel; refuses ring / *_anything
        video = family is not None and is_video_self_attention(family, attn, encoder_hidden_states)
        if not video or (self.is_dense_now() and group is None):
            return self._run_stock(family, attn, hidden_states, encoder_hidden_states, attention_mask, rope, kwargs)
        call = project(family, attn, hidden_states, encoder_hidden_states, attention_mask, rope)
        if group is not None:  # Ulysses: the kernel (or exact dense warm-up) on the whole sequence with H/N heads
            return call.finish(ulysses_attend(self, call, family, group, dense_attend if self.is_dense_now() else self.attend))
        layout = self.resolve_layout(family, rope, call.query.shape[-2] - call.text).with_text(call.text, call.text_position)
        out = self.attend(call.query, call.key, call.value, layout, call.key_valid, family)
        return call.finish(out)

    def _run_stock(self, family, attn, hidden_states, encoder_hidden_states, attention_mask, rope, kwargs):
        if family not in self._stock:
            self._stock[family] = stock_processor(family)
        stock = self._stock[family]
        share_with_stock(self, stock)
        if family == "wan":
            return stock(attn, hidden_states, encoder_hidden_states, attention_mask, rope)
        if family is not None:
            return stock(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb=rope)
        return stock(attn, hidden_states, encoder_hidden_states, attention_mask, **kwargs)

    def is_dense_now(self) -> bool:
        """Dense warm-up: the first ``dense_steps`` denoising steps and the first ``dense_layers`` layers."""
        if self.layer_idx is not None and self.layer_idx < self.dense_layers:
            return True
        return self.context is not None and self.context.step < self.dense_steps

    def resolve_layout(self, family: str, rope: Any, video_tokens: int) -> VideoLayout:
        """The video grid: explicit ``layout=``, else the transformer hook's, else read off the RoPE table."""
        layout = self.layout
        if layout is None and self.context is not None:
            layout = self.context.layout
        if layout is None:
            refuse_sharded_rope(rope)
            layout = layout_from_rope(rope)
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
        if key not in self.plan_cache:
            self.plan_cache[key] = build()
        return self.plan_cache[key]

    def density(self, query: torch.Tensor, key: torch.Tensor, layout: VideoLayout, family: str) -> float | None:
        """Share of dense attention work this processor spends on these inputs: tiles computed, or FLOPs (None: unknown)."""
        return None

    def attend(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, layout: VideoLayout, key_valid: torch.Tensor | None, family: str
    ) -> torch.Tensor:
        raise NotImplementedError


class ConfiguredAttnProcessor(VideoAttnProcessor):
    """A processor whose settings are one frozen config dataclass (``config_class``, a class constant).

    The config carries ``family``, ``dense_steps`` and ``dense_layers`` (see :meth:`dense_layers_of`);
    keyword overrides are config fields: ``RadialAttnProcessor(decay=0.2)`` == ``RadialAttnProcessor(RadialConfig(decay=0.2))``.
    """

    config_class: type

    def __init__(
        self,
        config: Any = None,
        *,
        layout: VideoLayout | None = None,
        layer_idx: int | None = None,
        context: AttentionContext | None = None,
        plan_cache: dict | None = None,
        **overrides,
    ) -> None:
        config = config_with_overrides(self.config_class, config, overrides, type(self).__name__)
        super().__init__(
            family=config.family,
            layout=layout,
            layer_idx=layer_idx,
            context=context,
            dense_steps=config.dense_steps,
            dense_layers=self.dense_layers_of(config),
            plan_cache=plan_cache,
        )
        self.config = config

    @staticmethod
    def dense_layers_of(config: Any) -> int:
        """How many leading layers run dense (the config's ``dense_layers``)."""
        return config.dense_layers

