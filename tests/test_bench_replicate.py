"""benchmarks/bench_replicate.py --from-run: what it prints from a finished run directory (synthetic)."""

import importlib.util
import json
from pathlib import Path

import pyarrow as pa
import pytest

from svd_hpc import config
from svd_hpc.eval.scores import paired_bootstrap, score, scores_json
from svd_hpc.records import EVAL
from svd_hpc.rundir.layout import RunDir

REPO = Path(__file__).resolve().parent.parent
SPEC = importlib.util.spec_from_file_location("bench_replicate", REPO / "benchmarks" / "bench_replicate.py")
bench = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(bench)

QUESTIONS = 40
# correct answers per (model, mode, seed): SVD right on 30 of 40, base on 20, UQ-TTC on 25
RIGHT = {("base", "direct"): 20, ("trained", "direct"): 30, ("base", "uq_ttc"): 25}


def eval_table() -> pa.Table:
    rows = []
    for (model, mode), right in RIGHT.items():
        for seed in (0, 1, 2):
            for q in range(QUESTIONS):
                rows.append(
                    dict(benchmark="replicate_arithmetic", model=model, mode=mode, seed=seed, question_id=f"q{q}",
                         question="?", reference="1", response="1", extracted="1", correct=q < right,
                         grade_reason="", completion_tokens=1, samples=1, chosen_candidate=0)
                )  # fmt: skip
    return pa.Table.from_pylist(rows, schema=EVAL)


def synthetic_run(root: Path, timings: bool = True, evaluated: bool = True) -> Path:
    (root / "eval").mkdir(parents=True)
    RunDir(root).write_config(config.load(REPO / "configs" / "replicate-cpu.yaml"), meta={})
    if evaluated:
        summary = scores_json(score(eval_table(), {"replicate_arithmetic": "math"}))
        (root / "eval" / "summary.json").write_text(json.dumps(summary))
    overall = {"seeds": 600, "candidates": 2400, "filtered": 0, "passed_cycle": 1800, "passed_factuality": 1000,
               "passed_correctness": 700, "valid": 700, "selected": 330, "kept": 330, "train": 327, "validation": 3,
               "votes_cycle": 7200, "skipped_prompt_too_long": 0}  # fmt: skip
    (root / "merge").mkdir()
    (root / "merge" / "stats.json").write_text(json.dumps({"overall": overall, "per_domain": {"math": overall}}))
    if timings:
        (root / "logs").mkdir()
        (root / "logs" / "local_timings.json").write_text(json.dumps({"generate": 3000.0, "verify": 3600.4}))
    return root


def test_from_run_prints_pass1_delta_interval_p_value_sft_size_funnel_and_wall(tmp_path, capsys):
    run = synthetic_run(tmp_path / "run")
    assert bench.main(["--from-run", str(run)]) == 0
    out = capsys.readouterr().out
    # every seed gives the same scores: no seed-to-seed spread, so the error is 0.0
    assert "replicate_arithmetic" in out and "50.0 ± 0.0" in out and "75.0 ± 0.0" in out and "62.5 ± 0.0" in out
    # SVD − base per question, in the report's order (sorted ids): +1 on q20..q29 (its resamples, redone)
    gains = [1.0 if 20 <= int(q[1:]) < 30 else 0.0 for q in sorted(f"q{i}" for i in range(40))]
    low, high, p = paired_bootstrap(gains)
    assert p < 0.001  # nearly every resample gains
    line = next(line for line in out.splitlines() if line.startswith("SVD − base"))
    assert line == (
        f"SVD − base on replicate_arithmetic: +25.0 points, 95% paired bootstrap interval "
        f"[{100 * low:+.1f}, {100 * high:+.1f}] over 40 questions, two-sided p {bench._p(p)}"
    )
    assert "SFT size: 330 examples (train 327)" in out
    funnel = next(line for line in out.splitlines() if line.startswith("funnel:"))
    assert funnel == (
        "funnel: seeds 600, candidates 2,400, filtered 0, passed_cycle 1,800, passed_factuality 1,000, "
        "passed_correctness 700, valid 700, selected 330, kept 330, train 327, validation 3"
    )
    assert "wall time: 6600 s (1 h 50 min)" in out  # the stage times summed


def test_from_run_before_the_merge_says_what_is_missing(tmp_path):
    (tmp_path / "run").mkdir()
    with pytest.raises(SystemExit, match="stats.json is missing: the run has not reached its merge"):
        bench.main(["--from-run", str(tmp_path / "run")])


def test_from_run_still_in_eval_prints_the_funnel_and_says_pass1_is_not_measured(tmp_path, capsys):
    run = synthetic_run(tmp_path / "run", evaluated=False)
    assert bench.main(["--from-run", str(run)]) == 0
    out = capsys.readouterr().out
    assert "pass@1: not measured yet" in out and "eval has not finished" in out
    assert "SFT size: 330 examples (train 327)" in out and "funnel: seeds 600, candidates 2,400" in out
    assert "wall time of the stages finished so far: 6600 s" in out
    assert "no judge table (its seeds carry no answers)" in out  # no seed or verify shards here


def test_a_summary_without_p_value_says_how_to_get_it(tmp_path, capsys):
    run = synthetic_run(tmp_path / "run", timings=False)
    summary = json.loads((run / "eval" / "summary.json").read_text())
    del summary["replicate_arithmetic"]["delta"]["SVD"]["p_value"]
    (run / "eval" / "summary.json").write_text(json.dumps(summary))
    bench.main(["--from-run", str(run)])
    out = capsys.readouterr().out
    assert "p not recorded (rebuild" in out and "wall time: not recorded" in out


def test_write_puts_the_printout_and_the_judges_table_verbatim_in_docs(tmp_path, capsys, monkeypatch):
    run = synthetic_run(tmp_path / "replicate-x")
    judges = "## How good was self-verification\n\n| gate | entering |\n| --- | ---: |\n| cycle | 2400 |"
    monkeypatch.setattr(bench, "judges_section", lambda run_dir: judges if run_dir == run else "wrong run")
    monkeypatch.setattr(bench, "FIGURES_DIR", tmp_path / "docs")
    assert bench.main(["--from-run", str(run), "--write"]) == 0
    out = capsys.readouterr().out
    page = (tmp_path / "docs" / "replicate-x.md").read_text()
    printout = out.split(f"run directory: {run}\n", 1)[1].split(f"\n{judges}", 1)[0]
    assert "SVD − base on replicate_arithmetic" in printout
    assert f"```\n{printout}\n```\n\n{judges}\n" in page  # the printout and the table, verbatim
    assert "read from the run directory" in page


def test_readme_quotes_each_replication_page_verbatim():
    """README's replication figures are docs/replicate/<run>.md's (bench_replicate --write), never typed apart."""
    readme = (REPO / "README.md").read_text()
    pages = sorted((REPO / "docs" / "replicate").glob("*.md"))
    assert pages, "README's 'Does it work at 135M?' quotes docs/replicate/: it must hold the pages it quotes"
    for page in pages:
        text = page.read_text()
        printout = text.split("```\n", 1)[1].split("\n```", 1)[0]
        table = "\n".join(line for line in text.splitlines() if line.startswith("|"))
        assert f"```\n{printout}\n```" in readme and table in readme, page.name
