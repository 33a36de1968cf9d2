"""The report, built from small hand-made runs, its numbers checked against the records with
independent arithmetic (numpy, brute-force pass@k), SLURM accounting faked at the sacct boundary."""

import io
import itertools
import json
import os
import stat
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from rich.console import Console

from svd_hpc import config
from svd_hpc.eval import scores as scoring
from svd_hpc.eval.scores import domains_of, read_eval, score
from svd_hpc.records import EVAL
from svd_hpc.report.cost import cost_section, sacct_seconds
from svd_hpc.rundir.atomic import atomic_write_json
from svd_hpc.rundir.layout import RunDir
from svd_hpc.rundir.planfile import plan_to_json
from svd_hpc.runner.plan import build_plan
from svd_hpc.runner.task import run_once
from svd_hpc.slurm import commands as slurm
from svd_hpc.stages import report

SEEDS = [0, 1, 2]
# benchmark -> variant -> seed -> correctness per question
RESULTS = {
    "m1": {
        "base": {0: [1, 0, 0, 0], 1: [1, 1, 0, 0], 2: [1, 1, 1, 0]},
        "SVD": {0: [1, 1, 1, 0], 1: [1, 1, 1, 0], 2: [1, 1, 1, 1]},
        "UQ-TTC": {0: [1, 1, 0, 0], 1: [1, 1, 0, 0], 2: [1, 1, 0, 1]},
    },
    "m2": {
        "base": {0: [0, 1], 1: [0, 1], 2: [0, 0]},
        "SVD": {0: [1, 1], 1: [1, 0], 2: [1, 1]},
    },
    "sci": {"base": {0: [1, 0, 1], 1: [0, 0, 1]}},
}
VARIANT = {"base": ("base", "direct"), "SVD": ("trained", "direct"), "UQ-TTC": ("base", "uq_ttc")}


def prepare_run(tmp_path: Path, **settings) -> RunDir:
    data = {"name": "hand", **settings}
    path = tmp_path / "hand.yaml"
    path.write_text(yaml.safe_dump(data))
    cfg = config.load(path)
    run = RunDir(tmp_path / "run")
    run.write_config(cfg, meta={})
    atomic_write_json(run.plan_path, plan_to_json(build_plan(cfg)))
    return run


def write_eval(run: RunDir) -> None:
    for bench, variants in RESULTS.items():
        for variant, seeds in variants.items():
            model, mode = VARIANT[variant]
            for seed, correct in seeds.items():
                rows = [
                    {
                        "benchmark": bench,
                        "model": model,
                        "mode": mode,
                        "seed": seed,
                        "question_id": f"{bench}-q{i}",
                        "question": "q",
                        "reference": "1",
                        "response": "r",
                        "extracted": "1",
                        "correct": bool(c),
                        "grade_reason": "correct" if c else "wrong_answer",
                        "completion_tokens": 10 + i,
                        "samples": 1 if mode == "direct" else 8 + 3,
                        "chosen_candidate": 0,
                    }
                    for i, c in enumerate(correct)
                ]
                suffix = "" if mode == "direct" else "-uq_ttc"
                path = run.root / "eval" / model / bench / f"seed-{seed}{suffix}.parquet"
                path.parent.mkdir(parents=True, exist_ok=True)
                pq.write_table(pa.Table.from_pylist(rows, schema=EVAL), path)
                domain = "science" if bench == "sci" else "math"
                atomic_write_json(path.with_suffix(".json"), {"benchmark": bench, "domain": domain})


def fmt(mean, err=None, signed=False):
    text = f"{100 * mean:+.1f}" if signed else f"{100 * mean:.1f}"
    return text if err is None else f"{text} ± {100 * err:.1f}"


def seed_scores(bench_list, variant):
    """pass@1 of each seed, pooling the questions of the given benchmarks."""
    out = []
    for seed in SEEDS:
        values = [c for b in bench_list for c in RESULTS[b].get(variant, {}).get(seed, [])]
        if values:
            out.append(np.mean(values))
    return np.array(out)


def exact_bootstrap_interval(bench: str, variant: str) -> tuple[float, float]:
    """The 95% percentile interval of the paired bootstrap, from every equally likely resample of
    the questions (enumerated, not sampled): per question, the mean over seeds of variant − base."""
    base, other = RESULTS[bench]["base"], RESULTS[bench][variant]
    seeds = sorted(set(base) & set(other))
    per_question = [np.mean([other[s][q] - base[s][q] for s in seeds]) for q in range(len(base[seeds[0]]))]
    means = [np.mean(pick) for pick in itertools.product(per_question, repeat=len(per_question))]
    low, high = np.quantile(means, [0.025, 0.975], method="inverted_cdf")  # the quantiles of that distribution
    return float(low), float(high)


