"""Every benchmark script still imports what it uses and parses its arguments (`--help`), offers
the reduced size CI runs (`--quick`, .ci/run), and a quick run's bound fails as it says.

The full benchmarks take minutes and are run by hand (README "Benchmarks"); .ci/run runs each
`--quick` after the tests. This catches a script left behind by a change to the modules it
imports, and a benchmark CI would not run.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = sorted((REPO / "benchmarks").glob("bench_*.py"))
# the whole demo (~15 min) and the replication (hours) do not fit CI; .ci/run says why it skips them
NOT_IN_CI = {"bench_demo", "bench_replicate"}


def test_there_are_benchmarks():
    assert len(SCRIPTS) >= 10


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_benchmark_script_starts(script):
    done = subprocess.run(
        [sys.executable, str(script), "--help"], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("usage:"), done.stdout[:500]
    assert ("--quick" in done.stdout) == (script.stem not in NOT_IN_CI), done.stdout[:2000]


def test_ci_runs_every_quick_benchmark_but_the_whole_runs():
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
