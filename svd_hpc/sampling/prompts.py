"""Every text the model is asked, and how its answers are read: domain instructions, the static
filter, the judge prompts of the verification cascade, and verdict parsing.

Judge prompts open with their fixed instruction, so every request of a stage shares that prefix
in vLLM's prefix cache; the per-candidate text (question, answer) follows, and a short restatement
of the verdict format closes the prompt, so a judge reads the format last (as in the authors'
layout) without the shared prefix changing. Judges only ever see the final answer part of a
candidate (`final_answer`), never its think block.

prompts.style: authors swaps in the authors' own texts where they are public (the four judge
prompts, the math generation prompt), held here verbatim; the rest keeps ours. Their layout puts
the per-candidate text in the middle of the prompt, so under it only the text before the first
placeholder is shared between candidates.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from ..records import VOTE_NO, VOTE_NONE, VOTE_YES
from .answers import THINK_CLOSE, THINK_OPEN, after_think, last_boxed

if TYPE_CHECKING:
    from ..config import RunConfig
    from .engine import Engine

DOMAIN_INSTRUCTIONS = {
    "math": "Work through the problem step by step, then write the final answer inside \\boxed{}.",
    # a science question shows its options (then the answer is a letter) or asks for a free-form answer
    "science": "Reason through the question step by step, then write the final answer inside \\boxed{}.",
    "code": "Explain your approach briefly, then give the complete solution as one fenced code block.",
}
SCIENCE_CHOICE_INSTRUCTION = (
    "Reason through the question step by step, then end with the line 'Answer: X', "
    "where X is the letter of the correct option."
)

# an option line: "A) text", "(B) text", "C. text", "D: text"
_OPTION_LINE = re.compile(r"^\s*\(?([A-Z])[).:]\s+\S", re.MULTILINE)


def shows_options(question: str) -> bool:
    """Whether a question lists lettered options, starting at A and B (e.g. "A) ..." lines)."""
    letters = _OPTION_LINE.findall(question)
    return "A" in letters and "B" in letters


def instruction(question: str, domain: str) -> str:
    """The domain's instruction for this question (science: letter answer only when options are shown)."""
    if domain not in DOMAIN_INSTRUCTIONS:
        raise ValueError(f"unknown domain '{domain}'; choose one of {', '.join(DOMAIN_INSTRUCTIONS)}.")
    if domain == "science" and shows_options(question):
        return SCIENCE_CHOICE_INSTRUCTION
    return DOMAIN_INSTRUCTIONS[domain]


def user_prompt(question: str, domain: str, style: str = "ours") -> str:
    """The user turn of a generation request: the question, a newline, the domain's instruction.

    authors (math only; theirs for science and code is not public): their template filled with the
    seed as it is, which ends in a newline.
    """
    if check_style(style) == "authors" and domain == "math":
        return AUTHORS_GENERATION_MATH.format(example=question)
    return f"{question}\n{instruction(question, domain)}"


def final_answer(text: str) -> str:
    """The final answer part of a completion (answers.after_think), without surrounding space."""
    return after_think(text).strip()


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
    if require_format and domain == "math" and last_boxed(answer) is None:
        return "no_boxed"
    if require_format and domain == "code" and not _FENCED.search(answer):
        return "no_code_block"
    return None


# ----------------------------------------------------------------------------- the authors' texts
# Byte for byte as their code defines them, before `.format` (`{{}}` stays doubled); where each
# comes from: tests/golden/authors/README.md. tests/test_prompts.py compares them with those files.

PROMPT_STYLES = ("ours", "authors")

