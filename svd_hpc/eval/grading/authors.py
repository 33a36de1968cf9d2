"""The authors' answer readers (teetone/evalchemy), selectable per benchmark beside ours.

Each reads the whole reply, thinking included, as theirs does; none knows an unfinished think
block (a letter or a \\boxed{} in a cut-off draft counts). docs/PROTOCOL.md lists how each differs
from ours.
- authors_aime: AIME26/eval_instruct.py `extract_answer` and `is_equiv`: the last `\\boxed{}` of
  the reply, compared after hendrycks' string normalisation (`grading/hendrycks.py`), no algebra.
- authors_gpqa: GPQADiamond/testing_utils.py `get_multiple_choice_answer`: the last A–D standing
  alone as a word anywhere in the upper-cased reply, else the whole reply stripped.
- authors_hle: HLE/testing_utils.py `get_multiple_choice_answer`: the first "Answer: X" (any case,
  X may be boxed or braced, and may begin a word: "Answer: The" reads T), else the last capital
  letter standing alone in the upper-cased reply, else the whole reply stripped.
"""

from __future__ import annotations

import re

from . import GradeResult
from .hendrycks import is_equiv, last_boxed_only_string, remove_boxed


def aime_answer(response: str) -> str:
    """The authors' AIME answer: the last boxed expression, or "" when there is none."""
    try:
        return remove_boxed(last_boxed_only_string(response))
    except (AssertionError, TypeError):  # theirs: a bare except; None has no [:] -> TypeError
        return ""


def grade_authors_aime(response: str, reference: str) -> GradeResult:
    """Correct when `is_equiv(reference, last boxed answer)`, as evalchemy's AIME26 scores."""
    extracted = aime_answer(response)
    if not extracted:
        return GradeResult(False, None, "no_boxed")
    correct = is_equiv(str(reference), extracted)
    return GradeResult(correct, extracted, "correct" if correct else "wrong_answer")


_GPQA_LETTER = re.compile(r"\b(A|B|C|D)\b")


def gpqa_answer(response: str) -> str:
    """The authors' GPQA answer: the last standalone A–D of the upper-cased reply, else the reply."""
    letters = _GPQA_LETTER.findall(response.upper())
    pred = letters[-1] if letters else response.strip().strip(".")
    return pred.rstrip(".").rstrip("/")


_HLE_ANSWER = re.compile(r"(?:Exact\s+)?Answer:\s*(?:\\boxed)?\{?([A-Z])\}?", re.IGNORECASE)
_HLE_CAPITAL = re.compile(r"(?<![A-Z])([A-Z])(?![A-Z])")


def hle_answer(response: str) -> str:
    """The authors' HLE answer: the first "Answer: X", else the last lone capital, else the reply."""
    m = _HLE_ANSWER.search(response)
    if m:
        return m.group(1).upper()
    capitals = _HLE_CAPITAL.findall(response.upper())
    if capitals:
        return capitals[-1]
    return response.strip().rstrip(".").rstrip("/")


def grade_authors_letter(response: str, correct_letter: str, reader: str) -> GradeResult:
    """Correct when the authors' reader (`authors_gpqa` | `authors_hle`) returns the correct letter."""
    answer = {"authors_gpqa": gpqa_answer, "authors_hle": hle_answer}[reader](response)
    if len(answer) != 1:  # theirs falls back to the whole reply, which matches no letter
        return GradeResult(False, None, "no_letter", answer[:80])
    correct = answer == correct_letter.strip().upper()
    return GradeResult(correct, answer, "correct" if correct else "wrong_answer")
