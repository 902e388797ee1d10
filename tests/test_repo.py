"""Repository invariants: the README's two commands, CI, ignores."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands():
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```(?:bash|sh)\n(.*?)```", text, flags=re.S)
    assert len(blocks) >= 2, "README must open with two command blocks"
    return [b.strip().splitlines()[-1] for b in blocks[:2]]


def test_readme_opens_with_build_and_test_commands():
    build, test = _readme_commands()
    assert "jupyter-book build ." in build and "-W" in build and "-n" in build
    assert "pytest" in test


def test_ci_runs_the_readme_test_command():
    _, test = _readme_commands()
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test in ci, f".ci/run does not run the README's test command:\n{test}"


def test_no_notebook_outputs_or_ipynb_committed():
    assert not list((ROOT / "lectures").glob("*.ipynb")), "a paired .ipynb next to a .md breaks the build"
