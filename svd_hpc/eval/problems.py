"""A benchmark's problems in one shape for every grader, and how a row of each layout becomes one.

Row layouts are described in `svd_hpc.eval.benchmarks`.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import pickle
import re
import zlib
from collections import Counter
from dataclasses import dataclass

from ..config.evaluation import GRADER_KINDS
from ..records import question_id
from .grading.choice import LETTERS, format_choice_question, order_options
from .presets import Source

log = logging.getLogger("svd_hpc")


@dataclass
class Problem:
    """One benchmark problem, whatever its grader."""

    question_id: str
    question: str  # as the dataset has it (HLE: with its answer choices; code: the statement alone)
    domain: str
    grader: str  # config.evaluation.Grader: math, choice, code, or a reader of the same kind
    answer: str | None = None  # math: the reference
    prompt: str = "sft"  # the eval prompt it is asked with (eval/prompts.py)
    stem: str | None = None  # choice: the question without its options
    options: list[str] | None = None  # choice: in the dataset's order; None: not parsed (HLE), shown verbatim
    correct_index: int | None = None
    correct_letter: str | None = None  # choice with unparsed options: the dataset's letter
    option_order: str = "seeded"  # choice: seeded | fixed42 | original
    tests: list[dict] | None = None  # code: the private tests (all, when the row does not split them)
    public_tests: list[dict] | None = None  # code: the public ones, shown in the statement
    mode: str = "stdin"  # code: stdin | functional
    fn_name: str | None = None
    starter_code: str = ""

    @property
    def kind(self) -> str:
        """What the grader reads: math (a reference answer), choice (options and a letter) or code (tests)."""
        return GRADER_KINDS[self.grader]

    def choices(self, seed: int) -> tuple[list[str] | None, str]:
        """The options in the order shown under eval seed `seed` (None: the question text shows them
        itself, in the dataset's order) and the correct letter."""
        if self.options is None:
            return None, self.correct_letter
        if self.option_order == "original" and self.stem != self.question:
            return None, LETTERS[self.correct_index]  # HLE as the authors ask it: the question verbatim
        return order_options(self.options, self.correct_index, self.option_order, seed, self.question_id)

    def present(self, seed: int) -> tuple[str, str]:
        """The question as the model sees it under eval seed `seed`, and the reference to grade against.

        Seeded options are shuffled per (seed, question): base and trained models see the same
        order for a seed, and the seeds average out any position bias.
        """
        if self.kind == "choice":
            shown, letter = self.choices(seed)
            return (self.question if shown is None else format_choice_question(self.stem, shown)), letter
        if self.kind == "code":
            fn = f" calling {self.fn_name}" if self.fn_name else ""
            reference = f"{len(self.tests)} {self.mode} tests{fn}"
            if self.prompt == "lcb":  # the authors' prompt: the statement alone, no starter code
                return self.question, reference
            if self.starter_code:
                return f"{self.question}\n\nComplete this starter code:\n```python\n{self.starter_code}\n```", reference
            if self.mode == "stdin":
                return (
                    f"{self.question}\n\nRead the input from standard input and write the answer to standard output.",
                    reference,
                )
            return self.question, reference
        return self.question, self.answer

    @property
    def n_options(self) -> int:
        """How many letters an answer may name (every letter when the options were not parsed)."""
        return len(self.options) if self.options is not None else len(LETTERS)


def in_contest_window(row: dict, src: Source, where: str) -> bool:
    """Whether a LiveCodeBench row's contest month lies in [contest_from, contest_to] (no window: True)."""
    if src.contest_from is None and src.contest_to is None:
        return True
    date = row.get("contest_date")
    if not isinstance(date, str) or not re.match(r"\d{4}-\d{2}", date):
        raise ValueError(
            f"{where}: a contest window is set (contest_from/contest_to) but the row has no "
            f"contest_date (YYYY-MM...); remove the window or use LiveCodeBench's files."
        )
    month = date[:7]
    return (src.contest_from is None or month >= src.contest_from) and (
        src.contest_to is None or month <= src.contest_to
    )


# ----------------------------------------------------------------------------- rows -> problems


def _problems(src: Source, rows: list[dict], label: str, left_out: Counter) -> list[Problem]:
    if rows and src.question_field not in rows[0]:
        raise ValueError(
            f"benchmark '{src.name}': {label} has no field '{src.question_field}' (question_field); "
            f"its fields are: {', '.join(rows[0])}."
        )
    problems, seen = [], {}
    for index, row in enumerate(rows):
        where = f"benchmark '{src.name}': {label} row {index}"
        if src.grader == "code" and src.layout != "lcb" and not in_contest_window(row, src, where):
            left_out["outside_contest_window"] += 1  # LiveCodeBench's own files were filtered as read
            continue
        question = row.get(src.question_field)
        if not isinstance(question, str) or not question.strip():
            raise ValueError(f"{where}: field '{src.question_field}' is missing or empty.")
        if src.id_field:
            if row.get(src.id_field) in (None, ""):
                raise ValueError(f"{where}: id field '{src.id_field}' (id_field) is missing.")
            qid = str(row[src.id_field])
        else:
            qid = question_id(question)
        problem = Problem(qid, question, src.domain, src.grader, prompt=src.prompt, option_order=src.option_order)
        if problem.kind == "math":
            problem.answer = _required(row, src.answer_field, where)
        elif problem.kind == "choice":
            reason = _fill_choice(problem, row, src, where)
            if reason:
                left_out[reason] += 1
                continue
        else:
            _fill_code(problem, row, src, where)
        if qid in seen:
            raise ValueError(f"{where}: question id '{qid}' repeats row {seen[qid]}; set id_field to a unique field.")
        seen[qid] = index
        problems.append(problem)
    if left_out:
        log.info(f"benchmark {src.name}: rows left out: {dict(left_out)}")
    return problems


def _required(row: dict, field: str, where: str) -> str:
    value = row.get(field)
    if value is None or str(value).strip() == "":
        raise ValueError(f"{where}: field '{field}' (answer_field) is missing or empty.")
    return str(value).strip()


def _fill_choice(problem: Problem, row: dict, src: Source, where: str) -> str | None:
    """Stem, options and the correct answer; or why the benchmark leaves the row out (HLE: an image,
    not multiple choice, an answer that is no letter)."""
    problem.stem = problem.question
    if src.layout == "gpqa":
        keys = [src.answer_field, "Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3"]
        problem.options = [_required(row, k, where) for k in keys]
        problem.correct_index = 0
        return None
    if src.layout == "hle":
        # the authors' filter (HLE/eval_instruct.py load_questions): multiple choice, no image
        if row.get("answer_type") != "multipleChoice":
            return "not_multiple_choice"
        if row.get("image"):
            return "image"
        letter = str(row.get(src.answer_field, "")).strip()
        if len(letter) != 1 or letter not in LETTERS:
            return "answer_not_a_letter"
        split = split_answer_choices(problem.question)
        if split is None or letter not in LETTERS[: len(split[1])]:
            problem.correct_letter = letter  # kept: shown verbatim, graded by its letter
            return None
        problem.stem, problem.options = split
        problem.correct_index = LETTERS.index(letter)
        return None
    options = row.get("options")
    if not isinstance(options, list) or len(options) < 2:
        raise ValueError(f"{where}: a choice question needs a list field 'options' with at least two entries.")
    problem.options = [str(o) for o in options]
    answer = row.get(src.answer_field)
    if isinstance(answer, int) and not isinstance(answer, bool) and 0 <= answer < len(options):
        problem.correct_index = answer
    elif isinstance(answer, str) and answer.strip() in LETTERS[: len(options)]:
        problem.correct_index = LETTERS.index(answer.strip())
    elif isinstance(answer, str) and answer in problem.options:
        problem.correct_index = problem.options.index(answer)
    else:
        raise ValueError(
            f"{where}: field '{src.answer_field}' must be the correct option's index, letter or text, got {answer!r}."
        )
    return None


_CHOICES_HEADER = re.compile(r"\n\s*Answer Choices:\s*\n", re.IGNORECASE)
_OPTION_LINE = re.compile(r"^\s*([A-Z])[.)]\s?(.*)$")


def split_answer_choices(question: str) -> tuple[str, list[str]] | None:
    """(stem, options) of a question that lists "Answer Choices:" as A., B., ... lines (HLE style).

    An option may run over several lines; a line counts as the next option only when it starts
    with the next letter in sequence.
    """
    headers = list(_CHOICES_HEADER.finditer(question))
    if not headers:
        return None
    stem, body = question[: headers[-1].start()].rstrip(), question[headers[-1].end() :]
    options: list[str] = []
    for line in body.split("\n"):
        m = _OPTION_LINE.match(line)
        if m and len(options) < len(LETTERS) and m.group(1) == LETTERS[len(options)]:
            options.append(m.group(2))
        elif options:
            options[-1] += "\n" + line
        elif line.strip():
            return None
    options = [o.strip() for o in options]
    return (stem, options) if len(options) >= 2 and all(options) else None


def _fill_code(problem: Problem, row: dict, src: Source, where: str) -> None:
    if "public_test_cases" in row or "private_test_cases" in row:
        public = _decode_tests(row.get("public_test_cases"), where)
        private = _decode_tests(row.get("private_test_cases"), where)
        if not private:  # graded on what there is, rather than on no test at all
            log.info(f"{where}: no private tests; its public tests are graded as private")
            public, private = [], public
    else:
        public, private = [], _decode_tests(row.get(src.answer_field), where)
    raw = public + private
    if not raw:
        raise ValueError(f"{where}: no tests found (public_test_cases/private_test_cases or '{src.answer_field}').")
    modes = {t.get("testtype", "stdin") for t in raw}
    if len(modes) != 1 or not modes <= {"stdin", "functional"}:
        raise ValueError(f"{where}: tests must all be 'stdin' or all 'functional', got {sorted(modes)}.")
    problem.mode = modes.pop()
    metadata = row.get("metadata") or {}
    if isinstance(metadata, str):
        metadata = json.loads(metadata) if metadata.strip() else {}
    problem.fn_name = metadata.get("func_name") or row.get("fn_name")
    if problem.mode == "functional" and not problem.fn_name:
        raise ValueError(f"{where}: functional tests need the method name (metadata.func_name or fn_name).")
    problem.public_tests = [{"input": str(t["input"]), "output": str(t["output"])} for t in public]
    problem.tests = [{"input": str(t["input"]), "output": str(t["output"])} for t in private]
    problem.starter_code = (row.get("starter_code") or "").strip()


class _StringsOnly(pickle.Unpickler):
    """LiveCodeBench packs test lists as a pickled JSON string; never build any object from one."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a benchmark file")


def _decode_tests(value, where: str) -> list[dict]:
    if value is None or value == "":
        return []
    if isinstance(value, list):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        pass
    try:
        packed = _StringsOnly(io.BytesIO(zlib.decompress(base64.b64decode(value)))).load()
        return json.loads(packed) if isinstance(packed, str) else packed
    except Exception as err:  # noqa: BLE001
        raise ValueError(f"{where}: test cases are neither JSON nor LiveCodeBench-packed ({err}).") from None
