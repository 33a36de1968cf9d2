"""Stage 4 — train: supervised fine-tuning on the merged SFT set with FSDP2, preemption-safe.

Run as:  torchrun --nproc_per_node=2 -m svd_hpc.train RUN_DIR
(the launcher runs `python -m svd_hpc.task train --run-dir RUN_DIR` under torchrun or srun).

Every process calls run_task. Inputs: <run>/merge/sft/train.parquet and the model (train.model,
else model.path). Outputs under <run>/train/: checkpoints/step-NNNNNN/ every
train.checkpoint_every steps, final/ (a save_pretrained folder), metrics.jsonl (one line per
step), summary.json; rank 0 returns the stats the task runner writes as the done marker.

When the batch script asks it to stop (on SLURM's time-limit or preemption warning it creates
<run>/train/stop-requested, which rank 0 checks at every step boundary), or on SIGUSR2/SIGTERM,
every rank finishes its step, all agree, save a checkpoint and exit with PREEMPTED_EXIT_CODE;
the batch script then requeues the job (batch_script.py). A restart resumes from the newest complete
checkpoint with the same data order, optimiser, scheduler and RNG state, so an interrupted run
ends with the weights of an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import signal
import socket
import sys
import time
import uuid
from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.tensor import DTensor

from .. import models
from ..rundir import RunDir, atomic_write_json, atomic_write_text
from ..task import EXIT_STOPPED, stop_request_path
from . import fsdp, sft_data
from .rank_files import RankFiles

log = logging.getLogger("svd_hpc")

PREEMPTED_EXIT_CODE = EXIT_STOPPED  # stopped with a checkpoint; the batch script requeues, running again resumes
# Preemption drills: rank 0 raises SIGUSR2 on itself after finishing this many steps.
SIGNAL_AT_STEP_ENV = "SVD_HPC_TRAIN_SIGNAL_AT_STEP"
LOSS_CHUNK = 1024  # tokens per lm_head + cross-entropy chunk: 0.6 GB of fp32 logits at a 152k vocabulary
# The sharded model's name for causal_lm_loss_sum, run as a forward of its FSDP root (build_model).
LOSS_METHOD = "causal_lm_loss_sum"
# A decoder layer keeps ~34 × hidden_size bytes of bf16 activations per token for backward
# (Korthikanti et al. 2022, without the attention scores flash/flex never store): from 4,096
# tokens that is >= 4 GB per sequence for Qwen3-0.6B (1,024 × 28 layers) and ~20 GB for Qwen3-8B
# (4,096 × 36), while checkpointing keeps only each layer's input (2 × hidden_size bytes).
ACTIVATION_CHECKPOINTING_FROM = 4096
KEEP_CHECKPOINTS = 2  # older complete checkpoints are deleted (an 8B one with Adam state is ~100 GB)


def run_task(run: RunDir, index: int) -> dict | None:
    """Train the run's model on its SFT set (called in every training process); rank 0 returns the stats."""
    cfg = run.load_config()
    dataset = run.stage_dir("merge") / "sft" / "train.parquet"
    check_dataset(dataset)
    owns_group = not dist.is_initialized()
    d = fsdp.init_distributed()
    try:
        # rank 0 alone looks for the request; the stop vote in the loop tells the others
        with StopFlag(stop_request_path(run, "train") if d.rank == 0 else None) as stop:
            return train(run, cfg, d, dataset, stop)
    finally:
        if owns_group and dist.is_initialized():
            dist.destroy_process_group()


def check_dataset(dataset: Path) -> None:
    """Fail on every rank before any process group or GPU is touched."""
    import pyarrow.parquet as pq

    if not dataset.is_file():
        raise ValueError(f"SFT dataset {dataset} does not exist; run the merge stage first.")
    if pq.ParquetFile(dataset).metadata.num_rows == 0:
        raise ValueError(
            f"SFT dataset {dataset} has no rows: the merge kept no sample, so there is nothing to train on."
        )


