"""The sbatch script of one stage: a pure function from SLURM options to text.

`launch` submits these scripts and `launch prepare` writes them for plain sbatch; a golden-file
test pins the text. The batch shell, not the task, owns the warning signal and the requeue:
`--signal=B:USR2@S` reaches only this shell, which runs outside any container (`scontrol`
exists here) and waits on the task instead of being it. On the warning it either asks the task
to stop (a multi-process stage: a stop-request file the ranks act on at a step boundary; they
checkpoint and exit) and requeues the job once the task has ended without its done marker, or,
for an array task whose finished chunks are already on disk, requeues the task at once.

The shell also retries by cause. A task that failed for a reason a retry can help with (its engine
hung or died, a collective or the GPU failed, the kernel killed it) names the cause in its failure
file (failures.py); the shell requeues it, within the requeue cap, and keeps the retry off the node
it failed on. Slurm lets no job change its own excluded nodes while it runs (`scontrol update` takes
ExcNodeList only from a pending job, in every release through 24.11), so the shell submits a
one-minute helper job that puts this one back in the queue held (`scontrol requeuehold`), adds the
node to its ExcNodeList and releases it. A failure a retry would only repeat (a Python error in the
task, a bad config, an install that cannot use the GPUs) is recorded and not retried.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path

from ..rundir.contract import EXIT_STOPPED
from ..rundir.failures import ABORTED, ENGINE, KILLED, TRANSIENT_CAUSES

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
    "ntasks-per-node": "processes per node: train runs one per GPU, a vLLM task one (its engines are its children)",
    "cpus-per-task": "site: CPU cores per process (resources.<stage>.cpus, cluster profile: cpus_per_task)",
    "gpus-per-node": (
        "GPUs per node: model.tensor_parallel_size * resources.<stage>.engines_per_task for vLLM stages; "
        "a site may need --gres=gpu:N"
    ),
    "mem": "site: memory per node (resources.<stage>.mem, cluster profile: mem)",
    "array": "task indices, %N runs at most N at once (resources.<stage>.array_parallelism)",
    "output": "this script's log; `launch status` reads these names",
    "error": "this script's errors; task 0 appends its own here",
    "open-mode": "a requeued job appends to its logs instead of truncating them",
    "chdir": "working directory of the job",
    "requeue": "Slurm may requeue this job (a node failure); the script requeues it on a transient "
    "failure and on the warning signal",
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
    task_files: str | None = None,
    retry_partition: str | None = None,
    retry_wait_seconds: int = 300,
) -> str:
    """The sbatch text of one submission; every keyword is a SLURM option or a part of the script.

    `stop_file`, `done_marker` (together): on the warning signal, create `stop_file` and let the
    task checkpoint and stop; requeue when it has ended without `done_marker`. Without them the
    warning requeues the task at once. `rendezvous`: export MASTER_ADDR/MASTER_PORT.
    `task_files`: the stage's folder in the run directory (done/, failed/, retries/): with it the
    script records each life of the task and retries it by cause, off the node it failed on (the
    helper job runs on `retry_partition`; this shell waits `retry_wait_seconds` for it, then
    requeues without keeping off the node).
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
        ("requeue" if preemptible or task_files else "no-requeue", True),
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
    if task_files:
        lines += ["", *_life_lines(task_files)]
    if preemptible or task_files:
        lines += ["", *_requeue_lines(requeue_cap, recorded=bool(task_files))]
    if task_files:
        lines += _retry_lines(requeue_cap, retry_partition, account, qos, exclude, retry_wait_seconds)
    if preemptible:
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
    if task_files:
        lines += ['if (( status != 0 )) && [[ ! -e $done_marker ]]; then retry_by_cause "$status"; fi']
    lines += ['exit "$status"']
    return "\n".join(lines) + "\n"


def _requeue_lines(cap: int, recorded: bool) -> list[str]:
    return [
        "# --- warning signal and requeue (here, not in the task: its container may have no scontrol) ---",
        f"requeue() {{  # put this job back in the queue, at most {cap} times; its dependents keep waiting",
        "    local job=${SLURM_ARRAY_JOB_ID:+${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}}",
        "    job=${job:-$SLURM_JOB_ID}",
        f"    if (( ${{SLURM_RESTART_COUNT:-0}} >= {cap} )); then",
        f'        echo "svd_hpc: not requeueing $job: requeue cap {cap} '
        'reached; resume the run with python -m svd_hpc.launch resume" >&2',
        *(['        life_event failed "\\"why\\": \\"requeue cap reached\\""'] if recorded else []),
        "        return 1",
        "    fi",
        *(['    [[ ${1:-} == recorded ]] || life_event retry "\\"cause\\": \\"warning signal\\""'] if recorded else []),
        f'    echo "svd_hpc: requeueing $job (restart $(( ${{SLURM_RESTART_COUNT:-0}} + 1 )) of at most {cap})" >&2',
        # a requeued job is pending again whatever its exit
        # status; non-zero keeps dependents off a task that never ended
        f'    scontrol requeue "$job" && exit {EXIT_STOPPED}',
        "}",
    ]


