"""The sbatch script of one stage: a pure function from SLURM options to text.

`launch` submits these scripts and `launch prepare` writes them for plain sbatch; a golden-file
test pins the text. The batch shell, not the task, owns the warning signal and the requeue:
`--signal=B:USR2@S` reaches only this shell, which runs outside any container (`scontrol`
exists here) and waits on the task instead of being it. On the warning it either asks the task
to stop (a multi-process stage: a stop-request file the ranks act on at a step boundary; they
checkpoint and exit) and requeues the job once the task has ended without its done marker, or,
for an array task whose finished chunks are already on disk, requeues the task at once.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path

from ..rundir.contract import EXIT_STOPPED

# The rendezvous port of every multi-node job: below Linux's ephemeral range (32768-60999, where
# the kernel picks outgoing ports, so no client socket can hold it) and above Slurm's daemons.
MASTER_PORT_RULE = "$((10000 + SLURM_JOB_ID % 20000))"

# What each #SBATCH line is for; "site:" marks the lines a site adapts to its cluster.
NOTES = {
    "job-name": "the name squeue shows",
    "partition": "site: partition (cluster profile: partition, cpu_partition; resources.<stage>.partition)",
    "account": "site: account charged (cluster profile: account)",
    "qos": "site: quality of service (cluster profile: qos)",
    "constraint": "site: node features, e.g. a GPU model (cluster profile: constraint)",
    "exclude": "site: nodes never to use (cluster profile: exclude)",
    "time": "site: wall-time limit (resources.<stage>.time, cluster profile: time)",
    "nodes": "nodes (resources.train.nodes for train, else 1)",
    "ntasks-per-node": "processes per node: train runs one per GPU, a vLLM task one engine",
    "cpus-per-task": "site: CPU cores per process (resources.<stage>.cpus, cluster profile: cpus_per_task)",
    "gpus-per-node": "GPUs per node: model.tensor_parallel_size for vLLM stages; a site may need --gres=gpu:N",
    "mem": "site: memory per node (resources.<stage>.mem, cluster profile: mem)",
    "array": "task indices, %N runs at most N at once (resources.<stage>.array_parallelism)",
    "output": "this script's log; `launch status` reads these names",
    "error": "this script's errors; task 0 appends its own here",
    "open-mode": "a requeued job appends to its logs instead of truncating them",
    "chdir": "working directory of the job",
    "requeue": "Slurm may requeue this job; the script requeues it itself on the warning signal",
    "no-requeue": "never requeued: a failure cancels the stages after it, `launch resume` re-runs it",
    "signal": "the warning reaches this shell only (B:), N seconds "
    "before the time limit (cluster profile: signal_seconds)",
    "dependency": "starts after these jobs (sbatch/pipeline.sh passes it on the command line instead)",
    "kill-on-invalid-dep": "a failed upstream job cancels this one instead of leaving it pending for ever",
    "mail-user": "site: where Slurm mails (cluster profile: mail_user)",
    "mail-type": "which events Slurm mails about (cluster profile: mail_type)",
}


def _directive(name: str, value: object) -> str:
    line = f"#SBATCH --{name}" if value is True else f"#SBATCH --{name}={value}"
    return f"# {NOTES[name]}\n{line}"


def batch_script(
    *,
    job_name: str,
    command: str,
    log_dir: str,
    chdir: str,
    time: str,
    title: str = "",
    array: str | None = None,
    nodes: int = 1,
    ntasks_per_node: int = 1,
    cpus_per_task: int = 1,
    gpus_per_node: int | None = None,
    partition: str | None = None,
    account: str | None = None,
    qos: str | None = None,
    constraint: str | None = None,
    exclude: str | None = None,
    mem: str | None = None,
    mail_user: str | None = None,
    mail_type: str | None = None,
    dependency: str | None = None,
    preemptible: bool = False,
    signal_seconds: int = 120,
    requeue_cap: int = 3,
    stop_file: str | None = None,
    done_marker: str | None = None,
    rendezvous: bool = False,
    setup: Sequence[str] = (),
    exports: Sequence[tuple[str, str]] = (),
) -> str:
    """The sbatch text of one submission; every keyword is a SLURM option or a part of the script.

    `stop_file`, `done_marker` (together): on the warning signal, create `stop_file` and let the
    task checkpoint and stop; requeue when it has ended without `done_marker`. Without them the
    warning requeues the task at once. `rendezvous`: export MASTER_ADDR/MASTER_PORT.
    """
    # SLURM expands %A_%a per array task and %j per job; the names are what `launch status` reads
    job = "%A_%a" if array else "%j"
    options: list[tuple[str, object]] = [
        ("job-name", job_name),
        ("partition", partition),
        ("account", account),
        ("qos", qos),
        ("constraint", constraint),
        ("exclude", exclude),
        ("time", time),
        ("nodes", nodes),
        ("ntasks-per-node", ntasks_per_node),
        ("cpus-per-task", cpus_per_task),
        ("gpus-per-node", gpus_per_node),
        ("mem", mem),
        ("array", array),
        ("output", f"{log_dir}/{job}_0_log.out"),
        ("error", f"{log_dir}/{job}_0_log.err"),
        ("open-mode", "append"),
        ("chdir", chdir),
        ("requeue" if preemptible else "no-requeue", True),
        ("signal", f"B:USR2@{signal_seconds}" if preemptible else None),
        ("dependency", dependency),
        ("kill-on-invalid-dep", "yes" if dependency else None),
        ("mail-user", mail_user),
        ("mail-type", mail_type),
    ]
    lines = ["#!/bin/bash"]
    if title:
        lines += [f"# {line}" for line in title.splitlines()] + [""]
    lines += [_directive(name, value) for name, value in options if value not in (None, False, "")]

    lines += ["", "# --- setup (cluster profile: setup) ---", *setup] if setup else []
    lines += [
        "",
        "# --- environment ---",
        "# Slurm 22.05-23.02: srun does not pass --cpus-per-task on; without this each task gets one core",
        "if [[ -n ${SLURM_CPUS_PER_TASK:-} ]]; then export SRUN_CPUS_PER_TASK=$SLURM_CPUS_PER_TASK; fi",
        *(f"export {name}={shlex.quote(value)}" for name, value in exports),
    ]
    if rendezvous:
        lines += [
            "# the first node hosts the rendezvous, on a port outside the ephemeral range",
            'export MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"',
            f"export MASTER_PORT={MASTER_PORT_RULE}",
        ]
    stops = preemptible and stop_file is not None and done_marker is not None
    if preemptible:
        lines += ["", *_requeue_lines(requeue_cap)]
        lines += _stop_lines(stop_file) if stops else _requeue_at_once_lines()

    tasks = f"{log_dir}/{job}_%t_log"
    lines += [
        "",
        "# --- the task ---",
        "# srun runs in the background: bash runs a trap only between foreground commands.",
        "# --kill-on-bad-exit: a process that fails ends the others instead of leaving them in a collective",
        f"srun --kill-on-bad-exit=1 --open-mode=append --output={tasks}.out --error={tasks}.err \\",
        f"    {command} &",
        "task=$!",
        'while kill -0 "$task" 2>/dev/null; do wait "$task"; done  # a trap interrupts wait: wait again',
        'wait "$task"',
        "status=$?",
    ]
    if stops:
        # srun's own status cannot tell: once one rank exits, --kill-on-bad-exit terminates the rest
        lines += [f"if (( warned )) && [[ ! -e {shlex.quote(done_marker)} ]]; then requeue; fi"]
    lines += ['exit "$status"']
    return "\n".join(lines) + "\n"


def _requeue_lines(cap: int) -> list[str]:
    return [
        "# --- warning signal and requeue (here, not in the task: its container may have no scontrol) ---",
        f"requeue() {{  # put this job back in the queue, at most {cap} times; its dependents keep waiting",
        "    local job=${SLURM_ARRAY_JOB_ID:+${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}}",
        "    job=${job:-$SLURM_JOB_ID}",
        f"    if (( ${{SLURM_RESTART_COUNT:-0}} >= {cap} )); then",
        f'        echo "svd_hpc: not requeueing $job: requeue cap {cap} '
        'reached; resume the run with python -m svd_hpc.launch resume" >&2',
        "        return 1",
        "    fi",
        f'    echo "svd_hpc: requeueing $job (restart $(( ${{SLURM_RESTART_COUNT:-0}} + 1 )) of at most {cap})" >&2',
        # a requeued job is pending again whatever its exit
        # status; non-zero keeps dependents off a task that never ended
        f'    scontrol requeue "$job" && exit {EXIT_STOPPED}',
        "}",
    ]


def _stop_lines(stop_file: str) -> list[str]:
    quoted = shlex.quote(stop_file)
    return [
        "warned=0",
        "on_warning() {  # the ranks save a checkpoint at their next step boundary and exit; then we requeue",
        "    warned=1",
        '    echo "svd_hpc: warning signal: asking the task to checkpoint and stop" >&2',
        f"    mkdir -p {shlex.quote(str(Path(stop_file).parent))} && touch {quoted}",
        "}",
        f"rm -f {quoted}  # a request of an earlier life is done with",
        "trap on_warning USR2",
    ]


def _requeue_at_once_lines() -> list[str]:
    return [
        "on_warning() {  # finished chunks are on disk: the requeued task resumes from them",
        '    echo "svd_hpc: warning signal" >&2',
        "    requeue",
        "}",
        "trap on_warning USR2",
    ]