def saved_delta(run: RunDir, group: str, variant: str) -> dict:
    return json.loads((run.root / "eval" / "summary.json").read_text())[group]["delta"][variant]


def brute_pass_at_k(correct: list[int], k: int) -> float:
    subsets = list(itertools.combinations(correct, k))
    return sum(any(s) for s in subsets) / len(subsets)


@pytest.fixture
def fake_sacct(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "sacct"
    script.write_text(
        "#!/bin/sh\ncat <<'EOF'\n"
        "100_0|3600|billing=1,cpu=1,gres/gpu=2,mem=1G,node=1\n"
        "100_1|1800|cpu=1,gres/gpu=2\n"
        "100_[2-3]|0|\n"
        "200|7200|cpu=8,gres/gpu:a100=4,gres/gpu=4\n"
        "EOF\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def test_report_numbers_match_the_records(tmp_path, fake_sacct):
    benchmarks = [
        {"name": "m1", "path": "m1.jsonl"},
        {"name": "m2", "path": "m2.jsonl"},
        {"name": "sci", "path": "sci.jsonl", "grader": "choice", "domain": "science"},
    ]
    run = prepare_run(tmp_path, eval={"benchmarks": benchmarks, "seeds": SEEDS, "uq_ttc": True, "uq_ttc_candidates": 8})
    write_eval(run)
    stats = {
        "overall": {"seeds": 10, "candidates": 80, "filtered": 8, "passed_cycle": 40, "valid": 20, "kept": 8},
        "per_domain": {
            "math": {"seeds": 10, "candidates": 80, "filtered": 8, "passed_cycle": 40, "valid": 20, "kept": 8}
        },
        "skipped_shards": [],
    }
    atomic_write_json(run.root / "merge" / "stats.json", stats)
    for i, tokens in enumerate([[10, 20, 30], [5]]):
        run.shard_path("generate", i).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"completion_tokens": pa.array(tokens, pa.int32())}), run.shard_path("generate", i))
        run.shard_path("verify", i).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(
            pa.table({"judge_completion_tokens": [t * 3 for t in tokens], "judge_samples": [4] * len(tokens)}),
            run.shard_path("verify", i),
        )
        run.mark_done("generate", i, seconds=100)
    atomic_write_json(
        run.jobs_path,
        {
            "submissions": [
                {"stage": "generate", "job_id": "100", "array": True, "offset": 0, "indices": [0, 1, 2, 3]},
                {"stage": "train", "job_id": "200", "array": False, "offset": 0, "indices": [0]},
            ]
        },
    )

    out = io.StringIO()
    path = report.build(run, console=Console(file=out, width=250))
    text = path.read_text()
    scores = score(read_eval(run), domains_of(run.load_config(), run))

    for bench, domain in (("m1", "math"), ("m2", "math"), ("sci", "science")):
        cells = {}
        for variant in ("base", "SVD", "UQ-TTC"):
            values = seed_scores([bench], variant)
            if len(values) == 0:
                assert (variant, bench) not in scores.pass1
                cells[variant] = "—"
                continue
            mean, err = values.mean(), values.std(ddof=1) / np.sqrt(len(values))
            assert scores.pass1[(variant, bench)] == pytest.approx((mean, err))
            cells[variant] = fmt(mean, err)
        base = seed_scores([bench], "base")
        deltas, intervals = {}, {}
        for variant in ("SVD", "UQ-TTC"):
            other = seed_scores([bench], variant)
            if len(other):
                d = other.mean() - base.mean()
                e = np.sqrt(base.var(ddof=1) / len(base) + other.var(ddof=1) / len(other))
                deltas[variant] = fmt(d, e, signed=True)
                low, high = exact_bootstrap_interval(bench, variant)
                paired = scores.deltas[(variant, bench)]
                assert paired.mean == pytest.approx(d)  # same questions and seeds: the delta of the means
                assert (paired.low, paired.high) == pytest.approx((low, high), abs=0.03)
                intervals[variant] = f"[{100 * paired.low:+.1f}, {100 * paired.high:+.1f}]"
                assert saved_delta(run, bench, variant)["ci95"] == pytest.approx([paired.low, paired.high])
                assert paired.p_value is not None and saved_delta(run, bench, variant)["p_value"] == paired.p_value
            else:
                deltas[variant] = intervals[variant] = "—"
        seeds = "/".join(str(n) for n in sorted({len(RESULTS[bench][v]) for v in RESULTS[bench]}))
        questions = len(RESULTS[bench]["base"][0])
        row = (
            f"| {bench} | {domain} | {questions} | {seeds} | {cells['base']} | {cells['SVD']} | {deltas['SVD']} | "
            f"{intervals['SVD']} | {cells['UQ-TTC']} | {deltas['UQ-TTC']} | {intervals['UQ-TTC']} |"
        )
        assert row in text

    # the math domain pools m1 and m2 per seed before averaging over seeds
    pooled = seed_scores(["m1", "m2"], "SVD")
    assert scores.pass1[("SVD", "domain:math")] == pytest.approx((pooled.mean(), pooled.std(ddof=1) / np.sqrt(3)))
    assert "| all math | math | 6 | 3 |" in text and fmt(pooled.mean(), pooled.std(ddof=1) / np.sqrt(3)) in text
    # beside it, the paper's domain figure: m1's Δ plus m2's Δ, named under its table
    gains = text.split("## Domain gains")[1].split("##")[0]
    summed = scores.summed[("SVD", "domain:math")]
    assert summed.mean == pytest.approx(scores.deltas[("SVD", "m1")].mean + scores.deltas[("SVD", "m2")].mean)
    assert f"| math | SVD | m1 +{100 * scores.deltas[('SVD', 'm1')].mean:.1f}, m2 +" in gains
    assert "The paper's per-domain gains" in gains and "compare the paper's figures with the Σ Δ column" in gains
    assert saved_delta(run, "domain:math", "SVD")["aggregate"] == scoring.POOLED

    # pass@k: three samples (seeds) per question
    for (variant, bench), values in scores.pass_k.items():
        per_question = list(zip(*RESULTS[bench][variant].values()))
        n = len(RESULTS[bench][variant])
        assert sorted(values) == list(range(1, n + 1))
        for k in range(1, n + 1):
            assert values[k] == pytest.approx(np.mean([brute_pass_at_k(list(q), k) for q in per_question]))
    assert len(scores.pass_k) == 6
    m1_svd = scores.pass_k[("SVD", "m1")]
    assert f"| m1 | SVD | {100 * m1_svd[1]:.1f} | {100 * m1_svd[2]:.1f} | {100 * m1_svd[3]:.1f} |" in text

    # the funnel and the costs, as recorded
    funnel = text.split("## Merge funnel")[1].split("##")[0]
    assert "| seeds | 10 | 10 | — |" in funnel and "| candidates | 80 | 80 | 100.0 |" in funnel
    assert "| passed_cycle | 40 | 40 | 50.0 |" in funnel and "| kept | 8 | 8 | 10.0 |" in funnel
    names = [line.split("|")[1].strip() for line in funnel.splitlines() if line.startswith("| ") and "---" not in line][
        1:
    ]
    assert names == ["seeds", "candidates", "filtered", "passed_cycle", "valid", "kept"]  # funnel order, not the file's
    assert "| generate | 2 | 1.50 | 3.00 | 65 | 4 | — |" in text
    assert "| verify | 0 | — | — | 195 | 16 | 16 |" in text
    assert "| train | 0 | 2.00 | 8.00 | — | — | — |" in text
    base_rows = [
        r for b in RESULTS for v in ("base", "UQ-TTC") for s in RESULTS[b].get(v, {}).values() for r in range(len(s))
    ]
    uq_rows = sum(len(s) for s in RESULTS["m1"]["UQ-TTC"].values())
    tokens = sum(10 + i for i in base_rows)
    assert (
        f"| eval_base | 0 | — | — | {tokens:,} | {len(base_rows) - uq_rows + uq_rows * 11:,} | {uq_rows * 3} |" in text
    )
    assert "Task and GPU hours from sacct" in text
    assert (run.root / "report.png").read_bytes()[:4] == b"\x89PNG"
    saved = json.loads((run.root / "eval" / "summary.json").read_text())
    assert saved["m1"]["SVD"]["pass_at_1"] == pytest.approx(seed_scores(["m1"], "SVD").mean())
    assert saved["domain:math"]["questions"] == 6 and saved["m1"]["SVD"]["pass_at_k"]["3"] == pytest.approx(m1_svd[3])
    assert "pass@1 (%)" in out.getvalue() and cells["base"] in out.getvalue()


