"""The pilot's timed training steps: a few real optimiser steps of the configured model and train setup.

Run by the pilot as its `pilot_train` task, exactly as train runs (torchrun here, srun on SLURM,
the configured processes per node), on the pilot's SFT set. Inputs, model, optimiser and the step
are the train stage's own (inputs.py, model.py, train.optimiser_step); only the packs differ: the
pilot's few samples would pack into short sequences, so every pack here is filled to exactly
train.max_seq_len with the samples repeated in a seeded order (the last one cut at the boundary),
as a large set packs nearly full. Nothing is checkpointed or exported. Rank 0 returns each step's
seconds and tokens for the done marker; the first step warms up and is not counted (projection.py).
"""

from __future__ import annotations

import logging

import numpy as np
import torch.distributed as dist

from ..rundir.layout import RunDir
from ..train import fsdp, sft_data
from ..train.inputs import prepare_data
from ..train.model import build_model, build_optimizer
from ..train.preemption import StopFlag
from .train import Trainer, optimiser_step

log = logging.getLogger("svd_hpc")

STAGE = "pilot_train"


def fill(data: sft_data.TokenizedSet, max_seq_len: int, packs: int, seed: int) -> tuple[sft_data.TokenizedSet, list]:
    """`packs` packs of exactly max_seq_len tokens from data's samples, cycled in a seeded order.

    Returns the pieces as a TokenizedSet and each pack's piece indices. A sample never exceeds
    max_seq_len (prepare_data truncates or drops), so every pack opens with a whole sample.
    """
    order = np.random.default_rng(seed).permutation(len(data))
    ids, labels, lengths, rows = [], [], [], []
    at = 0  # position in the cycled order
    for _ in range(packs):
        row, room = [], max_seq_len
        while room:
            sample_ids, sample_labels = data.sample(int(order[at % len(order)]))
            at += 1
            take = min(room, len(sample_ids))
            piece_labels = sample_labels[:take].copy()
            if take < len(sample_ids):
                piece_labels[-1] = sft_data.IGNORE  # its target was cut off
            row.append(len(lengths))
            ids.append(sample_ids[:take])
            labels.append(piece_labels)
            lengths.append(take)
            room -= take
        rows.append(row)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    pieces = sft_data.TokenizedSet(np.concatenate(ids), np.concatenate(labels), offsets, dict(data.stats))
    return pieces, rows


class FullPacks(sft_data.PackedStream):
    """A stream whose every pack holds exactly max_seq_len tokens (fill), the same packs each epoch."""

    def __init__(self, data: sft_data.TokenizedSet, max_seq_len: int, seed: int, pad_id: int, packs: int):
        pieces, rows = fill(data, max_seq_len, packs, seed)
        super().__init__(pieces, max_seq_len, seed, pad_id)
        self._epochs = [rows]

    def epoch(self, e: int) -> list[list[int]]:
        return self._epochs[0]


def run_task(run: RunDir, index: int) -> dict | None:
    """train.steps (the pilot's count) timed optimiser steps on the pilot's SFT set; rank 0 returns them."""
    cfg = run.load_config()
    t = cfg.train
    dataset = run.stage_dir("merge") / "sft" / "train.parquet"
    sft_data.open_dataset(dataset)  # a pilot that kept nothing stops here, on every rank, with its reason
    owns_group = not dist.is_initialized()
    d = fsdp.init_distributed()
    try:
        inputs = prepare_data(cfg, d, dataset, run.stage_dir(STAGE))
        inputs.stream = FullPacks(inputs.stream.data, t.max_seq_len, t.seed, inputs.stream.pad_id, t.global_batch)
        model, _ = build_model(inputs.model_dir, t, d)
        optimizer, scheduler = build_optimizer(model, t)
        # optimiser_step never saves: the checkpoint folder stays unwritten
        trainer = Trainer(t, d, model, optimizer, scheduler, inputs, ckpt_root=run.stage_dir(STAGE) / "checkpoints")
        records = []
        never = StopFlag(None)  # not entered: a signal ends these few steps as it ends any process
        for step in range(t.steps):
            record, _ = optimiser_step(trainer, step, never, drill=False)
            records.append(record)
            if d.rank == 0:
                log.info(f"pilot train step {step + 1}/{t.steps}: {record['seconds']:.2f} s, {record['tokens']} tokens")
    finally:
        if owns_group and dist.is_initialized():
            dist.destroy_process_group()
    if d.rank != 0:
        return None
    return {
        "world_size": d.world_size,
        "device": d.device.type,
        "step_seconds": [r["seconds"] for r in records],
        "step_tokens": [r["tokens"] for r in records],
        "global_batch": t.global_batch,
        "max_seq_len": t.max_seq_len,
    }
