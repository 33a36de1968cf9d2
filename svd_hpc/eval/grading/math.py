"""Math answers: the last \\boxed{} of the final part, checked for equivalence with math-verify.

Equivalence, not string equality: 1/2, 0.5, \\frac{1}{2} and \\dfrac12 are one answer; so are
3 and 3.0, or {1,2} and {2,1}. Plain string comparison is only the fallback when math-verify
cannot parse one side at all.
"""

from __future__ import annotations

import logging
import re
import threading

from ...sampling.answers import last_boxed
from . import GradeResult, final_part, unfinished_thinking

log = logging.getLogger("svd_hpc")

_MATH_VERIFY_TIMEOUT_S = 5


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
    return GradeResult(
        correct, extracted, "correct" if correct else "wrong_answer", "math-verify could not parse; compared as text"
    )


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
