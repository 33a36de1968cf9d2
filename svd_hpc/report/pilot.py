"""The report's "Pilot: projected vs actual" table: pilot.json beside what the run recorded."""

from __future__ import annotations

from ..rundir.layout import RunDir
from .cost import sacct_seconds
from .section import Section


def actual_task_seconds(run: RunDir) -> dict[str, float]:
    """Process seconds of all tasks per stage: sacct on SLURM, the local scheduler's stage timings here."""
    subs = run.submissions() if run.jobs_path.is_file() else []
    accounting = sacct_seconds(sorted({str(s["job_id"]) for s in subs})) if subs else None
    if accounting is not None:
        out: dict[str, float] = {}
        for sub in subs:
            out[sub["stage"]] = out.get(sub["stage"], 0.0) + accounting.get(str(sub["job_id"]), (0.0, 0.0))[0]
        return out
    return run.load_json(run.root / "logs" / "local_timings.json", default={}) or {}


def pilot_section(run: RunDir) -> Section | None:
    """None when the run had no pilot."""
    projected = run.load_json(run.pilot_result_path)
    if not projected:
        return None
    reused = (run.load_json(run.pilot_dir.root / "reused.json", default={}) or {}).get("questions", 0)
    actual = actual_task_seconds(run)
    stats = run.load_json(run.stage_dir("merge") / "stats.json", default={}) or {}
    section = Section("Pilot: projected vs actual", ["quantity", "projected", "actual", "actual / projected"])

    def row(label: str, want: float, got: float | None, fmt: str) -> None:
        ratio = f"{got / want:.2f}" if got is not None and want else "—"
        section.rows.append([label, format(want, fmt), "—" if got is None else format(got, fmt), ratio])

    total_p = total_a = 0.0
    for stage in ("generate", "verify"):
        p = projected["stages"][stage]
        want = p["task_hours"] * 3600
        if stage == "generate":  # the questions the pilot already generated were not generated again
            want -= reused * p["per_question_s"]
        total_p += want
        total_a += actual.get(stage, 0.0)
        row(f"{stage} task seconds", want, actual.get(stage), ",.0f")
    if all(stage in actual for stage in ("generate", "verify")):
        row("generate + verify task seconds", total_p, total_a, ",.0f")
    if "train" in projected["stages"]:  # the run's train job against the pilot's timed steps
        row("train task seconds", projected["stages"]["train"]["task_hours"] * 3600, actual.get("train"), ",.0f")
    kept = projected["kept"]
    got = stats.get("overall", {}).get("kept")
    row(f"kept (SFT) rows, interval {kept['low']}–{kept['high']}", kept["expected"], got, ",.0f")
    section.note = (
        f"Projected by a pilot of {projected['pilot']['questions']} questions (RUN_DIR/pilot.json)"
        + (f"; {reused} of its questions were reused, not generated again" if reused else "")
        + ". Actual: sacct elapsed time on SLURM, else the local scheduler's stage time."
    )
    return section