class StopFlag:
    """Set by SIGUSR2/SIGTERM or by the batch script's stop-request file; checked at step boundaries."""

    SIGNALS = (signal.SIGUSR2, signal.SIGTERM)

    def __init__(self, request: Path | None = None):
        self.signum: int | None = None
        self.request = request
        self._previous = {}

    def _handle(self, signum, _frame):
        self.signum = signum

    def requested(self) -> bool:
        """A signal arrived, or the stop-request file exists (one stat per step, on rank 0 only)."""
        return self.signum is not None or (self.request is not None and self.request.exists())

    def reason(self) -> str:
        return "a signal" if self.signum is not None else "a stop request"

    def consume(self) -> None:
        """The request was acted on (checkpoint saved): a later run must not stop on it again."""
        if self.request is not None:
            self.request.unlink(missing_ok=True)

    def __enter__(self):
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def rank0_first(ranks: RankFiles, name: str, fn):
    """`fn()` on rank 0 only; every rank gets its (JSON) result, handed over through files.

    No collective waits meanwhile, so `fn` may take longer than the process group's timeout.
    Call it inside `ranks.reporting()`: an error on rank 0 then reaches every rank.
    """
    if ranks.rank == 0:
        ranks.publish(name, fn())
    return ranks.wait(name, [0])[0]


