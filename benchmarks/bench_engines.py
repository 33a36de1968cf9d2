"""Engines per task: the generate stage on one shard with 2 data-parallel engines
(resources.generate.engines_per_task=2) vs the baseline, 1 engine (the default), on the same
questions, model, sampling and per-request seeds, so both write the same records.

Run as: .venv/bin/python benchmarks/bench_engines.py [--questions 32 --n 4 --max-tokens 96] [--quick]

Both sides load once, untimed: the baseline's engine in this process, the two engines as child
processes, each on its own half of the cores (on a GPU node: its own GPUs). The sides alternate
over the repeats, each on a fresh run directory, so neither profits from the other's warm-up or a
drift in background load. It prints output tokens/s of each side and their ratio, 2 engines ÷ 1.

On a GPU node each engine has its own GPUs, so the ratio can approach 2 (not measured: the machine
this was written on has no GPU). On a CPU machine the two engines split the cores the one engine
had, so expect no gain (about 1; a shared machine's load swings it either way: 1.23 at load
average 10, see README): there the run shows that the engines run, split the work and agree.
--quick (CI): 6 questions, n=2, 32 tokens, 2 repeats; fails unless both sides write the same
records and the ratio stays above QUICK_RATIO.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import pyarrow.parquet as pq
import quick
from seeded_runs import prepare, write_questions

from svd_hpc.sampling.engine import Engine
from svd_hpc.sampling.engines import open_engines
from svd_hpc.stages import generate

# Two engines on the same 2 cores do the same work with each engine's fixed cost per step twice
# over; a CPU ratio far below 1 would mean the engines wait on each other or on this process.
QUICK_RATIO = 0.5


def machine() -> str:
    return (
        f"{platform.node()} {platform.machine()} {os.cpu_count()} CPUs "
        f"({len(os.sched_getaffinity(0))} usable), load average {os.getloadavg()[0]:.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="builtin:smollm2")
    parser.add_argument("--questions", type=int, default=32)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="CI: 6 questions, n=2, 32 tokens, pass/fail")
    args = parser.parse_args()
    if args.quick:
        args.questions, args.n, args.max_tokens, args.repeats = 6, 2, 32, 2
    logging.basicConfig(level=logging.WARNING)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        src = tmp / "seeds.jsonl"
        write_questions(src, args.questions)
        settings = {
            "name": "bench",
            "model": {"path": args.model, "max_model_len": 2048},
            "seeds": {"path": str(src)},
            "generate": {"n": args.n, "max_tokens": args.max_tokens, "chunk_size": 4, "temperature": 0.8},
        }
        model = prepare(tmp / "model", settings).load_config().model
        sides = {"1 engine": open_engines(model, 1, Engine), "2 engines": open_engines(model, 2, Engine)}
        measured: dict[str, list[tuple[int, float]]] = {side: [] for side in sides}
        shards: dict[str, object] = {}
        for rep in range(args.repeats):
            for side in list(sides) if rep % 2 == 0 else list(sides)[::-1]:
                run = prepare(tmp / f"{side.replace(' ', '-')}-{rep}", settings)
                started = time.perf_counter()
                tokens = generate.run_shard(run, 0, engine=sides[side])["completion_tokens_generated"]
                measured[side].append((tokens, time.perf_counter() - started))
                shards[side] = pq.read_table(run.shard_path("generate", 0))
        sides["2 engines"].close()

    same = shards["2 engines"].equals(shards["1 engine"])
    rate = {side: sum(t for t, _ in runs) / sum(s for _, s in runs) for side, runs in measured.items()}
    ratio = rate["2 engines"] / rate["1 engine"]
    print(f"machine: {machine()}")
    print(
        f"model {args.model}: {args.questions} questions × n={args.n}, "
        f"max_tokens {args.max_tokens}, {args.repeats} repeats"
    )
    for side, runs in measured.items():
        per_run = ", ".join(f"{t / s:.1f}" for t, s in runs)
        print(f"  {side:9s}: {rate[side]:7.1f} output tokens/s pooled (per repeat: {per_run})")
    print(f"  throughput 2 engines ÷ 1 engine (baseline): {ratio:.2f}")
    spread = [t / s for t, s in measured["2 engines"]] + [t / s for t, s in measured["1 engine"]]
    print(f"  repeats' spread: {statistics.pstdev(spread) / statistics.mean(spread):.0%} of the mean")
    print(f"  records of 2 engines equal 1 engine's: {same}")
    if len(os.sched_getaffinity(0)) <= 4:
        print(
            "  note: on a CPU machine the 2 engines split the cores the 1 engine had, so no gain is expected "
            "here; on a GPU node each engine has its own GPUs."
        )
    if args.quick:
        quick.gate(
            [("records equal (1 = yes)", float(same), ">=", 1.0), ("throughput 2 ÷ 1", ratio, ">=", QUICK_RATIO)]
        )


if __name__ == "__main__":
    main()
