"""The `make demo` path and the CLI commands end to end on a very small grid."""

import re

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
    assert re.search(r"frames show: .* in \d+/9 frames", report)  # the verdict is per frame
    assert "attention alone at 3x4x8" in report


def test_mask_picture(tmp_path, capsys):
    out = tmp_path / "mask.png"
    main(["mask", "--grid", "6x4x8", "--param", "block_size=16", "--param", "decay=0.5", "--out", str(out)])
    image = imageio.imread(out)
    assert image.ndim == 3 and image.shape[0] > 300 and image.shape[1] > 300  # a figure, not a bare tile bitmap
    assert "density" in capsys.readouterr().out


def test_vmoba_mask_shows_three_partitions(tmp_path):
    out = tmp_path / "vmoba.png"
    main(["mask", "--method", "vmoba", "--grid", "4x8x12", "--param", "spatial_chunk=[4, 6]", "--param", "st_chunk=[2, 4, 6]", "--out", str(out)])
    assert imageio.imread(out).shape[0] > 200


def test_bench_prints_density_for_each_backend(capsys):
    main(["bench", "--method", "vmoba", "--grid", "2x4x8", "--heads", "1", "--head-dim", "8", "--backends", "gather,dense",
          "--repeats", "1", "--param", "spatial_chunk=[2, 4]", "--param", "st_chunk=[1, 2, 4]", "--param", "block_size=16"])
    lines = capsys.readouterr().out.splitlines()
    rows = [line.split() for line in lines if line.startswith("vmoba")]
    assert [row[1] for row in rows] == ["gather", "dense"]
    assert all(0 < float(row[-1]) <= 1 for row in rows)


def test_bench_backward_times_the_training_backends(capsys):
    main(["bench", "--method", "radial", "--grid", "2x4x8", "--heads", "1", "--head-dim", "8", "--mode", "backward",
          "--repeats", "1", "--param", "block_size=16"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith(", backward")
    assert [line.split()[1] for line in lines if line.startswith("radial")] == ["gather", "segments", "groups"]  # no flex on the CPU


def test_bench_leaves_out_backends_the_plan_cannot_run_unless_named(capsys):
    argv = ["bench", "--method", "window", "--grid", "3x6x8", "--heads", "1", "--head-dim", "8", "--mode", "backward",
            "--repeats", "1", "--param", "window=[1, 2, 3]", "--param", "block_size=16", "--param", "tile=null"]
    main(argv)
    captured = capsys.readouterr()
    assert [line.split()[1] for line in captured.out.splitlines() if line.startswith("window")] == ["gather", "rows"]
    for backend in ("segments", "groups"):  # a token-level window has a token mask
        assert f"cannot run backend {backend} here, left out: backend='{backend}' needs a plan without token_mask" in captured.err
    assert "needs a plan without token_mask" in _usage_error([*argv, "--backends", "rows,segments"], capsys)


def test_params_parse_yaml_values_and_reject_bad_pairs():
    assert parse_params(["decay=0.2", "spatial_chunk=[4, 13]", "sink=false", "kind=3d"]) == {
        "decay": 0.2, "spatial_chunk": (4, 13), "sink": False, "kind": "3d"}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_params(["decay"])




def test_eval_command_writes_a_report_for_the_chosen_methods(tmp_path, capsys):
    main(["eval", "--methods", "radial", "--prompts", "1", "--steps", "1", "--out", str(tmp_path)])
    captured = capsys.readouterr()
    table = captured.out
    assert "radial" in table and "dense" in table and "verdict" in table
    assert "eval: 2 methods x 1 seed(s) x 1 prompts, 1 steps each" in captured.err
    assert "eval radial" in captured.err and "6/6" in captured.err  # progress: 2 methods x (1 warm-up + 1 step + 1 decode)
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
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "--pipeline", "freeswim", "--base-size", "64", "--out", str(tmp_path / "x.mp4")])
    assert exit_info.value.code == 2


# ---------------------------------------------------------------- checks before any work (issue 18 part 3)


