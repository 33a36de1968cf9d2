"""Stage 4 — train: supervised fine-tuning on the merged SFT set with FSDP2, preemption-safe.

Run as:  torchrun --nproc_per_node=2 -m svd_hpc.train RUN_DIR
(the launcher runs `python -m svd_hpc.task train --run-dir RUN_DIR` under torchrun or srun).

Every process calls run_task. Inputs: <run>/merge/sft/train.parquet and the model (train.model,
else model.path). Outputs under <run>/train/: checkpoints/step-NNNNNN/ every
train.checkpoint_every steps, final/ (a save_pretrained folder), metrics.jsonl (one step record
per step, step_log.py), summary.json; rank 0 returns the stats the task runner writes as
the done marker.

The stage's parts: inputs.py (model folder, tokenizer, packed stream), model.py (sharded model,
optimiser, LR schedule), step.py (the loss and one optimiser step), preemption.py (stopping on
request), step_log.py (the step records). This module runs the steps, checkpoints and exports.

When asked to stop (preemption.py), every rank finishes its step, all agree, save a checkpoint
and exit EXIT_STOPPED; the batch script then requeues the job (slurm/script.py). A restart
resumes from the newest complete checkpoint with the same data order, optimiser, scheduler and
RNG state, so an interrupted run ends with the weights of an uninterrupted one.
"""

from __future__ import annotations

import logging
import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from ..publish import hub
from ..publish.tracking import Tracker
from ..rundir.atomic import atomic_write_json
from ..rundir.contract import stop_request_path
from ..rundir.layout import RunDir, selection_checkpoint
from ..train import fsdp, sft_data
from ..train.inputs import TrainInputs, local_model_dir, prepare_data
from ..train.model import (
    ACTIVATION_CHECKPOINTING_FROM,
    activation_checkpointing,
    build_model,
    build_optimizer,
    lr_factor,
)
from ..train.preemption import SIGNAL_AT_STEP_ENV, StopFlag, drill_step, exit_stopped
from ..train.step import LOSS_CHUNK, causal_lm_loss_sum, loss_sum, reference_loss, token_loss_sum, train_step
from ..train.step_log import StepLog

# Imported from here by gpu_check, the benchmarks and tests: the stage's parts under one name.
__all__ = [
    "ACTIVATION_CHECKPOINTING_FROM",
    "LOSS_CHUNK",
    "SIGNAL_AT_STEP_ENV",
    "TrainingDiverged",
    "activation_checkpointing",
    "build_model",
    "build_optimizer",
    "causal_lm_loss_sum",
    "local_model_dir",
    "loss_sum",
    "lr_factor",
    "prepare_data",
    "run_task",
    "token_loss_sum",
    "train_step",
]

log = logging.getLogger("svd_hpc")

KEEP_CHECKPOINTS = 2  # older complete checkpoints are deleted (an 8B one with Adam state is ~100 GB)


def run_task(run: RunDir, index: int) -> dict | None:
    """Train the run's model on its SFT set (called in every training process); rank 0 returns the stats."""
    cfg = run.load_config()
    dataset = run.stage_dir("merge") / "sft" / "train.parquet"
    sft_data.open_dataset(dataset)  # fail on every rank before any process group or GPU is touched
    owns_group = not dist.is_initialized()
    d = fsdp.init_distributed()
    try:
        # rank 0 alone looks for the request; the stop vote in the loop tells the others
        with StopFlag(stop_request_path(run, "train") if d.rank == 0 else None) as stop:
            return train(run, cfg, d, dataset, stop)
    finally:
        if owns_group and dist.is_initialized():
            dist.destroy_process_group()


@dataclass
class Trainer:
    """What every step needs: the settings, the process group, the sharded model and its optimiser."""

    t: object  # cfg.train
    d: fsdp.Dist
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    inputs: TrainInputs
    ckpt_root: Path
    export_dtype: torch.dtype | None = None  # of the models exported for train.select (None: no export)
    run: RunDir | None = None


def train(run: RunDir, cfg, d: fsdp.Dist, dataset: Path, stop: StopFlag) -> dict | None:
    out = run.stage_dir("train")
    inputs = prepare_data(cfg, d, dataset, out)
    model, export_dtype = build_model(inputs.model_dir, cfg.train, d)
    optimizer, scheduler = build_optimizer(model, cfg.train)
    trainer = Trainer(
        t=cfg.train,
        d=d,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        inputs=inputs,
        ckpt_root=out / "checkpoints",
        export_dtype=export_dtype,
        run=run,
    )
    start = resume(trainer)
    tracker = Tracker(run, cfg, start) if d.rank == 0 else None
    run_steps(trainer, start, stop, StepLog(out, d.rank, start, cfg.train.steps, tracker))
    stats = finish(trainer, out, export_dtype)
    if d.rank == 0 and not cfg.train.select.enabled:  # with selection, the select stage pushes the chosen one
        hub.publish_model(run, cfg)  # records a failure instead of raising: the run goes on
    return stats


def run_steps(trainer: Trainer, start: int, stop: StopFlag, step_log: StepLog) -> None:
    """Steps `start`.. train.steps, a checkpoint every train.checkpoint_every and on a stop request."""
    t, drill = trainer.t, drill_step()
    for step in range(start, t.steps):
        record, stopping = optimiser_step(trainer, step, stop, drill=trainer.d.rank == 0 and step + 1 == drill)
        check_finite(record, trainer.ckpt_root, step_log)
        step_log.write(record)
        export_for_selection(trainer, step + 1)
        if stopping or (step + 1) % t.checkpoint_every == 0:
            save_checkpoint(trainer, step + 1)
        if stopping:
            step_log.close()
            exit_stopped(step + 1, trainer.d, stop)
    step_log.close()