# marin experiments/self_instill: the generation step's template, REASONING_INSTRUCTION appended
AUTHORS_GENERATION_MATH = "{example}\nPlease reason step by step, and put your final answer within \\boxed{{}}.\n"
# evalchemy ttc_utils.py CYCLE_QUESTION_GENERATION_PROMPT (marin: ..._INSTRUCT, the same text)
AUTHORS_INFER_QUESTION = (
    "Given an answer, please generate the most likely question that would have prompted this answer. "
    "Focus on inferring the core question that this answer is addressing. Output only the inferred "
    "question, without any additional explanation.\n"
    "\n"
    "Answer:\n"
    "{answer}\n"
    "\n"
    "Inferred Question:"
)
# CYCLE_COMPARISON_PROMPT
AUTHORS_CYCLE_JUDGE = (
    "You are evaluating whether an answer is relevant to the original question and touches the core of "
    "the question by comparing the original question with an inferred question derived only from the answer.\n"
    "\n"
    "Original Question: {original_question}\n"
    "Inferred Question: {inferred_question}\n"
    "\n"
    "Compare the two questions and determine:\n"
    "1. If the original question and inferred question are asking about the same core topic\n"
    "2. If the original question and inferred question share the same key elements and requirements\n"
    "3. If answering one question would effectively address the other question\n"
    "\n"
    "After your analysis, provide your decision: [[Y]] if the questions are semantically equivalent and "
    "address the same core problem, or [[N]] if they are asking about different things."
)
# FACTUAL_ERROR_PROMPT
AUTHORS_FACTUALITY_JUDGE = (
    "Please act as an impartial judge and carefully analyze the following answer for any factual errors, "
    "logical flaws, or misleading information.\n"
    "\n"
    "Question: {question}\n"
    "Answer: {answer}\n"
    "\n"
    "Consider the credibility of the claims made in the answer and determine if they align with "
    "established knowledge. Evaluate:\n"
    "1. Are there any incorrect facts, dates, numbers, formulas, or claims?\n"
    "2. Is there any faulty logic, reasoning, or problem-solving approach?\n"
    "3. Are there any misleading, incomplete, or ambiguous explanations?\n"
    "4. Does the answer introduce any misconceptions or propagate common errors?\n"
    "\n"
    "Minor typos or grammatical errors are acceptable. But be strict about any factual error, "
    "calculation error, or logical flaw. When unsure, lean toward accepting statements unless they "
    "contain clear errors.\n"
    "\n"
    "After a thorough analysis, provide your decision: [[Y]] if the answer has no factual errors or "
    "major flaws, or [[N]] if it contains important factual errors or logical flaws that would mislead the user."
)
# TOTAL_CORRECTNESS_PROMPT
AUTHORS_CORRECTNESS_JUDGE = (
    "Please act as an impartial judge and evaluate whether the response is completely correct in both "
    "process and conclusion.\n"
    "\n"
    "Question: {question}\n"
    "Answer: {answer}\n"
    "\n"
    "Consider correctness, usefulness, completeness and depth in your assessment. Consider whether this "
    "answer completely solves the question.\n"
    "\n"
    "You should rely on your own reasoning to form a reference solution and compare the answer to your "
    "reasoning.\n"
    "\n"
    "Begin your evaluation by giving a brief summary of your thoughts on the response. Focus on whether "
    "it is accurate, addresses the question well, and is reasonably detailed. Be precise about any "
    "errors or gaps you notice.\n"
    "\n"
    "Notes:\n"
    "1. If the answer is partial, high-level, or just states that this is an open problem, you should "
    "not accept it.\n"
    "2. If the answer lacks details or is not comprehensive, you should not accept it.\n"
    "3. If the answer contains any errors, you should not accept it.\n"
    "4. You should only accept the answer if it is at least 95% correct and solves the question.\n"
    "\n"
    "After providing your explanation, decide whether this answer is correct. Think twice about whether "
    "this answer solves the question.\n"
    "Format: Accepted: [[Y]] if you accept the answer or Accepted: [[N]] if you do not accept."
)


def check_style(style: str) -> str:
    if style not in PROMPT_STYLES:
        raise ValueError(f"unknown prompt style '{style}'; choose {' or '.join(PROMPT_STYLES)}.")
    return style


# ----------------------------------------------------------------------------- judge prompts
# Each prompt states its verdict format in its instruction and once more at its end.

INFER_QUESTION = (
    "Below is an answer written in reply to some question. Work out the question this answer most "
    "likely replies to: the core question it addresses. Write only that question, on one line, "
    "with no preamble and no comment."
)

CYCLE_JUDGE = (
    "You compare two questions: an original question, and a question reconstructed only from an "
    "answer to it. Decide whether they ask the same thing: the same core topic, the same key "
    "elements and requirements, so that answering one would also answer the other. "
    "Small differences of wording do not matter; a different quantity, condition or goal does.\n"
    "Finish with [[Y]] if they ask the same thing, or [[N]] if they do not."
)

