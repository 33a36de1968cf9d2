"""Data-parallel engines in one task (resources.STAGE.engines_per_task): each engine's GPUs, how the
requests are dealt and gathered, how a failed engine ends the task, the sbatch request, and a tiny
real run whose records equal one engine's."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from svd_hpc import config, launch
from svd_hpc.config import ModelConfig
from svd_hpc.inputs import seeds
from svd_hpc.rundir import failures
from svd_hpc.rundir.contract import EXIT_ENGINE_FAILED
from svd_hpc.rundir.layout import RunDir
from svd_hpc.runner.task import run_once
from svd_hpc.sampling.engine import Completion, Sampling
from svd_hpc.sampling.engines import EngineGroup, deal, engine_cores, engine_devices, open_engines, placements
from svd_hpc.sampling.watchdog import Watchdog
from svd_hpc.stages import evaluate, generate, verify
from tests.helpers import run_launch, write_config

REPO = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------- slicing and dealing


def test_each_engine_gets_its_own_slice_of_the_task_gpus():
    assert engine_devices(2, 2, "4,5,6,7") == ["4,5", "6,7"]
    assert engine_devices(4, 1, "0, 1,2,3") == ["0", "1", "2", "3"]
    assert engine_devices(2, 2, None) == ["0,1", "2,3"]  # no list: the node's GPUs from 0
    assert engine_devices(2, 1, "GPU-a,GPU-b") == ["GPU-a", "GPU-b"]  # UUIDs as Slurm may give them
    with pytest.raises(ValueError, match=r"sees 2 GPU\(s\) .* its 2 engines of model.tensor_parallel_size 2 need 4"):
        engine_devices(2, 2, "0,1")


def test_cpu_engines_share_the_cores_out():
    assert engine_cores(2, [3, 0, 1, 2]) == [[0, 1], [2, 3]]
    assert engine_cores(3, range(8)) == [[0, 1], [2, 3, 4], [5, 6, 7]]
    assert engine_cores(2, [0]) is None  # fewer cores than engines: they share them


def test_each_engine_is_placed_on_its_own_share():
    gpu = placements(2, 2, True, {"CUDA_VISIBLE_DEVICES": "4,5,6,7"}, [0, 1])
    assert [p.env for p in gpu] == [{"CUDA_VISIBLE_DEVICES": "4,5"}, {"CUDA_VISIBLE_DEVICES": "6,7"}]
    cpu = placements(2, 1, False, {}, [0, 1, 2, 3])
    assert [p.cores for p in cpu] == [[0, 1], [2, 3]] and cpu[1].env["OMP_NUM_THREADS"] == "2"
    # the task runner chose nobind (Slurm gave 8 of the node's cores, unpinned): the engines halve its threads
    unpinned = placements(2, 1, False, {"VLLM_CPU_OMP_THREADS_BIND": "nobind", "OMP_NUM_THREADS": "8"}, range(64))
    assert [(p.env, p.cores) for p in unpinned] == [({"OMP_NUM_THREADS": "4"}, None)] * 2


def test_requests_are_dealt_round_robin():
    assert deal(7, 2) == [[0, 2, 4, 6], [1, 3, 5]]
    assert deal(2, 3) == [[0], [1], []]
    assert sorted(i for share in deal(11, 4) for i in share) == list(range(11))


# ----------------------------------------------------------------------------- a group of scripted engines


class EchoEngine:
    """A child engine without a model: its replies name the seed and the process that answered.

    model.path "fail:value" raises a ValueError, "exit:N" ends the process with N, "kill" kills it,
    "busy" sleeps.
    """

    thinking = False

    def __init__(self, model_cfg: ModelConfig):
        self.model_cfg = model_cfg

    def render(self, conversation, enable_thinking=None, reply_prefix=""):
        return [ord(c) for c in conversation[-1]["content"]]

    def stream(self, prompts, sampling, seeds=None):
        path = self.model_cfg.path
        if path.startswith("fail:"):
            raise ValueError("the engine refused a sampling setting")
        if path.startswith("exit:"):
            os._exit(int(path.split(":")[1]))
        if path == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if path == "busy":  # an engine deep in a long batch, reading no message
            time.sleep(300)
        samplings = [sampling] * len(prompts) if isinstance(sampling, Sampling) else sampling
        for i in reversed(range(len(prompts))):  # finish out of order, as a real batch does
            text = f"seed={seeds[i]} len={len(prompts[i])} pid={os.getpid()}"
            yield i, [Completion(text, 1, "stop", len(prompts[i])) for _ in range(samplings[i].n)]


def echo_engine(model_cfg: ModelConfig) -> EchoEngine:
    return EchoEngine(model_cfg)


def test_a_group_answers_every_request_in_its_place():
    group = open_engines(ModelConfig(path="echo"), 2, echo_engine, device="cpu")
    try:
        assert isinstance(group, EngineGroup) and group.thinking is False
        conversations = [[{"role": "user", "content": "q" * (i + 1)}] for i in range(7)]
        outs = group.chat(conversations, Sampling(n=2), seeds=[100 + i for i in range(7)])
        assert [len(o) for o in outs] == [2] * 7
        pids = set()
        for i, samples in enumerate(outs):
            seed, length, pid = re.fullmatch(r"seed=(\d+) len=(\d+) pid=(\d+)", samples[0].text).groups()
            assert (int(seed), int(length)) == (100 + i, i + 1)
            pids.add(pid)
        assert len(pids) == 2 and str(os.getpid()) not in pids  # both children answered, not this process
        again = group.chat(conversations[:1], Sampling(), seeds=[5])  # a group serves call after call
        assert again[0][0].text.startswith("seed=5 ")
    finally:
        group.close()
    assert not group.procs


@pytest.mark.parametrize(
    "path, raised, code",
    [("fail:value", ValueError, None), (f"exit:{EXIT_ENGINE_FAILED}", SystemExit, EXIT_ENGINE_FAILED),
     ("kill", SystemExit, 128 + signal.SIGKILL)],
)  # fmt: skip
def test_a_failed_engine_ends_the_task_with_its_cause(path, raised, code):
    group = open_engines(ModelConfig(path=path), 2, echo_engine, device="cpu")
    procs = list(group.procs)
    with pytest.raises(raised) as err:
        group.generate_tokens([[1], [2], [3]], Sampling(), seeds=[1, 2, 3])
    if code is not None:
        assert err.value.code == code  # what the batch script reads as the cause (70 engine, 137 killed)
    else:
        assert "refused a sampling setting" in str(err.value)  # the task runner's exit 2
    assert all(p.exitcode is not None for p in procs)  # no engine left running


def test_generate_with_two_engines_writes_one_engines_shard(tmp_path, monkeypatch):
    """The stage body reads engines_per_task and gathers the engines' answers in question order."""
    monkeypatch.setattr(generate, "Engine", echo_engine)
    seeds_path = tmp_path / "seeds.jsonl"
    seeds_path.write_text("".join(f'{{"id": "q{i}", "question": "{i} + 1?", "domain": "science"}}\n' for i in range(9)))
    shards = {}
    for engines in (1, 2):
        cfg_path = tmp_path / f"e{engines}.yaml"
        settings = {
            "name": f"e{engines}",
            "run_root": str(tmp_path),
            "model": {"path": "echo"},
            "seeds": {"path": str(seeds_path), "id_field": "id", "domain_field": "domain"},
            "generate": {"n": 2, "chunk_size": 2, "require_think": "off"},
            "resources": {"generate": {"engines_per_task": engines}},
        }
        cfg_path.write_text(yaml.safe_dump(settings))
        cfg = config.load(cfg_path)
        run = RunDir(tmp_path / f"e{engines}")
        run.write_config(cfg, meta={})
        seeds.prepare(cfg, run)
        monkeypatch.setattr("svd_hpc.sampling.engines.vllm_device", lambda: "cpu")
        run_once(run, "generate", 0)
        shards[engines] = pq.read_table(run.shard_path("generate", 0)).drop(["text", "answer"])
        texts = pq.read_table(run.shard_path("generate", 0)).column("text").to_pylist()
        assert len({t.split("pid=")[1] for t in texts}) == engines
    assert shards[2].equals(shards[1]) and shards[1].num_rows == 18