def optimiser_step(trainer: Trainer, step: int, stop: StopFlag, drill: bool) -> tuple[dict, bool]:
    """Step `step` on every rank: its step record (global figures) and whether all ranks stop after it."""
    t, d = trainer.t, trainer.d
    began = time.perf_counter()
    batches = trainer.inputs.stream.step_batches(
        step, global_batch=t.global_batch, world_size=d.world_size, rank=d.rank, micro_batch=t.micro_batch
    )
    counts = torch.tensor(
        [sum(b.loss_tokens for b in batches), sum(b.tokens for b in batches)], device=d.device, dtype=torch.float64
    )
    dist.all_reduce(counts)
    lr = trainer.scheduler.get_last_lr()[0]
    loss, norm = train_step(
        trainer.model,
        trainer.optimizer,
        batches,
        global_loss_tokens=int(counts[0]),
        world_size=d.world_size,
        device=d.device,
        grad_clip=t.grad_clip,
    )
    trainer.scheduler.step()
    if drill:
        signal.raise_signal(signal.SIGUSR2)
    # one collective for the loss and the stop vote: a signal on any rank stops all of them
    tail = torch.tensor([float(loss), 1.0 if stop.requested() else 0.0], device=d.device, dtype=torch.float64)
    dist.all_reduce(tail)
    seconds = time.perf_counter() - began
    record = {
        "step": step + 1,
        "loss": float(tail[0] / counts[0]),
        "lr": lr,
        "grad_norm": float(norm),
        "tokens": int(counts[1]),
        "tokens_per_s": float(counts[1]) / seconds,
        "padding_efficiency": float(counts[1]) / (t.global_batch * t.max_seq_len),
        "seconds": seconds,
    }
    return record, bool(tail[1] > 0)


def export_for_selection(trainer: Trainer, step: int) -> None:
    """At a train.select step before the last, export the model for select_eval (the last one is train/final).

    The folder is renamed into place whole, so select_eval, waiting for it, never reads half of it;
    a resumed run that finds it there does not export it again (the same steps give the same weights).
    """
    t = trainer.t
    if trainer.run is None or step == t.steps or step not in t.select.steps(t.steps):
        return
    out = selection_checkpoint(trainer.run, step, t.steps)
    if out.is_dir():
        return
    fsdp.export_pretrained(
        trainer.model,
        out,
        model_dir=trainer.inputs.model_dir,
        tokenizer=trainer.inputs.tokenizer,
        dtype=trainer.export_dtype,
        rank=trainer.d.rank,
    )
    if trainer.d.rank == 0:
        log.info(f"selection checkpoint exported: {out}")


def save_checkpoint(trainer: Trainer, step: int) -> None:
    extra = {"step": step, "scheduler": trainer.scheduler.state_dict(), "order": trainer.inputs.order}
    folder = fsdp.checkpoint_dir(trainer.ckpt_root, step)
    fsdp.save_checkpoint(
        folder, trainer.model, trainer.optimizer, extra=extra, rank=trainer.d.rank, keep=KEEP_CHECKPOINTS
    )


def resume(trainer: Trainer) -> int:
    """Load the newest complete checkpoint, if any; the step to continue from."""
    latest = fsdp.latest_checkpoint(trainer.ckpt_root)
    if latest is None:
        return 0
    extra = fsdp.load_checkpoint(latest, trainer.model, trainer.optimizer, trainer.d.rank)
    if extra["order"] != trainer.inputs.order:
        raise ValueError(
            f"{latest} was trained on a different SFT set, seed or global batch; "
            f"restore them or delete {trainer.ckpt_root}."
        )
    trainer.scheduler.load_state_dict(extra["scheduler"])
    log.info(f"resumed from {latest} at step {extra['step']}")
    return extra["step"]


def finish(trainer: Trainer, out: Path, export_dtype: torch.dtype) -> dict | None:
    """Export the trained model to out/final and write summary.json; rank 0 returns the done-marker stats."""
    t, d, inputs = trainer.t, trainer.d, trainer.inputs
    final_loss = reference_loss(trainer.model, inputs.stream, t, d)
    fsdp.export_pretrained(
        trainer.model,
        out / "final",
        model_dir=inputs.model_dir,
        tokenizer=inputs.tokenizer,
        dtype=export_dtype,
        rank=d.rank,
    )
    if d.rank == 0:
        summary = {
            "steps": t.steps,
            "world_size": d.world_size,
            "reference_loss": final_loss,
            "data": inputs.stream.data.stats,
            "model": inputs.ref,
        }
        atomic_write_json(out / "summary.json", summary)
        log.info(f"train done: {out / 'final'} (loss on the first batch {final_loss:.4f})")
    dist.barrier()
    return {"steps": t.steps, "reference_loss": final_loss} if d.rank == 0 else None


class TrainingDiverged(RuntimeError):
    """A step's loss or gradient norm is NaN or infinite."""


def check_finite(record: dict, ckpt_root: Path, step_log: StepLog) -> None:
    """Stop before a diverged step is logged, checkpointed or exported.

    Both values are global (all-reduced), so every rank stops at the same step. Checkpoints are
    only pruned when a new one is saved, so the last good one stays.
    """
    step, loss, grad_norm = record["step"], record["loss"], record["grad_norm"]
    if math.isfinite(loss) and math.isfinite(grad_norm):
        return
    step_log.close()
    latest = fsdp.latest_checkpoint(ckpt_root)
    kept = f"the last good checkpoint {latest} is kept" if latest else "no checkpoint was saved before it"
    raise TrainingDiverged(
        f"training diverged at step {step}: loss {loss}, grad norm {grad_norm}; {kept} and nothing of this "
        f"step is saved. Lower train.lr and start afresh (delete {ckpt_root}: a resume keeps the saved schedule)."
    )
