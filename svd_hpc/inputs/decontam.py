"""Eval-set decontamination: which texts (seed questions, kept solutions) overlap a benchmark question.

Two tests, as the field's decontamination scripts run them:
- the same question after normalisation (exact), for benchmark questions of any length;
- a shared run of `n` words after normalisation (13 by default: GPT-3's appendix C and
  lm-evaluation-harness's janitor), for benchmark questions of at least `n` words.

Normalisation is the janitor's (lm_eval/decontamination/janitor.py, `normalize_string` and
`word_ngrams`): ASCII letters lower-cased, `string.punctuation` deleted, words split on whitespace.
lm_eval is not a dependency here (its package pulls in torch-side evaluation code and its janitor
prints a warning on import without its compiled helper), so its two lines of normalisation live
here, with the same output.

A text is checked by walking its words: a window is built only where its first word starts some
benchmark n-gram, so a long solution costs a set lookup per word rather than a string per word.
"""

from __future__ import annotations

import string
from collections.abc import Iterable
from dataclasses import dataclass

# the janitor's translation table: ASCII upper to lower case, punctuation deleted
_TABLE = str.maketrans(string.ascii_uppercase, string.ascii_lowercase, string.punctuation)
DEFAULT_NGRAM = 13


def normalise(text: str) -> list[str]:
    """The words of `text` as the janitor compares them."""
    return text.translate(_TABLE).split()


@dataclass(frozen=True)
class EvalQuestion:
    """One benchmark question a training text must not overlap."""

    benchmark: str
    question_id: str
    question: str


@dataclass(frozen=True)
class Match:
    """A benchmark question a text overlaps; `ngram` is the shared words (None: the whole question)."""

    benchmark: str
    question_id: str
    ngram: str | None

    def as_json(self) -> dict:
        return {"benchmark": self.benchmark, "question_id": self.question_id, "ngram": self.ngram}


class Index:
    """The benchmark questions' normalised texts and n-grams, to test training texts against."""

    def __init__(self, questions: Iterable[EvalQuestion], ngram: int | None = DEFAULT_NGRAM):
        if ngram is not None and ngram < 1:
            raise ValueError(f"an n-gram needs at least one word, got {ngram}")
        self.n = ngram
        self.exact: dict[str, list[tuple[str, str]]] = {}
        self.grams: dict[tuple[str, ...], list[tuple[str, str]]] = {}
        self.questions = 0
        for q in questions:
            self.questions += 1
            words = normalise(q.question)
            if not words:  # punctuation only: nothing a text could share with it
                continue
            key = (q.benchmark, q.question_id)
            self.exact.setdefault(" ".join(words), []).append(key)
            if ngram is not None:
                for i in range(len(words) - ngram + 1):
                    owners = self.grams.setdefault(tuple(words[i : i + ngram]), [])
                    if not owners or owners[-1] != key:
                        owners.append(key)
        self.firsts = {gram[0] for gram in self.grams}

    def matches(self, text: str, exact: bool = True) -> list[Match]:
        """Every benchmark question `text` overlaps (once each, the first shared n-gram named).

        exact: also the whole-question test (a seed question); a solution is tested by n-grams alone.
        """
        words = normalise(text)
        found: dict[tuple[str, str], Match] = {}
        if exact:
            for key in self.exact.get(" ".join(words), []):
                found[key] = Match(*key, ngram=None)
        if self.n is not None and self.firsts:
            n, grams, firsts = self.n, self.grams, self.firsts
            for i in range(len(words) - n + 1):
                if words[i] not in firsts:
                    continue
                gram = tuple(words[i : i + n])
                for key in grams.get(gram, ()):
                    found.setdefault(key, Match(*key, ngram=" ".join(gram)))
        return list(found.values())
