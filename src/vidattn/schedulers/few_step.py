"""Few-step flow-matching schedule of block-causal streaming Wan students (CausVid, Self-Forcing, Hybrid Forcing).

Each chunk is denoised in a handful of steps (default t = 1000, 750, 500, 250 warped by shift 5), re-noising the
predicted clean latents with fresh noise between steps; a final refresh pass at the context timestep (0: clean)
writes the chunk's keys and values into the KV cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

FlowFn = Callable[[torch.Tensor, float], torch.Tensor]
NoiseFn = Callable[[], torch.Tensor]


@dataclass(frozen=True)
class FewStepSchedule:
    """Denoising steps in training-timestep units (before the shift), the shift and the refresh timestep.

    ``sigmas`` are the shifted noise levels ``shift*s / (1 + (shift-1)*s)`` with ``s = step / num_train_timesteps``,
    which is what Self-Forcing's ``warp_denoising_step`` picks out of a 1000-step shifted schedule.
    """

    steps: tuple[int, ...] = (1000, 750, 500, 250)
    shift: float = 5.0
    num_train_timesteps: int = 1000
    context_timestep: int = 0

    def __post_init__(self) -> None:
        steps = tuple(self.steps) if isinstance(self.steps, (list, tuple)) else None
        if not steps or any(not isinstance(s, int) or not 0 < s <= self.num_train_timesteps for s in steps):
            raise ValueError(f"steps must be a non-empty sequence of ints in (0, num_train_timesteps], got {self.steps!r}")
        if any(a <= b for a, b in zip(steps, steps[1:])):
            raise ValueError(f"steps must be strictly decreasing, got {steps!r}")
        if not self.shift > 0:
            raise ValueError(f"shift must be > 0, got {self.shift!r}")
        if not isinstance(self.context_timestep, int) or not 0 <= self.context_timestep < steps[-1]:
            raise ValueError(f"context_timestep must be an int in [0, {steps[-1]}) (0 = clean context), got {self.context_timestep!r}")
        object.__setattr__(self, "steps", steps)

    def _warp(self, step: int) -> float:
        s = step / self.num_train_timesteps
        return self.shift * s / (1 + (self.shift - 1) * s)

    @property
    def sigmas(self) -> list[float]:
        """Noise level of each denoising step (1.0 = pure noise)."""
        return [self._warp(s) for s in self.steps]

    @property
    def timesteps(self) -> list[float]:
        """The timestep value the transformer sees at each step (sigma * num_train_timesteps)."""
        return [sigma * self.num_train_timesteps for sigma in self.sigmas]

    @property
    def context_sigma(self) -> float:
        return self._warp(self.context_timestep)

    @staticmethod
    def predict_x0(sample: torch.Tensor, flow: torch.Tensor, sigma: float) -> torch.Tensor:
        """Clean latents from a flow prediction (flow = noise - x0, sample = (1 - sigma) x0 + sigma noise)."""
        return sample - sigma * flow

    @staticmethod
    def add_noise(x0: torch.Tensor, noise: torch.Tensor, sigma: float) -> torch.Tensor:
        return (1 - sigma) * x0 + sigma * noise

    def denoise(self, flow_fn: FlowFn, noise_fn: NoiseFn) -> torch.Tensor:
        """Denoise one chunk: ``flow_fn(sample, timestep)`` is the model; ``noise_fn()`` draws fresh noise.

        Noise is drawn once for the start and once per re-noising, in that order, so a reference can replay it.
        """
        sample = noise_fn()
        sigmas = self.sigmas
        x0 = sample
        for i, sigma in enumerate(sigmas):
            x0 = self.predict_x0(sample, flow_fn(sample, sigma * self.num_train_timesteps), sigma)
            if i + 1 < len(sigmas):
                sample = self.add_noise(x0, noise_fn(), sigmas[i + 1])
        return x0

    def context_input(self, x0: torch.Tensor, noise_fn: NoiseFn | None = None) -> tuple[torch.Tensor, float]:
        """(input, timestep) of the refresh pass that writes a finished chunk into the cache."""
        sigma = self.context_sigma
        if sigma == 0 or noise_fn is None:
            return x0, float(self.context_timestep)
        return self.add_noise(x0, noise_fn(), sigma), sigma * self.num_train_timesteps
