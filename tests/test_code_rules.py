"""eval.code_imports, code_call, code_compare, code_memory_mb: each turns one of our LiveCodeBench
harness' leniencies into the authors' behaviour. Each case is a program that passes only with ours."""

from __future__ import annotations

import dataclasses

import pytest

from svd_hpc import config
from svd_hpc.config import ConfigError
from svd_hpc.eval.grading.code import OURS, CodeRules, grade_code
from svd_hpc.eval.sandbox import SandboxLimits
from svd_hpc.stages.evaluate import code_rules

AUTHORS = CodeRules(imports="none", call="authors", compare="exact", memory_mb=None)


def fenced(code: str) -> str:
    return f"```python\n{code}\n```"


def functional(code: str, tests: list[dict], rules: CodeRules):
    return grade_code(fenced(code), tests, mode="functional", fn_name="total", rules=rules)


SUM_TESTS = [{"input": "[1, 2, 3]", "output": "6"}]


@pytest.mark.parametrize(
    ("knob", "authors", "code", "tests", "reason"),
    [
        # typing's List is in our header, and only there
        ("imports", "none", "def total(xs: List[int]) -> int:\n    return sum(xs)", SUM_TESTS, "runtime_error"),
        # theirs calls the name before the first "(": here the method, looked up at module level
        (
            "call",
            "authors",
            "class Solution:\n    def total(self, xs):\n        return sum(xs)",
            SUM_TESTS,
            "runtime_error",
        ),
        # theirs compares Python values: a tuple is not the expected list
        (
            "compare",
            "exact",
            "def total(xs):\n    return tuple(sorted(xs))",
            [{"input": "[3, 1]", "output": "[1, 3]"}],
            "wrong_answer",
        ),
    ],
)
def test_each_functional_knob_turns_one_leniency_off(knob, authors, code, tests, reason):
    assert functional(code, tests, OURS).correct
    assert functional(code, tests, AUTHORS).reason == reason
    only_this = dataclasses.replace(OURS, **{knob: authors})
    assert functional(code, tests, only_this).reason == reason


def test_exact_compare_takes_the_whole_stripped_output():
    code, tests = "print('3.0')\nprint('1 2 ')", [{"input": "", "output": "3\n1 2\n"}]
    assert grade_code(fenced(code), tests, rules=OURS).correct  # numbers as decimals, lines stripped
    assert grade_code(fenced(code), tests, rules=CodeRules(compare="exact")).reason == "wrong_answer"
    # what theirs does accept: surrounding whitespace, and a trailing "-" of the expected output
    exact = CodeRules(compare="exact")
    assert grade_code(fenced("print(' 3 1 ')"), [{"input": "", "output": "3 1 -\n"}], rules=exact).correct


def test_memory_cap_is_a_knob():
    balloon = "data = bytearray(300 << 20)\nprint(len(data) >> 20)"
    tests = [{"input": "", "output": "300"}]
    assert grade_code(fenced(balloon), tests, rules=CodeRules(memory_mb=128)).reason == "memory"
    assert grade_code(fenced(balloon), tests, rules=CodeRules(memory_mb=None)).correct
    assert OURS.limits() == SandboxLimits()  # the default is the sandbox's own 1 GiB per process, 2 GiB in all
    assert CodeRules(memory_mb=None).limits().memory_bytes is None


def test_the_eval_section_sets_the_rules(tmp_path):
    cfg = config.from_dict(
        {"name": "c", "eval": {"code_imports": "none", "code_call": "authors", "code_memory_mb": None}}
    )
    assert code_rules(cfg) == CodeRules(imports="none", call="authors", compare="numbers", memory_mb=None)
    assert code_rules(config.from_dict({"name": "c"})) == OURS
    with pytest.raises(ConfigError, match="eval.code_memory_mb is 16; Python itself needs about 64 MiB"):
        config.from_dict({"name": "c", "eval": {"code_memory_mb": 16}}).eval.check("c.yaml")
