"""FSDP2 plumbing for the train stage, as plain functions: process group, sharding, loading,
checkpoints and the final export.

The model is built on the meta device, sharded with `fully_shard` (each decoder layer, then the
root), and only then materialised: every rank allocates its own shard and reads just those rows
from the safetensors files, so no rank ever holds a full copy of an 8B model.

Checkpoints are torch.distributed.checkpoint folders `step-NNNNNN/` holding model and optimiser
shards plus one small `extra-rank-NNNNN.pt` per rank (scheduler, data position, RNG). DCP writes
`.metadata` last, after every rank's data is on disk, so a folder counts as complete only once
that file exists; resume takes the newest complete one.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import os
import re
import shutil
import types
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method
from torch.distributed.tensor import DTensor, Shard

from ..rundir.atomic import atomic_path

log = logging.getLogger("svd_hpc")

CHECKPOINT_RE = re.compile(r"step-(\d{6,})$")
EXPORT_SHARD_BYTES = 4 << 30  # safetensors file size of the final export, as HF does
# Attention implementations that turn position-id restarts into a block-diagonal mask
# (transformers' masking_utils for sdpa/eager/flex, varlen kernels for flash attention).
PACKING_SAFE_ATTENTION = ("sdpa", "eager", "flash_attention_2", "flash_attention_3", "flex_attention")


@dataclass
class Dist:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    mesh: DeviceMesh


def init_distributed(timeout_minutes: int = 30) -> Dist:
    """Join the process group from torchrun/SLURM env vars (RANK, WORLD_SIZE, ...), else a world of 1."""
    cuda = torch.cuda.is_available()
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = cuda_device(local_rank) if cuda else torch.device("cpu")
    if not dist.is_initialized():
        backend = "nccl" if cuda else "gloo"
        # long timeout: rank 0 may tokenize a large dataset while the others wait at a barrier
        timeout = datetime.timedelta(minutes=timeout_minutes)
        if "WORLD_SIZE" in os.environ:
            dist.init_process_group(backend, timeout=timeout)
        else:
            # a world of one still runs through FSDP2, so the single-process path is the same code
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout)
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    return Dist(dist.get_rank(), dist.get_world_size(), local_rank, device, mesh)


def training_mesh(device_type: str, world_size: int, shard_size: int) -> DeviceMesh:
    """FSDP2's mesh: 1-D over every rank, or for shard_size < world_size the 2-D ("replicate", "shard")
    mesh of hybrid sharding (HSDP), where each run of shard_size consecutive ranks shards the
    model and the runs hold replicas."""
    if shard_size >= world_size:
        return init_device_mesh(device_type, (world_size,))
    if world_size % shard_size:
        raise ValueError(
            f"train.shard: node needs the same number of training processes on every node; {world_size} "
            f"processes do not split into nodes of {shard_size}. Use train.shard: all."
        )
    return init_device_mesh(device_type, (world_size // shard_size, shard_size), mesh_dim_names=("replicate", "shard"))


def shard_mesh(d: Dist, shard: str) -> DeviceMesh:
    """The mesh train.shard asks for: `all` shards over every rank, `node` within each node.

    torchrun and srun number a node's ranks consecutively and set LOCAL_WORLD_SIZE (task.py does
    for srun), so a run of LOCAL_WORLD_SIZE ranks is one node: its all-gathers and
    reduce-scatters stay on the node's links, and only one gradient all-reduce per step crosses nodes.
    """
    size = int(os.environ.get("LOCAL_WORLD_SIZE", d.world_size)) if shard == "node" else d.world_size
    if size >= d.world_size:
        return d.mesh
    log.info(f"hybrid sharding: each of {d.world_size // size} nodes holds a replica sharded over its {size} ranks")
    return training_mesh(d.device.type, d.world_size, size)


def cuda_device(local_rank: int) -> torch.device:
    """This process's GPU, made current: its local rank among the node's GPUs, or the only one it sees.

    srun --gpus-per-task=1 / --gpu-bind=single:1 gives each task one visible GPU (index 0)
    while LOCAL_RANK still counts 0..7; set_device(LOCAL_RANK) would then fail.
    """
    count = torch.cuda.device_count()
    if local_rank < count:
        index = local_rank
    elif count == 1:
        index = 0
    else:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "unset")
        raise ValueError(
            f"LOCAL_RANK={local_rank} but this process sees {count} GPUs (CUDA_VISIBLE_DEVICES={visible}); "
            "give each training process one GPU or all of the node's GPUs."
        )
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def attention_implementation(device: torch.device) -> str:
    """An attention that keeps packed samples apart without an L×L mask where training runs.

    GPU: flash-attention's varlen kernels when flash_attn is installed, else torch's own
    flex_attention, to which transformers hands a block-sparse BlockMask built from the
    position-id restarts (masking_utils.flex_attention_mask). CPU: sdpa with transformers' dense
    block-diagonal mask, as flex_attention has no backward on CPU (torch's
    nn/attention/flex_attention.py, _validate_device) and CPU runs are small.
    """
    if device.type != "cuda":
        return "sdpa"
    try:
        import flash_attn  # noqa: F401

        return "flash_attention_2"
    except ImportError:
        return "flex_attention"


def build_meta_model(model_dir: str, attn_implementation: str):
    """The model's modules with parameters on the meta device (no memory), buffers real on CPU."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir)
    # packed training needs use_cache off: with a cache transformers skips the packed-sequence mask
    config.use_cache = False
    # buffers stay real: rotary inv_freq is not in the checkpoint and to_empty would lose it
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation, dtype=torch.float32)
    model.tie_weights()  # init_empty_weights leaves tied embeddings untied
    if model.config._attn_implementation not in PACKING_SAFE_ATTENTION:
        raise ValueError(
            f"attention '{model.config._attn_implementation}' of {model_dir} is not known to respect packed "
            f"sequence boundaries; use one of {', '.join(PACKING_SAFE_ATTENTION)}."
        )
    return model


