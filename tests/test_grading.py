"""Answer checks of the eval stage: math equivalence, choice letters, code run against tests."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from svd_hpc.eval.grading import final_part
from svd_hpc.eval.grading.choice import extract_letter, format_choice_question, grade_choice, shuffle_options
from svd_hpc.eval.grading.code import grade_code, last_code_block
from svd_hpc.eval.grading.math import grade_math, last_boxed

REPO = Path(__file__).resolve().parent.parent

# ----------------------------------------------------------------------------- math


@pytest.mark.parametrize(
    "text, expected",
    [
        (r"so \boxed{42}.", "42"),
        (r"\boxed{1} then \boxed{2}", "2"),
        (r"\boxed{\frac{1}{\sqrt{2}}}", r"\frac{1}{\sqrt{2}}"),
        (r"\boxed{\{1, 2\}}", r"\{1, 2\}"),
        (r"\fbox{7}", "7"),
        (r"$\boxed 5$", "5"),
        (r"\boxed{3} and a cut-off \boxed{\frac{1", "3"),  # unbalanced last box: take the last whole one
        ("no box here", None),
        (r"\boxedtext{9}", None),
    ],
)
def test_last_boxed(text, expected):
    assert last_boxed(text) == expected


@pytest.mark.parametrize("boxed", ["1/2", "0.5", r"\frac{1}{2}", r"\dfrac12", r"\tfrac{1}{2}", ".5"])
def test_equivalent_forms_of_one_half(boxed):
    result = grade_math(rf"The answer is \boxed{{{boxed}}}.", r"\frac{1}{2}")
    assert result.correct, result
    assert result.extracted == boxed


@pytest.mark.parametrize(
    "boxed, reference",
    [
        ("3.0", "3"),
        (r"\frac{1}{\sqrt{2}}", r"\frac{\sqrt{2}}{2}"),
        (r"\{2, 1\}", r"\{1,2\}"),
        ("(1, 2]", "(1,2]"),
        ("1 + x^2", "x^2+1"),
        ("70", "$70$"),
        ("70", r"\boxed{70}"),
    ],
)
def test_equivalent_answers(boxed, reference):
    assert grade_math(rf"\boxed{{{boxed}}}", reference).correct


@pytest.mark.parametrize(
    "boxed, reference",
    [
        ("71", "70"),
        (r"\frac{1}{3}", "0.5"),
        ("(1, 2)", "(1,2]"),
        ("3.14159", r"\pi"),
    ],
)
def test_wrong_values_are_incorrect(boxed, reference):
    result = grade_math(rf"\boxed{{{boxed}}}", reference)
    assert not result.correct
    assert result.reason == "wrong_answer"


def test_no_boxed_answer_is_incorrect():
    result = grade_math("The answer is 42.", "42")
    assert (result.correct, result.extracted, result.reason) == (False, None, "no_boxed")


def test_only_the_final_part_counts():
    # The draft inside the think block is right, the final answer is wrong: incorrect.
    response = r"<think>maybe \boxed{42}</think>The answer is \boxed{41}."
    assert grade_math(response, "42").extracted == "41"
    assert not grade_math(response, "42").correct
    # A box inside the think block is ignored even when the final part has none.
    assert grade_math(r"<think>\boxed{42}</think>So it is 42.", "42").reason == "no_boxed"
    assert grade_math(r"<think>hmm</think>Thus \boxed{42}", "42").correct


def test_unfinished_thinking_is_incorrect():
    result = grade_math(r"<think>I guess \boxed{42} but let me check", "42")
    assert (result.correct, result.reason) == (False, "unfinished_thinking")
    assert final_part("<think>never closed") == ""


def test_unparseable_answers_fall_back_to_text():
    assert grade_math(r"\boxed{\text{north-east}}", r"\text{north-east}").correct
    assert not grade_math(r"\boxed{\text{south}}", r"\text{north-east}").correct


def test_grading_off_the_main_thread():
    # math-verify's timeouts use SIGALRM, allowed only on the main thread.
    results = []
    worker = threading.Thread(target=lambda: results.append(grade_math(r"\boxed{0.5}", r"\frac12")))
    worker.start()
    worker.join()
    assert results[0].correct, results[0]


def test_pathological_input_does_not_raise():
    result = grade_math(r"\boxed{\frac{\frac{}{}}{\sqrt[}{}}", "1")
    assert not result.correct


# ----------------------------------------------------------------------------- choice


def test_shuffle_is_deterministic_per_seed_and_question():
    options = ["w", "x", "y", "z"]
    first = shuffle_options(options, 2, seed=0, question_id="q1")
    assert shuffle_options(options, 2, seed=0, question_id="q1") == first
    orders = {tuple(shuffle_options(options, 0, seed=s, question_id="q1")[0]) for s in range(20)}
    assert len(orders) > 1  # the seed matters


def test_shuffle_is_stable_across_processes():
    # hash() is salted per process; the shuffle must not be.
    code = (
        "from svd_hpc.eval.grading.choice import shuffle_options; "
        "print(shuffle_options(list('abcde'), 3, 7, 'gpqa-17'))"
    )
    outputs = {
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO).stdout
        for _ in range(2)
    }
    assert outputs == {str(shuffle_options(list("abcde"), 3, 7, "gpqa-17")) + "\n"}


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(min_size=1), min_size=2, max_size=10, unique=True), st.data(), st.integers(), st.text())
def test_shuffle_keeps_options_and_points_at_the_correct_one(options, data, seed, question_id):
    correct = data.draw(st.integers(0, len(options) - 1))
    shuffled, letter = shuffle_options(options, correct, seed, question_id)
    assert sorted(shuffled) == sorted(options)
    assert shuffled["ABCDEFGHIJ".index(letter)] == options[correct]


def test_format_choice_question():
    assert format_choice_question("Which?", ["one", "two"]) == "Which?\n\nA) one\nB) two"


@pytest.mark.parametrize(
    "text, expected",
    [
        (r"Thus \boxed{C}", "C"),
        (r"\boxed{(B)}", "B"),
        (r"\boxed{\text{D}}", "D"),
        (r"The answer is \boxed{B} ... wait, the answer is (C)", "B"),  # boxed outranks prose
        ("The answer is (C).", "C"),
        ("Answer: D", "D"),
        ("**Answer:** B", "B"),
        ("the answer is A, not B. Final answer: C", "C"),
        ("I pick\n(B)", "B"),
        ("After all this, the best option is (D).", "D"),
        ("**C**", "C"),
        ("B) 42 Joules", "B"),
        ("<think>Answer: A</think>The answer is (B)", "B"),
    ],
)
def test_extract_letter(text, expected):
    assert extract_letter(text, 4) == expected


@pytest.mark.parametrize(
    "text",
    [
        "A cat sat on the mat.",  # an article
        "The answer is a prime number.",
        "Answer: Carbon dioxide",  # a word, not a letter
        "It needs Vitamin C and more study",
        "The answer is (E).",  # outside the 4 options
        r"\boxed{42}",
        "<think>The answer is (B)</think>",  # only the final part counts
        "I am not sure.",
    ],
)
def test_letters_in_odd_places_are_not_answers(text):
    assert extract_letter(text, 4) is None


def test_grade_choice():
    assert grade_choice("The answer is (C).", "C", 4).correct
    wrong = grade_choice("The answer is (B).", "C", 4)
    assert (wrong.correct, wrong.extracted, wrong.reason) == (False, "B", "wrong_answer")
    assert grade_choice("no idea", "C", 4).reason == "no_letter"


# ----------------------------------------------------------------------------- code


def fenced(code: str, tag: str = "python") -> str:
    return f"<think>plan</think>Here it is:\n```{tag}\n{textwrap.dedent(code).strip()}\n```\n"


DOUBLE = [{"input": "3\n", "output": "6\n"}, {"input": "10\n", "output": "20"}]


def test_last_code_block():
    text = "```python\nfirst\n```\ntext\n```\nsecond\n```\nand ```inline``` words"
    assert last_code_block(text) == "second\n"
    assert last_code_block("```python\nprint(1)\n") is None  # cut off before the closing fence
    assert last_code_block("no code") is None


def test_correct_stdin_program():
    result = grade_code(fenced("n = int(input())\nprint(n * 2)   "), DOUBLE)
    assert result.correct, result


def test_trailing_whitespace_and_decimals_are_ignored():
    tests = [{"input": "", "output": "1 2.50\nyes\n"}]
    assert grade_code(fenced("print('1 2.5   ')\nprint('yes')\n\n"), tests).correct


def test_wrong_output_stops_at_the_first_failing_test():
    result = grade_code(fenced("n = int(input())\nprint(n * 2 if n < 5 else 0)"), DOUBLE)
    assert (result.correct, result.reason) == (False, "wrong_answer")
    assert result.detail.startswith("test 2/2")


def test_exception_is_runtime_error():
    result = grade_code(fenced("raise ValueError('nope')"), DOUBLE)
    assert (result.correct, result.reason) == (False, "runtime_error")
    assert "ValueError" in result.detail


def test_timeout():
    result = grade_code(fenced("while True:\n    pass"), DOUBLE, timeout_s=0.5)
    assert (result.correct, result.reason) == (False, "timeout")


def test_no_code():
    assert grade_code("I would use a loop.", DOUBLE).reason == "no_code"
    assert grade_code("<think>```python\nprint(6)\n```", DOUBLE).reason == "unfinished_thinking"


SOLUTION = """
class Solution:
    def twoSum(self, nums: List[int], target: int) -> List[int]:
        print("debug output must not count")
        seen = {}
        for i, x in enumerate(nums):
            if target - x in seen:
                return [seen[target - x], i]
            seen[x] = i
