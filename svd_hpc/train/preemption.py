"""Stopping training on request: the stop flag checked at step boundaries, and the exit after the stop checkpoint.

The batch script owns the warning signal and the requeue (slurm/script.py); on SLURM's warning it
creates <run>/train/stop-requested, which rank 0 checks at every step boundary. SIGUSR2/SIGTERM
do the same. Every rank finishes its step, all agree, save a checkpoint and exit EXIT_STOPPED.
"""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

import torch.distributed as dist

from ..rundir.contract import EXIT_STOPPED
from . import fsdp

log = logging.getLogger("svd_hpc")

# Preemption drills: rank 0 raises SIGUSR2 on itself after finishing this many steps.
SIGNAL_AT_STEP_ENV = "SVD_HPC_TRAIN_SIGNAL_AT_STEP"


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


def drill_step() -> int:
    """The step after which a preemption drill raises SIGUSR2 (0: no drill)."""
    return int(os.environ.get(SIGNAL_AT_STEP_ENV, "0"))


def exit_stopped(step: int, d: fsdp.Dist, stop: StopFlag) -> None:
    """After the stop checkpoint: every rank exits EXIT_STOPPED; under SLURM the batch script requeues."""
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
    raise SystemExit(EXIT_STOPPED)
