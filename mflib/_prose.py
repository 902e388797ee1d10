"""Numbers typed in the prose of a page (used by the book's tests).

A page states no result by hand: every number in its Markdown text is either
pasted from the code (``{glue:text}`key```, a claim or a declared parameter)
or one of the few kinds of numbers that are not results: labels and
references (Lecture 4, Theorem 3, Fig. 5, eq. (2)), years, and numbers that
are part of mathematics or of a name (inside ``$...$``, in code, in a role's
target, in a citation key).  :func:`typed_numbers` lists the others.
"""

from __future__ import annotations

import re

__all__ = ["typed_numbers", "prose_lines"]

_FENCE = re.compile(r"^\s*(```+|~~~+|:::+)")
_MATH_BLOCK = re.compile(r"\$\$.*?\$\$", re.S)
_MATH_INLINE = re.compile(r"\$[^$]+\$")
_ROLE = re.compile(r"\{[\w:.-]+\}`[^`]*`")
_CODE = re.compile(r"``?[^`]+``?")
_LINK = re.compile(r"\]\([^)]*\)|<https?://[^>]*>|https?://\S+")
_TARGET = re.compile(r"^\s*\([\w:.-]+\)=\s*$")
_LABELWORD = (r"(?:Lectures?|Theorems?|Thm\.?|Figs?\.?|Figures?|Sections?|Sec\.?|Chapters?|Remarks?|"
              r"Corollar(?:y|ies)|Lemmas?|Propositions?|Prop\.?|Appendix|Tables?|Eqs?\.?|"
              r"Equations?|Definitions?|Assumptions?|Algorithms?|Examples?|Exercises?|Items?|"
              r"Steps?|Parts?|Experiment|page|pp\.?|p\.|Part)")
_NUMBER = re.compile(r"(?<![\w.])[-−]?\d[\d\u2009\u202f ,]*(?:\.\d+)?(?:[eE][-+]?\d+)?%?(?![\w])")


def prose_lines(source: str):
    """``(line_number, text)`` of the Markdown prose of a MyST page: code
    cells, fenced blocks (math, code, directives' option lines), front matter
    and targets removed; directive bodies (theorems, exercises) kept."""
    lines = source.splitlines()
    out, i = [], 0
    if lines and lines[0].strip() == "---":  # front matter
        i = 1
        while i < len(lines) and lines[i].strip() != "---":
            i += 1
        i += 1
    stack: list[tuple[str, int, bool]] = []  # open fences: (char, length, skipped)
    for n in range(i, len(lines)):
        line = lines[n]
        m = _FENCE.match(line)
        if m:
            mark = m.group(1)
            info = line.strip()[len(mark):].strip()
            if stack and not info and mark[0] == stack[-1][0] and len(mark) >= stack[-1][1]:
                stack.pop()
                continue
            if info or not stack or mark[0] != stack[-1][0]:
                skip = (info.startswith(("{code-cell}", "{math}", "{glue:", "{nb-exec-table}",
                                         "{claims-table}", "{bibliography}", "{eval-rst}",
                                         "{automodule}", "{toctree}"))
                        or not info.startswith("{"))  # a plain code block (```python)
                stack.append((mark[0], len(mark), skip))
                continue
        if any(skip for _, _, skip in stack):
            continue
        if stack and line.lstrip().startswith(":") and re.match(r"^\s*:[\w-]+:", line):
            continue  # a directive option
        if _TARGET.match(line):
            continue
        out.append((n + 1, line))
    return out


def typed_numbers(source: str) -> list[tuple[int, str, str]]:
    """Numbers typed by hand in the prose of a MyST page.

    Returns ``(line_number, number, line)`` for each number of two or more
    digits, or with a decimal point, exponent or percent sign, found in the
    prose outside mathematics, code, roles, links, labels and references
    (``Lecture 4``), and years in citations.  Single digits ("two layers",
    "step 3") are not results and are not listed.  A line that must quote a
    number (a figure from the literature, say) is exempted by a MyST comment
    line just above it, ``% typed-numbers: <reason>``.
    """
    prose = prose_lines(source)
    text = "\n".join(line for _, line in prose)
    blank = lambda m: re.sub(r"[^\n]", " ", m.group(0))  # noqa: E731 - keep line structure
    text = _MATH_BLOCK.sub(blank, text)
    text = _MATH_INLINE.sub(blank, text)
    found = []
    exempt = False
    for (n, raw), line in zip(prose, text.split("\n")):
        if raw.lstrip().startswith("% typed-numbers:"):
            exempt = True  # the next line is exempt, with the reason given
            continue
        if exempt:
            exempt = False
            continue
        clean = line
        clean = _ROLE.sub(" ", clean)
        clean = _CODE.sub(" ", clean)
        clean = _LINK.sub(" ", clean)
        clean = re.sub(_LABELWORD + r"[\s~]*\(?\d+(?:\.\d+)*\)?(?:\s*(?:,|and|or|to|–|-)\s*\(?\d+(?:\.\d+)*\)?)*",
                       " ", clean)
        clean = re.sub(r"\b(1[89]|20)\d\d[a-z]?\b", " ", clean)  # years
        clean = re.sub(r"^\s*#+\s.*$", " ", clean)  # headings (labels of sections)
        for m in _NUMBER.finditer(clean):
            tok = m.group(0).strip().rstrip(",")
            digits = re.sub(r"\D", "", tok)
            if len(digits) >= 2 or "." in tok or "%" in tok or "e" in tok.lower():
                found.append((n, tok, line.strip()))
    return found
