"""The authors' answer readers (authors_aime, authors_gpqa, authors_hle) beside ours, and `regrade`.

Each case is one where the authors' evalchemy reader and ours disagree, so a reader that quietly
became the other fails here.
"""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from svd_hpc import config, launch
from svd_hpc.config import BenchmarkSpec, ConfigError
from svd_hpc.eval import presets, regrade
from svd_hpc.eval.grade import grade
from svd_hpc.eval.grading.authors import gpqa_answer, grade_authors_aime, hle_answer
from svd_hpc.eval.grading.choice import extract_letter, first_answer_letter
from svd_hpc.eval.grading.hendrycks import is_equiv, last_boxed_only_string, strip_string
from svd_hpc.eval.grading.math import grade_math
from svd_hpc.eval.problems import Problem
from svd_hpc.records import EVAL
from svd_hpc.rundir.layout import RunDir

# (response, reference, authors_aime's verdict, ours (math)'s verdict)
AIME_DISAGREE = [
    ("\\boxed{0.50}", "1/2", False, True),  # hendrycks only knows "0.5"
    ("\\boxed{3.0}", "3", False, True),  # no numbers, only strings
    ("\\boxed{\\frac{2}{4}}", "1/2", False, True),  # no algebra
    ("\\boxed 5$ then \\boxed{6}", "6", False, True),  # any "\boxed " (space) wins
    ("<think>\\boxed{7}</think>No idea.", "7", True, False),  # theirs reads the thinking too
]
AIME_AGREE = [
    ("\\boxed{\\dfrac12}", "\\frac{1}{2}"),
    ("\\boxed{1/2}", "0.5"),
    ("So \\boxed{x = 5}.", "5"),  # a short left side is dropped
    ("\\boxed{10^{\\circ}}", "10"),
]


@pytest.mark.parametrize(("response", "reference", "theirs", "ours"), AIME_DISAGREE)
def test_authors_aime_differs_from_ours_where_evalchemy_does(response, reference, theirs, ours):
    assert grade_authors_aime(response, reference).correct is theirs
    assert grade_math(response, reference).correct is ours
    problem = Problem("q", "?", "math", "authors_aime", answer=reference)
    assert grade(problem, reference, response, 6.0).correct is theirs


@pytest.mark.parametrize(("response", "reference"), AIME_AGREE)
def test_authors_aime_normalises_as_hendrycks(response, reference):
    assert grade_authors_aime(response, reference).correct


def test_hendrycks_port_keeps_its_rules():
    assert strip_string("\\left( 3, \\dfrac{1}{2} \\right)") == "(3,\\frac{1}{2})"
    assert strip_string("\\sqrt2") == "\\sqrt{2}" and strip_string("\\frac12") == "\\frac{1}{2}"
    assert strip_string("5\\text{ cm}") == "5" and strip_string(".5") == "\\frac{1}{2}"
    assert last_boxed_only_string("a \\boxed{x^{2}} b \\fbox{3}") == "\\boxed{x^{2}}"
    assert last_boxed_only_string("\\boxed{unclosed") is None
    assert is_equiv("1/x", "1/x") and not is_equiv("1/x", "1 / y")  # int("x") raises: plain equality
    assert grade_authors_aime("no box at all", "5").reason == "no_boxed"


def test_authors_gpqa_takes_the_last_standalone_letter_anywhere():
    # an article "A" after the boxed answer is theirs; ours reads the box
    reply = "The answer is \\boxed{B}. A good choice."
    assert gpqa_answer(reply) == "A" and extract_letter(reply, 4) == "B"
    # a letter named only in the thinking counts for theirs, not for ours
    assert gpqa_answer("<think>C seems right</think>") == "C"
    assert extract_letter("<think>C seems right</think>", 4) is None
    problem = Problem("q", "?", "science", "authors_gpqa", options=["w", "x", "y", "z"], correct_index=1)
    assert not grade(problem, "B", reply, 6.0).correct
    assert grade(problem, "B", "<think>hmm</think>So (b).", 6.0).correct  # upper-cased
    assert grade(problem, "B", "none of them", 6.0).reason == "no_letter"


def test_authors_hle_reads_the_first_answer_even_inside_a_word():
    assert hle_answer("Answer: The best is B") == "T"
    assert first_answer_letter("Answer: The best is B", 5) == "B"
    assert hle_answer("<think>Answer: C</think>Answer: B") == "C"  # the thinking's comes first
    assert first_answer_letter("<think>Answer: C</think>Answer: B", 5) == "B"
    problem = Problem("q", "?", "science", "authors_hle", correct_letter="C")
    assert grade(problem, "C", "<think>Answer: C</think>Answer: B", 6.0).correct


def test_a_preset_takes_only_a_reader_of_its_own_kind():
    spec = BenchmarkSpec(name="g", preset="gpqa_diamond", grader="authors_gpqa")
    assert presets.resolve(spec).grader == "authors_gpqa"
    assert presets.resolve(BenchmarkSpec(name="a", preset="aime26", grader="authors_aime")).grader == "authors_aime"
    with pytest.raises(ConfigError, match="cannot read gpqa_diamond's answers; choose one of choice, authors_gpqa"):
        presets.resolve(BenchmarkSpec(name="g", preset="gpqa_diamond", grader="authors_aime"))


