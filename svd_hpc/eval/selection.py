"""Checkpoint selection (train.select): the selection set's eval tasks, its separation from the reported
benchmarks, and the rule that picks a checkpoint from its scores.

The authors export a checkpoint every 100 steps and keep the one that scores best on held-out benchmarks;
here the selection set must share nothing with eval.benchmarks, or the reported score would be the best
of several draws on the very questions it reports (docs/PROTOCOL.md).
"""

from __future__ import annotations

import re
from collections.abc import Callable

from ..config import BenchmarkSpec, ConfigError, RunConfig
from .problems import Problem
from .tasks import EvalTask


def select_tasks(cfg: RunConfig) -> list[tuple[BenchmarkSpec, EvalTask]]:
    """What each select_eval task asks of its checkpoint: every selection benchmark on each of its seeds."""
    select = cfg.train.select
    return [
        (spec, EvalTask(spec.name, seed, "direct"))
        for spec in select.benchmarks
        for seed in (spec.seeds if spec.seeds is not None else select.seeds)
    ]


def question_key(text: str) -> str:
    """A question's text with case and whitespace left out: two copies of a question compare equal."""
    return re.sub(r"\s+", " ", text).strip().casefold()


def check_disjoint(cfg: RunConfig, load: Callable[[BenchmarkSpec], list[Problem]]) -> None:
    """Refuse a selection set that holds a question of a reported benchmark (names are checked by the config)."""
    reported: dict[str, str] = {}
    for spec in cfg.eval.benchmarks:
        reported.update((question_key(p.question), spec.name) for p in load(spec))
    for spec in cfg.train.select.benchmarks:
        shared = [p for p in load(spec) if question_key(p.question) in reported]
        if shared:
            first = shared[0]
            raise ConfigError(
                f"train.select.benchmarks '{spec.name}' holds {len(shared)} question(s) of eval.benchmarks "
                f"'{reported[question_key(first.question)]}' (e.g. {first.question_id}); a checkpoint picked on "
                "reported questions inflates their score, so select on a set without them."
            )


def pick(scores: dict[int, float]) -> int:
    """The step of the best-scoring checkpoint; among equal scores, the later one.

    Ties go to the later step: when the selection set cannot tell two checkpoints apart, the pick
    stays as close as it can to the final model, what the run would report without selection.
    """
    if not scores:
        raise ValueError("no selection checkpoint has a score; run select_eval first.")
    return max(scores, key=lambda step: (scores[step], step))


def mean_pass1(per_benchmark: dict[str, list[float]]) -> float:
    """train.select.metric pass@1: the mean over benchmarks of each benchmark's mean over its seeds."""
    means = [sum(values) / len(values) for values in per_benchmark.values()]
    return sum(means) / len(means)
