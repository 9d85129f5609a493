"""`vidattn bench --suite gpu|cpu`: every registered method against dense SDPA at the sizes real models run, in one
command, written as ``bench.json`` and ``bench.md``.

Per (case, method): attention time with the method's ``auto`` backend vs SDPA (flash / cuDNN on a GPU), the first
call's extra time (FlexAttention compilation), peak memory, density (share of dense FLOPs) and the largest
difference from the method's exact reference (its ``dense`` backend: SDPA with the explicit mask) where that fits in
memory. Then end to end: a randomly initialised ``WanTransformer3DModel`` for a few denoising steps, dense vs each
method. The GPU suite is sized for one H100-class GPU (under 8 minutes); the CPU suite is a reduced copy.
"""

from __future__ import annotations

import json
import math
import os
import platform
import resource
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from .atomic import write_text_atomic
from .benchmarking import best_time, synthetic_qkv
from .layout import VideoLayout
from .processors.registry import METHODS, apply_method, get_method, make_processor


@dataclass(frozen=True)
class Case:
    """One attention shape: a model's heads x head dim at a latent grid."""

    name: str
    heads: int
    head_dim: int
    grid: str


@dataclass(frozen=True)
class Suite:
    dtype: torch.dtype
    cases: tuple[Case, ...]
    transformer: dict  # WanTransformer3DModel config of the end-to-end run
    latent: tuple[int, int, int, int]  # (channels, frames, height, width) of its latent
    steps: int
    repeats: int
    reference_limit: int  # compare with the explicit-mask reference up to this many tokens (it materialises N x N)


WAN_1_3B = dict(
    patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16, out_channels=16, text_dim=4096,
    freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6,
    rope_max_seq_len=1024,
)

SUITES = {
    "gpu": Suite(
        torch.bfloat16,
        (
            Case("Wan2.1-1.3B 480p", 12, 128, "21x30x52"),
            Case("Wan2.1-1.3B 720p", 12, 128, "21x45x80"),
            Case("Wan2.1-14B 720p", 40, 128, "21x45x80"),
            Case("HunyuanVideo 720p", 24, 128, "33x45x80"),
            Case("Wan2.1-1.3B 480p, 4x length", 12, 128, "81x30x52"),
        ),
        WAN_1_3B, (16, 21, 60, 104), steps=3, repeats=3, reference_limit=33_000,
    ),
    "cpu": Suite(
        torch.bfloat16,
        (Case("reduced 480p frame, 5 frames", 2, 64, "5x30x52"),),
        {**WAN_1_3B, "num_attention_heads": 2, "attention_head_dim": 64, "ffn_dim": 256, "num_layers": 2, "text_dim": 64, "freq_dim": 64},
        (16, 5, 60, 104), steps=2, repeats=1, reference_limit=8_000,
    ),
}


@dataclass
class Row:
    case: str
    method: str
    grid: str
    heads: int
    head_dim: int
    ms: float | None = None
    speedup: float | None = None
    first_call_extra_ms: float | None = None
    peak_mb: float | None = None
    density: float | None = None
    max_abs_error: float | None = None
    error: str | None = None


@dataclass
class SuiteReport:
    suite: str
    device: str
    dtype: str
    attention: list[Row] = field(default_factory=list)
    end_to_end: list[dict] = field(default_factory=list)
    machine: str = ""
    date: str = ""

    def to_markdown(self) -> str:
        lines = [f"# vidattn bench --suite {self.suite}", "", f"{self.device}, {self.dtype}, {self.machine}, {self.date}", "",
                 "| case | grid | heads x dim | method | ms | dense/method | first call +ms | peak MB | density | max abs err |",
                 "|---|---|---|---|---:|---:|---:|---:|---:|---:|"]
        for r in self.attention:
            cells = [_fmt(r.ms, ".1f"), _fmt(r.speedup, ".2f"), _fmt(r.first_call_extra_ms, ".0f"), _fmt(r.peak_mb, ".0f"),
                     _fmt(r.density, ".3f"), _fmt(r.max_abs_error, ".1e")]
            if r.error:
                cells = ["error: " + r.error] + [""] * 5
            lines.append(f"| {r.case} | {r.grid} | {r.heads}x{r.head_dim} | {r.method} | " + " | ".join(cells) + " |")
        if self.end_to_end:
            lines += ["", "End to end (random WanTransformer3DModel, s per denoising step):", "",
                      "| method | s/step | dense/method | error |", "|---|---:|---:|---|"]
            for e in self.end_to_end:
                lines.append(f"| {e['method']} | {_fmt(e.get('seconds_per_step'), '.3f')} | {_fmt(e.get('speedup'), '.2f')} | {e.get('error') or ''} |")
        return "\n".join(lines) + "\n"


def _fmt(value, spec: str) -> str:
    return "" if value is None else format(value, spec)


def _peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process peak so far (Linux: KiB)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _methods(names: list[str] | None) -> list[str]:
    names = [m for m in METHODS if m != "dense"] if names is None else names
    for name in names:
        get_method(name)
    return names


