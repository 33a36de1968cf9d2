"""Whether a benchmark's problems are the authors' evaluation copy, by fingerprint.

The authors' evalchemy reads AIME26 from a JSON file in its own repository; our preset reads a hub
copy (MathArena/aime_2026). Two copies of one contest can differ in a problem's wording or
typesetting, or in an answer, and each difference moves pass@1. We store a fingerprint of the
authors' copy (each problem's normalised text and answer, hashed), never their data, and compare
the copy an eval task loaded with it: the eval summary says whether they are the same and, if
not, how many problems are only in one copy and how many share a problem but not its answer.

Normalised: Unicode NFKC, runs of whitespace as one space, ends stripped; an integer answer
without leading zeros ("062" is 62). Typesetting that differs beyond whitespace counts as a
different problem, which is what a reader comparing scores needs to know.
"""

from __future__ import annotations

import hashlib
import logging
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

log = logging.getLogger("svd_hpc")


@dataclass(frozen=True)
class AuthorsCopy:
    """Where the authors' copy lives and its fingerprints."""

    repo: str
    commit: str
    path: str
    problems: int
    fingerprint: str  # of every (problem, answer) pair, order aside
    answers: dict[str, str]  # problem hash -> answer hash


# computed with `fingerprint` and `pair_hashes` from the file at that commit
# (tests/test_authors_copies.py recomputes them when the evalchemy repository is at hand)
AUTHORS_COPIES = {
    "aime26": AuthorsCopy(
        repo="teetone/evalchemy",
        commit="e79da6ede90bcaa301275680bb275f3e0f47ab55",
        path="eval/chat_benchmarks/AIME26/data/aime26.json",
        problems=30,
        fingerprint="885f2eed7a7ee50e5caa2d8aa803f2efc734cb62ff888fa38de64bc7898fff83",
        answers={
            "4d866680f9238c0a": "27d719c754aacd49",
            "2822569975bbb1ec": "81b8a03f97e8787c",
            "0e674f51e84de55e": "98a3ab7c340e8a03",
            "cba4eb5fe5dc6660": "ff5a1ae012afa5d4",
            "f3d797442d90f75d": "108c995b953c8a35",
            "7968ea2f49d40430": "2dfe70c43208f52b",
            "c0976e51ae5c026b": "3c1b7053f0edd447",
            "e6ea64827cab6b0e": "82c01ce15b431d42",
            "5e99c1f8e33f1b51": "35135aaa6cc23891",
            "0015ebeec9d5e65a": "0fecf9247f3ddc84",
            "77a90b63c1a87278": "62f6d46c48c7d9ff",
            "1eaadd490abe9a9c": "bb668ca955632160",
            "30f9c2184f56bf23": "0b918943df0962bc",
            "c6d3cf210a1369fe": "1c8dcc518b9942ef",
            "b08f881f0c261224": "bbb965ab0c80d653",
            "77bffe9f7e54fd6d": "01d54579da446ae1",
            "d03d51becd4ca87c": "72440a20f54075ac",
            "bce9ef2f43a9f59b": "7182dd431b5c8833",
            "7a1a552fa3c096a7": "efd96aedf377e20a",
            "652b177c71e8a583": "2397346b45823e07",
            "f3d7b78d243a1a50": "1a6562590ef19d10",
            "ac19f76765b0b6b8": "4099ed5ba70aebc5",
            "d47975ec2ba3a7dd": "011af72a910ac4ac",
            "182940563ba1ef72": "bf31e6128301d31b",
            "f7b4a98af9dd00a5": "7ffc2066e20c16e9",
            "f337defe8de1b62c": "dbb1ded63bc70732",
            "51697b0daa5c5889": "56f4da26ed956730",
            "7da2eab70bf65d93": "3346f2bbf6c34bd2",
            "f6e4b66c51281b5c": "c75de23d89df36ba",
            "de2bf862c4dc7c82": "99a0b871c9047c4f",
        },
    ),
}


def normalise(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).split())


def normalise_answer(answer: str) -> str:
    text = normalise(str(answer))
    return str(int(text)) if re.fullmatch(r"[+-]?\d+", text) else text


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def pair_hashes(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Problem hash -> answer hash, for (problem, answer) pairs."""
    return {_hash(normalise(problem)): _hash(normalise_answer(answer)) for problem, answer in pairs}


def fingerprint(pairs: Iterable[tuple[str, str]]) -> str:
    """One hash of every (problem, answer) pair, whatever their order."""
    lines = sorted(f"{q} {a}" for q, a in pair_hashes(pairs).items())
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def compare(preset: str | None, pairs: list[tuple[str, str]]) -> dict | None:
    """How the loaded (problem, answer) pairs stand against the authors' copy; None without one."""
    copy = AUTHORS_COPIES.get(preset or "")
    if copy is None:
        return None
    ours = pair_hashes(pairs)
    return {
        "source": f"{copy.repo}@{copy.commit[:7]}:{copy.path}",
        "same": fingerprint(pairs) == copy.fingerprint,
        "problems": len(ours),
        "authors_problems": copy.problems,
        "only_ours": len(ours.keys() - copy.answers.keys()),
        "only_authors": len(copy.answers.keys() - ours.keys()),
        "answers_differ": sum(copy.answers[q] != a for q, a in ours.items() if q in copy.answers),
    }


def check(benchmark: str, preset: str | None, pairs: list[tuple[str, str]]) -> dict | None:
    """`compare`, with a warning when the copy differs from the authors' (scores then compare loosely)."""
    result = compare(preset, pairs)
    if result and not result["same"]:
        log.warning(
            f"benchmark {benchmark}: not the authors' copy ({result['source']}): {result['only_ours']} problem(s) "
            f"only here, {result['only_authors']} only there, {result['answers_differ']} with another answer; "
            "its pass@1 compares with the paper's only loosely (eval summary: authors_copy)"
        )
    return result
