"""The claims mechanism (mflib.claims), the slope statistics behind claim
tolerances, and the rules every page follows: no number typed in the prose,
no hidden assert cells."""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path

import pytest
import torch

from mflib import claims, stats
from mflib._prose import typed_numbers

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted([*ROOT.glob("lectures/*.md"), *ROOT.glob("book/*.md")])
NOTEBOOKS = [p for p in PAGES if p.read_text(encoding="utf-8").startswith("---\njupytext:")]


def _kw(**extra):
    return dict(what="w", tolerance="t", source="s", **extra)


def test_claim_holds_and_records():
    claims.clear()
    c = claims.claim("k1", 0.98, predicted=1.0, atol=0.05, **_kw())
    assert c.passed and c.kind == "value" and (c.lower, c.upper) == (0.95, 1.05)
    assert claims.ledger() == [c]
    assert c.to_json()["kind"] == "value"


def test_claim_fails_outside_interval_and_on_nan():
    with pytest.raises(claims.ClaimFailed, match="k2"):
        claims.claim("k2", 1.2, predicted=1.0, rtol=0.1, **_kw())
    with pytest.raises(claims.ClaimFailed):
        claims.claim("k3", float("nan"), upper=1.0, **_kw())
    with pytest.raises(claims.ClaimFailed):
        claims.claim("k4", 3.0, lower=0.0, upper=2.0, **_kw())


def test_claim_with_fit_uses_its_standard_error():
    fit = stats.SlopeFit(value=-0.9, se=0.05, intercept=0.0, n=8)
    c = claims.claim("k5", fit, predicted=-1.0, sigmas=3, **_kw())
    assert c.passed and math.isclose(c.upper - c.lower, 0.3)
    with pytest.raises(claims.ClaimFailed):
        claims.claim("k6", fit, predicted=-1.0, sigmas=1, **_kw())


def test_one_sided_kinds():
    assert claims.claim("k7", 0.1, upper=0.2, **_kw()).kind == "upper bound"
    assert claims.claim("k8", 0.3, lower=0.2, **_kw()).kind == "lower bound"
    assert claims.claim("k9", 0.3, lower=0.2, upper=0.4, **_kw()).kind == "interval"


@pytest.mark.parametrize("kwargs, exc, word", [
    (dict(predicted=1.0), ValueError, "tolerance"),            # no tolerance
    (dict(), ValueError, "predicted"),                         # nothing to check against
    (dict(upper=1.0, atol=0.1), ValueError, "predicted"),      # atol without a centre
    (dict(predicted=1.0, sigmas=3), ValueError, "se"),         # sigmas without se
    (dict(predicted=1.0, atol=-1), ValueError, "atol"),
    (dict(predicted=float("inf"), atol=1), ValueError, "predicted"),
    (dict(lower=2.0, upper=1.0), ValueError, "interval"),
])
def test_malformed_claims_are_refused(kwargs, exc, word):
    with pytest.raises(exc, match=word):
        claims.claim("bad", 0.5, **_kw(**kwargs))


@pytest.mark.parametrize("key", ["", "a b", "a:b", 3])
def test_bad_keys(key):
    with pytest.raises((TypeError, ValueError), match="key"):
        claims.claim(key, 0.5, upper=1.0, **_kw())


def test_claim_texts_required():
    with pytest.raises(ValueError, match="tolerance"):
        claims.claim("k", 0.5, upper=1.0, what="w", tolerance=" ", source="s")
    with pytest.raises(TypeError, match="value"):
        claims.claim("k", "0.5", upper=1.0, **_kw())
    with pytest.raises(ValueError, match="value"):
        claims.claim("k", torch.ones(2), upper=1.0, **_kw())


def test_parameter_returns_value():
    assert claims.parameter("m", 20, what="width") == 20
    assert claims.parameter("x", torch.tensor(2.5)) == 2.5


