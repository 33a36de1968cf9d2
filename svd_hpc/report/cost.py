"""What a run cost, per stage: task and GPU hours (SLURM accounting, else the done markers),
tokens generated, samples and judge calls."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..config import STAGE_NAMES, RunConfig
from ..rundir.layout import RunDir, split_stage
from ..slurm import commands as slurm
from .section import Section


def _shard_totals(run: RunDir, stage: str, columns: list[str]) -> dict[str, int]:
    """Sums of `columns`, and "rows", over a stage's shards; empty when none is readable."""
    totals: dict[str, int] = {}
    for path in sorted(run.stage_dir(stage).glob("shard-*.parquet")):
        try:
            table = pq.read_table(path, columns=columns)
        except (OSError, KeyError, pa.ArrowInvalid):
            continue
        totals["rows"] = totals.get("rows", 0) + table.num_rows
        for column in columns:
            totals[column] = totals.get(column, 0) + (pc.sum(table[column]).as_py() or 0)
    return totals


def sacct_seconds(job_ids: list[str]) -> dict[str, tuple[float, float]] | None:
    """Job id -> (elapsed seconds, GPU seconds) over all its tasks from sacct; None without accounting."""
    rows = slurm.sacct(job_ids, ["JobID", "ElapsedRaw", "AllocTRES"])
    if rows is None:
        return None
    out: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for parts in rows:
        if len(parts) < 3 or "[" in parts[0] or not parts[1].isdigit():
            continue  # a pending array range has no elapsed time yet
        gpus = slurm.tres_gpus(parts[2])
        entry = out[parts[0].split("_")[0].split(".")[0]]
        entry[0] += int(parts[1])
        entry[1] += int(parts[1]) * gpus
    return {job: (e[0], e[1]) for job, e in out.items()}


def cost_section(run: RunDir, cfg: RunConfig, table: pa.Table | None) -> Section:
    plan = run.load_json(run.plan_path, default=[]) or []
    stages = [s["name"] for s in plan] or list(STAGE_NAMES)
    section = Section(
        "Cost per stage",
        ["stage", "tasks done", "task hours", "GPU hours", "tokens generated", "samples", "judge calls"],
    )
    subs = run.submissions() if run.jobs_path.is_file() else []
    accounting = sacct_seconds(sorted({str(s["job_id"]) for s in subs}))
    tokens, samples, judges = {}, {}, {}
    for stage in stages:  # "generate", or "round-R/generate" in a run of several rounds
        kind = split_stage(stage)[1]
        if kind == "generate":
            generated = _shard_totals(run, stage, ["completion_tokens"])
            tokens[stage], samples[stage] = generated.get("completion_tokens"), generated.get("rows")
        elif kind == "verify":
            judged = _shard_totals(run, stage, ["judge_completion_tokens", "judge_samples"])
            tokens[stage] = judged.get("judge_completion_tokens")
            samples[stage] = judges[stage] = judged.get("judge_samples")
    if table is not None:
        for stage, model in (("eval_base", "base"), ("eval_trained", "trained")):
            rows = [
                r
                for r in table.select(["model", "mode", "completion_tokens", "samples"]).to_pylist()
                if r["model"] == model
            ]
            if rows:
                tokens[stage] = sum(r["completion_tokens"] for r in rows)
                samples[stage] = sum(r["samples"] for r in rows)
                # UQ-TTC samples are the candidates plus the judges' completions
                judges[stage] = sum(r["samples"] - cfg.eval.uq_ttc_candidates for r in rows if r["mode"] == "uq_ttc")
    if "select_eval" in stages:  # train.select: the selection checkpoints' answers, from their task summaries
        summaries = [json.loads(p.read_text()) for p in run.stage_dir("select_eval").glob("step-*/*/seed-*.json")]
        if summaries:
            tokens["select_eval"] = sum(s["completion_tokens"] for s in summaries)
            samples["select_eval"] = sum(s["samples"] for s in summaries)
    for stage in stages:
        markers = sorted((run.stage_dir(stage) / "done").glob("*"))
        hours, gpu = "—", "—"
        if accounting is not None:
            ids = {str(s["job_id"]) for s in subs if s["stage"] == stage}
            if ids:
                hours = f"{sum(accounting.get(j, (0, 0))[0] for j in ids) / 3600:.2f}"
                gpu = f"{sum(accounting.get(j, (0, 0))[1] for j in ids) / 3600:.2f}"
        else:
            seconds = [_marker_seconds(m) for m in markers]
            if any(s is not None for s in seconds):
                hours = f"{sum(s or 0 for s in seconds) / 3600:.3f}"
        section.rows.append(
            [stage, str(len(markers)), hours, gpu]
            + [f"{d[stage]:,}" if d.get(stage) is not None else "—" for d in (tokens, samples, judges)]
        )
    section.note = (
        "Task and GPU hours from sacct (elapsed × allocated GPUs, all tasks)."
        if accounting is not None
        else "No SLURM accounting for this run: task hours are the seconds the tasks recorded in their done markers."
    )
    return section


def _marker_seconds(path: Path) -> float | None:
    try:
        value = json.loads(path.read_text()).get("seconds")
    except (OSError, ValueError, AttributeError):
        return None
    return float(value) if isinstance(value, (int, float)) else None
