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
    """The eval array of `model` (base | trained), in task-index order."""
    modes = ["direct"] + (["uq_ttc"] if model == "base" and cfg.eval.uq_ttc else [])
    return [
        EvalTask(bench.name, seed, mode)
        for mode in modes
        for bench in cfg.eval.benchmarks
        for seed in seeds_of(cfg.eval, bench)
    ]
