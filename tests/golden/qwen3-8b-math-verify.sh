#!/bin/bash

# Parameters
#SBATCH --account=my-lab
#SBATCH --array=0-255%32
#SBATCH --chdir=REPO
#SBATCH --constraint=a100_80gb
#SBATCH --cpus-per-task=8
#SBATCH --dependency=aftercorr:GENERATE_JOB
#SBATCH --error=RUNS/qwen3-8b-math/logs/verify/%A_%a_0_log.err
#SBATCH --gpus-per-node=2
#SBATCH --job-name=svd-qwen3-8b-math-verify
#SBATCH --kill-on-invalid-dep=yes
#SBATCH --mail-type=END,FAIL
#SBATCH --mem=120G
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --open-mode=append
#SBATCH --output=RUNS/qwen3-8b-math/logs/verify/%A_%a_0_log.out
#SBATCH --partition=gpu
#SBATCH --qos=normal
#SBATCH --requeue
#SBATCH --signal=USR2@300
#SBATCH --time=16:00:00
#SBATCH --wckey=svd_hpc

# setup
module purge
module load cuda/12.4
source "$HOME/miniforge3/etc/profile.d/conda.sh"
conda activate svd_hpc
export HF_HOME="$SCRATCH/hf"
export SVD_ARRAY_OFFSET=0
export SVD_REQUEUE_CAP=3

# command
export SUBMITIT_EXECUTOR=slurm
srun --unbuffered --output RUNS/qwen3-8b-math/logs/verify/%A_%a_%t_log.out --error RUNS/qwen3-8b-math/logs/verify/%A_%a_%t_log.err python -u -m svd_hpc.task verify --run-dir RUNS/qwen3-8b-math