"""
TWO_SUM = [{"input": "[2,7,11,15]\n9", "output": "[0, 1]"}, {"input": "[3,2,4]\n6", "output": "[1,2]"}]


def test_correct_functional_program():
    result = grade_code(fenced(SOLUTION), TWO_SUM, mode="functional", fn_name="twoSum")
    assert result.correct, result


def test_wrong_functional_program():
    wrong = SOLUTION.replace("[seen[target - x], i]", "[i, seen[target - x]]")
    result = grade_code(fenced(wrong), TWO_SUM, mode="functional", fn_name="twoSum")
    assert (result.correct, result.reason) == (False, "wrong_answer")


def test_functional_program_cannot_touch_the_grader():
    # The harness runs in the sandbox: a solution that exits or fakes output still fails.
    cheat = "import os\nclass Solution:\n    def twoSum(self, nums, target):\n        os._exit(0)"
    result = grade_code(fenced(cheat), TWO_SUM, mode="functional", fn_name="twoSum")
    assert not result.correct


def test_functional_needs_fn_name():
    with pytest.raises(ValueError, match="fn_name"):
        grade_code(fenced(SOLUTION), TWO_SUM, mode="functional")


def test_functional_answer_without_starter_code_is_called_by_its_own_name():
    # asked with the authors' LiveCodeBench prompt (no starter code), a model names the function itself
    top_level = "from typing import List\n\ndef two_sum(nums, target):\n" + "\n".join(
        line[4:]
        for line in SOLUTION.split("def twoSum(self, nums: List[int], target: int) -> List[int]:\n")[1].splitlines()
    )
    assert grade_code(fenced(top_level), TWO_SUM, mode="functional", fn_name="twoSum").correct
    method = SOLUTION.replace("def twoSum(self, nums: List[int]", "def two_sum(self, nums: List[int]")
    assert grade_code(fenced(method), TWO_SUM, mode="functional", fn_name="twoSum").correct
    assert grade_code(fenced("x = 1"), TWO_SUM, mode="functional", fn_name="twoSum").reason == "runtime_error"


def test_total_time_budget_is_shared_by_the_tests():
    slow = fenced("import time\ntime.sleep(0.7)\nn = int(input())\nprint(n * 2)")
    three = DOUBLE[:1] * 3
    # each test fits a 2.5 s limit, but the three sleep 2.1 s, more than one 1.8 s budget
    assert grade_code(slow, three, timeout_s=2.5).correct
    spent = grade_code(slow, three, timeout_s=2.5, total_budget_s=1.8)
    assert (spent.correct, spent.reason) == (False, "timeout")


def test_hle_reads_the_first_answer_line():
    from svd_hpc.eval.grading.choice import first_answer_letter

    assert first_answer_letter("Answer: B\nthen Answer: C", 4) == "B"  # the first, not the last
    assert first_answer_letter("answer: \\boxed{c}", 4) == "C"  # any case, boxed
    assert first_answer_letter("<think>Answer: A</think>Answer: D", 4) == "D"  # after the thinking only
    assert first_answer_letter("Answer: The option is C", 4) == "C"  # "The" is a word: the last capital letter
    assert first_answer_letter("Answer: E", 4) is None  # a letter beyond the options
    assert grade_choice("Answer: B", "B", 4, rule="first_answer").correct
