"""Grade a benchmark problem's response with the grader the problem names (eval.code_tests and
eval.code_time_limit decide what code is run against, eval.code_imports, code_call, code_compare
and code_memory_mb how: `CodeRules`)."""

from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor

from ..sampling import prompts
from ..sampling.answers import last_boxed
from . import prompts as eval_prompts
from .grading import GradeResult
from .grading.authors import grade_authors_aime, grade_authors_letter
from .grading.choice import grade_choice
from .grading.code import OURS, CodeRules, grade_code
from .grading.math import grade_math
from .problems import Problem


def box_last_number(response: str) -> str:
    """An answer without \\boxed{} gets its last number boxed, so the math grader can read it."""
    final = prompts.final_answer(response)
    if last_boxed(final) is not None:
        return response
    numbers = re.findall(r"-?\d+(?:[.,]\d+)*(?:/\d+)?", final)
    return f"{response}\n\\boxed{{{numbers[-1].replace(',', '')}}}" if numbers else response


def grade(
    problem: Problem,
    reference: str,
    response: str,
    timeout_s: float,
    code_tests: str = "private",
    time_limit: str = "total",
    rules: CodeRules = OURS,
) -> GradeResult:
    """Grade one response with the problem's grader against the reference it was presented with.

    Code (eval.code_tests, eval.code_time_limit): the private tests, or public and private; one
    budget of (timeout_s + 1) × tests + 5 s for all of them (the authors' lcb_run), or timeout_s each.
    """
    if problem.grader == "math":
        return grade_math(response, reference)
    if problem.grader == "math_last_number":
        return grade_math(box_last_number(response), reference)
    if problem.grader == "authors_aime":
        return grade_authors_aime(response, reference)
    if problem.grader == "choice":
        return grade_choice(response, reference, problem.n_options, eval_prompts.letter_rule(problem))
    if problem.grader in ("authors_gpqa", "authors_hle"):
        return grade_authors_letter(response, reference, problem.grader)
    tests = problem.tests if code_tests == "private" else (problem.public_tests or []) + problem.tests
    budget = (timeout_s + 1) * len(tests) + 5 if time_limit == "total" else None
    return grade_code(
        response,
        tests,
        timeout_s=timeout_s,
        mode=problem.mode,
        fn_name=problem.fn_name,
        total_budget_s=budget,
        rules=rules,
    )


def grade_all(
    problems: list[Problem],
    references: list[str],
    responses: list[str],
    timeout_s: float,
    code_tests: str = "private",
    time_limit: str = "total",
    rules: CodeRules = OURS,
) -> list[GradeResult]:
    """Grade in order; code runs in sandboxed child processes, several at once (one per core)."""
    jobs = list(zip(problems, references, responses))
    if not any(p.grader == "code" for p in problems):
        # math-verify's timeout needs the main thread
        return [grade(p, ref, resp, timeout_s) for p, ref, resp in jobs]
    workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(lambda job: grade(*job, timeout_s, code_tests, time_limit, rules), jobs))
