"""The rounds after the first: which questions, which model trains, when the chain stops early."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .checks import ConfigError


@dataclass
class IterationConfig:
    """Round r+1 generates and judges with round r's trained model (used when `rounds` > 1)."""

    seeds: Literal["same", "fresh", "unsolved"] = "same"
    """Each round's questions: same (the whole seed set every round), fresh (round r takes the r-th of
    `rounds` equal slices of the seed set, in its order), or unsolved (those no earlier round's SFT set kept)."""
    train_from: Literal["base", "previous"] = "base"
    """base: every round trains the base model on the union of all rounds' SFT sets (a question kept in
    several rounds gives its latest answer), so a mistake learned in one round is not trained on again from
    a drifted start; previous: round r+1 fine-tunes round r's model on its own round's set (cheaper)."""
    stop_min_kept: int = 0
    """Stop before round r+1 when round r's SFT set kept fewer examples than this; 0: never."""
    stop_unless_improved: bool = False
    """Stop before round r+1 when round r's trained model's pass@1 (mean over benchmarks) is not above round
    r-1's (the base model's for round 1); round r+1 then waits for round r's eval."""

    def check(self, rounds: int, trains: bool, evaluates: bool, source: str) -> None:
        if rounds < 1:
            raise ConfigError(f"{source}: rounds must be at least 1, got {rounds}.")
        if rounds > 1 and not trains:
            raise ConfigError(
                f"{source}: rounds={rounds} needs training (each round generates with the model the round "
                "before trained); set train.enabled: true or rounds: 1."
            )
        if self.stop_min_kept < 0:
            raise ConfigError(f"{source}: iteration.stop_min_kept must be 0 or more, got {self.stop_min_kept}.")
        if rounds > 1 and self.stop_unless_improved and not evaluates:
            raise ConfigError(
                f"{source}: iteration.stop_unless_improved compares eval pass@1, but eval.benchmarks is empty; "
                "add a benchmark or set iteration.stop_unless_improved: false."
            )
