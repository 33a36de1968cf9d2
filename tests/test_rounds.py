"""Several rounds in one launch: the plan, each round's folder and config, the stopping rule, resume.

Toy bodies (tests/toy_rounds.py) run the chain through the real launcher, task runner, local
scheduler and local SLURM cluster; the slow tests run the tiny model for real.
"""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from svd_hpc import config
from svd_hpc.records import EVAL
from svd_hpc.rundir import layout as rundir
from svd_hpc.rundir.atomic import atomic_write_json
from svd_hpc.rundir.layout import RunDir
from svd_hpc.runner import plan
from svd_hpc.stages import rounds
from tests.helpers import REPO, jobs, run_launch, wait_jobs, write_config


def _cfg(**data) -> config.RunConfig:
    base = {"eval": {"benchmarks": [{"name": "b1", "path": str(REPO / "data" / "demo_eval.jsonl")}], "seeds": [0, 1]}}
    return config.build(config.RunConfig, {**base, **data})


def _names(stages) -> list[str]:
    return [s.name for s in stages]


def _deps(stages, name) -> set[tuple[str, str]]:
    return {(d.stage, d.kind) for d in next(s for s in stages if s.name == name).depends_on}


# ----------------------------------------------------------------------------- the plan


def test_one_round_keeps_the_single_run_plan():
    assert _names(plan.build_plan(_cfg())) == [
        "generate",
        "verify",
        "merge",
        "train",
        "eval_base",
        "eval_trained",
        "report",
    ]


def test_rounds_chain_through_each_rounds_seeds_stage():
    stages = plan.build_plan(_cfg(rounds=3))
    names = _names(stages)
    assert names.count("round-1/eval_base") == 1 and not any(n.endswith("eval_base") and "1" not in n for n in names)
    assert _deps(stages, "round-1/seeds") == set()
    assert _deps(stages, "round-2/seeds") == {("round-1/train", "afterok")}
    assert _deps(stages, "round-3/generate") == {("round-3/seeds", "afterok")}
    assert _deps(stages, "round-3/verify") == {("round-3/generate", "aftercorr")}
    assert _deps(stages, "report") == {
        (f"round-{r}/{s}", "afterok") for r in (1, 2, 3) for s in ("merge", "eval_trained")
    } | {("round-1/eval_base", "afterok")}
    # a round's stages take their plain stage's resources
    seeds = next(s for s in stages if s.name == "round-2/seeds")
    assert seeds.resources["gpus_per_node"] is None and names.index("round-2/seeds") > names.index("round-1/train")


def test_comparing_pass1_makes_the_next_round_wait_for_the_eval():
    stages = plan.build_plan(_cfg(rounds=3, iteration={"stop_unless_improved": True}))
    assert _deps(stages, "round-2/seeds") == {
        ("round-1/train", "afterok"),
        ("round-1/eval_trained", "afterok"),
        ("round-1/eval_base", "afterok"),
    }
    assert _deps(stages, "round-3/seeds") == {("round-2/train", "afterok"), ("round-2/eval_trained", "afterok")}


@pytest.mark.parametrize(
    "data, words",
    [
        ({"rounds": 0}, "rounds must be at least 1"),
        ({"rounds": 2, "train": {"enabled": False}}, "train.enabled"),
        ({"rounds": 2, "iteration": {"stop_unless_improved": True}, "eval": {"benchmarks": []}}, "eval.benchmarks"),
    ],
)
def test_impossible_round_settings_are_refused(data, words):
    with pytest.raises(config.ConfigError, match=words):
        config.build(config.RunConfig, data).check("run.yaml")


def test_round_two_generates_with_round_one_model_and_trains_by_the_knob(tmp_path):
    run = RunDir(tmp_path)
    cfg = _cfg(rounds=2, model={"path": "org/base", "revision": "abc"})
    second = rundir.round_config(cfg, run, 2)
    assert second.model.path == str(tmp_path / "round-1" / "train" / "final") and second.model.revision is None
    assert (second.train.model, second.train.model_revision) == ("org/base", "abc")
    previous = rundir.round_config(_cfg(rounds=2, iteration={"train_from": "previous"}), run, 2)
    assert previous.train.model == second.model.path
    assert rundir.round_config(cfg, run, 1) is cfg