@pytest.fixture
def no_work(monkeypatch):
    """Spies on the first expensive step of each command: loading a pipeline, q/k/v, a block plan, an evaluation."""
    calls = []

    def spy(name):
        def record(*args, **kwargs):
            calls.append(name)
            raise AssertionError(f"{name} ran although the arguments were wrong")
        return record

    monkeypatch.setattr("vidattn.cli.generate.load_pipeline", spy("load_pipeline"))
    monkeypatch.setattr("vidattn.pipelines.broadway.load_broadway_pipeline", spy("load_broadway_pipeline"))
    monkeypatch.setattr("vidattn.benchmarking.synthetic_qkv", spy("synthetic_qkv"))
    monkeypatch.setattr("vidattn.processors.radial.radial_plan", spy("radial_plan"))
    monkeypatch.setattr("vidattn.evaluation.evaluate", spy("evaluate"))
    return calls


def _usage_error(argv, capsys) -> str:
    """Run ``main(argv)``; assert exit code 2 and one line on stderr; return that line."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip() and not line.startswith("vidattn: warning")]
    assert len(err) == 1, err
    return err[0]


def _model_folders(tmp_path):
    """An empty folder, a copy of the default model with a truncated safetensors, and an AnimateDiff model_index."""
    import shutil

    from vidattn.pipelines.default_model import default_model_path

    (tmp_path / "empty").mkdir()
    corrupt = tmp_path / "corrupt"
    shutil.copytree(default_model_path(), corrupt)
    weights = corrupt / "transformer" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:4000])
    animatediff = tmp_path / "animatediff"
    animatediff.mkdir()
    (animatediff / "model_index.json").write_text('{"_class_name": "AnimateDiffPipeline", "unet": ["diffusers", "UNetMotionModel"]}')
    (tmp_path / "afile").write_text("x")


GENERATE_ERRORS = [
    (["--out", "{tmp}"], "--out {tmp}: is a folder"),
    (["--out", "/proc/x.mp4"], "--out /proc/x.mp4: cannot write in /proc"),
    (["--out", "{tmp}/afile/x.mp4"], "afile is a file, not a folder"),
    (["--steps", "0"], "--steps must be an integer >= 1"),
    (["--frames", "0"], "--frames must be 4k+1"),
    (["--frames", "-5"], "--frames must be 4k+1"),
    (["--frames", "16"], "(nearest: 17)"),
    (["--guidance", "-3"], "--guidance must be a finite number >= 1"),
    (["--guidance", "nan"], "--guidance must be a finite number >= 1"),
    (["--height", "0"], "--height must be a positive multiple of 16"),
    (["--width", "60"], "--width must be a positive multiple of 16"),
    (["--seed", "-1"], "--seed must be an integer >= 0"),
    (["--prompt", " "], "--prompt must be a non-empty text"),
    (["--param", "decay=true"], "--param decay=true: radial's decay must be a number"),
    (["--param", "decay=.inf"], "--param decay: '.inf' is not a finite number"),
    (["--param", "decay=[1,"], "--param decay: '[1,' is not a valid YAML value"),
    (["--param", "decay"], "--param must look like KEY=VALUE"),
    (["--param", "decy=0.2"], "unknown radial parameter(s) ['decy']"),
    (["--param", "decay=-1"], "--param: decay"),
    (["--method", "vmoba", "--param", "spatial_chunk=[1, a]"], "vmoba's spatial_chunk must be tuple[int, int]"),
    (["--model", "{tmp}/empty"], "--model {tmp}/empty: not a diffusers pipeline folder (no model_index.json)"),
    (["--model", "{tmp}/missing"], "--model {tmp}/missing: no such folder"),
    (["--model", "{tmp}/corrupt"], "transformer/diffusion_pytorch_model.safetensors is not a valid safetensors file"),
    (["--model", "{tmp}/animatediff"], "model_index.json names AnimateDiffPipeline; --pipeline text2video needs"),
    (["--pipeline", "broadway", "--model", "{tmp}/corrupt"], "model_index.json names WanPipeline; --pipeline broadway needs"),
    (["--pipeline", "broadway", "--height", "36"], "--height must be a positive multiple of 8"),
    (["--pipeline", "broadway", "--frames", "4"], "tau must be < frames // 2"),
    (["--pipeline", "broadway", "--param", "tua=3"], "unknown BroadWayConfig parameter(s) ['tua']"),
    (["--pipeline", "freeswim", "--base-size", "64"], "--base-size must look like HEIGHTxWIDTH"),
    (["--pipeline", "freeswim", "--base-size", "128x128"], "--base-size 128x128 must not exceed"),
    (["--pipeline", "freeswim", "--strength", "0"], "--strength must be a number in (0, 1]"),
    (["--pipeline", "streaming", "--chunks", "0"], "--chunks must be an integer >= 1"),
    (["--pipeline", "streaming", "--param", "sink_frames=x"], "StreamingConfig's sink_frames must be an integer"),
    (["--frames", "x"], "argument --frames: invalid int value: 'x'"),
]


@pytest.mark.parametrize("args, message", GENERATE_ERRORS, ids=[" ".join(a) for a, _ in GENERATE_ERRORS])
def test_generate_checks_every_argument_before_loading_anything(tmp_path, capsys, no_work, args, message):
    _model_folders(tmp_path)
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    argv = ["generate", *args] + ([] if "--out" in args else ["--out", str(tmp_path / "v.mp4")])
    line = _usage_error(argv, capsys)
    assert message.replace("{tmp}", str(tmp_path)) in line
    assert no_work == [] and not (tmp_path / "v.mp4").exists()


OTHER_ERRORS = [
    (["demo", "--out", "{tmp}/afile"], "--out {tmp}/afile: is a file; give a folder"),
    (["demo", "--bench-grid", "3x4", "--out", "{tmp}/d"], "--bench-grid must look like FxHxW"),
    (["bench", "--repeats", "0"], "--repeats must be an integer >= 1"),
    (["bench", "--backends", "flex,fast"], "--backends must be a comma-separated list of"),
    (["bench", "--grid", "0x4x4"], "--grid sizes must be >= 1"),
    (["bench", "--smooth", "2"], "--smooth must be a number in [0, 1]"),
    (["bench", "--mode", "backward", "--backends", "flex,segments"], "--mode backward: FlexAttention has no backward on the CPU; use --backends auto,gather,segments,groups,dense"),
    (["bench", "--grid", "40x60x104", "--max-memory-gib", "0.5"], "bench --grid 40x60x104 (249,600 tokens) needs about 1.0 GiB (q/k/v/out 0.95 GiB, 1950x1950 tile plan 0.03 GiB)"),
    (["mask", "--grid", "200x200x200", "--out", "{tmp}/m.png"], "mask --grid 200x200x200 (8,000,000 tokens) needs about 29.1 GiB"),
    (["mask", "--method", "monarch", "--out", "{tmp}/m.png"], "--method monarch has no block mask to draw"),
    (["mask", "--out", "{tmp}"], "is a folder"),
    (["eval", "--methods", "radial,nope", "--out", "{tmp}/e"], "--methods must be names in ['dense', "),
    (["eval", "--seeds", "0,x", "--out", "{tmp}/e"], "--seeds: must be comma-separated integers"),
    (["eval", "--seeds", "0,-1", "--out", "{tmp}/e"], "--seeds must be integers >= 0"),
    (["eval", "--prompts", "0", "--out", "{tmp}/e"], "--prompts must be an integer >= 1"),
    (["eval", "--steps", "0", "--out", "{tmp}/e"], "--steps must be an integer >= 1"),
    (["eval", "--out", "{tmp}/afile"], "is a file; give a folder"),
    (["make-clips", "--count", "0", "--out", "{tmp}/c"], "--count must be an integer >= 1"),
    (["make-clips", "--backgrounds", "pink", "--out", "{tmp}/c"], "--backgrounds must be comma-separated names of black, white"),
]


@pytest.mark.parametrize("argv, message", OTHER_ERRORS, ids=[" ".join(a) for a, _ in OTHER_ERRORS])
def test_other_commands_check_before_work(tmp_path, capsys, no_work, argv, message):
    _model_folders(tmp_path)
    line = _usage_error([a.replace("{tmp}", str(tmp_path)) for a in argv], capsys)
    assert message.replace("{tmp}", str(tmp_path)) in line
    assert no_work == [] and not (tmp_path / "c").exists()


def test_memory_estimate_matches_the_tile_count(capsys, no_work):
    """The refusal shows the estimate: 8 bytes per (query tile, key tile) of the plan, 62,500^2 tiles here."""
    line = _usage_error(["mask", "--grid", "200x200x200", "--param", "block_size=64"], capsys)
    expected = 8 * 125_000**2 / 2**30
    assert f"about {expected:.1f} GiB" in line and "125,000 x 125,000 tiles of 64 tokens" in line


def test_debug_shows_the_traceback(no_work):
    from vidattn.cli.checks import UsageError

    with pytest.raises(UsageError, match="--steps must be"):
        main(["--debug", "generate", "--steps", "0"])


def test_internal_errors_are_one_line_with_exit_1(monkeypatch, capsys, tmp_path):
    def broken(args):
        raise KeyError("boom")

    monkeypatch.setattr("vidattn.cli.main.cmd_make_clips", broken)
    with pytest.raises(SystemExit) as exit_info:
        main(["make-clips", "--out", str(tmp_path / "c")])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "internal error: KeyError" in err[0] and "--debug" in err[0]


def _generate_args(argv):
    from vidattn.cli.main import build_parser

    return build_parser().parse_args(["generate", *argv])


def test_long_prompt_and_unknown_words_are_warned_before_work(capsys, tmp_path):
    from vidattn.cli.generate import check_generate

    long_prompt = " ".join(["a red circle moving right"] * 5)  # 25 words, one token each (the embedded tokenizer adds no special token)
    check_generate(_generate_args(["--prompt", long_prompt, "--out", str(tmp_path / "v.mp4")]))
    assert "--prompt has 25 tokens; the model reads only the first 16" in capsys.readouterr().err
    check_generate(_generate_args(["--prompt", "a crimson circle", "--out", str(tmp_path / "v.mp4")]))
    assert "does not know (read as <unk>): crimson" in capsys.readouterr().err
    check_generate(_generate_args(["--out", str(tmp_path / "v.mp4")]))
    assert capsys.readouterr().err == ""


def test_dense_steps_covering_every_step_is_warned(capsys, tmp_path):
    from vidattn.cli.generate import check_generate

    params = check_generate(_generate_args(["--param", "dense_steps=12", "--steps", "8", "--out", str(tmp_path / "v.mp4")]))
    assert params["dense_steps"] == 12
    assert "dense_steps=12 >= --steps 8: every step runs dense attention" in capsys.readouterr().err
    params = check_generate(_generate_args(["--steps", "8", "--out", str(tmp_path / "v.mp4")]))
    assert params["dense_steps"] == 2 and params["decay"] == 0.2 and capsys.readouterr().err == ""


def test_generation_defaults_follow_the_pipelines_embedded_model(capsys, tmp_path):
    """Left-out sizes/steps/guidance are those the embedded model was trained for: broadway's UNet model, else Wan's;
    what the user gives is kept."""
    from vidattn.cli.generate import check_generate
    from vidattn.pipelines import default_model as wan
    from vidattn.pipelines import unet_video_model as unet

    broadway = _generate_args(["--pipeline", "broadway", "--out", str(tmp_path / "v.mp4")])
    check_generate(broadway)
    assert (broadway.frames, broadway.height, broadway.width, broadway.steps, broadway.guidance) == (
        unet.UNET_FRAMES, unet.UNET_HEIGHT, unet.UNET_WIDTH, unet.UNET_STEPS, unet.UNET_GUIDANCE)
    assert "random weights" not in capsys.readouterr().err
    text = _generate_args(["--frames", "9", "--out", str(tmp_path / "w.mp4")])
    check_generate(text)
    assert (text.frames, text.height, text.steps, text.guidance) == (9, wan.DEFAULT_HEIGHT, wan.DEFAULT_STEPS, wan.DEFAULT_GUIDANCE)


def test_shared_key_value_parser_serves_cli_and_training():
    from vidattn.params import check_field_types, parse_key_values
    from vidattn.processors.radial import RadialConfig
    from vidattn.training.config import parse_overrides

    assert parse_overrides(["a=1", "b=[x, y]", "max-train-steps=3"]) == {"a": 1, "b": ["x", "y"], "max_train_steps": 3}
    for bad, message in (("a=[1,", "--set a: '[1,' is not a valid YAML value"), ("a=.nan", "--set a: '.nan' is not a finite number"),
                         ("=3", "--set must look like KEY=VALUE")):
        with pytest.raises(ValueError) as info:
            parse_overrides([bad])
        assert message in str(info.value) and "\n" not in str(info.value)
    assert parse_key_values(["c=[1, 2]"], tuples=True) == {"c": (1, 2)}
    check_field_types(RadialConfig, {"decay": 1, "sink": None, "block_size": 64}, "radial")  # an int is a fine float
    for values, message in (({"decay": True}, "decay must be a number"), ({"block_size": 64.0}, "block_size must be an integer"),
                            ({"sink": "yes"}, "sink must be")):
        with pytest.raises(ValueError, match=message):
            check_field_types(RadialConfig, values, "radial")


# ---------------------------------------------------------------- pictures and progress (issue 18 part 5)


def test_mask_figure_has_axes_frames_and_legend():
    from vidattn.cli.pictures import mask_figure
    from vidattn.layout import VideoLayout
    from vidattn.processors.radial import RadialAttnProcessor

    layout = VideoLayout.parse("6x4x8")
    q = torch.empty(1, 1, layout.total_tokens, 1)
    plan = RadialAttnProcessor(decay=0.2, block_size=16).plan(q, q, layout, "wan")
    fig = mask_figure(plan, layout, "radial", {"decay": 0.2, "block_size": 16})
    ax = fig.axes[0]
    assert ax.get_xlabel() == "key token" and ax.get_ylabel() == "query token"
    labels = {a.get_xlabel() for a in ax.child_axes} | {a.get_ylabel() for a in ax.child_axes}  # secondary axes in frames
    assert {"key frame (start)", "query frame (start)"} <= labels
    # one horizontal and one vertical line per inner frame boundary, at token f * 32
    lines = [line for line in ax.get_lines() if line.get_label().startswith("_")]
    positions = sorted({float(line.get_ydata()[0]) for line in lines if line.get_ydata()[0] == line.get_ydata()[1]})
    assert positions == [32.0 * f for f in range(1, 6)] and len(lines) == 2 * 5
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    kept = int(plan.tiles.sum())
    assert legend[0].startswith(f"kept: {kept} tiles") and legend[1].startswith("partial") and legend[2].startswith("skipped")
    assert "frame boundary" in legend[3]
    title = ax.get_title()
    assert "radial: decay=0.2, block_size=16" in title and f"density {plan.tile_density:.3f}" in title and "12x12 tiles" in title
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_tile_classes_against_hand_built_plan():
    from vidattn.cli.pictures import KEPT, PARTIAL, SKIPPED, tile_classes
    from vidattn.patterns.plan import BlockPlan

    tiles = torch.tensor([[True, True], [False, True]]).view(1, 1, 2, 2)
    full = torch.tensor([[True, False], [False, False]]).view(1, 1, 2, 2)
    classes = tile_classes(BlockPlan(tiles, 4, 8, full=full))
    assert classes.tolist() == [[KEPT, PARTIAL], [SKIPPED, PARTIAL]]


def test_mask_default_decay_matches_generate(capsys, tmp_path, monkeypatch):
    from vidattn.cli import pictures

    seen = {}

    def record(plan, layout, method, settings, **kwargs):
        seen.update(settings=settings, density=plan.tile_density, **kwargs)
        return real(plan, layout, method, settings, **kwargs)

    real = pictures.mask_figure
    monkeypatch.setattr(pictures, "mask_figure", record)
    main(["mask", "--grid", "12x4x8", "--param", "block_size=16", "--out", str(tmp_path / "m.png")])
    from vidattn.layout import VideoLayout
    from vidattn.processors.radial import RadialAttnProcessor

    assert seen["settings"]["decay"] == 0.2 and seen["frame_lines"] is True
    layout = VideoLayout.parse("12x4x8")
    q = torch.empty(1, 1, layout.total_tokens, 1)
    assert seen["density"] == RadialAttnProcessor(decay=0.2, block_size=16).plan(q, q, layout, "wan").tile_density


def test_vmoba_partition_figure_rows():
    from vidattn.cli.pictures import partition_figure
    from vidattn.layout import VideoLayout
    from vidattn.processors.vmoba import VMoBAConfig, vmoba_partition_maps

    layout = VideoLayout.parse("4x8x12")
    config = VMoBAConfig(spatial_chunk=(4, 6), st_chunk=(2, 4, 6))
    fig = partition_figure(vmoba_partition_maps(layout, config), layout, "vmoba", {"spatial_chunk": (4, 6)})
    assert len(fig.axes) == 3 * 4
    row_labels = [a.get_ylabel() for a in fig.axes if a.get_ylabel()]
    assert [label.split(":")[0] for label in row_labels] == ["1D", "2D", "3D"]
    assert "spatial_chunk=(4, 6)" in fig._suptitle.get_text()
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_bench_shows_progress(capsys):
    main(["bench", "--method", "radial", "--grid", "2x4x8", "--heads", "1", "--head-dim", "8", "--backends", "gather",
          "--repeats", "2", "--param", "block_size=16"])
    captured = capsys.readouterr()
    assert "bench radial" in captured.err and "6/6" in captured.err  # (1 + 1 backend) x (1 warm-up + 2 repeats) calls


# ---------------------------------------------------------------- make-clips (issue 18 part 6)


def test_make_clips_writes_lossless_clips_and_captions(tmp_path, capsys):
    import json

    from vidattn.data.shapes import ShapesDataset

    out = tmp_path / "clips"
    main(["make-clips", "--count", "3", "--frames", "9", "--height", "32", "--width", "32", "--seed", "5", "--out", str(out)])
    data = ShapesDataset(3, frames=9, height=32, width=32, seed=5)
    lines = [json.loads(line) for line in (out / "captions.jsonl").read_text().splitlines()]
    assert [line["caption"] for line in lines] == [data[i].caption for i in range(3)]
    for i, line in enumerate(lines):
        frames = np.stack(imageio.mimread(out / line["video"]))
        assert np.array_equal(frames, (data[i].video * 255).round().astype(np.uint8))  # lossless
        assert (out / f"clip{i:04d}.txt").read_text().strip() == data[i].caption
    assert not list(out.glob(".*tmp*"))


def test_frame_lines_only_where_the_token_order_keeps_frames():
    from vidattn.cli.bench import frames_in_place
    from vidattn.layout import VideoLayout

    layout = VideoLayout(3, 2, 2)  # 4 tokens per frame
    assert frames_in_place(None, layout)
    within = torch.tensor([1, 0, 3, 2, 4, 6, 5, 7, 11, 10, 9, 8])
    assert frames_in_place(within, layout)
    across = within.clone()
    across[[3, 4]] = across[[4, 3]]  # a token of frame 1 at a position of frame 0
    assert not frames_in_place(across, layout)


def test_best_times_interleaved_runs_the_calls_in_turn():
    """One warm-up call each, then rounds that run every call in turn (the demo's attention-alone timing)."""
    import torch

    from vidattn.benchmarking import best_times_interleaved

    log = []
    calls = {"dense": lambda: log.append("dense"), "sparse": lambda: log.append("sparse")}
    best = best_times_interleaved(calls, 2, torch.device("cpu"))
    assert log == ["dense", "sparse"] * 3
    assert set(best) == {"dense", "sparse"} and all(0 <= t < 1 for t in best.values())
