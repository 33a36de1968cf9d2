"""Replicate SVD on this machine: does the self-distilled SmolLM2 beat its base, and by how much?

Run as:  .venv/bin/python benchmarks/bench_replicate.py [--config configs/replicate-cpu.yaml] [key=value ...]
         .venv/bin/python benchmarks/bench_replicate.py --from-run RUN_DIR     (read a finished run only)

Launches the config through the local scheduler (hours with configs/replicate-cpu.yaml: see its
header), then reads the finished run directory and prints, per benchmark: pass@1 of the base model,
the SVD-trained model and UQ-TTC (mean over eval seeds ± standard error), SVD − base with its 95%
paired bootstrap interval and two-sided p-value (eval/summary.json: the report computes both from
the same resampled question means); the SFT size and the merge funnel (merge/stats.json); the wall
time (measured around the launch; with --from-run, the local scheduler's per-stage times summed).

It also prints report.md's "How good was self-verification" table (the judges' precision and recall
against the seeds' answers), computed from the seed and verify shards, so a run still in eval
already shows whether its judges beat chance. --write also writes all of it, verbatim, to
docs/replicate/<run name>.md with the commit and the machine's load: the figures README quotes come
from there, never typed by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FIGURES_DIR = REPO / "docs" / "replicate"
VARIANTS = ("base", "SVD", "UQ-TTC")


def read_run(run_dir: Path) -> dict:
    """What the printout needs from a run directory past its merge; SystemExit naming a missing file.
    Before the eval stages end there is no eval/summary.json: the printout says pass@1 is not yet measured."""
    summary_path, stats_path = run_dir / "eval" / "summary.json", run_dir / "merge" / "stats.json"
    if not stats_path.is_file():
        sys.exit(
            f"{stats_path} is missing: the run has not reached its merge (python -m svd_hpc.launch status {run_dir})."
        )
    timings_path = run_dir / "logs" / "local_timings.json"
    return {
        "summary": json.loads(summary_path.read_text()) if summary_path.is_file() else None,
        "summary_path": summary_path,
        "stats": json.loads(stats_path.read_text()),
        "timings": json.loads(timings_path.read_text()) if timings_path.is_file() else {},
    }


def _pct(entry: dict | None) -> str:
    if not entry:
        return "—"
    err = entry.get("stderr")
    return f"{100 * entry['pass_at_1']:.1f}" + (f" ± {100 * err:.1f}" if err is not None else "")


def _p(value: float | None) -> str:
    if value is None:
        return "not recorded (rebuild: python -m svd_hpc.launch report RUN_DIR)"
    return "< 0.0001" if value == 0 else f"{value:.4f}"


def render(result: dict, wall_s: float | None) -> str:
    if result["summary"] is None:
        missing = f"pass@1: not measured yet ({result['summary_path']} is missing: eval has not finished)"
        return "\n".join([missing, *_sft_lines(result, wall_s)])
    lines = ["pass@1 (%), mean over eval seeds ± standard error"]
    groups = sorted(g for g in result["summary"] if not g.startswith("domain:"))
    lines.append(f"{'benchmark':<24}{'questions':>10}" + "".join(f"{v:>16}" for v in VARIANTS))
    for group in groups:
        entry = result["summary"][group]
        lines.append(
            f"{group:<24}{entry.get('questions', 0):>10}" + "".join(f"{_pct(entry.get(v)):>16}" for v in VARIANTS)
        )
    for group in groups:
        delta = (result["summary"][group].get("delta") or {}).get("SVD")
        if not delta:
            lines.append(f"SVD − base on {group}: not paired (no trained or no base results)")
            continue
        low, high = delta["ci95"]
        lines.append(
            f"SVD − base on {group}: {100 * delta['mean']:+.1f} points, 95% paired bootstrap interval "
            f"[{100 * low:+.1f}, {100 * high:+.1f}] over {delta.get('paired_questions', '?')} questions, "
            f"two-sided p {_p(delta.get('p_value'))}"
        )
    return "\n".join(lines + _sft_lines(result, wall_s))


def _sft_lines(result: dict, wall_s: float | None) -> list[str]:
    """The SFT size, the merge funnel and the wall time."""
    lines = []
    overall = result["stats"].get("overall") or {}
    lines.append(f"SFT size: {overall.get('kept', '—')} examples (train {overall.get('train', '—')})")
    funnel = [
        (name, value)
        for name, value in overall.items()
        if isinstance(value, int) and not name.startswith(("votes_", "no_verdict_", "cut_off_", "skipped_"))
    ]
    order = ["seeds", "candidates", "filtered", "skipped", "passed_cycle", "passed_factuality", "passed_correctness"]
    order += ["valid", "selected", "duplicate_solutions", "weighted_out", "kept", "train", "validation"]
    funnel.sort(key=lambda item: order.index(item[0]) if item[0] in order else len(order))
    lines.append("funnel: " + ", ".join(f"{name} {value:,}" for name, value in funnel))
    timings = result["timings"]
    if timings:
        lines.append("stage wall s: " + ", ".join(f"{stage} {seconds:.0f}" for stage, seconds in timings.items()))
    if wall_s is None and timings:
        wall_s = sum(timings.values())
    so_far = " of the stages finished so far" if result["summary"] is None else ""
    lines.append(f"wall time{so_far}: {_duration(wall_s)}" if wall_s is not None else "wall time: not recorded")
    return lines


def _duration(seconds: float) -> str:
    hours, rest = divmod(int(round(seconds)), 3600)
    return f"{seconds:.0f} s ({hours} h {rest // 60:02d} min)"


def judges_section(run_dir: Path) -> str:
    """The judges' precision and recall against the seeds' answers, as report.md gives it (computed
    here from the seed and verify shards, so a run still in eval has it too); a sentence when none."""
    sys.path.insert(0, str(REPO))
    from svd_hpc.report.judges import judges_section as section
    from svd_hpc.rundir.layout import RunDir

    run = RunDir(run_dir)
    table = section(run, run.load_config().seeds.answer_grader)
    return table.markdown().strip() if table else f"{run_dir}: no judge table (its seeds carry no answers)."


def figures_page(run_dir: Path, printout: str, judges: str, launched_here: bool) -> str:
    """docs/replicate/<run>.md: the printout verbatim, the judges' table, where and when it was measured."""
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    how = "launched and measured" if launched_here else "read from the run directory"
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return "\n".join(
        [
            f"# Replication run `{run_dir.name}`",
            "",
            f"Written by `benchmarks/bench_replicate.py --write` on {time.strftime('%Y-%m-%d')} at commit "
            f"`{commit.stdout.strip() or 'unknown'}` ({how}); do not edit by hand. Load average when written "
            f"(1, 5, 15 min): {load} on {os.cpu_count()} cores: wall times on a shared machine are upper bounds.",
            "",
            "```",
            printout,
            "```",
            "",
            judges,
            "",
        ]
    )