# ----------------------------------------------------------------------------- questions and the stopping rule


def _pool(run: RunDir, shards: int, n: int) -> None:
    qids = [f"q{i}" for i in range(n)]
    table = pa.table({"question_id": qids, "question": [f"Q{i}" for i in range(n)]})
    from svd_hpc.inputs.seeds import shard_bounds

    for i, (a, b) in enumerate(shard_bounds(n, shards)):
        run.shard_path("seeds", i).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table.slice(a, b - a), run.shard_path("seeds", i))


def _kept(run: RunDir, number: int, qids: list[str]) -> None:
    merge = run.round_dir(number).stage_dir("merge")
    (merge / "sft").mkdir(parents=True, exist_ok=True)
    pq.write_table(
        pa.table({"question_id": qids, "answer": [f"{q}@{number}" for q in qids]}), merge / "sft" / "train.parquet"
    )
    atomic_write_json(merge / "stats.json", {"overall": {"candidates": 10, "kept": len(qids)}})


def test_each_round_takes_its_questions_by_the_knob(tmp_path):
    run = RunDir(tmp_path)
    _pool(run, 2, 6)
    _kept(run, 1, ["q0", "q3"])
    _kept(run, 2, ["q1"])

    def qids(mode, r):
        return (
            rounds.pick_questions(_cfg(rounds=3, seeds={"shards": 2}, iteration={"seeds": mode}), run, r)
            .column("question_id")
            .to_pylist()
        )  # noqa: E731

    assert qids("same", 3) == [f"q{i}" for i in range(6)]
    assert [qids("fresh", r) for r in (1, 2, 3)] == [["q0", "q1"], ["q2", "q3"], ["q4", "q5"]]
    assert qids("unsolved", 2) == ["q1", "q2", "q4", "q5"] and qids("unsolved", 3) == ["q2", "q4", "q5"]


def test_the_union_keeps_each_questions_latest_answer(tmp_path):
    run = RunDir(tmp_path)
    _kept(run, 1, ["q0", "q3"])
    _kept(run, 2, ["q3", "q5"])
    assert rounds.write_union(run, 2) == 3
    union = pq.read_table(rundir.union_dir(run.round_dir(2)) / "sft" / "train.parquet").to_pylist()
    assert union == [
        {"question_id": "q0", "answer": "q0@1"},
        {"question_id": "q3", "answer": "q3@2"},
        {"question_id": "q5", "answer": "q5@2"},
    ]


def _eval(run: RunDir, number: int, model: str, correct_by_seed: dict[int, list[bool]]) -> None:
    for seed, correct in correct_by_seed.items():
        n = len(correct)
        rows = {name: [None] * n for name in EVAL.names}
        rows.update(benchmark=["b1"] * n, model=[model] * n, mode=["direct"] * n, seed=[seed] * n, correct=correct)
        rows.update(question_id=[f"e{i}" for i in range(n)], completion_tokens=[5] * n, samples=[1] * n)
        path = run.round_dir(number).stage_dir("eval") / model / "b1" / f"seed-{seed}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pydict(rows, schema=EVAL), path)


