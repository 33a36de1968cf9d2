"""The launch's memory check: per GPU, what train and the vLLM stages need, against the cluster profile's GPUs.

Run by launch, prepare, --dry-run, --pilot and smoke once hub inputs are staged, before anything
is written or submitted. It reads each model's config.json (the staged snapshot of a hub id, a
local folder, a built-in model's folder), prints the estimates of memory_plan.py, and raises
ConfigError (exit 2) naming the knob that would fit when a stage cannot fit in the profile's
gpu_memory_gib; above NEAR_LIMIT of it, it warns. Profiles without GPUs skip it; without
gpu_memory_gib it prints and decides nothing.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path

from ..config import ConfigError, RunConfig, train_procs_per_node
from ..inputs import models, staging
from ..runner.plan import resolve_resources
from . import memory_plan

log = logging.getLogger("svd_hpc")

NEAR_LIMIT = 0.9  # of a GPU's memory: allocator fragmentation and CUDA's own use take a few GiB
_reported: set[str] = set()  # smoke prepares twice in one process; say it once


@dataclass(frozen=True)
class TrainLayout:
    """How train spreads over GPUs: processes in all, processes a model is sharded over, checkpointing."""

    world_size: int
    shard_size: int
    activation_checkpointing: bool


def train_layout(cfg: RunConfig) -> TrainLayout:
    from ..train.model import activation_checkpointing

    per_node = train_procs_per_node(cfg)
    world = cfg.stage_resources("train").nodes * per_node
    shard = per_node if cfg.train.shard == "node" else world
    return TrainLayout(world, shard, activation_checkpointing(cfg.train))


def model_config(path: str, revision: str | None) -> dict:
    """The config.json of a model reference: the staged hub snapshot, a local folder or a built-in model's."""
    if models.is_hub_id(path):
        from huggingface_hub import hf_hub_download, try_to_load_from_cache

        cached = try_to_load_from_cache(path, "config.json", revision=revision)
        if not isinstance(cached, str):
            unreachable = staging.hub_unreachable()  # one quick probe, not the hub client's retries with backoff
            if unreachable:
                raise OSError(f"{path}'s config.json is not in the HF cache and {unreachable}")
        # a dry run pins without downloading: the config alone is a few kB
        file = cached if isinstance(cached, str) else hf_hub_download(path, "config.json", revision=revision)
    else:
        file = str(Path(models.resolve(path)) / "config.json")
    return json.loads(Path(file).read_text())


def check(cfg: RunConfig, console=None) -> None:
    """Print the per-GPU memory of `cfg`'s train and vLLM stages; ConfigError if one cannot fit."""
    gpu_gib = cfg.profile.gpu_memory_gib
    train_gpus = cfg.train.enabled and resolve_resources(cfg, "train")["gpus_per_node"]
    vllm_gpus = resolve_resources(cfg, "generate")["gpus_per_node"]
    if not train_gpus and not vllm_gpus:
        return  # CPU-only: nothing to fit
    lines, problems, warnings = [f"memory per GPU ({_of(gpu_gib)}):"], [], []
    try:
        base = model_config(cfg.model.path, cfg.model.revision)
        trained = model_config(*models.train_base(cfg)) if train_gpus else base
    except Exception as err:  # noqa: BLE001  a hub or file error only skips the estimate
        _say(console, f"memory check skipped: no config.json of the model to read ({type(err).__name__}: {err})")
        return
    if train_gpus:
        estimate, layout = train_estimate(cfg, trained)
        lines.append(_train_line(cfg, estimate, layout, gpu_gib))
        if gpu_gib and estimate.total_gib > gpu_gib:
            problems.append(_train_problem(cfg, trained, estimate, gpu_gib))
        elif gpu_gib and estimate.total_gib > NEAR_LIMIT * gpu_gib:
            warnings.append(f"train's estimated peak {estimate.total_gib:.1f} GiB is near the GPU's {gpu_gib:g} GiB")
    if vllm_gpus:
        fit = vllm_estimate(cfg, base, gpu_gib or 0)
        lines.append(_vllm_line(cfg, fit, gpu_gib))
        if gpu_gib and not fit.fits:
            problems.append(_vllm_problem(cfg, fit, gpu_gib))
    _say(console, "\n".join(lines))
    for warning in warnings:
        _say(console, f"warning: {warning}; it may run out of memory (see README, pre-flight memory check).")
    if problems:
        raise ConfigError(problems[0])


def train_estimate(cfg: RunConfig, model: dict) -> tuple[memory_plan.TrainMemory, TrainLayout]:
    layout = train_layout(cfg)
    estimate = memory_plan.train_memory(
        model,
        seq_len=cfg.train.max_seq_len,
        micro_batch=cfg.train.micro_batch,
        world_size=layout.world_size,
        shard_size=layout.shard_size,
        activation_checkpointing=layout.activation_checkpointing,
    )
    return estimate, layout