def launch(config: str, overrides: list[str]) -> tuple[Path, float]:
    """Run the config to the end here; its run directory and the wall seconds it took."""
    sys.path.insert(0, str(REPO))
    from svd_hpc import config as config_mod

    cfg = config_mod.load(config, overrides)
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "svd_hpc.launch", "--config", config, *overrides], cwd=REPO)
    wall = time.monotonic() - start
    if proc.returncode != 0:
        sys.exit(f"the run failed (exit {proc.returncode}); see python -m svd_hpc.launch status RUN_DIR")
    root = Path(cfg.run_root)  # a relative run_root is under the directory the launch ran in
    return (root if root.is_absolute() else REPO / root) / cfg.name, wall


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "replicate-cpu.yaml"))
    parser.add_argument(
        "--from-run", metavar="RUN_DIR", type=Path, help="only read this run directory (past its merge)"
    )
    parser.add_argument("--write", action="store_true", help="also write the printout to docs/replicate/RUN_NAME.md")
    parser.add_argument("overrides", nargs="*", help="config overrides, key.sub=value")
    args = parser.parse_args(argv)
    if args.from_run:
        run_dir, wall = args.from_run, None
    else:
        run_dir, wall = launch(args.config, args.overrides)
    printout, judges = render(read_run(run_dir), wall), judges_section(run_dir)
    print(f"run directory: {run_dir}")
    print(printout)
    print(judges)
    if args.write:
        FIGURES_DIR.mkdir(parents=True, exist_ok=True)
        page = FIGURES_DIR / f"{run_dir.name}.md"
        page.write_text(figures_page(run_dir, printout, judges, launched_here=not args.from_run))
        print(f"written: {page}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