def test_job_states_and_report_costs_read_sacct_through_one_reader(tmp_path, monkeypatch):
    """status (slurm.task_states) and the report's hours both ask sacct through slurm.sacct, with the
    same command line; each parses the fields it asked for."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "sacct.args"
    for name, body in (
        ("squeue", "exit 0\n"),
        (
            "sacct",
            f'printf "%s\\n" "$*" >> {log}\n'
            'case "$*" in\n'
            '  *ElapsedRaw*) echo "7_0|60|cpu=1,gres/gpu=2" ;;\n'
            '  *) echo "7_0|COMPLETED|00:01:00|None"; echo "7_[1-2]|PENDING|00:00:00|Dependency" ;;\n'
            "esac\n",
        ),
    ):
        (bin_dir / name).write_text("#!/bin/sh\n" + body)
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    asked = []
    read = slurm.sacct
    monkeypatch.setattr(slurm, "sacct", lambda ids, fields: asked.append(fields) or read(ids, fields))

    states = slurm.task_states(["7"])
    assert {k: v.state for k, v in states.items()} == {"7_0": "COMPLETED", "7_1": "PENDING", "7_2": "PENDING"}
    assert sacct_seconds(["7"]) == {"7": (60.0, 120.0)}
    assert asked == [["JobID", "State", "Elapsed", "Reason"], ["JobID", "ElapsedRaw", "AllocTRES"]]
    assert log.read_text().splitlines() == [
        "-n -P -X --format=JobID,State,Elapsed,Reason -j 7",
        "-n -P -X --format=JobID,ElapsedRaw,AllocTRES -j 7",
    ]


def test_cost_of_a_run_of_rounds_counts_each_rounds_tokens(tmp_path):
    """Stages named round-R/generate and round-R/verify: their tokens and samples come from the round's folder."""
    run = prepare_run(tmp_path, rounds=2)
    for number, tokens in ((1, [5, 7]), (2, [11])):
        generate = run.stage_dir(f"round-{number}/generate")
        generate.mkdir(parents=True)
        pq.write_table(pa.table({"completion_tokens": tokens}), generate / "shard-00000.parquet")
    verify = run.stage_dir("round-1/verify")
    verify.mkdir(parents=True)
    pq.write_table(
        pa.table({"judge_completion_tokens": [30, 40], "judge_samples": [3, 4]}), verify / "shard-00000.parquet"
    )
    cfg = run.load_config()
    rows = {row[0]: row for row in cost_section(run, cfg, None).rows}
    assert rows["round-1/generate"][4:] == ["12", "2", "—"]
    assert rows["round-2/generate"][4:] == ["11", "1", "—"]
    assert rows["round-1/verify"][4:] == ["70", "7", "7"]


