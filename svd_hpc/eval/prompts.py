"""The prompt each eval benchmark is asked with: the benchmark's own, as the authors' evalchemy sends
it, so the trained model is not scored on the very prompt it was fine-tuned on.

The texts are the authors', verbatim (teetone/evalchemy eval/chat_benchmarks/):
- aime: AIME26/eval_instruct.py `PROMPT`
- hmmt: HMMT/eval_instruct.py `PROMPT`
- gpqa: GPQADiamond/eval_instruct.py `PROMPT`, options as "A) x, B) y, ..." on one line
- hle: HLE/eval_instruct.py `format_message` (`SYSTEM_MC`, a newline, the question verbatim)
- lcb: LiveCodeBenchv5_official/eval_instruct.py: the instruction for stdin or functional problems
  directly followed by the statement; no starter code
- sft: the run's generation prompt (`prompts.user_prompt` in prompts.style), the knob for scoring on
  the training prompt.
`tests/golden/prompts/eval-*.txt` holds each rendered for one fixed example.
"""

from __future__ import annotations

from ..sampling import prompts
from .benchmarks import Problem
from .grading.choice import LETTERS

AIME = "Problem: {problem}\nMark your solution with \\boxed\nAnswer:"
HMMT = "Problem: {problem}\nPlease reason step by step, and put your final answer within \\boxed{{}}.\nAnswer:"
GPQA = (
    "Return your final response within \\boxed{{}} and only include "
    "the letter choice ({letters}) as your final response.\n"
    "Problem: {problem}\nOptions: {options}\nAnswer:"
)
HLE = (
    "Your response should be in the following format:\nAnswer: {your chosen multiple choice letter}. "
    "Include only the letter, no other text."
)
LCB_STDIN = (
    "Generate an executable Python function generated from the given prompt. The function should take stdin as "
    "input and print the output. Simply call the function after the definition."
)
LCB_FUNCTIONAL = (
    "Generate an executable Python function generated from the given prompt. Return the function body without "
    "invoking it at the final solution."
)
STYLES = ("sft", "aime", "hmmt", "gpqa", "hle", "lcb")


def _letters(n: int) -> str:
    """'A, B, C, or D' for four options, as the authors' GPQA prompt names them."""
    letters = list(LETTERS[:n])
    return ", ".join(letters[:-1]) + ", or " + letters[-1] if n > 1 else letters[0]


def user_prompt(problem: Problem, seed: int, style: str = "ours") -> str:
    """The user turn that asks `problem` under eval seed `seed` (options in that seed's order);
    `style` (prompts.style) words the sft prompt."""
    shown, _ = problem.present(seed)
    prompt = problem.prompt
    if prompt == "sft":
        return prompts.user_prompt(shown, problem.domain, style)
    if prompt == "aime":
        return AIME.format(problem=shown)
    if prompt == "hmmt":
        return HMMT.format(problem=shown)
    if prompt == "hle":
        return f"{HLE}\n{shown}"
    if prompt == "lcb":
        return (LCB_STDIN if problem.mode == "stdin" else LCB_FUNCTIONAL) + shown
    if prompt == "gpqa":
        options, _ = problem.choices(seed)
        if options is None:
            raise ValueError(
                f"question {problem.question_id}: the gpqa prompt needs its options split off; "
                "set prompt: hle (the question verbatim) or sft for this benchmark."
            )
        listed = ", ".join(f"{LETTERS[i]}) {option}" for i, option in enumerate(options))
        return GPQA.format(letters=_letters(len(options)), problem=problem.stem, options=listed)
    raise ValueError(f"unknown eval prompt '{prompt}'; choose one of {', '.join(STYLES)}.")


def letter_rule(problem: Problem) -> str:
    """How a choice answer is read: the first "Answer: X" under the HLE prompt (the authors'), else ours."""
    return "first_answer" if problem.prompt == "hle" else "last"
