import re

import matplotlib
import pytest

from mflib import plotting


def _render(a, b="x"):
    fig, ax = plotting.figure()
    ax.plot([0, 1], [0, a])
    ax.set_title(b)
    return fig


def test_static_explorer_is_self_contained():
    html = plotting.static_explorer(_render, {"a": [1, 2, 3], "b": ["p", "q"]}, title="t").data
    assert html.count("<img ") == 6
    assert html.count('type="range"') == 2
    assert "http" not in html  # no CDN, no network
    assert re.search(r"var strides=\[2, 1\]", html)


def test_static_explorer_rejects_bad_axes():
    with pytest.raises(TypeError, match="axes"):
        plotting.static_explorer(_render, [])
    with pytest.raises(ValueError, match="axes\\['a'\\]"):
        plotting.static_explorer(_render, {"a": []})
    with pytest.raises(TypeError, match="render"):
        plotting.static_explorer(3, {"a": [1]})


def test_live_explorer_builds_widgets(monkeypatch):
    monkeypatch.setenv("MFLIB_QUIET", "0")
    w = plotting.live_explorer(_render, {"a": [1, 2]})
    assert len(w.children) >= 2


def test_live_explorer_renders_once_and_opens_no_widget_when_quiet(monkeypatch):
    monkeypatch.setenv("MFLIB_QUIET", "1")
    calls = []

    def render(a):
        calls.append(a)
        return _render(a)

    assert plotting.live_explorer(render, {"a": [3, 4]}) is None
    assert calls == [3]


def test_animation_html_and_checks():
    fig, ax = plotting.figure()
    (line,) = ax.plot([0, 1], [0, 0])
    html = plotting.animation_html(fig, lambda i: line.set_ydata([0, i]), 3).data
    assert "<img" in html or "img" in html
    assert "http" not in html and "fa fa-" not in html  # offline: no CDN stylesheet
    fig, _ = plotting.figure()
    with pytest.raises(ValueError, match="frames"):
        plotting.animation_html(fig, lambda i: None, 0)


def test_progress_is_quiet_in_tests():
    it = range(3)
    assert plotting.progress(it) is it


def test_figure_checks():
    with pytest.raises(ValueError, match="ncols"):
        plotting.figure(0)
    fig, _ = plotting.figure(2, 1)
    assert isinstance(fig, matplotlib.figure.Figure)


def test_interactive_figures_carry_a_still_frame_and_svg_buttons():
    from IPython.core.formatters import DisplayFormatter

    fig, ax = plotting.figure()
    (line,) = ax.plot([0, 1], [0, 0])
    anim = plotting.animation_html(fig, lambda i: line.set_ydata([0, i]), 3)
    assert anim.data.count("<svg") == 9 and "&#x23" not in anim.data  # no glyph fonts lack
    explorer = plotting.static_explorer(_render, {"a": [1, 2]})
    for obj in (anim, explorer):
        bundle, _ = DisplayFormatter().format(obj)
        assert {"text/html", "image/png"} <= set(bundle)  # HTML for the site, PNG for the PDF
        assert obj.png.startswith(b"\x89PNG")
