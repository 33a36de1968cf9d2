"""Eval benchmarks: the paper's presets, where a benchmark's rows come from, and the problems they
hold in one shape for every grader.

A benchmark (config `eval.benchmarks[]`) is a preset, a local copy (JSONL, JSON, parquet, CSV, an
HF `save_to_disk` folder or a downloaded hub snapshot), or a hub id. A preset fills every field
left at its default: where its rows are, its eval prompt, its repeats (eval seeds), its option
order and, for LiveCodeBench, its contest window — each as the authors' evalchemy has it
(docs/PROTOCOL.md). Sources are tried in this order: the hub copy, then the local copy in
`path`; when neither works the error names both and what to do. The launch stages the hub copy
(inputs/staging.py: a snapshot in the HF cache, its commit pinned in `revision`); tasks run offline and
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

import logging
import os
import re
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq

from ..config import BenchmarkSpec, ConfigError, RunConfig
from ..inputs import staging
from ..inputs.decontam import EvalQuestion, Index
from ..inputs.sources import JSONL_SUFFIXES, MissingSplit, read_dataset_split, read_jsonl
from .presets import PRESETS, Preset, Source, resolve, seeds_of
from .problems import Problem, _problems, in_contest_window

log = logging.getLogger("svd_hpc")
__all__ = [  # the presets and the problem shape, as callers know them from here
    "PRESETS",
    "Preset",
    "Problem",
    "Source",
    "from_rows",
    "hub_files",
    "lcb_files",
    "load",
    "load_counted",
    "resolve",
    "seeds_of",
]


def from_rows(spec: BenchmarkSpec, rows: list[dict]) -> list[Problem]:
    """The problems of rows already in memory, read as the benchmark's layout and preset say."""
    return _problems(resolve(spec), rows, "the given rows", Counter())


def contamination_index(cfg: RunConfig) -> Index | None:
    """Every eval benchmark's questions (as evaluated: `limit` applied), to test training data against;
    None when decontaminate.enabled is false or there is no benchmark."""
    if not cfg.decontaminate.enabled or not cfg.eval.benchmarks:
        return None
    questions = []
    for spec in cfg.eval.benchmarks:
        try:
            problems = load(spec)
        except ValueError as err:  # the eval would fail on it later; here it stops the launch, so say how to go on
            raise ValueError(
                f"{str(err).rstrip('.')}. Decontamination (decontaminate.enabled) reads every benchmark at launch; "
                "fix the benchmark, or set decontaminate.enabled: false."
            ) from None
        questions += [EvalQuestion(spec.name, p.question_id, p.question) for p in problems]
    return Index(questions, cfg.decontaminate.ngram)


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
    unparsed = sum(p.kind == "choice" and p.options is None for p in problems)
    if unparsed:
        log.info(f"benchmark {src.name}: {unparsed} questions whose options could not be split off are shown verbatim")
    return problems, {**dict(sorted(left_out.items())), "options_unparsed": unparsed}


# ----------------------------------------------------------------------------- sources


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


def _read_local(path: Path, src: Source, left_out: Counter) -> list[dict]:
    suffix = path.suffix.lower()
    if path.is_file():
        if suffix in JSONL_SUFFIXES:
            return read_jsonl(path)[0]
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
            for index, row in enumerate(read_jsonl(path / f)[0]):
                if in_contest_window(row, src, f"benchmark '{src.name}': {path / f} row {index}"):
                    rows.append(row)
                else:
                    left_out["outside_contest_window"] += 1
        return rows
    try:
        data = read_dataset_split(path, src.hf_config, src.split, f"benchmark '{src.name}': {path}")
    except MissingSplit:
        raise
    except Exception as err:  # noqa: BLE001
        raise ValueError(f"benchmark '{src.name}': cannot read the dataset folder {path} ({err}).") from None
    return data.to_list()
