"""The launcher against the real local SLURM cluster and the local scheduler, with toy stages."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from svd_hpc.rundir.layout import RunDir
from svd_hpc.runner import task
from tests import toy_stages
from tests.helpers import (
    REPO,
    active_jobs,
    jobs,
    merged_rows,
    queued_ids,
    restarts,
    run_launch,
    sacct_states,
    send_warning,
    slurm,
    wait_jobs,
    write_config,
)

pytestmark = pytest.mark.usefixtures("toy_bodies")


# ----------------------------------------------------------------------------- without SLURM


def test_bad_config_exits_2_and_writes_nothing(tmp_path):
    path = write_config(tmp_path, 2, **{"generate.temprature": 0.5})
    proc = run_launch(["--config", str(path)])
    assert proc.returncode == 2
    assert "unknown key 'generate.temprature'" in proc.stderr and "temperature" in proc.stderr
    assert not (tmp_path / "runs").exists()


def test_missing_seed_file_exits_2(tmp_path):
    path = write_config(tmp_path, 2, **{"seeds.path": str(tmp_path / "nope.jsonl")})
    proc = run_launch(["--config", str(path)])
    assert proc.returncode == 2 and "nope.jsonl" in proc.stderr
    assert not (tmp_path / "runs").exists()


def test_local_scheduler_runs_the_chain_and_resumes(tmp_path):
    path = write_config(tmp_path, 3, **{"train.procs_per_node": 2})
    proc = run_launch(["--config", str(path)], env={"TOY_FAIL": "verify:1"})
    assert proc.returncode == 1, proc.stderr
    assert "verify' task 1 failed" in proc.stderr
    run = RunDir(tmp_path / "runs" / "toy")
    assert run.is_done("verify", 0) and not run.is_done("verify", 1) and not run.is_done("merge", 0)
    first_end = toy_stages.trace(run, "generate", 0)["end"]

    proc = run_launch(["resume", str(run.root)], env={"TOY_FAIL": "verify:1"})
    assert proc.returncode == 0, proc.stderr
    assert toy_stages.trace(run, "generate", 0)["end"] == first_end  # done tasks were not re-run
    assert len(merged_rows(run)) == 6
    assert sorted(p.name for p in (run.stage_dir("train") / "ranks").iterdir()) == ["0.json", "1.json"]
    assert (run.root / "report.md").read_text().endswith("merged rows: 6\n")


def test_the_runner_writes_the_marker_from_the_body_stats(tmp_path):
    run = RunDir(tmp_path)
    calls = []

    def body(run: RunDir, index: int) -> dict:
        calls.append(index)
        assert not run.is_done("merge", index)  # the body never sees its own marker
        return {"kept": 3}

    assert task.run_once(run, "merge", 0, body=body) == {"kept": 3}
    assert run.load_json(run.done_marker("merge", 0))["kept"] == 3
    assert task.run_once(run, "merge", 0, body=body)["kept"] == 3 and calls == [0]  # done: the body is not run
    assert task.run_once(run, "train", 0, body=lambda run, index: None) is None  # a rank other than 0
    assert not run.is_done("train", 0)


def test_a_run_whose_plan_names_body_paths_still_resumes(tmp_path):
    """plan.json written before the stage folders named each body ("svd_hpc.merge:run_task")."""
    path = write_config(tmp_path, 1)
    assert run_launch(["--config", str(path)]).returncode == 0
    run = RunDir(tmp_path / "runs" / "toy")
    old = {"merge": "svd_hpc.merge:run_task", "report": "svd_hpc.report:run_task", "train": "svd_hpc.train:run_task"}
    plan = [
        {**stage, "body": old.get(stage["name"], "svd_hpc.evaluate:run_task")} for stage in run.load_json(run.plan_path)
    ]
    run.plan_path.write_text(json.dumps(plan))
    run.done_marker("report", 0).unlink()
    proc = run_launch(["resume", str(run.root)])
    assert proc.returncode == 0, proc.stderr
    assert run.is_done("report", 0)


@pytest.mark.parametrize(
    "allowed, cpus, expected",
    [({0, 1, 2, 3}, "2", ("2", "nobind")), ({0, 1}, "2", (None, None)), ({0, 1, 2, 3}, None, (None, None))],
)
def test_threads_follow_the_slurm_allocation_when_the_site_does_not_pin(monkeypatch, allowed, cpus, expected):
    for name in ("OMP_NUM_THREADS", "VLLM_CPU_OMP_THREADS_BIND", "SLURM_CPUS_PER_TASK"):
        monkeypatch.delenv(name, raising=False)
    if cpus:
        monkeypatch.setenv("SLURM_CPUS_PER_TASK", cpus)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: allowed)
    task.fit_threads_to_allocation()
    assert (os.environ.get("OMP_NUM_THREADS"), os.environ.get("VLLM_CPU_OMP_THREADS_BIND")) == expected


def test_dry_run_renders_scripts_without_slurm(tmp_path):
    path = write_config(tmp_path, 4, cluster="local-slurm")
    proc = run_launch(["--config", str(path), "--dry-run"])
    assert proc.returncode == 0, proc.stderr
    run = RunDir(tmp_path / "runs" / "toy")
    verify = run.sbatch_path("verify").read_text()
    assert "#SBATCH --array=0-3%4" in verify
    assert "#SBATCH --dependency=aftercorr:GENERATE_JOB" in verify and "#SBATCH --kill-on-invalid-dep=yes" in verify
    assert "svd_hpc.task verify --run-dir" in verify
    train = run.sbatch_path("train").read_text()
    assert "#SBATCH --ntasks-per-node=2" in train and "MASTER_ADDR" in train
    assert not run.jobs_path.exists()


# ----------------------------------------------------------------------------- on the local cluster


@pytest.mark.slurm
def test_throttled_array_and_dependency(tmp_path, slurm_cluster):
    path = write_config(tmp_path, 12, cluster="local-slurm", **{"resources.generate": {"array_parallelism": 3}})
    env = {**slurm_cluster, "TOY_SLEEP_GENERATE": "1"}
    proc = run_launch(["--config", str(path)], env=env)
    assert proc.returncode == 0, proc.stderr
    run = RunDir(tmp_path / "runs" / "toy")
    wait_jobs(run, env)
    gen = [toy_stages.trace(run, "generate", i) for i in range(12)]
    # never more than 3 generate tasks at once
    events = sorted([(t["start"], 1) for t in gen] + [(t["end"], -1) for t in gen])
    running, peak = 0, 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    assert peak <= 3
    assert toy_stages.trace(run, "merge", 0)["start"] >= max(t["end"] for t in gen)
    # the local cluster gives each task 1 CPU without pinning it: a task runs 1 thread
    assert {t["omp_threads"] for t in gen} == {os.environ.get("OMP_NUM_THREADS", "1")}
    assert len(merged_rows(run)) == 24
    # train is 1 node x 2 processes: both ranks report, from one of the cluster's nodes, with one master
    ranks = [json.loads(p.read_text()) for p in (run.stage_dir("train") / "ranks").iterdir()]
    assert sorted(r["rank"] for r in ranks) == [0, 1] and {r["world"] for r in ranks} == {2}
    nodes = {r["node"] for r in ranks}
    assert len(nodes) == 1 and nodes <= {"n1", "n2"}
    assert len({r["master"] for r in ranks}) == 1 and ranks[0]["master"]
    status = run_launch(["status", str(run.root)], env=slurm_cluster)
    assert "run complete" in status.stdout


@pytest.mark.slurm
def test_aftercorr_starts_verify_before_generate_ends(tmp_path, slurm_cluster):
    path = write_config(tmp_path, 4, cluster="local-slurm", **{"resources.generate": {"array_parallelism": 1}})
    env = {**slurm_cluster, "TOY_SLEEP_GENERATE": "1.5"}
    assert run_launch(["--config", str(path)], env=env).returncode == 0
    run = RunDir(tmp_path / "runs" / "toy")
    wait_jobs(run, env)
    assert toy_stages.trace(run, "verify", 0)["start"] < toy_stages.trace(run, "generate", 3)["end"]


@pytest.mark.slurm
def test_failed_shard_cancels_downstream_and_resume_completes(tmp_path, slurm_cluster):
    reference = write_config(tmp_path / "ref", 4, cluster="local-slurm", name="ref")
    env = {**slurm_cluster}
    assert run_launch(["--config", str(reference)], env=env).returncode == 0
    ref_run = RunDir(tmp_path / "ref" / "runs" / "ref")

    path = write_config(tmp_path, 4, cluster="local-slurm")
    fail_env = {**env, "TOY_FAIL": "generate:2"}
    assert run_launch(["--config", str(path)], env=fail_env).returncode == 0
    run = RunDir(tmp_path / "runs" / "toy")
    wait_jobs(run, env)
    wait_jobs(ref_run, env)
    merge_job = next(s for s in jobs(run) if s["stage"] == "merge")["job_id"]
    assert list(sacct_states(str(merge_job), env).values()) == ["CANCELLED"]
    status = run_launch(["status", str(run.root)], env=env)
    assert "generate task 2" in status.stdout and "toy failure of generate task 2" in status.stdout
    # the chain stopped there: said so, with no projected end
    shown = " ".join(status.stdout.split())
    assert "the run has stopped: failed tasks in generate (1), verify (1), merge (1)" in shown
    assert "projected end" not in shown

    before = len(jobs(run))
    proc = run_launch(["resume", str(run.root)], env=fail_env)
    assert proc.returncode == 0, proc.stderr
    resubmitted = jobs(run)[before:]
    gen = next(s for s in resubmitted if s["stage"] == "generate")
    assert gen["indices"] == [2]
    assert next(s for s in resubmitted if s["stage"] == "verify")["indices"] == [2]
    assert "eval_base" not in {s["stage"] for s in resubmitted}
    wait_jobs(run, env)
    assert merged_rows(run) == merged_rows(ref_run)
    again = run_launch(["resume", str(run.root)], env=env)
    assert again.returncode == 0 and "nothing to submit" in again.stdout


@pytest.mark.slurm
def test_dry_run_submits_nothing_and_cancel_only_touches_its_run(tmp_path, slurm_cluster):
    env = {**slurm_cluster, "TOY_SLEEP_GENERATE": "30"}
    dry = write_config(tmp_path / "dry", 2, cluster="local-slurm", name="dryrun")
    assert run_launch(["--config", str(dry), "--dry-run"], env=env).returncode == 0
    assert "svd-dryrun-" not in slurm(["squeue", "-h", "-o", "%j"], env).stdout
    assert (tmp_path / "dry" / "runs" / "dryrun" / "sbatch" / "generate.sh").is_file()
    path = write_config(tmp_path, 2, cluster="local-slurm")
    other = write_config(tmp_path / "other", 1, cluster="local-slurm", name="other")
    assert run_launch(["--config", str(path)], env=env).returncode == 0
    assert run_launch(["--config", str(other)], env=env).returncode == 0
    run, other_run = RunDir(tmp_path / "runs" / "toy"), RunDir(tmp_path / "other" / "runs" / "other")
    assert run_launch(["cancel", str(run.root)], env=env).returncode == 0
    wait_jobs(run, env, timeout=30)
    other_ids = {str(s["job_id"]) for s in jobs(other_run)}
    assert other_ids & queued_ids(env), "cancel must leave other runs alone"
    assert run_launch(["cancel", str(other_run.root)], env=env).returncode == 0


@pytest.mark.slurm
def test_impossible_resources_rejected_before_submitting(tmp_path, slurm_cluster):
    path = write_config(
        tmp_path, 2, cluster="local-slurm", name="toobig", **{"resources.train": {"nodes": 9}, "train.global_batch": 18}
    )
    proc = run_launch(["--config", str(path)], env=slurm_cluster)
    assert proc.returncode == 2 and "stage 'train'" in proc.stderr
    assert "svd-toobig-" not in slurm(["squeue", "-h", "-o", "%j"], slurm_cluster).stdout
    assert not (tmp_path / "runs" / "toobig" / "jobs.json").exists()


@pytest.mark.slurm
def test_relaunch_after_kill_never_duplicates(tmp_path, slurm_cluster):
    env = {**slurm_cluster, "TOY_SLEEP_VERIFY": "2"}
    path = write_config(tmp_path, 3, cluster="local-slurm")
    assert run_launch(["--config", str(path)], env=env).returncode == 0
    run = RunDir(tmp_path / "runs" / "toy")
    deadline = time.monotonic() + 60
    while not run.is_done("generate", 0):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert run_launch(["cancel", str(run.root)], env=env).returncode == 0
    wait_jobs(run, env)
    assert run_launch(["--config", str(path)], env=env).returncode == 0  # same config: resumes
    wait_jobs(run, env)
    rows = merged_rows(run)
    assert len(rows) == 6 and len({r["question"] for r in rows}) == 6


@pytest.mark.slurm
def test_arrays_split_at_max_array_size(tmp_path, slurm_cluster):
    script = REPO / "scripts" / "local-slurm.sh"
    env = {**os.environ, **slurm_cluster}
    # the restart below would fail jobs in flight: wait until the shared cluster is idle
    deadline = time.monotonic() + 300
    while active_jobs(slurm_cluster):
        assert time.monotonic() < deadline, "the cluster never became idle"
        time.sleep(1)
    subprocess.run(
        [str(script), "start", "--max-array-size", "4"], check=True, env=env, capture_output=True, timeout=300
    )
    try:
        path = write_config(tmp_path, 9, cluster="local-slurm", **{"train.enabled": False, "eval.benchmarks": []})
        proc = run_launch(["--config", str(path)], env=slurm_cluster)
        assert proc.returncode == 0, proc.stderr
        run = RunDir(tmp_path / "runs" / "toy")
        gen = [s for s in jobs(run) if s["stage"] == "generate"]
        assert [(s["offset"], len(s["indices"])) for s in gen] == [(0, 4), (4, 4), (8, 1)]
        wait_jobs(run, slurm_cluster)
        assert all(run.is_done("verify", i) for i in range(9))
        questions = [r["question"] for r in merged_rows(run)]
        assert questions == [f"What is {i} + {i}?" for i in range(18)]
    finally:
        subprocess.run([str(script), "start"], check=True, env=env, capture_output=True, timeout=300)


@pytest.mark.slurm
def test_warned_task_requeues_without_slurm_in_its_container_and_finishes(tmp_path, slurm_cluster):
    """The task runs under a command_prefix with no Slurm client (as in an apptainer image): it is still requeued."""
    bare = tmp_path / "bin-without-slurm"
    bare.mkdir()
    profile = {**yaml.safe_load((REPO / "configs" / "clusters" / "local-slurm.yaml").read_text())}
    profile["command_prefix"] = f"env PATH={bare}"
    (tmp_path / "site.yaml").write_text(yaml.safe_dump(profile))
    env = {**slurm_cluster, "TOY_SLEEP_GENERATE": "6"}
    path = write_config(
        tmp_path,
        1,
        cluster=str(tmp_path / "site.yaml"),
        name="preempt",
        **{"resources.generate": {"preemptible": True}},
    )
    assert run_launch(["--config", str(path)], env=env).returncode == 0
    run = RunDir(tmp_path / "runs" / "preempt")
    gen = next(s for s in jobs(run) if s["stage"] == "generate")["job_id"]
    script = run.sbatch_path("generate").read_text()
    assert "#SBATCH --requeue" in script and f"env PATH={bare} " in script
    deadline = time.monotonic() + 60
    while sacct_states(f"{gen}_0", env).get(f"{gen}_0") != "RUNNING":
        assert time.monotonic() < deadline, "generate never started"
        time.sleep(0.3)
    time.sleep(1.5)  # let the task reach its body
    send_warning(script, f"{gen}_0", env)
    wait_jobs(run, env)
    assert run.is_done("generate", 0) and run.is_done("report", 0)  # the chain after it was not cancelled
    assert restarts(f"{gen}_0", env) == 1
    log = next(run.log_dir("generate").glob("*_0_log.err")).read_text()
    assert f"requeueing {gen}_0 (restart 1 of at most 3)" in log


# Written by svd_hpc at 212e7e5, the flat layout before the layers (a local toy run without train, its
# report marker removed; made in /tmp/fx with its seeds beside it): a run directory from before a move
# still shows its status, resumes and reports.
RUN_BEFORE_LAYERS = Path(__file__).parent / "data" / "run-212e7e5"


def test_a_run_directory_from_the_flat_layout_still_shows_status_resumes_and_reports(tmp_path):
    run = RunDir(shutil.copytree(RUN_BEFORE_LAYERS, tmp_path / "runs" / "toy"))
    shutil.copy(RUN_BEFORE_LAYERS.with_name("run-212e7e5-seeds.jsonl"), tmp_path / "seeds.jsonl")
    run.config_path.write_text(run.config_path.read_text().replace("/tmp/fx", str(tmp_path)))
    status = run_launch(["status", str(run.root)])
    assert status.returncode == 0, status.stderr
    assert "merge" in status.stdout and "report" in status.stdout
    resumed = run_launch(["resume", str(run.root)])
    assert resumed.returncode == 0, resumed.stderr
    assert run.is_done("report", 0) and [r["name"] for r in run.load_json(run.plan_path)][-1] == "report"
    report = run_launch(["report", str(run.root)])  # builds report.md with the real report code
    assert report.returncode == 0, report.stderr
    assert "merge" in (run.root / "report.md").read_text()
