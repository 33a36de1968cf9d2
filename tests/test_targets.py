"""Deadline and GPU-hour targets: parsing, the pilot's proposal, the queue wait from sacct, status's warning."""

from __future__ import annotations

import json
import os
import time
from datetime import datetime

import jsonschema
import pytest
import yaml

from svd_hpc import config as config_mod
from svd_hpc import launch
from svd_hpc.config import ConfigError
from svd_hpc.forecast import proposal
from svd_hpc.rundir import targets
from svd_hpc.rundir.atomic import atomic_write_json
from svd_hpc.rundir.layout import RunDir
from svd_hpc.rundir.planfile import Dependency, Stage, plan_to_json
from svd_hpc.runner import stage_status, status, status_json
from svd_hpc.slurm import commands as slurm_commands
from svd_hpc.slurm import queue_wait
from svd_hpc.slurm.queue_wait import QueueWait
from tests.helpers import REPO, write_config

NOW = datetime(2026, 12, 5, 22, 0).timestamp()  # a Saturday, 22:00 local time

# ----------------------------------------------------------------------------- parsing


def test_clock_time_is_the_next_such_time_and_iso_is_taken_as_is():
    tomorrow_7 = datetime(2026, 12, 6, 7, 0).timestamp()
    assert targets.parse_deadline("07:00", NOW) == tomorrow_7  # 07:00 given at 22:00: tomorrow morning
    assert targets.parse_deadline("23:30", NOW) == datetime(2026, 12, 5, 23, 30).timestamp()  # later today
    assert targets.parse_deadline("2026-12-06T07:00", NOW) == tomorrow_7  # no offset: local time
    assert (
        targets.parse_deadline("2026-12-06T07:00:00+00:00", NOW)
        == datetime.fromisoformat("2026-12-06T07:00:00+00:00").timestamp()
    )
    assert targets.from_args(None, 40, NOW) == targets.Targets(None, 40.0)
    assert not targets.from_args(None, None, NOW)


@pytest.mark.parametrize(
    ("deadline", "gpu_hours", "says"),
    [
        ("25:99", None, "not a time of day"),
        ("tomorrow", None, "not HH:MM nor an ISO date"),
        ("2020-01-01T00:00", None, "has already passed"),
        (None, -1.0, "--gpu-hours -1: a budget must be a positive number"),
        (None, float("nan"), "must be a positive number"),
    ],
)
def test_bad_targets_are_refused_in_one_sentence(deadline, gpu_hours, says):
    with pytest.raises(ConfigError, match=says):
        targets.from_args(deadline, gpu_hours, NOW)


@pytest.mark.parametrize("flags", [["--deadline", "25:99"], ["--gpu-hours", "-1"], ["--pilot", "--deadline", "7"]])
def test_bad_targets_exit_2_and_write_nothing(tmp_path, capsys, flags):
    path = write_config(tmp_path, 1)
    assert launch.main(["--config", str(path), *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {flags[-2]} {flags[-1]}")
    assert not (tmp_path / "runs").exists()


def test_launch_records_the_targets_in_the_run_dir(tmp_path):
    path = write_config(tmp_path, 1)
    assert launch.main(["--config", str(path), "--dry-run", "--deadline", "07:30", "--gpu-hours", "40"]) == 0
    run = RunDir(tmp_path / "runs" / "toy")
    recorded = targets.read(run)
    assert recorded.gpu_hours == 40.0
    assert time.strftime("%H:%M", time.localtime(recorded.deadline)) == "07:30"
    assert 0 < recorded.deadline - time.time() <= 86400
    assert json.loads(targets.path(run).read_text())["deadline"].startswith(
        time.strftime("%Y-%m-%dT07:30:00", time.localtime(recorded.deadline))
    )


# ----------------------------------------------------------------------------- the proposal


def cluster_config(tmp_path, **over) -> config_mod.RunConfig:
    """4,000 questions; 4 GPUs per node, a 4 h limit; vLLM tasks hold 1 GPU (tensor parallel 1)."""
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(json.dumps({"id": f"q{i}", "question": f"{i}?"}) + "\n" for i in range(10)))
    profile = tmp_path / "site.yaml"
    profile.write_text(yaml.safe_dump({"name": "site", "partition": "gpu", "gpus_per_node": 4, "time": "04:00:00"}))
    data = {
        "name": "p",
        "run_root": str(tmp_path / "runs"),
        "cluster": str(profile),
        "seeds": {"path": str(seeds), "id_field": "id", "shards": 1},
        "train": {"steps": 1000, "global_batch": 64, "max_seq_len": 4096},
    }
    for key, value in over.items():
        section, _, field = key.partition("__")
        data.setdefault(section, {})[field] = value
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(data))
    return config_mod.load(path)


