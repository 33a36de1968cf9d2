"""Helpers the test files share: checked Slurm commands and toy launcher runs.

A module, not conftest.py: task subprocesses import test modules (toy stage bodies), and only
`tests.` modules are importable there. Fixtures live in conftest.py.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import yaml

REPO = Path(__file__).resolve().parent.parent
LOCAL_SLURM = REPO / "scripts" / "local-slurm.sh"


# --- Slurm commands, checked ----------------------------------------------------------------------
# A loaded slurmctld answers some RPCs with "Socket timed out": an unchecked squeue then prints
# nothing, which reads as "no jobs", and a wait ends before the job has even started.

# States after which a job never changes again (sacct's spelling; CANCELLED may read "CANCELLED by 0").
FINAL_STATES = (
    "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL", "DEADLINE",
)  # fmt: skip


def slurm(args: list[str], env: dict[str, str], check: bool = True, tries: int = 5) -> subprocess.CompletedProcess:
    """Run a Slurm command; one that fails is retried (a busy controller times out), then raises."""
    for attempt in range(tries):
        result = subprocess.run(args, capture_output=True, text=True, env={**os.environ, **env}, timeout=60)
        if result.returncode == 0 or not check:
            return result
        if attempt < tries - 1:
            time.sleep(1 + attempt)
    raise AssertionError(f"{' '.join(args)} exited {result.returncode}: {result.stderr}")


def queued_ids(env: dict[str, str]) -> set[str]:
    """Job ids squeue lists (array jobs by their array job id)."""
    return set(slurm(["squeue", "-h", "-o", "%A"], env).stdout.split())


def active_jobs(env: dict[str, str]) -> set[str]:
    """Jobs that may run: held ones (someone else's --hold) never will."""
    out = slurm(["squeue", "-h", "-o", "%A|%r"], env).stdout
    return {line.split("|")[0] for line in out.splitlines() if "JobHeld" not in line}


def sacct_states(job_id: str, env: dict[str, str]) -> dict[str, str]:
    """{job id or array task id: state} for the allocations of job_id, as accounting sees them.

    The state's first word: "CANCELLED by 0" reads "CANCELLED".
    """
    out = slurm(["sacct", "-n", "-X", "-P", "-j", job_id, "-o", "JobID,State"], env).stdout
    return {job: state.split()[0] for job, state in (line.split("|", 1) for line in out.splitlines() if line)}


def wait_final(job_id: str, env: dict[str, str], count: int = 1, timeout: float = 90) -> dict[str, str]:
    """Poll sacct until job_id has `count` allocations, all in a final state; returns their states."""
    deadline = time.monotonic() + timeout
    while True:
        states = sacct_states(job_id, env)
        if len(states) == count and all(s in FINAL_STATES for s in states.values()):
            return states
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} not finished after {timeout} s: sacct says {states}")
        time.sleep(0.5)


def wait_gone(job_ids: set[str], env: dict[str, str], timeout: float = 300) -> None:
    """Wait until squeue lists none of job_ids."""
    deadline = time.monotonic() + timeout
    while job_ids & queued_ids(env):
        assert time.monotonic() < deadline, f"jobs {job_ids} still queued after {timeout} s"
        time.sleep(0.5)


def restarts(job: str, env: dict[str, str]) -> int:
    """How often Slurm has requeued `job`."""
    out = slurm(["scontrol", "show", "job", job], env).stdout
    return int(re.search(r"Restarts=(\d+)", out).group(1))


def send_warning(script: str, job: str, env: dict) -> None:
    """What Slurm sends before the time limit or a preemption, to whom the script's --signal line says."""
    signal = re.search(r"^#SBATCH --signal=(\S+)@", script, flags=re.M).group(1)
    target = ["--batch"] if signal.startswith("B:") else []  # B: the batch shell only, else the job steps
    slurm(["scancel", *target, f"--signal={signal.removeprefix('B:')}", job], env)


# --- runs of the launcher on toy configs -----------------------------------------------------------


def write_config(tmp_path: Path, shards: int, cluster: str = "local", name: str = "toy", **extra) -> Path:
    """A toy run config (2 seed questions per shard); extra sets dotted keys, e.g. **{"train.enabled": False}."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(json.dumps({"question": f"What is {i} + {i}?"}) + "\n" for i in range(shards * 2)))
    cfg = {
        "name": name,
        "run_root": str(tmp_path / "runs"),
        "cluster": cluster,
        "seeds": {"path": str(seeds), "shards": shards},
        "train": {"global_batch": 4, "procs_per_node": 2},
        "eval": {"benchmarks": [{"name": "b1", "path": str(seeds)}], "seeds": [0, 1]},
        "resources": {"train": {"nodes": 1}},
        # the toy benchmark is the seed file itself: decontamination would drop every seed
        "decontaminate": {"enabled": False},
    }
    for key, value in extra.items():
        node = cfg
        *parents, last = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_launch(args: list[str], env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """`python -m svd_hpc.launch ARGS` from the repository root; a run past `timeout` seconds fails the test."""
    return subprocess.run(
        [sys.executable, "-m", "svd_hpc.launch", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=timeout,
    )


def jobs(run) -> list[dict]:
    """The submissions a launch recorded in the run's jobs.json."""
    return json.loads(run.jobs_path.read_text())["submissions"]


def wait_jobs(run, env: dict, timeout: float = 300) -> None:
    """Wait until no job the run submitted is queued."""
    wait_gone({str(s["job_id"]) for s in jobs(run)}, env, timeout)


def merged_rows(run) -> list[dict]:
    return pq.read_table(run.stage_dir("merge") / "merged.parquet").to_pylist()
