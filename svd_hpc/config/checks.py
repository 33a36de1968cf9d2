"""The error type of user-fixable config problems, and the value checks the sections share."""

from __future__ import annotations

import re

STAGE_NAMES = ("eval_base", "generate", "verify", "merge", "train", "select_eval", "select", "eval_trained", "report")
VERIFY_STAGES = ("cycle", "factuality", "correctness")


class ConfigError(ValueError):
    """A user-fixable problem with the configuration (reported in one sentence, exit code 2)."""


def _prefix(source: str) -> str:
    return f"{source}: " if source else ""


def check_at_least_one(source: str, section: str, holder: object, *names: str) -> None:
    """Each named field of `holder` (the config section `section`) must be at least 1."""
    for name in names:
        value = getattr(holder, name)
        if value < 1:
            raise ConfigError(f"{_prefix(source)}{section}.{name} must be at least 1, got {value}.")


def check_verify_stages(stages: list[str], key: str, source: str) -> None:
    for stage in stages:
        if stage not in VERIFY_STAGES:
            raise ConfigError(f"{_prefix(source)}{key} has '{stage}'; valid stages: {', '.join(VERIFY_STAGES)}.")


def check_vote_rule(section: str, aggregation: str, k: int | None, votes: int, source: str = "") -> None:
    """The one rule for k: k_of_v needs 1 <= k <= votes (verify.votes). `section` is verify or merge."""
    if aggregation == "k_of_v" and (k is None or not 1 <= k <= votes):
        raise ConfigError(f"{_prefix(source)}{section}.k must be between 1 and verify.votes ({votes}) for k_of_v.")


def check_time(value: str, where: str, source: str) -> None:
    if not re.fullmatch(r"(\d+-)?\d{1,2}(:\d{2}){0,2}|\d+", value):
        raise ConfigError(f"{source}: {where} '{value}' is not a SLURM time (use D-HH:MM:SS, HH:MM:SS or minutes).")