def _settings(method: str) -> dict:
    """The method's ``generate`` defaults (radial: the paper's decay 0.2), no warm-up: attention alone."""
    return dict(get_method(method).generate)


def time_attention(case: Case, method: str, suite: Suite, device: torch.device) -> Row:
    layout = VideoLayout.parse(case.grid)
    row = Row(case.name, method, case.grid, case.heads, case.head_dim)
    q, k, v = (x.to(device, suite.dtype) for x in synthetic_qkv(layout, case.heads, case.head_dim, smooth=0.5))
    try:
        proc = make_processor(method, layout=layout, **_settings(method))
        with torch.no_grad():
            dense, _ = best_time(lambda: F.scaled_dot_product_attention(q, k, v), suite.repeats, device)
            _reset_peak(device)
            start = time.perf_counter()
            proc.attend(q, k, v, layout, None, "wan")  # first call: plan + compile
            if device.type == "cuda":
                torch.cuda.synchronize()
            first = time.perf_counter() - start
            seconds, out = best_time(lambda: proc.attend(q, k, v, layout, None, "wan"), suite.repeats, device)
            row.peak_mb = _peak_mb(device)
            row.ms, row.speedup = seconds * 1e3, dense / seconds
            row.first_call_extra_ms = max(first - seconds, 0.0) * 1e3
            row.density = proc.density(q, k, layout, "wan")
            if layout.total_tokens <= suite.reference_limit and "dense" in proc.config.backends:
                reference = make_processor(method, layout=layout, backend="dense", **_settings(method)).attend(q, k, v, layout, None, "wan")
                row.max_abs_error = (out.float() - reference.float()).abs().max().item()
    except (ValueError, RuntimeError, torch.OutOfMemoryError) as error:  # one failing method must not end the suite
        row.error = str(error).splitlines()[0][:160]
    return row


def time_end_to_end(suite: Suite, methods: list[str], device: torch.device) -> list[dict]:
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    model = WanTransformer3DModel(**suite.transformer).to(device, suite.dtype).eval()
    g = torch.Generator().manual_seed(0)
    latent = torch.randn(1, *suite.latent, generator=g).to(device, suite.dtype)
    text = torch.randn(1, 16, suite.transformer["text_dim"], generator=g).to(device, suite.dtype)

    def denoise():
        with torch.no_grad():
            for t in torch.linspace(999, 100, suite.steps):
                model(hidden_states=latent, timestep=t.view(1).to(device), encoder_hidden_states=text, return_dict=False)

    rows, dense = [], None
    for method in ["dense", *methods]:
        try:
            apply_method(model, method, **({} if method == "dense" else _settings(method)))
            seconds, _ = best_time(denoise, 1, device)
            dense = seconds if method == "dense" else dense
            rows.append(dict(method=method, seconds_per_step=seconds / suite.steps, speedup=dense / seconds))
        except (ValueError, RuntimeError, torch.OutOfMemoryError) as error:
            rows.append(dict(method=method, error=str(error).splitlines()[0][:160]))
        finally:
            apply_method(model, "dense")
    return rows


def run_suite(name: str, out: str | Path, methods: list[str] | None = None, device: str | None = None, end_to_end: bool = True,
              progress=print) -> SuiteReport:
    """Run suite ``name`` (``"gpu"`` or ``"cpu"``) and write ``bench.json`` and ``bench.md`` into ``out``."""
    if name not in SUITES:
        raise ValueError(f"suite must be one of {sorted(SUITES)}, got {name!r}")
    suite = SUITES[name]
    device_ = torch.device(device or ("cuda" if name == "gpu" else "cpu"))
    if device_.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("the gpu suite needs a CUDA device (torch.cuda.is_available() is False); run --suite cpu here")
    methods = _methods(methods)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    described = torch.cuda.get_device_name(device_) if device_.type == "cuda" else f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"
    report = SuiteReport(name, described, str(suite.dtype).replace("torch.", ""),
                         machine=f"{platform.machine()} torch {torch.__version__}, load {os.getloadavg()[0]:.1f}",
                         date=time.strftime("%Y-%m-%d %H:%M"))
    for case in suite.cases:
        for method in methods:
            progress(f"[{name}] {case.name} {case.grid} {case.heads}x{case.head_dim}: {method} ...")
            report.attention.append(time_attention(case, method, suite, device_))
    if end_to_end:
        progress(f"[{name}] end to end: WanTransformer3DModel {suite.transformer['num_layers']} layers, {suite.steps} steps ...")
        report.end_to_end = time_end_to_end(suite, methods, device_)
    write_text_atomic(out / "bench.json", json.dumps({**asdict(report), "attention": [asdict(r) for r in report.attention]}, indent=1, default=_json_default))
    write_text_atomic(out / "bench.md", report.to_markdown())
    return report


def _json_default(value):
    return None if isinstance(value, float) and not math.isfinite(value) else str(value)
