"""`vidattn eval --pipeline NAME`: measure what a training-free or streaming pipeline promises, on trained tiny models.

Each pipeline has one module here with ``evaluate(*, prompts: int, seeds: list[int], out: Path | None) -> PipelineReport``;
the report (tables + frame strips) is written by :mod:`vidattn.pipeline_eval.report`.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from .report import PipelineReport, Table

# pipeline name -> module implementing evaluate(); imported lazily (each loads its own models)
PIPELINE_EVALS: dict[str, str] = {
    "broadway": "vidattn.pipeline_eval.broadway",
    "freeswim": "vidattn.pipeline_eval.freeswim",
    "streaming": "vidattn.pipeline_eval.streaming",
}


def evaluate_pipeline(name: str, *, prompts: int, seeds: list[int], out: str | Path | None) -> PipelineReport:
    """Run pipeline ``name``'s measurement and write its report to ``out`` (when given)."""
    if name not in PIPELINE_EVALS:
        raise ValueError(f"pipeline must be one of {sorted(PIPELINE_EVALS)}, got {name!r}")
    module = importlib.import_module(PIPELINE_EVALS[name])
    report = module.evaluate(prompts=prompts, seeds=list(seeds), out=None if out is None else Path(out))
    if out is not None:
        report.write(Path(out))
    return report


__all__ = ["PIPELINE_EVALS", "PipelineReport", "Table", "evaluate_pipeline"]
