"""`vidattn eval --pipeline broadway` on the trained UNet video model: one row per setting, and BroadWay changes the frames."""

import json

import numpy as np
import pytest

pytestmark = pytest.mark.usefixtures("one_thread")


def test_evaluate_one_prompt_writes_stock_and_every_preset(tmp_path):
    from vidattn.pipeline_eval import evaluate_pipeline
    from vidattn.pipeline_eval.broadway import PRESETS

    report = evaluate_pipeline("broadway", prompts=1, seeds=[0], out=tmp_path)
    names = [row[0] for row in report.tables[0].rows]
    assert names == ["stock", *PRESETS]
    text = (tmp_path / "report.md").read_text()
    assert all(f"| {name} |" in text for name in names) and (tmp_path / "strip_broadway.png").stat().st_size > 0
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["maps_changed"]["stock"] == [0] and all(data["maps_changed"][n][0] > 0 for n in PRESETS)
    # BroadWay acted on the output, not only on the maps: the frames differ from stock's (same noise)
    assert all(data["max_pixel_change"][n][0] > 1e-3 for n in PRESETS)
    motion = {n: data["metrics"][n]["motion"][0] for n in names}
    assert len(set(motion.values())) == len(names)
    # the report's strip has one row per setting
    assert report.strips["broadway"].shape[0] == len(names) * 4 * (32 + 2)


def test_bad_arguments_are_refused_before_loading():
    from vidattn.pipeline_eval.broadway import evaluate

    with pytest.raises(ValueError, match="prompts"):
        evaluate(prompts=0, seeds=[0], out=None)
    with pytest.raises(ValueError, match="seeds"):
        evaluate(prompts=1, seeds=[], out=None)
