"""The LoRA training configuration: one YAML file -> a validated dataclass (unknown keys are rejected)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

MIXED_PRECISION = ("no", "fp16", "bf16")
LR_SCHEDULERS = ("constant", "constant_with_warmup", "cosine")
LOGGERS = (None, "tensorboard")
NONFINITE = ("error", "skip")
EXPERTS = ("transformer", "transformer_2")
FLOAT_FIELDS = (
    "lora_alpha", "lora_dropout", "learning_rate", "extra_params_learning_rate", "weight_decay", "adam_beta1", "adam_beta2",
    "adam_epsilon", "max_grad_norm", "shift", "ema_decay",
)
INT_FIELDS = (
    "dense_layers", "lora_rank", "lr_warmup_steps", "max_train_steps", "batch_size", "gradient_accumulation_steps", "seed",
    "checkpointing_steps", "checkpoints_total_limit", "max_steps_per_run", "log_every",
)


@dataclass
class TrainConfig:
    """Everything ``train_lora`` needs. ``model`` is a diffusers Wan pipeline folder or ``"default"`` (the tiny
    embedded pipeline); ``data`` is a cache written by :func:`vidattn.training.cache.prepare_data`."""

    model: str
    data: str
    output_dir: str
    # which transformer of a two-expert pipeline (Wan 2.2 A14B) to train; each trains on its side of boundary_ratio
    expert: str = "transformer"
    # attention method active during training (a name of vidattn.processors.registry.METHODS, or "none")
    method: str = "none"
    method_args: dict = field(default_factory=dict)
    dense_layers: int = 0
    # LoRA (paper: rank 128 on q, k, v, o of the attention layers)
    lora_rank: int = 128
    lora_alpha: float | None = None
    lora_dropout: float = 0.0
    target_modules: list = field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])
    train_extra_params: list = field(default_factory=list)
    # optimisation
    learning_rate: float = 1e-4
    extra_params_learning_rate: float | None = None
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    max_train_steps: int = 1000
    batch_size: int = 1
    gradient_accumulation_steps: int = 1
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    shift: float = 5.0
    seed: int = 0
    ema_decay: float | None = None
    nonfinite: str = "error"  # a non-finite loss or gradient: "error" stops the run, "skip" skips the step and counts it
    # bookkeeping
    checkpointing_steps: int = 500
    checkpoints_total_limit: int | None = None
    resume_from_checkpoint: str | None = None
    max_steps_per_run: int | None = None  # stop (with a checkpoint) after this many steps; resume later
    log_with: str | None = None
    log_every: int = 1
    progress_bar: bool = True

    def __post_init__(self) -> None:
        if self.mixed_precision is False:  # YAML 1.1 reads an unquoted `no` as false
            self.mixed_precision = "no"
        for name in FLOAT_FIELDS + INT_FIELDS:
            setattr(self, name, _number(name, getattr(self, name), integer=name in INT_FIELDS))
        for name in ("model", "data", "output_dir", "method"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"{name} must be a non-empty string, got {getattr(self, name)!r}")
        if self.expert not in EXPERTS:
            raise ValueError(f"expert must be one of {EXPERTS} (Wan 2.2 A14B: high-noise, low-noise), got {self.expert!r}")
        if self.method not in method_names():
            raise ValueError(f"method must be one of {method_names()} (attention during training), got {self.method!r}")
        if not isinstance(self.method_args, dict):
            raise ValueError(f"method_args must be a mapping of the method's config fields, got {self.method_args!r}")
        if "dense_steps" in self.method_args:
            raise ValueError("method_args.dense_steps is an inference setting (training samples noise levels at random); use dense_layers")
        if "dense_layers" in self.method_args:
            raise ValueError("set dense_layers at the top level of the training config, not method_args.dense_layers")
        _positive_int(self, "lora_rank", "max_train_steps", "batch_size", "gradient_accumulation_steps", "checkpointing_steps", "log_every")
        _nonneg_int(self, "dense_layers", "lr_warmup_steps", "seed")
        if self.method != "none":  # the method's own checks, before any model is loaded
            from ..processors.registry import make_config

            make_config(self.method, f"{self.method} method_args", **self.method_args, dense_layers=self.dense_layers)
        for name in ("checkpoints_total_limit", "max_steps_per_run"):
            if getattr(self, name) is not None:
                _positive_int(self, name)
        if self.lora_alpha is not None and (not isinstance(self.lora_alpha, (int, float)) or self.lora_alpha <= 0):
            raise ValueError(f"lora_alpha must be a number > 0 or null (= lora_rank), got {self.lora_alpha!r}")
        if not 0 <= self.lora_dropout < 1:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout!r}")
        for name in ("target_modules", "train_extra_params"):
            value = getattr(self, name)
            if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
                raise ValueError(f"{name} must be a list of module-name strings, got {value!r}")
        if not self.target_modules:
            raise ValueError("target_modules must name at least one module (e.g. [to_q, to_k, to_v, to_out.0])")
        for name in ("learning_rate", "shift", "adam_epsilon"):
            if not isinstance(getattr(self, name), (int, float)) or getattr(self, name) <= 0:
                raise ValueError(f"{name} must be a number > 0, got {getattr(self, name)!r}")
        if self.extra_params_learning_rate is not None and self.extra_params_learning_rate <= 0:
            raise ValueError(f"extra_params_learning_rate must be > 0 or null (= learning_rate), got {self.extra_params_learning_rate!r}")
        if self.max_grad_norm is not None and self.max_grad_norm <= 0:
            raise ValueError(f"max_grad_norm must be > 0 or null (no clipping), got {self.max_grad_norm!r}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(f"mixed_precision must be one of {MIXED_PRECISION}, got {self.mixed_precision!r}")
        if self.lr_scheduler not in LR_SCHEDULERS:
            raise ValueError(f"lr_scheduler must be one of {LR_SCHEDULERS}, got {self.lr_scheduler!r}")
        if self.log_with not in LOGGERS:
            raise ValueError(f"log_with must be one of {LOGGERS}, got {self.log_with!r}")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in (0, 1) or null (no EMA), got {self.ema_decay!r}")
        for name in ("weight_decay", "adam_beta1", "adam_beta2"):
            if not isinstance(getattr(self, name), (int, float)):
                raise ValueError(f"{name} must be a number, got {getattr(self, name)!r}")
        if not (0 <= self.adam_beta1 < 1 and 0 <= self.adam_beta2 < 1):
            raise ValueError(f"adam_beta1 and adam_beta2 must be in [0, 1), got {self.adam_beta1!r} and {self.adam_beta2!r}")
        if self.nonfinite not in NONFINITE:
            raise ValueError(f"nonfinite must be one of {NONFINITE} (error: stop the run; skip: skip the step and count it), got {self.nonfinite!r}")

    @property
    def alpha(self) -> float:
        return float(self.lora_rank if self.lora_alpha is None else self.lora_alpha)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        """Build from a mapping; unknown keys raise ``ValueError`` listing the allowed ones."""
        if not isinstance(values, dict):
            raise ValueError(f"a training config must be a mapping of keys to values, got {type(values).__name__}")
        allowed = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - allowed)
        if unknown:
            raise ValueError(f"unknown training config key(s) {unknown}; allowed keys: {sorted(allowed)}")
        missing = sorted(f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and f.name not in values)
        if missing:
            raise ValueError(f"training config is missing required key(s) {missing}")
        return cls(**values)

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: list[str] | None = None) -> "TrainConfig":
        """Load ``path`` and apply ``key=value`` overrides (values parsed as YAML, e.g. ``max_train_steps=4``)."""
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"config file {str(path)!r} does not exist")
        values = yaml.safe_load(path.read_text()) or {}
        if not isinstance(values, dict):
            raise ValueError(f"{path} must hold a YAML mapping of keys to values")
        return cls.from_dict({**values, **parse_overrides(overrides or [])})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def method_names() -> tuple[str, ...]:
    """Attention methods a run may train with: ``"none"`` (stock processors) and every registered method."""
    from ..processors.registry import METHODS

    return ("none", *sorted(METHODS))


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["a=1", "b=[x, y]"]`` -> ``{"a": 1, "b": ["x", "y"]}`` (values are YAML; the shared KEY=VALUE parser)."""
    from ..params import parse_key_values

    return parse_key_values(items, option="--set")


def _number(name: str, value: Any, integer: bool) -> Any:
    """A YAML number in any spelling: PyYAML reads ``1e-4`` (no dot) as a string; ``"1e3"`` is 1000 for an int field.

    Non-numeric strings and other types pass through unchanged for the field's own check; NaN/inf are rejected."""
    if value is None:
        return value
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise ValueError(f"{name} must be a number (e.g. 1e-4, 0.0001), got {value!r}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if integer and isinstance(value, float):
        if not value.is_integer():
            raise ValueError(f"{name} must be a whole number, got {value!r}")
        return int(value)
    return value


def _positive_int(config: TrainConfig, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")


def _nonneg_int(config: TrainConfig, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{name} must be an int >= 0, got {value!r}")
