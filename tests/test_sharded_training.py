"""An FSDP launch that accelerate cannot honour (no accelerator device) is refused instead of training unsharded."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SRC = str(Path(__file__).resolve().parent.parent / "src")


@pytest.mark.skipif(torch.accelerator.device_count() > 0, reason="with an accelerator, accelerate can run FSDP")
def test_fsdp_launch_without_an_accelerator_is_refused(tmp_path):
    config = tmp_path / "train.yaml"
    config.write_text(f"model: default\ndata: {tmp_path / 'missing_cache'}\noutput_dir: {tmp_path / 'out'}\nmax_train_steps: 1\nmixed_precision: 'no'\n")
    # what `accelerate launch --config_file configs/accelerate/fsdp.yaml --fsdp_sync_module_states false ...` sets
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_FSDP": "true",
           "FSDP_SYNC_MODULE_STATES": "false", "FSDP_CPU_RAM_EFFICIENT_LOADING": "false"}
    run = subprocess.run([sys.executable, "-m", "vidattn.training.train_lora", "--config", str(config)],
                         env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode != 0
    assert "asks for FSDP but accelerate chose" in run.stdout + run.stderr
    assert not (tmp_path / "out").exists()
