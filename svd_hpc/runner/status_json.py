"""`status --json`: what `status` shows, for programs (docs/schema/status.v1.json, docs/JSON.md)."""

from __future__ import annotations

import time

from ..publish import hub
from ..rundir import progress
from ..rundir.failures import Retry
from ..rundir.layout import RunDir
from .eta import projected_end, stage_estimate
from .stage_status import StageStatus
from .status import ended, load_plan, targets

STATUS_SCHEMA = "svd_hpc.status/1"  # docs/schema/status.v1.json; a change that breaks a reader bumps the number


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(epoch))


def _retry_json(retry: Retry) -> dict:
    return {
        "index": retry.index,
        "life": retry.life,
        "cause": retry.cause,
        "node": retry.node,
        "exit": retry.exit,
        "excluded": retry.excluded or None,
    }


def _stage_json(st: StageStatus, now: float) -> dict:
    est = stage_estimate(st, now)
    running = []
    for index in st.running:
        record = st.progress.get(index)
        running.append(
            {
                "index": index,
                "running_s": st.running_s.get(index),
                "progress": None
                if record is None
                else {
                    "done": record["done"],
                    "total": record["total"],
                    "unit": record["unit"],
                    "fraction": progress.fraction(record),
                    "tokens_per_s": progress.tokens_per_s(record),
                    "eta_s": progress.remaining_s(record, now),
                },
            }
        )
    return {
        "name": st.name,
        "state": st.state,
        "tasks": st.size,
        "counts": {
            "done": len(st.done),
            "running": len(st.running),
            "pending": len(st.pending),
            "failed": len(st.failed),
            "idle": st.size - len(st.done) - len(st.running) - len(st.pending) - len(st.failed),
        },
        "task_states": [{"index": i, "state": st.task_state(i)} for i in range(st.size)],
        "job_ids": [] if st.local else list(st.job_ids),
        "elapsed_s": st.elapsed_s,
        "eta_s": 0.0 if st.complete else est.left,
        "typical_task_s": est.typical,
        "running": running,
        "failed": [
            {
                "index": task.index,
                "job_id": task.job_id,
                "state": task.state,
                "log": str(task.log) if task.log else None,
                "not_retried": st.not_retried.get(task.index),
            }
            for task in st.failed
        ],
        "skipped_items": st.skipped,
        "skip_reasons": dict(st.skip_reasons),
        "retries": [_retry_json(r) for r in st.retries],
    }


def status_json(run: RunDir, statuses: list[StageStatus], now: float | None = None) -> dict:
    """What `status` shows, for programs: the schema of docs/schema/status.v1.json."""
    now = time.time() if now is None else now
    if all(st.complete for st in statuses):
        state, end = "complete", None
    elif ended(statuses):
        state, end = "stopped", None  # nothing runs or waits: the rest starts only on resume
    else:
        state = "running"
        epoch, unmeasured = projected_end(load_plan(run), statuses, now)
        known = not (unmeasured and epoch - now < 1)
        end = {
            "known": known,
            "epoch": epoch if known else None,
            "at": _iso(epoch) if known else None,
            "in_s": epoch - now if known else None,
            "lower_bound": bool(unmeasured),
            "unmeasured": unmeasured,
        }
    return {
        "schema": STATUS_SCHEMA,
        "run_dir": str(run.root),
        "generated_at": _iso(now),
        "scheduler": "local" if any(st.local for st in statuses) else "slurm",
        "state": state,
        "projected_end": end,
        "stages": [_stage_json(st, now) for st in statuses],
        "hub": hub.status_lines(run),
        "targets": targets(run, statuses, now),
    }
