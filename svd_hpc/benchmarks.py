"""Eval benchmarks: the paper's presets, where a benchmark's rows come from, and the problems they
hold in one shape for every grader.

A benchmark (config `eval.benchmarks[]`) is a preset, a local copy (JSONL, JSON, parquet, CSV, an
HF `save_to_disk` folder or a downloaded hub snapshot), or a hub id. A preset fills every field
left at its default. Sources are tried in this order: the hub copy, then the local copy in
`path`; when neither works the error names both and what to do. The launch stages the hub copy
(staging.py: a snapshot in the HF cache, its commit pinned in `revision`); tasks run offline and
read that snapshot, or the local copy when the hub copy was not staged.

Row layouts:
- math: `question_field`, `answer_field` (the reference answer).
- choice: `question_field`, a list field `options`, and `answer_field` holding the correct
  option's index (or its letter, or its text). GPQA (correct + three incorrect answers) and HLE
  (options inside the question after "Answer Choices:") have their own readers.
- code (LiveCodeBench): `question_content`, `starter_code`, `public_test_cases` and
  `private_test_cases` (JSON, or LiveCodeBench's base64 + zlib + pickle packing), `metadata`
  with `func_name`; without the test-case fields, `answer_field` holds the list of tests.
  Every test is {"input", "output", "testtype": "stdin" | "functional"}.
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
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from . import staging
from .config import BenchmarkSpec, ConfigError
from .grading.choice import LETTERS, format_choice_question, shuffle_options
from .seeds import JSONL_SUFFIXES, _read_jsonl, question_id

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


_LCB = {"hub_id": "livecodebench/code_generation_lite", "split": "test", "question_field": "question_content",
        "answer_field": "public_test_cases", "id_field": "question_id", "domain": "code", "grader": "code", "layout": "lcb"}
PRESETS = {
    "aime26": Preset("MathArena/aime_2026", "train", "problem", "answer", "problem_idx", "math", "math"),
    "hmmt_feb_2025": Preset("MathArena/hmmt_feb_2025", "train", "problem", "answer", "problem_idx", "math", "math"),
    "gpqa_diamond": Preset("Idavidrein/gpqa", "train", "Question", "Correct Answer", "Record ID", "science", "choice",
                           layout="gpqa", hf_config="gpqa_diamond",
                           access="it is gated: accept its terms on huggingface.co and export HF_TOKEN"),
    "hle_mc": Preset("cais/hle", "test", "question", "answer", "id", "science", "choice", layout="hle",
                     access="it is gated: accept its terms on huggingface.co and export HF_TOKEN"),
    # version tags as LiveCodeBench names them: vN = the problems added in release N
    # (testN.jsonl), release_vN = releases 1..N, vA_vB = releases A..B
    "lcb_v5": Preset(**_LCB, hf_config="v5"),
    "lcb_v6": Preset(**_LCB, hf_config="v6"),
}
_FILLED = ("hf_config", "split", "question_field", "answer_field", "id_field", "domain", "grader")
_DEFAULTS = BenchmarkSpec()


@dataclass
class Problem:
    """One benchmark problem, whatever its grader."""

    question_id: str
    question: str  # as the dataset has it; code: with the starter-code or stdin note
    domain: str
    grader: str  # math | choice | code
    answer: str | None = None  # math: the reference
    options: list[str] | None = None  # choice: in the dataset's order
    correct_index: int | None = None
    tests: list[dict] | None = None  # code: [{"input", "output"}]
    mode: str = "stdin"  # code: stdin | functional
    fn_name: str | None = None

    def present(self, seed: int) -> tuple[str, str]:
        """The question as the model sees it under eval seed `seed`, and the reference to grade against.

        Choice options are shuffled per (seed, question): base and trained models see the same
        order for a seed, and the seeds average out any position bias.
        """
        if self.grader == "choice":
            shown, letter = shuffle_options(self.options, self.correct_index, seed, self.question_id)
            return format_choice_question(self.question, shown), letter
        if self.grader == "code":
            fn = f" calling {self.fn_name}" if self.fn_name else ""
            return self.question, f"{len(self.tests)} {self.mode} tests{fn}"
        return self.question, self.answer


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
    hub_id, layout, access = None, "plain", ""
    if spec.preset:
        if spec.preset not in PRESETS:
            raise ConfigError(f"eval.benchmarks '{spec.name}': unknown preset '{spec.preset}'; "
                              f"presets: {', '.join(PRESETS)}.")
        preset = PRESETS[spec.preset]
        for f in _FILLED:
            if values[f] == getattr(_DEFAULTS, f):
                values[f] = getattr(preset, f)
        hub_id, layout, access = preset.hub_id, preset.layout, preset.access
    elif not spec.path:
        raise ConfigError(f"eval.benchmarks '{spec.name}' needs a preset ({', '.join(PRESETS)}) or a path.")
    elif _looks_like_hub_id(spec.path):
        hub_id = spec.path
    return Source(name=spec.name, path=spec.path, hub_id=hub_id, layout=layout, access=access, limit=spec.limit,
                  revision=spec.revision, **values)


def load(spec: BenchmarkSpec) -> list[Problem]:
    """The problems of a benchmark, in dataset order, `limit` applied; ValueError names what failed."""
    src = resolve(spec)
    rows, label = _rows(src)
    problems = _problems(src, rows, label)
    if src.limit is not None:
        problems = problems[: src.limit]
    if not problems:
        raise ValueError(f"benchmark '{src.name}': {label} holds no usable problems; check its fields and filters.")
    return problems


# ----------------------------------------------------------------------------- sources


def _looks_like_hub_id(path: str) -> bool:
    return not Path(path).expanduser().exists() and re.fullmatch(r"[\w.-]+/[\w.-]+", path) is not None \
        and not Path(path).suffix


hub_unreachable = staging.hub_unreachable


def _rows(src: Source) -> tuple[list[dict], str]:
    """A benchmark's rows: the hub copy (offline: only a staged one), else the local copy (`path`)."""
    tried = []
    if src.hub_id:
        reason = hub_unreachable()
        if reason is None and src.revision is None and os.environ.get("HF_HUB_OFFLINE"):
            # a task reads only what the launch pinned, never whatever "main" the cache holds
            reason = "it was not staged at launch (the hub is offline here)"
        if reason is None:
            try:
                return _read_hub(src), f"{src.hub_id} [{src.split}]"
            except Exception as err:  # noqa: BLE001  the hub client raises many kinds; all mean "cannot get it"
                reason = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        tried.append(f"the hub copy {src.hub_id} failed: {reason}")
    if src.path and Path(src.path).expanduser().exists():
        local = Path(src.path).expanduser()
        if tried:
            log.info(f"benchmark '{src.name}': {tried[0]}; reading the local copy {local}")
        return _read_local(local, src), str(local)
    if src.path and src.path != src.hub_id:
        tried.insert(0, f"the local copy {src.path} does not exist")
    elif not src.path:
        tried.insert(0, "no local copy is configured (path)")
    advice = (f"download it where there is internet (`huggingface-cli download --repo-type dataset {src.hub_id} "
              f"--local-dir DIR`) and set path: DIR for this benchmark" if src.hub_id
              else "point its path at a JSONL, JSON, parquet or CSV file or a dataset folder")
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


