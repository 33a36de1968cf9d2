"""The model and optimiser of the train stage: sharded, loaded shard by shard, with its LR schedule."""

from __future__ import annotations

import math
from functools import partial

import torch

from . import fsdp
from .step import LOSS_METHOD, causal_lm_loss_sum

# A decoder layer keeps ~34 × hidden_size bytes of bf16 activations per token for backward
# (Korthikanti et al. 2022, without the attention scores flash/flex never store): from 4,096
# tokens that is >= 4 GB per sequence for Qwen3-0.6B (1,024 × 28 layers) and ~20 GB for Qwen3-8B
# (4,096 × 36), while checkpointing keeps only each layer's input (2 × hidden_size bytes).
ACTIVATION_CHECKPOINTING_FROM = 4096


def activation_checkpointing(t) -> bool:
    """train.activation_checkpointing if set, else on for sequences of ACTIVATION_CHECKPOINTING_FROM tokens or more."""
    if t.activation_checkpointing is not None:
        return t.activation_checkpointing
    return t.max_seq_len >= ACTIVATION_CHECKPOINTING_FROM


def build_model(model_dir: str, t, d: fsdp.Dist):
    """The sharded model, loaded shard by shard, and the dtype its export is saved in."""
    from transformers import AutoConfig

    dtype = AutoConfig.from_pretrained(model_dir).dtype or torch.float32
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    torch.manual_seed(t.seed)
    model = fsdp.build_meta_model(model_dir, fsdp.attention_implementation(d.device))
    mesh = fsdp.shard_mesh(d, t.shard)
    fsdp.apply_fsdp(model, mesh, bf16=d.device.type == "cuda", activation_checkpointing=activation_checkpointing(t))
    fsdp.add_root_forward(model, LOSS_METHOD, causal_lm_loss_sum)
    fsdp.materialize(model, model_dir, d.device)
    model.train()
    return model, dtype


def lr_factor(step: int, steps: int, warmup: int, min_ratio: float, decay: int | None = None) -> float:
    """Linear warmup over `warmup` steps, the peak held, then cosine from 1 to min_ratio over the
    last `decay` steps (Levanter's warmup/stable/decay schedule); decay=None: every step after warmup."""
    if step < warmup:
        return (step + 1) / warmup
    decay = steps - warmup if decay is None else min(decay, steps - warmup)
    hold = steps - warmup - decay
    if step < warmup + hold:
        return 1.0
    progress = min(1.0, (step - warmup - hold) / max(1, decay))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_optimizer(model, t) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    # No weight decay on norms and biases (1-D tensors), nor, unless train.decay_embeddings, on
    # embedding tables (a tied output head included): Levanter's default mask, the authors' setting.
    params = [p for p in model.parameters() if p.requires_grad]
    embedding = set()
    if not getattr(t, "decay_embeddings", True):  # callers without the knob keep the older rule
        embedding = {id(p) for m in model.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters()}
    groups = [
        {"params": [p for p in params if p.ndim >= 2 and id(p) not in embedding], "weight_decay": t.weight_decay},
        {"params": [p for p in params if p.ndim < 2 or id(p) in embedding], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=t.lr, betas=tuple(t.betas))
    warmup = round(t.warmup_ratio * t.steps)
    ratio = getattr(t, "decay_ratio", None)
    decay = None if ratio is None else round(ratio * t.steps)
    schedule = partial(lr_factor, steps=t.steps, warmup=warmup, min_ratio=t.min_lr_ratio, decay=decay)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