def test_report_of_a_run_without_eval_or_training(tmp_path):
    run = prepare_run(tmp_path, train={"enabled": False})
    # whatever the merge stage wrote, read defensively: a flat mapping with stray entries
    atomic_write_json(
        run.root / "merge" / "stats.json", {"candidates": 0, "kept": 0, "note": "empty", "per_domain": "?"}
    )
    run_once(run.root, "report", 0)
    text = (run.root / "report.md").read_text()
    assert "No eval results yet." in text and "| candidates | 0 | — |" in text and "| kept | 0 | — |" in text
    assert "note" not in text.split("## Merge funnel")[1].split("##")[0]
    assert "No SLURM accounting" in text and "| report | 0 | — |" in text
    assert (run.root / "report.png").read_bytes()[:4] == b"\x89PNG"
    assert run.is_done("report", 0)
    before = (run.root / "report.md").stat().st_mtime_ns
    run_once(run.root, "report", 0)  # done: a no-op
    assert (run.root / "report.md").stat().st_mtime_ns == before


def test_report_shows_judge_votes_without_verdict_and_cut_off(tmp_path):
    run = prepare_run(tmp_path, train={"enabled": False})
    overall = {
        "candidates": 8,
        "kept": 1,
        "votes_correctness": 5,
        "no_verdict_correctness": 0,
        "cut_off_correctness": 0,
        "votes_cycle": 40,
        "no_verdict_cycle": 6,
        "cut_off_cycle": 10,
    }
    atomic_write_json(run.root / "merge" / "stats.json", {"overall": overall, "per_domain": {"math": overall}})
    run_once(run.root, "report", 0)
    text = (run.root / "report.md").read_text()
    funnel_part = text.split("## Merge funnel")[1].split("##")[0]
    assert "votes_cycle" not in funnel_part and "cut_off_cycle" not in funnel_part  # not candidate counts
    votes_part = text.split("## Judge votes per stage")[1].split("##")[0]
    rows = [line for line in votes_part.splitlines() if line.startswith("| c")]
    assert rows == ["| cycle | 40 | 6 | 15.0 | 10 | 25.0 |", "| correctness | 5 | 0 | 0.0 | 0 | 0.0 |"]  # cascade order
    assert "verify.max_tokens" in votes_part  # judges were cut off: the report says what to raise


