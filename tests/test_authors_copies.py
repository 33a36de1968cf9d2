"""The authors' AIME26 copy by fingerprint: the stored one is evalchemy's, and a loaded copy is compared with it."""

import json
import logging
import os
import subprocess
from pathlib import Path

import pytest

from svd_hpc.config import BenchmarkSpec
from svd_hpc.eval import authors_copies
from svd_hpc.eval.authors_copies import AUTHORS_COPIES, AuthorsCopy, compare, fingerprint, pair_hashes

# a clone of teetone/evalchemy (a bare mirror will do); where the project's tools fetch it by default
EVALCHEMY = Path(os.environ.get("SVD_EVALCHEMY_GIT", "/work/.mirror/teetone+evalchemy/repo"))

PAIRS = [("Find $m + n$ where m = 1.", "062"), ("How many  palindromes?\n", "7"), ("Area of $\\mathcal T$?", "12")]


def authors_file(copy: AuthorsCopy) -> str | None:
    """The authors' file at the stored commit, from a local clone of their repository; None without one."""
    if not EVALCHEMY.exists():
        return None
    shown = subprocess.run(
        ["git", "-C", str(EVALCHEMY), "show", f"{copy.commit}:{copy.path}"], capture_output=True, text=True
    )
    return shown.stdout if shown.returncode == 0 else None


def test_the_stored_aime26_fingerprint_is_evalchemys_copy():
    copy = AUTHORS_COPIES["aime26"]
    text = authors_file(copy)
    if text is None:
        pytest.skip(f"no clone of {copy.repo} holding {copy.commit[:7]} at {EVALCHEMY} (set SVD_EVALCHEMY_GIT)")
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]  # evalchemy reads it as JSON lines
    pairs = [(row["problem"], str(row["answer"])) for row in rows]
    assert copy.problems == len(rows) == 30
    assert copy.fingerprint == fingerprint(pairs)
    assert copy.answers == pair_hashes(pairs)


@pytest.fixture
def known(monkeypatch):
    """A stored copy of PAIRS under the preset name 'known'."""
    copy = AuthorsCopy("o/r", "c" * 40, "p.json", len(PAIRS), fingerprint(PAIRS), pair_hashes(PAIRS))
    monkeypatch.setitem(AUTHORS_COPIES, "known", copy)
    return copy


def test_the_same_problems_in_another_order_spacing_or_zero_padding_are_the_authors_copy(known):
    loaded = [("How many palindromes?", "7"), ("Area of $\\mathcal T$?", "12"), ("Find $m + n$  where m = 1.", "62")]
    result = compare("known", loaded)
    assert result == {
        "source": "o/r@ccccccc:p.json",
        "same": True,
        "problems": 3,
        "authors_problems": 3,
        "only_ours": 0,
        "only_authors": 0,
        "answers_differ": 0,
    }


def test_a_changed_answer_a_reworded_problem_and_a_missing_one_are_counted(known, caplog):
    loaded = [("Find $m + n$ where m = 1.", "61"), ("How many palindromes are there?", "7")]
    with caplog.at_level(logging.WARNING, logger="svd_hpc"):
        result = authors_copies.check("aime26", "known", loaded)
    assert result["same"] is False
    assert (result["answers_differ"], result["only_ours"], result["only_authors"]) == (1, 1, 2)
    assert "benchmark aime26: not the authors' copy (o/r@ccccccc:p.json)" in caplog.text


def test_a_benchmark_without_a_stored_copy_is_not_compared():
    assert compare("hmmt_feb_2025", PAIRS) is None and compare(None, PAIRS) is None


@pytest.mark.slow
def test_the_aime26_preset_loads_the_authors_problems_and_answers():
    """The hub copy the preset reads (MathArena/aime_2026) against the authors' fingerprint; needs the hub."""
    from svd_hpc.eval import benchmarks
    from svd_hpc.inputs import staging

    if staging.hub_unreachable():
        pytest.skip(f"the hub is needed: {staging.hub_unreachable()}")
    problems = benchmarks.load(BenchmarkSpec(name="aime26", preset="aime26"))
    result = compare("aime26", [(p.question, p.answer or "") for p in problems])
    assert result["same"], result