def test_stopping_rule_reads_kept_set_and_pass1(tmp_path):
    run = RunDir(tmp_path)
    _kept(run, 1, ["q0", "q1", "q2"])
    assert rounds.rule_met(_cfg(rounds=3, iteration={"stop_min_kept": 3}), run, 1) is None
    assert "kept 3 SFT example(s), fewer than iteration.stop_min_kept=4" in rounds.rule_met(
        _cfg(rounds=3, iteration={"stop_min_kept": 4}), run, 1
    )
    improved = _cfg(rounds=3, iteration={"stop_unless_improved": True})
    _eval(run, 1, "base", {0: [True, False, False, False], 1: [False, False, False, False]})  # 12.5%
    _eval(run, 1, "trained", {0: [True, True, False, False], 1: [True, False, False, False]})  # 37.5%
    assert rounds.rule_met(improved, run, 1) is None
    _eval(run, 2, "trained", {0: [True, True, False, False], 1: [True, False, False, False]})  # equal: stop
    assert rounds.rule_met(improved, run, 2) == (
        "round 2's pass@1 (37.5%) is not above round 1's (37.5%) (iteration.stop_unless_improved)"
    )


# ----------------------------------------------------------------------------- the chain, with toy stages


@pytest.fixture
def toy_round_bodies(monkeypatch):
    monkeypatch.setenv("SVD_HPC_TEST_BODIES", "tests.toy_rounds:BODIES")


def _markers(run: RunDir, stage: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((run.stage_dir(stage) / "done").glob("*"))]


@pytest.mark.usefixtures("toy_round_bodies")
def test_rounds_run_locally_each_in_its_folder_until_the_stopping_rule(tmp_path):
    # toy merge keeps the even-numbered questions: round 1 keeps 2 of 4, round 2 (the odd ones) keeps 0
    path = write_config(tmp_path, 2, rounds=3, **{"iteration.seeds": "unsolved", "iteration.stop_min_kept": 1})
    proc = run_launch(["--config", str(path)])
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    run = RunDir(tmp_path / "runs" / "toy")
    one, two, three = run.round_dir(1), run.round_dir(2), run.round_dir(3)
    # round 1 as a single run's layout in its folder; the base model evaluated there once
    for stage in ("seeds", "generate", "verify", "merge", "train", "eval_base", "eval_trained"):
        assert (one.root / stage / "done").is_dir(), stage
    assert not (two.root / "eval_base").exists() and (one.root / "report.md").is_file()
    # round 2 generated with round 1's model, on the questions round 1 did not solve, and trained the
    # base model on both rounds' sets
    inputs = json.loads((two.root / "inputs-generate-0-0.json").read_text())
    assert inputs["model"] == str(one.root / "train" / "final")
    first = json.loads((one.root / "inputs-generate-0-0.json").read_text())["model"]
    trained = json.loads((two.root / "inputs-train-0-0.json").read_text())
    assert trained["train_model"] == first and trained["sft"] == str(two.root / "union" / "sft" / "train.parquet")
    solved = set(rounds.sft_table(one, ["question_id"]).column("question_id").to_pylist())
    asked = pa.concat_tables([pq.read_table(two.shard_path("seeds", i)) for i in (0, 1)])
    asked = set(asked.column("question_id").to_pylist())
    assert solved and asked and not solved & asked and len(solved | asked) == 4
    # round 2 kept nothing: round 3 does not run, every task of it is marked skipped, and says why
    why = "round 2 kept 0 SFT example(s), fewer than iteration.stop_min_kept=1"
    assert json.loads((three.root / "stopped.json").read_text()) == {"round": 3, "reason": why}
    assert _markers(run, "round-3/seeds")[0]["stopped"] == why
    for stage in ("round-3/generate", "round-3/verify", "round-3/merge", "round-3/train", "round-3/eval_trained"):
        markers = _markers(run, stage)
        assert markers and all(m[rundir.SKIPPED_KEY] == why for m in markers), stage
    assert not three.shard_path("generate", 0).exists() and not (three.root / "plan.json").exists()
    report = (run.root / "report.md").read_text()
    assert f"The chain stopped before round 3 of 3: {why}." in report
    assert "Merge funnel per round" in report and "| kept | 2 (50%) | 0 (0%) |" in report
    assert "Cost per round" in report and (run.root / "rounds.png").is_file()


# ----------------------------------------------------------------------------- on the local SLURM cluster


