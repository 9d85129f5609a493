"""BroadWay / ByTheWay: temporal self-guidance and Fourier motion enhancement on UNet decoder temporal attention.

Training-free: during the first ``steps_fraction`` of denoising steps the F x F temporal attention maps of
``up_blocks.1..3`` are pulled toward the ``up_blocks.1`` map (TSG) and their high temporal frequencies are
amplified (FME). Works on diffusers' ``UNetMotionModel`` (AnimateDiff) and ``UNet3DConditionModel`` (ModelScope).
Pipeline machinery of :mod:`vidattn.pipelines.broadway` (a UNet controller, not a video attention processor). Its
UNet hook fills the controller's :class:`~vidattn.context.AttentionContext` (latent grid, step, timestep) once per
call; the processors read the step from there.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.models.attention_processor import AttnProcessor2_0

from ..checks import check_bool, check_choice, check_int, check_number
from ..context import AttentionContext
from ..layout import VideoLayout
from ..opaque import OpHandle
from ..processors.compiled import SCALAR, owner_call

BROADWAY_HOOK_NAME = "vidattn_broadway"
DECODER_BLOCKS = (1, 2, 3)
ANCHOR_BLOCK = 1
INTERPOLATION_MODES = ("bilinear", "nearest", "nearest-exact", "area")
_TEMPORAL_ATTN = re.compile(
    r"^up_blocks\.(\d+)\.(?:motion_modules|temp_attentions)\.(\d+)\.transformer_blocks\.(\d+)\.(attn\d+)\.processor$"
)


@dataclass(frozen=True)
class BroadWayConfig:
    """BroadWay settings; the defaults are the paper's AnimateDiff preset (tau 7, alpha 0.6, beta 1.5, first 20 %).

    ``clamp_negative`` zeroes negative weights after FME before renormalising (v1 README; ByTheWay dropped it).
    ``cond_half``: True if the second half of the batch is the CFG-conditional half, False to use the whole
    batch for the energy, None to detect it (the two halves of the UNet's latent input are identical).
    """

    alpha: float = 0.6
    beta: float = 1.5
    tau: int = 7
    steps_fraction: float = 0.2
    clamp_negative: bool = True
    adaptive_beta: bool = True
    interpolation: str = "bilinear"
    cond_half: bool | None = None

    def __post_init__(self) -> None:
        check_number("alpha", self.alpha, 0, 1)
        check_number("beta", self.beta, 1)
        check_int("tau", self.tau, 0, note="and < frames // 2")
        check_number("steps_fraction", self.steps_fraction, 0, 1)
        check_choice("interpolation", self.interpolation, INTERPOLATION_MODES)
        check_bool("clamp_negative", self.clamp_negative)
        check_bool("adaptive_beta", self.adaptive_beta)
        check_bool("cond_half", self.cond_half, optional=True, note="None: detect")

    @classmethod
    def animatediff(cls, **overrides) -> "BroadWayConfig":
        """The paper's AnimateDiff setting (README of Bujiazi/ByTheWay): tau 7, alpha 0.6, beta 1.5."""
        return cls(**{"tau": 7, "alpha": 0.6, "beta": 1.5, **overrides})

    @classmethod
    def videocrafter2(cls, **overrides) -> "BroadWayConfig":
        """The paper's VideoCrafter2 setting (same README): tau 7, alpha 0.1, beta 10."""
        return cls(**{"tau": 7, "alpha": 0.1, "beta": 10.0, **overrides})

    def check_frames(self, frames: int) -> None:
        """Raise if the high band ``frames//2 - tau .. frames//2 + tau`` would reach the DC bin."""
        if self.tau >= frames // 2:
            raise ValueError(
                f"tau must be < frames // 2 so the high band {frames // 2 - self.tau}..{frames // 2 + self.tau} "
                f"excludes the DC bin; got tau={self.tau} with {frames} frames (allowed tau: 0..{frames // 2 - 1})"
            )


# ---- the map arithmetic (pure functions on (..., F, F) row-stochastic maps) ----


def high_band(frames: int, tau: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Boolean (F,) mask of the 2*tau+1 FFT bins centred on Nyquist (the 'high' temporal frequencies)."""
    index = torch.arange(frames, device=device)
    return (index >= frames // 2 - tau) & (index <= frames // 2 + tau)


def temporal_energy(maps: torch.Tensor) -> torch.Tensor:
    """Eq. 4: mean over all leading positions of (1/F) * sum_ij A_ij^2 (a float32 scalar)."""
    frames = maps.shape[-1]
    return maps.float().pow(2).sum(dim=(-2, -1)).mean() / frames


def split_energy(maps: torch.Tensor, tau: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(E_low, E_high) with E_low + E_high = temporal_energy(maps), split by Parseval along the key-frame FFT."""
    frames = maps.shape[-1]
    power = torch.fft.fft(maps.float(), dim=-1).abs().pow(2) / frames  # sum_k |X_k|^2 / F = sum_j A_j^2
    band = high_band(frames, tau, maps.device)
    high = power[..., band].sum(dim=(-2, -1)).mean() / frames
    low = power[..., ~band].sum(dim=(-2, -1)).mean() / frames
    return low, high


def adaptive_beta(beta: float, e_before: torch.Tensor, e_low: torch.Tensor, e_high: torch.Tensor) -> float:
    """Eq. 7: max(beta, sqrt((E1 - E2_L) / E2_H)) so that E2_L + beta^2 E2_H >= E1; beta itself if E2_H is 0."""
    if float(e_high) <= 0.0:
        return float(beta)
    needed = torch.sqrt((e_before - e_low).clamp_min(0.0) / e_high)
    return max(float(beta), float(needed))


def fourier_enhance(maps: torch.Tensor, beta: float, tau: int, clamp_negative: bool = True) -> torch.Tensor:
    """Eq. 6: scale the high band of each row's FFT by beta, inverse FFT (real part), optional clamp, renormalise."""
    frames = maps.shape[-1]
    spectrum = torch.fft.fft(maps.float(), dim=-1)
    gain = torch.ones(frames, device=maps.device)
    gain[high_band(frames, tau, maps.device)] = beta
    out = torch.fft.ifft(spectrum * gain, dim=-1).real
    if clamp_negative:
        out = out.clamp_min(0.0)
    return out / out.sum(dim=-1, keepdim=True)


def resize_maps(maps: torch.Tensor, height: int, width: int, mode: str = "bilinear") -> torch.Tensor:
    """Resize (B, h, w, heads, F, F) maps spatially to (B, height, width, heads, F, F); convex modes keep rows summing to 1."""
    batch, h, w = maps.shape[:3]
    if (h, w) == (height, width):
        return maps
    tail = maps.shape[3:]
    grid = maps.reshape(batch, h, w, -1).permute(0, 3, 1, 2)
    kwargs = {"align_corners": False} if mode == "bilinear" else {}
    grid = F.interpolate(grid, size=(height, width), mode=mode, **kwargs)
    return grid.permute(0, 2, 3, 1).reshape(batch, height, width, *tail)


def self_guide(maps: torch.Tensor, anchor: torch.Tensor, alpha: float, mode: str = "bilinear") -> torch.Tensor:
    """Eq. 3: (1 - alpha) * A_m + alpha * A_{1->m}, with the anchor resized to the block's spatial grid."""
    if alpha == 0.0:
        return maps
    resized = resize_maps(anchor, maps.shape[1], maps.shape[2], mode)
    return (1.0 - alpha) * maps + alpha * resized


def spatial_grid(positions: int, latent_hw: tuple[int, int]) -> tuple[int, int]:
    """The (h, w) of a UNet level holding ``positions`` = h*w tokens, found by halving the latent grid (ceil)."""
    h, w = latent_hw
    for _ in range(16):
        if h * w == positions:
            return h, w
        if h == 1 and w == 1:
            break
        h, w = (h + 1) // 2, (w + 1) // 2
    raise ValueError(f"cannot map {positions} spatial positions onto a halving of the latent grid {latent_hw}")


# ---- controller, hook and processor ----


@dataclass
class BroadWayController:
    """Per-generation state shared by the BroadWay processors: step gate, CFG layout, up_blocks.1 anchor maps.

    The per-call grid, step and timestep are ``context``'s (filled by :meth:`begin_call` from the UNet hook).
    ``num_steps`` wins if set; else the number of distinct ``scheduler.timesteps`` at the first call of a
    generation; with neither, a step is active while ``timestep >= (1 - steps_fraction) * num_train_timesteps``.
    ``history`` lists one record per modified map (step, block, key, beta used).
    """

    config: BroadWayConfig
    scheduler: object | None = field(default=None, repr=False)
    num_steps: int | None = None
    num_train_timesteps: int = 1000
    context: AttentionContext = field(default_factory=AttentionContext, repr=False)
    history: list = field(default_factory=list, repr=False)
    anchors: dict = field(default_factory=dict, repr=False)
    batch: int = 0
    cond_half: bool = False
    active: bool = False
    _steps_this_run: int | None = None
    handle: OpHandle = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.handle = OpHandle(self)  # what torch.compile passes into vidattn::owner_call (the hook's begin_call)

    @property
    def latent_hw(self) -> tuple[int, int]:
        """(height, width) of the current call's latent grid (the context's layout)."""
        layout = self.context.layout
        return (0, 0) if layout is None else (layout.height, layout.width)

    def begin_call(self, sample: torch.Tensor, timestep) -> None:
        """Called by the UNet hook before every forward: fills the context (grid, step, timestep), then the gate and
        CFG layout."""
        if sample.ndim != 5:
            raise ValueError(f"BroadWay expects a (batch, channels, frames, height, width) UNet sample, got shape {tuple(sample.shape)}")
        self.config.check_frames(sample.shape[2])
        value = float(timestep.max().item() if torch.is_tensor(timestep) else timestep)
        new_run = self.context.last_timestep is None or value > self.context.last_timestep
        self.context.observe_timestep(value)
        self.context.layout = VideoLayout(*sample.shape[2:])
        if new_run:
            self.history.clear()
            self._steps_this_run = self._count_steps()
        self.anchors.clear()
        self.batch = sample.shape[0]
        if self.config.cond_half is None:
            half = self.batch // 2
            self.cond_half = self.batch % 2 == 0 and self.batch > 0 and torch.equal(sample[:half], sample[half:])
        else:
            self.cond_half = self.config.cond_half
        self.active = self._is_active()

    def _count_steps(self) -> int | None:
        if self.num_steps is not None:
            return int(self.num_steps)
        timesteps = getattr(self.scheduler, "timesteps", None)
        if timesteps is not None and len(timesteps) > 0:
            return int(torch.as_tensor(timesteps).unique().numel())
        return None

    def _is_active(self) -> bool:
        fraction = self.config.steps_fraction
        if self._steps_this_run is not None:
            return self.context.step < fraction * self._steps_this_run
        return self.context.last_timestep >= (1.0 - fraction) * self.num_train_timesteps

    def end_call(self) -> None:
        self.anchors.clear()

    def run_op(self, what: str, inputs: list) -> list[torch.Tensor]:
        """The hook's :meth:`begin_call` inside a compiled UNet (``vidattn::owner_call``); returns the step as the
        token the processors' ops take, so they run after it."""
        sample, timestep = inputs
        self.begin_call(sample, timestep)
        return [sample.new_tensor(float(self.context.step))]

    def reset(self) -> None:
        self.context.reset()
        self.history.clear()
        self.anchors.clear()
        self.active = False


class BroadWayHook(ModelHook):
    """diffusers ModelHook on the UNet: once per call, the controller's context gets the grid, step and timestep."""

    _is_stateful = True

    def __init__(self, controller: BroadWayController) -> None:
        super().__init__()
        self.controller = controller

    def pre_forward(self, module: torch.nn.Module, *args, **kwargs):
        sample = kwargs.get("sample", args[0] if args else None)
        timestep = kwargs.get("timestep", args[1] if len(args) > 1 else None)
        if sample is None or timestep is None:
            raise ValueError("BroadWay needs the UNet's `sample` and `timestep` arguments")
        if torch.compiler.is_compiling():  # the timestep's value and the CFG halves are data: read at run time, in the op
            if sample.ndim != 5:
                raise ValueError(f"BroadWay expects a (batch, channels, frames, height, width) UNet sample, got shape {tuple(sample.shape)}")
            self.controller.config.check_frames(sample.shape[2])
            stamp = timestep if torch.is_tensor(timestep) else torch.tensor(float(timestep))
            self.controller.context.token = owner_call(self.controller, "begin", [sample, stamp], [SCALAR])[0]
            return args, kwargs
        self.controller.begin_call(sample, timestep)
        return args, kwargs

    def post_forward(self, module: torch.nn.Module, output):
        if not torch.compiler.is_compiling():  # compiled: the next call's begin_call drops the anchor maps instead
            self.controller.end_call()
        return output

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        self.controller.reset()
        return module


class BroadWayAttnProcessor:
    """Temporal self-attention of one decoder motion module with the F x F map materialised and modified.

    Outside active steps (or for cross-attention / masked calls) it defers to ``original``, the stock processor.
    Under ``torch.compile`` the step gate is read when the attention op runs (``vidattn::owner_call``, :meth:`run_op`):
    the projections are traced once, the op runs the stock SDPA or the modified maps. ``scale``: the module's softmax
    scale (``attn.scale``, set by :func:`apply_broadway`), which the op needs.
    """

    def __init__(self, controller: BroadWayController, block: int, key: tuple, original, scale: float | None = None) -> None:
        self.controller = controller
        self.block = block
        self.key = key
        self.original = original
        self.scale = scale
        self.handle = OpHandle(self)  # what torch.compile passes into vidattn::owner_call

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        plain = (
            encoder_hidden_states is not None or attention_mask is not None or hidden_states.ndim != 3 or attn.spatial_norm is not None
        )
        compiling = torch.compiler.is_compiling()
        if plain or (not compiling and not self.controller.active):
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        residual = hidden_states
        query, key, value = self._project(attn, hidden_states)
        if compiling:
            if type(self.original) is not AttnProcessor2_0 or self.scale != attn.scale:
                raise ValueError(
                    f"torch.compile of BroadWay needs the stock AttnProcessor2_0 under it and scale=attn.scale "
                    f"(apply_broadway sets both); got {type(self.original).__name__}, scale={self.scale}"
                )
            out = owner_call(self, "attention", [query, key, value], [2], self.controller.context.token)[0]
        else:
            out = self._modified_attention(query, key, value, attn.scale)
        rows, heads, frames, head_dim = out.shape
        hidden_states = out.transpose(1, 2).reshape(rows, frames, heads * head_dim).to(query.dtype)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor

    @staticmethod
    def _project(attn, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(rows, heads, F, head_dim) q, k, v of a temporal self-attention call, as the stock processor builds them."""
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        rows, frames, _ = hidden_states.shape
        query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        head_dim = key.shape[-1] // attn.heads
        query, key, value = (t.view(rows, frames, attn.heads, head_dim).transpose(1, 2) for t in (query, key, value))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        return query, key, value

    def _modified_attention(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float) -> torch.Tensor:
        """The F x F maps materialised, modified (:meth:`modify`) and applied to ``value``: (rows, heads, F, head_dim)."""
        rows, heads, frames, _ = query.shape
        probs = torch.softmax((query.float() @ key.float().transpose(-1, -2)) * scale, dim=-1)
        probs = self.modify(probs, rows, frames, heads)
        return probs.to(value.dtype) @ value

    def run_op(self, what: str, inputs: list) -> list[torch.Tensor]:
        """The compiled call's attention (``vidattn::owner_call``): the stock SDPA outside active steps, else the
        modified maps."""
        query, key, value = inputs
        if not self.controller.active:
            return [F.scaled_dot_product_attention(query, key, value)]
        return [self._modified_attention(query, key, value, self.scale)]

    def modify(self, probs: torch.Tensor, rows: int, frames: int, heads: int) -> torch.Tensor:
        """TSG then FME on (rows, heads, F, F) maps laid out as (batch, h, w, heads); returns the same shape."""
        ctl, cfg = self.controller, self.controller.config
        if ctl.batch <= 0 or rows % ctl.batch:
            raise ValueError(f"temporal attention rows {rows} are not a multiple of the UNet batch {ctl.batch}")
        h, w = spatial_grid(rows // ctl.batch, ctl.latent_hw)
        maps = probs.reshape(ctl.batch, h, w, heads, frames, frames)
        cond = slice(ctl.batch // 2, None) if ctl.cond_half else slice(None)
        e_before = temporal_energy(maps[cond])
        if self.block == ANCHOR_BLOCK:
            ctl.anchors[self.key] = maps.detach()
            guided = maps
        else:
            anchor = ctl.anchors.get(self.key)
            if anchor is None or anchor.shape[3:] != maps.shape[3:]:
                raise ValueError(
                    f"up_blocks.{self.block} temporal attention {self.key} has no matching up_blocks.{ANCHOR_BLOCK} map "
                    "(same motion-module index, transformer block, slot, heads and frames); set alpha=0 for this UNet"
                )
            guided = self_guide(maps, anchor, cfg.alpha, cfg.interpolation)
        beta = cfg.beta
        if cfg.adaptive_beta:
            beta = adaptive_beta(cfg.beta, e_before, *split_energy(guided[cond], cfg.tau))
        out = fourier_enhance(guided, beta, cfg.tau, cfg.clamp_negative)
        ctl.history.append({"step": ctl.context.step, "block": self.block, "key": self.key, "beta": beta})
        return out.reshape(rows, heads, frames, frames)


def _targets(unet: torch.nn.Module) -> dict[str, tuple[int, tuple]]:
    """Processor name -> (block, (motion module, transformer block, slot)) for up_blocks.1..3 temporal attention."""
    found = {}
    for name in unet.attn_processors:
        match = _TEMPORAL_ATTN.match(name)
        if match and int(match.group(1)) in DECODER_BLOCKS:
            found[name] = (int(match.group(1)), (int(match.group(2)), int(match.group(3)), match.group(4)))
    return found


def apply_broadway(unet: torch.nn.Module, config: BroadWayConfig | None = None, *, scheduler=None) -> BroadWayController:
    """Install BroadWay on ``unet`` (UNetMotionModel / UNet3DConditionModel) and return its controller.

    Pass the pipeline's ``scheduler`` so the step gate knows the number of steps; see :class:`BroadWayController`.
    """
    config = config or BroadWayConfig()
    if not isinstance(config, BroadWayConfig):
        raise ValueError(f"config must be a BroadWayConfig, got {type(config).__name__}")
    remove_broadway(unet)
    targets = _targets(unet) if hasattr(unet, "attn_processors") else {}
    if not targets:
        raise ValueError(
            "BroadWay found no temporal self-attention in up_blocks.1..3; supported UNets: UNetMotionModel "
            "(AnimateDiff) and UNet3DConditionModel (ModelScope text-to-video)"
        )
    train_steps = getattr(getattr(scheduler, "config", None), "num_train_timesteps", None) or 1000
    controller = BroadWayController(replace(config), scheduler=scheduler, num_train_timesteps=int(train_steps))
    processors = dict(unet.attn_processors)
    modules = dict(unet.named_modules())
    for name, (block, key) in targets.items():
        scale = modules[name.removesuffix(".processor")].scale
        processors[name] = BroadWayAttnProcessor(controller, block, key, processors[name], scale)
    unet.set_attn_processor(processors)
    registry = HookRegistry.check_if_exists_or_initialize(unet)
    registry.register_hook(BroadWayHook(controller), BROADWAY_HOOK_NAME)
    return controller


def remove_broadway(unet: torch.nn.Module) -> None:
    """Restore the processors BroadWay replaced and remove its UNet hook; a no-op if it is not installed."""
    if hasattr(unet, "attn_processors"):
        processors = dict(unet.attn_processors)
        if any(isinstance(p, BroadWayAttnProcessor) for p in processors.values()):
            unet.set_attn_processor(
                {name: p.original if isinstance(p, BroadWayAttnProcessor) else p for name, p in processors.items()}
            )
    registry = getattr(unet, "_diffusers_hook", None)
    if registry is not None and registry.get_hook(BROADWAY_HOOK_NAME) is not None:
        registry.remove_hook(BROADWAY_HOOK_NAME, recurse=False)