def test_a_problem_read_by_an_authors_reader_is_presented_as_its_kind():
    problem = Problem("q", "Which?", "science", "authors_gpqa", stem="Which?", options=["w", "x"], correct_index=0)
    shown, letter = problem.present(3)
    assert problem.kind == "choice" and "A) " in shown and letter in "AB"


# ----------------------------------------------------------------------------- regrade


def _eval_file(run: RunDir, model: str, benchmark: str, seed: int, grader: str, answers: list[tuple]) -> None:
    """An eval file as the eval stage leaves it: records (response, reference, recorded verdict) and summary."""
    folder = run.stage_dir("eval") / model / benchmark
    folder.mkdir(parents=True, exist_ok=True)
    rows = [
        {
            "benchmark": benchmark,
            "model": model,
            "mode": "direct",
            "seed": seed,
            "question_id": f"q{i}",
            "question": "?",
            "reference": reference,
            "response": response,
            "extracted": None,
            "correct": correct,
            "grade_reason": "correct" if correct else "wrong_answer",
            "completion_tokens": 10,
            "samples": 1,
            "chosen_candidate": 0,
            "skip_reason": skip,
        }
        for i, (response, reference, correct, skip) in enumerate(answers)
    ]
    pq.write_table(pa.Table.from_pylist(rows, schema=EVAL), folder / f"seed-{seed}.parquet")
    (folder / f"seed-{seed}.json").write_text(json.dumps({"grader": grader}))


@pytest.fixture
def finished_run(tmp_path):
    """Two seeds of a math benchmark graded math_last_number (a model that does not box), one GPQA seed."""
    cfg = config.from_dict({"name": "rg", "model": {"path": "builtin:tiny-qwen3"}, "train": {"enabled": False}})
    run = RunDir(tmp_path / "rg")
    run.write_config(cfg, meta={})
    _eval_file(
        run,
        "base",
        "aime",
        0,
        "math_last_number",
        [
            ("So it is 42.", "42", True, None),  # unboxed: only the last-number reader takes it
            ("\\boxed{3.0}", "3", True, None),
            ("\\boxed{x}", "7", False, None),
            ("", "7", False, "too_long"),  # never ran: stays incorrect
        ],
    )
    _eval_file(
        run,
        "base",
        "aime",
        1,
        "math_last_number",
        [("\\boxed{7}", "7", True, None)] * 2 + [("1", "2", False, None)] * 2,
    )
    _eval_file(run, "base", "gpqa", 0, "choice", [("\\boxed{B}. A good choice.", "B", True, None)])
    return run


def test_regrade_reads_the_recorded_answers_again_with_another_reader(finished_run):
    (row,) = regrade.regrade(finished_run, "authors_aime")
    assert (row.benchmark, row.recorded_grader, row.grader, row.seeds, row.answers) == (
        "aime",
        "math_last_number",
        "authors_aime",
        2,
        8,
    )
    assert row.recorded_pass_at_1 == pytest.approx((2 / 4 + 2 / 4) / 2)
    assert row.pass_at_1 == pytest.approx((0 / 4 + 2 / 4) / 2)  # "42" unboxed and "3.0" are lost
    assert (row.gained, row.lost) == (0, 2)
    (gpqa,) = regrade.regrade(finished_run, "authors_gpqa")
    assert (gpqa.recorded_pass_at_1, gpqa.pass_at_1, gpqa.lost) == (1.0, 0.0, 1)


def test_regrade_command_prints_both_and_writes_nothing(finished_run, capsys):
    before = sorted(p.relative_to(finished_run.root) for p in finished_run.root.rglob("*"))
    assert launch.main(["regrade", str(finished_run.root), "--grader", "authors_aime"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == [
        "model",
        "benchmark",
        "mode",
        "seeds",
        "answers",
        "recorded",
        "pass@1",
        "regraded",
        "pass@1",
        "+",
        "-",
    ]
    assert out[1].split() == [
        "base",
        "aime",
        "direct",
        "2",
        "8",
        "math_last_number",
        "0.500",
        "authors_aime",
        "0.250",
        "0",
        "2",
    ]
    assert launch.main(["regrade", str(finished_run.root), "--grader", "math", "--benchmark", "aime", "--json"]) == 0
    (data,) = json.loads(capsys.readouterr().out)
    assert data["pass_at_1"] == pytest.approx((1 / 4 + 2 / 4) / 2) and (data["gained"], data["lost"]) == (0, 1)
    assert sorted(p.relative_to(finished_run.root) for p in finished_run.root.rglob("*")) == before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--grader", "code"], "choose one of math, math_last_number"),
        (["--grader", "authors_aime", "--benchmark", "gpqa"], "it reads math answers, and the run has: gpqa (choice)"),
        (["--grader", "authors_aime", "--benchmark", "nope"], "no finished eval records of benchmark 'nope'"),
    ],
)
def test_regrade_refuses_in_one_sentence(finished_run, capsys, args, message):
    assert launch.main(["regrade", str(finished_run.root), *args]) == 2
    assert message in capsys.readouterr().err