def _life_lines(task_files: str) -> list[str]:
    folder = shlex.quote(task_files)
    return [
        "# --- this task's files: its done marker, why it failed, each of its lives (svd_hpc/failures.py) ---",
        "index=$(( ${SVD_ARRAY_OFFSET:-0} + ${SLURM_ARRAY_TASK_ID:-0} ))",
        'printf -v tag %05d "$index"',
        f"done_marker={folder}/done/$tag",
        f"failed={folder}/failed/$tag",
        f"lives={folder}/retries/$tag.jsonl",
        "life_event() {  # one JSON line in this task's lives file: $1 the event, $2 more fields, $3 the node",
        "    local job=${SLURM_ARRAY_JOB_ID:+${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}}",
        '    mkdir -p "${lives%/*}"',
        '    printf \'{"event": "%s", "life": %d, "node": "%s", "job": "%s", "time": "%s"%s}\\n\' "$1" \\',
        '        "${SLURM_RESTART_COUNT:-0}" "${3:-${SLURMD_NODENAME:-}}" "${job:-$SLURM_JOB_ID}" \\',
        '        "$(date +%Y-%m-%dT%H:%M:%S)" "${2:+, $2}" >> "$lives"',
        "}",
        'rm -f "$failed"  # the cause an earlier life left is done with',
        "life_event start",
    ]


def _retry_lines(
    cap: int, partition: str | None, account: str | None, qos: str | None, exclude: str | None, wait: int
) -> list[str]:
    helper = ["--parsable", "--nodes=1", "--ntasks=1", "--time=5", "--output=/dev/null"]
    helper += [f"--{name}={shlex.quote(value)}" for name, value in
               (("partition", partition), ("account", account), ("qos", qos)) if value]  # fmt: skip
    transient = "|".join(c for c in TRANSIENT_CAUSES if c != KILLED)
    return [
        "retry_by_cause() {  # $1: the task's exit status; it ended without its done marker",
        "    local cause= node=",
        '    { read -r cause; read -r node; } 2>/dev/null < "$failed"',
        "    # a single-process task that could not write its cause still has its exit status",
        f"    [[ -n $cause ]] || case $1 in 70) cause={ENGINE} ;; 134) cause={ABORTED} ;; 137) cause={KILLED} ;; esac",
        "    node=${node:-${SLURMD_NODENAME:-}}",
        "    case $cause in",
        f"        {transient}) ;;",
        f'        {KILLED}) if grep -q \'"cause": "{KILLED}"\' "$lives" 2>/dev/null; then',
        '                life_event failed "\\"cause\\": \\"killed\\", \\"exit\\": $1, \\"why\\": \\"killed twice: '
        'the task itself needs more memory (resources.<stage>.mem)\\""',
        "                return",
        "            fi ;;",
        '        *) life_event failed "\\"cause\\": \\"${cause:-error}\\", \\"exit\\": $1, \\"why\\": '
        '\\"not transient: see the task log\\""',
        "           return ;;",
        "    esac",
        '    requeue_off "$node" "$cause" "$1"',
        "}",
        f"requeue_off() {{  # $1 the node to keep the retry off, $2 the cause, $3 the exit status (cap {cap})",
        "    local job=${SLURM_ARRAY_JOB_ID:+${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}} avoid left helper waited",
        "    job=${job:-$SLURM_JOB_ID}",
        f"    (( ${{SLURM_RESTART_COUNT:-0}} < {cap} )) || {{ requeue; return; }}",
        "    # the nodes of this task's earlier retries, the site's exclusions and this one",
        '    avoid=$( { sed -n \'s/^{"event": "retry", "life": [0-9]*, "node": "\\([^"]*\\)".*/\\1/p\' "$lives";',
        f'        echo {shlex.quote(exclude or "")}; echo "$1"; }} | grep -v "^$" | sort -u | paste -sd, -)',
        '    left=$(comm -23 <(sinfo -h -N -p "$SLURM_JOB_PARTITION" -o %N | sort -u) \\',
        '        <(scontrol show hostnames "$avoid" | sort -u) | wc -l)',
        '    life_event retry "\\"cause\\": \\"$2\\", \\"exit\\": $3, \\"excluded\\": \\"$avoid\\"" "$1"',
        "    if (( left < ${SLURM_JOB_NUM_NODES:-1} )); then",
        '        echo "svd_hpc: $2 on $1; no other node to retry on: requeueing $job as it is" >&2',
        "        requeue recorded; return",
        "    fi",
        "    # a running job cannot change its excluded nodes: a helper requeues it held, sets them, releases it",
        f'    helper=$(sbatch {" ".join(helper)} --job-name="$SLURM_JOB_NAME-retry" \\',
        '        --wrap="scontrol requeuehold $job && for try in \\$(seq 30); do '
        'scontrol update JobId=$job ExcNodeList=$avoid && break; sleep 2; done; scontrol release $job")',
        '    echo "svd_hpc: $2 on $1: retrying $job off $avoid (helper job ${helper:-not submitted})" >&2',
        "    # the helper ends this shell",
        f"    for (( waited = 0; waited < {wait} && ${{#helper}}; waited += 5 )); do sleep 5; done",
        '    [[ -z $helper ]] || scancel "$helper" 2>/dev/null',
        '    echo "svd_hpc: the helper did not requeue $job within {wait} s; requeueing it as it is" >&2'.replace(
            "{wait}", str(wait)
        ),
        "    requeue recorded",
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
