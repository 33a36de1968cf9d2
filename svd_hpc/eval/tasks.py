"""The eval arrays: which (benchmark, seed, mode) each task of eval_base and eval_trained scores.

The plan sizes the arrays from it and the eval body reads its task from it, so both agree on the order.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import RunConfig
from .presets import seeds_of


@dataclass
class EvalTask:
    """One eval array task: a (benchmark, seed, mode) of one model."""

    benchmark: str
    seed: int
    mode: str  # direct | uq_ttc


def eval_tasks(cfg: RunConfig, model: str) -> list[EvalTask]:
    """The eval array of `model` (base | trained), in task-index order: every direct task, then UQ-TTC's.

    UQ-TTC (base only) runs on a benchmark's first seed alone unless eval.uq_ttc_seeds is all: its
    expected score is the same on every seed, and each of its passes costs candidates and judges.
    """
    tasks = [
        EvalTask(bench.name, seed, "direct") for bench in cfg.eval.benchmarks for seed in seeds_of(cfg.eval, bench)
    ]
    if model == "base" and cfg.eval.uq_ttc:
        take = None if cfg.eval.uq_ttc_seeds == "all" else 1
        tasks += [
            EvalTask(bench.name, seed, "uq_ttc")
            for bench in cfg.eval.benchmarks
            for seed in seeds_of(cfg.eval, bench)[:take]
        ]
    return tasks
