"""The pipeline-eval report: strips line up videos of different sizes, files are written, the CLI refuses mixed flags."""

import json

import numpy as np
import pytest

from vidattn.pipeline_eval import PipelineReport, Table, evaluate_pipeline
from vidattn.pipeline_eval.report import frame_strip


def test_frame_strip_resizes_rows_to_the_first_video():
    small = np.zeros((5, 8, 8, 3), np.float32)
    big = np.ones((3, 16, 16, 3), np.float32)
    image = frame_strip([small, big], count=4, scale=1)
    assert image.dtype == np.uint8 and image.shape == (2 * 10, 4 * 10, 3)
    assert (image[1:9, 1:9] == 0).all() and (image[11:19, 1:9] == 255).all()
    assert (image[11:19, 31:39] == 128).all()  # the 3-frame video's missing fourth frame is grey


def test_report_writes_markdown_json_and_strips(tmp_path):
    report = PipelineReport("t", "intro", [Table("caption", ["a", "b"], [["1", "2"]])], notes=["note"],
                            strips={"x": frame_strip([np.zeros((2, 4, 4, 3))])}, data={"v": 1.5})
    report.write(tmp_path)
    text = (tmp_path / "report.md").read_text()
    assert "| a | b |" in text and "| 1 | 2 |" in text and "![x](strip_x.png)" in text
    assert json.loads((tmp_path / "results.json").read_text()) == {"v": 1.5}
    assert (tmp_path / "strip_x.png").stat().st_size > 0
    assert not list(tmp_path.glob(".*.tmp"))


def test_unknown_pipeline_is_refused():
    with pytest.raises(ValueError, match="pipeline must be one of"):
        evaluate_pipeline("nope", prompts=1, seeds=[0], out=None)
