"""Fidelity (PSNR, SSIM) and prompt-accuracy metrics against naive references; the evaluation report."""

import math

import numpy as np
import pytest

from vidattn.data.shapes import ShapesDataset, make_caption, render_video
from vidattn.metrics.fidelity import gaussian_window, psnr, ssim
from vidattn.metrics.prompt_accuracy import motion_direction, parse_caption, prompt_accuracy, recover


def _naive_ssim(a, b, size=11, sigma=1.5, data_range=1.0):
    """Wang et al. 2004 by explicit loops over frames, channels and window positions."""
    xs = [i - size // 2 for i in range(size)]
    g = [math.exp(-x * x / (2 * sigma * sigma)) for x in xs]
    g = [v / sum(g) for v in g]
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    values = []
    for f in range(a.shape[0]):
        for c in range(a.shape[3]):
            for y in range(a.shape[1] - size + 1):
                for x in range(a.shape[2] - size + 1):
                    ma = mb = saa = sbb = sab = 0.0
                    for i in range(size):
                        for j in range(size):
                            w = g[i] * g[j]
                            pa, pb = float(a[f, y + i, x + j, c]), float(b[f, y + i, x + j, c])
                            ma += w * pa
                            mb += w * pb
                            saa += w * pa * pa
                            sbb += w * pb * pb
                            sab += w * pa * pb
                    va, vb, cov = saa - ma * ma, sbb - mb * mb, sab - ma * mb
                    values.append(((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma * ma + mb * mb + c1) * (va + vb + c2)))
    return sum(values) / len(values)


def test_psnr_against_formula():
    rng = np.random.default_rng(0)
    a = rng.random((3, 8, 9, 3))
    b = np.clip(a + rng.normal(0, 0.1, a.shape), 0, 1)
    mse = sum(float((x - y) ** 2) for x, y in zip(a.ravel(), b.ravel())) / a.size
    assert psnr(b, a) == pytest.approx(10 * math.log10(1 / mse), rel=1e-9)
    assert psnr(a, a) == math.inf
    assert psnr(b * 255, a * 255, data_range=255) == pytest.approx(psnr(b, a), rel=1e-9)


def test_ssim_against_naive_loops():
    rng = np.random.default_rng(1)
    a = rng.random((2, 13, 14, 2))
    b = np.clip(0.7 * a + 0.3 * rng.random(a.shape), 0, 1)
    assert ssim(b, a) == pytest.approx(_naive_ssim(b, a), abs=1e-9)
    assert ssim(a[..., :1] * 0.5, a[..., :1], size=5, sigma=1.0) == pytest.approx(_naive_ssim(a[..., :1] * 0.5, a[..., :1], 5, 1.0), abs=1e-9)
    assert ssim(a, a) == pytest.approx(1.0)
    assert sum(gaussian_window()) == pytest.approx(1.0)


def test_fidelity_bad_input():
    a = np.zeros((2, 12, 12, 3))
    with pytest.raises(ValueError, match="same shape"):
        psnr(a, a[:1])
    with pytest.raises(ValueError, match="window size"):
        ssim(a, a, size=4)
    with pytest.raises(ValueError, match="smaller than the SSIM window"):
        ssim(a[:, :5, :5], a[:, :5, :5])
    with pytest.raises(ValueError, match="data_range"):
        psnr(a, a, data_range=0)


def test_parse_caption():
    assert parse_caption("a red circle moving right on a black background") == dict(
        color="red", shape="circle", direction="right", background="black"
    )
    assert parse_caption("A Yellow triangle, moving up") == dict(color="yellow", shape="triangle", direction="up", background=None)
    assert parse_caption("the square") == dict(color=None, shape="square", direction=None, background=None)


def test_ground_truth_videos_score_one():
    """The dataset's own videos must be read back perfectly: this is the test that the metric works."""
    data = ShapesDataset(30, frames=17, height=64, width=64, seed=7, backgrounds=("black", "white"))
    videos, captions = [data[i].video for i in range(len(data))], [data[i].caption for i in range(len(data))]
    result = prompt_accuracy(videos, captions)
    assert (result.accuracy, result.color, result.direction) == (1.0, 1.0, 1.0)
    noisy = [np.clip(v + np.random.default_rng(i).normal(0, 0.08, v.shape), 0, 1) for i, v in enumerate(videos)]
    assert prompt_accuracy(noisy, captions).accuracy == 1.0


def test_wrong_captions_score_zero():
    flip = {"left": "right", "right": "left", "up": "down", "down": "up"}
    other = {"red": "blue", "blue": "green", "green": "red", "yellow": "red", "white": "red"}
    data = ShapesDataset(12, frames=9, height=48, width=48, seed=3)
    videos = [data[i].video for i in range(len(data))]
    wrong_dir = [make_caption(data[i].color, data[i].shape, flip[data[i].direction]) for i in range(len(data))]
    wrong_col = [make_caption(other[data[i].color], data[i].shape, data[i].direction) for i in range(len(data))]
    r = prompt_accuracy(videos, wrong_dir)
    assert (r.accuracy, r.color, r.direction) == (0.0, 1.0, 0.0)
    r = prompt_accuracy(videos, wrong_col)
    assert (r.accuracy, r.color, r.direction) == (0.0, 0.0, 1.0)


def test_static_or_empty_video_has_no_direction():
    still = np.repeat(render_video("red", "square", "left", frames=1, height=32, width=32), 5, axis=0)
    assert recover(still).direction is None and recover(still).color == "red"
    empty = np.zeros((5, 32, 32, 3))
    assert recover(empty).color is None and recover(empty).direction is None
    assert motion_direction(np.array([[1.0, 1.0], [np.nan, np.nan], [5.0, 2.0]])) == "right"
    with pytest.raises(ValueError, match="caption must name a colour and a direction"):
        prompt_accuracy([still], ["a square"])


def test_eval_report_covers_every_method(tmp_path):
    """`vidattn eval` on a small grid: one row per registered method, a plot and a strip per method."""
    from vidattn.evaluation import evaluate
    from vidattn.processors.registry import METHODS

    exact_kernel = {m: {"backend": "dense"} for m, entry in METHODS.items() if "dense" in entry.config.backends}
    report = evaluate(num_prompts=2, frames=9, steps=2, out=tmp_path, common_args={"block_size": 16}, method_args=exact_kernel)
    text = (tmp_path / "report.md").read_text()
    assert [r.method for r in report.results] == ["dense"] + [m for m in METHODS if m != "dense"]
    for method in METHODS:
        assert f"| {method} |" in text
        assert (tmp_path / f"strip_{method}.png").is_file()
    assert (tmp_path / "metrics.png").stat().st_size > 0
    dense = report.results[0]
    assert dense.psnr == math.inf and dense.ssim == pytest.approx(1.0) and dense.speedup == 1.0
    for r in report.results:
        assert 0 <= r.accuracy <= min(r.color_accuracy, r.direction_accuracy) + 1e-12 and r.seconds > 0


def test_eval_bad_input():
    from vidattn.evaluation import evaluate, held_out_prompts

    with pytest.raises(ValueError, match="methods must be names in"):
        evaluate(object(), methods=["nope"], out=None)
    with pytest.raises(ValueError, match="method_args keys"):
        evaluate(object(), method_args={"nope": {}}, out=None)
    prompts = held_out_prompts(20)
    assert len(set(prompts)) == 20
    assert {(parse_caption(p)["color"], parse_caption(p)["direction"]) for p in prompts} == {
        (c, d) for c in ("red", "green", "blue", "yellow", "white") for d in ("left", "right", "up", "down")
    }


def test_prompt_accuracy_is_per_frame():
    """A clip whose last frames turn yellow, or go black, scores the share of its right frames, not 1.0."""
    from vidattn.data.shapes import COLORS

    video = render_video("red", "circle", "right", frames=17, height=64, width=64)
    caption = make_caption("red", "circle", "right")
    assert prompt_accuracy([video], [caption]).accuracy == 1.0
    yellow = video.copy()
    shape = yellow[11:].sum(axis=-1) > 0
    yellow[11:][shape] = COLORS["yellow"]  # frames 11..16 turn yellow, as the issue saw
    r = prompt_accuracy([yellow], [caption])
    assert (r.accuracy, r.color, r.direction) == (11 / 17, 11 / 17, 1.0)
    assert (r.frames, r.failed_frames, r.empty_frames) == (17, 6, 0)
    assert r.recovered[0].frame_colors == ("red",) * 11 + ("yellow",) * 6
    assert r.recovered[0].verdict("red") == "red shape moving right in 11/17 frames; other frames: yellow 6"
    black = video.copy()
    black[13:] = 0.0  # the last 4 frames lose the shape
    r = prompt_accuracy([black], [caption])
    assert r.accuracy == pytest.approx(13 / 17) and (r.failed_frames, r.empty_frames) == (4, 4)
    assert "no shape 4" in r.recovered[0].verdict("red")
    # the whole-clip colour would still say "red" for both: that is what the per-frame metric fixes
    assert recover(yellow).color == "red" and recover(black).color == "red"


def test_all_black_output_fails_the_quality_floor():
    from vidattn.evaluation import QUALITY_FLOOR, EvalReport, MethodResult

    captions = [make_caption("red", "square", "left"), make_caption("blue", "circle", "up")]
    black = [np.zeros((9, 32, 32, 3))] * 2
    acc = prompt_accuracy(black, captions)
    assert (acc.accuracy, acc.color, acc.empty_frames) == (0.0, 0.0, 18)
    dense = MethodResult("dense", {}, 1.0, 1.0, math.inf, 1.0, 1.0, 1.0, 1.0, 18, 0, 0)
    broken = MethodResult("monarch", {}, 1.0, 1.0, 20.0, 0.85, acc.accuracy, acc.color, acc.direction, acc.frames, acc.failed_frames, acc.empty_frames)
    assert dense.failure is None and "0/18 frames show a shape of the prompt's colour (18 show no shape at all)" in broken.failure
    settings = dict(prompts=captions, seeds=[0], frames=9, height=32, width=32, steps=1, guidance=1.0, machine="m", date="d")
    text = EvalReport([dense, broken], settings).to_markdown()
    assert "| monarch |" in text and "**FAILED**" in text and "**monarch FAILED**" in text
    assert f"{QUALITY_FLOOR:.0%}" in text
    assert EvalReport([dense, broken], settings).failures.keys() == {"monarch"}


def test_eval_command_reports_failures_with_exit_1(monkeypatch, tmp_path, capsys):
    from vidattn.cli.main import main
    from vidattn.evaluation import EvalReport, MethodResult

    def fake_evaluate(**kwargs):
        assert kwargs["progress"] is True
        results = [MethodResult("dense", {}, 1.0, 1.0, math.inf, 1.0, 1.0, 1.0, 1.0, 17, 0, 0),
                   MethodResult("monarch", {}, 1.0, 1.0, 20.0, 0.85, 0.0, 0.0, 0.0, 17, 17, 17)]
        settings = dict(prompts=["a red circle moving right"], seeds=[0], frames=17, height=64, width=64, steps=8, guidance=1.0, machine="m", date="d")
        return EvalReport(results, settings)

    monkeypatch.setattr("vidattn.evaluation.evaluate", fake_evaluate)
    with pytest.raises(SystemExit) as info:
        main(["eval", "--methods", "monarch", "--prompts", "1", "--out", str(tmp_path)])
    assert info.value.code not in (0, None, 2)
    err = capsys.readouterr().err
    assert "FAILED monarch: only 0/17 frames" in err and "about" in err and "progress" in err