def test_pass_at_k_and_standard_error():
    for n in range(1, 7):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert scoring.pass_at_k(n, c, k) == pytest.approx(brute_pass_at_k([1] * c + [0] * (n - c), k))
    assert scoring.ks_for(8) == [1, 2, 4, 8] and scoring.ks_for(3) == [1, 2, 3]
    assert scoring.mean_stderr([0.5]) == (0.5, None)
    mean, err = scoring.mean_stderr([0.2, 0.4, 0.9])
    assert (mean, err) == pytest.approx((0.5, np.std([0.2, 0.4, 0.9], ddof=1) / np.sqrt(3)))
    assert scoring.delta((0.5, 0.03), (0.6, 0.04)) == pytest.approx((0.1, 0.05))
    with pytest.raises(ValueError):
        scoring.pass_at_k(3, 4, 1)


def test_paired_bootstrap_interval():
    assert scoring.paired_bootstrap_ci([0.25] * 7) == (0.25, 0.25)  # no spread, no width
    low, high = scoring.paired_bootstrap_ci([1.0, 0.0] * 50)
    # the mean of 100 fair coin flips: 0.5 ± 1.96 × 0.05
    assert (low, high) == pytest.approx((0.5 - 1.96 * 0.05, 0.5 + 1.96 * 0.05), abs=0.015)
    assert scoring.paired_bootstrap_ci([0.1, 0.3, 0.9]) == scoring.paired_bootstrap_ci([0.1, 0.3, 0.9])  # fixed seed
    with pytest.raises(ValueError, match="no paired questions"):
        scoring.paired_bootstrap_ci([])


def test_paired_bootstrap_p_value_comes_from_the_same_resamples():
    # every question gains: no resample reaches 0
    assert scoring.paired_bootstrap([1.0, 0.5, 1.0] * 20)[2] == 0.0
    # no change at all: every resampled mean is 0, on both sides
    assert scoring.paired_bootstrap([0.0] * 30)[2] == 1.0
    # +1 on 60 questions, -1 on 40: mean 0.2, sd ~0.98, z ~2.04; the bootstrap's p is near 0.04
    differences = [1.0] * 60 + [-1.0] * 40
    low, high, p = scoring.paired_bootstrap(differences)
    assert (low, high) == scoring.paired_bootstrap_ci(differences) and 0.02 < p < 0.07
    assert scoring.paired_bootstrap([-x for x in differences])[2] == pytest.approx(p, abs=0.01)  # two-sided


def test_domain_of_benchmarks_with_different_repeats_weighs_each_question_once(tmp_path):
    # AIME-like: 2 questions asked once; HMMT-like: 1 question asked 4 times
    rows = [("a", 0, "a-q0", 1, 1), ("a", 0, "a-q1", 0, 1)]
    rows += [("h", seed, "h-q0", base, svd) for seed, base, svd in ((0, 0, 1), (1, 0, 0), (2, 1, 1), (3, 0, 1))]
    table = eval_rows(
        [(bench, variant, seed, qid, correct) for bench, seed, qid, base, svd in rows
         for variant, correct in (("base", base), ("SVD", svd))]
    )  # fmt: skip
    scores = score(table, {"a": "math", "h": "math"})
    # per question means: base a-q0 1, a-q1 0, h-q0 1/4; SVD 1, 1, 3/4
    assert scores.pass1[("base", "domain:math")] == pytest.approx((np.mean([1, 0, 0.25]), None))
    assert scores.pass1[("SVD", "domain:math")] == pytest.approx((np.mean([1, 1, 0.75]), None))
    assert scores.seeds[("SVD", "domain:math")] == 0 and scores.seeds[("SVD", "h")] == 4
    paired = scores.deltas[("SVD", "domain:math")]
    assert (paired.mean, paired.questions, paired.pairs) == pytest.approx((np.mean([0, 1, 0.5]), 3, 6))
    section = report.pass1_section(scores, {"a": "math", "h": "math"})
    assert [row[3] for row in section.rows if row[0] == "all math"] == ["mixed"]


