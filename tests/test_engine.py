"""The engine at vLLM's boundary: what our process does before `vllm.LLM(...)` is built (no CUDA
touched, the environment vLLM's workers inherit), the arguments and sampling parameters vLLM
gets, and the model's own generation_config defaults."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# Runs in a fresh process, as a task does: records every CUDA-touching torch call, then builds an
# Engine whose vllm.LLM is replaced by a recorder that prints what vLLM would have been given.
BOUNDARY_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import torch

    touched = []
    def recorder(name, real):
        def call(*args, **kwargs):
            touched.append(name)
            return real(*args, **kwargs)
        return call
    for name in ("is_available", "init", "_lazy_init", "device_count", "current_device", "set_device"):
        setattr(torch.cuda, name, recorder(name, getattr(torch.cuda, name)))

    platform, body, target = sys.argv[1], sys.argv[2], sys.argv[3]
    if platform == "cuda":
        import vllm.platforms
        class FakeCudaPlatform:
            device_type = "cuda"
        vllm.platforms._current_platform = FakeCudaPlatform()

    class Constructed(Exception):
        pass

    class RecordingLLM:
        def __init__(self, **kwargs):
            names = ("VLLM_ENABLE_V1_MULTIPROCESSING", "VLLM_WORKER_MULTIPROC_METHOD", "VLLM_CPU_KVCACHE_SPACE",
                     "PYTORCH_NVML_BASED_CUDA_CHECK", "VLLM_CACHE_ROOT")
            print(json.dumps({
                "touched": touched, "cuda_initialized": torch.cuda.is_initialized(),
                "env": {n: os.environ.get(n) for n in names}, "args": kwargs,
            }), flush=True)
            raise Constructed()

    import vllm
    vllm.LLM = RecordingLLM
    from svd_hpc import evaluate, generate, verify  # every stage body that starts an engine
    from svd_hpc.config import ModelConfig
    from svd_hpc.engine import Engine
    from svd_hpc.rundir import RunDir
    os.environ["SVD_STAGE"] = "eval_base"
    starts = {
        "engine": lambda: Engine(ModelConfig(path=target)),
        "generate": lambda: generate.run_task(target, 0),
        "eval_base": lambda: evaluate.run_task(target, 0),
    }
    for name in body.split(","):
        try:
            starts[name]()
            sys.exit(f"{name}: vllm.LLM was never constructed")
        except Constructed:
            pass
    """
)

ENV_NAMES = ("VLLM_ENABLE_V1_MULTIPROCESSING", "VLLM_WORKER_MULTIPROC_METHOD", "VLLM_CPU_KVCACHE_SPACE",
             "VLLM_CACHE_ROOT")


def construct(platform: str, body: str, target: str, tmp_path: Path) -> list[dict]:
    """What vllm.LLM saw for each comma-separated body, in one fresh process."""
    env = {k: v for k, v in os.environ.items() if k not in ENV_NAMES}
    env["SVD_HPC_CACHE"] = str(tmp_path / "models")  # the tiny model is made inside the process
    done = subprocess.run(
        [sys.executable, "-c", BOUNDARY_SCRIPT, platform, body, target],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def prepared_run(tmp_path: Path) -> Path:
    """A run directory with one seed shard and one eval benchmark, as launch leaves it."""
    from svd_hpc import config, seeds
    from svd_hpc.rundir import RunDir

    (tmp_path / "seeds.jsonl").write_text(json.dumps({"question": "What is 2+2?"}) + "\n")
    (tmp_path / "bench.jsonl").write_text(json.dumps({"question": "What is 3+3?", "answer": "6"}) + "\n")
    data = {
        "name": "boundary", "model": {"path": "builtin:tiny-qwen3"}, "train": {"enabled": False},
        "seeds": {"path": str(tmp_path / "seeds.jsonl")},
        "eval": {"benchmarks": [{"name": "b", "path": str(tmp_path / "bench.jsonl")}]},
    }
    (tmp_path / "boundary.yaml").write_text(json.dumps(data))
    cfg = config.load(tmp_path / "boundary.yaml")
    run = RunDir(tmp_path / "boundary")
    run.write_config(cfg, meta={})
    seeds.prepare(cfg, run)
    return run.root


@pytest.mark.parametrize("platform", ["cpu", "cuda"])
def test_nothing_touches_cuda_before_vllm_starts(tmp_path, platform):
    """vLLM forks its workers from our process; a CUDA driver initialised before that breaks them."""
    [seen] = construct(platform, "engine", "builtin:tiny-qwen3", tmp_path)
    assert seen["touched"] == [] and seen["cuda_initialized"] is False
    env, args = seen["env"], seen["args"]
    # set by `import vllm`, so any later torch.cuda.is_available() asks NVML, not the driver
    assert env["PYTORCH_NVML_BASED_CUDA_CHECK"] == "1"
    # nobody forces a start method: vLLM's fork is safe because the driver is untouched
    assert env["VLLM_WORKER_MULTIPROC_METHOD"] is None
    if platform == "cuda":
        assert env["VLLM_ENABLE_V1_MULTIPROCESSING"] is None and env["VLLM_CPU_KVCACHE_SPACE"] is None
        assert args["dtype"] == "bfloat16" and args["tensor_parallel_size"] == 1 and "enforce_eager" not in args
    else:
        assert env["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0" and env["VLLM_CPU_KVCACHE_SPACE"] == "1"
        assert args["dtype"] == "float32" and args["enforce_eager"] is True


def test_stage_bodies_touch_no_cuda_before_the_engine(tmp_path):
    seen = construct("cuda", "generate,eval_base", str(prepared_run(tmp_path)), tmp_path)
    assert len(seen) == 2
    for body in seen:
        assert body["touched"] == [] and body["cuda_initialized"] is False
