"""The run report: did self-verified distillation pay off, what did the merge keep, what did it cost.

Run as: python -m svd_hpc.launch report RUN_DIR   (also the last stage of every run)

Reads only the run directory (plus `sacct` when jobs.json lists SLURM jobs) and works with
whatever exists: a run without eval still gets its funnel and costs. Every number is computed
here from the records: pass@1 per benchmark and per domain for the base model, the trained (SVD)
model and the UQ-TTC baseline, as the mean over eval seeds with its standard error; deltas
against the base, with a paired bootstrap interval over questions (the same question and seed
answered by both), and per domain both the pooled delta and the paper's domain figure, the sum of
its benchmarks' deltas; pass@k (unbiased) when a question has several samples (one per seed); the
rows each benchmark left out; the merge funnel from merge/stats.json; when the seeds carry known
answers, the judges' precision and recall against them (report/judges.py); tokens, samples and task
hours per stage.
Writes report.md, report.png (pass@1 with error bars) and eval/summary.json (the scores as JSON), and
prints the same tables.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

from rich.console import Console

from ..eval.scores import CLEAN, VARIANTS, EvalScores, domains_of, overlapped, read_eval, score, scores_json
from ..publish import cards as hub_cards
from ..publish import hub, tracking
from ..report.cost import cost_section
from ..report.domains import domains_section
from ..report.eval_tables import benchmarks_section, domain_gains_section, pass1_section, pass_k_section
from ..report.judges import judges_section
from ..report.pilot import pilot_section
from ..report.retries import retries_section
from ..report.rounds import build_rounds, rounds_ran
from ..report.section import Section
from ..report.selection import selection_section
from ..report.stages import funnel_section, skipped_section, votes_section
from ..rundir.atomic import atomic_path, atomic_write_json, atomic_write_text
from ..rundir.layout import RoundDir, RunDir


def chart(scores: EvalScores | None, path: Path) -> None:
    """pass@1 per benchmark, one bar per variant with its standard error (a placeholder without eval)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    benches = (
        sorted({g for _, g in scores.pass1 if not g.startswith("domain:") and not g.endswith(CLEAN)}) if scores else []
    )
    fig = Figure(figsize=(max(6, 1.6 * len(benches) + 2), 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if not benches:
        ax.text(0.5, 0.5, "no eval results yet", ha="center", va="center")
        ax.set_axis_off()
    width = 0.8 / len(VARIANTS)
    for j, variant in enumerate(VARIANTS if benches else ()):
        xs = [i + (j - (len(VARIANTS) - 1) / 2) * width for i, b in enumerate(benches) if (variant, b) in scores.pass1]
        values = [scores.pass1[(variant, b)] for b in benches if (variant, b) in scores.pass1]
        if values:
            ax.bar(
                xs,
                [100 * m for m, _ in values],
                width,
                yerr=[100 * (e or 0) for _, e in values],
                capsize=3,
                label=variant,
            )
    if benches:
        ax.set_xticks(range(len(benches)), benches, rotation=20, ha="right")
        ax.set_ylabel("pass@1 (%)")
        ax.set_title("pass@1: mean over seeds ± standard error")
        ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)


def build(run: RunDir, console: Console | None = None) -> Path:
    """Write <run>/report.md and <run>/report.png from the run's records, print the tables; returns report.md."""
    cfg = run.load_config()
    if cfg.rounds > 1 and not isinstance(run, RoundDir):  # each round's own report, then the rounds side by side
        quiet = Console(file=io.StringIO())
        for view in rounds_ran(run, cfg):
            build(view, console=quiet)
        return build_rounds(run, cfg, console)
    table = read_eval(run)
    domain_of = domains_of(cfg, run)
    scores = score(table, domain_of, overlapped(run)) if table is not None else None
    sections = []
    if scores is not None:
        sections.append(pass1_section(scores, domain_of))
        sections += [s for s in [domain_gains_section(scores)] if s is not None]
        if scores.pass_k:
            sections.append(pass_k_section(scores))
    else:
        sections.append(Section("pass@1 (%)", [], note="No eval results yet."))
    if scores is not None:
        sections.append(benchmarks_section(run))
    sections += [s for s in [selection_section(run)] if s is not None]
    sections += [s for s in [domains_section(run, cfg, scores)] if s is not None]
    sections += [skipped_section(run, table), funnel_section(run), votes_section(run)]
    sections += [s for s in [judges_section(run, cfg.seeds.answer_grader)] if s is not None]
    sections.append(cost_section(run, cfg, table))
    sections.append(retries_section(run))
    sections += [s for s in [pilot_section(run)] if s is not None]
    lines = [
        f"# Report: {cfg.name}",
        "",
        (
            f"Run directory `{run.root}`, built {time.strftime('%Y-%m-%d %H:%M:%S')}. Model `{cfg.model.path}`; "
            "every number below is computed from the run's records."
        ),
        "",
    ]
    if scores is not None:
        lines += ["![pass@1 per benchmark](report.png)", ""]
    lines += [s.markdown() for s in sections]
    lines += sandbox_notes(run)
    lines += hub.report_lines(run)
    if (run.stage_dir("merge") / "funnel.png").is_file():
        lines += ["![merge funnel](merge/funnel.png)", ""]
    chart(scores, run.root / "report.png")
    if scores is not None:
        atomic_write_json(run.stage_dir("eval") / "summary.json", scores_json(scores))
    path = run.root / "report.md"
    atomic_write_text(path, "\n".join(lines))
    console = console or Console()
    for section in sections:
        if section.rows:
            console.print(section.rich())
        else:
            console.print(f"[bold]{section.title}[/bold]: {section.note}")
    console.print(f"report: {path}")
    return path


def sandbox_notes(run: RunDir) -> list[str]:
    """State the isolation generated code was graded in, and say so when it had none."""
    used: dict[str, set[str]] = {}
    exposed, memory = set(), set()
    for path in run.stage_dir("eval").glob("*/*/seed-*.json"):
        try:
            sandbox = json.loads(path.read_text()).get("sandbox") or {}
        except (OSError, ValueError):
            continue
        if sandbox:
            used.setdefault(sandbox.get("isolation", "unknown"), set()).add(path.parent.name)
            memory.add(sandbox.get("total_memory", ""))
        if sandbox and not sandbox.get("network_isolated", True):
            exposed.add(path.parent.name)
    if not used:
        return []
    modes = "; ".join(f"`{mode}` for {', '.join(sorted(names))}" for mode, names in sorted(used.items()))
    lines = [
        f"Sandbox: generated code was run with isolation {modes}. Total memory: "
        f"{' / '.join(sorted(m for m in memory if m)) or 'not recorded'}.",
        "",
    ]
    if exposed:
        lines += [
            f"Note: code of {', '.join(sorted(exposed))} was graded without isolation (network access, "
            "our file permissions), as eval.allow_unisolated_code allowed.",
            "",
        ]
    return lines


def run_task(run: RunDir, index: int) -> dict:
    """Stage body of `report` (a single task); then the eval table goes to the hub and the trackers."""
    path = build(run)
    cfg = run.load_config()
    hub.publish_eval(run, cfg)
    tracking.log_eval(run, cfg, hub_cards.summary_of(run))
    return {"report": str(path)}
