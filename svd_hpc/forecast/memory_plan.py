"""Per-GPU memory of a plan, estimated from the model's config.json: the train stage's peak and the vLLM stages' room.

Entry points:
  train_memory(model_config, *, seq_len, micro_batch, world_size, shard_size, activation_checkpointing)
      -> TrainMemory: the peak of one FSDP2 training process (train/fsdp.py, train/step.py) on a GPU,
         in parts; .total_gib is the figure to set against a GPU's memory.
  vllm_fit(model_config, *, tensor_parallel_size, max_model_len, gpu_memory_utilization, gpu_gib)
      -> VllmFit: weights per GPU, KV-cache room and how many max_model_len sequences fit at once.

`model_config` is the dict of a transformers config.json (hidden_size, num_hidden_layers, ...).
The training figures follow what the train stage does on CUDA: fp32 parameters sharded over
`shard_size` processes with fp32 gradients and two fp32 AdamW moments; bf16 compute, each decoder
layer gathered in bf16 with the next one prefetched and the root's (embeddings, lm_head) held
through the step; the chunked loss head. The per-token activation bytes are those torch's
FSDPMemTracker counts for the train stage's own code (benchmarks/bench_memory.py compares the two).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

GIB = 1 << 30
# vLLM's own use besides weights and KV cache: the activations of its profiling run, CUDA graphs,
# the CUDA context and NCCL buffers; a few GiB for 4-8B models at its default batch sizes.
VLLM_RUNTIME_GIB = 2.0


@dataclass(frozen=True)
class Shape:
    """What memory depends on in a decoder-only model's config.json."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied: bool
    qk_norm: bool  # Qwen3 normalises q and k per head, which keeps an fp32 copy of each

    @classmethod
    def of(cls, config: dict) -> Shape:
        missing = [
            k for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size") if k not in config
        ]
        if missing or "intermediate_size" not in config:
            raise ValueError(
                f"the model's config.json lacks {', '.join(missing or ['intermediate_size'])}; the memory check reads "
                "decoder-only transformers configs (Qwen3, Llama and the like)."
            )
        heads = config["num_attention_heads"]
        return cls(
            hidden=config["hidden_size"],
            layers=config["num_hidden_layers"],
            heads=heads,
            kv_heads=config.get("num_key_value_heads") or heads,
            head_dim=config.get("head_dim") or config["hidden_size"] // heads,
            intermediate=config["intermediate_size"],
            vocab=config["vocab_size"],
            tied=bool(config.get("tie_word_embeddings", False)),
            qk_norm=str(config.get("model_type", "")).startswith("qwen3"),
        )

    @property
    def layer_params(self) -> int:
        h, q, kv = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim
        norms = 2 * h + (2 * self.head_dim if self.qk_norm else 0)
        return 2 * h * q + 2 * h * kv + 3 * h * self.intermediate + norms

    @property
    def root_params(self) -> int:
        """Embeddings, final norm and an untied lm_head: the FSDP root's own parameters."""
        return self.vocab * self.hidden * (1 if self.tied else 2) + self.hidden

    @property
    def params(self) -> int:
        return self.layers * self.layer_params + self.root_params

    def layer_activation_bytes(self) -> int:
        """Bytes per token one decoder layer keeps for backward in bf16 (flash-style attention, no L×L scores).

        The two RMSNorms keep an fp32 and a bf16 copy of the hidden state; attention keeps q, k, v
        (with Qwen3's per-head norms an fp32 copy each), its output and its log-sum-exp; the
        SwiGLU MLP keeps four intermediate-sized tensors.
        """
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        attention = (10 if self.qk_norm else 4) * (q + kv)
        return 16 * self.hidden + attention + 8 * self.intermediate + 8 * self.heads

    def model_activation_bytes(self) -> int:
        """Bytes per token outside the layers: the final norm, rotary cos/sin, token ids, labels, positions."""
        return 8 * self.hidden + 4 * self.head_dim + 24


@dataclass(frozen=True)
class TrainMemory:
    """One training process's peak, in bytes by what holds them; .total_gib sums them."""

    parameters: int  # fp32 shards
    gradients: int  # fp32 shards; none yet at a peak early in backward, all of them at the optimiser step
    optimizer: int  # AdamW's two fp32 moments, sharded
    gathered: int  # bf16 parameters gathered for compute, and in a layer's backward its fp32 reduce-scatter input
    activations: int  # kept for backward (and one recomputed layer's, with checkpointing)
    loss_head: int  # one chunk's logits in backward and the lm_head's fp32 gradient sum
    phase: str  # when the peak falls: "loss head", "layer backward" or "optimizer step"

    @property
    def state(self) -> int:
        return self.parameters + self.gradients + self.optimizer

    @property
    def total(self) -> int:
        return self.state + self.gathered + self.activations + self.loss_head

    @property
    def total_gib(self) -> float:
        return self.total / GIB


