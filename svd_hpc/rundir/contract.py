"""The contract between a task, its batch script and the launcher: the one table of exit codes, and how
a running task is asked to stop.

The batch script (slurm script rendering) requeues a job that exits EXIT_STOPPED and reads the others as
the task's cause of failure (rundir/failures.py); it asks a multi-process task to stop by creating stop_request_path.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .layout import RunDir

EXIT_USER_ERROR = 2  # the launcher: a config, input or cluster refusal the user can fix
EXIT_USAGE = 2  # a task: its stage, index or config is wrong; running it again fails the same way
EXIT_TRANSIENT = 69  # a collective or the GPU failed; a retry on another node may succeed (EX_UNAVAILABLE)
EXIT_ENGINE_FAILED = 70  # the engine hung or its process died; running the task again resumes it
EXIT_STORAGE = 74  # the run directory took no write (full, read-only); resume once it does (EX_IOERR)
EXIT_STOPPED = 75  # stopped with a checkpoint on request; running the task again resumes (EX_TEMPFAIL)
EXIT_WRONG_DEVICE = 78  # the job has GPUs that this install cannot use; fix the install, no retry (EX_CONFIG)
STOP_REQUEST = "stop-requested"


def stop_request_path(run: RunDir, stage: str) -> Path:
    """The file by which the batch script asks a running task of `stage` to checkpoint and stop."""
    return run.stage_dir(stage) / STOP_REQUEST
