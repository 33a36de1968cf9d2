"""Pilot accuracy: a pilot on a quarter of the demo's seeds against the demo's own generate + verify.

Run as: .venv/bin/python benchmarks/bench_pilot.py [--root DIR]   (~10-20 min on 2 busy cores)

Baseline: the full demo (configs/demo.yaml: 40 questions, 2 shards), generate, verify and merge
run here by the local scheduler in a run of its own (no pilot to reuse, training and eval off:
neither changes what generate and verify do). Targets: predicted generate + verify task time
within ±25% of the measured one, predicted kept-set size within ±30%. Prints both in one run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "configs" / "demo.yaml"
QUESTIONS = 40  # data/demo_seeds.jsonl
PILOT = QUESTIONS // 4


def launch(root: Path, name: str, *extra: str) -> float:
    command = [sys.executable, "-m", "svd_hpc.launch", "--config", str(CONFIG), f"run_root={root}", f"name={name}"]
    started = time.monotonic()
    subprocess.run([*command, *extra], check=True, cwd=REPO)
    return time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=None, help="where the two run directories go (default: a temporary one)")
    args = parser.parse_args()
    root = Path(args.root or tempfile.mkdtemp(prefix="bench-pilot-")).resolve()

    pilot_s = launch(root, "pilot", "--pilot", str(PILOT))
    pilot = json.loads((root / "pilot" / "pilot.json").read_text())
    full_s = launch(root, "full", "train.enabled=false", "eval.benchmarks=[]")
    timings = json.loads((root / "full" / "logs" / "local_timings.json").read_text())
    kept = json.loads((root / "full" / "merge" / "stats.json").read_text())["overall"]["kept"]

    predicted_s = sum(pilot["stages"][s]["task_hours"] * 3600 for s in ("generate", "verify"))
    actual_s = timings["generate"] + timings["verify"]
    k = pilot["kept"]
    rows = [
        ("generate task seconds", pilot["stages"]["generate"]["task_hours"] * 3600, timings["generate"], None),
        ("verify task seconds", pilot["stages"]["verify"]["task_hours"] * 3600, timings["verify"], None),
        ("generate + verify task seconds", predicted_s, actual_s, 0.25),
        (f"kept-set size (interval {k['low']}-{k['high']})", k["expected"], kept, 0.30),
    ]
    print(f"\npilot of {PILOT} questions ({pilot_s:.0f} s wall) vs the full demo of {QUESTIONS} ({full_s:.0f} s wall)")
    print(f"{'quantity':<44}{'predicted':>11}{'actual':>9}{'ratio':>8}  target")
    ok = True
    for label, predicted, actual, tolerance in rows:
        ratio = predicted / actual if actual else float("inf")
        verdict = "" if tolerance is None else f"within ±{tolerance:.0%}"
        if tolerance is not None and abs(ratio - 1) > tolerance:
            verdict, ok = f"OUTSIDE ±{tolerance:.0%}", False
        print(f"{label:<44}{predicted:>11.0f}{actual:>9.0f}{ratio:>8.2f}  {verdict}")
    print(f"run directories: {root}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
