"""Every text the model is asked, and how its answers are read: domain instructions, the static
filter, the judge prompts of the verification cascade, and verdict parsing.

Judge prompts open with their fixed instruction, so every request of a stage shares that prefix
in vLLM's prefix cache; the per-candidate text (question, answer) comes last. Judges only ever see
the final answer part of a candidate (`final_answer`), never its think block.
"""

from __future__ import annotations

import re

from .records import VOTE_NO, VOTE_NONE, VOTE_YES

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"

DOMAIN_INSTRUCTIONS = {
    "math": "Work through the problem step by step, then write the final answer inside \\boxed{}.",
    "science": "Reason through the question step by step, then end with the line 'Answer: X', "
    "where X is the letter of the correct option.",
    "code": "Explain your approach briefly, then give the complete solution as one fenced code block.",
}


def user_prompt(question: str, domain: str) -> str:
    """The user turn of a generation request: the question, a newline, the domain's instruction."""
    if domain not in DOMAIN_INSTRUCTIONS:
        raise ValueError(f"unknown domain '{domain}'; choose one of {', '.join(DOMAIN_INSTRUCTIONS)}.")
    return f"{question}\n{DOMAIN_INSTRUCTIONS[domain]}"


def final_answer(text: str) -> str:
    """The final answer part of a completion: the text after the last </think> (all of it if none)."""
    return text.rsplit(THINK_CLOSE, 1)[-1].strip()


_BOXED = re.compile(r"\\boxed\s*\{")
_FENCED = re.compile(r"```[^\n]*\n.*?```", re.DOTALL)


def filter_reason(text: str, domain: str, require_think: bool, require_format: bool = True) -> str | None:
    """Why the static filter rejects a candidate (None: it passes, and goes to the judges).

    A think block opened and never closed is rejected even when not required: its "answer"
    would be unfinished reasoning.
    """
    closed = THINK_CLOSE in text
    if not closed and (require_think or THINK_OPEN in text):
        return "unclosed_think"
    answer = final_answer(text)
    if not answer:
        return "empty_answer"
    if require_format and domain == "math" and not _BOXED.search(answer):
        return "no_boxed"
    if require_format and domain == "code" and not _FENCED.search(answer):
        return "no_code_block"
    return None


# ----------------------------------------------------------------------------- judge prompts
# Each prompt states its expected verdict format: a final [[Y]] or [[N]].

INFER_QUESTION = (
    "Below is an answer written in reply to some question. Work out the question this answer most "
    "likely replies to: its topic, its given facts and numbers, and what it asks for. "
    "Output only the question itself, with no preamble and no comment."
)

CYCLE_JUDGE = (
    "You compare two questions: an original question, and a question reconstructed only from an "
    "answer to it. Decide whether they ask the same thing: the same core topic, the same key "
    "facts, numbers and requirements, so that a full answer to one would also answer the other. "
    "Small differences of wording do not matter; a different quantity, condition or goal does.\n"
    "Finish with [[Y]] if they ask the same thing, or [[N]] if they do not."
)

FACTUALITY_JUDGE = (
    "You are an impartial reviewer checking an answer for errors of fact and reasoning. Look for "
    "wrong facts, numbers, formulas or dates; steps whose logic does not hold; explanations that "
    "mislead or leave out something essential; common misconceptions. Be strict about any "
    "calculation mistake or logical flaw; ignore typos and style. When a claim is plausible and "
    "you find no clear error in it, give it the benefit of the doubt.\n"
    "Finish with [[Y]] if the answer has no factual or logical errors, or [[N]] if it has any."
)

CORRECTNESS_JUDGE = (
    "You are an impartial examiner deciding whether an answer fully and correctly solves a "
    "question. First solve the question yourself, briefly. Then compare the answer with your "
    "solution. Reject the answer if it is partial or only sketches an approach, if it gives up or "
    "calls the problem open, if it lacks the detail needed to follow it, or if it contains any "
    "error. Accept it only if it is at least 95% correct and really answers what was asked. "
    "Check your decision a second time before you give it.\n"
    "Finish with [[Y]] if you accept the answer, or [[N]] if you reject it."
)


def infer_question_prompt(answer: str) -> str:
    """Cycle consistency, step (a): ask for the question behind an answer (the answer alone)."""
    return f"{INFER_QUESTION}\n\nAnswer:\n{answer}"


def cycle_judge_prompt(question: str, inferred: str) -> str:
    """Cycle consistency, step (b): the judge sees only the two questions."""
    return f"{CYCLE_JUDGE}\n\nOriginal question:\n{question}\n\nReconstructed question:\n{inferred}"


def factuality_prompt(question: str, answer: str) -> str:
    return f"{FACTUALITY_JUDGE}\n\nQuestion:\n{question}\n\nAnswer:\n{answer}"


def correctness_prompt(question: str, answer: str) -> str:
    return f"{CORRECTNESS_JUDGE}\n\nQuestion:\n{question}\n\nAnswer:\n{answer}"


JUDGE_PROMPTS = {"factuality": factuality_prompt, "correctness": correctness_prompt}


# ----------------------------------------------------------------------------- verdicts

_BRACKETED = re.compile(r"\[\[\s*([YN])\s*\]\]", re.IGNORECASE)
# a bare capital letter standing alone: lower-case y/n are too common as variables to count
_LETTER = re.compile(r"(?<![A-Za-z0-9_])([YN])(?![A-Za-z0-9_])")
_WORD = re.compile(r"(?<![A-Za-z0-9_])(yes|no)(?![A-Za-z0-9_])", re.IGNORECASE)


def strip_think(text: str) -> str:
    """A judge's output without its own reasoning: after the last </think>; an unclosed think
    block (the judge ran out of tokens while thinking) leaves only what came before it."""
    if THINK_CLOSE in text:
        return text.rsplit(THINK_CLOSE, 1)[1]
    return text.split(THINK_OPEN, 1)[0]


def parse_verdict(text: str) -> int:
    """VOTE_YES, VOTE_NO, or VOTE_NONE (a rejection) for one judge output.

    Precedence: the last [[Y]]/[[N]] (any case, spaces inside allowed); else the last standalone
    capital Y or N; else the last word yes/no (any case); else no verdict.
    """
    text = strip_think(text)
    for pattern in (_BRACKETED, _LETTER, _WORD):
        found = pattern.findall(text)
        if found:
            return VOTE_YES if found[-1][0].upper() == "Y" else VOTE_NO
    return VOTE_NONE
