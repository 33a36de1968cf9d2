"""Eval-set decontamination: benchmark questions planted among the seeds are dropped, listed and counted at
launch; solutions that quote a benchmark question are dropped at merge (no model needed)."""

import io
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from rich.console import Console

from svd_hpc import config
from svd_hpc.config import BenchmarkSpec
from svd_hpc.inputs import seeds
from svd_hpc.inputs.decontam import EvalQuestion, Index, normalise
from svd_hpc.launch import prepare, seeds_table
from svd_hpc.rundir.layout import RunDir
from svd_hpc.runner.task import run_once
from tests.helpers import write_config
from tests.test_merge import cand, make_run

# 20 words: long enough for 13-gram tests
LONG = "A train leaves the station at noon and travels 60 miles per hour for three hours before it stops twice."
SHORT = "What is the sum of 17 and 25?"  # 8 words: exact match only
BENCH = [
    {"id": "long-1", "question": LONG, "answer": "180"},
    {"id": "short-1", "question": SHORT, "answer": "42"},
    {"id": "other", "question": "Name the largest prime below one hundred.", "answer": "97"},
]
# 13 consecutive words of LONG ("the station ... three hours"), new words around them
PARAPHRASE = "Suppose the station at noon and travels 60 miles per hour for three hours; how far?"
SHARED_13 = "the station at noon and travels 60 miles per hour for three hours"
NEAR_MISS = "Suppose a bus left the station at noon and travels 60 miles per hour for three days."  # 12 shared


def index(ngram=13) -> Index:
    return Index((EvalQuestion("bench", r["id"], r["question"]) for r in BENCH), ngram)


def test_normalisation_is_the_janitors():
    # lm_eval's janitor: ASCII lower case, string.punctuation deleted, split on whitespace
    assert normalise("  What's  THE Sum,\tof 17+25?!  ") == ["whats", "the", "sum", "of", "1725"]
    assert normalise("Ça coûte 3€.") == ["Ça", "coûte", "3€"]  # only ASCII letters change case