# ----------------------------------------------------------------------------- config and sbatch


def test_engines_per_task_asks_for_their_gpus(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    path = REPO / "configs" / "qwen3-8b-math.yaml"  # TP 2 on 4-GPU nodes
    args = ["--config", str(path), f"run_root={tmp_path}", "resources.generate.engines_per_task=2", "--dry-run"]
    assert launch.main(args) == 0
    scripts = tmp_path / "qwen3-8b-math" / "sbatch"
    assert "#SBATCH --gpus-per-node=4\n" in (scripts / "generate.sh").read_text()  # 2 engines × TP 2
    assert "#SBATCH --ntasks-per-node=1\n" in (scripts / "generate.sh").read_text()  # one task, engines as children
    assert "#SBATCH --gpus-per-node=2\n" in (scripts / "verify.sh").read_text()


@pytest.mark.parametrize(
    "override, message",
    [
        ("resources.train.engines_per_task=2", "resources.train.engines_per_task applies to the vLLM stages only"),
        ("resources.merge.engines_per_task=2", "resources.merge.engines_per_task applies to the vLLM stages only"),
        ("resources.verify.engines_per_task=0", "resources.verify.engines_per_task must be at least 1"),
        (
            "resources.generate.engines_per_task=4",
            "engines_per_task=4 × model.tensor_parallel_size=2 GPUs exceeds the 4",
        ),
        (
            "resources.eval_base.gpus=2",
            "resources.eval_base.engines_per_task=2 engines of model.tensor_parallel_size=2 need 4",
        ),
    ],
)
def test_bad_engines_per_task_is_one_clear_sentence(override, message):
    with pytest.raises(config.ConfigError, match=re.escape(message)):
        config.load(REPO / "configs" / "qwen3-8b-math.yaml", [override, "resources.eval_base.engines_per_task=2"])


# ----------------------------------------------------------------------------- real vLLM


@pytest.mark.slow  # three engine loads of the tiny model on 2 shared cores
@pytest.mark.readme_claim
def test_two_engines_give_one_engines_records(tmp_path):
    from test_generate_verify import QUESTIONS, TINY, prepare_run

    from svd_hpc.sampling.engine import Engine

    settings = {
        **TINY,
        "seeds": {**TINY["seeds"], "shards": 1},
        "generate": {**TINY["generate"], "n": 2, "max_tokens": 16},
        "verify": {**TINY["verify"], "votes": 2, "max_tokens": 16},
    }
    runs = {e: prepare_run(tmp_path, f"e{e}", settings, QUESTIONS[:4]) for e in (1, 2)}
    model = runs[1].load_config().model
    for engines, run in runs.items():
        engine = open_engines(model, engines, Engine)
        try:
            run_once(run, "generate", 0, body=lambda r, i, e=engine: generate.run_shard(r, i, engine=e))
            run_once(run, "verify", 0, body=lambda r, i, e=engine: verify.run_shard(r, i, engine=e))
        finally:
            if engines > 1:
                engine.close()
    for stage in ("generate", "verify"):
        one, two = (pq.read_table(runs[e].shard_path(stage, 0)) for e in (1, 2))
        assert two.num_rows == one.num_rows > 0 and two.equals(one), stage


def test_engines_die_with_their_task(tmp_path):
    """A task killed outright (time limit, requeue) leaves no engine holding its GPUs."""
    script = tmp_path / "task.py"
    script.write_text(
        "import os, sys, threading, time\n"
        f"sys.path[:0] = [{str(REPO)!r}, {str(REPO / 'tests')!r}]\n"
        "from svd_hpc.config import ModelConfig\n"
        "from svd_hpc.sampling.engine import Sampling\n"
        "from svd_hpc.sampling.engines import open_engines\n"
        "from test_engines import echo_engine\n"
        "if __name__ == '__main__':\n"
        "    group = open_engines(ModelConfig(path='busy'), 2, echo_engine, device='cpu')\n"
        "    print(' '.join(str(p.pid) for p in group.procs), flush=True)\n"
        "    ask = lambda: group.generate_tokens([[1], [2]], Sampling(), seeds=[1, 2])\n"
        "    threading.Thread(target=ask, daemon=True).start()\n"
        "    time.sleep(2)  # both engines busy with their request\n"
        "    os._exit(9)  # no atexit, no close: as SIGKILL leaves it\n"
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 9, done.stderr
    pids = [int(p) for p in done.stdout.split()]
    assert len(pids) == 2
    deadline = time.time() + 30
    while any(Path(f"/proc/{pid}").exists() and "Z" not in _state(pid) for pid in pids):
        assert time.time() < deadline, f"engines {pids} outlived their task"
        time.sleep(0.1)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


def test_eval_with_two_engines_writes_one_engines_records(tmp_path, monkeypatch):
    """The eval body reads engines_per_task too (resources.eval_base) and keeps question order."""
    from test_evaluate import MATH
    from test_evaluate import prepare_run as prepare_eval_run

    monkeypatch.setattr(evaluate, "Engine", echo_engine)
    monkeypatch.setattr("svd_hpc.sampling.engines.vllm_device", lambda: "cpu")
    tables = {}
    for engines in (1, 2):
        resources = {"eval_base": {"engines_per_task": engines}}
        run = prepare_eval_run(tmp_path, {"benchmarks": [MATH], "seeds": [0]}, name=f"ev{engines}", resources=resources)
        run_once(run, "eval_base", 0)
        table = pq.read_table(next(run.root.glob("eval/base/*/seed-0.parquet")))
        assert len({r.split("pid=")[1] for r in table.column("response").to_pylist()}) == engines
        tables[engines] = table.drop(["response"])
    assert tables[2].equals(tables[1]) and tables[1].num_rows > 2


class HungEngine(EchoEngine):
    """An engine whose step never returns, watched by the real stall watchdog (1 s)."""

    def __init__(self, model_cfg: ModelConfig):
        super().__init__(model_cfg)
        self.watchdog = Watchdog(self.background_died, timeout_s=1.0)

    def background_died(self) -> bool:
        return False

    def stream(self, prompts, sampling, seeds=None):
        with self.watchdog.step():
            time.sleep(120)  # the watchdog ends the process long before this
        yield from ()


def hung_engine(model_cfg: ModelConfig) -> HungEngine:
    return HungEngine(model_cfg)


def _generate_on_hung_engines(run, index):
    group = open_engines(ModelConfig(), 2, hung_engine, device="cpu")
    group.generate_tokens([[1], [2]], Sampling(), seeds=[1, 2])


HUNG_ENGINES = {"generate": _generate_on_hung_engines}  # SVD_HPC_TEST_BODIES=tests.test_engines:HUNG_ENGINES


def test_a_hung_engine_ends_its_task_as_the_batch_script_retries_it(tmp_path):
    """Exit 70 and the cause "engine" in the task's failure file: what retry_by_cause reads."""
    assert run_launch(["prepare", "--config", str(write_config(tmp_path, 1))]).returncode == 0
    run = RunDir(tmp_path / "runs" / "toy")
    done = subprocess.run(
        [sys.executable, "-m", "svd_hpc.task", "generate", "--run-dir", str(run.root), "--index", "0"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, "SVD_HPC_TEST_BODIES": "tests.test_engines:HUNG_ENGINES"},
    )  # fmt: skip
    assert done.returncode == EXIT_ENGINE_FAILED, done.stderr[-2000:]
    cause = failures.failure_path(run.stage_dir("generate"), 0).read_text().splitlines()
    assert cause[0] == failures.ENGINE and "no step for" in cause[2]
    assert "ending the task with it" in done.stderr and not run.is_done("generate", 0)
