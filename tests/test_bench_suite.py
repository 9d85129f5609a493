"""`vidattn bench --suite cpu`: one command writes bench.json + bench.md with every method, correct against its reference."""

from __future__ import annotations

import json
import math

from vidattn.bench_suite import SUITES
from vidattn.cli.main import main
from vidattn.processors import METHODS


def test_cpu_suite_covers_every_method_and_is_exact(tmp_path, capsys):
    main(["bench", "--suite", "cpu", "--out", str(tmp_path)])
    data = json.loads((tmp_path / "bench.json").read_text())
    table = (tmp_path / "bench.md").read_text()
    methods = [m for m in METHODS if m != "dense"]
    cases = SUITES["cpu"].cases
    assert [(r["case"], r["method"]) for r in data["attention"]] == [(c.name, m) for c in cases for m in methods]
    for row in data["attention"]:
        assert row["error"] is None, row
        assert row["ms"] > 0 and math.isfinite(row["speedup"]) and 0 < row["density"] <= 1.5
        if row["max_abs_error"] is not None:  # bf16 against the explicit-mask reference in bf16
            assert row["max_abs_error"] < 5e-2, row
        assert f"| {row['method']} |" in table
    assert [e["method"] for e in data["end_to_end"]] == ["dense", *methods]
    assert all(e.get("error") is None and e["seconds_per_step"] > 0 for e in data["end_to_end"])
    assert "wrote" in capsys.readouterr().out
