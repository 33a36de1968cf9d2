"""Seeds with known answers: the answer reaches the seed shards but no prompt, and the report's
"How good was self-verification" table (precision and recall of each gate) is right by construction."""

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from test_generate_verify import ScriptedEngine

from svd_hpc import config
from svd_hpc.config import VERIFY_STAGES
from svd_hpc.inputs import seeds
from svd_hpc.records import SEED, VERDICT
from svd_hpc.report.judges import CASCADE, FILTER, judge_accuracy, judges_section
from svd_hpc.rundir.layout import RunDir
from svd_hpc.runner.task import run_once
from svd_hpc.stages import generate, verify

# an answer that appears in no question, so finding it in a prompt can only mean it leaked
SECRET = "4711"


def prepare_run(tmp_path: Path, questions: list[dict], **seed_settings) -> RunDir:
    tmp_path.mkdir(parents=True, exist_ok=True)
    seeds_path = tmp_path / "seeds.jsonl"
    seeds_path.write_text("".join(json.dumps(q) + "\n" for q in questions))
    data = {"name": "judges", "seeds": {"path": str(seeds_path), **seed_settings}, "train": {"enabled": False}}
    cfg_path = tmp_path / "judges.yaml"
    cfg_path.write_text(yaml.safe_dump(data))
    cfg = config.load(cfg_path)
    run = RunDir(tmp_path / "run")
    run.write_config(cfg, meta={})
    seeds.prepare(cfg, run)
    return run


class Solver(ScriptedEngine):
    """The scripted judges, plus a generator that answers every question with a boxed 5."""

    thinking = False

    def respond(self, prompt: str, n: int) -> list[str]:
        if prompt.startswith("What is"):
            return ["2 + 3 = 5, so the answer is \\boxed{5}."] * n
        return super().respond(prompt, n)


def test_seed_answers_reach_the_seed_shards_and_never_a_prompt(tmp_path):
    run = prepare_run(
        tmp_path,
        [{"question": "What is 2 + 3?", "answer": SECRET}, {"question": "What is 1 + 1?", "answer": 2}],
        answer_field="answer",
    )
    shard = pq.read_table(run.shard_path("seeds", 0))
    assert shard.schema == SEED
    assert shard.column("reference").to_pylist() == [SECRET, "2"]  # numbers kept as text
    engine = Solver()
    generate.run_shard(run, 0, engine=engine)
    run.mark_done("generate", 0)
    verify.run_shard(run, 0, engine=engine)
    sent = [p for call in engine.calls for p in call["prompts"]]
    # generation, question inference and the three judges all ran, and none of them saw the answer
    assert any(p.startswith("What is 2 + 3?") for p in sent) and len(engine.calls) >= 5
    assert not any(SECRET in p for p in sent)
    candidates = pq.read_table(run.shard_path("generate", 0))
    assert "reference" not in candidates.column_names
    assert not any(SECRET in str(v) for row in candidates.to_pylist() for v in row.values())


def test_seed_answer_field_checks_and_old_shards_still_read(tmp_path):
    with pytest.raises(ValueError, match="no row has the field 'solution'"):
        no_field = write(tmp_path / "a.jsonl", [{"question": "q"}])
        seeds.load(config.SeedsConfig(path=str(no_field), answer_field="solution"))
    partial = write(tmp_path / "b.jsonl", [{"question": "q1", "answer": "3"}, {"question": "q2"}])
    known = seeds.load(config.SeedsConfig(path=str(partial), answer_field="answer"))
    assert known["reference"].to_pylist() == ["3", None]
    no_answers = seeds.load(config.SeedsConfig(path=str(partial)))
    assert no_answers["reference"].to_pylist() == [None, None]
    # a run directory written before the column: generate reads its shard, with the same fingerprint
    run = prepare_run(tmp_path, [{"question": "What is 2 + 3?"}])
    new = pq.read_table(run.shard_path("seeds", 0))
    old = new.drop_columns(["reference"])
    pq.write_table(old, run.shard_path("seeds", 0))
    assert generate.read_seed_shard(run, 0).num_rows == 1
    cfg = run.load_config()
    assert generate.fingerprint(cfg, old) == generate.fingerprint(cfg, new)
    assert judge_accuracy(run) is None and judges_section(run) is None


def write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ----------------------------------------------------------------------------- the table, by construction

