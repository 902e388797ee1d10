"""Plotting helpers shared by every page: one figure style, interactive
figures that work with no kernel, and quiet progress bars.

Interactive figures come in twins built from one ``render`` function:

* :func:`live_explorer` wraps ``render`` in ipywidgets sliders, for a reader
  running the notebook;
* :func:`static_explorer` renders every combination of the slider values at
  build time and returns self-contained HTML (images and a few lines of
  JavaScript, no CDN, no widget manager), for the static book.

:func:`animation_html` turns a matplotlib animation into the same kind of
self-contained HTML, with play/pause controls.

Both also carry one representative frame as ``image/png`` (the explorer's
first combination, the animation's last frame): the HTML book shows the
interactive version, and formats that cannot run JavaScript (the PDF) show
that frame.
"""

from __future__ import annotations

import base64
import hashlib
import io
import itertools
import os
from contextlib import contextmanager

import matplotlib as mpl
import matplotlib.pyplot as plt

from mflib import _checks

__all__ = ["STYLE", "use_style", "figure", "quiet", "progress", "static_explorer", "live_explorer", "InteractiveHTML",
           "animation_html", "fig_to_png"]

#: The one figure style of the book.
STYLE = {
    "figure.figsize": (6.4, 4.0),
    "figure.dpi": 100,
    "savefig.dpi": 100,
    "savefig.bbox": "tight",
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "legend.fontsize": 9,
    "legend.frameon": False,
    "lines.linewidth": 1.8,
    "image.cmap": "viridis",
    # Opaque white figures: readable on the book's dark theme too (a
    # transparent PNG would put black axes on a dark page).
    "figure.facecolor": "white",
    "savefig.facecolor": "white",
    "savefig.transparent": False,
    "axes.prop_cycle": mpl.cycler(color=["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e",
                                         "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]),
}


def use_style() -> None:
    """Apply :data:`STYLE` to matplotlib (call once in a page's setup cell)."""
    mpl.rcParams.update(STYLE)


@contextmanager
def _style():
    with mpl.rc_context(STYLE):
        yield


def figure(ncols: int = 1, nrows: int = 1, *, width: float | None = None,
           height: float | None = None, **kw):
    """Create a figure in the book's style; returns ``(fig, axes)`` like ``plt.subplots``."""
    ncols = _checks.size(ncols, "ncols", maximum=100)
    nrows = _checks.size(nrows, "nrows", maximum=100)
    w = _checks.real(width, "width", positive=True, maximum=1000) if width is not None else 4.2 * ncols + 0.6
    h = _checks.real(height, "height", positive=True, maximum=1000) if height is not None else 3.4 * nrows
    with _style():
        return plt.subplots(nrows, ncols, figsize=(w, h), **kw)


def quiet() -> bool:
    """True when progress bars must stay hidden (``MFLIB_QUIET=1``: book build, tests)."""
    return os.environ.get("MFLIB_QUIET", "").strip().lower() in {"1", "true", "yes", "on"}


def progress(iterable, **kwargs):
    """Wrap ``iterable`` in a ``tqdm.auto`` progress bar, unless :func:`quiet`."""
    if quiet():
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is optional
        return iterable
    return tqdm(iterable, **kwargs)


def fig_to_png(fig, *, close: bool = True) -> bytes:
    """Render a matplotlib figure to PNG bytes (and close it by default)."""
    from matplotlib.figure import Figure

    _checks.instance(fig, Figure, "fig")
    close = _checks.flag(close, "close")
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    if close:
        plt.close(fig)
    return buf.getvalue()


def _check_axes(axes: dict) -> dict:
    if not isinstance(axes, dict) or not axes:
        raise TypeError("axes must be a non-empty dict mapping a parameter name to a list of values")
    out = {}
    for name, values in axes.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"axes keys must be parameter names, got {name!r}")
        if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
            raise TypeError(f"axes[{name!r}] must be a list of values, got {type(values).__name__}")
        values = list(values)
        if not values:
            raise ValueError(f"axes[{name!r}] must hold at least one value")
        out[name] = values
    return out


class InteractiveHTML:
    """Self-contained interactive HTML with a representative still frame.

    Displayed, it offers ``text/html`` (the interactive figure) and
    ``image/png`` (the still frame); each front end picks the richest type it
    can show: the HTML book the former, the PDF the latter.
    """

    def __init__(self, html: str, png: bytes | None):
        #: The interactive figure, self-contained HTML.
        self.data = html
        #: The still frame, PNG bytes (None when there is none).
        self.png = png

    def _repr_html_(self):
        return self.data

    def _repr_png_(self):
        return self.png

    def __repr__(self):
        return f"<{type(self).__name__}: {len(self.data)} characters of HTML>"


def static_explorer(render, axes: dict, *, title: str = "", fmt=str):
    """Render ``render(**params)`` for every combination of ``axes`` into one
    self-contained HTML widget with a slider per parameter.

    Parameters
    ----------
    render : callable
        ``render(**params)`` returns a matplotlib figure.
    axes : dict
        Maps each parameter name to the list of its values (the slider stops).
    title : str
        A line shown above the sliders.
    fmt : callable
        Formats a value for the slider's label.

    Returns
    -------
    InteractiveHTML
        Images and inline JavaScript only (``.data``): it works in the static
        book with no kernel, no network and no widget manager; its still frame
        (``.png``) is the first combination, the one the page shows on load.
    """
    from matplotlib.figure import Figure

    _checks.function(render, "render")
    axes = _check_axes(axes)
    _checks.string(title, "title")
    _checks.function(fmt, "fmt")
    names = list(axes)
    n_frames = 1
    for n in names:
        n_frames *= len(axes[n])
    if n_frames > 10_000:
        raise ValueError(f"axes give {n_frames} combinations, more than the 10000 a static "
                         f"explorer can embed")
    labels = {n: [fmt(v) for v in axes[n]] for n in names}
    for n, ls in labels.items():
        if not all(isinstance(v, str) for v in ls):
            raise TypeError(f"fmt must return a str, got {type(ls[0]).__name__} for axes[{n!r}]")
    images = []
    for combo in itertools.product(*(range(len(axes[n])) for n in names)):
        fig = render(**{n: axes[n][i] for n, i in zip(names, combo)})
        if not isinstance(fig, Figure):
            raise TypeError(f"render must return a matplotlib Figure, got {type(fig).__name__}")
        images.append(base64.b64encode(fig_to_png(fig)).decode("ascii"))
    uid = "mfx" + hashlib.sha1("".join(images[:2]).encode() + title.encode()).hexdigest()[:10]
    strides, s = [], 1
    for n in reversed(names):
        strides.insert(0, s)
        s *= len(axes[n])
    sliders = "".join(
        f'<label style="display:block;margin:2px 0">{n} = <b id="{uid}-v{k}">{fmt(axes[n][0])}</b><br>'
        f'<input type="range" min="0" max="{len(axes[n]) - 1}" value="0" step="1" '
        f'id="{uid}-s{k}" data-labels=\'{_json([fmt(v) for v in axes[n]])}\' '
        f'style="width:min(420px,90%)" aria-label="{n}"></label>'
        for k, n in enumerate(names))
    imgs = "".join(
        f'<img src="data:image/png;base64,{b}" class="{uid}-img" data-idx="{i}" '
        f'style="max-width:100%;display:{"block" if i == 0 else "none"}" alt="{title} frame {i}">'
        for i, b in enumerate(images))
    script = f"""<script>(function(){{
  var strides={strides}, n={len(names)};
  function show(){{
    var idx=0;
    for(var k=0;k<n;k++){{
      var s=document.getElementById("{uid}-s"+k); var v=parseInt(s.value);
      idx+=v*strides[k];
      document.getElementById("{uid}-v"+k).textContent=JSON.parse(s.dataset.labels)[v];
    }}
    document.querySelectorAll("img.{uid}-img").forEach(function(im){{
      im.style.display=(parseInt(im.dataset.idx)===idx)?"block":"none";}});
  }}
  for(var k=0;k<n;k++){{document.getElementById("{uid}-s"+k).addEventListener("input",show);}}
}})();</script>"""
    head = f'<div class="mflib-explorer" id="{uid}"><p><em>{title}</em></p>' if title else \
        f'<div class="mflib-explorer" id="{uid}">'
    return InteractiveHTML(head + sliders + imgs + "</div>" + script, base64.b64decode(images[0]))


def _json(values) -> str:
    import json

    return json.dumps(values).replace("'", "&#39;")


def live_explorer(render, axes: dict):
    """Live twin of :func:`static_explorer`: ipywidgets sliders over the same
    ``axes`` calling the same ``render`` (needs a running kernel).

    When the notebook is executed without a reader (:func:`quiet`: the book
    build, the test suite), no widget is created: ``render`` is called once,
    at the first value of every axis, so that its code is still exercised,
    and ``None`` is returned. Widgets are useless there (the static book
    shows :func:`static_explorer`), and a cell that opens widget comms can
    leave the notebook executor waiting for messages that never come
    (jupyter/nbclient#312).
    """
    _checks.function(render, "render")
    axes = _check_axes(axes)
    if quiet():
        plt.close(render(**{n: v[0] for n, v in axes.items()}))
        return None

    import ipywidgets as widgets
    from IPython.display import display

    def _show(**params):
        fig = render(**params)
        display(fig)
        plt.close(fig)

    controls = {n: widgets.SelectionSlider(options=v, value=v[0], description=n,
                                           continuous_update=False)
                for n, v in axes.items()}
    return widgets.interactive(_show, **controls)


def animation_html(fig, update, frames: int, *, interval: int = 120):
    """Render ``FuncAnimation(fig, update, frames)`` as self-contained HTML
    (matplotlib's ``to_jshtml``: play, pause and a frame slider, no kernel).

    Parameters
    ----------
    fig : matplotlib.figure.Figure
    update : callable
        ``update(i)`` draws frame ``i``.
    frames : int
        Number of frames (at least 1).
    interval : int
        Milliseconds between frames.

    Returns
    -------
    InteractiveHTML
        The player (``.data``), its buttons drawn as inline SVG; its still
        frame (``.png``) is the last frame of the animation.
    """
    from matplotlib import animation
    from matplotlib.figure import Figure

    _checks.instance(fig, Figure, "fig")
    _checks.function(update, "update")
    frames = _checks.size(frames, "frames", maximum=10_000)
    interval = _checks.size(interval, "interval", maximum=10 ** 6)
    anim = animation.FuncAnimation(fig, update, frames=frames, interval=interval)
    with mpl.rc_context({"animation.embed_limit": 200.0}):
        html = anim.to_jshtml(default_mode="once")
    plt.close(fig)
    return InteractiveHTML(_offline_controls(html), _last_frame(html))


def _last_frame(html: str) -> bytes | None:
    import re

    frames = re.findall(r'frames\[\d+\] = "data:image/png;base64,([^"]*)"', html)
    return base64.b64decode(frames[-1].replace("\\\n", "")) if frames else None


# matplotlib's player draws its buttons with Font Awesome from a CDN; the book
# must read offline, and Unicode media glyphs (U+23EE, ...) are missing from
# common fonts, so the stylesheet link is dropped and each icon is drawn as a
# small inline SVG in the button's text colour (the buttons keep matplotlib's
# title and aria-label).
_ICONS = {
    "fa fa-fast-backward": "M15 2L9 8L15 14ZM9 2L3 8L9 14ZM1 2H3V14H1Z",
    "fa fa-step-backward": "M14 2L6 8L14 14ZM2 2H5V14H2Z",
    "fa fa-play fa-flip-horizontal": "M12 2L3 8L12 14Z",
    "fa fa-pause": "M3 2H7V14H3ZM9 2H13V14H9Z",
    "fa fa-play": "M4 2L13 8L4 14Z",
    "fa fa-step-forward": "M2 2L10 8L2 14ZM11 2H14V14H11Z",
    "fa fa-fast-forward": "M1 2L7 8L1 14ZM7 2L13 8L7 14ZM13 2H15V14H13Z",
    "fa fa-minus": "M2 7H14V9H2Z",
    "fa fa-plus": "M2 7H14V9H2ZM7 2H9V14H7Z",
}


def _icon(path: str) -> str:
    return ('<svg class="mflib-icon" viewBox="0 0 16 16" width="14" height="14" aria-hidden="true" '
            'focusable="false" style="vertical-align:middle">'
            f'<path fill="currentColor" d="{path}"/></svg>')


def _offline_controls(html: str) -> str:
    import re

    html = re.sub(r'<link rel="stylesheet"\s*href="https?://[^"]*font-awesome[^"]*">', "", html)
    for cls, path in _ICONS.items():
        html = html.replace(f'<i class="{cls}"></i>', _icon(path))
    return html