def test_slope_fit_and_standard_error():
    x = torch.tensor([1.0, 2, 4, 8, 16])
    exact = stats.slope_fit(x, 3 * x ** -0.5)
    assert math.isclose(exact.value, -0.5, abs_tol=1e-12) and exact.se < 1e-6
    g = torch.Generator().manual_seed(0)
    noisy = [stats.slope_fit(x, x ** -0.5 * torch.exp(0.05 * torch.randn(5, generator=g))) for _ in range(400)]
    spread = torch.tensor([f.value for f in noisy]).std()
    mean_se = torch.tensor([f.se for f in noisy]).mean()
    assert 0.7 < float(mean_se / spread) < 1.3   # the OLS standard error is calibrated


def test_slope_over_repeats():
    x = torch.tensor([1.0, 2, 4, 8])
    y = torch.stack([x ** -1.0 * (1 + 0.01 * k) for k in range(4)])
    fit = stats.slope_over_repeats(x, y)
    assert math.isclose(fit.value, -1.0, abs_tol=1e-12) and fit.n == 4
    with pytest.raises(ValueError, match="y"):
        stats.slope_over_repeats(x, y[:1])


@pytest.mark.parametrize("x, y, word", [
    ([2, 2, 2, 2], [1, 2, 3, 4], "constant"),
    ([1, 2], [1, -1], "y"),
    ([1], [1], "x"),
    ([1, 2, 3], [1, 2], "y"),
])
def test_slope_fit_refuses(x, y, word):
    with pytest.raises(ValueError, match=word):
        stats.slope_fit(x, y)


def test_estimate():
    e = stats.estimate([1.0, 2.0, 3.0])
    assert e.value == 2.0 and math.isclose(e.se, 1 / math.sqrt(3))
    with pytest.raises(ValueError, match="samples"):
        stats.estimate([1.0])


def test_prose_scanner():
    page = "\n".join([
        "---", "jupytext: x", "---", "# Title 12", "",
        "We ran 838 steps, Lecture 4 and Theorem 3.2 say so (2019).",
        "Inline $m=20$ math and `code 55` and {glue:text}`k:.2f` are fine.",
        "```{code-cell} ipython3", "x = 123", "```",
        "% typed-numbers: a figure from the literature",
        "ResNet reaches 78.3 %.",
        "````{exercise}", ":label: ex-1", "Show that 0.5 is optimal.", "```python", "y = 77", "```", "````",
        "$$", "a = 99", "$$",
    ])
    found = [(n, tok) for n, tok, _ in typed_numbers(page)]
    assert found == [(6, "838"), (15, "0.5")]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.stem)
def test_no_number_typed_in_the_prose(page):
    """Results are claims and parameters are glued: no number of two or more
    digits is typed in a page's prose (see CONTRIBUTING.md)."""
    found = typed_numbers(page.read_text(encoding="utf-8"))
    assert not found, "numbers typed by hand (glue them, or exempt with '% typed-numbers: <reason>'):\n" + \
        "\n".join(f"  {page.name}:{n}: {tok!r} in: {line[:100]}" for n, tok, line in found)


@pytest.mark.parametrize("page", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_hidden_asserts(page):
    """Results are stated through mflib.claims, never by a hidden assert."""
    import jupytext

    nb = jupytext.read(page)
    bad = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"
           and re.search(r"^\s*assert\b", c.source, flags=re.M)]
    assert not bad, f"{page.name}: assert statements in code cells {bad}: state them with mflib.claims.claim"


def test_ledger_extension_reads_prose_keys():
    sys.path.insert(0, str(ROOT / "book" / "_ext"))
    import mflib_claims

    src = "Text {glue:text}`a:.2f` and {glue:text}`b`.\n```{code-cell} ipython3\nglue('c', 1)  # {glue:text}`c`\n```\n{glue:text}`a`"
    assert mflib_claims._prose_paste_keys(src) == ["a", "b", "a"]


@pytest.mark.parametrize("text", [r"error \eta small", "rate m^{-1/2}", "K_{0,inf}", "unbalanced $x"])
def test_claim_texts_keep_tex_inside_math(text):
    with pytest.raises(ValueError, match="what"):
        claims.claim("k", 0.5, upper=1.0, what=text, tolerance="t", source="s")
    c = claims.claim("k", 0.5, upper=1.0, what="rate $m^{-1/2}$ with {prf:ref}`thm-x_{y}`", tolerance="t",
                     source="s")
    assert c.passed
