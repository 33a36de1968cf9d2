#!/usr/bin/env bash
# Check, on one CUDA GPU and in under 10 minutes, what an overnight run needs from a GPU node:
# FSDP2 training steps (bf16, packed sequences through the chosen attention, chunked loss) with
# packed-vs-unpacked loss equality, and a vLLM engine start (tensor parallel 1) where CUDA vLLM
# is installed. Prints each check; exits non-zero on a failure, 0 with a note on a machine
# without a GPU. svd_hpc/gpu_check.py says what each check does.
#
# Run as:  bash scripts/gpu-check.sh            (on a GPU node, e.g. inside `srun --gpus=1 --pty`)
set -euo pipefail
cd "$(dirname "$0")/.."
python=.venv/bin/python
[[ -x $python ]] || python=python3
exec "$python" -m svd_hpc.gpu_check
