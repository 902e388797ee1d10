"""The book's extension helpers and tools/execution_times.py (no build)."""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "book" / "_ext"))
sys.path.insert(0, str(ROOT / "tools"))
import execution_times  # noqa: E402
import mflib_book  # noqa: E402


def test_live_explorer_cells_are_recognised():
    only = mflib_book._only_live_explorer
    assert only("plotting.live_explorer(render, AXES)  # needs a kernel")
    assert only("live_explorer(render, {'a': [1]})")
    assert not only("x = 1\nplotting.live_explorer(render, AXES)")
    assert not only("plotting.static_explorer(render, AXES)")
    assert not only("") and not only("def (")


def test_latex_macros_follow_the_mathjax_ones():
    tex = mflib_book.latex_macros({"R": r"\mathbb{R}", "norm": [r"\lVert #1 \rVert", 1]})
    assert r"\renewcommand{\R}{\mathbb{R}}" in tex
    assert r"\renewcommand{\norm}[1]{\lVert #1 \rVert}" in tex


def test_every_lecture_has_measured_times():
    times = json.loads(mflib_book.TIMES_FILE.read_text())
    for lecture in sorted((ROOT / "lectures").glob("*.md")):
        doc = f"lectures/{lecture.stem}"
        text = mflib_book.runtime_sentence(doc, times)
        assert text and "at full size" in text and "in quick mode" in text, f"no measured times for {doc}"


def test_execution_times_records_the_mode_of_the_build(tmp_path):
    report = [{"page": "lectures/01_x", "quick": True, "method": "cache", "seconds": 12.34,
               "succeeded": True, "executed_at": 1.8e9},
              {"page": "lectures/02_y", "quick": True, "method": "cache", "seconds": None,
               "succeeded": False, "executed_at": 1.8e9}]
    (tmp_path / "r.json").write_text(json.dumps(report))
    out = tmp_path / "times.json"
    out.write_text(json.dumps({"full": {"pages": {"lectures/01_x": 99.0}}}))
    times = execution_times.main([str(tmp_path / "r.json"), "--output", str(out), "--machine", "m"])
    assert times["quick"]["pages"] == {"lectures/01_x": 12.3}  # the failed page is not recorded
    assert times["quick"]["machine"] == "m" and times["full"]["pages"] == {"lectures/01_x": 99.0}
    with pytest.raises(ValueError, match="quick"):
        execution_times.update([{k: v for k, v in report[0].items() if k != "quick"}], {}, "m")


def test_page_numbers_reads_glued_values_and_compares_them():
    import page_numbers
    import nbformat

    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("")
    cell.outputs = [
        nbformat.v4.new_output("display_data", metadata={"scrapbook": {"name": "a", "mime_prefix": "application/papermill.record/"}},
                               data={"application/papermill.record/text/plain": "1.2345"}),
        nbformat.v4.new_output("display_data", metadata={"scrapbook": {"name": "b", "mime_prefix": ""}},
                               data={"text/plain": "'x=3'"}),
    ]
    nb.cells.append(cell)
    values = page_numbers.glued(nb)
    assert values == {"a": "1.2345", "b": "'x=3'"}          # a glued value is never read as empty
    assert page_numbers.differences(values, {"a": "1.2345000001", "b": "'x=3'"}, 1e-9, 0.0) == []
    assert len(page_numbers.differences(values, {"a": "1.3", "b": "'x=3'"}, 1e-9, 0.0)) == 1
