"""Multiple-choice answers (GPQA Diamond, HLE multiple choice): option order, one letter.

Option orders (`option_order`): seeded shuffles once per (eval seed, question), so the correct
option is not always at one letter and the same seed gives the same order in every process and
run; fixed42 is the authors' GPQA order (evalchemy GPQADiamond/eval_instruct.py re-seeds
Random(42) for every question, which puts the correct option, listed first, at D every time);
original keeps the dataset's order (the authors' HLE).
"""

from __future__ import annotations

import random
import re
import string

from ...sampling.answers import last_boxed
from . import GradeResult, final_part, unfinished_thinking

LETTERS = string.ascii_uppercase


def shuffle_options(options: list[str], correct_index: int, seed: int, question_id: str) -> tuple[list[str], str]:
    """The options in a fixed pseudo-random order for (seed, question_id), and the correct letter."""
    if not 0 <= correct_index < len(options) <= len(LETTERS):
        raise ValueError(f"question {question_id}: correct_index {correct_index} outside {len(options)} options")
    # A string seed is hashed with SHA-512 by random.Random: stable across processes and
    # Python versions, unlike hash(), which is salted per process.
    order = list(range(len(options)))
    random.Random(f"{seed}:{question_id}").shuffle(order)
    return [options[i] for i in order], LETTERS[order.index(correct_index)]


def authors_order(options: list[str], correct_index: int) -> tuple[list[str], str]:
    """The authors' GPQA order: `Random(42).shuffle` of the options, the same for every question."""
    order = list(range(len(options)))
    random.Random(42).shuffle(order)
    return [options[i] for i in order], LETTERS[order.index(correct_index)]


def order_options(
    options: list[str], correct_index: int, rule: str, seed: int, question_id: str
) -> tuple[list[str], str]:
    """The options in the order `rule` shows them (seeded | fixed42 | original), and the correct letter."""
    if rule == "seeded":
        return shuffle_options(options, correct_index, seed, question_id)
    if rule == "fixed42":
        return authors_order(options, correct_index)
    if rule == "original":
        return list(options), LETTERS[correct_index]
    raise ValueError(f"unknown option order '{rule}'; choose seeded, fixed42 or original.")


def format_choice_question(question: str, options: list[str]) -> str:
    lines = [f"{LETTERS[i]}) {option.strip()}" for i, option in enumerate(options)]
    return question.rstrip() + "\n\n" + "\n".join(lines)


def extract_letter(text: str, n_options: int) -> str | None:
    """The answer letter of a response, or None.

    Looks only at the final part (after the last `</think>`). Precedence, each step taking
    its LAST match and only a letter among the first `n_options`:
    1. the last `\\boxed{X}` (also `\\boxed{(X)}`, `\\boxed{\\text{X}}`, `\\boxed{X) text}`);
    2. the last "answer is X" / "Answer: X" / "answer: (X)" (upper-case X, standing alone);
    3. on the last non-empty line: the line is just the letter ("C", "(C)", "**C.**"), or ends
       with "(C)", or starts with "C)" / "(C)" restating an option.
    Capitals inside words, or as an article ("A cat"), are never taken.
    """
    valid = LETTERS[:n_options]
    final = final_part(text)
    boxed = last_boxed(final)
    if boxed is not None:
        letter = _letter_of(boxed, valid)
        if letter:
            return letter
    plain = _strip_markup(final)
    stated = [m.group(1) for m in _ANSWER_IS.finditer(plain) if m.group(1) in valid]
    if stated:
        return stated[-1]
    lines = [line.strip() for line in plain.splitlines() if line.strip()]
    if lines:
        for pattern in _LAST_LINE:
            m = pattern.search(lines[-1])
            if m and m.group(1) in valid:
                return m.group(1)
    return None


# HLE (the authors' evalchemy HLE/testing_utils.py): the first "Answer: X" (any case, X may be
# boxed or braced); ours also requires X to stand alone, where theirs reads "Answer: The..." as T
_FIRST_ANSWER = re.compile(r"(?:Exact\s+)?Answer:\s*(?:\\boxed)?\{?([A-Z])\}?(?![A-Za-z])", re.IGNORECASE)
_CAPITAL = re.compile(r"(?<![A-Z])([A-Z])(?![A-Z])")


def first_answer_letter(text: str, n_options: int) -> str | None:
    """The letter of the first "Answer: X" of the final part, else its last standalone letter
    (upper-cased, as the authors' HLE check does); only a letter among the first `n_options`."""
    valid = LETTERS[:n_options]
    final = final_part(text)
    m = _FIRST_ANSWER.search(final)
    if m and m.group(1).upper() in valid:
        return m.group(1).upper()
    letters = [x for x in _CAPITAL.findall(final.upper()) if x in valid]
    return letters[-1] if letters else None


LETTER_RULES = {"last": extract_letter, "first_answer": first_answer_letter}


def grade_choice(response: str, correct_letter: str, n_options: int, rule: str = "last") -> GradeResult:
    """Correct when the response's letter is the correct one.

    `rule` reads the letter: "last" (ours) or "first_answer" (the authors' HLE).
    """
    if unfinished_thinking(response):
        return GradeResult(False, None, "unfinished_thinking")
    letter = LETTER_RULES[rule](response, n_options)
    if letter is None:
        return GradeResult(False, None, "no_letter")
    correct = letter == correct_letter.strip().upper()
    return GradeResult(correct, letter, "correct" if correct else "wrong_answer")


# "answer is (C)", "Answer: C", "final answer: C.", "answer is option C"; the letter must not
# continue into a word ("Answer: Carbon" is no letter).
_ANSWER_IS = re.compile(r"(?i:answer\s*(?:is|:)\s*:?\s*(?:option\s+|choice\s+)?)\(?([A-Z])\)?(?![A-Za-z0-9])")
_LAST_LINE = (
    re.compile(r"^\(?([A-Z])\)?\.?$"),  # the whole line is the letter
    re.compile(r"\(([A-Z])\)\.?$"),  # ends with "(C)"
    re.compile(r"^\(?([A-Z])\)\s"),  # "C) 42": restating the chosen option
)


def _letter_of(boxed: str, valid: str) -> str | None:
    content = re.sub(r"\\(?:text|textbf|mathrm|mathbf)\{([^{}]*)\}", r"\1", boxed).strip()
    m = re.match(r"^\(?([A-Z])\)?(?:$|[\s.:)])", content)
    return m.group(1) if m and m.group(1) in valid else None


def _strip_markup(text: str) -> str:
    text = re.sub(r"\\(?:text|textbf|mathrm|mathbf)\{([^{}]*)\}", r"\1", text)
    return re.sub(r"[*_`$]", "", text)