def vllm_estimate(cfg: RunConfig, model: dict, gpu_gib: float) -> memory_plan.VllmFit:
    m = cfg.model
    return memory_plan.vllm_fit(
        model,
        tensor_parallel_size=m.tensor_parallel_size,
        max_model_len=m.max_model_len,
        gpu_memory_utilization=m.gpu_memory_utilization,
        gpu_gib=gpu_gib,
        dtype_bytes=4 if m.dtype in ("float32", "float") else 2,
    )


def _of(gpu_gib: float | None) -> str:
    return f"GPUs of {gpu_gib:g} GiB" if gpu_gib else "the profile sets no gpu_memory_gib: estimates only"


def _train_line(cfg: RunConfig, e: memory_plan.TrainMemory, layout: TrainLayout, gpu_gib: float | None) -> str:
    g = memory_plan.GIB
    share = f" ({e.total_gib / gpu_gib:.0%})" if gpu_gib else ""
    return (
        f"  train: {e.total_gib:.1f} GiB{share} at the {e.phase}: parameters {e.parameters / g:.1f}, gradients "
        f"{e.gradients / g:.1f}, AdamW {e.optimizer / g:.1f} (sharded over {layout.shard_size} of "
        f"{layout.world_size} GPUs), gathered {e.gathered / g:.1f}, activations {e.activations / g:.1f} "
        f"(checkpointing {'on' if layout.activation_checkpointing else 'off'}), loss head {e.loss_head / g:.1f}; "
        f"max_seq_len {cfg.train.max_seq_len} × micro_batch {cfg.train.micro_batch}"
    )


def _vllm_line(cfg: RunConfig, fit: memory_plan.VllmFit, gpu_gib: float | None) -> str:
    m = cfg.model
    room = (
        f"KV cache room {fit.kv_room_gib:.1f} GiB at gpu_memory_utilization {m.gpu_memory_utilization}: "
        f"{fit.sequences} sequences of max_model_len {m.max_model_len} at once"
        if gpu_gib
        else f"KV cache {fit.kv_per_sequence_gib:.2f} GiB per sequence of max_model_len {m.max_model_len}"
    )
    weights = f"weights {fit.weights_gib:.1f} GiB at tensor_parallel_size {m.tensor_parallel_size}"
    return f"  generate, verify, eval (vLLM): {weights}; {room}"


def _train_problem(cfg: RunConfig, model: dict, e: memory_plan.TrainMemory, gpu_gib: float) -> str:
    """One sentence: the estimate, and the first knob whose change brings it under the GPU's memory."""
    t, res = cfg.train, cfg.stage_resources("train")
    tries = []
    if not train_layout(cfg).activation_checkpointing:
        tries.append(("train.activation_checkpointing: true", replace(t, activation_checkpointing=True), res))
    if t.micro_batch > 1:
        tries.append(("train.micro_batch: 1", replace(t, micro_batch=1), res))
    if t.shard == "node" and res.nodes > 1:
        tries.append(("train.shard: all", replace(t, shard="all"), res))
    tries += [(f"resources.train.nodes: {n}", t, replace(res, nodes=n)) for n in (res.nodes * 2, res.nodes * 4)]
    tries += [
        (f"train.max_seq_len: {t.max_seq_len // d}", replace(t, max_seq_len=t.max_seq_len // d), res) for d in (2, 4)
    ]
    fix = "a smaller model or GPUs with more memory"
    for knob, train, resources in tries:
        changed = replace(cfg, train=train, resources={**cfg.resources, "train": resources})
        if train_estimate(changed, model)[0].total_gib <= NEAR_LIMIT * gpu_gib:
            fix = knob
            break
    return (
        f"train needs about {e.total_gib:.1f} GiB per GPU, more than the {gpu_gib:g} GiB of cluster profile "
        f"'{cfg.profile.name}' (gpu_memory_gib); set {fix} to fit."
    )


def _vllm_problem(cfg: RunConfig, fit: memory_plan.VllmFit, gpu_gib: float) -> str:
    m = cfg.model
    return (
        f"vLLM has room for {max(0.0, fit.kv_room_gib):.1f} GiB of KV cache per GPU but one sequence of "
        f"model.max_model_len {m.max_model_len} needs {fit.kv_per_sequence_gib:.1f} GiB (weights {fit.weights_gib:.1f} "
        f"GiB of the {gpu_gib:g} GiB GPU at gpu_memory_utilization {m.gpu_memory_utilization}); raise "
        f"model.tensor_parallel_size to {m.tensor_parallel_size * 2} or lower model.max_model_len."
    )


def _say(console, text: str) -> None:
    if text in _reported:
        return
    _reported.add(text)
    if console is None:
        print(text, flush=True)
    else:
        console.print(text, markup=False, highlight=False)