def _read_hub(src: Source) -> list[dict]:
    """The hub copy's rows, from its snapshot at `revision` (what staging fetched at launch)."""
    folder = staging.snapshot(src.hub_id, "dataset", src.revision, hub_files(src))
    return _read_local(folder, src)


def _read_local(path: Path, src: Source) -> list[dict]:
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
        return [row for f in lcb_files(src.hf_config) for row in _read_jsonl(path / f)[0]]
    import datasets

    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        data = datasets.load_from_disk(str(path))
        if isinstance(data, datasets.DatasetDict):
            if src.split not in data:
                raise ValueError(f"benchmark '{src.name}': {path} has no split '{src.split}'; splits: {', '.join(data)}.")
            data = data[src.split]
        return data.to_list()
    try:
        return datasets.load_dataset(str(path), src.hf_config, split=src.split).to_list()
    except Exception as err:  # noqa: BLE001
        raise ValueError(f"benchmark '{src.name}': cannot read the dataset folder {path} ({err}).") from None


# ----------------------------------------------------------------------------- rows -> problems


def _problems(src: Source, rows: list[dict], label: str) -> list[Problem]:
    if rows and src.question_field not in rows[0]:
        raise ValueError(f"benchmark '{src.name}': {label} has no field '{src.question_field}' (question_field); "
                         f"its fields are: {', '.join(rows[0])}.")
    problems, seen, skipped = [], {}, 0
    for index, row in enumerate(rows):
        where = f"benchmark '{src.name}': {label} row {index}"
        question = row.get(src.question_field)
        if not isinstance(question, str) or not question.strip():
            raise ValueError(f"{where}: field '{src.question_field}' is missing or empty.")
        if src.id_field:
            if row.get(src.id_field) in (None, ""):
                raise ValueError(f"{where}: id field '{src.id_field}' (id_field) is missing.")
            qid = str(row[src.id_field])
        else:
            qid = question_id(question)
        problem = Problem(qid, question, src.domain, src.grader)
        if src.grader in ("math", "math_last_number"):
            problem.answer = _required(row, src.answer_field, where)
        elif src.grader == "choice":
            if not _fill_choice(problem, row, src, where):
                skipped += 1
                continue
        else:
            _fill_code(problem, row, src, where)
        if qid in seen:
            raise ValueError(f"{where}: question id '{qid}' repeats row {seen[qid]}; set id_field to a unique field.")
        seen[qid] = index
        problems.append(problem)
    if skipped:
        log.info(f"benchmark {src.name}: skipped {skipped} rows that are not text-only multiple choice")
    return problems