def train_memory(
    model_config: dict,
    *,
    seq_len: int,
    micro_batch: int,
    world_size: int,
    shard_size: int,
    activation_checkpointing: bool,
    dtype_bytes: int = 2,
    loss_chunk: int | None = None,
) -> TrainMemory:
    """Peak memory of one training process on a GPU.

    `shard_size` is the processes parameters are sharded over: `world_size` (train.shard all) or
    the processes of one node (train.shard node). `dtype_bytes` is the compute dtype's (bf16: 2);
    parameters, gradients and optimiser state are fp32 whatever it is. `loss_chunk`: the loss
    head's tokens per chunk, train.LOSS_CHUNK by default.

    The peak is the largest of three moments: the loss head's backward (every layer's kept
    activations and one chunk's logits), the backward of the top decoder layer (with
    checkpointing: that layer recomputed, plus the gradients of its MLP; gradients of parameters
    do not exist yet, as each step starts with none), and the optimiser step (all state, no activations).
    """
    if loss_chunk is None:
        from ..train.step import LOSS_CHUNK

        loss_chunk = LOSS_CHUNK
    m = Shape.of(model_config)
    shard = max(1, min(shard_size, world_size))
    tokens = seq_len * micro_batch
    scale = dtype_bytes / 2  # the activation bytes above are bf16's
    layer_kept = m.layer_activation_bytes() * scale
    if activation_checkpointing:
        layer_kept = 2 * m.hidden * scale  # each layer keeps only its input
    kept = tokens * (m.layers * layer_kept + m.model_activation_bytes() * scale)
    # the top layer's backward: its activations (recomputed with checkpointing) and the
    # gradients of its MLP's intermediates and of its output
    layer_backward = tokens * (4 * m.intermediate + 2 * m.hidden) * scale
    if activation_checkpointing:
        layer_backward += tokens * m.layer_activation_bytes() * scale
    chunk = min(loss_chunk, tokens)
    # backward of one chunk: bf16 and fp32 logits, log-softmax and its gradient (12 bytes per
    # logit), the hidden states' gradient; the lm_head gradient summed in fp32
    loss_head = 12 * chunk * m.vocab + 4 * chunk * m.hidden + 4 * m.vocab * m.hidden
    layer = m.layer_params
    # the root's parameters through forward and backward and the top layer, kept gathered after
    # its forward; in a layer's backward also the next one prefetched and the fp32 gradient a
    # layer hands to reduce-scatter
    at_head = int(dtype_bytes * (m.root_params + layer))
    in_layer = int(dtype_bytes * (m.root_params + 2 * layer) + 4 * layer)
    state = {"parameters": math.ceil(4 * m.params / shard), "optimizer": math.ceil(8 * m.params / shard)}
    moments = [
        TrainMemory(
            **state, gradients=0, gathered=at_head, activations=int(kept), loss_head=int(loss_head), phase="loss head"
        ),
        TrainMemory(
            **state,
            gradients=0,
            gathered=in_layer,
            activations=int(kept + layer_backward),
            loss_head=0,
            phase="layer backward",
        ),
        TrainMemory(
            **state, gradients=state["parameters"], gathered=0, activations=0, loss_head=0, phase="optimizer step"
        ),
    ]
    return max(moments, key=lambda moment: moment.total)


@dataclass(frozen=True)
class VllmFit:
    """One vLLM engine's memory on each of its GPUs, in GiB."""

    weights_gib: float
    kv_room_gib: float  # what gpu_memory_utilization leaves for the KV cache
    kv_per_sequence_gib: float  # one max_model_len sequence's keys and values
    sequences: int  # max_model_len sequences that fit in the KV cache at once

    @property
    def fits(self) -> bool:
        return self.sequences >= 1


def vllm_fit(
    model_config: dict,
    *,
    tensor_parallel_size: int,
    max_model_len: int,
    gpu_memory_utilization: float,
    gpu_gib: float,
    dtype_bytes: int = 2,
) -> VllmFit:
    """Weights per GPU at `tensor_parallel_size`, the KV cache's room and how many full-length sequences it holds.

    Tensor parallelism splits weights (the vocabulary too) and KV heads over the GPUs; with more
    GPUs than KV heads each GPU keeps a whole head's copy.
    """
    m = Shape.of(model_config)
    tp = max(1, tensor_parallel_size)
    weights = dtype_bytes * m.params / tp / GIB
    kv_heads = math.ceil(m.kv_heads / tp)
    per_token = 2 * m.layers * kv_heads * m.head_dim * dtype_bytes
    per_sequence = per_token * max_model_len / GIB
    room = gpu_gib * gpu_memory_utilization - weights - VLLM_RUNTIME_GIB
    return VllmFit(
        weights_gib=weights,
        kv_room_gib=room,
        kv_per_sequence_gib=per_sequence,
        sequences=max(0, math.floor(room / per_sequence)) if room > 0 else 0,
    )