def eval_rows(rows) -> pa.Table:
    """EVAL records from (benchmark, variant, seed, question id, correct)."""
    return pa.Table.from_pylist(
        [
            {
                "benchmark": bench,
                "model": VARIANT[variant][0],
                "mode": VARIANT[variant][1],
                "seed": seed,
                "question_id": qid,
                "question": "q",
                "reference": "1",
                "response": "r",
                "extracted": "1",
                "correct": bool(correct),
                "grade_reason": "correct",
                "completion_tokens": 1,
                "samples": 1,
                "chosen_candidate": 0,
            }
            for bench, variant, seed, qid, correct in rows
        ],
        schema=EVAL,
    )


def test_domain_gain_is_reported_as_the_papers_sum_beside_the_pooled_mean(tmp_path):
    # "a" (2 questions) gains 1/2, "h" (3 questions) gains 1/3: Σ 5/6, pooled 2/5
    base = {"a": [0, 1], "h": [1, 0, 0]}
    svd = {"a": [1, 1], "h": [1, 1, 0]}
    rows = [(b, "base", 0, f"{b}{i}", c) for b in base for i, c in enumerate(base[b])]
    rows += [(b, "SVD", 0, f"{b}{i}", c) for b in svd for i, c in enumerate(svd[b])]
    domain_of = {"a": "math", "h": "math"}
    scores = score(eval_rows(rows), domain_of)
    summed, pooled = scores.summed[("SVD", "domain:math")], scores.deltas[("SVD", "domain:math")]
    assert summed.mean == pytest.approx(1 / 2 + 1 / 3) and pooled.mean == pytest.approx(2 / 5)
    assert summed.benchmarks == pytest.approx({"a": 1 / 2, "h": 1 / 3})
    assert summed.low <= summed.mean <= summed.high and summed.low < summed.high
    # every equally likely resample (questions drawn within each benchmark), enumerated
    diffs = {b: [s - t for s, t in zip(svd[b], base[b])] for b in base}
    sums = [
        np.mean(pa_) + np.mean(ph)
        for pa_ in itertools.product(diffs["a"], repeat=2)
        for ph in itertools.product(diffs["h"], repeat=3)
    ]
    exact = np.quantile(sums, [0.025, 0.975], method="inverted_cdf")
    assert (summed.low, summed.high) == pytest.approx(tuple(exact), abs=0.03)
    again = score(eval_rows(list(reversed(rows))), domain_of).summed[("SVD", "domain:math")]
    assert (again.low, again.high) == (summed.low, summed.high)  # fixed seed, any record order

    saved = scoring.scores_json(scores)["domain:math"]
    assert saved["delta_sum_over_benchmarks"]["SVD"]["mean"] == pytest.approx(5 / 6)
    assert saved["delta_sum_over_benchmarks"]["SVD"]["ci95"] == [summed.low, summed.high]
    assert saved["delta_sum_over_benchmarks"]["SVD"]["aggregate"] == scoring.SUMMED
    assert (
        saved["delta"]["SVD"]["mean"] == pytest.approx(2 / 5) and saved["delta"]["SVD"]["aggregate"] == scoring.POOLED
    )
    assert "delta_sum_over_benchmarks" not in scoring.scores_json(scores)["a"]

    section = report.domain_gains_section(scores)
    assert section.headers[3] == "Σ Δ over benchmarks (the paper's domain figure)" and section.headers[5] == "pooled Δ"
    assert section.rows == [
        ["math", "SVD", "a +50.0, h +33.3", "+83.3", f"[{100 * summed.low:+.1f}, {100 * summed.high:+.1f}]"]
        + ["+40.0", f"[{100 * pooled.low:+.1f}, {100 * pooled.high:+.1f}]"]
    ]
    assert "paper's per-domain gains" in section.note and "Σ Δ" in section.note


