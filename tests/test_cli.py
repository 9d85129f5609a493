"""The `make demo` path and the CLI commands end to end on a very small grid."""

from pathlib import Path

import imageio
import numpy as np

from vidattn.cli.main import main, psnr


def test_demo_writes_both_videos_and_reports(tmp_path, capsys):
    main(["demo", "--frames", "9", "--height", "32", "--width", "32", "--steps", "2", "--block-size", "8", "--out", str(tmp_path)])
    report = capsys.readouterr().out
    dense = imageio.mimread(tmp_path / "dense.mp4")
    radial = imageio.mimread(tmp_path / "radial.mp4")
    assert len(dense) == len(radial) == 9
    assert "PSNR radial vs dense" in report and "speed-up" in report


def test_mask_picture(tmp_path, capsys):
    out = tmp_path / "mask.png"
    main(["mask", "--grid", "6x4x8", "--block-size", "16", "--decay", "0.5", "--out", str(out)])
    image = imageio.imread(out)
    assert image.ndim == 2 and (image == 255).any() and (image == 30).any()
    assert "sparsity" in capsys.readouterr().out


def test_psnr():
    a = np.zeros((2, 4, 4, 3))
    assert psnr(a, a) == float("inf")
    assert abs(psnr(a, a + 0.1) - 20.0) < 1e-9