def decoder_layers(model) -> list[torch.nn.Module]:
    """The transformer blocks of a causal LM (Qwen3, Llama and the like: model.model.layers)."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    if layers is None:
        raise ValueError(f"{type(model).__name__} has no model.layers; train supports decoder-only HF causal LMs.")
    return list(layers)


def apply_fsdp(model, mesh: DeviceMesh, bf16: bool, activation_checkpointing: bool = False) -> None:
    """Shard each decoder layer, then the root; bf16 compute with fp32 gradient reduction if `bf16`."""
    if activation_checkpointing:
        # transformers' per-layer checkpointing keeps parameter names (unlike checkpoint_wrapper)
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    mp = (
        MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else MixedPrecisionPolicy()
    )
    layers = decoder_layers(model)
    for i, layer in enumerate(layers):
        # the last layer's parameters are needed again at once by backward: keep them gathered
        fully_shard(layer, mesh=mesh, mp_policy=mp, reshard_after_forward=i < len(layers) - 1)
    fully_shard(model, mesh=mesh, mp_policy=mp)


def add_root_forward(model, name: str, fn) -> None:
    """Make `model.<name>(...)` call `fn(model, ...)` as a forward of the FSDP root.

    FSDP2 gathers a module's parameters in hooks around its forward call. The root owns what the
    decoder layers do not (embeddings, final norm, lm_head, tied in small Qwen3 models); code that
    calls the decoder and lm_head itself must run inside such a call, or it would see the root's
    parameters sharded and its gradients would never be reduced (torch's _fully_shard.py,
    register_fsdp_forward_method).
    """
    setattr(model, name, types.MethodType(fn, model))
    register_fsdp_forward_method(model, name)


def _local_rows(param: DTensor) -> tuple[int, int, int]:
    """(dim, start, stop) of the global tensor that this rank's Shard(dim) slice holds.

    HSDP parameters are (Replicate(), Shard(dim)): the rows follow the rank on the shard mesh dim.
    """
    sharded = [(mesh_dim, p) for mesh_dim, p in enumerate(param.placements) if isinstance(p, Shard)]
    if len(sharded) != 1:
        raise ValueError(f"expected one Shard placement, got {param.placements}")
    mesh_dim, placement = sharded[0]
    dim = placement.dim
    chunk = math.ceil(param.shape[dim] / param.device_mesh.size(mesh_dim)) if param.shape[dim] else 0
    start = min(param.device_mesh.get_local_rank(mesh_dim) * chunk, param.shape[dim])
    return dim, start, start + param.to_local().shape[dim]


def materialize(model, model_dir: str, device: torch.device) -> None:
    """Allocate this rank's shards on `device` and fill them with its rows of the safetensors files."""
    from safetensors import safe_open

    buffers = {name: buf.detach().clone() for name, buf in model.named_buffers()}
    model.to_empty(device=device)
    with torch.no_grad():
        for name, buf in model.named_buffers():
            buf.copy_(buffers[name])
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise ValueError(
            f"model directory {model_dir} has no *.safetensors weights; save the model with save_pretrained."
        )
    where = {}
    for file in files:
        with safe_open(file, "pt") as handle:
            where.update({key: file for key in handle.keys()})
    wanted = dict(model.named_parameters())  # shared (tied) parameters appear once
    wanted.update({n: b for n, b in model.named_buffers() if n in where})
    missing = [name for name in wanted if name not in where]
    if missing:
        raise ValueError(f"{model_dir}: the weights lack {len(missing)} tensors of the model, e.g. {missing[:3]}.")
    with torch.no_grad():
        for file in files:
            with safe_open(file, "pt") as handle:
                for name in handle.keys():
                    if name not in wanted:
                        continue
                    target = wanted[name]
                    view = handle.get_slice(name)
                    if isinstance(target, DTensor):
                        dim, start, stop = _local_rows(target)
                        index = tuple(slice(start, stop) if d == dim else slice(None) for d in range(target.ndim))
                        target.to_local().copy_(view[index])
                    else:
                        target.copy_(view[:])


