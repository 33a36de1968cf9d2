"""The decontaminate section: seeds and kept solutions checked against the eval benchmarks' questions."""

from __future__ import annotations

from dataclasses import dataclass

from .checks import ConfigError


@dataclass
class DecontaminateConfig:
    """Drop training data that overlaps an eval benchmark's questions (docs/PROTOCOL.md, decontamination).

    At launch every seed question is tested against every question of eval.benchmarks: the same text
    after normalisation (lower case, punctuation deleted, whitespace collapsed), or a shared run of
    `ngram` words. Contaminated seeds are dropped (after seeds.limit is applied, so a limit may leave fewer
    seeds) and listed in seeds/contaminated.jsonl. At merge the
    same test runs on each valid candidate's solution (merge/contaminated.jsonl), and report.md gives
    pass@1 on the clean subset: the eval questions that no kept training row overlaps.
    """

    enabled: bool = True
    """Test the seeds at launch and the valid candidates at merge against eval.benchmarks' questions; false: no
    test, nothing dropped, no clean subset in the report."""
    ngram: int | None = 13
    """Words in a shared run that counts as overlap (13: GPT-3's and lm-evaluation-harness's test); null: the
    exact-question test alone. Short benchmark questions (fewer words) are tested by exact match only."""
    solutions: bool = True
    """Also drop, at merge, valid candidates whose solution shares an n-gram with a benchmark question (before
    selection, so another candidate of the question may be kept); false: they are kept, listed and counted, and
    the questions they overlap leave the report's clean subset."""

    def check(self, source: str) -> None:
        if self.ngram is not None and self.ngram < 1:
            raise ConfigError(
                f"{source}: decontaminate.ngram must be at least 1 (13 is the usual), or null for exact match only; "
                f"got {self.ngram}."
            )
