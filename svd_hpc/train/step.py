"""One optimiser step: the token loss, computed chunk by chunk, and its gradient over all ranks."""

from __future__ import annotations

from functools import partial

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.tensor import DTensor

from . import sft_data

LOSS_CHUNK = 1024  # tokens per lm_head + cross-entropy chunk: 0.6 GB of fp32 logits at a 152k vocabulary
# The sharded model's name for causal_lm_loss_sum, run as a forward of its FSDP root (model.build_model).
LOSS_METHOD = "causal_lm_loss_sum"


def loss_sum(model, batch: sft_data.MicroBatch, device) -> torch.Tensor:
    """Summed cross-entropy over the batch's loss tokens (labels are already shifted)."""
    inputs = batch.torch(device)
    if model.config._attn_implementation.startswith("flash_attention"):
        # transformers runs flash attention's varlen kernel, which honours the position-id
        # restarts, only for a single row (modeling_flash_attention_utils._is_packed_sequence);
        # with more rows it would let packed samples attend to each other. One row it is.
        inputs = {name: tensor.reshape(1, -1) for name, tensor in inputs.items()}
    # the FSDP root's registered method when sharded (its parameters gathered), else the function
    head_loss = getattr(model, LOSS_METHOD, partial(causal_lm_loss_sum, model))
    return head_loss(inputs["input_ids"], inputs["position_ids"], inputs["labels"])


def causal_lm_loss_sum(model, input_ids, position_ids, labels, chunk: int = LOSS_CHUNK) -> torch.Tensor:
    """The decoder's hidden states, then lm_head + cross-entropy chunk by chunk (never all logits)."""
    # use_cache=False matters: with a cache, transformers drops the packed-sequence mask
    hidden = model.model(input_ids=input_ids, position_ids=position_ids, use_cache=False).last_hidden_state
    head = model.get_output_embeddings()
    return token_loss_sum(hidden.flatten(0, 1), head.weight, labels.flatten(), chunk)


def _chunk_loss(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    logits = F.linear(hidden, weight)
    return F.cross_entropy(logits.float(), labels, ignore_index=sft_data.IGNORE, reduction="sum")


def token_loss_sum(
    hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, chunk: int = LOSS_CHUNK
) -> torch.Tensor:
    """Cross-entropy of `hidden @ weight.T` against `labels`, summed in fp32, `chunk` tokens at a time.

    Full logits of 32k tokens over a 152k vocabulary are 10 GB in bf16, 20 GB more in fp32, and
    as much again for their gradient. Forward keeps only each chunk's loss; backward recomputes
    one chunk's logits at a time (ChunkedHeadLoss), so at most one chunk's logits exist at once.
    """
    if hidden.shape[0] <= chunk:
        # one chunk: its logits exist in backward either way, so recomputing them would only add
        # a second lm_head forward (a tenth of a small model's step) for no memory saved
        return _chunk_loss(hidden, weight, labels)
    return ChunkedHeadLoss.apply(hidden, weight, labels, chunk)


class ChunkedHeadLoss(torch.autograd.Function):
    """The chunked loss head, whose weight gradient is summed over the chunks in fp32.

    Left to autograd, the chunks' weight gradients are added in the weight's dtype: in bf16
    training 32 roundings of a growing sum, which quadruple the gradient's error against one
    unchunked matmul (tests/test_loss.py measures it). Here each chunk's gradient, computed by the
    same kernels as before, is added into one fp32 buffer, cast to the weight's dtype once.
    `weight` may be the FSDP root's gathered parameter: it stays gathered until the root's
    backward ends, and the gradient returned here reaches it as any other would.
    """

    @staticmethod
    def forward(ctx, hidden, weight, labels, chunk):
        ctx.save_for_backward(hidden, weight, labels)
        ctx.chunk = chunk
        total = torch.zeros((), device=hidden.device, dtype=torch.float32)
        for h, y in zip(hidden.split(chunk), labels.split(chunk)):
            total += _chunk_loss(h, weight, y)
        return total

    @staticmethod
    def backward(ctx, grad):
        hidden, weight, labels = ctx.saved_tensors
        want_hidden, want_weight = ctx.needs_input_grad[:2]
        d_hidden = torch.empty_like(hidden) if want_hidden else None
        d_weight = torch.zeros(weight.shape, device=weight.device, dtype=torch.float32) if want_weight else None
        start = 0
        for h, y in zip(hidden.split(ctx.chunk), labels.split(ctx.chunk)):
            h = h.detach().requires_grad_(want_hidden)
            w = weight.detach().requires_grad_(want_weight)
            with torch.enable_grad():
                loss = _chunk_loss(h, w, y)
            grads = iter(torch.autograd.grad(loss, [t for t in (h, w) if t.requires_grad], grad))
            if want_hidden:
                d_hidden[start : start + h.shape[0]] = next(grads)
            if want_weight:
                d_weight += next(grads)
            del grads  # the chunk's weight gradient, before the next chunk's is made beside it
            start += h.shape[0]
        return d_hidden, None if d_weight is None else d_weight.to(weight.dtype), None, None


def train_step(
    model,
    optimizer: torch.optim.Optimizer,
    batches: list[sft_data.MicroBatch],
    global_loss_tokens: int,
    world_size: int,
    device: torch.device | str,
    grad_clip: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimiser step over this rank's micro-batches; returns (local loss sum, grad norm).

    Each micro-batch's summed loss is divided by the step's loss tokens over all ranks and
    multiplied by the world size (FSDP averages gradients over ranks), so the gradient is that of
    the mean token loss of the whole global batch, however it is split.
    """
    total = torch.zeros((), device=device)
    for batch in batches:
        loss = loss_sum(model, batch, device)
        (loss * (world_size / global_loss_tokens)).backward()
        total += loss.detach()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip if grad_clip > 0 else float("inf"))
    norm = norm.full_tensor() if isinstance(norm, DTensor) else norm
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return total, norm


def reference_loss(model, stream: sft_data.PackedStream, t, d) -> float:
    """Mean token loss of the current weights on the first step's global batch (for checks)."""
    model.eval()
    with torch.no_grad():
        batches = stream.step_batches(
            0, global_batch=t.global_batch, world_size=d.world_size, rank=d.rank, micro_batch=t.micro_batch
        )
        sums = torch.tensor([0.0, sum(b.loss_tokens for b in batches)], device=d.device, dtype=torch.float64)
        for batch in batches:
            sums[0] += loss_sum(model, batch, d.device).double()
    dist.all_reduce(sums)
    model.train()
    return float(sums[0] / sums[1])
