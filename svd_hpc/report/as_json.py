"""The report for programs (`python -m svd_hpc.launch report RUN_DIR --json`): docs/schema/report.v1.json.

Computed from the records as report.md is (the scores by the scoring code, the funnel from
merge/stats.json, task seconds from the done markers, retries from the batch shells' files), and
nothing is written: a program may ask while the run is live.
"""

from __future__ import annotations

import json
import time

from ..eval.scores import domains_of, overlapped, read_eval, score, scores_json
from ..rundir import planfile
from ..rundir.failures import read_retries
from ..rundir.layout import RunDir, stopped_round
from .rounds import rounds_ran

REPORT_SCHEMA = "svd_hpc.report/1"  # a change that breaks a reader bumps the number


def _marker(path) -> dict:
    try:
        marker = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return marker if isinstance(marker, dict) else {}


def _scores(view: RunDir, cfg) -> dict | None:
    table = read_eval(view)
    return scores_json(score(table, domains_of(cfg, view), overlapped(view))) if table is not None else None


def _stages(run: RunDir) -> list[dict]:
    """Per stage of the plan: tasks, done, the seconds their done markers record, skipped items, retries."""
    out = []
    for stage in planfile.plan_from_json(run.load_json(run.plan_path, default=[])):
        markers = [_marker(run.done_marker(stage.name, i)) for i in range(stage.array_size)]
        done = [m for i, m in enumerate(markers) if run.is_done(stage.name, i)]
        seconds = [float(m["seconds"]) for m in done if isinstance(m.get("seconds"), int | float)]
        retries = read_retries(run.stage_dir(stage.name), stage.name)
        out.append(
            {
                "name": stage.name,
                "tasks": stage.array_size,
                "done": len(done),
                "task_seconds": sum(seconds) if seconds else None,
                "skipped_items": sum(int(m.get("skipped") or 0) for m in done),
                "retries": [
                    {"index": r.index, "life": r.life, "cause": r.cause, "node": r.node, "exit": r.exit}
                    for r in retries
                ],
            }
        )
    return out


def report_json(run: RunDir) -> dict:
    """The scores, funnel, stages and rounds of a run as one JSON object."""
    cfg = run.load_config()
    multi = cfg.rounds > 1
    stages = _stages(run)
    rounds, stopped = [], None
    if multi:
        stopped = stopped_round(run, cfg.rounds)
        for view in rounds_ran(run, cfg):
            rounds.append(
                {
                    "round": view.number,
                    "scores": _scores(view, view.load_config()),
                    "funnel": view.load_json(view.stage_dir("merge") / "stats.json"),
                }
            )
    return {
        "schema": REPORT_SCHEMA,
        "run_dir": str(run.root),
        "name": cfg.name,
        "model": cfg.model.path,
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "complete": (run.root / "report.md").is_file() and all(s["done"] == s["tasks"] for s in stages),
        # a multi-round run has its scores and funnels per round; its top level holds none
        "scores": None if multi else _scores(run, cfg),
        "funnel": None if multi else run.load_json(run.stage_dir("merge") / "stats.json"),
        "stages": stages,
        "rounds": rounds,
        "stopped": {"round": stopped[0], "reason": stopped[1]} if stopped else None,
    }
