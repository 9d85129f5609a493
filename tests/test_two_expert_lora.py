"""LoRA on a Wan 2.2 A14B-style pipeline: one expert per run, trained on its side of boundary_ratio, loaded back with
diffusers' own ``load_lora_weights(..., load_into_transformer_2=True)``."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import WanPipeline
from gray_clips import gray_video

from vidattn.flow_matching import sample_sigmas
from vidattn.pipelines.default_model import build_default_pipeline
from vidattn.training.cache import prepare_data
from vidattn.training.config import TrainConfig
from vidattn.training.train_lora import expert_sigma_range, train


def test_sigma_range_keeps_the_shifted_distribution_inside_the_range():
    g = torch.Generator().manual_seed(0)
    full = sample_sigmas(20000, 5.0, g)
    low = sample_sigmas(20000, 5.0, torch.Generator().manual_seed(1), sigma_range=(0.0, 0.875))
    high = sample_sigmas(20000, 5.0, torch.Generator().manual_seed(2), sigma_range=(0.875, 1.0))
    assert low.max() < 0.875 and high.min() >= 0.875 - 1e-6
    # restricted to the range, the distribution is the full one conditioned on it (compare a quantile)
    below = full[full < 0.875]
    assert abs(torch.quantile(low, 0.5) - torch.quantile(below, 0.5)) < 0.02
    with pytest.raises(ValueError, match="sigma_range must be"):
        sample_sigmas(2, 5.0, sigma_range=(0.5, 0.5))


@pytest.fixture(scope="module")
def two_experts(tmp_path_factory):
    root = tmp_path_factory.mktemp("a14b")
    base = build_default_pipeline()
    pipe = WanPipeline(base.tokenizer, base.text_encoder, base.vae, base.scheduler, transformer=base.transformer,
                       transformer_2=build_default_pipeline(seed=1).transformer, boundary_ratio=0.875)
    pipe.save_pretrained(str(root / "model"))
    (root / "clips").mkdir()
    gray_video(root / "clips" / "a.mp4", 9, 64, 64, first=0, step=20)
    (root / "captions.jsonl").write_text(json.dumps({"video": "a.mp4", "caption": "a red circle moving left"}))
    prepare_data(root / "clips", root / "captions.jsonl", str(root / "model"), root / "cache", num_frames=9, height=64, width=64,
                 buckets=[(64, 64)], max_sequence_length=8)
    return root


def test_expert_two_trains_and_loads_into_transformer_2(two_experts, tmp_path):
    root = two_experts
    assert expert_sigma_range(str(root / "model"), "transformer") == (0.875, 1.0)
    assert expert_sigma_range(str(root / "model"), "transformer_2") == (0.0, 0.875)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = train(TrainConfig.from_dict(dict(
            model=str(root / "model"), data=str(root / "cache"), output_dir=str(tmp_path / "run"), expert="transformer_2",
            lora_rank=4, learning_rate=5e-3, max_train_steps=3, checkpointing_steps=10, progress_bar=False,
        )))
    finally:
        torch.set_num_threads(threads)
    pipe = WanPipeline.from_pretrained(str(root / "model"))
    trained = dict(result.transformer.named_parameters())["blocks.0.ffn.net.2.weight"]  # a frozen base weight
    torch.testing.assert_close(trained, pipe.transformer_2.blocks[0].ffn.net[2].weight)  # the expert that was asked for
    assert not torch.equal(trained, pipe.transformer.blocks[0].ffn.net[2].weight)
    g = torch.Generator().manual_seed(0)
    x = dict(hidden_states=torch.randn(1, 4, 3, 8, 8, generator=g), timestep=torch.tensor([300.0]),
             encoder_hidden_states=torch.randn(1, 8, pipe.transformer.config.text_dim, generator=g), return_dict=False)
    with torch.no_grad():
        before = [pipe.transformer(**x)[0], pipe.transformer_2(**x)[0]]
        pipe.load_lora_weights(result.lora_path, load_into_transformer_2=True)
        after = [pipe.transformer(**x)[0], pipe.transformer_2(**x)[0]]
    torch.testing.assert_close(after[0], before[0], rtol=0, atol=0)  # the high-noise expert is untouched
    assert (after[1] - before[1]).abs().max() > 1e-4  # the trained low-noise expert changed


def test_expert_two_on_a_one_transformer_model_is_refused(tmp_path):
    with pytest.raises(ValueError, match="needs a two-expert pipeline"):
        expert_sigma_range("default", "transformer_2")
    with pytest.raises(ValueError, match="expert must be one of"):
        TrainConfig(model="default", data="x", output_dir="y", expert="transformer_3")
