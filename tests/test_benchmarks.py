"""Every benchmark script still imports what it uses and parses its arguments (`--help`), offers
a reduced size (`--quick`, which .ci/run runs), and a quick run's bound fails as it says.

The full benchmarks take minutes and are run by hand (README "Benchmarks"); .ci/run runs each
`--quick` after the tests. This catches a script left behind by a change to the modules it
imports, and a benchmark CI would not run.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = sorted((REPO / "benchmarks").glob("bench_*.py"))
# .ci/run says why it skips these; the whole demo and the replication have no reduced size
NOT_IN_CI = {"bench_demo", "bench_pilot", "bench_replicate"}
NO_QUICK = {"bench_demo", "bench_replicate"}


def test_there_are_benchmarks():
    assert len(SCRIPTS) >= 10


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_benchmark_script_starts(script):
    done = subprocess.run(
        [sys.executable, str(script), "--help"], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("usage:"), done.stdout[:500]
    assert ("--quick" in done.stdout) == (script.stem not in NO_QUICK), done.stdout[:2000]


def test_ci_runs_every_quick_benchmark_but_those_it_names():
    ci = (REPO / ".ci" / "run").read_text()
    assert "for bench in benchmarks/bench_*.py; do" in ci and '"$bench" --quick' in ci
    assert [f"benchmarks/{name}.py" for name in sorted(NOT_IN_CI)] == [
        line.split("==")[1].split("]]")[0].strip() for line in ci.splitlines() if "&& continue" in line
    ]


def test_a_quick_bound_fails_with_one_line(tmp_path):
    code = (
        f"import sys; sys.path.insert(0, {str(REPO / 'benchmarks')!r}); import quick\n"
        "quick.gate([('ratio a', 0.2, '<=', 0.3), ('ratio b', 0.9, '>=', 0.95), ('ratio c', 0.5, '<=', 0.4)])\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "-c --quick failed: ratio b 0.9, bound >= 0.95; ratio c 0.5, bound <= 0.4"
    ]
    passing = code.replace("0.9, '>=', 0.95), ('ratio c', 0.5", "0.96, '>=', 0.95), ('ratio c', 0.3")
    done = subprocess.run([sys.executable, "-c", passing], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.count(": ok") == 3, done.stdout + done.stderr


def test_the_demo_figures_page_is_written_from_the_run_never_by_hand(tmp_path):
    """bench_demo --write / --from-run: the funnel and pass@1 come from the run's own records."""
    import sys

    sys.path.insert(0, str(REPO / "benchmarks"))
    sys.path.insert(0, str(REPO / "tests"))
    import bench_demo

    # the run's records as the real scorer writes them (tests/test_bench_replicate.py's synthetic run):
    # base right on 20 of 40 questions, SVD on 30, UQ-TTC on 25, every seed alike
    from test_bench_replicate import synthetic_run

    run = synthetic_run(tmp_path / "run")
    (run / "config.yaml").write_text("verify:\n  stages: [cycle, factuality, correctness]\n")
    page = bench_demo.figures_page(run, {"generate": 161.2, "verify": 201.0}, 900.0, 4.5)
    assert "| generate | 161 |" in page and "| **total** | **900** (0.75 of the 20-minute budget) |" in page
    # the funnel narrows in the cascade's order, whatever order stats.json keeps its keys in
    steps = [line.split("|")[1].strip() for line in page.splitlines() if line.startswith("| ") and "|" in line[2:]]
    assert steps[steps.index("candidates") : steps.index("kept") + 1] == [
        "candidates", "cycle", "factuality", "correctness", "valid", "selected", "kept"
    ]  # fmt: skip
    assert "| cycle | 1800 |" in page and "| kept | 330 |" in page
    row = next(line for line in page.splitlines() if line.startswith("| replicate_arithmetic |"))
    assert row.startswith("| replicate_arithmetic | 50.0 ± 0.0 | 75.0 ± 0.0 | 62.5 ± 0.0 | +25.0 (")
    assert "do not edit by hand" in page


def test_readme_quotes_the_demo_figures_that_bench_demo_wrote():
    """README's demo figures are docs/DEMO_FIGURES.md's (written by bench_demo --write), never typed apart."""
    figures = (REPO / "docs" / "DEMO_FIGURES.md").read_text()
    funnel = dict(re.findall(r"^\| (\w+) \| (\d+) \|$", figures.split("## Funnel", 1)[1], flags=re.M))
    scores = re.search(
        r"^\| demo_arithmetic \| ([\d.]+ ± [\d.]+) \| ([\d.]+ ± [\d.]+) \| ([\d.]+ ± [\d.]+) \|", figures, re.M
    )
    readme = " ".join((REPO / "README.md").read_text().split())  # README wraps its lines anywhere
    quoted = (
        f"of {funnel['candidates']} candidates {funnel['cycle']} passed cycle consistency, "
        f"{funnel['factuality']} factuality and {funnel['correctness']} correctness; "
        f"{funnel['kept']} made the SFT set; "
        f"pass@1 went from {scores[1]} (base) to {scores[2]} (trained), UQ-TTC {scores[3]}"
    )
    assert quoted in readme
