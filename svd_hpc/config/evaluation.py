"""The eval section: the benchmarks both models are evaluated on, and how."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from .checks import ConfigError

Grader = Literal["math", "math_last_number", "authors_aime", "choice", "authors_gpqa", "authors_hle", "code"]
# what each grader reads: a problem's reference and the prompt's options follow from it
GRADER_KINDS = {
    "math": "math",
    "math_last_number": "math",
    "authors_aime": "math",
    "choice": "choice",
    "authors_gpqa": "choice",
    "authors_hle": "choice",
    "code": "code",
}


@dataclass
class BenchmarkSpec:
    """One entry of eval.benchmarks: a preset, or a dataset described field by field.

    With a preset, the dataset keys (hf_config, split, the *_field keys, domain, grader) left at
    their defaults take the preset's values (docs/PROTOCOL.md).
    """

    name: str = ""
    """Unique name of this benchmark in the run (required)."""
    preset: str | None = None
    """aime26, hmmt_feb_2025, gpqa_diamond, hle_mc, lcb_v5 or lcb_v6."""
    path: str | None = None
    """Local JSONL/parquet, local HF dataset directory, or hub id; null: the preset's."""
    hf_config: str | None = None
    """HF dataset config (subset) name."""
    revision: str | None = None
    """Of the hub copy: branch, tag or commit; the launch pins it to a commit."""
    split: str = "test"
    """HF dataset split."""
    question_field: str = "question"
    """Field holding the question text."""
    answer_field: str = "answer"
    """Field holding the reference answer."""
    id_field: str | None = None
    """Field holding a question id."""
    domain: Literal["math", "science", "code"] = "math"
    """Domain of the questions (picks the generation prompt's format)."""
    grader: Grader = "math"
    """How answers are graded (docs/PROTOCOL.md); with a preset, math (the default) is the preset's.

    math_last_number: math, but an answer without \\boxed{} is read as its last number.
    authors_aime, authors_gpqa, authors_hle: the authors' evalchemy readers (thinking included);
    `svd-hpc regrade` re-reads a finished run's records with another.
    """
    limit: int | None = None
    """Keep the first `limit` problems; null: all."""
    prompt: Literal["sft", "aime", "hmmt", "gpqa", "hle", "lcb"] | None = None
    """The eval prompt: the benchmark's own (the authors' evalchemy), or sft (our generation prompt).

    null: the preset's, else sft.
    """
    seeds: list[int] | None = None
    """This benchmark's eval seeds (one sample per question each); wins over eval.seeds.

    null: eval.seeds, else the preset's repeats as seeds 0..R-1, else [0].
    """
    option_order: Literal["seeded", "fixed42", "original"] | None = None
    """Order of choice options: shuffled per (eval seed, question), the authors' GPQA order, or the dataset's.

    fixed42 is Random(42) per question (the correct option always at D). null: the preset's, else seeded.
    """
    contest_from: str | None = None
    """LiveCodeBench: keep problems whose contest month (YYYY-MM) is this or later; null: the preset's."""
    contest_to: str | None = None
    """LiveCodeBench: keep problems whose contest month (YYYY-MM) is this or earlier; null: the preset's."""

    def check(self, source: str) -> None:
        if self.seeds is not None and not self.seeds:
            raise ConfigError(
                f"{source}: eval.benchmarks '{self.name}': seeds must list at least one seed, or be left out."
            )
        for key in ("contest_from", "contest_to"):
            month = getattr(self, key)
            if month is not None and not re.fullmatch(r"\d{4}-(0[1-9]|1[0-2])", month):
                raise ConfigError(
                    f"{source}: eval.benchmarks '{self.name}': {key} is {month!r}; write a month as YYYY-MM."
                )