def measured(train: bool = False) -> dict:
    """A pilot of 10 questions: each vLLM task 60 s fixed + 1 s per question; merge 3 s."""
    stage = {"questions": 10, "samples": 40, "tokens": 4000, "wall_s": 70.0, "work_s": 10.0, "fixed_s": 60.0}
    out = {"stages": {"generate": dict(stage), "verify": dict(stage), "merge": {"wall_s": 3.0}}, "funnel": {}}
    if train:  # 30 s a step on the pilot's 4 processes, 180 s start-up
        out["stages"]["train"] = {"steps": 4, "timed_steps": 3, "world_size": 4, "device": "cuda", "step_s": 30.0,
                                  "tokens_per_step": 64 * 4096, "wall_s": 300.0, "fixed_s": 180.0}  # fmt: skip
    return out


def test_proposal_changes_the_fewest_settings_that_meet_the_deadline(tmp_path):
    # one shard: 4,060 s per task, generate then verify: 8,120 s; two shards: 2,060 s each, 4,120 s
    cfg = cluster_config(tmp_path)
    p = proposal.propose(cfg, 4000, measured(), targets.Targets(NOW + 7200, 3.0), now=NOW)
    assert p["settings"]["seeds.shards"] == 2 and p["overrides"] == ["seeds.shards=2"]
    assert p["meets"] == {"deadline": True, "gpu_hours": True} and p["cannot"] == []
    assert p["end_epoch"] == pytest.approx(NOW + 4120 + 3)
    assert p["gpu_hours"] == pytest.approx(4 * 2060 / 3600)
    assert "nor is train" in p["covers"] and "resources.train.nodes" not in p["settings"]


def test_proposal_says_which_target_it_cannot_meet_and_why(tmp_path):
    cfg = cluster_config(tmp_path)
    late = proposal.propose(cfg, 4000, measured(), targets.Targets(NOW + 60, None), now=NOW)
    assert late["meets"]["deadline"] is False and len(late["cannot"]) == 1
    assert late["cannot"][0].startswith(f"the deadline {targets.iso(NOW + 60)}: the fastest settings tried (")
    assert "longest part is generate+verify" in late["cannot"][0]
    poor = proposal.propose(cfg, 4000, measured(), targets.Targets(None, 0.5), now=NOW)
    assert poor["cannot"] == [
        "the budget of 0.5 GPU-hours: the cheapest settings tried (seeds.shards=1, "
        "resources.generate.array_parallelism=all, resources.verify.array_parallelism=all) spend 2.3"
    ]
    # one shard keeps to 2.27 GPU-hours (8,120 s on 1 GPU) but ends late; two shards end in time at 2.29
    both = proposal.propose(cfg, 4000, measured(), targets.Targets(NOW + 7200, 2.27), now=NOW)
    assert both["cannot"][0].startswith("the deadline and the budget together:")
    assert both["settings"]["seeds.shards"] == 1 and both["meets"] == {"deadline": False, "gpu_hours": True}


