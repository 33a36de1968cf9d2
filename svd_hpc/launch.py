"""Turn a config into a run: validate, write the run directory, submit the chain (or run it here).

Run as:
    python -m svd_hpc.launch --config configs/demo.yaml [key.sub=value ...] [--dry-run] [--wait]
    python -m svd_hpc.launch --config configs/X.yaml --pilot [N]   # N random questions: projected cost and yield
    python -m svd_hpc.launch --config configs/X.yaml --pilot --deadline 07:00 --gpu-hours 40   # settings that meet them
    python -m svd_hpc.launch prepare --config configs/X.yaml   # run dir + RUN_DIR/sbatch/<stage>.sh for plain sbatch
    python -m svd_hpc.launch smoke --config configs/X.yaml   # the same cluster settings, a tiny model, minutes: checks
    python -m svd_hpc.launch status RUN_DIR
    python -m svd_hpc.launch resume RUN_DIR [--dry-run] [--wait]
    python -m svd_hpc.launch cancel RUN_DIR
    python -m svd_hpc.launch report RUN_DIR
    python -m svd_hpc.launch regrade RUN_DIR --grader authors_aime   # recorded answers re-read: pass@1 both ways
    python -m svd_hpc.launch config-help [SECTION]   # every config key: type, default, meaning (docs/CONFIG.md)

Every user error (config, seeds, cluster refusal) is one sentence on stderr and exit code 2,
with nothing submitted. On SLURM the launcher returns as soon as the chain is queued.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from . import __version__
from . import config as config_mod
from .config import ConfigError, RunConfig, reference
from .forecast import memory_check, pilot
from .inputs import staging
from .inputs.decontam import Index
from .publish import hub
from .rundir import targets
from .rundir.atomic import atomic_write_json
from .rundir.contract import EXIT_USER_ERROR
from .rundir.layout import RunDir
from .rundir.planfile import Stage, downstream, plan_to_json
from .runner import catalog, local, smoke, status, status_json
from .runner.plan import build_plan
from .slurm import commands as slurm

log = logging.getLogger("svd_hpc")
# Piped or redirected (a batch log, `| tee`), rich would wrap every table at 80 columns.
console = Console(stderr=False, width=None if sys.stdout.isatty() else 160)
COMMANDS = ("run", "prepare", "smoke", "status", "resume", "cancel", "report", "regrade", "config-help")


def _git_commit() -> str | None:
    try:
        proc = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() or None if proc.returncode == 0 else None


def _resolve_paths(cfg: RunConfig) -> None:
    """Relative input paths resolve against the launch directory; jobs may run elsewhere."""
    for holder, key in (*((s, "path") for s in cfg.seeds.source_list()), (cfg.model, "path"), (cfg.train, "model")):
        value = getattr(holder, key)
        if value and not value.startswith("builtin:") and Path(value).expanduser().exists():
            setattr(holder, key, str(Path(value).expanduser().resolve()))
    for bench in cfg.eval.benchmarks:
        if bench.path and Path(bench.path).expanduser().exists():
            bench.path = str(Path(bench.path).expanduser().resolve())


def _todo(run: RunDir, plan: list[Stage], live: dict[str, tuple[list[int], list[str]]]) -> dict[str, list[int]]:
    """Tasks without a done marker that are not queued or running, and everything downstream."""
    todo = {}
    for stage in plan:
        queued = set(live.get(stage.name, ([], []))[0])
        todo[stage.name] = [i for i in run.incomplete(stage.name, stage.array_size) if i not in queued]
    # A stage downstream of re-run work must run again only if it is not done; markers decide.
    stale = downstream(plan, {name for name, idx in todo.items() if idx})
    return {name: idx for name, idx in todo.items() if idx and name in stale}


def _print_submissions(run: RunDir, subs: list[slurm.Submission], dry_run: bool) -> None:
    table = Table(title=("dry run: nothing submitted" if dry_run else "submitted") + f" — {run.root}")
    for column in ("stage", "job id", "array", "tasks", "depends on", "logs"):
        table.add_column(column)
    for sub in subs:
        table.add_row(
            sub.stage,
            "-" if dry_run else str(sub.job_id),
            sub.array_spec if len(sub.indices) > 1 or sub.offset else "-",
            str(len(sub.indices)),
            sub.dependency or "",
            str(run.log_dir(sub.stage)),
        )
    console.print(table)


def terminal_markdown(text: str, root: Path) -> str:
    """report.md for the terminal: rich draws an image as an emoji and its alt text ("🌆 merge funnel"), so
    each image becomes its alt text and the file's full path, which a terminal user can open."""
    return re.sub(r"!\[([^\]]*)\]\(([^)]+)\)", lambda m: f"{m.group(1)}: `{root / m.group(2)}`", text)