def local_model_dir(ref: str, revision: str | None) -> str:
    """A folder with the model's files: local paths as they are, hub ids via the HF cache (one lookup)."""
    if Path(ref).is_dir():
        return ref
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(ref, revision=revision)
    except Exception as err:  # the hub client raises many types; all mean "cannot get it"
        raise ValueError(f"cannot fetch model '{ref}' ({type(err).__name__}: {err}); use a local folder.") from None


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
    as much again for their gradient. Each chunk is checkpointed: forward keeps only its loss,
    backward recomputes its logits, and what flows back is the gradient of the hidden states
    (plus the weight's), so at most one chunk's logits exist at any time.
    """
    from torch.utils.checkpoint import checkpoint

    # split, not slicing: its backward concatenates the chunks' gradients once, where each
    # slice's backward would allocate a zero tensor of the full size
    parts = [
        checkpoint(_chunk_loss, h, weight, y, use_reentrant=False)
        for h, y in zip(hidden.split(chunk), labels.split(chunk))
    ]
    return torch.stack(parts).sum()


def train_step(model, optimizer, batches, global_loss_tokens: int, world_size: int, device, grad_clip: float):
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


def reference_loss(model, stream, t, d) -> float:
    """Mean token loss of the current weights on the first step's global batch (for checks)."""
    model.eval()
    with torch.no_grad():
        batches = stream.step_batches(0, t.global_batch, d.world_size, d.rank, t.micro_batch)
        sums = torch.tensor([0.0, sum(b.loss_tokens for b in batches)], device=d.device, dtype=torch.float64)
        for batch in batches:
            sums[0] += loss_sum(model, batch, d.device).double()
    dist.all_reduce(sums)
    model.train()
    return float(sums[0] / sums[1])


def prepare_data(cfg, d: fsdp.Dist, dataset: Path, out: Path):
    """Model folder, tokenizer and the packed stream (all ranks tokenize into out/data, once).

    Rank 0 looks the model up once for the job; ranks hand results over through files in
    out/.handoff/<attempt>/ (rank_files.py), so no rank sits in a collective while others work.
    """
    t = cfg.train
    if t.global_batch % (d.world_size * t.micro_batch):
        raise ValueError(
            f"train.global_batch={t.global_batch} is not divisible by world size {d.world_size} × "
            f"train.micro_batch {t.micro_batch}; choose a multiple of {d.world_size * t.micro_batch}."
        )
    attempt = [uuid.uuid4().hex if d.rank == 0 else None]
    dist.broadcast_object_list(attempt, src=0)  # at once: no rank has work to do before this
    ranks = RankFiles(out / ".handoff" / attempt[0], d.rank, d.world_size)
    cache = out / "data"
    with ranks.reporting():
        ref, revision = models.train_base(cfg)
        model_dir = rank0_first(ranks, "model_dir", partial(local_model_dir, ref, revision))
        if not Path(model_dir).is_dir():
            raise ValueError(
                f"rank 0 found model '{ref}' in {model_dir}, which rank {d.rank} on {socket.gethostname()} cannot see; "
                "put the hub cache (HF_HOME) on a filesystem every node shares."
            )
        tokenizer = sft_data.load_tokenizer(model_dir)
        template_kwargs = {"enable_thinking": cfg.model.thinking != "off"}
        data = sft_data.prepare(dataset, cache, tokenizer, ref, t.max_seq_len, t.overlong, ranks, **template_kwargs)
    dist.barrier()  # short: every rank has just read the same last hand-off
    if d.rank == 0:
        shutil.rmtree(ranks.folder.parent, ignore_errors=True)  # this attempt's and any failed one's
    stats = data.stats
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    stream = sft_data.PackedStream(data, t.max_seq_len, t.seed, pad_id or 0)
    if d.rank == 0:
        log.info(
            f"SFT set: {stats['samples']} of {stats['samples_in']} samples, {stats['tokens']} tokens "
            f"({stats['loss_tokens']} with loss); overlong ({t.overlong}): {stats['overlong_truncated']} truncated, "
            f"{stats['overlong_dropped']} dropped; {stats['no_loss_dropped']} without assistant tokens dropped"
        )
        if len(stream.epoch(0)) < t.global_batch:
            log.warning(
                f"one epoch packs into {len(stream.epoch(0))} sequences, fewer than train.global_batch={t.global_batch}"
            )
    order = {"data": sft_data.cache_key(cache), "seed": t.seed, "global_batch": t.global_batch}
    return ref, model_dir, tokenizer, stream, order


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
    fsdp.apply_fsdp(model, d.mesh, bf16=d.device.type == "cuda", activation_checkpointing=activation_checkpointing(t))
    fsdp.add_root_forward(model, LOSS_METHOD, causal_lm_loss_sum)
    fsdp.materialize(model, model_dir, d.device)
    model.train()
    return model, dtype


def resume(ckpt_root: Path, model, optimizer, scheduler, order: dict, rank: int) -> int:
    """Load the newest complete checkpoint, if any; the step to continue from."""
    latest = fsdp.latest_checkpoint(ckpt_root)
    if latest is None:
        return 0
    extra = fsdp.load_checkpoint(latest, model, optimizer, rank)
    if extra["order"] != order:
        raise ValueError(
            f"{latest} was trained on a different SFT set, seed or global batch; restore them or delete {ckpt_root}."
        )
    scheduler.load_state_dict(extra["scheduler"])
    log.info(f"resumed from {latest} at step {extra['step']}")
    return extra["step"]


def train(run: RunDir, cfg, d: fsdp.Dist, dataset: Path, stop: StopFlag) -> dict | None:
    t = cfg.train
    out = run.stage_dir("train")
    ckpt_root = out / "checkpoints"
    ref, model_dir, tokenizer, stream, order = prepare_data(cfg, d, dataset, out)
    model, export_dtype = build_model(model_dir, t, d)
    optimizer, scheduler = build_optimizer(model, t)
    start = resume(ckpt_root, model, optimizer, scheduler, order, d.rank)

    metrics = MetricsLog(out, d.rank, start, t.steps)
    signal_at = int(os.environ.get(SIGNAL_AT_STEP_ENV, "0"))
    for step in range(start, t.steps):
        began = time.perf_counter()
        batches = stream.step_batches(step, t.global_batch, d.world_size, d.rank, t.micro_batch)
        counts = torch.tensor(
            [sum(b.loss_tokens for b in batches), sum(b.tokens for b in batches)], device=d.device, dtype=torch.float64
        )
        dist.all_reduce(counts)
        lr = scheduler.get_last_lr()[0]
        loss, norm = train_step(model, optimizer, batches, int(counts[0]), d.world_size, d.device, t.grad_clip)
        scheduler.step()
        if d.rank == 0 and step + 1 == signal_at:
            signal.raise_signal(signal.SIGUSR2)
        # one collective for the loss and the stop vote: a signal on any rank stops all of them
        tail = torch.tensor([float(loss), 1.0 if stop.requested() else 0.0], device=d.device, dtype=torch.float64)
        dist.all_reduce(tail)
        check_finite(step + 1, float(tail[0] / counts[0]), float(norm), ckpt_root, metrics)
        seconds = time.perf_counter() - began
        metrics.write(
            step=step + 1,
            loss=float(tail[0] / counts[0]),
            lr=lr,
            grad_norm=float(norm),
            tokens=int(counts[1]),
            tokens_per_s=float(counts[1]) / seconds,
            padding_efficiency=float(counts[1]) / (t.global_batch * t.max_seq_len),
            seconds=seconds,
        )
        stopping = bool(tail[1] > 0)
        if stopping or (step + 1) % t.checkpoint_every == 0:
            extra = {"step": step + 1, "scheduler": scheduler.state_dict(), "order": order}
            fsdp.save_checkpoint(
                fsdp.checkpoint_dir(ckpt_root, step + 1), model, optimizer, extra, d.rank, KEEP_CHECKPOINTS
            )
        if stopping:
            metrics.close()
            stop_for_requeue(step + 1, d, stop)
    metrics.close()

    final_loss = reference_loss(model, stream, t, d)
    fsdp.export_pretrained(model, out / "final", model_dir, tokenizer, export_dtype, d.rank)
    if d.rank == 0:
        summary = {
            "steps": t.steps,
            "world_size": d.world_size,
            "reference_loss": final_loss,
            "data": stream.data.stats,
            "model": ref,
        }
        atomic_write_json(out / "summary.json", summary)
        log.info(f"train done: {out / 'final'} (loss on the first batch {final_loss:.4f})")
    dist.barrier()
    return {"steps": t.steps, "reference_loss": final_loss} if d.rank == 0 else None


class TrainingDiverged(RuntimeError):
    """A step's loss or gradient norm is NaN or infinite."""


def check_finite(step: int, loss: float, grad_norm: float, ckpt_root: Path, metrics: MetricsLog) -> None:
    """Stop before a diverged step is logged, checkpointed or exported.

    Both values are global (all-reduced), so every rank stops at the same step. Checkpoints are
    only pruned when a new one is saved, so the last good one stays.
    """
    if math.isfinite(loss) and math.isfinite(grad_norm):
        return
    metrics.close()
    latest = fsdp.latest_checkpoint(ckpt_root)
    kept = f"the last good checkpoint {latest} is kept" if latest else "no checkpoint was saved before it"
    raise TrainingDiverged(
        f"training diverged at step {step}: loss {loss}, grad norm {grad_norm}; {kept} and nothing of this "
        f"step is saved. Lower train.lr and start afresh (delete {ckpt_root}: a resume keeps the saved schedule)."
    )


def stop_for_requeue(step: int, d: fsdp.Dist, stop: StopFlag) -> None:
    """After the stop checkpoint: every rank exits PREEMPTED_EXIT_CODE; under SLURM the batch script requeues."""
    if d.rank == 0:
        stop.consume()
        how = (
            "the batch script requeues the job"
            if "SLURM_JOB_ID" in os.environ
            else "run the train stage again to resume"
        )
        log.warning(f"stopped by {stop.reason()} after step {step} with a checkpoint; {how}")
    dist.barrier()
    dist.destroy_process_group()
    raise SystemExit(PREEMPTED_EXIT_CODE)


class MetricsLog:
    """metrics.jsonl (rank 0), cut back to `start` on resume; a progress line; TensorBoard if installed."""

    def __init__(self, out: Path, rank: int, start: int, total: int):
        self.rank, self.start, self.total = rank, start, total
        self.path = out / "metrics.jsonl"
        self.handle = self.board = self.bar = None
        self.began = time.perf_counter()
        if rank != 0:
            return
        if self.path.is_file():  # steps after the resumed checkpoint are re-done: drop their lines
            kept = [line for line in self.path.read_text().splitlines() if line and json.loads(line)["step"] <= start]
            atomic_write_text(self.path, "".join(line + "\n" for line in kept))
        self.handle = open(self.path, "a")
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.board = SummaryWriter(str(out / "tensorboard"))
        except ImportError:
            pass
        if sys.stderr.isatty():  # a live bar for people at a terminal; log files get the lines only
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            columns = (
                TextColumn("train"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total}"),
                TimeRemainingColumn(),
            )
            self.bar = Progress(*columns, TextColumn("{task.fields[status]}"))
            self.task = self.bar.add_task("train", total=total, completed=start, status="")
            self.bar.start()

    def write(self, **record) -> None:
        if self.rank != 0:
            return
        self.handle.write(json.dumps(record) + "\n")
        self.handle.flush()
        step = record["step"]
        eta = (time.perf_counter() - self.began) / (step - self.start) * (self.total - step)
        status = (
            f"loss {record['loss']:.4f} lr {record['lr']:.2e} grad_norm {record['grad_norm']:.3f} "
            f"{record['tokens_per_s']:.0f} tok/s"
        )
        log.info(
            f"step {step}/{self.total}: {status} padding_efficiency {record['padding_efficiency']:.3f} eta {eta:.0f}s"
        )
        if self.bar:
            self.bar.update(self.task, completed=step, status=status)
        if self.board:
            for key in ("loss", "lr", "grad_norm", "tokens_per_s", "padding_efficiency"):
                self.board.add_scalar(f"train/{key}", record[key], step)

    def close(self) -> None:
        for part in (self.handle, self.board):
            if part:
                part.close()
        if self.bar:
            self.bar.stop()