# ----------------------------------------------------------------------------- checkpoints


def checkpoint_dir(root: Path, step: int) -> Path:
    return root / f"step-{step:06d}"


def is_complete(path: Path) -> bool:
    return (path / ".metadata").is_file()


def latest_checkpoint(root: Path) -> Path | None:
    """The complete checkpoint with the highest step, or None."""
    found = []
    if root.is_dir():
        for path in root.iterdir():
            match = CHECKPOINT_RE.match(path.name)
            if match and is_complete(path):
                found.append((int(match.group(1)), path))
    return max(found)[1] if found else None


def rng_state() -> dict:
    import random

    import numpy as np

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    import random

    import numpy as np

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save_checkpoint(path: Path, model, optimizer, *, extra: dict, rank: int, keep: int) -> None:
    """Save model + optimiser shards (DCP) and this rank's `extra` into `path`; prune old ones."""
    if rank == 0 and path.exists():
        shutil.rmtree(path)  # an incomplete folder left by a killed save
    dist.barrier()
    path.mkdir(parents=True, exist_ok=True)
    # extras first: DCP's .metadata, written last, then vouches for them too
    with atomic_path(path / f"extra-rank-{rank:05d}.pt") as tmp:
        torch.save({**extra, "rng": rng_state(), "world_size": dist.get_world_size()}, tmp)
    state = {"model": get_model_state_dict(model), "optimizer": get_optimizer_state_dict(model, optimizer)}
    dcp.save(state, checkpoint_id=str(path))
    dist.barrier()
    if rank == 0:
        folders = sorted(p for p in path.parent.iterdir() if CHECKPOINT_RE.match(p.name))
        complete = [p for p in folders if is_complete(p)]
        # older complete ones beyond `keep`, and leftovers of saves that were killed midway
        for old in complete[: max(0, len(complete) - keep)] + [p for p in folders if not is_complete(p)]:
            shutil.rmtree(old, ignore_errors=True)
    log.info(f"checkpoint saved: {path}")