def _record_submissions(run: RunDir, plan: list[Stage], subs: list[slurm.Submission]) -> None:
    data = run.load_json(run.jobs_path, default={"submissions": []})
    kinds = {s.name: s.is_array for s in plan}
    now = time.strftime("%Y-%m-%dT%H:%M:%S")
    for sub in subs:
        data["submissions"].append(
            {
                "stage": sub.stage,
                "job_id": sub.job_id,
                "array": kinds[sub.stage],
                "part": sub.part,
                "offset": sub.offset,
                "indices": sub.indices,
                "dependency": sub.dependency,
                "submitted": now,
            }
        )
    atomic_write_json(run.jobs_path, data)


def _prepare_seeds(cfg: RunConfig, run: RunDir, dry_run: bool, index: Index | None) -> None:
    from .inputs import seeds

    if dry_run and seeds.reads_hub(cfg.seeds):
        return
    if dry_run or all(run.shard_path("seeds", i).exists() for i in range(cfg.seeds.shards)):
        table = seeds.load(cfg.seeds)  # validates; the shard plan is printed, nothing written
        per_shard = -(-table.num_rows // cfg.seeds.shards)
        where = seeds.describe(cfg.seeds)
        console.print(f"seeds: {table.num_rows} questions from {where} -> {cfg.seeds.shards} shards of ≤{per_shard}")
        return
    console.print(seeds_table(seeds.prepare(cfg, run, index)))


def seeds_table(stats: dict) -> Table:
    """The seed shards' stats (seeds/stats.json) as a newcomer reads them: what was read, kept, dropped."""
    table = Table(title="seeds", title_justify="left", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    sizes = stats.get("shard_sizes") or []
    rows = [
        ("source", f"{stats.get('path', '')} ({stats.get('format', '?')})"),
        ("rows read", f"{stats.get('rows_read', 0):,}"),
        *([("filtered out", f"{stats['filtered_out']:,}")] if "filtered_out" in stats else []),
        ("questions", f"{stats.get('seeds', 0):,}"),
        ("duplicates dropped", f"{stats.get('duplicates_dropped', 0):,}"),
    ]
    if "contaminated_dropped" in stats:  # decontaminate.enabled with a benchmark to test against
        rows.append(("contaminated dropped", f"{stats['contaminated_dropped']:,} (seeds/contaminated.jsonl)"))
    if stats.get("questions_stripped"):  # only worth a line when some question had surrounding whitespace
        rows.append(("whitespace stripped", f"{stats['questions_stripped']:,} questions"))
    if stats.get("per_domain"):
        rows.append(("domains", ", ".join(f"{d} {n:,}" for d, n in stats["per_domain"].items())))
    if sizes:
        each = f"{min(sizes):,}" if min(sizes) == max(sizes) else f"{min(sizes):,}–{max(sizes):,}"
        rows.append(("shards", f"{len(sizes)} of {each} questions"))
    for label, value in rows:
        table.add_row(label, value)
    return table


def prepare(cfg: RunConfig, run: RunDir, dry_run: bool = False) -> list[Stage]:
    """Validate the seeds, then write the run directory: config, plan and (unless dry_run) seed shards."""
    # hub inputs fetched and pinned (cfg revisions) before anything reads them
    staged = staging.stage(run, catalog.hub_inputs(cfg), dry_run)
    memory_check.check(cfg, console)  # a plan that cannot fit stops here, before anything is written
    plan = build_plan(cfg)
    if run.exists():
        stored = run.load_config()
        if config_mod.to_dict(stored) != config_mod.to_dict(cfg):
            raise ConfigError(
                f"run directory {run.root} holds a different config; resume it with "
                f"`python -m svd_hpc.launch resume {run.root}` or choose another name=..."
            )
    from .eval import benchmarks, selection
    from .inputs import seeds

    for bench in cfg.eval.benchmarks + cfg.train.select.benchmarks:
        benchmarks.resolve(bench)  # an unknown preset or a spec without a source stops us here
    if cfg.train.select.enabled and not dry_run:  # a dry run may not have fetched the benchmarks' rows
        selection.check_disjoint(cfg, benchmarks.load)
    hub_seeds = seeds.reads_hub(cfg.seeds)
    if dry_run and hub_seeds:
        console.print(f"seeds: {seeds.describe(cfg.seeds)}: read from the hub and sharded at launch.")
    else:
        seeds.load(cfg.seeds)  # bad seeds stop us before anything is written or submitted
    index = None
    if not dry_run and not all(run.shard_path("seeds", i).exists() for i in range(cfg.seeds.shards)):
        # the benchmarks were staged above; a seed that overlaps one of their questions never reaches generate
        index = benchmarks.contamination_index(cfg)
    run.root.mkdir(parents=True, exist_ok=True)
    staged.save(run)
    run.write_config(cfg, {"version": __version__, "git_commit": _git_commit()})
    atomic_write_json(run.plan_path, plan_to_json(plan))
    _prepare_seeds(cfg, run, dry_run, index)
    return plan


def launch(
    cfg: RunConfig, run: RunDir, dry_run: bool = False, wait: bool = False, goals: targets.Targets | None = None
) -> int:
    """Write the run directory and submit (SLURM) or run (local) every incomplete task.

    goals: a deadline and GPU-hour budget to record (RUN_DIR/targets.json) for `status` to check.
    """
    if not cfg.is_local and not slurm.available() and not dry_run:
        raise ConfigError(
            f"cluster profile '{cfg.cluster}' needs SLURM, but sbatch "
            "is not on PATH; use cluster=local or a login node."
        )
    plan = prepare(cfg, run, dry_run)
    if goals:
        targets.write(run, goals)
    if warning := hub.jobs_token_warning(cfg):
        console.print(f"[yellow]warning:[/yellow] {warning}")
    if not dry_run:
        pilot.reuse(run)  # a pilot's candidates of these questions are not generated again
    if cfg.is_local:
        if dry_run:
            for stage in plan:
                console.print(
                    f"{stage.name}: {stage.array_size} task(s) -> {' '.join(local.task_command(cfg, run, stage, 0))}"
                )
            return 0
        timings = local.run_plan(cfg, run, plan)
        report = run.root / "report.md"
        if report.is_file():
            from rich.markdown import Markdown

            console.print(Markdown(terminal_markdown(report.read_text(), run.root)))
        console.print(f"run complete: {run.root} ({', '.join(f'{k} {v:.0f}s' for k, v in timings.items())})")
        return 0

    live = status.live_tasks(run) if run.jobs_path.exists() and not dry_run else {}
    todo = _todo(run, plan, live)
    if not todo:
        console.print(f"nothing to submit: every task of {run.root} is done or queued.")
        return 0
    subs = slurm.plan_submissions(cfg, run, plan, todo, slurm.max_array_size(cfg.profile))
    live_ids = {stage: ids for stage, (_, ids) in live.items()}
    if not dry_run:
        for stage in {s.stage: s for s in subs}.values():  # one check per stage, nothing submitted
            slurm.test_only(slurm.render(cfg, run, _stage(plan, stage.stage), stage, Path.cwd()), stage.stage)
    subs = slurm.submit(cfg, run, plan, subs, Path.cwd(), dry_run=dry_run, live=live_ids)
    if dry_run:
        for sub in subs:
            console.rule(str(run.sbatch_path(sub.stage)))
            console.print(sub.script, markup=False, highlight=False, soft_wrap=True)
    else:
        _record_submissions(run, plan, subs)
    _print_submissions(run, subs, dry_run)
    if wait and not dry_run:
        slurm.wait([s.job_id for s in subs], timeout_s=float(os.environ.get("SVD_WAIT_TIMEOUT", "86400")))
        statuses = status.collect(run)
        status.render(run, statuses, console)
        return 0 if all(len(s.done) == s.size for s in statuses) else 1
    return 0


def run_smoke(cfg: RunConfig) -> int:
    """Run the smoke version of a config to the end, then print one table of checks; 0 if all passed."""
    run = RunDir(Path(cfg.run_root) / cfg.name)
    if smoke.is_smoke(run):  # a smoke run starts afresh: its checks describe the nodes as they are now
        slurm.cancel(sorted({str(s["job_id"]) for s in run.submissions()}))
        shutil.rmtree(run.root)
    prepare(cfg, run)
    smoke.mark(run)
    try:
        launch(cfg, run, wait=True)
    except local.TaskFailed as err:  # the local scheduler stops at the first failure; the table says which
        console.print(f"{err}", markup=False)
    return 0 if smoke.render(run, smoke.summarize(run, status.collect(run)), console) else 1


def _stage(plan: list[Stage], name: str) -> Stage:
    return next(s for s in plan if s.name == name)


def _open_run(path: str) -> tuple[RunConfig, RunDir]:
    run = RunDir(path)
    return run.load_config(), run


def _parser() -> argparse.ArgumentParser:
    """Every command and its options."""
    parser = argparse.ArgumentParser(prog="python -m svd_hpc.launch", description="Launch and follow svd_hpc runs.")
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run", help="validate a config and launch its run (default command)")
    p_run.add_argument("--config", required=True)
    p_run.add_argument("overrides", nargs="*", help="key.sub=value")
    p_run.add_argument(
        "--pilot",
        type=int,
        nargs="?",
        const=pilot.DEFAULT_QUESTIONS,
        metavar="N",
        help=f"run generate, verify and merge on N random seed questions (default {pilot.DEFAULT_QUESTIONS}), then "
        "a few timed train steps, and project the full run's cost, wall time and SFT size into RUN_DIR/pilot.json; "
        "submits nothing else",
    )
    p_run.add_argument("--pilot-seed", type=int, default=0, help="seed of the pilot's random draw of questions")
    p_run.add_argument(
        "--pilot-train-steps",
        type=int,
        default=pilot.DEFAULT_TRAIN_STEPS,
        metavar="K",
        help=f"timed training steps of the pilot at train.max_seq_len, the first a warm-up (default "
        f"{pilot.DEFAULT_TRAIN_STEPS}; 0: none)",
    )
    p_prep = sub.add_parser(
        "prepare", help="write the run directory, seed shards and every stage's sbatch script; print RUN_DIR=..."
    )
    p_prep.add_argument("--config", required=True)
    p_prep.add_argument("overrides", nargs="*", help="key.sub=value")
    p_smoke = sub.add_parser(
        "smoke",
        help="a tiny run with the config's cluster settings, checked on the compute nodes; waits and prints the checks",
    )
    p_smoke.add_argument("--config", required=True)
    p_smoke.add_argument(
        "--model", default=smoke.SMOKE_MODEL, help=f"the small model it runs (default {smoke.SMOKE_MODEL})"
    )
    p_smoke.add_argument("overrides", nargs="*", help="key.sub=value")
    for p in (p_run, sub.add_parser("resume", help="re-submit what is missing")):
        p.add_argument("--dry-run", action="store_true", help="write and print the sbatch scripts; submit nothing")
        p.add_argument("--wait", action="store_true", help="block until the submitted jobs end")
        p.add_argument(
            "--deadline",
            metavar="HH:MM",
            help="when the run should end: HH:MM (the next such time) or an ISO date and time; recorded in "
            "RUN_DIR/targets.json for `status`; with --pilot, the pilot proposes settings that meet it",
        )
        p.add_argument(
            "--gpu-hours",
            type=float,
            metavar="N",
            help="the run's GPU-hour budget; recorded like --deadline, and proposed for by --pilot",
        )
    sub.choices["resume"].add_argument("run_dir")
    for name in ("status", "cancel", "report"):
        sub.add_parser(name).add_argument("run_dir")
    for name, schema in (("status", "status.v1.json"), ("report", "report.v1.json")):
        sub.choices[name].add_argument(
            "--json",
            action="store_true",
            help=f"print one JSON object (docs/schema/{schema}) and nothing else on stdout",
        )
    p_regrade = sub.add_parser(
        "regrade",
        help="re-read a finished run's eval answers with another grader; print pass@1 beside the recorded one "
        "(calls no model, writes nothing)",
    )
    p_regrade.add_argument("run_dir")
    p_regrade.add_argument(
        "--grader",
        required=True,
        help="math, math_last_number, authors_aime, authors_gpqa or "
        "authors_hle (the authors' readers: docs/PROTOCOL.md)",
    )
    p_regrade.add_argument("--benchmark", help="only this benchmark (its name in eval.benchmarks)")
    p_regrade.add_argument("--json", action="store_true", help="print a JSON list, one object per line of the table")
    p_help = sub.add_parser("config-help", help="every config key with its type, default and meaning")
    p_help.add_argument("section", nargs="?", help=f"one of {', '.join(reference.SECTIONS)}; default: all")
    p_help.add_argument("--markdown", action="store_true", help="all sections as docs/CONFIG.md")
    sub.choices["status"].add_argument(
        "--watch", nargs="?", type=float, const=10.0, metavar="SECONDS", help="refresh in place until the run ends"
    )
    return parser


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line, with overrides (key=value) anywhere among the options.

    argparse takes positionals in one run only, and `--pilot`'s optional N would swallow the
    override after it: `--pilot cluster=x` is `--pilot` with its default N, then the override.
    """
    argv = list(argv)
    for i, token in enumerate(argv):
        if token == "--pilot" and (i + 1 == len(argv) or not argv[i + 1].lstrip("-").isdigit()):
            argv[i] = f"--pilot={pilot.DEFAULT_QUESTIONS}"
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    overrides = [token for token in extra if "=" in token and not token.startswith("-")]
    if extra != overrides or (extra and not hasattr(args, "overrides")):
        parser.parse_args(argv)  # exits with argparse's message about what it does not know
    if overrides:
        args.overrides += overrides
    return args


def _config_help_command(args: argparse.Namespace) -> int:
    """Every config key: type, default, meaning."""
    sys.stdout.write(reference.markdown() if args.markdown else reference.text(args.section))
    return 0


def _run_command(args: argparse.Namespace) -> int:
    """Validate a config and launch its run."""
    goals = targets.from_args(args.deadline, args.gpu_hours)  # a bad one stops us before anything is read
    cfg = config_mod.load(args.config, args.overrides)
    _resolve_paths(cfg)
    if args.pilot is not None:
        run_dir = RunDir(Path(cfg.run_root) / cfg.name)
        pilot.run(cfg, run_dir, args.pilot, args.pilot_seed, console, args.pilot_train_steps, goals)
        return 0
    return launch(cfg, RunDir(Path(cfg.run_root) / cfg.name), dry_run=args.dry_run, wait=args.wait, goals=goals)


def _prepare_command(args: argparse.Namespace) -> int:
    """Write the run directory and every stage's sbatch script for plain sbatch; print RUN_DIR=..."""
    cfg = config_mod.load(args.config, args.overrides)
    _resolve_paths(cfg)
    run = RunDir(Path(cfg.run_root) / cfg.name)
    console.file = sys.stderr  # stdout carries only the variables
    # one whole array per stage: refuse what the site cannot take before anything is written
    slurm.check_whole_arrays(build_plan(cfg), slurm.max_array_size(cfg.profile))
    scripts = slurm.write_stage_scripts(cfg, run, prepare(cfg, run), Path.cwd())
    console.print(f"sbatch scripts (edit the lines marked site:, then `bash sbatch/pipeline.sh {run.root}`):")
    for path in scripts:
        console.print(f"  {path}", markup=False, highlight=False)
    print(f"RUN_DIR={shlex.quote(str(run.root))}")
    return 0


def _smoke_command(args: argparse.Namespace) -> int:
    """A tiny run with the config's cluster settings, checked on the compute nodes."""
    cfg = config_mod.load(args.config, args.overrides)
    _resolve_paths(cfg)
    return run_smoke(smoke.shrink(cfg, args.model))


def _resume_command(args: argparse.Namespace) -> int:
    """Re-submit what is missing."""
    goals = targets.from_args(args.deadline, args.gpu_hours)
    cfg, run = _open_run(args.run_dir)
    return launch(cfg, run, dry_run=args.dry_run, wait=args.wait, goals=goals)


def _status_command(args: argparse.Namespace) -> int:
    """Print what the run is doing."""
    _, run = _open_run(args.run_dir)
    if args.json:
        if args.watch is not None:
            raise ConfigError("--json prints the status once; it does not take --watch")
        _print_json(status_json.status_json(run, status.collect(run)))
        return 0
    if args.watch is not None:
        return status.watch(run, console, args.watch)
    status.render(run, status.collect(run), console)
    return 0


def _print_json(data: dict) -> None:
    """One JSON object on stdout, so `... --json | jq` reads it whole; everything else goes to stderr."""
    json.dump(data, sys.stdout, indent=2, allow_nan=False)
    sys.stdout.write("\n")


def _cancel_command(args: argparse.Namespace) -> int:
    """Cancel every job of the run."""
    _, run = _open_run(args.run_dir)
    ids = sorted({str(s["job_id"]) for s in run.submissions()})
    slurm.cancel(ids)
    console.print(f"cancelled {len(ids)} job(s) of {run.root}: {' '.join(ids) or 'none'}")
    return 0


def _report_command(args: argparse.Namespace) -> int:
    """Rebuild the run's report."""
    from .stages import report

    _, run = _open_run(args.run_dir)
    if args.json:
        from .report.as_json import report_json

        _print_json(report_json(run))
        return 0
    report.build(run, console=console)
    return 0


def _regrade_command(args: argparse.Namespace) -> int:
    """pass@1 of a finished run's answers as recorded and as another grader reads them."""
    from .eval import regrade

    _, run = _open_run(args.run_dir)
    results = regrade.regrade(run, args.grader, args.benchmark)
    if args.json:
        json.dump([dataclasses.asdict(r) for r in results], sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(regrade.table_text(results))
    return 0


COMMAND_HANDLERS = {
    "config-help": _config_help_command,
    "run": _run_command,
    "prepare": _prepare_command,
    "smoke": _smoke_command,
    "resume": _resume_command,
    "status": _status_command,
    "cancel": _cancel_command,
    "report": _report_command,
    "regrade": _regrade_command,
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS and argv[0] not in ("-h", "--help"):
        argv.insert(0, "run")
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")

    try:
        return COMMAND_HANDLERS[args.command](args)
    except (ConfigError, slurm.ClusterError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except local.TaskFailed as err:
        print(f"error: {err}\n{err.tail()}", file=sys.stderr)
        print(
            f"fix the cause, then resume with: python -m svd_hpc.launch resume {err.log_path.parents[2]}",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
