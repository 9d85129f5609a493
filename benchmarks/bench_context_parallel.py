"""Context parallelism figures on 2 gloo processes: max |CP - one process| and all-to-all bytes per layer per call.

Counts the bytes through diffusers' ``_all_to_all_single`` (used by stock Ulysses and by vidattn's exchange alike)
and through all-gathers, for stock ``WanAttnProcessor`` and each vidattn method, on the tiny Wan of the tests.
Run: PYTHONPATH=src:tests python benchmarks/bench_context_parallel.py  (a benchmark, not a test: it patches diffusers' helper to count)
"""

from __future__ import annotations

import copy
import sys
from collections import Counter

import torch

sys.path.insert(0, "tests")

from cp_harness import run_on_two_processes  # noqa: E402


def job_bytes() -> dict:
    import diffusers.models.attention_dispatch as dispatch
    import torch.distributed._functional_collectives as funcol
    from test_context_parallel import METHODS, WAN_LAYOUT, enable, forward, install, tiny_wan_cp, wan_cp_inputs
    from cp_harness import ulysses_mesh

    counts: Counter = Counter()
    original_a2a = dispatch._all_to_all_single
    original_gather = funcol.all_gather_single_autograd if hasattr(funcol, "all_gather_single_autograd") else None

    def counting_a2a(x, group):
        counts["all_to_all"] += x.numel() * x.element_size()
        return original_a2a(x, group)

    dispatch._all_to_all_single = counting_a2a
    if original_gather is not None:

        def counting_gather(x, *args, **kwargs):
            counts["all_gather"] += x.numel() * x.element_size()
            return original_gather(x, *args, **kwargs)

        funcol.all_gather_single_autograd = counting_gather
    mesh, base, inputs = ulysses_mesh(), tiny_wan_cp(), wan_cp_inputs()
    layers = len(base.blocks)
    results = {}
    cases = {"stock": None, **{f"{m}/apply" if METHODS[m][1] else f"{m}/drop-in": m for m in METHODS}}
    for name, method in cases.items():
        single = copy.deepcopy(base)
        model = copy.deepcopy(base)
        if method is not None:
            kind = name.split("/")[1]
            install(single, method, kind, WAN_LAYOUT)
            install(model, method, kind, WAN_LAYOUT)
        ref = forward(single, inputs)
        enable(model, mesh)
        counts.clear()
        out = forward(model, inputs)
        results[name] = dict(
            max_diff=(out - ref).abs().max().item(),
            a2a_bytes_per_layer=counts["all_to_all"] // layers,
            gather_bytes_per_layer=counts["all_gather"] // layers,
        )
    from test_context_parallel import vidattn_cp_plan
    from tiny_models import hunyuan_inputs, tiny_hunyuan
    from vidattn import RadialConfig, apply_radial_attention

    base, inputs = tiny_hunyuan(), hunyuan_inputs(frames=4)
    single, model = copy.deepcopy(base), copy.deepcopy(base)
    for m in (single, model):
        apply_radial_attention(m, RadialConfig(decay=0.5, block_size=8, backend="gather"))
    ref = forward(single, inputs)
    enable(model, mesh, cp_plan=vidattn_cp_plan(model))
    counts.clear()
    out = forward(model, inputs)
    layers = len(base.transformer_blocks) + len(base.single_transformer_blocks)
    results["hunyuan radial"] = dict(
        max_diff=(out - ref).abs().max().item(),
        a2a_bytes_per_layer=counts["all_to_all"] // layers,
        gather_bytes_per_layer=counts["all_gather"] // layers,
    )
    return results


if __name__ == "__main__":
    rows = run_on_two_processes("bench_context_parallel", "job_bytes", timeout=600)
    print("tiny Wan (4 heads x 16, 64 tokens, batch 2, f32) and tiny HunyuanVideo (2 heads x 12, 80 video + 6 text tokens,")
    print("batch 2), ulysses_degree=2, rank 0; bytes per video attention layer per transformer call")
    print(f"{'case':16s} {'max|CP-1p|':>11s} {'all-to-all B':>13s} {'all-gather B':>13s}")
    for name, row in rows.items():
        print(f"{name:16s} {row['max_diff']:11.2e} {row['a2a_bytes_per_layer']:13d} {row['gather_bytes_per_layer']:13d}")
