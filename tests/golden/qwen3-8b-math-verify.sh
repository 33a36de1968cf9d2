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
#SBATCH --time=16:00:00
# nodes (resources.train.nodes for train, else 1)
#SBATCH --nodes=1
# processes per node: train runs one per GPU, a vLLM task one engine
#SBATCH --ntasks-per-node=1
# site: CPU cores per process (resources.<stage>.cpus, cluster profile: cpus_per_task)
#SBATCH --cpus-per-task=8
# GPUs per node: model.tensor_parallel_size for vLLM stages; a site may need --gres=gpu:N
#SBATCH --gpus-per-node=2
# site: memory per node (resources.<stage>.mem, cluster profile: mem)
#SBATCH --mem=120G
# task indices, %N runs at most N at once (resources.<stage>.array_parallelism)
#SBATCH --array=0-255%32
# this script's log; `launch status` reads these names
#SBATCH --output=RUNS/qwen3-8b-math/logs/verify/%A_%a_0_log.out
# this script's errors; task 0 appends its own here
#SBATCH --error=RUNS/qwen3-8b-math/logs/verify/%A_%a_0_log.err
# a requeued job appends to its logs instead of truncating them
#SBATCH --open-mode=append
# working directory of the job
#SBATCH --chdir=REPO
# Slurm may requeue this job; the script requeues it itself on the warning signal
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

# --- warning signal and requeue (here, not in the task: its container may have no scontrol) ---
requeue() {  # put this job back in the queue, at most 3 times; its dependents keep waiting
    local job=${SLURM_ARRAY_JOB_ID:+${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}}
    job=${job:-$SLURM_JOB_ID}
    if (( ${SLURM_RESTART_COUNT:-0} >= 3 )); then
        echo "svd_hpc: not requeueing $job: requeue cap 3 reached; resume the run with python -m svd_hpc.launch resume" >&2
        return 1
    fi
    echo "svd_hpc: requeueing $job (restart $(( ${SLURM_RESTART_COUNT:-0} + 1 )) of at most 3)" >&2
    scontrol requeue "$job" && exit 75
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
exit "$status"
