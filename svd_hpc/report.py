"""The run report: did self-verified distillation pay off, what did the merge keep, what did it cost.

Run as: python -m svd_hpc.launch report RUN_DIR   (also the last stage of every run)

Reads only the run directory (plus `sacct` when jobs.json lists SLURM jobs) and works with
whatever exists: a run without eval still gets its funnel and costs. Every number is computed
here from the records: pass@1 per benchmark and per domain for the base model, the trained (SVD)
model and the UQ-TTC baseline, as the mean over eval seeds with its standard error; deltas
against the base, with a paired bootstrap interval over questions (the same question and seed
answered by both); pass@k (unbiased) when a question has several samples (one per seed); the
rows each benchmark left out; the merge funnel from merge/stats.json; tokens, samples and task
hours per stage.
Writes report.md, report.png (pass@1 with error bars) and eval/summary.json (the scores as JSON), and
prints the same tables.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from rich.console import Console
from rich.table import Table as RichTable

from . import status
from .config import STAGE_NAMES, VERIFY_STAGES, RunConfig
from .engine import SKIP_KINDS, skip_kind
from .eval import benchmarks, scoring
from .records import EVAL, check_schema
from .rundir import RunDir, atomic_path, atomic_write_json, atomic_write_text

# (model, mode) of each column, in report order
VARIANTS = {"base": ("base", "direct"), "SVD": ("trained", "direct"), "UQ-TTC": ("base", "uq_ttc")}
Score = tuple[float, "float | None"]  # mean, standard error (None with a single seed)
FUNNEL_ORDER = [
    "seeds",
    "duplicate_questions",
    "candidates",
    "filtered",
    "skipped",
    *(f"skipped_{k}" for k in SKIP_KINDS),
    *(f"passed_{s}" for s in VERIFY_STAGES),
    "valid",
    "selected",
    "duplicate_solutions",
    "kept",
    "train",
    "validation",
]


@dataclass
class Section:
    """One table of the report, rendered to markdown and to the terminal alike."""

    title: str
    headers: list[str]
    rows: list[list[str]] = field(default_factory=list)
    note: str = ""

    def markdown(self) -> str:
        lines = [f"## {self.title}", ""]
        if not self.rows:
            return "\n".join(lines + [self.note or "Nothing recorded yet.", ""])
        lines.append("| " + " | ".join(self.headers) + " |")
        lines.append("| " + " | ".join(["---"] + ["---:"] * (len(self.headers) - 1)) + " |")
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        return "\n".join(lines + ([""] + [self.note] if self.note else []) + [""])

    def rich(self) -> RichTable:
        table = RichTable(title=self.title, caption=self.note or None)
        for i, header in enumerate(self.headers):
            table.add_column(header, justify="left" if i == 0 else "right")
        for row in self.rows:
            table.add_row(*row)
        return table


# ----------------------------------------------------------------------------- eval records


def read_eval(run: RunDir) -> pa.Table | None:
    """Every finished eval record of the run (EVAL schema), or None when there is none yet."""
    paths = sorted(run.stage_dir("eval").glob("*/*/seed-*.parquet"))
    tables = []
    for path in paths:
        table = pq.read_table(path)
        check_schema(table, EVAL, str(path))
        tables.append(table.select(EVAL.names).cast(EVAL))
    return pa.concat_tables(tables) if tables else None


def domains_of(cfg: RunConfig, run: RunDir) -> dict[str, str]:
    """Benchmark -> domain, from the config (presets resolved) and the eval summaries."""
    out = {}
    for path in run.stage_dir("eval").glob("*/*/seed-*.json"):
        try:
            summary = json.loads(path.read_text())
            out[summary["benchmark"]] = summary["domain"]
        except (OSError, ValueError, KeyError):
            continue
    for spec in cfg.eval.benchmarks:
        try:
            out[spec.name] = benchmarks.resolve(spec).domain
        except ValueError:
            out.setdefault(spec.name, "unknown")
    return out


@dataclass(frozen=True)
class PairedDelta:
    """variant − base over the (question, seed) pairs both answered, with its bootstrap interval."""

    mean: float
    low: float
    high: float
    questions: int
    pairs: int


@dataclass
class EvalScores:
    pass1: dict[tuple[str, str], Score]  # (variant, benchmark or "domain:<d>") -> score
    seeds: dict[tuple[str, str], int]  # 0: a domain whose benchmarks repeat a different number of times
    questions: dict[str, int]  # benchmark or "domain:<d>" -> distinct questions
    pass_k: dict[tuple[str, str], dict[int, float]]  # (variant, benchmark) -> {k: pass@k}
    deltas: dict[tuple[str, str], PairedDelta] = field(default_factory=dict)  # (SVD | UQ-TTC, group)


def paired_deltas(records: dict[tuple[str, str, str, int], bool], groups_of) -> dict[tuple[str, str], PairedDelta]:
    """SVD − base and UQ-TTC − base per group: per question, the mean over the seeds both answered of
    the paired difference; its mean over questions and a 95% paired bootstrap interval."""
    out = {}
    for variant in ("SVD", "UQ-TTC"):
        per_question: dict[str, dict[tuple[str, str], list[float]]] = defaultdict(lambda: defaultdict(list))
        for (name, bench, qid, seed), correct in records.items():
            if name != variant or ("base", bench, qid, seed) not in records:
                continue
            for group in groups_of(bench):
                per_question[group][(bench, qid)].append(float(correct) - float(records[("base", bench, qid, seed)]))
        for group, diffs in per_question.items():
            means = [sum(d) / len(d) for d in diffs.values()]
            low, high = scoring.paired_bootstrap_ci(means)
            out[(variant, group)] = PairedDelta(
                sum(means) / len(means), low, high, len(means), sum(len(d) for d in diffs.values())
            )
    return out


def score(table: pa.Table, domain_of: dict[str, str]) -> EvalScores:
    """pass@1 per seed, then mean ± stderr over seeds; domains pool their benchmarks' questions.

    A domain whose benchmarks repeat a different number of times (AIME26 once, HMMT ten times)
    weighs every question once: the mean over questions of each question's mean over its seeds,
    without a seed-level error (its seeds do not pool into one set).
    """
    correct: dict[tuple[str, str, int], list[bool]] = defaultdict(list)
    per_question: dict[tuple[str, str, str], list[bool]] = defaultdict(list)
    questions: dict[str, set] = defaultdict(set)
    records: dict[tuple[str, str, str, int], bool] = {}
    names = {v: k for k, v in VARIANTS.items()}
    groups_of = lambda bench: (bench, f"domain:{domain_of.get(bench, 'unknown')}")  # noqa: E731
    for row in table.select(["benchmark", "model", "mode", "seed", "question_id", "correct"]).to_pylist():
        variant = names.get((row["model"], row["mode"]))
        if variant is None:
            continue
        bench = row["benchmark"]
        for group in groups_of(bench):
            correct[(variant, group, row["seed"])].append(bool(row["correct"]))
            questions[group].add((bench, row["question_id"]))
        per_question[(variant, bench, row["question_id"])].append(bool(row["correct"]))
        records[(variant, bench, row["question_id"], row["seed"])] = bool(row["correct"])
    by_group: dict[tuple[str, str], list[float]] = defaultdict(list)
    for (variant, group, _seed), values in sorted(correct.items()):
        by_group[(variant, group)].append(sum(values) / len(values))
    pass1 = {key: scoring.mean_stderr(values) for key, values in by_group.items()}
    seeds = {key: len(values) for key, values in by_group.items()}
    seed_sets: dict[tuple[str, str], set] = defaultdict(set)  # (variant, domain) -> each benchmark's seeds
    for variant, group, seed in correct:
        if not group.startswith("domain:"):
            seed_sets[(variant, f"domain:{domain_of.get(group, 'unknown')}", group)].add(seed)
    for variant, domain in list(pass1):
        if not domain.startswith("domain:"):
            continue
        sets = {frozenset(v) for (var, dom, _b), v in seed_sets.items() if (var, dom) == (variant, domain)}
        if len(sets) > 1:
            means = [
                sum(v) / len(v)
                for (var, b, _q), v in per_question.items()
                if var == variant and f"domain:{domain_of.get(b, 'unknown')}" == domain
            ]
            pass1[(variant, domain)], seeds[(variant, domain)] = (sum(means) / len(means), None), 0
    counts: dict[tuple[str, str], list[tuple[int, int]]] = defaultdict(list)
    for (variant, bench, _q), values in per_question.items():
        counts[(variant, bench)].append((len(values), sum(values)))
    pass_k = {}
    for key, nc in counts.items():
        n = min(n for n, _ in nc)
        if n >= 2:
            pass_k[key] = {k: scoring.mean_pass_at_k(nc, k) for k in scoring.ks_for(n)}
    return EvalScores(
        pass1=pass1,
        seeds=seeds,
        questions={group: len(qs) for group, qs in questions.items()},
        pass_k=pass_k,
        deltas=paired_deltas(records, groups_of),
    )


def scores_json(scores: EvalScores) -> dict:
    """The scores for programs: eval/summary.json."""
    out: dict = defaultdict(dict)
    for (variant, group), (mean, err) in scores.pass1.items():
        out[group][variant] = {
            "pass_at_1": mean,
            "stderr": err,
            "seeds": scores.seeds[(variant, group)],
            "pass_at_k": {str(k): v for k, v in scores.pass_k.get((variant, group), {}).items()},
        }
    for (variant, group), d in scores.deltas.items():
        out[group].setdefault("delta", {})[variant] = {
            "vs": "base",
            "mean": d.mean,
            "stderr": scoring.delta(scores.pass1[("base", group)], scores.pass1[(variant, group)])[1],
            "ci95": [d.low, d.high],
            "ci_method": "paired bootstrap over questions, 10000 resamples",
            "paired_questions": d.questions,
            "paired_samples": d.pairs,
        }
    return {group: {"questions": scores.questions[group], **variants} for group, variants in out.items()}


def _pct(value: Score | None, signed: bool = False) -> str:
    if value is None:
        return "—"
    mean, err = value
    text = f"{100 * mean:+.1f}" if signed else f"{100 * mean:.1f}"
    return text + (f" ± {100 * err:.1f}" if err is not None else "")


def _ci(delta: PairedDelta | None) -> str:
    return "—" if delta is None else f"[{100 * delta.low:+.1f}, {100 * delta.high:+.1f}]"


def pass1_section(scores: EvalScores, domain_of: dict[str, str]) -> Section:
    section = Section(
        "pass@1 (%)",
        [
            "benchmark",
            "domain",
            "questions",
            "seeds",
            "base",
            "SVD",
            "Δ SVD",
            "Δ SVD 95% CI",
            "UQ-TTC",
            "Δ UQ-TTC",
            "Δ UQ-TTC 95% CI",
        ],
    )
    groups = sorted({g for _, g in scores.pass1}, key=lambda g: (g.startswith("domain:"), domain_of.get(g, ""), g))
    for group in groups:
        base, svd, ttc = (scores.pass1.get((v, group)) for v in VARIANTS)
        seeds = sorted({scores.seeds[(v, group)] for v in VARIANTS if (v, group) in scores.seeds})
        is_domain = group.startswith("domain:")
        section.rows.append(
            [
                f"all {group[7:]}" if is_domain else group,
                group[7:] if is_domain else domain_of.get(group, "unknown"),
                str(scores.questions[group]),
                "/".join(str(s) if s else "mixed" for s in seeds),
                _pct(base),
                _pct(svd),
                _pct(scoring.delta(base, svd) if base and svd else None, True),
                _ci(scores.deltas.get(("SVD", group))),
                _pct(ttc),
                _pct(scoring.delta(base, ttc) if base and ttc else None, True),
                _ci(scores.deltas.get(("UQ-TTC", group))),
            ]
        )
    section.note = (
        "Mean over eval seeds ± standard error of that mean (none with one seed); a domain row pools "
        "the questions of its benchmarks (seeds 'mixed': each question weighs once, no seed-level "
        "error); deltas are against the base model, errors added in quadrature. 95% CI: paired "
        "bootstrap over questions of (variant − base) on the same question and seed, 10,000 resamples."
    )
    return section


def pass_k_section(scores: EvalScores) -> Section:
    ks = sorted({k for values in scores.pass_k.values() for k in values})
    section = Section("pass@k (%), one sample per seed", ["benchmark", "model"] + [f"pass@{k}" for k in ks])
    for (variant, bench), values in sorted(
        scores.pass_k.items(), key=lambda kv: (kv[0][1], list(VARIANTS).index(kv[0][0]))
    ):
        section.rows.append([bench, variant] + [f"{100 * values[k]:.1f}" if k in values else "—" for k in ks])
    section.note = "Unbiased estimator 1 - C(n-c, k) / C(n, k) per question, averaged over questions."
    return section


# ----------------------------------------------------------------------------- benchmark rows


def benchmarks_section(run: RunDir) -> Section:
    """Per benchmark, from the eval summaries: its prompt, its questions, the dataset rows it left out
    (by reason) and the choice questions whose options could not be split off (shown verbatim)."""
    section = Section("Benchmarks", ["benchmark", "prompt", "questions", "rows left out", "options not parsed"])
    seen: dict[str, dict] = {}
    for path in sorted(run.stage_dir("eval").glob("*/*/seed-*.json")):
        try:
            summary = json.loads(path.read_text())
            seen.setdefault(summary["benchmark"], summary)
        except (OSError, ValueError, KeyError):
            continue
    for name, summary in sorted(seen.items()):
        left = dict(summary.get("rows_left_out") or {})
        unparsed = left.pop("options_unparsed", 0)
        section.rows.append(
            [
                name,
                summary.get("prompt", "—"),
                str(summary.get("questions", "—")),
                ", ".join(f"{reason}: {n:,}" for reason, n in left.items()) or "0",
                f"{unparsed:,}",
            ]
        )
    section.note = (
        "The prompt each benchmark was asked with (docs/PROTOCOL.md); rows left out are those the "
        "benchmark's filter excludes (an image, not multiple choice, outside the contest window); "
        "questions whose options were not parsed are asked verbatim and graded by their letter."
    )
    return section


# ----------------------------------------------------------------------------- skipped requests


def _skipped_rows(paths: list[Path], columns: list[str], keep) -> list[dict]:
    """Rows of the shards at `paths` that `keep` picks (an Arrow mask of a table); unreadable shards are passed over."""
    rows = []
    for path in paths:
        try:
            table = pq.read_table(path, columns=columns)
        except (OSError, KeyError, pa.ArrowInvalid):
            continue
        rows += table.filter(keep(table)).to_pylist()
    return rows


def skipped_section(run: RunDir, table: pa.Table | None) -> Section:
    """Items the engine could not run (a prompt too long, a template or vLLM refusing it), per
    stage and reason, from the records: skipped, never silently dropped."""
    section = Section("Skipped requests", ["stage", "item", "reason", "count", "first example"])
    has_reason = lambda t: pc.invert(pc.is_null(t["skip_reason"]))  # noqa: E731
    generated = _skipped_rows(
        sorted(run.stage_dir("generate").glob("shard-*.parquet")),
        ["question_id", "candidate_index", "skip_reason"],
        lambda t: pc.and_(has_reason(t), pc.equal(t["candidate_index"], 0)),
    )
    judged = _skipped_rows(
        sorted(run.stage_dir("verify").glob("shard-*.parquet")),
        ["question_id", "candidate_index", "status", "failed_stage", "skip_reason"],
        lambda t: pc.and_(pc.equal(t["status"], "skipped"), pc.invert(pc.is_null(t["failed_stage"]))),
    )
    groups: dict[tuple[str, str], list[tuple[str, str]]] = defaultdict(list)
    for row in generated:
        groups[("generate", "question")].append((row["question_id"], row["skip_reason"]))
    for row in judged:
        groups[(f"verify ({row['failed_stage']})", "candidate")].append(
            (f"{row['question_id']}/{row['candidate_index']}", row["skip_reason"])
        )
    if table is not None:
        for row in (
            table.filter(has_reason(table))
            .select(["model", "mode", "benchmark", "question_id", "skip_reason"])
            .to_pylist()
        ):
            groups[(f"eval {row['model']} {row['mode']} {row['benchmark']}", "question")].append(
                (row["question_id"], row["skip_reason"])
            )
    for (stage, item), skips in groups.items():
        by_kind: dict[str, list[tuple[str, str]]] = defaultdict(list)
        for key, reason in skips:
            by_kind[skip_kind(reason)].append((key, reason))
        for kind, found in sorted(by_kind.items()):
            key, reason = found[0]
            example = f"`{key}`: {reason[:160]}".replace("|", "\\|").replace("\n", " ")
            section.rows.append([stage, item, kind, f"{len(found):,}", example])
    section.note = (
        "Requests the engine could not run are recorded with their reason and never pass the cascade; "
        "a skipped eval question counts as incorrect (it stays in pass@1's denominator, so every "
        "model is scored on the same questions)."
        if section.rows
        else "Every request ran: none was skipped."
    )
    return section


# ----------------------------------------------------------------------------- funnel and costs


def funnel_section(run: RunDir) -> Section:
    """The merge funnel from merge/stats.json, read defensively: any mapping of counts is shown."""
    path = run.stage_dir("merge") / "stats.json"
    section = Section("Merge funnel", ["count", "all"])
    try:
        stats = json.loads(path.read_text())
    except (OSError, ValueError):
        section.note = f"No merge statistics ({path.name} is missing or unreadable)."
        return section
    overall = stats.get("overall") if isinstance(stats.get("overall"), dict) else stats
    per_domain = stats.get("per_domain") if isinstance(stats.get("per_domain"), dict) else {}
    section.headers += list(per_domain) + ["% of candidates"]
    candidates = overall.get("candidates")
    # stats.json is written with sorted keys: put the known counts back in funnel order
    order = {name: i for i, name in enumerate(FUNNEL_ORDER)}
    for name in sorted(overall, key=lambda n: order.get(n, len(order))):
        value = overall[name]
        if not isinstance(value, (int, float)) or isinstance(value, bool) or name.startswith(VOTE_KINDS):
            continue
        counts_candidates = name not in ("seeds", "duplicate_questions") and isinstance(candidates, (int, float))
        share = f"{100 * value / candidates:.1f}" if counts_candidates and candidates else "—"
        cells = [f"{per_domain[d].get(name, 0):,}" if isinstance(per_domain[d], dict) else "—" for d in per_domain]
        section.rows.append([name, f"{value:,}", *cells, share])
    skipped = stats.get("skipped_shards") or []
    if skipped:
        section.note = f"Skipped verify shards: {len(skipped)} (merge.allow_missing)."
    return section


VOTE_KINDS = ("votes_", "no_verdict_", "cut_off_")


def votes_section(run: RunDir) -> Section:
    """Judge votes per stage from merge/stats.json: how many held no verdict or were cut off."""
    path = run.stage_dir("merge") / "stats.json"
    section = Section("Judge votes per stage", ["stage", "votes", "no verdict", "% no verdict", "cut off", "% cut off"])
    try:
        overall = json.loads(path.read_text()).get("overall") or {}
    except (OSError, ValueError, AttributeError):
        overall = {}
    stages = [name[len("votes_") :] for name in overall if name.startswith("votes_")]
    order = {s: i for i, s in enumerate(VERIFY_STAGES)}  # stats.json keys are sorted: cascade order again
    for stage in sorted(stages, key=lambda s: order.get(s, len(order))):
        cast = overall[f"votes_{stage}"]
        if not isinstance(cast, int):
            continue
        none, cut = overall.get(f"no_verdict_{stage}", 0), overall.get(f"cut_off_{stage}", 0)
        shares = [f"{100 * n / cast:.1f}" if cast else "—" for n in (none, cut)]
        section.rows.append([stage, f"{cast:,}", f"{none:,}", shares[0], f"{cut:,}", shares[1]])
    if not section.rows:
        section.note = "No judge vote counts (merge/stats.json is missing, or older than these counts)."
    elif any(overall.get(f"cut_off_{row[0]}", 0) for row in section.rows):
        section.note = (
            "Judges cut off by verify.max_tokens: a reply that ends before its verdict counts as a no. "
            "Raise verify.max_tokens (the authors allow 32768) if this share is large."
        )
    return section


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
    if not job_ids or shutil.which("sacct") is None:
        return None
    try:
        proc = subprocess.run(
            ["sacct", "-n", "-P", "-X", "--format=JobID,ElapsedRaw,AllocTRES", "-j", ",".join(job_ids)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0 or not proc.stdout.strip():
        return None
    out: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for line in proc.stdout.splitlines():
        parts = line.split("|")
        if len(parts) < 3 or "[" in parts[0] or not parts[1].isdigit():
            continue  # a pending array range has no elapsed time yet
        gpus = max((int(n) for n in re.findall(r"gres/gpu(?::[^=,]+)?=(\d+)", parts[2])), default=0)
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
    subs = status.submissions(run) if run.jobs_path.is_file() else []
    accounting = sacct_seconds(sorted({str(s["job_id"]) for s in subs}))
    generated = _shard_totals(run, "generate", ["completion_tokens"])
    judged = _shard_totals(run, "verify", ["judge_completion_tokens", "judge_samples"])
    tokens = {"generate": generated.get("completion_tokens"), "verify": judged.get("judge_completion_tokens")}
    samples = {"generate": generated.get("rows"), "verify": judged.get("judge_samples")}
    judges = {"verify": judged.get("judge_samples")}
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


# ----------------------------------------------------------------------------- chart and report


def chart(scores: EvalScores | None, path: Path) -> None:
    """pass@1 per benchmark, one bar per variant with its standard error (a placeholder without eval)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    benches = sorted({g for _, g in scores.pass1 if not g.startswith("domain:")}) if scores else []
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
    table = read_eval(run)
    domain_of = domains_of(cfg, run)
    scores = score(table, domain_of) if table is not None else None
    sections = []
    if scores is not None:
        sections.append(pass1_section(scores, domain_of))
        if scores.pass_k:
            sections.append(pass_k_section(scores))
    else:
        sections.append(Section("pass@1 (%)", [], note="No eval results yet."))
    if scores is not None:
        sections.append(benchmarks_section(run))
    sections += [skipped_section(run, table), funnel_section(run), votes_section(run), cost_section(run, cfg, table)]
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
    lines += _sandbox_notes(run)
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


def _sandbox_notes(run: RunDir) -> list[str]:
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
    """Stage body of `report` (a single task)."""
    return {"report": str(build(run))}
