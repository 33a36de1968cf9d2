"""The local Slurm cluster of scripts/local-slurm.sh behaves like the real clusters the pipeline targets.

Run as: .venv/bin/python -m pytest tests/test_local_slurm.py -q   (starts the cluster if needed)
"""

import re
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import LOCAL_SLURM, sacct_states, slurm, wait_final

pytestmark = pytest.mark.slurm  # every test here uses the cluster: `-m "not slurm"` never starts it


def sbatch(env: dict[str, str], workdir: Path, *options: str) -> str:
    """Submit and return the job id; output goes to workdir/slurm-JOBID.out unless options say otherwise."""
    out = slurm(
        ["sbatch", "--parsable", f"--chdir={workdir}", f"--output={workdir}/slurm-%j.out", *options], env, tries=1
    )
    return out.stdout.strip().split(";")[0]


def test_array_tasks_complete_in_sacct_and_write_their_own_output(slurm_cluster, tmp_path):
    job = sbatch(
        slurm_cluster,
        tmp_path,
        "--array=0-3",
        f"--output={tmp_path}/task-%a.out",
        "--wrap",
        "echo task $SLURM_ARRAY_TASK_ID",
    )

    states = wait_final(job, slurm_cluster, count=4)

    assert states == {f"{job}_{i}": "COMPLETED" for i in range(4)}
    for i in range(4):
        assert (tmp_path / f"task-{i}.out").read_text().strip() == f"task {i}"


def test_two_node_job_runs_a_task_on_each_node_and_node_names_resolve(slurm_cluster, tmp_path):
    # n1 must resolve inside jobs: distributed jobs set MASTER_ADDR to the first node's name.
    script = tmp_path / "nodes.sh"
    script.write_text(
        '#!/bin/bash\nsrun bash -c \'echo "$SLURM_NODEID $SLURMD_NODENAME $(getent hosts n1 | cut -d" " -f1)"\'\n'
    )
    job = sbatch(slurm_cluster, tmp_path, "--nodes=2", "--ntasks-per-node=1", str(script))

    states = wait_final(job, slurm_cluster, count=1)

    assert states == {job: "COMPLETED"}
    lines = sorted((tmp_path / f"slurm-{job}.out").read_text().split("\n"))
    rows = [line.split() for line in lines if line]
    assert [row[0] for row in rows] == ["0", "1"]
    assert len({row[1] for row in rows}) == 2, f"both tasks ran on the same node: {rows}"
    assert all(row[2:] == ["127.0.0.1"] for row in rows), f"n1 does not resolve in jobs: {rows}"


def test_afterok_on_a_failed_job_cancels_the_dependent_job(slurm_cluster, tmp_path):
    failing = sbatch(slurm_cluster, tmp_path, "--wrap", "exit 1")
    dependent = sbatch(
        slurm_cluster, tmp_path, f"--dependency=afterok:{failing}", "--kill-on-invalid-dep=yes", "--wrap", "true"
    )

    assert wait_final(failing, slurm_cluster, count=1) == {failing: "FAILED"}
    # Without --kill-on-invalid-dep it would stay PENDING (DependencyNeverSatisfied) forever.
    states = wait_final(dependent, slurm_cluster, count=1)
    assert states[dependent].startswith("CANCELLED")


def test_array_index_limit_follows_max_array_size(slurm_cluster, tmp_path):
    config = slurm(["scontrol", "show", "config"], slurm_cluster).stdout
    max_array_size = int(re.search(r"^MaxArraySize\s*=\s*(\d+)", config, re.M).group(1))

    held = sbatch(slurm_cluster, tmp_path, "--hold", f"--array={max_array_size - 1}", "--wrap", "true")
    slurm(["scancel", held], slurm_cluster)
    too_big = slurm(["sbatch", "--hold", f"--array={max_array_size}", "--wrap", "true"], slurm_cluster, check=False)

    assert too_big.returncode != 0
    assert "array" in too_big.stderr.lower(), too_big.stderr