def test_proposal_adds_nodes_before_it_cuts_steps(tmp_path):
    cfg = cluster_config(tmp_path, seeds__shards=4)
    # arrays: 4 tasks of 1,060 s, 2,120 s; train on 1 node: 180 + 1000 × 30 s; on 2 nodes 15 s a step
    p = proposal.propose(cfg, 4000, measured(train=True), targets.Targets(NOW + 6 * 3600, None), now=NOW)
    assert p["overrides"] == ["resources.train.nodes=2"] and p["settings"]["train.steps"] == 1000
    assert p["end_epoch"] == pytest.approx(NOW + 2120 + 3 + 180 + 1000 * 15)
    # the partition holds one train node: only fewer steps end in time, and half of them do
    one = proposal.propose(cfg, 4000, measured(True), targets.Targets(NOW + 6 * 3600, None), max_train_nodes=1, now=NOW)
    assert one["overrides"] == ["train.steps=500"] and one["meets"]["deadline"]


def test_proposal_without_gpus_spends_the_fewest_task_hours(tmp_path):
    """A CPU cluster: no GPU-hours to tell settings apart, so the fewest task-hours that end in time."""
    profile = tmp_path / "cpu.yaml"
    profile.write_text(yaml.safe_dump({"name": "cpu", "partition": "cpu", "time": "04:00:00"}))
    cfg = cluster_config(tmp_path)
    cfg = config_mod.load(tmp_path / "run.yaml", [f"cluster={profile}"])
    p = proposal.propose(cfg, 4000, measured(), targets.Targets(NOW + 7200, 10.0), now=NOW)
    assert p["settings"]["seeds.shards"] == 2 and p["gpu_hours"] is None  # 4 shards would end sooner, costing more
    assert p["meets"] == {"deadline": True, "gpu_hours": None} and "hold no GPUs" in p["cannot"][0]


def test_proposal_counts_the_queue_wait_and_says_how(tmp_path):
    cfg = cluster_config(tmp_path, seeds__shards=4)

    def wait_for(stage: str, nodes: int) -> QueueWait:
        return QueueWait(600.0 * nodes if stage == "train" else 300.0, f"{stage} on {nodes}: median of 5 jobs", 5)

    p = proposal.propose(cfg, 4000, measured(True), targets.Targets(NOW + 6 * 3600, None), wait_for=wait_for, now=NOW)
    assert p["parts_s"]["queue"] == 300.0 + 1200.0  # the arrays' wait and the 2-node train job's
    assert p["queue_wait"]["train"]["how"] == "train on 2: median of 5 jobs"
    assert p["end_epoch"] == pytest.approx(NOW + 1500 + 2120 + 3 + 15_180)


# ----------------------------------------------------------------------------- queue wait from sacct

SACCT_ROWS = [
    "10|2026-12-01T10:00:00|2026-12-01T10:00:00|2026-12-01T10:05:00|1|cpu=8,gres/gpu=4,mem=64G",  # 300 s
    "11_0|2026-12-01T11:00:00|2026-12-01T11:00:00|2026-12-01T11:10:00|1|gres/gpu:a100=4,gres/gpu=4",  # 600 s
    "11_1|2026-12-01T11:00:00|2026-12-01T11:00:00|2026-12-01T11:40:00|1|gres/gpu=4",  # its array's throttle
    "11_[2-5]|2026-12-01T11:00:00|Unknown|Unknown|1|",  # never started
    "12|2026-12-01T12:00:00|2026-12-01T13:00:00|2026-12-01T13:02:00|1|gres/gpu=4",  # 120 s once eligible
    "13|2026-12-01T13:00:00|2026-12-01T13:00:00|2026-12-01T13:20:00|2|gres/gpu=8",  # another size
    "14|2026-12-01T14:00:00|Unknown|2026-12-01T14:15:00|1|gres/gpu=4",  # 900 s from submit
]


