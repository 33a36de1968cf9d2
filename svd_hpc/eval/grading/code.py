"""Code answers (LiveCodeBench): the last fenced code block, run against every test in the sandbox.

Two kinds of tests, as LiveCodeBench has them (each a dict with "input" and "output"):
- "stdin": the program reads the input and prints the answer; compared line by line after
  stripping each line, numbers also as decimals ("1.0" equals "1").
- "functional" (LeetCode style): `class Solution` with method `fn_name`; the input is one JSON
  value per line (one per argument), the output a JSON value. A harness calls the method
  inside the sandbox: the candidate's code never runs in our process.
Grading stops at the first failing test. Time: `timeout_s` per test, or one budget for all of a
problem's tests (`total_budget_s`, the authors' lcb_run: (6 + 1) × tests + 5 s), each test getting
what the tests before it left.

`CodeRules` (eval.code_imports, code_call, code_compare, code_memory_mb) turns each of our
leniencies into the authors' evalchemy `livecodebench_utils.py` behaviour: no import header, the
function named before the first "(" and nothing else, the stripped output compared whole, no
memory limit.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Literal

from ..sandbox import SandboxLimits, run_program
from . import GradeResult, final_part, unfinished_thinking

log = logging.getLogger("svd_hpc")

# A fence opens a line (indented fences occur in lists); the language tag is optional.
_FENCE = re.compile(r"^[ \t]*```[^\n`]*\n(.*?)^[ \t]*```", re.MULTILINE | re.DOTALL)

# LeetCode's judge makes these names available without imports, and LeetCode-style answers
# rely on that (`List[int]`, `deque`, `inf`); LiveCodeBench adds a similar header.
FUNCTIONAL_HEADER = """\
from typing import *
from collections import *
from heapq import *
from bisect import *
from itertools import *
from functools import *
from math import *
import collections, heapq, bisect, itertools, functools, math, string, re, sys
"""

_HARNESS = """\
import json, sys
answer_stream = sys.stdout
sys.stdout = sys.stderr  # the solution's own prints are not its answer
namespace = {{"__name__": "solution"}}
exec(compile({header!r}, "<header>", "exec"), namespace)
exec(compile({solution!r}, "solution.py", "exec"), namespace)
args = [json.loads(line) for line in sys.stdin.read().split("\\n") if line.strip()]
{locate}
result = target(*args)
{emit}
"""

# code_call lenient: Solution().fn_name, else the function fn_name, else (asked without starter
# code, the authors' prompt, a model names the function itself) the first function the code
# defines, as the authors' check does (the name before the first "("), or a method of that name
# of class Solution
_LENIENT_CALL = """\
if "Solution" in namespace and hasattr(namespace["Solution"], {fn_name!r}):
    target = getattr(namespace["Solution"](), {fn_name!r})
elif {fn_name!r} in namespace:
    target = namespace[{fn_name!r}]
else:
    name = {solution!r}.split("(")[0].split()[-1]
    holder = namespace["Solution"]() if hasattr(namespace.get("Solution"), name) else None
    target = getattr(holder, name) if holder is not None else namespace[name]"""
# code_call authors (evalchemy run_test_func): the module-level name before the first "(" only
_AUTHORS_CALL = """target = namespace[{solution!r}.split("(")[0].split()[-1]]"""
# code_compare numbers: a set is its sorted list, anything else JSON cannot hold its repr
_LENIENT_EMIT = (
    "answer_stream.write(json.dumps(result, "
    "default=lambda o: sorted(o) if isinstance(o, (set, frozenset)) else repr(o)))"
)
# code_compare exact (theirs compares Python values: a tuple or a set never equals the parsed
# expected list): a value JSON holds only by converting it is printed as its repr, no match
_EXACT_EMIT = """\
def plain(v):
    if isinstance(v, list):
        return all(plain(x) for x in v)
    if isinstance(v, dict):
        return all(isinstance(k, str) and plain(x) for k, x in v.items())
    return v is None or isinstance(v, (str, int, float, bool))
answer_stream.write(json.dumps(result) if plain(result) else repr(result))"""


@dataclass(frozen=True)
class CodeRules:
    """How model-written code is run and judged: ours, or per knob the authors' (docs/PROTOCOL.md)."""

    imports: Literal["ours", "none"] = "ours"  # a functional answer runs after FUNCTIONAL_HEADER, or bare
    call: Literal["lenient", "authors"] = "lenient"  # which callable a functional test calls
    compare: Literal["numbers", "exact"] = "numbers"  # stdout line by line with numbers as decimals, or whole
    memory_mb: int | None = 1024  # RLIMIT_AS per process (the program's cgroup: twice it); None: no limit

    def limits(self) -> SandboxLimits:
        if self.memory_mb is None:
            return SandboxLimits(memory_bytes=None, total_memory_bytes=None)
        return SandboxLimits(memory_bytes=self.memory_mb << 20, total_memory_bytes=2 * self.memory_mb << 20)