@dataclass
class EvalConfig:
    """Stages eval_base and eval_trained: pass@k of the base and the trained model on each benchmark.

    Eval tasks checkpoint every generate.chunk_size questions (eval has no chunk key of its own).
    """

    benchmarks: list[BenchmarkSpec] = field(default_factory=list)
    """The benchmarks (see eval.benchmarks[]); none: no eval stages."""
    seeds: list[int] | None = None
    """Seeds of every benchmark (a benchmark's own `seeds` wins).

    null: each benchmark repeats as its preset does (the authors': AIME26 1, HMMT 10, GPQA/HLE/LCB 3),
    a benchmark without preset once.
    """
    temperature: float | None = 0.7
    """Sampling temperature (the authors' 0.7); null: the model's generation_config."""
    top_p: float | None = 1.0
    """Nucleus sampling (the authors' 1.0); null: as temperature."""
    top_k: int | None = None
    """Top-k sampling; null: as temperature."""
    min_p: float | None = None
    """Min-p sampling; null: as temperature."""
    repetition_penalty: float | None = None
    """Repetition penalty; null: as temperature."""
    max_tokens: int = 32768
    """Longest answer, in tokens."""
    uq_ttc: bool = False
    """Also evaluate the test-time baseline (UQ-TTC: candidates filtered by the judges) on the base model."""
    uq_ttc_seeds: Literal["one", "all"] = "one"
    """Eval seeds of the UQ-TTC baseline: one, the benchmark's first seed (0 unless seeds are set); all, every seed.

    one is the authors' (evalchemy runs UQ-TTC once per benchmark, repeats only direct eval); its Δ
    pairs with base's answers on that seed. all costs a full UQ-TTC pass per seed (HMMT: 10).
    """
    uq_ttc_candidates: int = 8
    """Candidates per question for the UQ-TTC baseline."""
    uq_ttc_filter: bool = False
    """Apply the static format filter to UQ-TTC candidates; false: every candidate goes to the judges.

    false is the authors' (evalchemy ttc_utils.uq_filter_candidates).
    """
    uq_ttc_judge_question: Literal["raw", "presented"] = "raw"
    """Question the UQ-TTC judges see: the raw one (the authors') or as presented to the model."""
    code_timeout_s: float = 6.0
    """Seconds per test of model-written code (see code_time_limit)."""
    code_tests: Literal["private", "all"] = "private"
    """Code grading: the private tests only (the authors'), or public and private."""
    code_time_limit: Literal["total", "per_test"] = "total"
    """Code time budget: total = (code_timeout_s + 1) × tests + 5 s for all of a problem's tests (the authors' lcb_run).

    per_test: code_timeout_s for each test.
    """
    code_imports: Literal["ours", "none"] = "ours"
    """Functional (LeetCode-style) code runs after an import header (typing, collections, heapq, math, ...).

    none: bare, as the authors' harness runs it (an answer using List[int] without importing it fails).
    """
    code_call: Literal["lenient", "authors"] = "lenient"
    """Which callable a functional test calls: lenient = Solution().<func_name>, else <func_name>, else the
    function named before the code's first "(".

    authors: only that last one, at module level (a method of class Solution is not found).
    """
    code_compare: Literal["numbers", "exact"] = "numbers"
    """stdout compared line by line, each stripped, numbers as decimals ("1.0" = "1"), a set returned by
    a function as its sorted list.

    exact: the authors' check: the whole stripped output equals the expected one; a function's tuple or
    set never equals the expected list.
    """
    code_memory_mb: int | None = 1024
    """Address space of each process of model-written code, in MiB; the program's cgroup (where one is
    delegated) gets twice it for all its processes.

    null: no memory limit (the authors set none): a program may take the node's memory.
    """
    allow_unisolated_code: bool = False
    """Run model-written code even where nothing isolates it (no namespaces, bubblewrap or apptainer).

    It then has network access and our file permissions.
    """

    def check(self, source: str) -> None:
        names = [b.name for b in self.benchmarks]
        if any(not n for n in names) or len(set(names)) != len(names):
            raise ConfigError(f"{source}: every eval.benchmarks entry needs a unique 'name'.")
        if self.seeds is not None and not self.seeds:
            raise ConfigError(
                f"{source}: eval.seeds must list at least one seed, or be left out (each preset's repeats)."
            )
        if self.code_memory_mb is not None and self.code_memory_mb < 64:
            raise ConfigError(
                f"{source}: eval.code_memory_mb is {self.code_memory_mb}; Python itself needs about 64 MiB: "
                "set at least 64, or null for no limit."
            )
        for bench in self.benchmarks:
            bench.check(source)


@dataclass
class SelectConfig:
    """Checkpoint selection (train.select): the model we evaluate, publish and report is the checkpoint
    that scores best on a selection set of benchmarks, as the authors pick theirs (docs/PROTOCOL.md).

    Off unless `every` is set. Training then exports a model every `every` steps (train/select/step-N/);
    stage select_eval scores each on `benchmarks` as soon as it is saved, stage select picks one.
    """

    every: int = 0
    """Steps between selection checkpoints (the authors': 100); the final step is always one. 0: no selection."""
    benchmarks: list[BenchmarkSpec] = field(default_factory=list)
    """The selection set (entries as eval.benchmarks[]); may share no name or question with eval.benchmarks."""
    seeds: list[int] = field(default_factory=lambda: [0])
    """Eval seeds of every selection benchmark (a benchmark's own `seeds` wins)."""
    metric: Literal["pass@1"] = "pass@1"
    """What picks the checkpoint: the mean over selection benchmarks of each one's pass@1 (mean over seeds)."""
    wait_minutes: float = 1440.0
    """How long a select_eval task waits for its checkpoint to be saved before it fails."""

    @property
    def enabled(self) -> bool:
        return self.every > 0

    def steps(self, total: int) -> list[int]:
        """The training steps that are selection checkpoints: every `every`-th, and the last."""
        return sorted({*range(self.every, total, self.every), total}) if self.enabled else []

    def check(self, source: str, reported: list[BenchmarkSpec]) -> None:
        if self.every < 0:
            raise ConfigError(f"{source}: train.select.every must be 0 (off) or a number of steps, got {self.every}.")
        if not self.enabled:
            return
        names = [b.name for b in self.benchmarks]
        if not names:
            raise ConfigError(f"{source}: train.select.every is set but train.select.benchmarks is empty; list one.")
        if any(not n for n in names) or len(set(names)) != len(names):
            raise ConfigError(f"{source}: every train.select.benchmarks entry needs a unique 'name'.")
        if not self.seeds:
            raise ConfigError(f"{source}: train.select.seeds must list at least one seed.")
        if self.wait_minutes <= 0:
            raise ConfigError(f"{source}: train.select.wait_minutes must be positive, got {self.wait_minutes}.")
        shared = sorted(set(names) & {b.name for b in reported})
        if shared:
            raise ConfigError(
                f"{source}: train.select.benchmarks and eval.benchmarks both name {', '.join(shared)}; a checkpoint "
                "picked on a reported benchmark inflates its score, so select on other benchmarks."
            )
        for bench in self.benchmarks:
            bench.check(source)