def fake_sacct(tmp_path, monkeypatch, rows: list[str]):
    """A sacct on PATH that logs its arguments and prints `rows`."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (tmp_path / "rows.txt").write_text("".join(r + "\n" for r in rows))
    script = bin_dir / "sacct"
    script.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> {tmp_path}/args.txt\ncat {tmp_path}/rows.txt\n')
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def test_queue_wait_is_the_median_of_like_jobs(tmp_path, monkeypatch):
    fake_sacct(tmp_path, monkeypatch, SACCT_ROWS)
    history = queue_wait.History("gpu", user="ana")
    assert (tmp_path / "args.txt").read_text().split("\n")[0] == (
        "-n -P -X --format=JobID,Submit,Eligible,Start,NNodes,AllocTRES -u ana -r gpu -S now-30days"
    )
    wait = history.wait(1, 4)  # jobs 10, 11, 12, 14: 300, 600, 120, 900 s
    assert wait.seconds == 450.0 and wait.jobs == 4
    assert wait.how == (
        "queue wait 8 min: the median Start − Eligible of ana's last 4 jobs of 1 node(s), 4 GPU(s) on partition gpu"
        " (sacct)"
    )
    few = history.wait(2, 4)  # one 2-node job
    assert few.seconds is None and few.how.startswith(
        "queue wait not counted: sacct lists 1 of ana's jobs of 2 node(s)"
    )


def test_queue_wait_takes_the_last_20_like_jobs(tmp_path, monkeypatch):
    rows = [
        f"{100 + i}|2026-12-02T{i:02d}:00:00|2026-12-02T{i:02d}:00:00|2026-12-02T{i:02d}:00:{i:02d}|1|"
        for i in range(24)
    ]
    fake_sacct(tmp_path, monkeypatch, rows)
    wait = queue_wait.History(None, user="ana").wait(1, 0)  # waits 4..23 s
    assert wait.seconds == 13.5 and wait.jobs == 20 and "on the default partition" in wait.how
    assert "-r" not in (tmp_path / "args.txt").read_text().split()


def test_no_accounting_means_no_queue_wait(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sacct
    wait = queue_wait.History("gpu", user="ana").wait(1, 4)
    assert (
        wait.seconds is None
        and wait.how == "queue wait not counted: sacct has no record of ana's jobs on partition gpu"
    )


# ----------------------------------------------------------------------------- status against the targets


def status_run(tmp_path, goals: targets.Targets | None, pilot_train_gpu_hours: float | None = None) -> RunDir:
    run = RunDir(tmp_path / "run")
    run.root.mkdir(parents=True)
    plan = [
        Stage("generate", 4, "array", [], {"gpus_per_node": 4, "nodes": 1}),
        Stage("train", 1, "distributed", [Dependency("generate", "afterok")], {"gpus_per_node": 4, "nodes": 2}),
    ]
    atomic_write_json(run.plan_path, plan_to_json(plan))
    if goals is not None:
        targets.write(run, goals)
    if pilot_train_gpu_hours is not None:
        atomic_write_json(run.pilot_result_path, {"stages": {"train": {"gpu_hours": pilot_train_gpu_hours}}})
    return run


def statuses() -> list[stage_status.StageStatus]:
    """generate: 2 of 4 done in 100 s each, one running for 50 s, one waiting (1 slot); train not started."""
    gen = stage_status.StageStatus("generate", 4, done=[0, 1], running=[2], pending=[3], durations=[100.0, 100.0])
    gen.running_s = {2: 50.0}
    gen.job_ids = ["7"]
    return [gen, stage_status.StageStatus("train", 1, pending=[0], job_ids=["8"])]


def validate(data: dict) -> None:
    schema = json.loads((REPO / "docs" / "schema" / "status.v1.json").read_text())
    jsonschema.Draft202012Validator(schema).validate(data)


def test_status_warns_when_the_projection_crosses_the_targets(tmp_path):
    now = time.time()
    # generate's GPU seconds: 200 done + 50 + 50 to go + 100 waiting = 400 s × 4 GPUs; it ends in 150 s
    run = status_run(tmp_path, targets.Targets(now + 100, 1.0))
    data = status_json.status_json(run, statuses(), now)
    validate(data)
    t = data["targets"]
    assert t["projected_gpu_hours"] == pytest.approx(400 * 4 / 3600)
    assert t["gpu_hours_lower_bound"] and t["not_counted"] == ["train"]  # nothing measured, no pilot.json
    assert (
        len(t["warnings"]) == 1
        and "past the deadline" in t["warnings"][0]
        and "is at least 50s past" in t["warnings"][0]
    )
    shown = [str(x) for x in status.renderables(run, statuses(), now)]
    assert shown[-2].startswith(f"targets: end by {targets.iso(now + 100)}, 1 GPU-hours (0.4 projected)")
    assert shown[-1].startswith("warning: the projected end")
    # the pilot projected 5 GPU-hours of train: the budget is crossed, and the deadline met
    run = status_run(tmp_path / "b", targets.Targets(now + 3600, 3.0), pilot_train_gpu_hours=5.0)
    t = status_json.status_json(run, statuses(), now)["targets"]
    assert t["projected_gpu_hours"] == pytest.approx(400 * 4 / 3600 + 5.0) and t["not_counted"] == []
    assert t["warnings"] == ["the projected 5.4 GPU-hours exceed the budget of 3"]


def test_status_within_the_targets_or_without_any_warns_of_nothing(tmp_path):
    now = time.time()
    run = status_run(tmp_path, targets.Targets(now + 3600, 10.0))
    data = status_json.status_json(run, statuses(), now)
    validate(data)
    assert data["targets"]["warnings"] == []
    assert not any(str(x).startswith("warning") for x in status.renderables(run, statuses(), now))
    bare = status_run(tmp_path / "bare", None)
    data = status_json.status_json(bare, statuses(), now)
    validate(data)
    assert data["targets"] is None
    assert not any(str(x).startswith("targets:") for x in status.renderables(bare, statuses(), now))


def test_pilot_with_targets_writes_and_prints_its_proposal(tmp_path):
    """The pilot end to end (the toy bodies of test_pilot, the local scheduler), with a deadline and a budget."""
    from tests.test_pilot import NO_TRAIN, run_launch, write_config

    path = write_config(tmp_path, questions=12)
    proc = run_launch(
        "--config", str(path), "--pilot", "2", *NO_TRAIN, "--deadline", "2099-01-01T00:00", "--gpu-hours", "5"
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "runs" / "p" / "pilot.json").read_text())
    p = result["proposal"]
    assert p["meets"] == {"deadline": True, "gpu_hours": None}  # no GPUs here: no budget to meet
    assert p["cannot"] == [
        "the GPU-hour budget: the run's tasks hold no GPUs (cluster local), so there are no GPU-hours to budget"
    ]
    assert p["queue_wait"]["generate"]["seconds"] is None
    out = " ".join(proc.stdout.split())
    assert "proposal to end by 2099-01-01T00:00:00" in out and "no queue wait: the local scheduler" in out
    assert "cannot meet the GPU-hour budget" in out


@pytest.mark.slurm
def test_queue_wait_from_the_local_clusters_accounting(slurm_cluster, monkeypatch):
    """Three finished one-node jobs of this user on the local cluster: the estimate is theirs, read by real sacct."""
    from tests.helpers import slurm, wait_final

    for key, value in slurm_cluster.items():
        monkeypatch.setenv(key, value)
    for _ in range(3):
        job = slurm(["sbatch", "--parsable", "-p", "debug", "-N", "1", "-c", "1", "--wrap", "true"], slurm_cluster)
        wait_final(job.stdout.strip().split(";")[0], slurm_cluster)
    history = queue_wait.History("debug")
    wait = history.wait(1, 0)
    assert wait.seconds is not None and 0 <= wait.seconds < 60 and 3 <= wait.jobs <= queue_wait.LIKE_JOBS
    assert "on partition debug (sacct)" in wait.how
    assert history.wait(2, 4).how.startswith("queue wait not counted: sacct lists 0 of")  # no GPUs there
    # the train nodes the proposal may use: 2 nodes of 8 CPUs, none with a GPU
    assert slurm_commands.partition_nodes("debug", 8, None, 0) == 2
    assert slurm_commands.partition_nodes("debug", 9, None, 0) == 0
    assert slurm_commands.partition_nodes("debug", 1, None, 1) == 0
