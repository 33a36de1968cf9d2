"""Demo benchmark: wall time per stage and peak memory of configs/demo.yaml on this machine.

Run as:  .venv/bin/python benchmarks/bench_demo.py [--config configs/demo.yaml] [--keep DIR] [key=value ...]

Runs the demo from scratch through the local scheduler in a fresh run directory and prints each
stage's wall time (from logs/local_timings.json), the total, and the peak resident memory of the
largest process (every task runs in a process of its own). Baseline: the issue's budget on a
2-core machine, 20 minutes and 8 GiB; the ratios to it are printed, so regressions show.

`--write` also writes what it measured, with the run's funnel (merge/stats.json) and pass@1
(eval/summary.json), to docs/DEMO_FIGURES.md, the page README.md quotes: the demo's figures are
never typed by hand. `--from-run RUN_DIR` writes them from a finished run without running it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
BUDGET_S, BUDGET_GIB = 20 * 60, 8.0
FIGURES = REPO / "docs" / "DEMO_FIGURES.md"
# the variants as eval/summary.json names them (svd_hpc.eval.scores.VARIANTS)
VARIANTS = ("base", "SVD", "UQ-TTC")
CASCADE = ("cycle", "factuality", "correctness")  # verify.stages' default order


def figures_page(run_dir: Path, timings: dict[str, float], total: float | None, peak_gib: float | None) -> str:
    """docs/DEMO_FIGURES.md from one finished demo run: its stage times, funnel and pass@1."""
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    lines = [
        "# The demo, as measured",
        "",
        f"Written by `benchmarks/bench_demo.py --write` on {time.strftime('%Y-%m-%d')} at commit "
        f"`{commit.stdout.strip() or 'unknown'}` ({platform.machine()}, {_cores()} cores); do not edit by hand.",
        "",
        "| stage | wall s |",
        "| --- | ---: |",
        *(f"| {stage} | {seconds:.0f} |" for stage, seconds in timings.items()),
    ]
    if total is not None:
        lines.append(f"| **total** | **{total:.0f}** ({total / BUDGET_S:.2f} of the 20-minute budget) |")
    if peak_gib is not None:
        lines += ["", f"Peak memory of the largest process: {peak_gib:.2f} GiB ({peak_gib / BUDGET_GIB:.2f} of 8 GiB)."]
    if total is not None:  # wall times mean little on a machine others were using: say how busy it was
        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
        lines += ["", f"Load average at the end of the run (1, 5, 15 min): {load} on {_cores()} cores."]
    overall = json.loads((run_dir / "merge" / "stats.json").read_text())["overall"]
    # the judge stages in the order the run's cascade ran them, so the funnel only narrows
    stages = (yaml.safe_load((run_dir / "config.yaml").read_text()) or {}).get("verify", {}).get("stages", CASCADE)
    funnel = ["candidates", *(f"passed_{stage}" for stage in stages), "valid", "selected", "kept"]
    lines += ["", "## Funnel", "", "| step | candidates |", "| --- | ---: |"]
    lines += [f"| {step.removeprefix('passed_')} | {overall[step]} |" for step in funnel if step in overall]
    summary = json.loads((run_dir / "eval" / "summary.json").read_text())
    lines += ["", "## pass@1 (%), mean over eval seeds ± standard error", ""]
    lines += ["| benchmark | " + " | ".join(VARIANTS) + " | Δ SVD − base (95% CI) |", "| --- |" + " ---: |" * 4]
    for group, by_variant in sorted(summary.items()):
        cells = []
        for variant in VARIANTS:
            v = by_variant.get(variant)
            cells.append("—" if v is None else f"{100 * v['pass_at_1']:.1f} ± {100 * (v['stderr'] or 0):.1f}")
        delta = by_variant.get("delta", {}).get("SVD")
        ci = delta.get("ci95") if delta else None
        shown = (
            "—"
            if not delta
            else f"{100 * delta['mean']:+.1f}" + (f" ({100 * ci[0]:+.1f} to {100 * ci[1]:+.1f})" if ci else "")
        )
        lines.append(f"| {group} | " + " | ".join(cells) + f" | {shown} |")
    return "\n".join(lines) + "\n"


def _cores() -> int:
    return len(os.sched_getaffinity(0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "demo.yaml"))
    parser.add_argument("--keep", metavar="DIR", help="run in DIR/bench and keep the run directory for inspection")
    parser.add_argument("--write", action="store_true", help=f"write what was measured to {FIGURES.relative_to(REPO)}")
    parser.add_argument("--from-run", metavar="RUN_DIR", help="write the figures of a finished demo run; run nothing")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    if args.from_run:
        run_dir = Path(args.from_run)
        timings = json.loads((run_dir / "logs" / "local_timings.json").read_text())
        FIGURES.write_text(figures_page(run_dir, timings, None, None))
        print(f"wrote {FIGURES}")
        return
    with tempfile.TemporaryDirectory() as scratch:
        tmp = args.keep or scratch
        start = time.monotonic()
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "svd_hpc.launch",
                "--config",
                args.config,
                f"run_root={tmp}",
                "name=bench",
                *args.overrides,
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
        )
        total = time.monotonic() - start
        if proc.returncode != 0:
            sys.exit(f"demo failed:\n{proc.stderr[-3000:]}")
        timings = json.loads((Path(tmp) / "bench" / "logs" / "local_timings.json").read_text())
        peak_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
        if args.write:
            FIGURES.write_text(figures_page(Path(tmp) / "bench", timings, total, peak_gib))
            print(f"wrote {FIGURES}")
    print(f"{'stage':<14}{'wall s':>9}")
    for stage, seconds in timings.items():
        print(f"{stage:<14}{seconds:>9.1f}")
    print(f"{'total':<14}{total:>9.1f}   {total / BUDGET_S:.2f} of the 20-minute budget")
    print(
        f"{'peak RSS':<14}{peak_gib:>8.2f}G   {peak_gib / BUDGET_GIB:.2f} of the 8 GiB budget (largest single process)"
    )


if __name__ == "__main__":
    main()
