"""The train stage end to end: 2 processes under torchrun (gloo, CPU, tiny Qwen3), preemption and
resume, the exported folder, the first step against a single-process reference, bad input.
Training across 2 nodes of the local SLURM cluster, stopped by the warning signal: test_sbatch_templates.py."""

import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from svd_hpc import config
from svd_hpc.inputs import models
from svd_hpc.rundir.contract import EXIT_STOPPED
from svd_hpc.rundir.layout import RunDir
from svd_hpc.runner.task import run_once
from svd_hpc.stages import train
from svd_hpc.train import fsdp, sft_cache, sft_data

REPO = Path(__file__).resolve().parent.parent
TRAIN = {
    "steps": 12,
    "global_batch": 4,
    "micro_batch": 1,
    "lr": 3e-3,
    "warmup_ratio": 0.1,
    "max_seq_len": 128,
    "checkpoint_every": 5,
    "procs_per_node": 2,
}
TORCH_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def sft_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randint(1, 50), rng.randint(1, 50)
        reply = "<think>\n" + " ".join(["add"] * rng.randint(1, 8)) + f"\n</think>\n\nThe answer is \\boxed{{{a + b}}}."
        rows.append([{"role": "user", "content": f"What is {a} + {b}?"}, {"role": "assistant", "content": reply}])
    return rows


def make_run(root: Path, n: int = 40, **train_overrides) -> Path:
    """A run directory with a resolved config and an SFT set of `n` arithmetic dialogues."""
    from test_sft_data import write_sft

    root.mkdir(parents=True)
    (root / "cfg.yaml").write_text(yaml.safe_dump({"name": "t", "train": {**TRAIN, **train_overrides}}))
    RunDir(root).write_config(config.load(root / "cfg.yaml"), {})
    write_sft(root / "merge" / "sft" / "train.parquet", sft_rows(n))
    return root


def torchrun(run: Path, procs: int = 2, **env) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in TORCH_ENV}
    clean.update(PYTHONPATH=str(REPO), **env)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}"]
    return subprocess.run(
        [*cmd, "-m", "svd_hpc.train", str(run)], env=clean, capture_output=True, text=True, timeout=300
    )


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "train" / "metrics.jsonl").read_text().splitlines()]


def load_weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors")


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """One uninterrupted 12-step run on 2 processes."""
    run = make_run(tmp_path_factory.mktemp("train") / "run")
    result = torchrun(run)
    assert result.returncode == 0, result.stderr[-3000:]
    return run


def test_loss_goes_down_and_every_step_is_logged(finished):
    rows = metrics(finished)
    assert [r["step"] for r in rows] == list(range(1, 13))
    assert rows[-1]["loss"] < 0.75 * rows[0]["loss"]
    for key in ("lr", "grad_norm", "tokens_per_s", "padding_efficiency"):
        assert all(r[key] > 0 for r in rows), key
    assert RunDir(finished).is_done("train", 0)


def test_final_folder_reloads_with_the_loss_of_the_sharded_model(finished):
    from transformers import AutoModelForCausalLM

    final = finished / "train" / "final"
    assert (final / "model.safetensors").stat().st_mode & 0o044  # readable by others on a shared filesystem
    model = AutoModelForCausalLM.from_pretrained(final)
    tokenizer = sft_data.load_tokenizer(str(final))
    assert tokenizer.chat_template and model.config.use_cache
    t = RunDir(finished).load_config().train
    stream = sft_data.PackedStream(sft_cache.load_cache(finished / "train" / "data"), t.max_seq_len, t.seed, 0)
    batches = stream.step_batches(0, t.global_batch, 1, 0, t.global_batch)
    with torch.no_grad():
        loss = sum(train.loss_sum(model, b, "cpu") for b in batches) / sum(b.loss_tokens for b in batches)
    summary = json.loads((finished / "train" / "summary.json").read_text())
    assert abs(float(loss) - summary["reference_loss"]) < 1e-5
    base = AutoModelForCausalLM.from_pretrained(models.resolve("builtin:tiny-qwen3"))
    with torch.no_grad():
        before = sum(train.loss_sum(base, b, "cpu") for b in batches) / sum(b.loss_tokens for b in batches)
    assert float(before) > summary["reference_loss"] + 0.5  # the export holds the trained weights


