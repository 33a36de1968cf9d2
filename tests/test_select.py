"""Checkpoint selection (train.select): the plan and its Slurm dependencies, the refusal of a selection
set that overlaps the reported benchmarks, the pick rule, the select stage's record and the report's curve."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from svd_hpc import config
from svd_hpc.eval import selection
from svd_hpc.eval.tasks import EvalTask
from svd_hpc.rundir.atomic import atomic_write_json
from svd_hpc.rundir.layout import RunDir, choice_path, selection_checkpoint, trained_model_dir
from svd_hpc.runner import plan
from svd_hpc.stages import select
from svd_hpc.stages.evaluate import summary_path
from tests import toy_stages
from tests.helpers import REPO, run_launch, wait_jobs, write_config

EVAL_SET = str(REPO / "data" / "demo_eval.jsonl")
SELECT_SET = str(REPO / "data" / "replicate_select.jsonl")


def _cfg(**select_keys) -> config.RunConfig:
    data = {
        "train": {
            "steps": 10,
            "select": {"every": 4, "benchmarks": [{"name": "sel", "path": SELECT_SET}], **select_keys},
        },
        "eval": {"benchmarks": [{"name": "b1", "path": EVAL_SET}], "seeds": [0, 1]},
    }
    cfg = config.build(config.RunConfig, data)
    cfg.check("test")
    return cfg


def _deps(stages, name) -> set[tuple[str, str]]:
    return {(d.stage, d.kind) for d in next(s for s in stages if s.name == name).depends_on}


# ----------------------------------------------------------------------------- config and plan


def test_selection_steps_are_every_nth_and_the_last():
    assert _cfg().train.select.steps(10) == [4, 8, 10]
    assert _cfg().train.select.steps(8) == [4, 8]
    assert config.build(config.RunConfig, {}).train.select.steps(10) == []  # off by default


def test_plan_scores_checkpoints_while_training_and_evaluates_the_chosen_one():
    stages = plan.build_plan(_cfg())
    names = [s.name for s in stages]
    assert names.index("train") < names.index("select_eval") < names.index("select") < names.index("eval_trained")
    evals = next(s for s in stages if s.name == "select_eval")
    assert (evals.array_size, evals.resources["array_parallelism"]) == (3, 1)
    assert _deps(stages, "select_eval") == {("train", "after")}  # started, not finished
    assert _deps(stages, "select") == {("select_eval", "afterok")}
    assert _deps(stages, "eval_trained") == {("select", "afterok")}
    assert ("select", "afterok") in _deps(stages, "report")
    # without selection the plan is as before
    plain = plan.build_plan(
        config.build(config.RunConfig, {"eval": {"benchmarks": [{"name": "b1", "path": EVAL_SET}]}})
    )
    assert "select_eval" not in [s.name for s in plain] and _deps(plain, "eval_trained") == {("train", "afterok")}


def test_dry_run_renders_after_train_for_select_eval(tmp_path):
    select_keys = {"every": 2, "benchmarks": [{"name": "sel", "path": SELECT_SET, "limit": 4}]}
    path = write_config(tmp_path, 2, cluster="local-slurm", **{"train.steps": 4, "train.select": select_keys})
    proc = run_launch(["--config", str(path), "--dry-run"])
    assert proc.returncode == 0, proc.stderr
    run = RunDir(tmp_path / "runs" / "toy")
    script = run.sbatch_path("select_eval").read_text()
    assert "#SBATCH --dependency=after:TRAIN_JOB\n" in script and "#SBATCH --array=0-1%1" in script
    assert "svd_hpc.task select_eval --run-dir" in script
    assert "#SBATCH --dependency=afterok:SELECT_EVAL_JOB\n" in run.sbatch_path("select").read_text()
    assert "#SBATCH --dependency=afterok:SELECT_JOB\n" in run.sbatch_path("eval_trained").read_text()


# ----------------------------------------------------------------------------- the selection set


def test_a_selection_benchmark_named_as_a_reported_one_is_refused(tmp_path):
    select_keys = {"every": 2, "benchmarks": [{"name": "b1", "path": SELECT_SET}]}
    path = write_config(tmp_path, 2, **{"train.select": select_keys})
    proc = run_launch(["--config", str(path)])
    assert proc.returncode == 2
    message = proc.stderr.strip().splitlines()[-1]
    assert "train.select.benchmarks and eval.benchmarks both name b1" in message and message.count(". ") == 0
    assert not (tmp_path / "runs" / "toy").exists()


def test_a_selection_set_holding_a_reported_question_is_refused(tmp_path):
    reported = tmp_path / "reported.jsonl"
    reported.write_text(json.dumps({"question": "What is 36 + 47?", "answer": "83"}) + "\n")
    chosen = tmp_path / "chosen.jsonl"
    rows = [{"question": "What is 2 + 2?", "answer": "4"}, {"question": "what is 36  +  47?", "answer": "83"}]
    chosen.write_text("".join(json.dumps(r) + "\n" for r in rows))
    select_keys = {"every": 2, "benchmarks": [{"name": "sel", "path": str(chosen)}]}
    path = write_config(
        tmp_path, 2, **{"train.select": select_keys, "eval.benchmarks": [{"name": "rep", "path": str(reported)}]}
    )
    proc = run_launch(["--config", str(path)])
    assert proc.returncode == 2, proc.stderr
    message = proc.stderr.strip().splitlines()[-1]
    assert "train.select.benchmarks 'sel' holds 1 question(s) of eval.benchmarks 'rep'" in message
    assert not (tmp_path / "runs" / "toy").exists()


# ----------------------------------------------------------------------------- the pick


def test_the_best_score_wins_and_ties_go_to_the_later_step():
    assert selection.pick({100: 0.4, 200: 0.6, 300: 0.5}) == 200
    assert selection.pick({100: 0.6, 200: 0.6, 300: 0.5}) == 200
    with pytest.raises(ValueError):
        selection.pick({})


def test_the_metric_weighs_benchmarks_equally_whatever_their_seeds():
    assert selection.mean_pass1({"a": [1.0, 0.0, 0.5], "b": [0.0]}) == pytest.approx(0.25)


def _scored_run(tmp_path, scores: dict[int, float]) -> RunDir:
    """A run whose select_eval summaries hold `scores` (step -> pass@1 on seed 0 of "sel")."""
    cfg = _cfg(seeds=[0])
    run = RunDir(tmp_path / "run")
    run.write_config(cfg, {})
    for step, score in scores.items():
        out = select.output_path(run, step, EvalTask("sel", 0, "direct"))
        atomic_write_json(summary_path(out), {"pass_at_1": score, "completion_tokens": 100 * step, "samples": 4})
        selection_checkpoint(run, step, cfg.train.steps).mkdir(parents=True)
    return run


def test_select_records_the_curve_and_the_chosen_checkpoint_becomes_the_trained_model(tmp_path):
    run = _scored_run(tmp_path, {4: 0.2, 8: 0.5, 10: 0.3})
    assert trained_model_dir(run) == run.stage_dir("train") / "final"
    stats = select.run_pick(run, 0)
    choice = json.loads(choice_path(run).read_text())
    assert stats == {"step": 8, "score": 0.5}
    assert [(p["step"], p["score"]) for p in choice["curve"]] == [(4, 0.2), (8, 0.5), (10, 0.3)]
    assert trained_model_dir(run) == run.stage_dir("train") / "select" / "step-000008"


def test_select_refuses_a_checkpoint_without_a_score(tmp_path):
    run = _scored_run(tmp_path, {4: 0.2, 10: 0.3})
    with pytest.raises(ValueError, match="no score of step 8"):
        select.run_pick(run, 0)
    assert not choice_path(run).exists()


def test_a_select_eval_task_waits_for_its_checkpoint_then_gives_up(tmp_path, monkeypatch):
    run = _scored_run(tmp_path, {})
    cfg = run.load_config()
    monkeypatch.setattr(select, "POLL_S", 0.01)
    cfg.train.select.wait_minutes = 0.001
    with pytest.raises(ValueError, match="was not saved within train.select.wait_minutes"):
        select.wait_for_checkpoint(run, cfg, 4)
    run.mark_done("train", 0)  # train ended: a missing checkpoint never comes, no need to wait
    cfg.train.select.wait_minutes = 60
    with pytest.raises(ValueError, match="train finished without saving"):
        select.wait_for_checkpoint(run, cfg, 4)
    folder = selection_checkpoint(run, 4, cfg.train.steps)
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    assert select.wait_for_checkpoint(run, cfg, 4) == folder


def test_the_report_shows_the_curve_with_the_chosen_step_marked(tmp_path):
    import io

    from rich.console import Console

    from svd_hpc.stages import report

    run = _scored_run(tmp_path, {4: 0.25, 8: 0.5, 10: 0.5})
    select.run_pick(run, 0)
    text = report.build(run, console=Console(file=io.StringIO())).read_text()
    section = text.split("## Checkpoint selection", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert rows == [
        "| 4 | 25.0 | 25.0 |  |",
        "| 8 | 50.0 | 50.0 |  |",
        "| 10 | 50.0 | 50.0 | ◀ chosen |",  # a tie: the later step
    ]
    assert "Chosen: step 10 (`train/final`)" in section
    cost = next(line for line in text.splitlines() if line.startswith("| select_eval |"))
    assert cost.split(" | ")[4:6] == ["2,200", "12"]  # tokens and samples of the three checkpoints' answers


@pytest.mark.slow  # the tiny run plus two selection evals through the local scheduler: 585 s at load 9 on 2 cores
@pytest.mark.readme_claim  # "select/choice.json: the checkpoint that eval_trained evaluates"
def test_tiny_run_selects_a_checkpoint_and_evaluates_it(tmp_path):
    select_keys = (
        "train.select={every: 2, seeds: [0], benchmarks: [{name: sel, path: data/replicate_select.jsonl, "
        "id_field: id, grader: math_last_number, limit: 4}]}"
    )
    config_path = REPO / "configs" / "tiny.yaml"
    # one shard and no UQ-TTC: the fewest engine starts that still run every stage
    overrides = [f"run_root={tmp_path}", "seeds.shards=1", "eval.uq_ttc=false", select_keys]
    # a whole run through the local scheduler: room for a loaded machine (585 s at load 9)
    proc = run_launch(["--config", str(config_path), *overrides], timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = RunDir(tmp_path / "tiny")
    choice = json.loads(choice_path(run).read_text())
    assert [p["step"] for p in choice["curve"]] == [2, 4]
    assert (run.stage_dir("train") / "select" / "step-000002" / "config.json").is_file()
    for point in choice["curve"]:  # the curve is the graded records' mean
        table = pq.read_table(select.output_path(run, point["step"], EvalTask("sel", 0, "direct")))
        assert table.num_rows == 4
        assert point["score"] == pytest.approx(sum(table.column("correct").to_pylist()) / 4)
    # eval_trained answered with the chosen checkpoint, and the report shows the curve
    summary = json.loads((run.stage_dir("eval") / "trained" / "demo_arithmetic" / "seed-0.json").read_text())
    assert summary["model_path"] == str(run.root / choice["path"])
    assert "## Checkpoint selection" in (run.root / "report.md").read_text()


def test_a_waiting_task_stops_when_the_train_job_was_cancelled(tmp_path, monkeypatch):
    run = _scored_run(tmp_path, {})
    cfg = run.load_config()
    atomic_write_json(
        run.jobs_path, {"submissions": [{"stage": "train", "job_id": "41"}, {"stage": "train", "job_id": "42"}]}
    )
    states = {"42": "RUNNING"}
    asked = []

    def task_states(ids):
        asked.append(ids)
        return {i: select.commands.TaskState(i, states[i]) for i in ids}

    monkeypatch.setattr(select.commands, "task_states", task_states)
    monkeypatch.setattr(select, "POLL_S", 0.01)
    cfg.train.select.wait_minutes = 0.002
    with pytest.raises(ValueError, match="was not saved within"):  # running: it waits
        select.wait_for_checkpoint(run, cfg, 4)
    assert asked[0] == ["42"]  # the newest train job (a resume's) is the one that counts
    states["42"] = "CANCELLED"
    cfg.train.select.wait_minutes = 60
    with pytest.raises(ValueError, match="the train job ended CANCELLED before saving"):
        select.wait_for_checkpoint(run, cfg, 4)


def test_the_smoke_run_selects_between_two_tiny_checkpoints():
    from svd_hpc.runner import smoke

    small = smoke.shrink(_cfg(seeds=[0, 1, 2]))
    select_cfg = small.train.select
    assert select_cfg.steps(small.train.steps) == [1, 2] and select_cfg.seeds == [0]
    assert [b.limit for b in select_cfg.benchmarks] == [2]
    assert small.resources["select_eval"].time == smoke.SMOKE_TIME


def test_the_model_card_names_the_chosen_checkpoint(tmp_path):
    from svd_hpc.publish import cards

    run = _scored_run(tmp_path, {4: 0.2, 8: 0.5, 10: 0.3})
    assert cards.selection_lines(run) == []
    select.run_pick(run, 0)
    card = cards.model_card(run, run.load_config())
    assert "checkpoint of step 8, chosen among steps 4, 8, 10 by the highest mean pass@1 on sel (50.0%)" in card


@pytest.mark.slurm
def test_on_slurm_checkpoints_are_scored_while_training_runs(tmp_path, slurm_cluster, toy_bodies):
    select_keys = {"every": 2, "benchmarks": [{"name": "sel", "path": SELECT_SET, "limit": 4}]}
    keys = {"train.steps": 4, "train.select": select_keys, "eval.benchmarks": [{"name": "b1", "path": EVAL_SET}]}
    path = write_config(tmp_path, 2, cluster="local-slurm", **keys)
    env = {**slurm_cluster, "TOY_SELECT_GAP": "12", "TOY_SELECT_SCORES": "2:0.5,4:0.25"}
    proc = run_launch(["--config", str(path)], env=env)
    assert proc.returncode == 0, proc.stderr
    run = RunDir(tmp_path / "runs" / "toy")
    wait_jobs(run, env)
    train, first, last = (
        toy_stages.trace(run, s, i) for s, i in (("train", 0), ("select_eval", 0), ("select_eval", 1))
    )
    # checkpoint 1 was scored while train was still saving the last one; the last once it was there
    assert first["end"] < train["end"] <= last["end"]
    choice = json.loads(choice_path(run).read_text())
    assert choice["step"] == 2 and choice["path"] == "train/select/step-000002"
    assert toy_stages.trace(run, "eval_trained", 0)["start"] >= run.done_marker("select", 0).stat().st_mtime
