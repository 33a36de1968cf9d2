"""A run directory with its seeds sharded, for benchmarks that drive a stage body themselves
(bench_generate, bench_engines): the config's settings, the demo's questions numbered into as
many distinct ones as a benchmark asks for."""

from __future__ import annotations

import json
from pathlib import Path

from svd_hpc import config
from svd_hpc.inputs import seeds
from svd_hpc.rundir.layout import RunDir

REPO = Path(__file__).resolve().parent.parent


def prepare(root: Path, settings: dict) -> RunDir:
    root.mkdir(parents=True, exist_ok=True)
    cfg_path = root / "bench.yaml"
    cfg_path.write_text(json.dumps(settings))
    cfg = config.load(cfg_path)
    run = RunDir(root / "run")
    run.write_config(cfg, meta={})
    seeds.prepare(cfg, run)
    return run


def write_questions(path: Path, count: int) -> None:
    """`count` distinct questions from the demo seeds (numbered rounds once they run out)."""
    demo = [json.loads(line)["question"] for line in (REPO / "data/demo_seeds.jsonl").read_text().splitlines()]
    questions = [
        demo[i % len(demo)] + (f" (Round {i // len(demo) + 1}.)" if i >= len(demo) else "") for i in range(count)
    ]
    path.write_text("".join(json.dumps({"question": q}) + "\n" for q in questions))