# (final answer, passed_filter, status, failed_stage); the known answer is 42
CORRECT, WRONG = "so \\boxed{42}", "so \\boxed{7}"
CANDIDATES = [
    (CORRECT, False, "filtered", None),  # 1
    (WRONG, False, "filtered", None),  # 2
    (CORRECT, True, "rejected", "cycle"),  # 3
    (WRONG, True, "rejected", "cycle"),  # 4
    (WRONG, True, "rejected", "cycle"),  # 5
    (CORRECT, True, "rejected", "factuality"),  # 6
    (WRONG, True, "rejected", "factuality"),  # 7
    (CORRECT, True, "rejected", "correctness"),  # 8
    (WRONG, True, "rejected", "correctness"),  # 9
    (CORRECT, True, "passed", None),  # 10
    ("The answer is 42.", True, "passed", None),  # 11: correct only when the last number is read
    (WRONG, True, "passed", None),  # 12
    (CORRECT, True, "skipped", "factuality"),  # 13: its factuality request could not run
    ("", False, "skipped", None),  # 14: its question could not run at all
]
# gate -> (entering, correct, passed, passed and correct), counted by hand from the list above
# (math_last_number grader: candidate 11 is correct)
EXPECTED = {
    FILTER: (13, 7, 11, 6),
    "cycle": (11, 6, 8, 5),
    "factuality": (7, 4, 5, 3),
    "correctness": (5, 3, 3, 2),
    CASCADE: (10, 5, 3, 2),
}


def verdict_row(k: int, answer: str, passed_filter: bool, status: str, failed: str | None, qid: str) -> dict:
    reached = [] if not passed_filter else list(VERIFY_STAGES)
    if failed:  # rejected or skipped at `failed`: no votes from the next stage on
        reached = reached[: VERIFY_STAGES.index(failed) + (status == "rejected")]
    row = {name: None for name in VERDICT.names}
    row.update(
        question_id=qid,
        question="How many?",
        domain="math",
        candidate_index=k,
        text=answer,
        answer=answer,
        passed_filter=passed_filter,
        status=status,
        failed_stage=failed,
        skip_reason="engine_rejected: test" if status == "skipped" else None,
    )
    for stage in reached:
        row[f"{stage}_votes"] = [0] if (status == "rejected" and stage == failed) else [1]
    return row


def synthetic_run(tmp_path: Path, grader: str = "math_last_number") -> RunDir:
    run = prepare_run(
        tmp_path,
        [{"id": "q", "question": "How many?", "answer": "42"}, {"id": "u", "question": "Unknown?"}],
        id_field="id",
        answer_field="answer",
        answer_grader=grader,
    )
    rows = [verdict_row(k, *c, qid="q") for k, c in enumerate(CANDIDATES)]
    rows.append(verdict_row(0, CORRECT, True, "passed", None, qid="u"))  # no known answer: left out
    run.stage_dir("verify").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=VERDICT), run.shard_path("verify", 0))
    return run


def test_precision_and_recall_per_gate_known_by_construction(tmp_path):
    run = synthetic_run(tmp_path)
    result = judge_accuracy(run, "math_last_number")
    got = {g.name: (g.entering, g.correct, g.passed, g.passed_correct) for g in result.gates}
    assert got == EXPECTED
    assert (result.graded, result.unknown) == (len(CANDIDATES), 1)
    cycle = next(g for g in result.gates if g.name == "cycle")
    assert cycle.precision == 5 / 8 and cycle.recall == 5 / 6 and cycle.base_rate == 6 / 11
    # the plain math grader reads only \boxed{}: candidate 11 is wrong there
    strict = {g.name: g.passed_correct for g in judge_accuracy(run, "math").gates}
    assert strict[CASCADE] == 1 and strict[FILTER] == 5


def test_report_shows_the_table_with_answers_and_leaves_it_out_without(tmp_path):
    run = synthetic_run(tmp_path / "with")
    run_once(run.root, "report", 0)
    part = (run.root / "report.md").read_text().split("## How good was self-verification")[1].split("\n## ")[0]
    lines = [line for line in part.splitlines() if line.startswith("| ") and not line.startswith(("| gate", "| ---"))]
    assert lines[0] == "| static filter | 13 | 7 | 53.8 | 11 | 54.5 | 85.7 | +0.7 |"
    assert lines[-1] == "| whole cascade | 10 | 5 | 50.0 | 3 | 66.7 | 40.0 | +16.7 |"
    assert [line.split(" | ")[0] for line in lines[1:4]] == ["| cycle", "| factuality", "| correctness"]
    assert "1 candidates without a known answer" in part and "math_last_number" in part

    bare = prepare_run(tmp_path / "without", [{"question": "How many?"}])
    rows = [verdict_row(k, *c, qid="q") for k, c in enumerate(CANDIDATES)]
    bare.stage_dir("verify").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=VERDICT), bare.shard_path("verify", 0))
    run_once(bare.root, "report", 0)
    assert "How good was self-verification" not in (bare.root / "report.md").read_text()
