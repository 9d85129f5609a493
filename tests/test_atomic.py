"""Crash-safe writes: a saved model's files land complete in the target folder and no temporary folder is left."""

from pathlib import Path

import torch
from diffusers import AutoencoderKLWan
from safetensors.torch import load_file

from vidattn.atomic import save_pretrained_atomic, save_pretrained_folder_atomic


def test_save_pretrained_atomic_writes_the_same_weights_and_leaves_no_temporary(tmp_path):
    torch.manual_seed(0)
    vae = AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 2], num_res_blocks=1)
    target = tmp_path / "model" / "vae"
    (target).mkdir(parents=True)
    (target / "config.json").write_text("{}")  # an older file is replaced, not merged
    save_pretrained_atomic(vae, target)
    assert sorted(p.name for p in target.iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors"]
    assert sorted(p.name for p in target.parent.iterdir()) == ["vae"]
    saved = load_file(str(target / "diffusion_pytorch_model.safetensors"))
    assert saved.keys() == vae.state_dict().keys()
    assert all(torch.equal(saved[k], v) for k, v in vae.state_dict().items())
    assert AutoencoderKLWan.load_config(str(target))["z_dim"] == 4


def test_save_pretrained_folder_atomic_swaps_the_whole_folder(tmp_path):
    class Saver:
        def save_pretrained(self, folder, safe_serialization):
            assert safe_serialization
            Path(folder).mkdir(parents=True)
            (Path(folder) / "model_index.json").write_text('{"new": true}')

    target = tmp_path / "pipe"
    target.mkdir()
    (target / "stale.json").write_text("{}")
    save_pretrained_folder_atomic(Saver(), target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe"]  # no .pipe.tmp / .pipe.old left
    assert sorted(p.name for p in target.iterdir()) == ["model_index.json"]  # the old folder's files are gone
    assert (target / "model_index.json").read_text() == '{"new": true}'
