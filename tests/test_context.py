"""The one per-call state object: hook-filled grid and step, pipeline-set call fields, and the latent helpers."""

import pytest
import torch
from tiny_models import tiny_wan, wan_inputs

from vidattn.context import AttentionContext
from vidattn.latents import denormalise_latents, normalise_latents
from vidattn.layout import VideoLayout
from vidattn.pipelines.cross_override import CrossAttnOverride
from vidattn.processors.base import VideoAttnProcessor
from vidattn.processors.install import install_processors, remove_processors


def test_call_sets_fields_for_the_block_nests_and_restores_on_error():
    context = AttentionContext()
    with context.call(frame=4, commit=True):
        assert (context.frame, context.commit, context.phase) == (4, True, None)
        with context.call(phase="full_record", branch="uncond"):
            assert (context.frame, context.commit, context.phase, context.branch) == (4, True, "full_record", "uncond")
        assert (context.phase, context.branch) == (None, None)
    assert (context.frame, context.commit) == (0, False)
    with pytest.raises(RuntimeError):
        with context.call(frame=2):
            raise RuntimeError("boom")
    assert context.frame == 0


@pytest.mark.parametrize("fields,match", [({"calls": 1}, "calls"), ({"frame": -1}, "frame"), ({"frame": 1.0}, "frame"),
                                          ({"commit": 1}, "commit"), ({"phase": 3}, "phase")])
def test_call_rejects_unknown_or_bad_fields(fields, match):
    with pytest.raises(ValueError, match=match):
        with AttentionContext().call(**fields):
            pass


class Spy(VideoAttnProcessor):
    """Records what the shared context says at each attention call, then runs SDPA."""

    seen: list = []

    def attend(self, query, key, value, layout, key_valid, family):
        ctx = self.context
        self.seen.append((ctx.layout, ctx.step, ctx.frame, ctx.phase))
        return torch.nn.functional.scaled_dot_product_attention(query, key, value)


def test_hook_fields_and_pipeline_fields_arrive_in_one_object():
    model = tiny_wan(num_layers=2)
    Spy.seen = []
    context = install_processors(model, lambda i, family, ctx: Spy(layer_idx=i, context=ctx))
    try:
        inputs = wan_inputs(batch=1, frames=3, height=8, width=10)
        with torch.no_grad():
            with context.call(frame=6, phase="window"):
                model(**{**inputs, "timestep": torch.tensor([900])})
            model(**{**inputs, "timestep": torch.tensor([500])})
    finally:
        remove_processors(model)
    grid = VideoLayout(3, 4, 5)  # the (1, 2, 2) patch of the tiny Wan
    assert Spy.seen == [(grid, 0, 6, "window")] * 2 + [(grid, 1, 0, None)] * 2


def test_cross_override_phase_lives_on_the_context():
    controller = CrossAttnOverride(2)
    with controller.active("full_record", "uncond"):
        assert (controller.context.phase, controller.context.branch) == ("full_record", "uncond")
        controller.store(1, torch.ones(1, 3, 4))
    assert controller.context.phase is None and controller.records["uncond"][1] is not None
    assert not hasattr(controller, "phase") and not hasattr(controller, "recorded_at")


def test_latent_normalisation_round_trip_against_per_channel_loop():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, 3, 4, 5, 6, generator=g, dtype=torch.float64)
    mean, std = [0.5, -1.0, 2.0], [1.5, 0.25, 3.0]
    normalised = normalise_latents(z, mean, std)
    for c in range(3):
        assert torch.allclose(normalised[:, c], (z[:, c] - mean[c]) / std[c])
    assert torch.allclose(denormalise_latents(normalised, mean, std), z)
    assert torch.allclose(denormalise_latents(z[:, :, 0], torch.tensor(mean), torch.tensor(std))[:, 1], z[:, 1, 0] * 0.25 - 1.0)


def test_step_counts_timestep_tensor_changes_not_only_its_largest_value():
    """CFG calls repeat a tensor (no step); per-frame timesteps whose top value holds still advance; a rise resets."""
    context = AttentionContext()
    calls = [
        torch.tensor([1000.0, 1000.0, 1000.0]), torch.tensor([1000.0, 1000.0, 1000.0]),  # step 0, as two CFG calls
        torch.tensor([900.0, 1000.0, 1000.0]), torch.tensor([900.0, 1000.0, 1000.0]),    # step 1: the top value holds
        torch.tensor([800.0, 900.0, 1000.0]),                                            # step 2
        torch.tensor([700.0, 800.0, 900.0]),                                             # step 3
        torch.tensor([1000.0, 1000.0, 1000.0]),                                          # a new generation
        500.0, 500.0, 250.0,                                                             # plain numbers: steps 1, 1, 2
    ]
    steps = []
    for timestep in calls:
        context.observe(None, timestep)
        steps.append(context.step)
    assert steps == [0, 0, 1, 1, 2, 3, 0, 1, 1, 2]