def load_checkpoint(path: Path, model, optimizer, rank: int) -> dict:
    """Load model + optimiser shards from `path` (any world size); return this rank's extras."""
    state = {"model": get_model_state_dict(model), "optimizer": get_optimizer_state_dict(model, optimizer)}
    dcp.load(state, checkpoint_id=str(path))
    set_model_state_dict(model, state["model"])
    set_optimizer_state_dict(model, optimizer, state["optimizer"])
    own = path / f"extra-rank-{rank:05d}.pt"
    extra = torch.load(own if own.is_file() else path / "extra-rank-00000.pt", weights_only=False)
    if extra["world_size"] == dist.get_world_size():
        set_rng_state(extra["rng"])
    else:
        log.warning(f"checkpoint {path} was written by {extra['world_size']} ranks; RNG state not restored")
    return extra


# ----------------------------------------------------------------------------- export


def export_pretrained(model, out_dir: Path, *, model_dir: str, tokenizer, dtype: torch.dtype, rank: int) -> None:
    """Write a save_pretrained folder (safetensors + config + tokenizer) from the sharded model.

    Every rank takes part in gathering one tensor at a time; rank 0 holds at most one
    safetensors file's worth (EXPORT_SHARD_BYTES) of full tensors.
    """
    from safetensors.torch import save_file

    tensors = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        if any(tensor is seen for seen in tensors.values()):
            continue  # tied weights: saved once, under the first name (as save_pretrained does)
        tensors[name] = tensor
    if rank != 0:
        for tensor in tensors.values():
            if isinstance(tensor, DTensor):
                tensor.full_tensor()
        dist.barrier()
        return
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        files: list[tuple[str, dict]] = []
        batch, size = {}, 0
        for name, tensor in tensors.items():
            full = tensor.full_tensor() if isinstance(tensor, DTensor) else tensor
            full = full.detach().to(device="cpu", dtype=dtype if full.is_floating_point() else full.dtype)
            batch[name] = full.contiguous()
            size += full.numel() * full.element_size()
            if size >= EXPORT_SHARD_BYTES:
                files.append(_write_part(tmp, len(files), batch, save_file))
                batch, size = {}, 0
        if batch or not files:
            files.append(_write_part(tmp, len(files), batch, save_file))
        _name_parts(tmp, files)
        _save_config(model, tmp, model_dir, dtype)
        tokenizer.save_pretrained(tmp)
    dist.barrier()


def _write_part(folder: Path, index: int, batch: dict, save_file) -> tuple[str, dict]:
    name = f"part-{index:05d}.safetensors"
    save_file(batch, folder / name, metadata={"format": "pt"})
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder / name, 0o666 & ~umask)  # safetensors creates 0600 files; others must read the model
    return name, {key: t.numel() * t.element_size() for key, t in batch.items()}


def _name_parts(folder: Path, files: list[tuple[str, dict]]) -> None:
    """HF names: model.safetensors, or model-0000i-of-0000N.safetensors plus the index."""
    if len(files) == 1:
        os.replace(folder / files[0][0], folder / "model.safetensors")
        return
    weight_map, total = {}, 0
    for i, (name, sizes) in enumerate(files, start=1):
        final = f"model-{i:05d}-of-{len(files):05d}.safetensors"
        os.replace(folder / name, folder / final)
        weight_map.update({key: final for key in sizes})
        total += sum(sizes.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def _save_config(model, folder: Path, model_dir: str, dtype: torch.dtype) -> None:
    from transformers import GenerationConfig

    config = model.config
    config.use_cache = True  # the training-time switch-off must not leak into inference
    config.dtype = dtype
    config.save_pretrained(folder)
    try:
        GenerationConfig.from_pretrained(model_dir).save_pretrained(folder)
    except OSError:
        pass  # the base model had no generation_config.json; transformers derives one
