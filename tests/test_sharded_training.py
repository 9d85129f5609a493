"""Sharded LoRA training (FSDP2; DeepSpeed ZeRO-2 where DeepSpeed is installed) on 2 CPU processes over gloo,
against the DDP run on the same data and seed.

Each run is what ``accelerate launch --config_file configs/accelerate/fsdp.yaml`` (or ``ddp.yaml``,
``deepspeed_zero2.yaml``) sets up: the launcher's environment variables, then ``train(config)`` in each of 2
processes forked from a forkserver (imports once), bounded by a timeout and killed on exit. The reference is the
DDP run (accelerate's own DDP over gloo). With DeepSpeed installed, its first launch compiles DeepSpeed's CPU
comm op (minutes; cached in ~/.cache/torch_extensions): run one launch before these tests, or they time out.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from cp_harness import free_port
from gray_clips import gray_video

from vidattn.pipelines.default_model import load_default_pipeline
from vidattn.training.cache import prepare_data
from vidattn.training.config import TrainConfig
from vidattn.training.sharding import check_deepspeed, sharding_plan
from vidattn.training.train_lora import LORA_FILE

SRC = str(Path(__file__).resolve().parent.parent / "src")
STEPS = 10
# what `accelerate launch --config_file configs/accelerate/fsdp.yaml --num_processes 2 --mixed_precision no` exports
FSDP_ENV = {
    "ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "FSDP_AUTO_WRAP_POLICY": "TRANSFORMER_BASED_WRAP",
    "FSDP_TRANSFORMER_CLS_TO_WRAP": "WanTransformerBlock", "FSDP_RESHARD_AFTER_FORWARD": "true",
    "FSDP_STATE_DICT_TYPE": "FULL_STATE_DICT", "FSDP_OFFLOAD_PARAMS": "false", "FSDP_SYNC_MODULE_STATES": "false",
    "FSDP_CPU_RAM_EFFICIENT_LOADING": "false", "FSDP_ACTIVATION_CHECKPOINTING": "false",
}
# what `accelerate launch --config_file configs/accelerate/deepspeed_zero2.yaml --num_processes 2 --mixed_precision no` exports
DEEPSPEED_ENV = {
    "ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2", "ACCELERATE_GRADIENT_ACCUMULATION_STEPS": "1",
    "ACCELERATE_GRADIENT_CLIPPING": "1.0", "ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE": "none",
    "ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE": "none", "ACCELERATE_DEEPSPEED_ZERO3_INIT": "false", "ACCELERATE_MIXED_PRECISION": "no",
}
HAS_DEEPSPEED = importlib.util.find_spec("deepspeed") is not None
# FSDP2 reduce-scatters gradients where DDP all-reduces them: the same sums in another order, so fp32 rounding
# differs (measured: losses within 1e-6 of 4..9, LoRA weights within 3e-8). AdamW's normalised step can grow
# such a difference for a near-zero gradient, hence a margin of ~10x over what was seen.
LOSS_RTOL, WEIGHT_ATOL = 1e-5, 1e-6
# ZeRO-2 averages gradients in its own buckets and clips them (gradient_clipping 1.0; the DDP run does not clip);
# measured: losses within 1e-6, LoRA weights within 2e-6 of DDP's (largest |lora_B| 9e-3).
DEEPSPEED_WEIGHT_ATOL = 2e-5


def _worker(rank: int, port: int, env: dict, config: dict, out: str) -> None:
    """One rank of a 2-process run: the launcher's variables, one thread, train, then what the test checks."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), **env)
    torch.set_num_threads(1)
    try:
        from vidattn.training.sharding import is_sharded, local_parameter_bytes
        from vidattn.training.train_lora import train

        result = train(TrainConfig.from_dict(config))
        params = list(result.transformer.parameters())
        info = {
            "losses": result.losses, "global_step": result.global_step,
            "local_bytes": local_parameter_bytes(result.transformer),
            "full_bytes": sum(p.numel() * p.element_size() for p in params),  # a DTensor's numel is the whole tensor's
            "sharded": [is_sharded(p) for p in params],
        }
        torch.save(info, f"{out}/rank{rank}.pt")
    except BaseException:
        Path(f"{out}/rank{rank}.error").write_text(traceback.format_exc())
        raise