def test_start_on_a_running_cluster_is_a_fast_no_op(slurm_cluster):
    conf = Path(slurm_cluster["SLURM_CONF"]).read_text()
    meta = dict(re.findall(r"(\w+)=(\S+)", re.search(r"^# svd-local-slurm (.*)$", conf, re.M).group(1)))
    pid_file = Path(slurm_cluster["SVD_SLURM_DIR"]) / "run" / "slurmctld.pid"
    pid_before = pid_file.read_text()

    started = time.monotonic()
    again = subprocess.run(
        [
            str(LOCAL_SLURM),
            "start",
            "--nodes",
            meta["nodes"],
            "--cpus",
            meta["cpus"],
            "--max-array-size",
            meta["max_array_size"],
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert again.returncode == 0, again.stderr
    assert time.monotonic() - started < 5
    assert "already running" in again.stderr
    assert pid_file.read_text() == pid_before


# --- what the batch scripts (svd_hpc/slurm/script.py) rely on ----------------------------------


def test_batch_signal_reaches_the_shell_and_not_the_tasks(slurm_cluster, tmp_path):
    # --signal=B:USR2@S and `scancel --batch` signal the batch shell only: a torchrun agent or a task
    # without a handler would die of USR2; here the task records what reaches it.
    script = tmp_path / "warned.sh"
    script.write_text(
        "#!/bin/bash\n"
        "trap 'echo shell got USR2' USR2\n"
        "srun bash -c 'trap \"echo task got USR2\" USR2; echo task ready; for i in $(seq 40); do sleep 0.1; done' &\n"
        "task=$!\n"
        'while kill -0 "$task" 2>/dev/null; do wait "$task"; done\n'
    )
    job = sbatch(slurm_cluster, tmp_path, "--signal=B:USR2@30", str(script))
    out = tmp_path / f"slurm-{job}.out"
    deadline = time.monotonic() + 30
    while "task ready" not in (out.read_text() if out.exists() else ""):
        assert time.monotonic() < deadline, "the task never started"
        time.sleep(0.2)
    slurm(["scancel", "--batch", "--signal=USR2", job], slurm_cluster)

    assert wait_final(job, slurm_cluster, count=1) == {job: "COMPLETED"}
    text = out.read_text()
    assert "shell got USR2" in text and "task got USR2" not in text, text


def test_a_job_that_requeues_itself_keeps_its_dependents_waiting(slurm_cluster, tmp_path):
    # The first life requeues itself and exits non-zero; the afterok dependent with
    # --kill-on-invalid-dep=yes is not cancelled and runs after the second life succeeds.
    script = tmp_path / "requeue.sh"
    script.write_text(
        "#!/bin/bash\n"
        'if [ "${SLURM_RESTART_COUNT:-0}" = 0 ]; then scontrol requeue "$SLURM_JOB_ID" && exit 75; fi\n'
        "echo second life\n"
    )
    job = sbatch(slurm_cluster, tmp_path, "--requeue", "--open-mode=append", str(script))
    dependent = sbatch(
        slurm_cluster,
        tmp_path,
        f"--dependency=afterok:{job}",
        "--kill-on-invalid-dep=yes",
        "--wrap",
        "echo dependent ran",
    )

    assert wait_final(dependent, slurm_cluster, count=1, timeout=120) == {dependent: "COMPLETED"}
    assert sacct_states(job, slurm_cluster) == {job: "COMPLETED"}
    assert "second life" in (tmp_path / f"slurm-{job}.out").read_text()


def test_srun_reports_the_signal_of_tasks_it_killed_not_their_exit_code(slurm_cluster, tmp_path):
    # With --kill-on-bad-exit, the first rank to exit 75 gets the others terminated: srun then exits
    # 143, so the train script decides to requeue from the done marker, not from srun's status.
    script = tmp_path / "ranks.sh"
    script.write_text(
        "#!/bin/bash\n"
        "srun --kill-on-bad-exit=1 bash -c 'if [ $SLURM_PROCID = 0 ]; then exit 75; fi; sleep 1; exit 75'\n"
        'echo "srun status $?"\n'
    )
    job = sbatch(slurm_cluster, tmp_path, "--nodes=2", "--ntasks-per-node=1", str(script))

    wait_final(job, slurm_cluster, count=1)
    assert "srun status 143" in (tmp_path / f"slurm-{job}.out").read_text()
