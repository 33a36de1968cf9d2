#!/bin/bash
# svd_hpc stage 'verify' of run 'qwen3-8b-math', rendered from its config and cluster profile
# 'example-university'. Lines marked site: may be edited for your cluster.

# the name squeue shows
#SBATCH --job-name=svd-qwen3-8b-math-verify
# site: partition (cluster profile: partition, cpu_partition; resources.<stage>.partition)
#SBATCH --partition=gpu
# site: account charged (cluster profile: account)
#SBATCH --account=my-lab
# site: quality of service (cluster profile: qos)
#SBATCH --qos=normal
# site: node features, e.g. a GPU model (cluster profile: constraint)
#SBATCH --constraint=a100_80gb
# site: wall-time limit (resources.<stage>.time, cluster profile: time)
#SBATCH --time=32:00:00
# nodes (resources.train.nodes for train, else 1)
#SBATCH --nodes=1
# processes per node: train runs one per GPU, a vLLM task one (its engines are its children)
#SBATCH --ntasks-per-node=1
# site: CPU cores per process (resources.<stage>.cpus, cluster profile: cpus_per_task)
#SBATCH --cpus-per-task=8
# GPUs per node: model.tensor_parallel_size * resources.<stage>.engines_per_task for vLLM stages; a site may need --gres=gpu:N
#SBATCH --gpus-per-node=2
# site: memory per node (resources.<stage>.mem, cluster profile: mem)
#SBATCH --mem=120G
# task indices, %N runs at most N at once (resources.<stage>.array_parallelism)
#SBATCH --array=0-999%32
# this script's log; `launch status` reads these names
#SBATCH --output=RUNS/qwen3-8b-math/logs/verify/%A_%a_0_log.out
# this script's errors; task 0 appends its own here
#SBATCH --error=RUNS/qwen3-8b-math/logs/verify/%A_%a_0_log.err
# a requeued job appends to its logs instead of truncating them
#SBATCH --open-mode=append
# working directory of the job
#SBATCH --chdir=REPO
# Slurm may requeue this job (a node failure); the script requeues it on a transient failure and on the warning signal
#SBATCH --requeue
# the warning reaches this shell only (B:), N seconds before the time limit (cluster profile: signal_seconds)
#SBATCH --signal=B:USR2@300
# starts after these jobs (sbatch/pipeline.sh passes it on the command line instead)
#SBATCH --dependency=aftercorr:GENERATE_JOB
# a failed upstream job cancels this one instead of leaving it pending for ever
#SBATCH --kill-on-invalid-dep=yes
# which events Slurm mails about (cluster profile: mail_type)
#SBATCH --mail-type=END,FAIL

# --- setup (cluster profile: setup) ---
module purge
module load cuda/12.4
source "$HOME/miniforge3/etc/profile.d/conda.sh"
conda activate svd_hpc
export HF_HOME="$SCRATCH/hf"

# --- environment ---
# Slurm 22.05-23.02: srun does not pass --cpus-per-task on; without this each task gets one core
if [[ -n ${SLURM_CPUS_PER_TASK:-} ]]; then export SRUN_CPUS_PER_TASK=$SLURM_CPUS_PER_TASK; fi
export SVD_ARRAY_OFFSET=0

# --- this task's files: its done marker, why it failed, each of its lives (svd_hpc/failures.py) ---
index=$(( ${SVD_ARRAY_OFFSET:-0} + ${SLURM_ARRAY_TASK_ID:-0} ))
printf -v tag %05d "$index"
done_marker=RUNS/qwen3-8b-math/verify/done/$tag
failed=RUNS/qwen3-8b-math/verify/failed/$tag
lives=RUNS/qwen3-8b-math/verify/retries/$tag.jsonl
life_event() {  # one JSON line in this task's lives file: $1 the event, $2 more fields, $3 the node
    local job=${SLURM_ARRAY_JOB_ID:+${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}}
    mkdir -p "${lives%/*}"
    printf '{"event": "%s", "life": %d, "node": "%s", "job": "%s", "time": "%s"%s}\n' "$1" \
        "${SLURM_RESTART_COUNT:-0}" "${3:-${SLURMD_NODENAME:-}}" "${job:-$SLURM_JOB_ID}" \
        "$(date +%Y-%m-%dT%H:%M:%S)" "${2:+, $2}" >> "$lives"
}
rm -f "$failed"  # the cause an earlier life left is done with
life_event start