def run_two(config: TrainConfig, env: dict, out: Path, timeout: float = 58.0) -> list[int]:
    """``train(config)`` on 2 gloo processes with ``env``; their exit codes (negative: killed by that signal)."""
    out.mkdir(parents=True, exist_ok=True)
    context = mp.get_context("forkserver")
    context.set_forkserver_preload(["vidattn.training.train_lora"])
    port = free_port()
    procs = [context.Process(target=_worker, args=(r, port, env, config.to_dict(), str(out))) for r in range(2)]
    for proc in procs:
        proc.start()
    try:
        deadline = time.monotonic() + timeout
        for proc in procs:
            proc.join(max(deadline - time.monotonic(), 0.1))
        if any(proc.is_alive() for proc in procs):
            raise TimeoutError(f"2-process training took more than {timeout} s")
        return [proc.exitcode for proc in procs]
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
                proc.join(5)


def rank_info(out: Path, rank: int) -> dict:
    error = out / f"rank{rank}.error"
    assert not error.exists(), error.read_text()
    return torch.load(out / f"rank{rank}.pt", weights_only=False)


def run_config(cache: Path, out: Path, **extra) -> TrainConfig:
    values = dict(model="default", data=str(cache), output_dir=str(out), lora_rank=4, learning_rate=1e-3, max_train_steps=STEPS,
                  checkpointing_steps=5, resume_from_checkpoint="latest", ema_decay=0.5, shift=3.0, progress_bar=False, mixed_precision="no")
    return TrainConfig.from_dict({**values, **extra})


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Four 5-frame 32x32 clips; 10-step DDP, FSDP2 (and DeepSpeed ZeRO-2) runs of one config on them (2 processes each)."""
    root = tmp_path_factory.mktemp("sharded")
    clips = root / "clips"
    clips.mkdir()
    for i in range(4):
        gray_video(clips / f"v{i}.mp4", 6, 32, 32, first=10 + 30 * i, step=20)
        (clips / f"v{i}.txt").write_text(f"a red circle moving {'left right up down'.split()[i]}")
    cache = root / "cache"
    prepare_data(clips, None, "default", cache, num_frames=5, height=32, width=32, max_sequence_length=8)
    found = {"cache": cache}
    for name, env in (("ddp", {}), ("fsdp", FSDP_ENV)) + ((("deepspeed", DEEPSPEED_ENV),) if HAS_DEEPSPEED else ()):
        out = root / name
        assert run_two(run_config(cache, out), env, root / f"{name}_info") == [0, 0]
        found[name] = (out, [rank_info(root / f"{name}_info", r) for r in range(2)])
    return found


def test_fsdp_shards_and_matches_ddp(runs):
    (ddp_out, ddp), (fsdp_out, fsdp) = runs["ddp"], runs["fsdp"]
    for info in fsdp:  # really sharded: every parameter is a DTensor and each rank holds about half of the bytes
        assert all(info["sharded"]) and info["global_step"] == STEPS
        assert 0.45 * info["full_bytes"] < info["local_bytes"] < 0.55 * info["full_bytes"], info
    assert fsdp[0]["local_bytes"] + fsdp[1]["local_bytes"] >= fsdp[0]["full_bytes"]
    for info in ddp:
        assert not any(info["sharded"]) and info["local_bytes"] == info["full_bytes"] == fsdp[0]["full_bytes"]
    ddp_losses, fsdp_losses = json.loads((ddp_out / "losses.json").read_text()), json.loads((fsdp_out / "losses.json").read_text())
    assert [s for s, _ in ddp_losses] == [s for s, _ in fsdp_losses] == list(range(1, STEPS + 1))
    torch.testing.assert_close(torch.tensor([x for _, x in fsdp_losses]), torch.tensor([x for _, x in ddp_losses]), rtol=LOSS_RTOL, atol=0)
    assert [x for _, x in fsdp[0]["losses"]] == [x for _, x in fsdp[1]["losses"]]  # both ranks saw the same reduced loss
    a, b = load_file(str(fsdp_out / LORA_FILE)), load_file(str(ddp_out / LORA_FILE))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=WEIGHT_ATOL, rtol=0)
    assert max(v.abs().max().item() for k, v in a.items() if "lora_B" in k) > 100 * WEIGHT_ATOL  # it trained
    assert (fsdp_out / "checkpoint-10" / "optimizer_full.pt").is_file()  # the sharded checkpoint layout


@pytest.mark.parametrize("name", ["fsdp", pytest.param("deepspeed", marks=pytest.mark.skipif(not HAS_DEEPSPEED, reason="DeepSpeed is not installed"))])
def test_kill_and_resume_equals_uninterrupted(runs, tmp_path, name):
    reference, _ = runs[name]  # the uninterrupted run with the same launch
    env = FSDP_ENV if name == "fsdp" else DEEPSPEED_ENV
    out = tmp_path / "run"
    config = run_config(runs["cache"], out, checkpointing_steps=2)
    # both ranks SIGKILL themselves after step 5 (test hook), i.e. with checkpoint-4 the newest on disk
    codes = run_two(config, {**env, "VIDATTN_TEST_KILL_AT": "step@5"}, tmp_path / "killed")
    assert codes == [-9, -9], codes
    assert [p.name for p in sorted(out.glob("checkpoint-*"))] == ["checkpoint-2", "checkpoint-4"]
    assert not (out / LORA_FILE).exists()
    assert run_two(config, env, tmp_path / "resumed") == [0, 0]
    resumed = rank_info(tmp_path / "resumed", 0)
    assert [s for s, _ in resumed["losses"]] == list(range(5, STEPS + 1))  # resumed at 4: steps 5..10 in this run
    expected, final = json.loads((reference / "losses.json").read_text()), json.loads((out / "losses.json").read_text())
    assert [s for s, _ in final] == list(range(1, STEPS + 1))
    torch.testing.assert_close(torch.tensor([x for _, x in final]), torch.tensor([x for _, x in expected]), rtol=1e-6, atol=0)
    a, b = load_file(str(out / LORA_FILE)), load_file(str(reference / LORA_FILE))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-7, rtol=0)


def test_sharded_lora_loads_into_a_plain_pipeline_like_the_ddp_one(runs):
    pipe = load_default_pipeline()
    g = torch.Generator().manual_seed(0)
    inputs = dict(hidden_states=torch.randn(1, pipe.transformer.config.in_channels, 2, 8, 8, generator=g), timestep=torch.tensor([500.0]),
                  encoder_hidden_states=torch.randn(1, 8, pipe.transformer.config.text_dim, generator=g), return_dict=False)
    outputs = {}
    with torch.no_grad():
        before = pipe.transformer(**inputs)[0]
        for name in ("fsdp", "ddp") + (("deepspeed",) if HAS_DEEPSPEED else ()):
            pipe.load_lora_weights(str(runs[name][0] / LORA_FILE))
            outputs[name] = pipe.transformer(**inputs)[0]
            pipe.unload_lora_weights()
    change = (outputs["fsdp"] - before).abs().max().item()
    assert change > 1e-5, change
    torch.testing.assert_close(outputs["fsdp"], outputs["ddp"], atol=1e-5 * max(1.0, change * 10), rtol=0)
    if HAS_DEEPSPEED:
        torch.testing.assert_close(outputs["deepspeed"], outputs["ddp"], atol=1e-4 * max(1.0, change * 10), rtol=0)


@pytest.mark.skipif(not HAS_DEEPSPEED, reason="DeepSpeed is not installed (pip install deepspeed; see docs/training.md)")
def test_deepspeed_zero2_partitions_optimizer_state_and_matches_ddp(runs):
    (ddp_out, _), (ds_out, ds) = runs["ddp"], runs["deepspeed"]
    ddp_losses, ds_losses = json.loads((ddp_out / "losses.json").read_text()), json.loads((ds_out / "losses.json").read_text())
    assert [s for s, _ in ds_losses] == list(range(1, STEPS + 1))
    torch.testing.assert_close(torch.tensor([x for _, x in ds_losses]), torch.tensor([x for _, x in ddp_losses]), rtol=LOSS_RTOL, atol=0)
    a, b = load_file(str(ds_out / LORA_FILE)), load_file(str(ddp_out / LORA_FILE))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=DEEPSPEED_WEIGHT_ATOL, rtol=0)
    # ZeRO-2: each rank's checkpoint holds the fp32 master copy and AdamW state of half of the trainable elements
    folder = ds_out / "checkpoint-10" / "pytorch_model"
    trainable = sum(t.numel() for t in load_file(str(ds_out / "checkpoint-10" / "trainable.safetensors")).values())
    parts = [torch.load(folder / f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt", weights_only=False)["optimizer_state_dict"] for r in range(2)]
    sizes = [sum(t.numel() for t in part["single_partition_of_fp32_groups"]) for part in parts]
    assert sizes == [trainable // 2, trainable // 2], (sizes, trainable)
    assert all(info["local_bytes"] == info["full_bytes"] for info in ds)  # ZeRO-2 keeps the parameters whole
    # the frozen base is not copied into checkpoints (only the trainable weights are in the module state)
    module = torch.load(folder / "mp_rank_00_model_states.pt", weights_only=False)["module"]
    assert module and all("lora_" in k for k in module), sorted(module)[:3]


def test_fsdp_settings_this_path_cannot_honour_are_refused(monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    for key, value in FSDP_ENV.items():
        monkeypatch.setenv(key, value)
    assert sharding_plan("MULTI_CPU", 2).transformer_cls_names_to_wrap == ["WanTransformerBlock"]
    for setting, value, message in [("FSDP_VERSION", "1", "set fsdp_version: 2"),
                                    ("FSDP_OFFLOAD_PARAMS", "true", "fsdp_offload_params"),
                                    ("FSDP_ACTIVATION_CHECKPOINTING", "true", "gradient_checkpointing")]:
        with monkeypatch.context() as patch:
            patch.setenv(setting, value)
            with pytest.raises(ValueError, match=message):
                sharding_plan("MULTI_CPU", 2)
    with pytest.raises(ValueError, match="accelerate chose NO with 1 process"):
        sharding_plan("NO", 1)
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "false")
    assert sharding_plan("MULTI_CPU", 2) is None
    assert not check_deepspeed("MULTI_CPU", "error")
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")  # accelerate drops DeepSpeed with cpu=True: MULTI_CPU
    with pytest.raises(ValueError, match="asks for DeepSpeed but accelerate chose MULTI_CPU"):
        check_deepspeed("MULTI_CPU", "error")
    with pytest.raises(ValueError, match="nonfinite: skip cannot skip a DeepSpeed step"):
        check_deepspeed("DEEPSPEED", "skip")
    assert check_deepspeed("DEEPSPEED", "error")


def test_single_process_fsdp_launch_is_refused(tmp_path):
    config = tmp_path / "train.yaml"
    config.write_text(f"model: default\ndata: {tmp_path / 'missing_cache'}\noutput_dir: {tmp_path / 'out'}\nmax_train_steps: 1\nmixed_precision: 'no'\n")
    env = {**os.environ, **FSDP_ENV, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "vidattn.training.train_lora", "--config", str(config)],
                         env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert "error: the accelerate config asks for FSDP but accelerate chose NO" in run.stderr, run.stderr
    assert not (tmp_path / "out").exists()


def test_fsdp_does_not_resume_a_ddp_checkpoint(runs, tmp_path):
    ddp_out, _ = runs["ddp"]
    out = tmp_path / "run"
    out.mkdir()
    shutil.copytree(ddp_out / "checkpoint-10", out / "checkpoint-10")  # resume_from_checkpoint: latest finds it
    codes = run_two(run_config(runs["cache"], out, max_train_steps=12), FSDP_ENV, tmp_path / "info")
    assert codes == [1, 1], codes
    for rank in range(2):
        error = (tmp_path / "info" / f"rank{rank}.error").read_text()
        assert "was written by a run without FSDP (no optimizer_full.pt)" in error, error
    assert not (out / LORA_FILE).exists()
