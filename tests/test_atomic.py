"""Crash-safe writes: a saved model's files land complete in the target folder and no temporary folder is left."""

import torch
from diffusers import AutoencoderKLWan
from safetensors.torch import load_file

from vidattn.atomic import save_pretrained_atomic


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