FACTUALITY_JUDGE = (
    "You are an impartial reviewer checking an answer for errors of fact and reasoning. Look for "
    "wrong facts, numbers, formulas or dates; steps whose logic does not hold; explanations that "
    "mislead or leave out something essential; common misconceptions. Be strict about calculation "
    "mistakes and logical flaws, but ignore typos, grammar and style. When you are unsure about a "
    "claim and find no clear error in it, lean towards accepting it.\n"
    "Finish with [[Y]] if the answer has no factual errors and no major flaws, or [[N]] if it has "
    "an important factual or logical error that would mislead a reader."
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

# after the per-candidate text: the format is read last, the shared prefix above stays the same
VERDICT_REMINDER = "End your reply with your verdict: [[Y]] or [[N]]."


def infer_question_prompt(answer: str, style: str = "ours") -> str:
    """Cycle consistency, step (a): ask for the question behind an answer (the answer alone)."""
    if check_style(style) == "authors":
        return AUTHORS_INFER_QUESTION.format(answer=answer)
    return f"{INFER_QUESTION}\n\nAnswer:\n{answer}"


def cycle_judge_prompt(question: str, inferred: str, style: str = "ours") -> str:
    """Cycle consistency, step (b): the judge sees only the two questions.

    authors: the seed question stripped, as their code fills it (ttc_utils `_get_question_text`).
    """
    if check_style(style) == "authors":
        return AUTHORS_CYCLE_JUDGE.format(original_question=question.strip(), inferred_question=inferred)
    return (
        f"{CYCLE_JUDGE}\n\nOriginal question:\n{question}\n\nReconstructed question:\n{inferred}\n\n{VERDICT_REMINDER}"
    )


def factuality_prompt(question: str, answer: str, style: str = "ours") -> str:
    if check_style(style) == "authors":
        return AUTHORS_FACTUALITY_JUDGE.format(question=question.strip(), answer=answer)
    return f"{FACTUALITY_JUDGE}\n\nQuestion:\n{question}\n\nAnswer:\n{answer}\n\n{VERDICT_REMINDER}"


def correctness_prompt(question: str, answer: str, style: str = "ours") -> str:
    if check_style(style) == "authors":
        return AUTHORS_CORRECTNESS_JUDGE.format(question=question.strip(), answer=answer)
    return f"{CORRECTNESS_JUDGE}\n\nQuestion:\n{question}\n\nAnswer:\n{answer}\n\n{VERDICT_REMINDER}"


JUDGE_PROMPTS = {"factuality": factuality_prompt, "correctness": correctness_prompt}


def inferred_question(text: str, rule: str = "first_line") -> str:
    """The question read from a cycle_infer reply.

    first_line (the authors'): the first line of what follows the last </think>, or of the whole
    reply when it has none. full: everything after the judge's thinking.
    """
    if rule == "first_line":
        body = text.rsplit(THINK_CLOSE, 1)[-1] if THINK_CLOSE in text else text
        return body.strip().split("\n", 1)[0].strip()
    if rule == "full":
        return after_think(text).strip()
    raise ValueError(f"unknown inferred-question rule '{rule}'; choose first_line or full.")


# ----------------------------------------------------------------------------- verdicts

_BRACKETED = re.compile(r"\[\[\s*([YN])\s*\]\]", re.IGNORECASE)
# authors: a letter not touching another letter, any case (digits and "_" may touch it)
_ANY_LETTER = re.compile(r"(?<![A-Za-z])([YN])(?![A-Za-z])", re.IGNORECASE)
_ANY_WORD = re.compile(r"\b(yes|no)\b", re.IGNORECASE)
# strict: a bare capital letter standing alone: lower-case y/n are too common as variables to count
_LETTER = re.compile(r"(?<![A-Za-z0-9_])([YN])(?![A-Za-z0-9_])")
_WORD = re.compile(r"(?<![A-Za-z0-9_])(yes|no)(?![A-Za-z0-9_])", re.IGNORECASE)
VERDICT_RULES = {"authors": (_BRACKETED, _ANY_LETTER, _ANY_WORD), "strict": (_BRACKETED, _LETTER, _WORD)}


def parse_verdict(text: str, rule: str = "authors") -> int:
    """VOTE_YES, VOTE_NO, or VOTE_NONE (a rejection) for one judge output.

    Precedence: the last [[Y]]/[[N]] (any case, spaces inside allowed); else the last standalone
    Y or N; else the last word yes/no (any case); else no verdict.
    authors (evalchemy ttc_utils.extract_decision_robust): over the whole output, the judge's
    thinking included, and a standalone y/n in any case counts.
    strict: only the text after the judge's thinking (a verdict inside the thinking, or in a reply
    cut off while thinking, is no verdict), and only a capital Y/N counts as a bare letter.
    """
    if rule not in VERDICT_RULES:
        raise ValueError(f"unknown verdict rule '{rule}'; choose {' or '.join(VERDICT_RULES)}.")
    # the authors upper-case the reply first, which also changes what stands alone ("ß" -> "SS")
    text = after_think(text) if rule == "strict" else text.upper()
    for pattern in VERDICT_RULES[rule]:
        found = pattern.findall(text)
        if found:
            return VOTE_YES if found[-1][0].upper() == "Y" else VOTE_NO
    return VOTE_NONE


def require_think(cfg: RunConfig, engine: Engine) -> bool:
    """Whether the filter demands a closed think block: `auto` follows the model's thinking mode."""
    knob = cfg.generate.require_think
    return engine.thinking if knob == "auto" else knob == "on"