@pytest.mark.slow  # ~70 s
@pytest.mark.slurm
@pytest.mark.usefixtures("toy_round_bodies")
def test_resume_after_a_round_two_failure_redoes_only_what_round_two_misses(tmp_path, slurm_cluster):
    path = write_config(tmp_path, 2, cluster="local-slurm", rounds=2)
    env = {**slurm_cluster, "TOY_ROUND_FAIL": "2:verify:1"}
    proc = run_launch(["--config", str(path)], env=env)
    assert proc.returncode == 0, proc.stderr
    run = RunDir(tmp_path / "runs" / "toy")
    wait_jobs(run, env, timeout=400)
    assert run.is_done("round-2/verify", 0) and not run.is_done("round-2/verify", 1)
    assert not run.is_done("round-2/merge", 0) and not run.is_done("report", 0)
    status = run_launch(["status", str(run.root)], env=env)
    assert "round-2/verify" in status.stdout and "failed" in status.stdout.lower(), status.stdout
    first = len(jobs(run))

    proc = run_launch(["resume", str(run.root)], env=env)
    assert proc.returncode == 0, proc.stderr
    wait_jobs(run, env, timeout=400)
    again = {(s["stage"], tuple(s["indices"])) for s in jobs(run)[first:]}
    assert again == {
        ("round-2/verify", (1,)),
        ("round-2/merge", (0,)),
        ("round-2/train", (0,)),
        ("round-2/eval_trained", (0, 1)),
        ("report", (0,)),
    }
    assert run.is_done("report", 0) and "Rounds run: 2 of 2." in (run.root / "report.md").read_text()


# ----------------------------------------------------------------------------- the tiny model, for real

TINY = REPO / "configs" / "tiny.yaml"


def check_two_real_rounds(run: RunDir) -> None:
    one, two = run.round_dir(1), run.round_dir(2)
    for view in (one, two):
        assert (view.stage_dir("train") / "final" / "config.json").is_file()
        assert pq.read_table(view.stage_dir("eval") / "trained" / "demo_arithmetic" / "seed-0.parquet").num_rows == 4
        assert (view.root / "report.md").is_file()
    # round 2's candidates came from round 1's model: the fingerprint of its engine's model path
    assert pq.read_table(two.shard_path("generate", 0)).num_rows > 0
    assert (one.stage_dir("eval") / "base").is_dir() and not (two.stage_dir("eval") / "base").exists()
    report = (run.root / "report.md").read_text()
    assert "| base |" in report and "| round 1 |" in report and "| round 2 |" in report
    assert "Rounds run: 2 of 2." in report


@pytest.mark.slow  # two tiny rounds: minutes
def test_two_tiny_rounds_through_the_local_scheduler(tmp_path):
    proc = run_launch(["--config", str(TINY), f"run_root={tmp_path}", "rounds=2"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    check_two_real_rounds(RunDir(tmp_path / "tiny"))


@pytest.mark.slow
@pytest.mark.slurm
def test_two_tiny_rounds_on_the_local_cluster_resumed_after_a_round_two_failure(tmp_path, slurm_cluster):
    env = {**slurm_cluster, "SVD_HPC_TEST_BODIES": "tests.toy_rounds:REAL_BUT_FAILING", "TOY_ROUND_FAIL": "2:verify:1"}
    args = ["--config", str(TINY), f"run_root={tmp_path}", "rounds=2", "cluster=local-slurm"]
    assert run_launch(args, env=env).returncode == 0
    run = RunDir(tmp_path / "tiny")
    wait_jobs(run, env, timeout=1800)
    assert run.is_done("round-1/eval_trained", 0) and not run.is_done("round-2/verify", 1)
    first = len(jobs(run))
    assert run_launch(["resume", str(run.root)], env=env).returncode == 0
    wait_jobs(run, env, timeout=1800)
    assert {s["stage"] for s in jobs(run)[first:]} == {
        "round-2/verify",
        "round-2/merge",
        "round-2/train",
        "round-2/eval_trained",
        "report",
    }
    check_two_real_rounds(run)
