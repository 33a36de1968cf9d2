"""One copy of the text rules every stage reads answers by: the text after the thinking, boxed answers.

The static filter at generate, the judges at verify and the graders at eval all read a reply
through these functions, so a reply the filter passes is read the same way when it is graded.
"""

from __future__ import annotations

import re

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


def after_think(text: str) -> str:
    """The answer part of a reply: what follows the last `</think>`; all of `text` without a think block.

    A think block opened and never closed (the reply was cut off while reasoning) leaves only what
    came before it, usually nothing: a \\boxed{} in a draft is no answer.
    """
    if THINK_CLOSE in text:
        return text.rsplit(THINK_CLOSE, 1)[1]
    return text.split(THINK_OPEN, 1)[0]


# \boxed and \fbox, but not a longer command such as \boxedtext.
_BOXED = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")


def last_boxed(text: str) -> str | None:
    """Content of the last well-formed \\boxed{...} (or \\fbox{...}, or `\\boxed 5`) in `text`."""
    for match in reversed(list(_BOXED.finditer(text))):
        content = _argument(text, match.end())
        if content is not None:
            return content.strip()
    return None


def _argument(text: str, start: int) -> str | None:
    i = start
    while i < len(text) and text[i] in " \t":
        i += 1
    if i >= len(text):
        return None
    if text[i] != "{":
        # `\boxed 5`: TeX takes the next token; we take up to whitespace or a closing $.
        token = re.match(r"[^\s$]+", text[i:]) if i > start else None
        return token.group(0) if token else None
    depth = 0
    j = i
    while j < len(text):
        ch = text[j]
        if ch == "\\":
            j += 2  # \{ and \} are literal braces (sets), not grouping
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j]
        j += 1
    return None  # unbalanced: the response was cut off inside the box
