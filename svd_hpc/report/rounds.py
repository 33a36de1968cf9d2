"""The report of a multi-round run: pass@1, the merge funnel and the cost per round, why the chain stopped.

RUN_DIR/report.md holds the tables across rounds and rounds.png (pass@1 per round with standard
errors, task hours per round); each round's own report (the single-run report of its folder) is
RUN_DIR/round-R/report.md.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from ..config import RunConfig
from ..eval.scores import read_eval, score
from ..rundir.atomic import atomic_path, atomic_write_text
from ..rundir.layout import RoundDir, RunDir, stopped_round
from .cost import _marker_seconds, _shard_totals, cost_section
from .section import Section
from .stages import FUNNEL_ORDER, VOTE_KINDS


def rounds_ran(run: RunDir, cfg: RunConfig) -> list[RoundDir]:
    """The rounds that ran (their seeds stage wrote the round's plan; a stopped round has none)."""
    return [run.round_dir(n) for n in range(1, cfg.rounds + 1) if run.round_dir(n).plan_path.is_file()]


def pass1_per_round(run: RunDir, cfg: RunConfig) -> dict[str, dict[str, tuple[float, float | None]]]:
    """Row label (base, round 1, ...) -> benchmark -> (pass@1 mean over seeds, standard error)."""
    out: dict[str, dict] = {}
    for view in rounds_ran(run, cfg):
        table = read_eval(view)
        if table is None:
            continue
        pass1 = score(table, {}).pass1
        if view.number == 1:
            out["base"] = {b: v for (variant, b), v in pass1.items() if variant == "base" and ":" not in b}
        out[f"round {view.number}"] = {b: v for (variant, b), v in pass1.items() if variant == "SVD" and ":" not in b}
    return {label: scores for label, scores in out.items() if scores}


def pass1_section(scores: dict[str, dict]) -> Section:
    benches = sorted({b for row in scores.values() for b in row})
    section = Section("pass@1 per round (%)", ["model", *benches])
    for label, row in scores.items():
        cells = [
            f"{100 * row[b][0]:.1f} ± {100 * row[b][1]:.1f}"
            if b in row and row[b][1] is not None
            else (f"{100 * row[b][0]:.1f}" if b in row else "—")
            for b in benches
        ]
        section.rows.append([label, *cells])
    section.note = "Mean over eval seeds ± standard error; round R is the model round R trained."
    if not section.rows:
        section.note = "No eval results yet."
    return section


def funnel_section(run: RunDir, cfg: RunConfig) -> Section:
    """Each round's merge funnel side by side: does the judge get stricter as the model improves?"""
    views = rounds_ran(run, cfg)
    section = Section("Merge funnel per round", ["count", *(f"round {v.number}" for v in views)])
    overall = {}
    for view in views:
        stats = view.load_json(view.stage_dir("merge") / "stats.json", default={}) or {}
        overall[view.number] = stats.get("overall") if isinstance(stats.get("overall"), dict) else {}
    names = {n for o in overall.values() for n, v in o.items() if isinstance(v, int) and not n.startswith(VOTE_KINDS)}
    order = {name: i for i, name in enumerate(FUNNEL_ORDER)}
    for name in sorted(names, key=lambda n: (order.get(n, len(order)), n)):
        cells = []
        for view in views:
            counts = overall[view.number]
            value, candidates = counts.get(name), counts.get("candidates")
            share = (
                f" ({100 * value / candidates:.0f}%)" if value is not None and candidates and name != "seeds" else ""
            )
            cells.append("—" if value is None else f"{value:,}{share}")
        section.rows.append([name, *cells])
    section.note = "Percentages are of the round's candidates."
    if not section.rows:
        section.note = "No merge statistics yet."
    return section


def round_cost(run: RunDir, cfg: RunConfig, view: RoundDir) -> dict:
    """Task hours (done markers), GPU hours (those × the GPUs each stage asked for) and tokens of one round."""
    plan = view.load_json(view.plan_path, default=[]) or []
    seconds = gpu_seconds = 0.0
    for stage in plan:
        res = stage["resources"]
        gpus = (res.get("gpus_per_node") or 0) * (res.get("nodes") or 1)
        for marker in (view.stage_dir(stage["name"]) / "done").glob("*"):
            s = _marker_seconds(marker) or 0.0
            seconds, gpu_seconds = seconds + s, gpu_seconds + s * gpus
    generated = _shard_totals(view, "generate", ["completion_tokens"]).get("completion_tokens", 0)
    judged = _shard_totals(view, "verify", ["judge_completion_tokens"]).get("judge_completion_tokens", 0)
    table = read_eval(view)
    evaluated = sum(table.column("completion_tokens").to_pylist()) if table is not None else 0
    return {"hours": seconds / 3600, "gpu_hours": gpu_seconds / 3600, "tokens": generated + judged + evaluated}


def cost_per_round_section(costs: dict[int, dict]) -> Section:
    section = Section("Cost per round", ["round", "task hours", "GPU hours", "tokens generated"])
    for number, c in costs.items():
        section.rows.append([str(number), f"{c['hours']:.3f}", f"{c['gpu_hours']:.3f}", f"{c['tokens']:,}"])
    section.note = (
        "Task hours are the seconds every task recorded in its done marker (round 1 includes the base model's "
        "eval); GPU hours multiply them by the GPUs each stage asked for; tokens: candidates, judges and eval."
    )
    return section


def chart(scores: dict[str, dict], costs: dict[int, dict], path: Path) -> None:
    """pass@1 per round (one line per benchmark, error bars) beside task hours per round."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4))
    FigureCanvasAgg(fig)
    ax, ax_cost = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    labels = list(scores)
    for bench in sorted({b for row in scores.values() for b in row}):
        xs = [i for i, label in enumerate(labels) if bench in scores[label]]
        ax.errorbar(
            xs,
            [100 * scores[labels[i]][bench][0] for i in xs],
            yerr=[100 * (scores[labels[i]][bench][1] or 0) for i in xs],
            capsize=3,
            marker="o",
            label=bench,
        )
    ax.set_xticks(range(len(labels)), labels)
    ax.set_ylabel("pass@1 (%)")
    ax.set_title("pass@1 per round: mean over seeds ± standard error")
    if labels:
        ax.legend(fontsize=8)
    ax_cost.bar([f"round {n}" for n in costs], [c["hours"] for c in costs.values()])
    ax_cost.set_ylabel("task hours")
    ax_cost.set_title("cost per round")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)


def build_rounds(run: RunDir, cfg: RunConfig, console: Console | None = None) -> Path:
    """RUN_DIR/report.md of a multi-round run, from the rounds' records (build.build writes each round's own)."""
    scores = pass1_per_round(run, cfg)
    costs = {view.number: round_cost(run, cfg, view) for view in rounds_ran(run, cfg)}
    sections = [
        pass1_section(scores),
        funnel_section(run, cfg),
        cost_per_round_section(costs),
        cost_section(run, cfg, None),
    ]
    stopped = stopped_round(run, cfg.rounds)
    ran = [v.number for v in rounds_ran(run, cfg)]
    if stopped:
        status = f"The chain stopped before round {stopped[0]} of {cfg.rounds}: {stopped[1]}."
    else:
        status = f"Rounds run: {len(ran)} of {cfg.rounds}."
    lines = [
        f"# Report: {cfg.name} ({cfg.rounds} rounds)",
        "",
        f"Run directory `{run.root}`. Base model `{cfg.model.path}`; round questions: "
        f"`iteration.seeds: {cfg.iteration.seeds}`; each round trains from `{cfg.iteration.train_from}`. {status}",
        "",
        "![pass@1 and cost per round](rounds.png)",
        "",
    ]
    lines += [s.markdown() for s in sections]
    lines += ["Each round's own report: " + ", ".join(f"[round {n}]({f'round-{n}/report.md'})" for n in ran), ""]
    chart(scores, costs, run.root / "rounds.png")
    path = run.root / "report.md"
    atomic_write_text(path, "\n".join(lines))
    console = console or Console()
    console.print(status)
    for section in sections:
        console.print(section.rich() if section.rows else f"[bold]{section.title}[/bold]: {section.note}")
    console.print(f"report: {path}")
    return path
