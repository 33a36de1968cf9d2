"""Math answers: the last \\boxed{} of the final part, checked for equivalence with math-verify.

Equivalence, not string equality: 1/2, 0.5, \\frac{1}{2} and \\dfrac12 are one answer; so are
3 and 3.0, or {1,2} and {2,1}. Plain string comparison is only the fallback when math-verify
cannot parse one side at all.
"""

from __future__ import annotations

import logging
import re
import threading

from . import GradeResult, final_part, unfinished_thinking

log = logging.getLogger("svd_hpc")

# \boxed and \fbox, but not a longer command such as \boxedtext.
_BOXED = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_MATH_VERIFY_TIMEOUT_S = 5


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


def grade_math(response: str, reference: str) -> GradeResult:
    """Correct when the last boxed answer of the final part is equivalent to `reference`.

    Never raises: a grader failure is an incorrect answer whose reason says why.
    """
    if unfinished_thinking(response):
        return GradeResult(False, None, "unfinished_thinking")
    extracted = last_boxed(final_part(response))
    if extracted is None:
        return GradeResult(False, None, "no_boxed")
    reference = _strip_reference(reference)
    try:
        gold, predicted = _parse(reference), _parse(extracted)
        if gold and predicted:
            correct = _verify(gold, predicted)
            return GradeResult(correct, extracted, "correct" if correct else "wrong_answer")
    except Exception as exc:  # noqa: BLE001  sympy can fail in many ways on model output
        log.debug(f"math-verify failed: {extracted=} {reference=} {exc!r}")
        return GradeResult(False, extracted, "grader_error", f"{type(exc).__name__}: {exc}")
    correct = _normalise(extracted) == _normalise(reference)
    return GradeResult(correct, extracted, "correct" if correct else "wrong_answer",
                       "math-verify could not parse; compared as text")


def _strip_reference(reference: str) -> str:
    # Datasets store references as "5", "$5$" or "\boxed{5}".
    boxed = last_boxed(reference)
    return (boxed if boxed is not None else reference).strip().strip("$").strip()


def _timeout_s() -> int | None:
    # math-verify times out with SIGALRM, which Python only allows on the main thread; off
    # it (a thread pool of graders) the timeout must be off or every call raises.
    return _MATH_VERIFY_TIMEOUT_S if threading.current_thread() is threading.main_thread() else None


def _parse(expression: str):
    from math_verify import parse  # imported late: sympy takes a second to load

    return parse(f"${expression}$", parsing_timeout=_timeout_s())


def _verify(gold, predicted) -> bool:
    from math_verify import verify

    return bool(verify(gold, predicted, timeout_seconds=_timeout_s()))


def _normalise(answer: str) -> str:
    answer = re.sub(r"\\(?:left|right|!|,|;|:|quad|qquad)", "", answer)
    answer = re.sub(r"\\text\{([^{}]*)\}", r"\1", answer)
    return re.sub(r"\s+", "", answer).rstrip(".").lower()
