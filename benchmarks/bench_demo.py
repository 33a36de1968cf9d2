"""Demo benchmark: wall time per stage and peak memory of configs/demo.yaml on this machine.

Run as:  .venv/bin/python benchmarks/bench_demo.py [--config configs/demo.yaml] [--keep DIR] [key=value ...]

Runs the demo from scratch through the local scheduler in a fresh run directory and prints each
stage's wall time (from logs/local_timings.json), the total, and the peak resident memory of the
largest process (every task runs in a process of its own). Baseline: the issue's budget on a
2-core machine, 20 minutes and 8 GiB; the ratios to it are printed, so regressions show.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BUDGET_S, BUDGET_GIB = 20 * 60, 8.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "demo.yaml"))
    parser.add_argument("--keep", metavar="DIR", help="run in DIR/bench and keep the run directory for inspection")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
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
    print(f"{'stage':<14}{'wall s':>9}")
    for stage, seconds in timings.items():
        print(f"{stage:<14}{seconds:>9.1f}")
    print(f"{'total':<14}{total:>9.1f}   {total / BUDGET_S:.2f} of the 20-minute budget")
    print(
        f"{'peak RSS':<14}{peak_gib:>8.2f}G   {peak_gib / BUDGET_GIB:.2f} of the 8 GiB budget (largest single process)"
    )


if __name__ == "__main__":
    main()
