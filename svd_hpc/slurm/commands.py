"""SLURM: render each stage of the plan to an sbatch script, submit the chain, read live state.

svd_hpc calls `sbatch --parsable` once per array, on a script from batch_script.batch_script.
Every task runs the same command, `python -m svd_hpc.task STAGE --run-dir DIR`, which reads its
index from SLURM_ARRAY_TASK_ID (+ SVD_ARRAY_OFFSET): no per-task pickle, folder or sleep, so a
plan with thousands of tasks costs a handful of files on a shared filesystem.
"""

from __future__ import annotations

import logging
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..config import ClusterProfile, ConfigError, RunConfig
from ..rundir.atomic import atomic_write_text
from ..rundir.contract import stop_request_path
from ..rundir.env import without_secrets
from ..rundir.layout import RunDir
from ..rundir.planfile import Stage
from .script import batch_script

log = logging.getLogger("svd_hpc")

DEFAULT_MAX_ARRAY_SIZE = 1001  # Slurm's default MaxArraySize: indices 0..1000
# a stage's resources that batch_script takes as they are, under the same name
STAGE_OPTIONS = (
    "nodes",
    "ntasks_per_node",
    "cpus_per_task",
    "gpus_per_node",
    "partition",
    "account",
    "qos",
    "constraint",
    "exclude",
    "mem",
    "mail_user",
    "mail_type",
    "preemptible",
    "signal_seconds",
    "requeue_cap",
)


class ClusterError(RuntimeError):
    """SLURM refused something (missing commands, a rejected script, an unreachable controller)."""


def available() -> bool:
    return shutil.which("sbatch") is not None


def _run(cmd: list[str], what: str, check: bool = True) -> subprocess.CompletedProcess:
    try:
        # sbatch hands its environment to the job (--export=ALL) and slurmctld keeps a copy
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=without_secrets())
    except FileNotFoundError:
        raise ClusterError(f"{cmd[0]} is not installed here; run on a SLURM login node or use cluster=local.") from None
    if check and proc.returncode != 0:
        message = (proc.stderr or proc.stdout).strip().splitlines()
        raise ClusterError(f"{what} failed: {message[-1] if message else 'exit ' + str(proc.returncode)}")
    return proc


def memory_mb(value: str) -> int:
    """A SLURM memory size (--mem: a number with an optional K, M, G or T suffix; M if none) in MB."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT]?)B?", value.strip().upper())
    if not match:
        raise ValueError(f"not a SLURM memory size: {value!r}")
    factor = {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024 * 1024}[match.group(2)]
    return int(float(match.group(1)) * factor)


def gres_gpus(gres: str) -> int:
    """The GPUs in a node's sinfo %G field, e.g. "gpu:a100:4(S:0-1),shard:8" → 4; "(null)" → 0."""
    return sum(int(m) for m in re.findall(r"(?:^|,)gpu(?::[^:,(]+)?:(\d+)", gres))


def tres_gpus(tres: str) -> int:
    """The GPUs in sacct's AllocTRES, e.g. "cpu=8,gres/gpu:a100=4,gres/gpu=4,mem=64G" → 4; none → 0."""
    return max((int(n) for n in re.findall(r"gres/gpu(?::[^=,]+)?=(\d+)", tres)), default=0)


def partition_slots(partition: str | None, cpus: int, mem: str | None, gpus: int) -> int | None:
    """How many tasks of this size the partition's nodes hold at once, all idle (sinfo); None if unknown.

    A node holds as many as its CPUs, memory and GPUs each allow; other users' jobs are not counted.
    No partition: the nodes of every partition (the site's default is among them).
    """
    fits = _node_fits(partition, cpus, mem, gpus)
    return sum(fits.values()) if fits else None


def partition_nodes(partition: str | None, cpus: int, mem: str | None, gpus: int) -> int | None:
    """How many of the partition's nodes can each hold one node's share of a job of this size (sinfo)."""
    fits = _node_fits(partition, cpus, mem, gpus)
    return sum(1 for n in fits.values() if n >= 1) if fits else None


