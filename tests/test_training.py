"""LoRA training: objective vs the scheduler, data preparation, the accelerate loop, resume, export, DDP, errors."""

from __future__ import annotations

import json
import os
import socket
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline
from safetensors.torch import load_file

from gray_clips import gray_video

from vidattn.layout import VideoLayout
from vidattn.pipelines.default_model import build_default_pipeline
from vidattn.training.cache import CachedLatentDataset, prepare_data
from vidattn.training.config import TrainConfig
from vidattn.training.dataset import BucketBatchSampler, VideoClipDataset, choose_bucket, frame_indices
from vidattn.flow_matching import flow_matching_loss, sample_sigmas, shift_sigmas
from vidattn.training.train_lora import add_lora, install_method, load_transformer, main, train

TEXT_LEN = 8


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A saved tiny Wan pipeline, 4 videos (2 good, 1 corrupt, 1 too short) and their prepared cache."""
    root = tmp_path_factory.mktemp("training")
    model = root / "model"
    build_default_pipeline().save_pretrained(str(model))
    clips = root / "clips"
    clips.mkdir()
    gray_video(clips / "wide.mp4", 16, 64, 96)
    gray_video(clips / "square.mp4", 16, 64, 64)
    gray_video(clips / "short.mp4", 5, 64, 64)
    (clips / "corrupt.mp4").write_bytes(b"\x00not a video" * 50)
    captions = root / "captions.jsonl"
    names = {"wide.mp4": "a red circle moving left", "square.mp4": "a blue square moving up", "short.mp4": "a circle", "corrupt.mp4": "a square"}
    captions.write_text("\n".join(json.dumps({"video": k, "caption": v}) for k, v in names.items()))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = prepare_data(
            clips, captions, str(model), root / "cache", num_frames=13, height=64, width=64, buckets=[(64, 64), (64, 96)], max_sequence_length=TEXT_LEN
        )
    return {"root": root, "model": str(model), "clips": clips, "captions": captions, "cache": root / "cache", "report": report, "warnings": caught}


def tiny_config(ws, out: Path, **overrides) -> TrainConfig:
    values = dict(
        model=ws["model"], data=str(ws["cache"]), output_dir=str(out), lora_rank=8, learning_rate=2e-3, max_train_steps=4,
        checkpointing_steps=2, shift=3.0, progress_bar=False,
    )
    return TrainConfig.from_dict({**values, **overrides})


def forward_inputs(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return dict(
        hidden_states=torch.randn(1, 4, 4, 8, 8, generator=g), timestep=torch.tensor([500.0]),
        encoder_hidden_states=torch.randn(1, TEXT_LEN, 32, generator=g), return_dict=False,
    )


# -- objective ------------------------------------------------------------------------------------------
def test_shift_matches_scheduler_and_velocity_sign_recovers_x0():
    base = np.linspace(1.0, 0.05, 8)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    scheduler.set_timesteps(sigmas=list(base))
    torch.testing.assert_close(shift_sigmas(torch.tensor(base, dtype=torch.float32), 3.0), scheduler.sigmas[:-1].float())
    # an oracle predicting v = noise - x0 along x_s = (1 - s) x0 + s noise must land on x0 with the scheduler's steps
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(2, 3, generator=g), torch.randn(2, 3, generator=g)
    x = (1 - scheduler.sigmas[0]) * x0 + scheduler.sigmas[0] * noise
    for t in scheduler.timesteps:
        x = scheduler.step(noise - x0, t, x).prev_sample
    torch.testing.assert_close(x, x0, atol=1e-5, rtol=1e-5)


def test_sample_sigmas_shift_and_determinism():
    u = sample_sigmas(4096, 1.0, torch.Generator().manual_seed(1))
    assert 0 < u.min() and u.max() < 1 and abs(u.mean().item() - 0.5) < 0.02
    shifted = sample_sigmas(4096, 5.0, torch.Generator().manual_seed(1))
    torch.testing.assert_close(shifted, 5 * u / (1 + 4 * u))
    with pytest.raises(ValueError, match="shift"):
        sample_sigmas(2, 0.0)


class Recorder(torch.nn.Module):
    """Stands in for a transformer: records its inputs and returns a fixed prediction."""

    def __init__(self, pred):
        super().__init__()
        self.pred, self.calls = pred, []

    def forward(self, hidden_states, timestep, encoder_hidden_states, return_dict):
        self.calls.append((hidden_states, timestep, encoder_hidden_states))
        return (self.pred,)


def test_flow_matching_loss_against_the_formula():
    g = torch.Generator().manual_seed(3)
    x0, text, pred = torch.randn(2, 4, 2, 3, 3, generator=g), torch.randn(2, 5, 6, generator=g), torch.randn(2, 4, 2, 3, 3, generator=g)
    sigmas = torch.tensor([0.25, 0.8])
    model = Recorder(pred)
    loss = flow_matching_loss(model, x0, text, sigmas=sigmas, generator=torch.Generator().manual_seed(7))
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(7))
    noisy, timestep, states = model.calls[0]
    for b in range(2):
        torch.testing.assert_close(noisy[b], (1 - sigmas[b]) * x0[b] + sigmas[b] * noise[b])
    torch.testing.assert_close(timestep, sigmas * 1000)
    assert states is text
    torch.testing.assert_close(loss, ((pred - (noise - x0)) ** 2).mean())
    with pytest.raises(ValueError, match="latents"):
        flow_matching_loss(model, x0[0], text)


# -- data -----------------------------------------------------------------------------------------------
def test_prepare_data_skips_and_counts_bad_videos(workspace):
    report = workspace["report"]
    assert report.clips == 2
    assert sorted(Path(p).name for p, _ in report.skipped) == ["corrupt.mp4", "short.mp4"]
    assert any("needs at least 13" in reason for _, reason in report.skipped)
    assert sum("skipping video" in str(w.message) for w in workspace["warnings"]) == 2
    index = json.loads((workspace["cache"] / "index.json").read_text())
    assert len(index["skipped"]) == 2 and {c["source"] for c in index["clips"]} == {"wide.mp4", "square.mp4"}
    data = CachedLatentDataset(workspace["cache"])
    # 13 frames -> 4 latent frames (Wan VAE: 1 + 12/4); 64x96 picks the wide bucket -> 8x12 latents
    assert sorted(data.shape_keys()) == [(4, 4, 8, 8), (4, 4, 8, 12)]
    item = data[0]
    assert item["text_embeds"].shape == (TEXT_LEN, 32) and torch.isfinite(item["latents"]).all()


def test_decoded_frames_are_centre_sampled_and_resized(workspace):
    data = VideoClipDataset(workspace["clips"], workspace["captions"], num_frames=5, height=32, width=48, frame_stride=2)
    item = data.load(data.files.index(workspace["clips"] / "wide.mp4"))
    assert item["pixels"].shape == (3, 5, 32, 48) and item["caption"] == "a red circle moving left"
    expected = [15 * i + 10 for i in frame_indices(16, 5, 2)]
    got = ((item["pixels"] + 1) * 127.5).mean(dim=(0, 2, 3))
    assert torch.allclose(got, torch.tensor(expected, dtype=torch.float32), atol=4), (got, expected)


def test_frame_sampling_and_buckets_naive():
    for total, n, stride in [(16, 13, 1), (20, 5, 3), (5, 5, 1)]:
        idx = frame_indices(total, n, stride)
        span = (n - 1) * stride + 1
        assert idx == list(range((total - span) // 2, (total - span) // 2 + span, stride))
    with pytest.raises(ValueError, match="needs at least"):
        frame_indices(4, 5)
    buckets = [(480, 832), (832, 480), (624, 624)]
    assert choose_bucket(720, 1280, buckets) == (480, 832)
    assert choose_bucket(1920, 1080, buckets) == (832, 480)
    assert choose_bucket(500, 510, buckets) == (624, 624)


def test_bucket_sampler_shards_and_groups():
    keys = ["a", "a", "b", "b", "a", "b", "a", "b"]
    full = BucketBatchSampler(keys, 2, seed=5).batches(3)
    assert all(len({keys[i] for i in batch}) == 1 for batch in full)
    assert sorted(i for batch in full for i in batch) == list(range(8))
    ranks = [BucketBatchSampler(keys, 2, seed=5, rank=r, world_size=2).batches(3) for r in range(2)]
    assert ranks[0] == full[0::2] and ranks[1] == full[1::2]
    stream = BucketBatchSampler(keys, 2, seed=5).iterate(start=5)
    assert [next(stream) for _ in range(3)] == BucketBatchSampler(keys, 2, seed=5).batches(1)[1:4]
    with pytest.raises(ValueError, match="batch_size"):
        BucketBatchSampler(["a", "b"], 2)


def test_bad_data_inputs(workspace, tmp_path):
    clips = tmp_path / "clips"
    clips.mkdir()
    gray_video(clips / "one.mp4", 9, 32, 32)
    gray_video(clips / "two.mp4", 9, 32, 32)
    (clips / "one.txt").write_text("a red circle")
    with pytest.raises(ValueError, match=r"1 video\(s\) have no caption.*two.mp4"):
        VideoClipDataset(clips, None, num_frames=5, height=32, width=32)
    (clips / "two.txt").write_text("a blue square")
    assert len(VideoClipDataset(clips, None, num_frames=5, height=32, width=32)) == 2  # side-car captions
    with pytest.raises(ValueError, match="num_frames must be 4k"):
        prepare_data(clips, None, workspace["model"], tmp_path / "cache", num_frames=6, height=32, width=32)
    with pytest.raises(ValueError, match="num_frames must be an int >= 1"):
        VideoClipDataset(clips, None, num_frames=0, height=32, width=32)
    with pytest.raises(ValueError, match="multiples of 16"):
        VideoClipDataset(clips, None, num_frames=5, height=30, width=32)


# -- config ---------------------------------------------------------------------------------------------
def test_config_errors(workspace, tmp_path, capsys):
    with pytest.raises(ValueError, match=r"unknown training config key\(s\) \['lora_rnak'\]"):
        tiny_config(workspace, tmp_path, lora_rnak=4)
    with pytest.raises(ValueError, match="method must be one of .*'radial'"):
        tiny_config(workspace, tmp_path, method="sparse_magic")
    with pytest.raises(ValueError, match="mixed_precision must be one of"):
        tiny_config(workspace, tmp_path, mixed_precision="fp8")
    with pytest.raises(ValueError, match="missing required key"):
        TrainConfig.from_dict({"model": "default"})
    with pytest.raises(ValueError, match="set dense_layers at the top level"):  # caught in the config, before any model loads
        tiny_config(workspace, tmp_path, method="radial", method_args={"dense_layers": 1})
    with pytest.raises(ValueError, match="decay must be a number > 0"):
        tiny_config(workspace, tmp_path, method="radial", method_args={"decay": -1})
    config = tmp_path / "c.yaml"
    config.write_text(f"model: {workspace['model']}\ndata: {workspace['cache']}\noutput_dir: {tmp_path}\nmethod: nope\n")
    assert main(["--config", str(config)]) == 2
    assert "method must be one of" in capsys.readouterr().err
    with pytest.raises(ValueError, match="matches no parameter"):
        train(tiny_config(workspace, tmp_path / "x", train_extra_params=["no_such_param"]))


# -- the training loop ----------------------------------------------------------------------------------
def eval_loss(transformer, cache) -> float:
    """Flow-matching loss at fixed noise levels and noise over the cached clips (no randomness)."""
    data, total = CachedLatentDataset(cache), 0.0
    with torch.no_grad():
        for i in range(len(data)):
            item = data.batch([i])
            for j, s in enumerate((0.3, 0.6, 0.9)):
                total += flow_matching_loss(transformer, item["latents"], item["text_embeds"], sigmas=torch.tensor([s]), generator=torch.Generator().manual_seed(j)).item()
    return total


@pytest.fixture(scope="module")
def overfit(workspace):
    out = workspace["root"] / "overfit"
    config = tiny_config(workspace, out, max_train_steps=24, checkpointing_steps=100, train_extra_params=[r"^blocks\.0\.scale_shift_table$"])
    return out, train(config)


def test_overfit_changes_only_lora_and_extra_params(workspace, overfit):
    out, result = overfit
    base = load_transformer(workspace["model"])
    trained = result.transformer.eval()
    assert eval_loss(trained, workspace["cache"]) < 0.9 * eval_loss(base, workspace["cache"])
    base_params = dict(base.named_parameters())
    changed = set()
    for name, param in trained.named_parameters():
        if "lora_" in name:
            continue
        ref = base_params[name.replace(".base_layer", "")]
        if not torch.equal(param.detach(), ref.detach()):
            changed.add(name)
    assert changed == {"blocks.0.scale_shift_table"}
    assert sum("lora_B" in n and p.abs().max() > 0 for n, p in trained.named_parameters()) > 0
    assert set(load_file(result.extra_params_path)) == {"blocks.0.scale_shift_table"}
    losses = json.loads((out / "losses.json").read_text())
    assert len(losses) == 24


def test_exported_lora_loads_changes_output_and_unloads(workspace, overfit):
    _, result = overfit
    pipe = WanPipeline.from_pretrained(workspace["model"])
    inputs = forward_inputs()
    with torch.no_grad():
        before = pipe.transformer(**inputs)[0]
        pipe.load_lora_weights(result.lora_path)
        with_lora = pipe.transformer(**inputs)[0]
        pipe.unload_lora_weights()
        after = pipe.transformer(**inputs)[0]
        pipe.load_lora_weights(str(Path(result.lora_path).parent))  # a folder works too
        pipe.transformer.load_state_dict(load_file(result.extra_params_path), strict=False)
        full = pipe.transformer(**inputs)[0]
        reference = result.transformer.eval()(**inputs)[0]
    assert (with_lora - before).abs().max() > 1e-4
    torch.testing.assert_close(after, before)
    torch.testing.assert_close(full, reference, atol=1e-5, rtol=1e-5)  # same scaling (alpha/rank) as in training


def test_kill_and_resume_matches_uninterrupted(workspace, tmp_path):
    settings = dict(
        method="radial", method_args={"block_size": 16, "decay": 0.2}, dense_layers=1, gradient_accumulation_steps=2,
        lr_scheduler="cosine", lr_warmup_steps=1, ema_decay=0.5,
    )
    straight = train(tiny_config(workspace, tmp_path / "a", max_train_steps=4, **settings))
    first = train(tiny_config(workspace, tmp_path / "b", max_train_steps=4, max_steps_per_run=2, **settings))  # "killed" at 2
    assert first.global_step == 2 and first.lora_path is None
    assert (tmp_path / "b" / "checkpoint-2" / "trainable.safetensors").is_file()
    second = train(tiny_config(workspace, tmp_path / "b", max_train_steps=4, resume_from_checkpoint="latest", **settings))
    assert second.global_step == 4 and [s for s, _ in second.losses] == [3, 4]
    for (_, a), (_, b) in zip(straight.losses, first.losses + second.losses):
        assert abs(a - b) < 1e-5
    for name in ("checkpoint-4/trainable.safetensors", "pytorch_lora_weights.safetensors"):
        a, b = load_file(str(tmp_path / "a" / name)), load_file(str(tmp_path / "b" / name))
        assert a.keys() == b.keys() and all("lora_" in k for k in a)
        for k in a:
            torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("method,args", [("radial", {"block_size": 16, "decay": 0.2}), ("vmoba", {"block_size": 16, "temporal_chunk": 1, "spatial_chunk": (2, 2), "st_chunk": (1, 2, 2)})])
def test_gradients_flow_through_sparse_processors(workspace, method, args):
    transformer = load_transformer(workspace["model"])
    install_method(transformer, method, args, dense_layers=1)
    add_lora(transformer, TrainConfig(model="x", data="x", output_dir="x", lora_rank=4))
    inputs = forward_inputs()
    layout = VideoLayout(4, 4, 4)
    sparse_layers = [blk.attn1.processor for blk in transformer.blocks][1:]
    for proc in sparse_layers:  # the method really prunes at this size, and these layers are not dense warm-up
        assert not proc.is_dense_now()
        q = torch.randn(1, 2, 64, 32)
        assert proc.density(q, q, layout, "wan") < 1
    with torch.no_grad():  # B = 0 at init: make LoRA active so gradients reach A as well as B
        for name, p in transformer.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    loss = flow_matching_loss(transformer, inputs["hidden_states"], inputs["encoder_hidden_states"], sigmas=torch.tensor([0.5]), generator=torch.Generator().manual_seed(0))
    loss.backward()
    for i in range(1, len(transformer.blocks)):
        for proj in ("to_q", "to_k", "to_v"):
            module = getattr(transformer.blocks[i].attn1, proj)
            for p in (module.lora_A["default"].weight, module.lora_B["default"].weight):
                assert p.grad is not None and p.grad.abs().max() > 0, (i, proj)
    base = load_transformer(workspace["model"])  # the method changes the model's output (it is really active)
    with torch.no_grad():
        out_base = base(**inputs)[0]
        install_method(base, method, {**args, "backend": "gather"}, dense_layers=1)  # no FlexAttention compile
        out_sparse = base(**inputs)[0]
    assert (out_base - out_sparse).abs().max() > 1e-5


# -- two processes --------------------------------------------------------------------------------------
def _ddp_worker(rank: int, port: int, config_dict: dict, out: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from safetensors.torch import save_file

    from vidattn.training.train_lora import lora_state_dict

    result = train(TrainConfig.from_dict(config_dict))
    save_file(lora_state_dict(result.transformer), f"{out}/rank{rank}.safetensors")


def test_two_process_gloo_ranks_agree(workspace, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = tiny_config(workspace, tmp_path / "ddp", max_train_steps=1, checkpointing_steps=10).to_dict()
    torch.multiprocessing.start_processes(_ddp_worker, args=(port, config, str(tmp_path)), nprocs=2, start_method="spawn")
    ranks = [load_file(str(tmp_path / f"rank{r}.safetensors")) for r in range(2)]
    assert ranks[0].keys() == ranks[1].keys()
    for k in ranks[0]:
        torch.testing.assert_close(ranks[0][k], ranks[1][k], atol=0, rtol=0)
    assert any("lora_B" in k and v.abs().max() > 0 for k, v in ranks[0].items())  # a step was taken
    assert (tmp_path / "ddp" / "pytorch_lora_weights.safetensors").is_file()


def test_shipped_training_configs_parse(tmp_path):
    root = Path(__file__).resolve().parent.parent / "configs"
    radial = TrainConfig.from_yaml(root / "radial_length_x2.yaml")
    assert (radial.method, radial.lora_rank, radial.dense_layers, radial.target_modules) == ("radial", 128, 2, ["to_q", "to_k", "to_v", "to_out.0"])
    tiny = TrainConfig.from_yaml(root / "tiny_cpu_lora.yaml", [f"output_dir={tmp_path}", "max_train_steps=3"])
    assert tiny.model == "default" and tiny.mixed_precision == "no" and tiny.max_train_steps == 3