# --- warning signal and requeue (here, not in the task: its container may have no scontrol) ---
requeue() {  # put this job back in the queue, at most 6 times; its dependents keep waiting
    local job=${SLURM_ARRAY_JOB_ID:+${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}}
    job=${job:-$SLURM_JOB_ID}
    if (( ${SLURM_RESTART_COUNT:-0} >= 6 )); then
        echo "svd_hpc: not requeueing $job: requeue cap 6 reached; resume the run with python -m svd_hpc.launch resume" >&2
        life_event failed "\"why\": \"requeue cap reached\""
        return 1
    fi
    [[ ${1:-} == recorded ]] || life_event retry "\"cause\": \"warning signal\""
    echo "svd_hpc: requeueing $job (restart $(( ${SLURM_RESTART_COUNT:-0} + 1 )) of at most 6)" >&2
    scontrol requeue "$job" && exit 75
}
retry_by_cause() {  # $1: the task's exit status; it ended without its done marker
    local cause= node=
    { read -r cause; read -r node; } 2>/dev/null < "$failed"
    # a single-process task that could not write its cause still has its exit status
    [[ -n $cause ]] || case $1 in 70) cause=engine ;; 134) cause=aborted ;; 137) cause=killed ;; esac
    node=${node:-${SLURMD_NODENAME:-}}
    case $cause in
        engine|communication|device|aborted) ;;
        killed) if grep -q '"cause": "killed"' "$lives" 2>/dev/null; then
                life_event failed "\"cause\": \"killed\", \"exit\": $1, \"why\": \"killed twice: the task itself needs more memory (resources.<stage>.mem)\""
                return
            fi ;;
        *) life_event failed "\"cause\": \"${cause:-error}\", \"exit\": $1, \"why\": \"not transient: see the task log\""
           return ;;
    esac
    requeue_off "$node" "$cause" "$1"
}
requeue_off() {  # $1 the node to keep the retry off, $2 the cause, $3 the exit status (cap 6)
    local job=${SLURM_ARRAY_JOB_ID:+${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}} avoid left helper waited
    job=${job:-$SLURM_JOB_ID}
    (( ${SLURM_RESTART_COUNT:-0} < 6 )) || { requeue; return; }
    # the nodes of this task's earlier retries, the site's exclusions and this one
    avoid=$( { sed -n 's/^{"event": "retry", "life": [0-9]*, "node": "\([^"]*\)".*/\1/p' "$lives";
        echo ''; echo "$1"; } | grep -v "^$" | sort -u | paste -sd, -)
    left=$(comm -23 <(sinfo -h -N -p "$SLURM_JOB_PARTITION" -o %N | sort -u) \
        <(scontrol show hostnames "$avoid" | sort -u) | wc -l)
    life_event retry "\"cause\": \"$2\", \"exit\": $3, \"excluded\": \"$avoid\"" "$1"
    if (( left < ${SLURM_JOB_NUM_NODES:-1} )); then
        echo "svd_hpc: $2 on $1; no other node to retry on: requeueing $job as it is" >&2
        requeue recorded; return
    fi
    # a running job cannot change its excluded nodes: a helper requeues it held, sets them, releases it
    helper=$(sbatch --parsable --nodes=1 --ntasks=1 --time=5 --output=/dev/null --partition=cpu --account=my-lab --qos=normal --job-name="$SLURM_JOB_NAME-retry" \
        --wrap="scontrol requeuehold $job && for try in \$(seq 30); do scontrol update JobId=$job ExcNodeList=$avoid && break; sleep 2; done; scontrol release $job")
    echo "svd_hpc: $2 on $1: retrying $job off $avoid (helper job ${helper:-not submitted})" >&2
    # the helper ends this shell
    for (( waited = 0; waited < 300 && ${#helper}; waited += 5 )); do sleep 5; done
    [[ -z $helper ]] || scancel "$helper" 2>/dev/null
    echo "svd_hpc: the helper did not requeue $job within 300 s; requeueing it as it is" >&2
    requeue recorded
}
on_warning() {  # finished chunks are on disk: the requeued task resumes from them
    echo "svd_hpc: warning signal" >&2
    requeue
}
trap on_warning USR2

# --- the task ---
# srun runs in the background: bash runs a trap only between foreground commands.
# --kill-on-bad-exit: a process that fails ends the others instead of leaving them in a collective
srun --kill-on-bad-exit=1 --open-mode=append --output=RUNS/qwen3-8b-math/logs/verify/%A_%a_%t_log.out --error=RUNS/qwen3-8b-math/logs/verify/%A_%a_%t_log.err \
    python -u -m svd_hpc.task verify --run-dir RUNS/qwen3-8b-math &
task=$!
while kill -0 "$task" 2>/dev/null; do wait "$task"; done  # a trap interrupts wait: wait again
wait "$task"
status=$?
if (( status != 0 )) && [[ ! -e $done_marker ]]; then retry_by_cause "$status"; fi
exit "$status"
