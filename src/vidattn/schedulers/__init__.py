"""Schedulers the pipelines need that diffusers lacks (few-step streaming)."""

from .few_step import FewStepSchedule

__all__ = ["FewStepSchedule"]