def test_first_step_matches_a_single_process_full_batch_reference(finished):
    """Loss and gradient norm of step 1 (2 ranks × 2 micro-steps) equal one plain backward over the batch."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(models.resolve("builtin:tiny-qwen3"))
    t = RunDir(finished).load_config().train
    stream = sft_data.PackedStream(sft_cache.load_cache(finished / "train" / "data"), t.max_seq_len, t.seed, 0)
    batches = stream.step_batches(0, t.global_batch, 1, 0, t.global_batch)
    loss = sum(train.loss_sum(model, b, "cpu") for b in batches) / sum(b.loss_tokens for b in batches)
    loss.backward()
    norm = torch.nn.utils.get_total_norm([p.grad for p in model.parameters()])
    first = metrics(finished)[0]
    assert first["loss"] == pytest.approx(float(loss.detach()), rel=1e-5)
    assert first["grad_norm"] == pytest.approx(float(norm), rel=1e-4)


def test_preempted_run_resumes_to_the_same_weights(finished, tmp_path):
    run = make_run(tmp_path / "run")
    stopped = torchrun(run, **{train.SIGNAL_AT_STEP_ENV: "7"})
    assert stopped.returncode != 0
    assert f"exitcode  : {EXIT_STOPPED}" in stopped.stderr
    assert "stopped by a signal after step 7" in stopped.stderr
    ckpt = run / "train" / "checkpoints"
    assert fsdp.latest_checkpoint(ckpt) == ckpt / "step-000007"
    assert not RunDir(run).is_done("train", 0) and not (run / "train" / "final").exists()
    resumed = torchrun(run)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr and "step-000007 at step 7" in resumed.stderr
    expected, got = load_weights(finished / "train" / "final"), load_weights(run / "train" / "final")
    assert expected.keys() == got.keys()
    assert max((expected[k] - got[k]).abs().max().item() for k in expected) <= 1e-6
    assert [r["loss"] for r in metrics(run)] == pytest.approx([r["loss"] for r in metrics(finished)], abs=1e-6)


def two_nodes(run: Path) -> list[subprocess.CompletedProcess]:
    """The train stage as 2 nodes of 2 processes: one torchrun per node, meeting at a local port."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    clean = {k: v for k, v in os.environ.items() if k not in TORCH_ENV}
    clean.update(PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=2"]
    cmd += ["--master_addr=127.0.0.1", f"--master_port={port}"]
    nodes = [
        subprocess.Popen(
            [*cmd, f"--node_rank={i}", "-m", "svd_hpc.train", str(run)],
            env=clean,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    return [subprocess.CompletedProcess(n.args, n.wait(timeout=300), *n.communicate()) for n in nodes]


@pytest.mark.slow
@pytest.mark.readme_claim
def test_sharding_within_nodes_trains_as_sharding_over_all(tmp_path):
    """train.shard node (HSDP: 2 nodes × 2 processes, replicas across nodes) gives the losses of a 4-way shard."""
    hybrid = make_run(tmp_path / "node", steps=4, checkpoint_every=2, shard="node")
    flat = make_run(tmp_path / "all", steps=4, checkpoint_every=2)
    nodes = two_nodes(hybrid)
    for node in nodes:
        assert node.returncode == 0, node.stderr[-3000:]
    assert "each of 2 nodes holds a replica sharded over its 2 ranks" in nodes[0].stderr  # rank 0 logs
    done = torchrun(flat, procs=4)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [r["loss"] for r in metrics(hybrid)] == pytest.approx([r["loss"] for r in metrics(flat)], rel=1e-5)
    assert [r["grad_norm"] for r in metrics(hybrid)] == pytest.approx([r["grad_norm"] for r in metrics(flat)], rel=1e-4)
    weights = load_weights(hybrid / "train" / "final"), load_weights(flat / "train" / "final")
    assert max((weights[0][k] - weights[1][k]).abs().max().item() for k in weights[1]) <= 1e-5


def test_incomplete_checkpoints_do_not_count(tmp_path):
    for step, complete in ((5, True), (10, True), (15, False)):
        folder = fsdp.checkpoint_dir(tmp_path, step)
        folder.mkdir()
        if complete:
            (folder / ".metadata").write_bytes(b"")
    assert fsdp.latest_checkpoint(tmp_path) == tmp_path / "step-000010"
    assert fsdp.latest_checkpoint(tmp_path / "none") is None


def test_schedule_warms_up_then_decays_to_min_lr():
    factors = [train.lr_factor(s, steps=100, warmup=5, min_ratio=0.1) for s in range(100)]
    assert factors[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert all(a >= b for a, b in zip(factors[4:], factors[5:]))
    assert factors[-1] == pytest.approx(0.1, abs=1e-3) and factors[-1] >= 0.1


def test_single_process_run_and_overlong_report(tmp_path, monkeypatch):
    """Without WORLD_SIZE, run_task trains in-process as a world of one; truncations are reported."""
    for key in TORCH_ENV:
        monkeypatch.delenv(key, raising=False)
    run = make_run(tmp_path / "run", n=12, steps=3, global_batch=2, max_seq_len=40, overlong="truncate")
    run_once(run, "train", 0)
    summary = json.loads((run / "train" / "summary.json").read_text())
    assert summary["world_size"] == 1 and summary["data"]["overlong_truncated"] > 0
    assert RunDir(run).is_done("train", 0) and len(metrics(run)) == 3
    before = (run / "train" / "final" / "model.safetensors").stat().st_mtime_ns
    run_once(run, "train", 0)  # done: a no-op
    assert (run / "train" / "final" / "model.safetensors").stat().st_mtime_ns == before


def test_bad_input_fails_before_training(tmp_path, monkeypatch):
    for key in TORCH_ENV:
        monkeypatch.delenv(key, raising=False)
    from test_sft_data import write_sft

    run = make_run(tmp_path / "empty")
    write_sft(run / "merge" / "sft" / "train.parquet", [])
    with pytest.raises(ValueError, match="has no rows"):
        run_once(run, "train", 0)
    no_tokenizer = tmp_path / "weights"
    no_tokenizer.mkdir()
    for name in ("config.json", "model.safetensors"):
        (no_tokenizer / name).write_bytes((Path(models.resolve("builtin:tiny-qwen3")) / name).read_bytes())
    run = make_run(tmp_path / "run", model=str(no_tokenizer))
    with pytest.raises(ValueError, match="has no tokenizer"):
        run_once(run, "train", 0)
    assert not torch.distributed.is_initialized()


# On SLURM (2 nodes, the warning signal, checkpoint, requeue, same weights): tests/test_sbatch_templates.py


def test_activation_checkpointing_is_on_for_long_sequences_unless_set():
    assert train.activation_checkpointing(config.TrainConfig(max_seq_len=train.ACTIVATION_CHECKPOINTING_FROM))
    assert not train.activation_checkpointing(config.TrainConfig(max_seq_len=train.ACTIVATION_CHECKPOINTING_FROM - 1))
    assert not train.activation_checkpointing(config.TrainConfig(max_seq_len=32768, activation_checkpointing=False))
    assert train.activation_checkpointing(config.TrainConfig(max_seq_len=128, activation_checkpointing=True))


def test_activation_checkpointing_keeps_the_gradients(monkeypatch):
    """build_model at max_seq_len 128 (off) and 32768 (on by default): the same gradients."""
    for key in TORCH_ENV:
        monkeypatch.delenv(key, raising=False)
    model_dir = models.resolve("builtin:tiny-qwen3")
    data = sft_data.tokenize_conversations(sft_data.load_tokenizer(model_dir), sft_rows(6), 128, "drop")
    batch = sft_data.PackedStream(data, 128, seed=0, pad_id=0).micro_batch([0])
    d = fsdp.init_distributed()
    try:
        grads = []
        for max_seq_len, checkpointing in ((128, False), (32768, True)):
            model, _ = train.build_model(model_dir, config.TrainConfig(max_seq_len=max_seq_len), d)
            assert model.model.gradient_checkpointing == checkpointing
            train.loss_sum(model, batch, d.device).backward()
            grads.append({n: p.grad.full_tensor() for n, p in model.named_parameters()})
        assert grads[0].keys() == grads[1].keys()
        for name in grads[0]:
            torch.testing.assert_close(grads[0][name], grads[1][name], msg=name)
    finally:
        torch.distributed.destroy_process_group()


def test_a_non_finite_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    """Weights turned NaN after step 3 (as a blow-up would): step 4's loss is NaN; training stops
    there with the step named, saves nothing of it, and the step-2 checkpoint stays."""
    for key in TORCH_ENV:
        monkeypatch.delenv(key, raising=False)
    run = make_run(
        tmp_path / "run", n=12, steps=6, global_batch=2, max_seq_len=64, checkpoint_every=2, overlong="truncate"
    )
    real_step, done = train.train_step, []

    def step_then_poison(model, *args, **kwargs):
        result = real_step(model, *args, **kwargs)
        done.append(1)
        if len(done) == 3:
            with torch.no_grad():
                next(model.parameters()).to_local().fill_(float("nan"))
        return result

    monkeypatch.setattr(train, "train_step", step_then_poison)
    with pytest.raises(train.TrainingDiverged, match="diverged at step 4: loss nan") as err:
        run_once(run, "train", 0)
    ckpt = run / "train" / "checkpoints"
    assert "step-000002 is kept" in str(err.value)
    assert fsdp.latest_checkpoint(ckpt) == ckpt / "step-000002"
    assert not (ckpt / "step-000004").exists() and not (run / "train" / "final").exists()
    assert not RunDir(run).is_done("train", 0)
    assert [r["step"] for r in metrics(run)] == [1, 2, 3]
    assert not torch.distributed.is_initialized()


@pytest.mark.parametrize(("local_rank", "visible", "expected"), [(5, 1, 0), (5, 8, 5), (0, 1, 0)])
def test_set_device_where_each_task_sees_its_own_gpus(monkeypatch, local_rank, visible, expected):
    """srun --gpus-per-task=1: LOCAL_RANK counts 0..7 but the task sees one GPU, index 0."""
    selected = []

    def set_device(index):
        if index >= visible:
            raise RuntimeError("CUDA error: invalid device ordinal")  # what CUDA answers
        selected.append(index)

    class Stop(Exception):
        pass

    def init_process_group(backend, **kwargs):
        selected.append(backend)
        raise Stop

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: visible)
    monkeypatch.setattr(torch.cuda, "set_device", set_device)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.distributed, "init_process_group", init_process_group)
    monkeypatch.setenv("LOCAL_RANK", str(local_rank))
    monkeypatch.setenv("WORLD_SIZE", "8")
    with pytest.raises(Stop):
        fsdp.init_distributed()
    assert selected == [expected, "nccl"]


def test_set_device_refuses_a_rank_without_its_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("LOCAL_RANK", "5")
    with pytest.raises(ValueError, match="LOCAL_RANK=5 but this process sees 2 GPUs"):
        fsdp.init_distributed()


def assert_every_rank_stopped(result: subprocess.CompletedProcess, failing: int, message: str) -> None:
    """The failing rank raised `message`; the other rank raised it too, from the hand-off folder, or was
    ended by torchrun when the failing rank exited: which comes first is a race. That the other rank
    raises the same error is tested without the race in test_sft_data.py."""
    other = 1 - failing
    assert re.search(rf"\[rank{failing}\]: ValueError: .*{message}", result.stderr), result.stderr[-3000:]
    raised = re.search(rf"\[rank{other}\]: ValueError: .*{message}", result.stderr)
    ended = "Sending process" in result.stderr and "closing signal SIGTERM" in result.stderr
    assert raised or ended, result.stderr[-3000:]


def test_an_error_found_by_rank_0_stops_every_rank(tmp_path):
    """Rank 0 joins the ranks' parts and finds no sample left; its error reaches the other rank too."""
    run = make_run(tmp_path / "run", max_seq_len=16)
    result = torchrun(run)
    assert result.returncode != 0
    assert_every_rank_stopped(result, failing=0, message="none of 40 samples is left")
    assert not RunDir(run).is_done("train", 0)


# ----------------------------------------------------------------------------- tokenising across ranks

DRIVER = """
import os, sys, time
from functools import partial
from pathlib import Path
import huggingface_hub
from svd_hpc.inputs import models
from svd_hpc.rundir.layout import RunDir
from svd_hpc.runner.task import run_once
from svd_hpc.stages import train
from svd_hpc.train import fsdp, sft_data

run, rank = Path(sys.argv[1]), os.environ["RANK"]
encode = sft_data.encode_conversation


def counted_encode(*args, **kwargs):  # slow on the ranks in SLOW_RANKS
    with open(run / f"encoded.rank-{rank}", "a") as handle:
        handle.write("row\\n")
    if rank in os.environ.get("SLOW_RANKS", "").split(","):
        time.sleep(float(os.environ["SLOW_SECONDS"]))
    return encode(*args, **kwargs)


def snapshot_download(repo_id, revision=None, **kwargs):  # the hub, recorded
    with open(run / "hub_calls", "a") as handle:
        handle.write(f"rank {rank}: {repo_id}@{revision}\\n")
    return models.resolve("builtin:tiny-qwen3")


sft_data.encode_conversation = counted_encode
huggingface_hub.snapshot_download = snapshot_download
if "GROUP_TIMEOUT_SECONDS" in os.environ:
    timeout = float(os.environ["GROUP_TIMEOUT_SECONDS"]) / 60
    fsdp.init_distributed = partial(fsdp.init_distributed, timeout_minutes=timeout)
if sys.argv[2] == "train":
    run_once(run, "train", 0)
else:
    d = fsdp.init_distributed()
    sft = run / "merge" / "sft" / "train.parquet"
    model_dir = train.prepare_data(RunDir(run).load_config(), d, sft, run / "train").model_dir
    print(f"rank {rank} model_dir {model_dir}", flush=True)
"""


def torchrun_driver(run: Path, what: str, **env) -> subprocess.CompletedProcess:
    script = run / "driver.py"
    script.write_text(DRIVER)
    clean = {k: v for k, v in os.environ.items() if k not in TORCH_ENV}
    clean.update(PYTHONPATH=str(REPO), **env)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(script),
        str(run),
        what,
    ]
    return subprocess.run(cmd, env=clean, capture_output=True, text=True, timeout=300)


def encoded(run: Path, rank: int) -> int:
    path = run / f"encoded.rank-{rank}"
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_two_ranks_tokenize_the_single_process_set(finished):
    """The 2-process run's cache holds the one-pass tokens, labels, offsets and key of the whole set."""
    cfg = RunDir(finished).load_config()
    model_dir = models.resolve("builtin:tiny-qwen3")
    template_kwargs = {"enable_thinking": cfg.model.thinking != "off"}
    expected = sft_data.tokenize_conversations(
        sft_data.load_tokenizer(model_dir), sft_rows(40), cfg.train.max_seq_len, cfg.train.overlong, **template_kwargs
    )
    got = sft_cache.load_cache(finished / "train" / "data")
    for name in ("input_ids", "labels", "offsets"):
        assert np.array_equal(getattr(got, name), getattr(expected, name)), name
    assert got.stats == expected.stats
    dataset = finished / "merge" / "sft" / "train.parquet"
    key = sft_cache.dataset_key(
        dataset,
        model_ref=model_dir,
        max_seq_len=cfg.train.max_seq_len,
        overlong=cfg.train.overlong,
        template_kwargs=template_kwargs,
    )
    assert sft_cache.cache_key(finished / "train" / "data") == key
    assert not (finished / "train" / ".handoff").exists()  # the hand-off files are cleaned up


@pytest.mark.slow  # ~25 s of torchrun; keeps the default run under 15 minutes
@pytest.mark.readme_claim  # "What would have stopped a CUDA run": slow tokenisation past an 8 s group timeout
def test_tokenising_longer_than_the_group_timeout_still_trains(tmp_path):
    """Process group timeout 8 s, 40 rows at 0.5 s each: no rank may wait in a collective meanwhile."""
    run = make_run(tmp_path / "run", steps=2)
    result = torchrun_driver(run, "train", GROUP_TIMEOUT_SECONDS="8", SLOW_RANKS="0,1", SLOW_SECONDS="0.5")
    assert result.returncode == 0, result.stderr[-3000:]
    assert [r["step"] for r in metrics(run)] == [1, 2]
    assert encoded(run, 0) == encoded(run, 1) == 20  # each rank tokenised its half


def test_a_bad_row_on_one_rank_stops_every_rank_at_once(tmp_path):
    """Rank 1's half has a row without an assistant turn; rank 0 (1 s per row) stops within seconds."""
    run = make_run(tmp_path / "run")
    rows = sft_rows(40)
    rows[30] = rows[30][:1]  # the user turn only
    from test_sft_data import write_sft

    write_sft(run / "merge" / "sft" / "train.parquet", rows)
    result = torchrun_driver(run, "prepare", SLOW_RANKS="0", SLOW_SECONDS="1")
    assert result.returncode != 0
    assert_every_rank_stopped(result, failing=1, message="row 30 has no assistant message")
    assert 0 < encoded(run, 0) < 10 and encoded(run, 1) == 0


def test_one_hub_lookup_per_job(tmp_path):
    """A hub model id: rank 0 calls snapshot_download once; rank 1 uses the folder it found."""
    run = make_run(tmp_path / "run", model="example-org/tiny-model")
    result = torchrun_driver(run, "prepare")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (run / "hub_calls").read_text().splitlines() == ["rank 0: example-org/tiny-model@None"]
    tiny = models.resolve("builtin:tiny-qwen3")
    assert {line for line in result.stdout.splitlines() if "model_dir" in line} == {
        f"rank {r} model_dir {tiny}" for r in (0, 1)
    }
