"""Eval benchmarks: the paper's presets, where a benchmark's rows come from, and the problems they
hold in one shape for every grader.

A benchmark (config `eval.benchmarks[]`) is a preset, a local copy (JSONL, JSON, parquet, CSV, an
HF `save_to_disk` folder or a downloaded hub snapshot), or a hub id. A preset fills every field
left at its default: where its rows are, its eval prompt, its repeats (eval seeds), its option
order and, for LiveCodeBench, its contest window — each as the authors' evalchemy has it
(docs/PROTOCOL.md). Sources are tried in this order: the hub copy, then the local copy in
`path`; when neither works the error names both and what to do. The launch stages the hub copy
(staging.py: a snapshot in the HF cache, its commit pinned in `revision`); tasks run offline and
read that snapshot, or the local copy when the hub copy was not staged.

Row layouts:
- math: `question_field`, `answer_field` (the reference answer).
- choice: `question_field`, a list field `options`, and `answer_field` holding the correct
  option's index (or its letter, or its text). GPQA (correct + three incorrect answers) and HLE
  (options inside the question after "Answer Choices:", the answer a letter) have their own
  readers. An HLE row whose options cannot be split off is kept (shown verbatim, graded by its
  letter) and counted as `options_unparsed`; rows with an image or a free-form answer are left out
  and counted by reason.
- code (LiveCodeBench): `question_content`, `starter_code`, `public_test_cases` and
  `private_test_cases` (JSON, or LiveCodeBench's base64 + zlib + pickle packing), `metadata`
  with `func_name`, `contest_date` (for the contest window); without the test-case fields,
  `answer_field` holds the list of tests (all private). Every test is {"input", "output",
  "testtype": "stdin" | "functional"}.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import pickle
import re
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from .. import staging
from ..config import BenchmarkSpec, ConfigError, EvalConfig
from ..seeds import JSONL_SUFFIXES, _read_jsonl, question_id
from .grading.choice import LETTERS, format_choice_question, order_options

log = logging.getLogger("svd_hpc")


@dataclass(frozen=True)
class Preset:
    hub_id: str | None
    split: str
    question_field: str
    answer_field: str
    id_field: str | None
    domain: str
    grader: str
    layout: str = "plain"  # plain | gpqa | hle | lcb
    hf_config: str | None = None  # lcb: the version tag
    access: str = ""  # what the hub needs beyond a connection
    # as the authors' evalchemy eval/chat_benchmarks/<benchmark>/eval_instruct.py has them
    prompt: str = "sft"  # the eval prompt (eval/prompts.py)
    repeats: int = 1  # n_repeat: samples per question, one per eval seed
    option_order: str = "seeded"
    contest_from: str | None = None  # lcb: filter_by_contest_date's months
    contest_to: str | None = None


_LCB = {
    "hub_id": "livecodebench/code_generation_lite",
    "split": "test",
    "question_field": "question_content",
    "answer_field": "public_test_cases",
    "id_field": "question_id",
    "domain": "code",
    "grader": "code",
    "layout": "lcb",
    "prompt": "lcb",
    "repeats": 3,
}
_GATED = "it is gated: accept its terms on huggingface.co and export HF_TOKEN"
PRESETS = {
    "aime26": Preset(
        "MathArena/aime_2026", "train", "problem", "answer", "problem_idx", "math", "math", prompt="aime", repeats=1
    ),
    "hmmt_feb_2025": Preset(
        "MathArena/hmmt_feb_2025",
        "train",
        "problem",
        "answer",
        "problem_idx",
        "math",
        "math",
        prompt="hmmt",
        repeats=10,
    ),
    # the authors' fixed42 order puts the correct option at D every time: ours shuffles per (seed, question)
    "gpqa_diamond": Preset(
        "Idavidrein/gpqa",
        "train",
        "Question",
        "Correct Answer",
        "Record ID",
        "science",
        "choice",
        layout="gpqa",
        hf_config="gpqa_diamond",
        access=_GATED,
        prompt="gpqa",
        repeats=3,
    ),
    "hle_mc": Preset(
        "cais/hle",
        "test",
        "question",
        "answer",
        "id",
        "science",
        "choice",
        layout="hle",
        access=_GATED,
        prompt="hle",
        repeats=3,
        option_order="original",
    ),
    # version tags as LiveCodeBench names them: release_vN = releases 1..N (test.jsonl ... testN.jsonl),
    # vN = only the problems added in release N, vA_vB = releases A..B; the authors take a release
    # and keep the problems of a contest window
    "lcb_v5": Preset(**_LCB, hf_config="release_v5", contest_from="2024-08", contest_to="2025-01"),
    "lcb_v6": Preset(**_LCB, hf_config="release_v6", contest_from="2025-01", contest_to="2025-04"),
}
_FILLED = ("hf_config", "split", "question_field", "answer_field", "id_field", "domain", "grader")
_UNSET_IS_NONE = ("prompt", "option_order", "contest_from", "contest_to")  # spec None: the preset's
_DEFAULTS = BenchmarkSpec()


@dataclass
class Problem:
    """One benchmark problem, whatever its grader."""

    question_id: str
    question: str  # as the dataset has it (HLE: with its answer choices; code: the statement alone)
    domain: str
    grader: str  # math | choice | code
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
        if self.grader == "choice":
            shown, letter = self.choices(seed)
            return (self.question if shown is None else format_choice_question(self.stem, shown)), letter
        if self.grader == "code":
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


@dataclass(frozen=True)
class Source(Preset):
    """A benchmark spec with its preset applied: where to read it and how."""

    name: str = ""
    path: str | None = None
    limit: int | None = None
    revision: str | None = None  # of the hub copy; a commit once the launch has staged it


def resolve(spec: BenchmarkSpec) -> Source:
    """Apply the preset (fields left at their defaults take the preset's); ConfigError if unknown."""
    values = {f: getattr(spec, f) for f in _FILLED}
    preset = Preset(None, "", "", "", None, "", "")  # no preset: the Preset defaults (sft prompt, one repeat)
    hub_id = None
    if spec.preset:
        if spec.preset not in PRESETS:
            raise ConfigError(
                f"eval.benchmarks '{spec.name}': unknown preset '{spec.preset}'; presets: {', '.join(PRESETS)}."
            )
        preset = PRESETS[spec.preset]
        for f in _FILLED:
            if values[f] == getattr(_DEFAULTS, f):
                values[f] = getattr(preset, f)
        hub_id = preset.hub_id
    elif not spec.path:
        raise ConfigError(f"eval.benchmarks '{spec.name}' needs a preset ({', '.join(PRESETS)}) or a path.")
    elif _looks_like_hub_id(spec.path):
        hub_id = spec.path
    for f in _UNSET_IS_NONE:
        values[f] = getattr(preset, f) if getattr(spec, f) is None else getattr(spec, f)
    return Source(
        name=spec.name,
        path=spec.path,
        hub_id=hub_id,
        layout=preset.layout,
        access=preset.access,
        repeats=preset.repeats,
        limit=spec.limit,
        revision=spec.revision,
        **values,
    )


def seeds_of(eval_cfg: EvalConfig, spec: BenchmarkSpec) -> list[int]:
    """A benchmark's eval seeds: its own, else eval.seeds, else its preset's repeats as seeds 0..R-1."""
    if spec.seeds is not None:
        return list(spec.seeds)
    if eval_cfg.seeds is not None:
        return list(eval_cfg.seeds)
    return list(range(PRESETS[spec.preset].repeats if spec.preset in PRESETS else 1))


def from_rows(spec: BenchmarkSpec, rows: list[dict]) -> list[Problem]:
    """The problems of rows already in memory, read as the benchmark's layout and preset say."""
    return _problems(resolve(spec), rows, "the given rows", Counter())


def load(spec: BenchmarkSpec) -> list[Problem]:
    """The problems of a benchmark, in dataset order, `limit` applied; ValueError names what failed."""
    return load_counted(spec)[0]


def load_counted(spec: BenchmarkSpec) -> tuple[list[Problem], dict[str, int]]:
    """The problems, and the rows left out per reason (an image, not multiple choice, outside the
    contest window, ...) plus `options_unparsed`: choice problems kept with their options unsplit."""
    src = resolve(spec)
    left_out: Counter = Counter()
    rows, label = _rows(src, left_out)
    problems = _problems(src, rows, label, left_out)
    if src.limit is not None:
        problems = problems[: src.limit]
    if not problems:
        raise ValueError(f"benchmark '{src.name}': {label} holds no usable problems; check its fields and filters.")
    unparsed = sum(p.grader == "choice" and p.options is None for p in problems)
    if unparsed:
        log.info(f"benchmark {src.name}: {unparsed} questions whose options could not be split off are shown verbatim")
    return problems, {**dict(sorted(left_out.items())), "options_unparsed": unparsed}


# ----------------------------------------------------------------------------- sources


def _looks_like_hub_id(path: str) -> bool:
    return (
        not Path(path).expanduser().exists()
        and re.fullmatch(r"[\w.-]+/[\w.-]+", path) is not None
        and not Path(path).suffix
    )


hub_unreachable = staging.hub_unreachable


def _rows(src: Source, left_out: Counter) -> tuple[list[dict], str]:
    """A benchmark's rows: the hub copy (offline: only a staged one), else the local copy (`path`)."""
    tried = []
    if src.hub_id:
        reason = hub_unreachable()
        if reason is None and src.revision is None and os.environ.get("HF_HUB_OFFLINE"):
            # a task reads only what the launch pinned, never whatever "main" the cache holds
            reason = "it was not staged at launch (the hub is offline here)"
        if reason is None:
            try:
                return _read_hub(src, left_out), f"{src.hub_id} [{src.split}]"
            except Exception as err:  # noqa: BLE001  the hub client raises many kinds; all mean "cannot get it"
                reason = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        tried.append(f"the hub copy {src.hub_id} failed: {reason}")
    if src.path and Path(src.path).expanduser().exists():
        local = Path(src.path).expanduser()
        if tried:
            log.info(f"benchmark '{src.name}': {tried[0]}; reading the local copy {local}")
        return _read_local(local, src, left_out), str(local)
    if src.path and src.path != src.hub_id:
        tried.insert(0, f"the local copy {src.path} does not exist")
    elif not src.path:
        tried.insert(0, "no local copy is configured (path)")
    advice = (
        f"download it where there is internet (`huggingface-cli download --repo-type dataset {src.hub_id} "
        f"--local-dir DIR`) and set path: DIR for this benchmark"
        if src.hub_id
        else "point its path at a JSONL, JSON, parquet or CSV file or a dataset folder"
    )
    if src.access:
        advice += f"; {src.access}"
    raise ValueError(f"benchmark '{src.name}' cannot be loaded: {' and '.join(tried)}. To fix: {advice}.")


def lcb_files(tag: str | None) -> list[str]:
    """LiveCodeBench data files of a version tag: vN, release_vN or vA_vB."""

    def name(n: int) -> str:
        return "test.jsonl" if n == 1 else f"test{n}.jsonl"

    tag = tag or ""
    if m := re.fullmatch(r"release_v(\d+)", tag):
        return [name(n) for n in range(1, int(m.group(1)) + 1)]
    if m := re.fullmatch(r"v(\d+)_v(\d+)", tag):
        return [name(n) for n in range(int(m.group(1)), int(m.group(2)) + 1)]
    if m := re.fullmatch(r"v(\d+)", tag):
        return [name(int(m.group(1)))]
    raise ConfigError(f"LiveCodeBench version tag {tag!r} (hf_config) is not vN, release_vN or vA_vB.")


def hub_files(src: Source) -> list[str] | None:
    """The files of the hub copy a benchmark reads (None: the whole snapshot)."""
    return lcb_files(src.hf_config) if src.layout == "lcb" else None


def _read_hub(src: Source, left_out: Counter) -> list[dict]:
    """The hub copy's rows, from its snapshot at `revision` (what staging fetched at launch)."""
    folder = staging.snapshot(src.hub_id, "dataset", src.revision, hub_files(src))
    return _read_local(folder, src, left_out)


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


def _read_local(path: Path, src: Source, left_out: Counter) -> list[dict]:
    suffix = path.suffix.lower()
    if path.is_file():
        if suffix in JSONL_SUFFIXES:
            return _read_jsonl(path)[0]
        if suffix == ".parquet":
            return pq.read_table(path).to_pylist()
        if suffix == ".csv":
            import pyarrow.csv

            return pyarrow.csv.read_csv(path).to_pylist()
        raise ValueError(f"benchmark '{src.name}': {path} is not .jsonl, .json, .parquet or .csv.")
    if src.layout == "lcb" and any(path.glob("test*.jsonl")):
        missing = [f for f in lcb_files(src.hf_config) if not (path / f).is_file()]
        if missing:
            raise ValueError(f"benchmark '{src.name}': {path} lacks {', '.join(missing)} for version {src.hf_config}.")
        rows = []
        for f in lcb_files(src.hf_config):  # one release file at a time: only the window's rows stay in memory
            for index, row in enumerate(_read_jsonl(path / f)[0]):
                if in_contest_window(row, src, f"benchmark '{src.name}': {path / f} row {index}"):
                    rows.append(row)
                else:
                    left_out["outside_contest_window"] += 1
        return rows
    import datasets

    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        data = datasets.load_from_disk(str(path))
        if isinstance(data, datasets.DatasetDict):
            if src.split not in data:
                raise ValueError(
                    f"benchmark '{src.name}': {path} has no split '{src.split}'; splits: {', '.join(data)}."
                )
            data = data[src.split]
        return data.to_list()
    try:
        return datasets.load_dataset(str(path), src.hf_config, split=src.split).to_list()
    except Exception as err:  # noqa: BLE001
        raise ValueError(f"benchmark '{src.name}': cannot read the dataset folder {path} ({err}).") from None


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
        if src.grader in ("math", "math_last_number"):
            problem.answer = _required(row, src.answer_field, where)
        elif src.grader == "choice":
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
