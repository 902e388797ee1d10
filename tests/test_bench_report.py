import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import report  # noqa: E402


def test_render_nested_tables(tmp_path):
    f = tmp_path / "demo.json"
    f.write_text(json.dumps({
        "machine": {"cpu": "x", "cores": 2}, "torch": "2.13",
        "analytic": {"depth": 3, "rows": [{"n": 10, "mflib": {"time_s": 0.5}, "ratio": 2.0},
                                          {"n": 20, "mflib": {"time_s": 1.25}, "ratio": 4.0}]},
    }))
    md = report.render(f)
    assert "**machine.cpu**: x" in md and "**analytic.depth**: 3" in md
    assert "| n | mflib.time_s | ratio |" in md
    assert "| 20 | 1.25 | 4 |" in md


def test_render_rejects_non_objects(tmp_path):
    f = tmp_path / "bad.json"
    f.write_text("[1, 2]")
    with pytest.raises(ValueError, match="bad.json"):
        report.render(f)


def test_every_committed_result_renders():
    md = report.render_all()
    assert md.count("## ") == len(list(report.RESULTS.glob("*.json")))
