"""The report's retries table: each task the batch shell retried, why and where (rundir/failures.py)."""

from __future__ import annotations

from ..rundir.failures import final_failures, read_retries
from ..rundir.layout import RunDir
from .section import Section


def retries_section(run: RunDir) -> Section:
    """One row per retry of any task of the plan, then one per task that failed and was not retried."""
    rows = []
    for stage in (entry["name"] for entry in run.load_json(run.plan_path, default=[])):
        for retry in read_retries(run.stage_dir(stage), stage):
            rows.append([stage, str(retry.index), str(retry.life + 1), retry.cause, retry.node, retry.excluded or "—"])
        for index, event in final_failures(run.stage_dir(stage)).items():
            cause = f"{event.get('cause', '')} (not retried: {event.get('why', '')})".strip()
            rows.append([stage, str(index), str(event.get("life", 0) + 1), cause, event.get("node", "?"), "—"])
    return Section(
        "Retries",
        ["stage", "task", "life that failed", "cause", "node", "kept off"],
        rows,
        note="" if rows else "Every task ran once.",
    )
