"""Answer checks for the eval stage (METHOD.md, stage 5): math, multiple choice, code.

Each domain lives in its own module (`grading.math`, `grading.choice`, `grading.code`) and
returns a GradeResult. Importing this package stays cheap: math-verify (and sympy) load on the
first math grade, the sandbox only runs when code is graded.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...sampling.answers import after_think as final_part  # noqa: F401  (the graders read only the answer part)


@dataclass(frozen=True)
class GradeResult:
    correct: bool
    extracted: str | None  # the answer taken from the response: a boxed expression, a letter, code
    reason: str  # "correct", or why not: "wrong_answer", "no_boxed", "no_letter", "no_code", "timeout", ...
    detail: str = ""  # human-readable context for the reason (which test failed, what was printed)


def unfinished_thinking(response: str) -> bool:
    """True when the response opened a think block and never closed it (usually cut at max tokens)."""
    return "<think>" in response and "</think>" not in response
