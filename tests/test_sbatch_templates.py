"""The batch scripts: what `launch prepare` writes for plain sbatch, and how the rendered shell behaves
on the local SLURM cluster (cores per task, a failing rank, the warning signal, requeue of train)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from svd_hpc import launch
from svd_hpc.rundir import contract
from svd_hpc.rundir.layout import RunDir
from svd_hpc.runner.task import run_once
from svd_hpc.slurm import script as batch_script
from svd_hpc.train import fsdp
from tests import toy_stages
from tests.helpers import (
    REPO,
    merged_rows,
    restarts,
    run_launch,
    send_warning,
    slurm,
    wait_final,
    wait_gone,
    write_config,
)

EXAMPLE_PROFILE = REPO / "configs" / "clusters" / "example-university.yaml"
QWEN3_8B_MATH = REPO / "configs" / "qwen3-8b-math.yaml"


def header(script: str) -> dict[str, str]:
    return dict(re.findall(r"^#SBATCH --([\w-]+)(?:=(.*))?$", script, flags=re.M))


def offline_overrides(tmp_path: Path) -> list[str]:
    """qwen3-8b-math as it is, but with local seeds, model and benchmarks (no hub here)."""
    seeds = tmp_path / "seeds.jsonl"
    rows = [{"question": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(8)]
    seeds.write_text("".join(json.dumps(row) + "\n" for row in rows))
    bench = f"[{{name: aime26, path: {seeds}}}, {{name: hmmt_feb_2025, path: {seeds}}}]"
    return [
        f"run_root={tmp_path}/runs",
        f"seeds.path={seeds}",
        "seeds.question_field=question",
        "model.path=builtin:tiny-qwen3",
        f"eval.benchmarks={bench}",
    ]


# ----------------------------------------------------------------------------- without SLURM


def prepare_args(tmp_path: Path, site: dict) -> list[str]:
    """`launch prepare` of qwen3-8b-math, offline, on the example profile with `site` changed."""
    profile = {**yaml.safe_load(EXAMPLE_PROFILE.read_text()), **site}
    (tmp_path / "site.yaml").write_text(yaml.safe_dump(profile))
    return [
        "prepare",
        "--config",
        str(QWEN3_8B_MATH),
        f"cluster={tmp_path / 'site.yaml'}",
        *offline_overrides(tmp_path),
    ]


def test_prepare_writes_scripts_that_match_the_config_and_the_site(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    site = {"command_prefix": "apptainer exec --nv /images/svd.sif"}
    assert launch.main(prepare_args(tmp_path, site)) == 0

    run = RunDir(tmp_path / "runs" / "qwen3-8b-math")
    assert capsys.readouterr().out == f"RUN_DIR={run.root}\n"
    scripts = {p.stem: p.read_text() for p in (run.root / "sbatch").glob("*.sh")}
    assert set(scripts) == {"generate", "verify", "merge", "train", "eval_base", "eval_trained", "report"}
    for stage, text in scripts.items():
        h = header(text)
        # the profile's site lines, the plan's resources, and no dependency: pipeline.sh passes those
        assert (h["account"], h["qos"]) == ("my-lab", "normal"), stage
        assert h["partition"] == ("cpu" if stage in ("merge", "report") else "gpu"), stage
        assert "module load cuda/12.4" in text and "conda activate svd_hpc" in text, stage
        assert f"apptainer exec --nv /images/svd.sif python -u -m svd_hpc.task {stage} --run-dir {run.root}" in text
        assert "dependency" not in h and "kill-on-invalid-dep" not in h, stage
        assert (run.log_dir(stage)).is_dir()  # sbatch does not create the folder of --output
        # readable: every #SBATCH line follows a comment saying what it is for
        lines = text.splitlines()
        assert all(lines[i - 1].startswith("# ") for i, line in enumerate(lines) if line.startswith("#SBATCH"))
        assert "export SRUN_CPUS_PER_TASK=$SLURM_CPUS_PER_TASK" in text
        assert "srun --kill-on-bad-exit=1 " in text
    for stage in ("generate", "verify", "eval_base", "eval_trained"):  # vLLM tasks: tensor_parallel_size GPUs
        assert header(scripts[stage])["gpus-per-node"] == "2", stage
        assert header(scripts[stage])["mem"] == "120G"
    assert header(scripts["generate"])["array"] == "0-999%32"  # seeds.shards 1000, 32 at a time
    train_h = header(scripts["train"])
    assert (train_h["nodes"], train_h["ntasks-per-node"], train_h["gpus-per-node"]) == ("4", "4", "4")
    # train's warning leaves time for a step and a full sharded save; the vLLM stages keep the site's 300 s
    assert train_h["signal"] == "B:USR2@600" and "requeue" in train_h and "time" in train_h
    assert header(scripts["generate"])["signal"] == "B:USR2@300"
    assert "gpus-per-node" not in header(scripts["merge"])
    # not preemptible in this config: no warning, but requeueable (a node failure, a retry by cause)
    assert "signal" not in header(scripts["eval_base"]) and "requeue" in header(scripts["eval_base"])


def test_prepare_refuses_an_array_the_site_would_reject(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    assert launch.main(prepare_args(tmp_path, {"max_array_size": 100})) == 2
    assert not (tmp_path / "runs").exists()


def test_master_port_is_outside_the_ephemeral_range():
    """The port line of a rendered multi-node script, evaluated by bash for job ids across the range."""
    text = batch_script.batch_script(job_name="t", command="true", log_dir="/l", chdir="/c", time="1", rendezvous=True)
    line = next(line for line in text.splitlines() if line.startswith("export MASTER_PORT="))
    for job_id in (1, 12767, 22767, 22768, 40000, 52767, 999_999_999):
        port = subprocess.run(
            ["bash", "-c", f'{line}; echo "$MASTER_PORT"'],
            env={"SLURM_JOB_ID": str(job_id)},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert 1024 < int(port) < 32768, (job_id, port)  # Linux hands out 32768-60999 to outgoing sockets


# ----------------------------------------------------------------------------- on the local cluster


def submit(script: str, where: Path, env: dict, *options: str) -> str:
    path = where / "job.sh"
    path.write_text(script)
    return slurm(["sbatch", "--parsable", *options, str(path)], env, tries=1).stdout.strip().split(";")[0]


@pytest.mark.slurm
def test_srun_gives_each_task_its_cpus(tmp_path, slurm_cluster):
    """Slurm 22.05 (this cluster): srun inside the script takes --cpus-per-task only from SRUN_CPUS_PER_TASK."""
    text = batch_script.batch_script(
        job_name="svd-cpus",
        command="true",
        log_dir=str(tmp_path),
        chdir=str(tmp_path),
        time="5",
        ntasks_per_node=2,
        cpus_per_task=3,
    )
    # SLURM_DEBUG=2 makes srun print what it asks for on the script's stderr
    job = submit(text, tmp_path, slurm_cluster, "--export=ALL,SLURM_DEBUG=2")
    wait_gone({job}, slurm_cluster, 60)
    log = (tmp_path / f"{job}_0_log.err").read_text()
    assert re.search(r"cpus 6, tasks 2\b", log), log  # without it: "cpus 2, tasks 2", one core per task
    # a site that deletes the --cpus-per-task line: srun must not be handed an empty value
    job = submit(re.sub(r"^#SBATCH --cpus-per-task=.*\n", "", text, flags=re.M), tmp_path, slurm_cluster)
    assert wait_final(job, slurm_cluster) == {job: "COMPLETED"}, (tmp_path / f"{job}_0_log.err").read_text()


@pytest.mark.slurm
def test_a_failing_rank_ends_the_job_at_once(tmp_path, slurm_cluster):
    """Rank 1 fails while rank 0 would wait (in a collective) for minutes: the job must end now."""
    command = "bash -c 'if [ $SLURM_PROCID = 1 ]; then exit 3; fi; sleep 300'"
    text = batch_script.batch_script(
        job_name="svd-bad-exit",
        command=command,
        log_dir=str(tmp_path),
        chdir=str(tmp_path),
        time="10",
        nodes=2,
        ntasks_per_node=1,
    )
    job = submit(text, tmp_path, slurm_cluster)
    # sacct, not squeue: a job that has not started yet is no job that ended
    began = time.monotonic()
    assert wait_final(job, slurm_cluster, timeout=300) == {job: "FAILED"}
    started = slurm(["sacct", "-n", "-X", "-P", "-j", job, "-o", "ElapsedRaw"], slurm_cluster).stdout.split()
    assert int(started[0]) < 60, (
        f"ran {started[0]} s: rank 0's sleep 300 was not ended at once ({time.monotonic() - began:.0f} s)"
    )


@pytest.mark.slurm
def test_pipeline_sh_runs_every_stage(tmp_path, slurm_cluster, toy_bodies):
    path = write_config(tmp_path, 3, cluster="local-slurm", name="plain", **{"resources.train": {"nodes": 2}})
    env = {**os.environ, **slurm_cluster, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    proc = subprocess.run(
        ["bash", "sbatch/pipeline.sh", str(path)], cwd=REPO, capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    assert "submitted: generate" in proc.stdout
    run = RunDir(tmp_path / "runs" / "plain")
    ids = set(re.findall(r"\b(\d+)\b", proc.stdout.splitlines()[0]))
    wait_gone(ids, slurm_cluster, 300)
    assert run.is_done("report", 0), (run.root / "logs").as_posix()
    assert len(merged_rows(run)) == 6
    ranks = [json.loads(p.read_text()) for p in (run.stage_dir("train") / "ranks").iterdir()]
    assert sorted(r["node"] for r in ranks) == ["n1", "n1", "n2", "n2"]  # the config's 2 nodes × 2 processes
    assert toy_stages.trace(run, "verify", 0)["start"] >= toy_stages.trace(run, "generate", 0)["end"]


# ----------------------------------------------------------------------------- train: warning, checkpoint, requeue

TRAIN = {
    "steps": 6,
    "global_batch": 4,
    "micro_batch": 1,
    "lr": 3e-3,
    "warmup_ratio": 0.1,
    "max_seq_len": 128,
    "checkpoint_every": 100,
    "procs_per_node": 1,
    "seed": 42,
}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    """The same training on 2 processes (torchrun on this machine), never stopped."""
    from tests.test_train import make_run, torchrun

    run = make_run(tmp_path_factory.mktemp("reference") / "run", **TRAIN)
    result = torchrun(run)
    assert result.returncode == 0, result.stderr[-3000:]
    return run


def train_config(tmp_path: Path, name: str, monkeypatch) -> tuple[Path, RunDir]:
    """Toy stages around the real train stage, 2 nodes × 1 process, preemptible; the SFT set in place."""
    monkeypatch.setenv("SVD_HPC_TEST_BODIES", "tests.toy_stages:BODIES_BUT_TRAIN")
    from test_sft_data import write_sft

    from tests.test_train import sft_rows

    path = write_config(
        tmp_path,
        1,
        cluster="local-slurm",
        name=name,
        train=TRAIN,
        **{"resources.train": {"nodes": 2, "preemptible": True}},
    )
    run = RunDir(tmp_path / "runs" / name)
    write_sft(run.stage_dir("merge") / "sft" / "train.parquet", sft_rows(40))
    return path, run


def warn_once_training(run: RunDir, job: str, env: dict) -> None:
    """Wait until rank 0 has its data (the model is loading, steps follow), then warn."""
    deadline = time.monotonic() + 240
    while not any("SFT set:" in p.read_text() for p in run.log_dir("train").glob(f"{job}_0_log.err")):
        assert time.monotonic() < deadline, "train never started"
        time.sleep(0.3)
    send_warning(run.sbatch_path("train").read_text(), job, env)


def assert_stopped_requeued_and_finished(run: RunDir, job: str, env: dict, reference: Path) -> None:
    from tests.test_train import load_weights, metrics

    assert run.is_done("train", 0), next(run.log_dir("train").glob("*_0_log.err")).read_text()[-3000:]
    assert restarts(job, env) == 1
    log = next(run.log_dir("train").glob(f"{job}_0_log.err")).read_text()
    assert "asking the task to checkpoint and stop" in log and f"requeueing {job} (restart 1 of at most 3)" in log
    stopped = re.search(r"stopped by a stop request after step (\d+) with a checkpoint", log)
    assert stopped and 1 <= int(stopped.group(1)) < TRAIN["steps"], log[-3000:]
    assert re.search(
        rf"resumed from \S+ at step {stopped.group(1)}\b", log
    )  # the second life, from the stop checkpoint
    assert [r["step"] for r in metrics(run.root)] == list(range(1, TRAIN["steps"] + 1))
    expected, got = load_weights(reference / "train" / "final"), load_weights(run.stage_dir("train") / "final")
    assert max((expected[k] - got[k]).abs().max().item() for k in expected) <= 1e-5


def test_a_stop_request_makes_train_checkpoint_and_exit_for_a_requeue(tmp_path, monkeypatch):
    """The batch script's side of the contract, in one process: the file it creates on the warning."""
    from tests.test_train import TORCH_ENV, make_run

    for key in (*TORCH_ENV, "SLURM_JOB_ID"):
        monkeypatch.delenv(key, raising=False)
    run = RunDir(make_run(tmp_path / "run", n=12, steps=3, global_batch=2))
    request = contract.stop_request_path(run, "train")
    request.parent.mkdir(parents=True, exist_ok=True)
    request.touch()
    with pytest.raises(SystemExit) as stopped:
        run_once(run.root, "train", 0)
    assert stopped.value.code == contract.EXIT_STOPPED
    assert fsdp.latest_checkpoint(run.stage_dir("train") / "checkpoints").name == "step-000001"
    assert not request.exists() and not run.is_done("train", 0)  # consumed: the next life trains on
    run_once(run.root, "train", 0)
    assert run.is_done("train", 0)


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.readme_claim  # "What would have stopped a CUDA run": 2-node train warned, from `launch`
def test_launched_train_checkpoints_and_requeues_on_the_warning(tmp_path, slurm_cluster, uninterrupted, monkeypatch):
    path, run = train_config(tmp_path, "warned", monkeypatch)
    assert run_launch(["--config", str(path)], env=slurm_cluster).returncode == 0
    subs = json.loads(run.jobs_path.read_text())["submissions"]
    job = next(str(s["job_id"]) for s in subs if s["stage"] == "train")
    warn_once_training(run, job, slurm_cluster)
    wait_gone({str(s["job_id"]) for s in subs}, slurm_cluster, 400)
    assert_stopped_requeued_and_finished(run, job, slurm_cluster, uninterrupted)
    # a requeue is no failure: the stages after train (--kill-on-invalid-dep=yes) ran
    assert run.is_done("eval_trained", 0) and run.is_done("report", 0)


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.readme_claim  # "What would have stopped a CUDA run": the same, from `prepare`+`sbatch`
def test_prepared_train_script_checkpoints_and_requeues_on_the_warning(
    tmp_path, slurm_cluster, uninterrupted, monkeypatch
):
    path, run = train_config(tmp_path, "plain-train", monkeypatch)
    proc = run_launch(["prepare", "--config", str(path)], env=slurm_cluster)
    assert proc.returncode == 0, proc.stderr
    submitted = slurm(["sbatch", "--parsable", str(run.sbatch_path("train"))], slurm_cluster, tries=1)
    job = submitted.stdout.strip().split(";")[0]
    warn_once_training(run, job, slurm_cluster)
    wait_gone({job}, slurm_cluster, 400)
    assert_stopped_requeued_and_finished(run, job, slurm_cluster, uninterrupted)
    assert wait_final(job, slurm_cluster) == {job: "COMPLETED"}
