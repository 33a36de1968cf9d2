"""Secrets in the launcher's environment (HF_TOKEN, any *_TOKEN, *_KEY, *PASSWORD*) never reach a
file the run writes: config, plan, sbatch scripts, logs, records, the report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from svd_hpc.rundir.atomic import atomic_write_json
from svd_hpc.rundir.env import is_secret, without_secrets
from svd_hpc.rundir.layout import RunDir
from tests import toy_stages
from tests.helpers import REPO, run_launch, wait_jobs, write_config

CONFIG = REPO / "configs" / "tiny.yaml"
SECRETS = {
    "HF_TOKEN": "hf_svdLeakCheckToken7c1e",
    "HUGGING_FACE_HUB_TOKEN": "hf_svdLeakCheckHubToken0b2d",
    "WANDB_API_KEY": "svdLeakCheckWandbKey5f90",
    "MY_API_KEY": "svdLeakCheckApiKey52ad",
    "DB_PASSWORD": "svdLeakCheckDbPassword913f",
    "MYSQL_ROOT_PASSWORD_FILE_CONTENT": "svdLeakCheckMysql44aa",
}


def files_with_secrets(root: Path, texts: dict[str, str] | None = None) -> list[str]:
    """'where: VARIABLE' for every file under root (and every given text) holding a secret value."""
    found = []
    sources = [(str(p), p.read_bytes()) for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()]
    sources += [(name, text.encode()) for name, text in (texts or {}).items()]
    for where, data in sources:
        for variable, value in SECRETS.items():
            if value.encode() in data or value in where:
                found.append(f"{where}: {variable}")
    return found


def test_the_check_finds_a_secret(tmp_path):
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "task.log").write_bytes(b"env: DB_PASSWORD=" + SECRETS["DB_PASSWORD"].encode() + b"\n")
    assert files_with_secrets(tmp_path) == [f"{tmp_path}/logs/task.log: DB_PASSWORD"]
    assert files_with_secrets(tmp_path / "none", {"stdout": SECRETS["HF_TOKEN"]}) == ["stdout: HF_TOKEN"]


def test_secret_names():
    secret = [
        "HF_TOKEN",
        "HUGGING_FACE_HUB_TOKEN",
        "MY_API_KEY",
        "AWS_SECRET_ACCESS_KEY",
        "DB_PASSWORD",
        "PGPASSWORD",
        "password_file",
        "hf_token",
    ]
    kept = ["PATH", "HOME", "SLURM_JOB_ID", "HF_HOME", "HF_HUB_OFFLINE", "TOKENIZERS_PARALLELISM", "KEYRING_DIR"]
    assert [n for n in secret + kept if is_secret(n)] == secret
    assert without_secrets({n: "x" for n in secret + kept}) == {n: "x" for n in kept}


def leaky_generate(run: RunDir, index: int) -> dict:
    """A generate body that writes its whole environment into the run directory (as a careless
    debug dump would), then does the toy generate's work."""
    atomic_write_json(run.root / "logs" / f"environment-{index}.json", dict(os.environ))
    return toy_stages.generate(run, index)


LEAKY_BODIES = {**toy_stages.BODIES, "generate": leaky_generate}


def leaky_config(tmp_path: Path, cluster: str, monkeypatch) -> Path:
    monkeypatch.setenv("SVD_HPC_TEST_BODIES", "tests.test_secrets:LEAKY_BODIES")
    return write_config(tmp_path, 1, cluster=cluster)


def test_local_tasks_never_get_the_secrets(tmp_path, monkeypatch):
    done = run_launch(["--config", str(leaky_config(tmp_path, "local", monkeypatch))], SECRETS)
    assert done.returncode == 0, done.stderr[-3000:]
    dump = json.loads((tmp_path / "runs" / "toy" / "logs" / "environment-0.json").read_text())
    assert dump["PATH"] and not [name for name in dump if is_secret(name)]
    assert files_with_secrets(tmp_path, {"launch": done.stdout + done.stderr}) == []


@pytest.mark.slurm
def test_slurm_jobs_never_get_the_secrets(tmp_path, slurm_cluster, monkeypatch):
    done = run_launch(
        ["--config", str(leaky_config(tmp_path, "local-slurm", monkeypatch))], {**SECRETS, **slurm_cluster}
    )
    assert done.returncode == 0, done.stderr[-3000:]
    run = RunDir(tmp_path / "runs" / "toy")
    wait_jobs(run, slurm_cluster)
    dump = json.loads((run.root / "logs" / "environment-0.json").read_text())
    assert dump["SLURM_JOB_ID"] and not [name for name in dump if is_secret(name)]
    assert run.is_done("report", 0)
    assert files_with_secrets(tmp_path, {"launch": done.stdout + done.stderr}) == []


def test_sbatch_is_called_without_the_secrets(monkeypatch):
    # what sbatch gets, slurmctld keeps (and `sacct --env-vars` shows with AccountingStoreFlags=job_env)
    from svd_hpc.slurm import commands as slurm

    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    calls = []

    def fake_run(cmd, **kwargs):
        calls.append((cmd, kwargs.get("env")))
        return subprocess.CompletedProcess(cmd, 0, stdout="4242\n", stderr="")

    monkeypatch.setattr(slurm.subprocess, "run", fake_run)
    slurm._run(["sbatch", "--parsable", "script.sh"], "sbatch")
    ((cmd, env),) = calls
    assert cmd[0] == "sbatch" and env is not None and env["PATH"] == os.environ["PATH"]
    assert not [name for name in env if name in SECRETS]


def test_dry_run_scripts_and_run_dir_hold_no_secret(tmp_path):
    done = run_launch(["--config", str(CONFIG), "cluster=local-slurm", f"run_root={tmp_path}", "--dry-run"], SECRETS)
    assert done.returncode == 0, done.stderr
    run = tmp_path / "tiny"
    scripts = sorted((run / "sbatch").glob("*.sh"))
    assert len(scripts) == 7 and (run / "config.yaml").is_file() and (run / "plan.json").is_file()
    assert files_with_secrets(tmp_path, {"launch stdout": done.stdout, "launch stderr": done.stderr}) == []


@pytest.mark.slow  # the whole tiny pipeline (engines, training, eval): 8-10 min on 2 busy cores
def test_tiny_run_writes_no_secret(tmp_path):
    command = [sys.executable, "-m", "svd_hpc.launch", "--config", str(CONFIG), f"run_root={tmp_path}"]
    env = {**os.environ, **SECRETS}
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=env, timeout=3600)
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "tiny"
    status = run_launch(["status", str(run)], SECRETS)
    report = run_launch(["report", str(run)], SECRETS)
    assert (run / "report.md").is_file() and list((run / "logs").rglob("*.log"))
    outputs = {
        "launch": done.stdout + done.stderr,
        "status": status.stdout + status.stderr,
        "report": report.stdout + report.stderr,
    }
    assert files_with_secrets(tmp_path, outputs) == []