OURS = CodeRules()


def last_code_block(text: str) -> str | None:
    """The body of the last closed ``` fence in `text` (a fence cut off by max tokens does not count)."""
    blocks = _FENCE.findall(text)
    return blocks[-1] if blocks else None


def functional_harness(solution: str, fn_name: str, rules: CodeRules = OURS) -> str:
    """A program that runs `solution`'s `fn_name` on JSON arguments from stdin and prints JSON."""
    call = _LENIENT_CALL if rules.call == "lenient" else _AUTHORS_CALL
    return _HARNESS.format(
        header=FUNCTIONAL_HEADER if rules.imports == "ours" else "",
        solution=solution,
        locate=call.format(solution=solution, fn_name=fn_name),
        emit=_LENIENT_EMIT if rules.compare == "numbers" else _EXACT_EMIT,
    )


def grade_code(
    response: str,
    tests: list[dict],
    *,
    timeout_s: float = 6.0,
    mode: Literal["stdin", "functional"] = "stdin",
    fn_name: str | None = None,
    total_budget_s: float | None = None,
    rules: CodeRules = OURS,
) -> GradeResult:
    """Correct when the last code block of the final part passes every test.

    Reasons: "correct", "no_code", "unfinished_thinking", "wrong_answer", or the sandbox status
    of the failing test ("runtime_error", "timeout", "memory", "killed", "sandbox_error").
    """
    if mode not in ("stdin", "functional"):
        raise ValueError(f"grade_code mode must be 'stdin' or 'functional', not {mode!r}")
    if mode == "functional" and not fn_name:
        raise ValueError("functional tests need fn_name, the method of class Solution to call")
    if not tests:
        raise ValueError("grade_code needs at least one test")
    if unfinished_thinking(response):
        return GradeResult(False, None, "unfinished_thinking")
    code = last_code_block(final_part(response))
    if code is None or not code.strip():
        return GradeResult(False, None, "no_code")
    program = code if mode == "stdin" else functional_harness(code, fn_name, rules)
    limits = rules.limits()
    left = total_budget_s
    for number, test in enumerate(tests, 1):
        where = f"test {number}/{len(tests)}"
        if left is not None and left <= 0:
            return GradeResult(
                False, code, "timeout", f"{where}: the {total_budget_s:g} s budget of all tests is spent"
            )
        result = run_program(program, stdin=test["input"], timeout_s=timeout_s if left is None else left, limits=limits)
        if left is not None:
            left -= result.wall_s
        if result.status != "ok":
            if result.status == "sandbox_error":
                log.warning(f"sandbox could not run a program: {result.stderr[-300:]!r}")
            return GradeResult(False, code, result.status, f"{where}: {result.stderr[-500:]}")
        same = _same_value if mode == "functional" else _same_stdout if rules.compare == "numbers" else _exact_stdout
        if not same(result.stdout, test["output"]):
            return GradeResult(
                False, code, "wrong_answer", f"{where}: expected {test['output'][:200]!r}, got {result.stdout[:200]!r}"
            )
    return GradeResult(True, code, "correct")


def _same_stdout(got: str, expected: str) -> bool:
    got_lines, expected_lines = got.strip().split("\n"), expected.strip().split("\n")
    if len(got_lines) != len(expected_lines):
        return False
    for got_line, expected_line in zip(got_lines, expected_lines, strict=True):
        got_line, expected_line = got_line.strip(), expected_line.strip()
        if got_line == expected_line:
            continue
        got_numbers, expected_numbers = _decimals(got_line), _decimals(expected_line)
        if got_numbers is None or got_numbers != expected_numbers:
            return False
    return True


def _exact_stdout(got: str, expected: str) -> bool:
    """The authors' check: the stripped output equals the stripped expected output, a trailing "-" cut."""
    expected = expected.strip()
    if expected.endswith("-"):
        expected = expected[: expected.rfind("-")].rstrip()
    return got.strip() == expected


def _decimals(line: str) -> list[Decimal] | None:
    try:
        return [Decimal(token) for token in line.split()]
    except InvalidOperation:
        return None


def _same_value(got: str, expected: str) -> bool:
    try:
        return json.loads(got) == json.loads(expected)
    except json.JSONDecodeError:
        return False