def _node_fits(partition: str | None, cpus: int, mem: str | None, gpus: int) -> dict[str, int] | None:
    """Per node of the partition: how many tasks of this size it holds, all idle; None if sinfo fails."""
    where = ["-p", partition] if partition else []
    proc = _run(["sinfo", "-h", "-N", *where, "-o", "%N|%c|%m|%G"], "sinfo", check=False)
    if proc.returncode != 0:
        return None
    nodes = {}
    for line in proc.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) != 4 or not parts[1].isdigit() or not parts[2].rstrip("+").isdigit():
            continue
        name, node_cpus, node_mem, gres = parts
        fits = [int(node_cpus) // max(cpus, 1)]
        if mem:
            fits.append(int(node_mem.rstrip("+")) // max(memory_mb(mem), 1))
        if gpus:
            fits.append(gres_gpus(gres) // gpus)
        nodes[name] = min(fits)
    return nodes


def site_max_array_size() -> int:
    """MaxArraySize from `scontrol show config` (array indices must stay below it)."""
    proc = _run(["scontrol", "show", "config"], "scontrol show config", check=False)
    match = re.search(r"^MaxArraySize\s*=\s*(\d+)", proc.stdout, re.MULTILINE)
    return int(match.group(1)) if match else DEFAULT_MAX_ARRAY_SIZE


# ----------------------------------------------------------------------------- submission units


@dataclass
class Submission:
    """One sbatch call: a stage's tasks `indices` (absolute), as one array part with an offset."""

    stage: str
    part: int
    offset: int
    indices: list[int]
    job_id: str | None = None
    script: str = ""
    dependency: str | None = None
    depends_on: list[str] = field(default_factory=list)  # job ids named in `dependency`
    waits_upstream: bool = True  # False: these tasks' aftercorr upstream tasks are already done

    @property
    def array_spec(self) -> str:
        rel = [i - self.offset for i in self.indices]
        if rel == list(range(rel[0], rel[-1] + 1)):
            return f"{rel[0]}-{rel[-1]}" if len(rel) > 1 else str(rel[0])
        return ",".join(map(str, rel))


def split_indices(indices: list[int], max_array_size: int) -> list[tuple[int, int, list[int]]]:
    """Group task indices into (part, offset, indices) so every array index is < max_array_size."""
    parts: dict[int, list[int]] = {}
    for index in sorted(indices):
        parts.setdefault(index // max_array_size, []).append(index)
    return [(p, p * max_array_size, idx) for p, idx in sorted(parts.items())]


def _task_command(cfg: RunConfig, run: RunDir, stage: Stage) -> str:
    python = cfg.profile.python or sys.executable
    command = f"{shlex.quote(python)} -u -m svd_hpc.task {stage.name} --run-dir {shlex.quote(str(run.root))}"
    return f"{cfg.profile.command_prefix} {command}" if cfg.profile.command_prefix else command


def render(cfg: RunConfig, run: RunDir, stage: Stage, sub: Submission, cwd: Path) -> str:
    """The exact sbatch script of one submission (what --dry-run writes and what is submitted)."""
    res = stage.resources
    distributed = stage.kind == "distributed"
    return batch_script(
        title=(
            f"svd_hpc stage '{stage.name}' of run '{cfg.name}', rendered from its config and cluster profile\n"
            f"'{cfg.profile.name}'. Lines marked site: may be edited for your cluster."
        ),
        job_name=f"svd-{cfg.name}-{stage.name}",
        command=_task_command(cfg, run, stage),
        log_dir=str(run.log_dir(stage.name)),
        chdir=str(cwd),
        time=res["time"],
        array=f"{sub.array_spec}%{res['array_parallelism'] or len(sub.indices)}" if stage.is_array else None,
        **{option: res[option] for option in STAGE_OPTIONS},
        dependency=sub.dependency,
        # ranks save a checkpoint before they stop; array tasks have nothing to save beyond their chunks
        stop_file=str(stop_request_path(run, stage.name)) if distributed else None,
        done_marker=str(run.done_marker(stage.name, 0)) if distributed else None,
        rendezvous=distributed,
        setup=cfg.profile.setup,
        exports=[("SVD_ARRAY_OFFSET", str(sub.offset))],
        # every task retries by cause; the helper that keeps a retry off its node needs no GPU
        task_files=str(run.stage_dir(stage.name)),
        retry_partition=cfg.profile.cpu_partition or res["partition"],
    )


def max_array_size(profile: ClusterProfile) -> int:
    """The profile's max_array_size, else the site's MaxArraySize, else Slurm's default."""
    return profile.max_array_size or (site_max_array_size() if available() else DEFAULT_MAX_ARRAY_SIZE)


def check_whole_arrays(plan: list[Stage], max_array_size: int) -> None:
    """Plain sbatch submits each stage as one array: refuse one the site would reject."""
    for stage in plan:
        if stage.is_array and stage.array_size > max_array_size:
            raise ConfigError(
                f"stage '{stage.name}' has {stage.array_size} tasks, more than MaxArraySize={max_array_size} allows in "
                f"one array; submit with `python -m svd_hpc.launch`, which splits arrays, or lower seeds.shards."
            )


def write_stage_scripts(cfg: RunConfig, run: RunDir, plan: list[Stage], cwd: Path) -> list[Path]:
    """Every stage's whole script, without dependencies, into RUN/sbatch/ for plain sbatch (sbatch/pipeline.sh)."""
    paths = []
    for stage in plan:
        sub = Submission(stage.name, 0, 0, list(range(stage.array_size)))
        path = run.sbatch_path(stage.name)
        atomic_write_text(path, render(cfg, run, stage, sub, cwd))
        run.log_dir(stage.name).mkdir(parents=True, exist_ok=True)  # sbatch does not create log folders
        paths.append(path)
    return paths


def plan_submissions(
    cfg: RunConfig, run: RunDir, plan: list[Stage], todo: dict[str, list[int]], max_array_size: int
) -> list[Submission]:
    """The sbatch calls for the tasks in `todo` (stage -> indices), in dependency order."""
    subs: list[Submission] = []
    for stage in plan:
        indices = todo.get(stage.name)
        if not indices:
            continue
        corr = [d.stage for d in stage.depends_on if d.kind == "aftercorr"]
        upstream = set(todo.get(corr[0], [])) if corr else set(indices)
        # On resume, tasks whose upstream task is already done must not wait on it: aftercorr
        # pairs task i with task i, so they go into an array of their own.
        for waits, group in (
            (True, [i for i in indices if i in upstream]),
            (False, [i for i in indices if i not in upstream]),
        ):
            if not group:
                continue
            parts = split_indices(group, max_array_size) if stage.is_array else [(0, 0, group)]
            for part, offset, idx in parts:
                subs.append(Submission(stage.name, part, offset, idx, waits_upstream=waits))
    return subs


def _dependency(
    stage: Stage, sub: Submission, submitted: dict[str, list[Submission]], live: dict[str, list[str]]
) -> tuple[str | None, list[str]]:
    """The --dependency of one submission: on this launch's upstream arrays and on live older ones."""
    clauses, ids = [], []
    for dep in stage.depends_on:
        ups = submitted.get(dep.stage, [])
        older = live.get(dep.stage, [])  # upstream tasks from an earlier launch still queued or running
        kind, job_ids = "afterok", [u.job_id for u in ups] + older
        if dep.kind == "after":  # started: the downstream tasks wait for files the upstream job writes
            kind = "after"
        elif dep.kind == "aftercorr":
            if not sub.waits_upstream:
                job_ids = older
            else:
                # task i waits for task i of the upstream array holding exactly the same indices
                matching = [u for u in ups if u.offset == sub.offset and u.indices == sub.indices]
                if matching and not older:
                    kind, job_ids = "aftercorr", [matching[0].job_id]
        if job_ids:
            clauses.append(f"{kind}:" + ":".join(job_ids))
            ids += job_ids
    return (",".join(clauses) or None), ids


def submit(
    cfg: RunConfig,
    run: RunDir,
    plan: list[Stage],
    subs: list[Submission],
    cwd: Path,
    dry_run: bool = False,
    live: dict[str, list[str]] | None = None,
    hold: bool = False,
) -> list[Submission]:
    """Render, write and (unless dry_run) submit every submission with its dependencies.

    If sbatch refuses any script, the jobs this call already submitted are cancelled, so a
    launch either submits the whole chain or nothing.
    """
    by_name = {s.name: s for s in plan}
    submitted: dict[str, list[Submission]] = {}
    done: list[Submission] = []
    try:
        for sub in subs:
            stage = by_name[sub.stage]
            if dry_run:
                # dependencies name the jobs that would exist: placeholders in the dry-run text
                same = sum(1 for d in done if d.stage == sub.stage)
                sub.job_id = f"{sub.stage.upper()}_JOB{same if same else ''}"
            sub.dependency, sub.depends_on = _dependency(stage, sub, submitted, live or {})
            sub.script = render(cfg, run, stage, sub, cwd)
            siblings = [s for s in subs if s.stage == sub.stage]
            number = next(k for k, s in enumerate(siblings) if s is sub)
            path = run.sbatch_path(sub.stage, number if len(siblings) > 1 else None)
            atomic_write_text(path, sub.script)
            if not dry_run:
                run.log_dir(sub.stage).mkdir(parents=True, exist_ok=True)
                command = ["sbatch", "--parsable", *(["--hold"] if hold else []), str(path)]
                proc = _run(command, f"sbatch for stage '{sub.stage}' ({path})")
                sub.job_id = parse_job_id(proc.stdout, sub.stage)
            submitted.setdefault(sub.stage, []).append(sub)
            done.append(sub)
    except Exception:
        if not dry_run:
            cancel([s.job_id for s in done if s.job_id])
        raise
    return done


def parse_job_id(reply: str, stage: str) -> str:
    """The job id from `sbatch --parsable`'s reply: "JOBID" or "JOBID;CLUSTER" (site banners may precede it)."""
    lines = reply.strip().splitlines()
    job_id = lines[-1].split(";")[0].strip() if lines else ""
    if not job_id.isdigit():
        raise ClusterError(
            f"sbatch for stage '{stage}' replied {reply.strip()!r}, not a job id; check sbatch on this node."
        )
    return job_id


def test_only(script: str, stage: str) -> None:
    """Ask SLURM whether it would accept a script (partition, account, resources), submitting nothing."""
    # Dependencies name jobs that do not exist yet; --test-only would reject them.
    text = re.sub(r"^#SBATCH --(dependency|kill-on-invalid-dep)=.*\n", "", script, flags=re.M)
    proc = subprocess.run(["sbatch", "--test-only"], input=text, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        reason = lines[-1] if lines else f"exit {proc.returncode}"
        raise ClusterError(f"SLURM rejects stage '{stage}': {reason}; adjust resources.{stage} or the cluster profile.")


def cancel(job_ids: list[str]) -> None:
    if job_ids:
        _run(["scancel", *job_ids], "scancel", check=False)


# ----------------------------------------------------------------------------- live state


@dataclass
class TaskState:
    job_id: str  # e.g. 123_4 for an array task
    state: str  # PENDING, RUNNING, COMPLETED, FAILED, CANCELLED, TIMEOUT, ...
    elapsed: str = ""
    reason: str = ""


def sacct(job_ids: list[str], fields: list[str]) -> list[list[str]] | None:
    """The accounting rows of `job_ids` (one per allocation, `fields` in order); None when there is
    no accounting to read: sacct missing, failing, or silent."""
    if not job_ids:
        return None
    return sacct_rows(["-j", ",".join(job_ids)], fields)


def sacct_rows(selection: list[str], fields: list[str]) -> list[list[str]] | None:
    """The accounting rows sacct selects with `selection` (e.g. ["-j", "17"] or ["-u", USER, "-r", PART]),
    one per allocation; None when sacct is missing, fails or prints nothing."""
    if shutil.which("sacct") is None:
        return None
    command = ["sacct", "-n", "-P", "-X", f"--format={','.join(fields)}", *selection]
    try:
        proc = _run(command, "sacct", check=False)
    except (OSError, subprocess.TimeoutExpired, ClusterError):
        return None
    if proc.returncode != 0 or not proc.stdout.strip():
        return None
    return [line.split("|") for line in proc.stdout.splitlines()]


def _expand_brackets(job_id: str) -> list[str]:
    """'173_[0-2,5%2]' -> ['173_0', '173_1', '173_2', '173_5']; other ids unchanged."""
    match = re.fullmatch(r"(\d+)_\[([^\]]+)\]", job_id)
    if not match:
        return [job_id]
    base, spec = match.group(1), match.group(2).split("%")[0]
    ids = []
    for item in spec.split(","):
        lo, _, hi = item.partition("-")
        ids += [f"{base}_{i}" for i in range(int(lo), int(hi or lo) + 1)]
    return ids


def task_states(job_ids: list[str]) -> dict[str, TaskState]:
    """State of every task of `job_ids` from squeue (live) and sacct (finished), keyed 'JOB_TASK' or 'JOB'."""
    states: dict[str, TaskState] = {}
    if not job_ids:
        return states
    for parts in sacct(job_ids, ["JobID", "State", "Elapsed", "Reason"]) or []:
        if len(parts) >= 3:
            # tasks that never started share one line: 173_[0-1,5%2]
            for job_id in _expand_brackets(parts[0]):
                states[job_id] = TaskState(job_id, parts[1].split()[0], parts[2], parts[3] if len(parts) > 3 else "")
    if shutil.which("squeue"):
        proc = _run(["squeue", "-h", "-r", "-j", ",".join(job_ids), "-o", "%i|%T|%M|%r"], "squeue", False)
        for line in proc.stdout.splitlines():
            parts = line.split("|")
            if len(parts) == 4:
                states[parts[0]] = TaskState(parts[0], parts[1], parts[2], parts[3])
    return states


def wait(job_ids: list[str], timeout_s: float = 600, poll_s: float = 1.0) -> dict[str, TaskState]:
    """Block until no job of `job_ids` is pending or running (the pilot waits for its jobs with it)."""
    deadline = time.monotonic() + timeout_s
    while True:
        proc = _run(["squeue", "-h", "-j", ",".join(job_ids), "-o", "%i"], "squeue", False)
        # a busy slurmctld's squeue times out and prints nothing: that is not "no jobs left"
        if (proc.returncode == 0 and not proc.stdout.strip()) or time.monotonic() > deadline:
            break
        time.sleep(poll_s)
    return task_states(job_ids)