def test_exact_and_ngram_matches():
    idx = index()
    [exact] = idx.matches("what is THE sum of 17 and 25")
    assert (exact.benchmark, exact.question_id, exact.ngram) == ("bench", "short-1", None)
    assert idx.matches(SHORT + " Explain.") == []  # short questions: whole-question match only
    [gram] = idx.matches(PARAPHRASE)
    assert (gram.question_id, gram.ngram) == ("long-1", SHARED_13)
    assert len(SHARED_13.split()) == 13
    assert idx.matches(NEAR_MISS) == []
    assert idx.matches(SHORT, exact=False) == []  # a solution is tested by n-grams alone
    assert [m.question_id for m in idx.matches(LONG.upper(), exact=False)] == ["long-1"]
    exact_only = index(ngram=None)
    assert exact_only.matches(PARAPHRASE) == [] and len(exact_only.matches(LONG.lower())) == 1


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def planted_run(tmp_path: Path, **decontaminate) -> tuple[config.RunConfig, RunDir]:
    """A run whose 8 seeds hold two planted benchmark questions (one exact, one 13-gram paraphrase)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    bench = write_jsonl(tmp_path / "bench.jsonl", BENCH)
    clean = [{"id": f"s{i}", "question": f"What is {i} + {i}?"} for i in range(5)]
    planted = [
        {"id": "planted-exact", "question": "WHAT is the sum of 17 and 25"},
        {"id": "planted-13gram", "question": PARAPHRASE},
        {"id": "near-miss", "question": NEAR_MISS},
    ]
    src = write_jsonl(tmp_path / "s.jsonl", clean[:2] + planted + clean[2:])
    path = write_config(
        tmp_path,
        2,
        **{
            "seeds.path": str(src),
            "seeds.id_field": "id",
            "train.enabled": False,
            "eval.benchmarks": [{"name": "bench", "path": str(bench), "id_field": "id"}],
            "decontaminate": {"enabled": True, **decontaminate},
        },
    )
    return config.load(path), RunDir(tmp_path / "runs" / "toy")


def shard_ids(run: RunDir, shards: int) -> list[str]:
    return [q for i in range(shards) for q in pq.read_table(run.shard_path("seeds", i))["question_id"].to_pylist()]


def test_launch_drops_lists_and_counts_planted_benchmark_questions(tmp_path):
    cfg, run = planted_run(tmp_path)
    prepare(cfg, run)  # what the launch runs before submitting
    assert shard_ids(run, 2) == ["s0", "s1", "near-miss", "s2", "s3", "s4"]
    listed = [json.loads(line) for line in seeds.contaminated_path(run).read_text().splitlines()]
    assert [(r["seed_id"], r["benchmark"], r["question_id"], r["ngram"]) for r in listed] == [
        ("planted-exact", "bench", "short-1", None),
        ("planted-13gram", "bench", "long-1", SHARED_13),
    ]
    stats = json.loads((run.stage_dir("seeds") / "stats.json").read_text())
    assert stats["contaminated_dropped"] == 2 and stats["seeds"] == 6 and stats["per_domain"] == {"math": 6}
    out = io.StringIO()
    Console(file=out, width=120).print(seeds_table(stats))
    assert "contaminated dropped" in out.getvalue() and "2 (seeds/contaminated.jsonl)" in out.getvalue()


def test_exact_only_and_disabled(tmp_path):
    cfg, run = planted_run(tmp_path / "exact", ngram=None)
    prepare(cfg, run)
    assert "planted-13gram" in shard_ids(run, 2) and "planted-exact" not in shard_ids(run, 2)
    cfg, run = planted_run(tmp_path / "off", enabled=False)
    prepare(cfg, run)
    assert len(shard_ids(run, 2)) == 8 and not seeds.contaminated_path(run).exists()
    assert "contaminated_dropped" not in json.loads((run.stage_dir("seeds") / "stats.json").read_text())


def test_a_benchmark_that_cannot_load_stops_the_launch_before_anything_is_written(tmp_path):
    cfg, run = planted_run(tmp_path)
    cfg.eval.benchmarks = [BenchmarkSpec(name="gone", path=str(tmp_path / "missing.jsonl"))]
    with pytest.raises(ValueError, match="decontaminate.enabled: false"):
        prepare(cfg, run)
    assert not run.root.exists()


# ----------------------------------------------------------------------------- solutions, at merge


def merge_run(tmp_path: Path, solutions: bool) -> RunDir:
    bench = write_jsonl(tmp_path / "bench.jsonl", BENCH)

    def quoting(who):  # a solution that quotes the benchmark question
        return f"<think>\n{who} recalls: {LONG}\n</think>\n\\boxed{{1}}"

    shards = [
        [cand("a", 0, text=quoting("a")), cand("a", 1)],  # a's first valid candidate quotes the benchmark
        [cand("b", 0, text=quoting("b"))],  # b has no clean candidate
        [cand("c", 0)],
    ]
    run = make_run(tmp_path, shards, validation_fraction=0.0, max_per_question=1)
    cfg = run.load_config()
    cfg.eval.benchmarks = [BenchmarkSpec(name="bench", path=str(bench), id_field="id")]
    cfg.decontaminate.solutions = solutions
    run.write_config(cfg, {"version": "test"})
    # the launch dropped one seed as contaminated
    seeds.contaminated_path(run).parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(seeds.contaminated_path(run), [{"seed_id": "z", "domain": "math", "benchmark": "bench"}])
    return run


def test_merge_drops_solutions_that_quote_a_benchmark_before_selection(tmp_path):
    run = merge_run(tmp_path, solutions=True)
    run_once(run.root, "merge", 0)
    out = run.stage_dir("merge")
    kept = pq.read_table(out / "sft/train.parquet").select(["question_id", "candidate_index"]).to_pylist()
    # a keeps its clean second candidate; b loses its only one
    assert sorted((r["question_id"], r["candidate_index"]) for r in kept) == [("a", 1), ("c", 0)]
    listed = [json.loads(line) for line in (out / "contaminated.jsonl").read_text().splitlines()]
    assert [(r["seed_id"], r["candidate_index"], r["question_id"], r["in"], r["dropped"]) for r in listed] == [
        ("a", 0, "long-1", "solution", True),
        ("b", 0, "long-1", "solution", True),
    ]
    stats = json.loads((out / "stats.json").read_text())
    assert stats["overall"]["contaminated_solutions"] == 2 and stats["overall"]["contaminated_seeds"] == 1
    assert stats["decontamination"]["overlapped"] == {}  # nothing kept overlaps: the clean subset is all


def test_merge_keeps_and_reports_overlapping_solutions_with_solutions_false(tmp_path):
    run = merge_run(tmp_path, solutions=False)
    run_once(run.root, "merge", 0)
    out = run.stage_dir("merge")
    kept = pq.read_table(out / "sft/train.parquet").select(["question_id", "candidate_index"]).to_pylist()
    assert sorted((r["question_id"], r["candidate_index"]) for r in kept) == [("a", 0), ("b", 0), ("c", 0)]
    stats = json.loads((out / "stats.json").read_text())
    assert stats["overall"]["contaminated_solutions"] == 2
    assert stats["decontamination"]["overlapped"] == {"bench": ["long-1"]}