def _required(row: dict, field: str, where: str) -> str:
    value = row.get(field)
    if value is None or str(value).strip() == "":
        raise ValueError(f"{where}: field '{field}' (answer_field) is missing or empty.")
    return str(value).strip()


def _fill_choice(problem: Problem, row: dict, src: Source, where: str) -> bool:
    """Options and the correct index; False for a row the benchmark leaves out (HLE images, free answers)."""
    if src.layout == "gpqa":
        keys = [src.answer_field, "Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3"]
        problem.options = [_required(row, k, where) for k in keys]
        problem.correct_index = 0
        return True
    if src.layout == "hle":
        if row.get("answer_type") != "multipleChoice" or row.get("image"):
            return False
        split = split_answer_choices(problem.question)
        letter = str(row.get(src.answer_field, "")).strip()
        if split is None or letter not in LETTERS[: len(split[1])]:
            return False
        problem.question, problem.options = split
        problem.correct_index = LETTERS.index(letter)
        return True
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
        raise ValueError(f"{where}: field '{src.answer_field}' must be the correct option's index, letter or text, "
                         f"got {answer!r}.")
    return True


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
    stem, body = question[: headers[-1].start()].rstrip(), question[headers[-1].end():]
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
        raw = _decode_tests(row.get("public_test_cases"), where) + _decode_tests(row.get("private_test_cases"), where)
    else:
        raw = _decode_tests(row.get(src.answer_field), where)
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
    problem.tests = [{"input": str(t["input"]), "output": str(t["output"])} for t in raw]
    starter = (row.get("starter_code") or "").strip()
    if starter:
        problem.question += f"\n\nComplete this starter code:\n```python\n{starter}\n```"
    elif problem.mode == "stdin":
        problem.question += "\n\nRead the input from standard input and write the answer to standard output."


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