def test_uq_ttc_on_one_seed_pairs_with_base_on_that_seed():
    # eval.uq_ttc_seeds: one — base on seeds 0..2, UQ-TTC on seed 0 only
    base = {0: [0, 0, 1, 1], 1: [1, 1, 1, 1], 2: [1, 1, 1, 0]}
    uq = {0: [1, 0, 1, 1]}
    rows = [("h", "base", s, f"q{i}", c) for s, cs in base.items() for i, c in enumerate(cs)]
    rows += [("h", "UQ-TTC", s, f"q{i}", c) for s, cs in uq.items() for i, c in enumerate(cs)]
    scores = score(eval_rows(rows), {"h": "math"})
    assert scores.pass1[("UQ-TTC", "h")] == (0.75, None) and scores.seeds[("UQ-TTC", "h")] == 1
    assert scores.pass1[("base", "h")][0] == pytest.approx(0.75)  # the unpaired difference would read 0
    paired = scores.deltas[("UQ-TTC", "h")]
    # seed 0 against seed 0, question by question: +1, 0, 0, 0
    assert (paired.mean, paired.questions, paired.pairs) == (0.25, 4, 4)
    assert paired.low <= paired.mean <= paired.high
    assert scores.summed[("UQ-TTC", "domain:math")].mean == 0.25
    section = report.pass1_section(scores, {"h": "math"})
    (row,) = [r for r in section.rows if r[0] == "h"]
    assert row[3] == "1/3" and row[8:10] == ["75.0", "+25.0"]  # the paired figure its interval is about
    assert row[10] == f"[{100 * paired.low:+.1f}, {100 * paired.high:+.1f}]"
    assert "eval.uq_ttc_seeds: one" in section.note
    saved = scoring.scores_json(scores)["h"]
    assert saved["UQ-TTC"]["seeds"] == 1 and saved["delta"]["UQ-TTC"]["mean"] == 0.25
    assert saved["delta"]["UQ-TTC"]["paired_samples"] == 4


def test_clean_subset_is_scored_beside_the_full_benchmark(tmp_path):
    """The merge names the eval questions a kept training row overlaps; the report scores each benchmark again
    without them ("<bench>.clean"), in report.md, eval/summary.json and report --json."""
    from svd_hpc.report.as_json import report_json
    from tests.test_machine_json import validate

    run = prepare_run(tmp_path, train={"enabled": False})
    write_eval(run)
    overlapped = {"m1": ["m1-q1", "m1-q3"], "other": ["x"]}
    funnel = {"rules": {}, "overall": {"kept": 0}, "per_domain": {}}
    decontamination = {"ngram": 13, "solutions_dropped": False, "eval_questions": 9, "contaminated_seeds": 0}
    atomic_write_json(
        run.root / "merge" / "stats.json",
        {**funnel, "decontamination": {**decontamination, "overlapped": overlapped, "list": "contaminated.jsonl"}},
    )
    report.build(run, console=Console(file=io.StringIO()))
    summary = json.loads((run.root / "eval" / "summary.json").read_text())
    clean = summary["m1.clean"]
    assert clean["questions"] == 2 and summary["m1"]["questions"] == 4
    # m1's questions 0 and 2 only: base seeds [1,0], [1,0], [1,1]; SVD right on both every seed
    assert clean["base"]["pass_at_1"] == pytest.approx((0.5 + 0.5 + 1.0) / 3)
    assert clean["SVD"]["pass_at_1"] == 1.0 and clean["delta"]["SVD"]["mean"] == pytest.approx(1 - 2 / 3)
    for key in ("pass_at_1", "stderr", "seeds"):  # nothing of m2 overlaps
        assert summary["m2.clean"]["SVD"][key] == summary["m2"]["SVD"][key]
    # domain rows pool the full benchmarks, not the clean copies
    assert summary["domain:math"]["questions"] == 6
    text = (run.root / "report.md").read_text()
    assert (
        f"| m1, clean subset | math | 2 | 3 | {100 * (2 / 3):.1f} ± " in text and "clean subset: its questions" in text
    )
    data = report_json(run)
    validate("report", data)
    assert data["scores"]["m1.clean"]["SVD"]["pass_at_1"] == 1.0


def test_no_clean_subset_without_a_decontamination_record(tmp_path):
    run = prepare_run(tmp_path, train={"enabled": False})
    write_eval(run)
    report.build(run, console=Console(file=io.StringIO()))
    assert not [k for k in json.loads((run.root / "eval" / "summary.json").read_text()) if k.endswith(".clean")]
