"""The launch's memory check: estimates from config.json, the tracker's figures, and what stops a launch."""

from __future__ import annotations

import json
import sys

import pytest
import yaml

from svd_hpc.forecast import memory_plan
from tests.helpers import REPO, run_launch, write_config

sys.path.insert(0, str(REPO / "benchmarks"))
import bench_memory  # noqa: E402

GPU_PROFILE = {"name": "gpus", "partition": "gpu", "gpus_per_node": 4, "gpu_memory_gib": 80}


def test_estimate_is_within_ten_percent_of_the_fsdp2_tracker():
    """The train stage's own FSDP2 wrapping and step, under fake tensors, at the 4B model's layer width."""
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    sdpa_mask = ALL_MASK_ATTENTION_FUNCTIONS["sdpa"]
    small = {**bench_memory.QWEN3_4B, "num_hidden_layers": 2}
    shape = {"seq_len": 4096, "micro_batch": 1, "world_size": 8, "shard_size": 8}
    for ac in (True, False):
        peak = bench_memory.tracked_peak(small, **shape, ac=ac)["Total"]
        estimate = memory_plan.train_memory(small, **shape, activation_checkpointing=ac)
        assert estimate.total / peak == pytest.approx(1.0, abs=0.1), ac
    # the tracker runs without transformers' sdpa mask; later tests in this process pack samples with it
    assert ALL_MASK_ATTENTION_FUNCTIONS["sdpa"] is sdpa_mask


def test_sharding_within_a_node_divides_the_state_by_its_gpus():
    shape = {"seq_len": 32768, "micro_batch": 1, "world_size": 16, "activation_checkpointing": True}
    every = memory_plan.train_memory(bench_memory.QWEN3_8B, shard_size=16, **shape)
    node = memory_plan.train_memory(bench_memory.QWEN3_8B, shard_size=4, **shape)
    assert node.parameters == pytest.approx(4 * every.parameters, rel=1e-6)
    assert node.optimizer == pytest.approx(4 * every.optimizer, rel=1e-6)
    assert node.activations == every.activations and node.total_gib > every.total_gib


def test_vllm_fit_reads_the_model_shape():
    fit = memory_plan.vllm_fit(
        bench_memory.QWEN3_8B, tensor_parallel_size=2, max_model_len=40960, gpu_memory_utilization=0.9, gpu_gib=80
    )
    # 8.19e9 bf16 parameters over 2 GPUs; 36 layers × 4 of 8 KV heads × 128 × 2 (K, V) × 2 bytes per token
    assert fit.weights_gib == pytest.approx(8.19e9 * 2 / 2 / 2**30, rel=0.01)
    assert fit.kv_per_sequence_gib == pytest.approx(36 * 4 * 128 * 2 * 2 * 40960 / 2**30)
    assert fit.sequences == int(fit.kv_room_gib // fit.kv_per_sequence_gib) > 1


def gpu_config(tmp_path, model: dict, profile: dict = GPU_PROFILE, **extra):
    folder = tmp_path / "model"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(model))
    (tmp_path / "gpus.yaml").write_text(yaml.safe_dump(profile))
    extra = {"model.path": str(folder), "train.global_batch": 64, **extra}
    return write_config(tmp_path, 2, cluster=str(tmp_path / "gpus.yaml"), **extra)


def test_dry_run_prints_the_estimates(tmp_path):
    path = gpu_config(tmp_path, bench_memory.QWEN3_8B, **{"train.max_seq_len": 32768, "resources.train.nodes": 4})
    proc = run_launch(["--config", str(path), "--dry-run"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "train: 27.8 GiB (35%) at the layer backward" in proc.stdout
    assert "16 GPUs" in proc.stdout and "weights 15.3 GiB at tensor_parallel_size 1" in proc.stdout


DEEP = {**bench_memory.QWEN3_8B, "num_hidden_layers": 144}  # 29B parameters: their state outgrows 4 GPUs


@pytest.mark.parametrize(
    ("model", "extra", "knob"),
    [
        (
            bench_memory.QWEN3_8B,
            {"train.activation_checkpointing": False, "train.max_seq_len": 8192},
            "train.activation_checkpointing: true",
        ),
        (DEEP, {"train.activation_checkpointing": True, "train.max_seq_len": 4096}, "resources.train.nodes: 2"),
        (bench_memory.QWEN3_8B, {"model.max_model_len": 400000}, "raise model.tensor_parallel_size to 2"),
    ],
)
def test_a_plan_that_cannot_fit_stops_with_the_knob_and_writes_nothing(tmp_path, model, extra, knob):
    path = gpu_config(tmp_path, model, **extra)
    proc = run_launch(["--config", str(path)])
    assert proc.returncode == 2
    error = proc.stderr.strip().splitlines()[-1]
    assert error.startswith("error: ") and knob in error and "GPU" in error
    assert not (tmp_path / "runs").exists()


def test_without_gpu_memory_the_estimate_is_printed_and_nothing_decided(tmp_path):
    profile = {k: v for k, v in GPU_PROFILE.items() if k != "gpu_memory_gib"}
    path = gpu_config(tmp_path, bench_memory.QWEN3_8B, profile, **{"train.activation_checkpointing": False})
    proc = run_launch(["--config", str(path), "--dry-run"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "estimates only" in proc.stdout and "train: " in proc.stdout


def test_cpu_profiles_skip_the_check(tmp_path):
    path = write_config(tmp_path, 2)
    proc = run_launch(["--config", str(path), "--dry-run"])
    assert proc.returncode == 0 and "memory per GPU" not in proc.stdout


def test_a_pilot_that_cannot_fit_stops_before_it_runs(tmp_path):
    path = gpu_config(tmp_path, bench_memory.QWEN3_8B, **{"model.max_model_len": 400000})
    proc = run_launch(["--config", str(path), "--pilot", "2"])
    assert proc.returncode == 2 and "model.max_model_len 400000" in proc.stderr
    assert not (tmp_path / "runs").exists()


def test_an_unreachable_hub_skips_the_estimate_at_once_without_the_clients_retries(monkeypatch, tmp_path):
    """Offline, the hub client retries a HEAD request five times with backoff (~25 s of warnings)."""
    import huggingface_hub

    from svd_hpc.forecast import memory_check
    from svd_hpc.inputs import staging

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))  # nothing cached
    monkeypatch.setattr(staging, "hub_unreachable", lambda: "huggingface.co is unreachable (test)")

    def never(*args, **kwargs):
        raise AssertionError("the hub client was asked although the hub is unreachable")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", never)
    with pytest.raises(
        OSError, match=r"Qwen/Qwen3-8B's config.json is not in the HF cache and huggingface.co is unreachable"
    ):
        memory_check.model_config("Qwen/Qwen3-8B", None)
