"""How good was self-verification: the judges' precision and recall against the seeds' known answers.

SVD needs no answers, but a seed set that has them (seeds.answer_field) lets the report say whether
the judges kept right candidates and threw out wrong ones better than chance. Each candidate's
final answer (the part the judges saw) is graded against its question's known answer with the eval's
math grader (seeds.answer_grader); then, per gate (the static filter, each cascade stage in the
order it ran, and the cascade as a whole):

- entering: candidates that reached the gate and were judged there (a judge request the engine
  could not run is left out: nothing was decided);
- base rate: the share of those that are correct, what a gate passing at random would keep;
- precision: the share of those passing that are correct;
- recall: the share of the correct ones entering that pass.

A gate beats chance when its precision is above its base rate. Reads the verify shards (VERDICT)
and the seed shards (SEED, `reference`), joined by question_id; candidates of questions without a
known answer, or outside the math domain, are left out and counted.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from ..config import VERIFY_STAGES
from ..eval.grade import box_last_number
from ..eval.grading.math import grade_math
from ..rundir.layout import RunDir
from .section import Section

FILTER, CASCADE = "static filter", "whole cascade"
VERDICT_COLUMNS = ["question_id", "domain", "answer", "passed_filter", "status", "failed_stage"] + [
    f"{stage}_votes" for stage in VERIFY_STAGES
]


@dataclass
class Gate:
    """One gate's counts over the graded candidates that entered it."""

    name: str
    entering: int = 0
    correct: int = 0  # of those entering
    passed: int = 0
    passed_correct: int = 0

    @property
    def base_rate(self) -> float | None:
        return self.correct / self.entering if self.entering else None

    @property
    def precision(self) -> float | None:
        return self.passed_correct / self.passed if self.passed else None

    @property
    def recall(self) -> float | None:
        return self.passed_correct / self.correct if self.correct else None


@dataclass
class JudgeAccuracy:
    gates: list[Gate]
    graded: int  # candidates graded against a known answer
    unknown: int  # candidates whose question has no known answer (or is not math)


def known_answers(run: RunDir) -> dict[str, str]:
    """question_id -> known answer, from the seed shards (shards written before the column: none)."""
    out: dict[str, str] = {}
    for path in sorted(run.stage_dir("seeds").glob("shard-*.parquet")):
        try:
            if "reference" not in pq.read_schema(path).names:
                continue
            table = pq.read_table(path, columns=["question_id", "reference"])
        except (OSError, pa.ArrowInvalid):
            continue
        for qid, ref in zip(table["question_id"].to_pylist(), table["reference"].to_pylist()):
            if ref is not None:
                out[qid] = ref
    return out


def _stage_order(run: RunDir) -> list[str]:
    """The cascade stages in the order the run judged them (its verify.stages)."""
    try:
        return [s for s in run.load_config().verify.stages if s in VERIFY_STAGES]
    except Exception:  # noqa: BLE001  a run directory without a readable config still gets the table
        return list(VERIFY_STAGES)


def judge_accuracy(run: RunDir, grader: str = "math") -> JudgeAccuracy | None:
    """The gates' counts over the run's verify shards, or None when no seed carries a known answer."""
    answers = known_answers(run)
    if not answers:
        return None
    rows = []
    for path in sorted(run.stage_dir("verify").glob("shard-*.parquet")):
        try:
            rows += pq.read_table(path, columns=VERDICT_COLUMNS).to_pylist()
        except (OSError, KeyError, pa.ArrowInvalid):
            continue
    graded, unknown = [], 0
    for row in rows:
        reference = answers.get(row["question_id"])
        if reference is None or row["domain"] != "math":
            unknown += 1
            continue
        text = row["answer"] or ""
        correct = grade_math(box_last_number(text) if grader == "math_last_number" else text, reference).correct
        graded.append((row, correct))
    stages = _stage_order(run)
    gates = {name: Gate(name) for name in [FILTER, *stages, CASCADE]}

    def count(gate: Gate, correct: bool, passed: bool) -> None:
        gate.entering += 1
        gate.correct += correct
        gate.passed += passed
        gate.passed_correct += correct and passed

    for row, correct in graded:
        status, failed = row["status"], row["failed_stage"]
        if status == "skipped" and not failed:
            continue  # the engine could not run its question: never a candidate
        count(gates[FILTER], correct, bool(row["passed_filter"]))
        for stage in stages:
            if row.get(f"{stage}_votes") is None or (status == "skipped" and failed == stage):
                continue  # never reached this stage, or its judge request could not run: nothing decided
            count(gates[stage], correct, failed != stage)
        if row["passed_filter"] and status != "skipped":
            count(gates[CASCADE], correct, status == "passed")
    return JudgeAccuracy(list(gates.values()), len(graded), unknown)


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}"


def judges_section(run: RunDir, grader: str = "math") -> Section | None:
    """The "How good was self-verification" table; None when the seeds carry no known answers
    (the method needs none, and most runs have none)."""
    section = Section(
        "How good was self-verification",
        ["gate", "entering", "correct", "base rate %", "passed", "precision %", "recall %", "precision − base (pp)"],
    )
    result = judge_accuracy(run, grader)
    if result is None:
        return None
    if not result.graded:
        section.note = "No judged candidate of a question with a known answer yet (verify shards missing or empty)."
        return section
    for gate in result.gates:
        lift = None if gate.precision is None else gate.precision - gate.base_rate
        section.rows.append(
            [
                gate.name,
                f"{gate.entering:,}",
                f"{gate.correct:,}",
                _pct(gate.base_rate),
                f"{gate.passed:,}",
                _pct(gate.precision),
                _pct(gate.recall),
                "—" if lift is None else f"{100 * lift:+.1f}",
            ]
        )
    left_out = ""
    if result.unknown:
        left_out = f" {result.unknown:,} candidates without a known answer (or not math) are left out."
    section.note = (
        f"Each candidate's final answer graded against its seed's known answer ({grader} grader), "
        "an answer the model never saw. Base rate: the share of candidates entering a gate that are correct, "
        "what a gate passing at random would keep; precision: correct among those passing; recall: passing "
        "among the correct ones entering. A gate beats chance when precision is above the base rate." + left_out
    )
    return section
