"""The trained UNet video model ships in the package, loads offline as an AnimateDiffPipeline, and draws the prompt's
colour; its training config round-trips; the warping-error metric matches a naive reference."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from vidattn.pipelines.unet_video_model import (
    UNET_FRAMES, UNET_GUIDANCE, UNET_HEIGHT, UNET_STEPS, UNET_WIDTH, unet_video_model_path,
)

pytestmark = pytest.mark.usefixtures("one_thread")
COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


def test_folder_is_a_small_safetensors_animatediff_pipeline():
    root = Path(unet_video_model_path())
    index = json.loads((root / "model_index.json").read_text())
    assert index["_class_name"] == "AnimateDiffPipeline" and index["unet"][1] == "UNetMotionModel"
    assert all(c in index and (root / c).is_dir() for c in COMPONENTS)
    files = [p for p in root.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 8 * 2**20
    weights = [p for p in files if p.suffix in (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".pkl")]
    assert weights and all(p.suffix == ".safetensors" for p in weights)


def test_loads_offline_and_draws_the_prompts_colour_moving_its_way(monkeypatch):
    """Real behaviour: a fixed prompt and seed give frames whose shape has the prompt's colour and moves its way
    (both read off the pixels)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from diffusers import AnimateDiffPipeline, UNetMotionModel

    from vidattn.metrics.prompt_accuracy import prompt_accuracy
    from vidattn.pipelines.unet_video_model import load_unet_video_pipeline

    pipe = load_unet_video_pipeline()
    assert type(pipe) is AnimateDiffPipeline and isinstance(pipe.unet, UNetMotionModel)
    assert 3 not in pipe.tokenizer("a red circle moving right on a black background").input_ids  # no <unk>
    prompts = ["a red circle moving right on a black background", "a blue square moving down on a black background"]
    frames = pipe(prompts, num_frames=UNET_FRAMES, height=UNET_HEIGHT, width=UNET_WIDTH, num_inference_steps=UNET_STEPS,
                  guidance_scale=UNET_GUIDANCE, output_type="np", generator=torch.Generator().manual_seed(0)).frames
    assert np.asarray(frames).shape == (2, UNET_FRAMES, UNET_HEIGHT, UNET_WIDTH, 3)
    acc = prompt_accuracy(list(frames), prompts)
    for recovered, colour, direction in zip(acc.recovered, ("red", "blue"), ("right", "down")):
        assert recovered.frames_showing(colour) >= 0.75 * UNET_FRAMES, recovered.verdict(colour)
        assert recovered.direction == direction, recovered.verdict(colour)


def test_shipped_config_is_the_default_and_unknown_keys_are_refused(tmp_path):
    from vidattn.pipelines.unet_video_model_pretrain import load_config

    root = Path(__file__).resolve().parent.parent
    assert load_config(root / "configs" / "unet_video_model.yaml") == load_config(None)
    bad = tmp_path / "bad.yaml"
    bad.write_text("unet: {stepz: 3}\n")
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['stepz'\] in .*\.unet"):
        load_config(bad)


def test_vae_stage_resumes_from_its_checkpoint(tmp_path):
    from vidattn.pipelines.unet_video_model_pretrain import run

    def config(steps):
        path = tmp_path / f"c{steps}.yaml"
        path.write_text(f"vae: {{steps: {steps}, videos_per_batch: 1}}\ncheckpoint_every: 1\n")
        return path

    run(config(1), tmp_path / "work", tmp_path / "out", ("vae",))
    assert torch.load(tmp_path / "work" / "vae_state.pt", weights_only=False)["step"] == 1
    run(config(2), tmp_path / "work", tmp_path / "out", ("vae",))
    log = (tmp_path / "work" / "log.txt").read_text()
    assert torch.load(tmp_path / "work" / "vae_state.pt", weights_only=False)["step"] == 2
    assert log.count("stage vae") == 2 and not list((tmp_path / "work").glob(".*.tmp"))


def test_a_bad_training_checkpoint_is_named_before_training(tmp_path):
    """A truncated checkpoint or one with non-finite weights stops the stage with the file's name (the resume path
    reads it through the same loader), instead of training on from it."""
    from vidattn.pipelines.default_model_pretrain import _load_state, _resume, _save_state

    model = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW(model.parameters())
    good = tmp_path / "good.pt"
    _save_state(good, {"model": model.state_dict(), "opt": opt.state_dict(), "step": 3})
    assert _resume(good, torch.nn.Linear(2, 2), torch.optim.AdamW(model.parameters())) == 3
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:40])
    with pytest.raises(RuntimeError, match="truncated.pt does not load"):
        _resume(truncated, model, opt)
    broken = tmp_path / "nan.pt"
    _save_state(broken, {"model": {"weight": torch.tensor([1.0, float("nan")])}, "opt": opt.state_dict(), "step": 1})
    with pytest.raises(RuntimeError, match=r"nan.pt has non-finite model weights \(weight\)"):
        _load_state(broken)


# -- the temporal-consistency metric ------------------------------------------------------------------------
def _naive_shift(frame, dx, dy, fill):
    out = np.empty_like(frame)
    h, w = frame.shape[:2]
    for y in range(h):
        for x in range(w):
            sy, sx = y - dy, x - dx
            out[y, x] = frame[sy, sx] if 0 <= sy < h and 0 <= sx < w else fill
    return out


@pytest.mark.parametrize("dx,dy", [(0, 0), (3, -2), (-5, 4), (40, 0)])
def test_shift_frame_matches_a_loop(dx, dy):
    from vidattn.metrics.temporal import shift_frame

    frame = np.random.default_rng(0).random((9, 11, 3))
    fill = np.array([0.1, 0.2, 0.3])
    assert np.array_equal(shift_frame(frame, dx, dy, fill), _naive_shift(frame, dx, dy, fill))


def test_warping_error_is_zero_for_rigid_motion_and_positive_for_flicker():
    from vidattn.data.shapes import render_video
    from vidattn.metrics.motion import frame_difference_energy
    from vidattn.metrics.temporal import centroid_travel, warping_error

    # 4 px a frame (32 px * 0.5 travel / 4 steps): the shape is the same pixels, moved
    rigid = render_video("red", "circle", "right", frames=5, height=32, width=32, start=(0.25, 0.5), travel=0.5)
    assert frame_difference_energy(rigid) > 0.01
    assert warping_error(rigid) == 0.0
    assert centroid_travel(rigid) == pytest.approx(16.0)
    flicker = rigid.copy()
    flicker[1::2] *= 0.5  # the shape dims every other frame: same motion, not consistent
    expected = np.mean([np.mean((flicker[t + 1] - _naive_shift(flicker[t], 4, 0, np.zeros(3))) ** 2) for t in range(4)])
    assert warping_error(flicker) == pytest.approx(expected) and expected > 0.002
