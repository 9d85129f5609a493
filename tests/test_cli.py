"""The `make demo` path and the CLI commands end to end on a very small grid."""

import imageio
import numpy as np
import pytest
import torch

from vidattn.cli.main import main
from vidattn.cli.params import parse_params
from vidattn.metrics.fidelity import psnr


def test_demo_writes_both_videos_and_reports(tmp_path, capsys):
    main(["demo", "--frames", "9", "--steps", "2", "--bench-grid", "3x4x8", "--param", "block_size=16", "--out", str(tmp_path)])
    report = capsys.readouterr().out
    dense = imageio.mimread(tmp_path / "dense.mp4")
    radial = imageio.mimread(tmp_path / "radial.mp4")
    both = imageio.mimread(tmp_path / "side_by_side.mp4")
    assert len(dense) == len(radial) == len(both) == 9
    assert both[0].shape[1] == 2 * dense[0].shape[1]
    assert "radial vs dense: PSNR" in report and "speed-up" in report and "frames show" in report
    assert "attention alone at 3x4x8" in report


def test_mask_picture(tmp_path, capsys):
    out = tmp_path / "mask.png"
    main(["mask", "--grid", "6x4x8", "--param", "block_size=16", "--param", "decay=0.5", "--out", str(out)])
    image = imageio.imread(out)
    assert image.ndim == 2 and (image == 255).any() and (image == 30).any()
    assert "density" in capsys.readouterr().out


def test_vmoba_mask_shows_three_partitions(tmp_path):
    out = tmp_path / "vmoba.png"
    main(["mask", "--method", "vmoba", "--grid", "4x8x12", "--param", "spatial_chunk=[4, 6]", "--param", "st_chunk=[2, 4, 6]", "--out", str(out)])
    image = imageio.imread(out)
    rows = [row for row in np.split(image, np.where(image.max(axis=(1, 2)) == 0)[0]) if row.max() > 0]
    assert len(rows) == 3  # one band of frames per partition


def test_bench_prints_density_for_each_backend(capsys):
    main(["bench", "--method", "vmoba", "--grid", "2x4x8", "--heads", "1", "--head-dim", "8", "--backends", "gather,dense",
          "--repeats", "1", "--param", "spatial_chunk=[2, 4]", "--param", "st_chunk=[1, 2, 4]", "--param", "block_size=16"])
    lines = capsys.readouterr().out.splitlines()
    rows = [line.split() for line in lines if line.startswith("vmoba")]
    assert [row[1] for row in rows] == ["gather", "dense"]
    assert all(0 < float(row[-1]) <= 1 for row in rows)


def test_params_parse_yaml_values_and_reject_bad_pairs():
    assert parse_params(["decay=0.2", "spatial_chunk=[4, 13]", "sink=false", "kind=3d"]) == {
        "decay": 0.2, "spatial_chunk": (4, 13), "sink": False, "kind": "3d"}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_params(["decay"])


def test_unknown_param_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="unknown radial parameter"):
        main(["generate", "--attention", "radial", "--frames", "5", "--param", "decy=0.2", "--out", str(tmp_path / "x.mp4")])


def test_eval_command_writes_a_report_for_the_chosen_methods(tmp_path, capsys):
    main(["eval", "--methods", "radial", "--prompts", "1", "--steps", "1", "--out", str(tmp_path)])
    table = capsys.readouterr().out
    assert "radial" in table and "dense" in table
    assert (tmp_path / "report.md").is_file()


def test_psnr():
    a = np.zeros((2, 4, 4, 3))
    assert psnr(a, a) == float("inf")
    assert abs(psnr(a, a + 0.1) - 20.0) < 1e-9


PIPELINE_RUNS = {
    "broadway": (["--frames", "16", "--height", "32", "--width", "32", "--steps", "2"], 16),
    "streaming": (["--chunks", "2", "--height", "32", "--width", "32", "--param", "sink_frames=1", "--param", "window_frames=4"], 21),
    "freeswim": (["--frames", "5", "--base-size", "32x32", "--height", "64", "--width", "64", "--steps", "2", "--param", "backend=gather"], 5),
}


@pytest.mark.parametrize("pipeline", sorted(PIPELINE_RUNS))
def test_generate_pipelines_write_their_frames(tmp_path, capsys, pipeline):
    args, frames = PIPELINE_RUNS[pipeline]
    out = tmp_path / f"{pipeline}.mp4"
    main(["generate", "--pipeline", pipeline, *args, "--out", str(out)])
    assert len(imageio.mimread(out)) == frames
    assert f"wrote {out}" in capsys.readouterr().out


def test_default_pipeline_is_deterministic():
    from vidattn.pipelines.default_model import build_default_pipeline

    pipe = build_default_pipeline()
    first, second = (pipe.encode_prompt("a red circle", do_classifier_free_guidance=False, max_sequence_length=8)[0] for _ in range(2))
    assert torch.equal(first, second)


def test_sizes_need_exactly_their_parts(tmp_path):
    from vidattn.layout import parse_dims

    assert parse_dims("480x832", "HEIGHTxWIDTH", "480x832", "--bucket") == (480, 832)
    for bad in ("480", "480x832x3", "axb"):
        with pytest.raises(ValueError, match="--bucket must look like HEIGHTxWIDTH"):
            parse_dims(bad, "HEIGHTxWIDTH", "480x832", "--bucket")
    with pytest.raises(SystemExit, match="--base-size must look like HEIGHTxWIDTH"):
        main(["generate", "--pipeline", "freeswim", "--base-size", "64", "--out", str(tmp_path / "x.mp4")])
