"""The hendrycks_math answer check the authors' AIME grader calls, ported verbatim.

Source: lm-evaluation-harness (MIT licence) `lm_eval/tasks/hendrycks_math/utils.py` as of lm_eval
0.4.8: `last_boxed_only_string`, `remove_boxed`, `is_equiv` and the string normalisation behind it.
evalchemy's `AIME26/eval_instruct.py` imports these three and nothing else. Ported rather than
depended on: lm_eval pulls in datasets, evaluate, sacrebleu and more for ~150 lines of string rules.
Quirks are kept on purpose (a reader that differs from theirs is what `math` is for): "0.5" and
"\\frac{1}{2}" are equal but "0.50" is not, "x = 5" equals "5" only when the left side has at
most two characters, `\\boxed 5` wins over a later `\\boxed{6}`.
"""

from __future__ import annotations


def is_equiv(str1: str | None, str2: str | None) -> bool:
    """Equal after hendrycks' normalisation (`strip_string`); plain equality if normalising raises."""
    if str1 is None and str2 is None:
        return True
    if str1 is None or str2 is None:
        return False
    try:
        return strip_string(str1) == strip_string(str2)
    except Exception:  # noqa: BLE001  as theirs: any failure of the rules falls back to equality
        return str1 == str2


def remove_boxed(s: str) -> str:
    """The argument of a `\\boxed{...}` or `\\boxed ...` string (AssertionError on anything else)."""
    if "\\boxed " in s:
        left = "\\boxed "
        assert s[: len(left)] == left
        return s[len(left) :]
    left = "\\boxed{"
    assert s[: len(left)] == left
    assert s[-1] == "}"
    return s[len(left) : -1]


def last_boxed_only_string(string: str) -> str | None:
    """The last `\\boxed{...}` (or `\\fbox{...}`) with its braces balanced, or None; any `\\boxed `
    (with a space) wins, cut at the next `$`."""
    idx = string.rfind("\\boxed")
    if "\\boxed " in string:
        return "\\boxed " + string.split("\\boxed ")[-1].split("$")[0]
    if idx < 0:
        idx = string.rfind("\\fbox")
        if idx < 0:
            return None
    i = idx
    right_brace_idx = None
    num_left_braces_open = 0
    while i < len(string):
        if string[i] == "{":
            num_left_braces_open += 1
        if string[i] == "}":
            num_left_braces_open -= 1
            if num_left_braces_open == 0:
                right_brace_idx = i
                break
        i += 1
    return None if right_brace_idx is None else string[idx : right_brace_idx + 1]


def _fix_fracs(string: str) -> str:
    substrs = string.split("\\frac")
    new_str = substrs[0]
    if len(substrs) > 1:
        for substr in substrs[1:]:
            new_str += "\\frac"
            if substr[0] == "{":
                new_str += substr
            else:
                if len(substr) < 2:
                    return string
                a, b = substr[0], substr[1]
                if b != "{":
                    new_str += "{" + a + "}{" + b + "}" + substr[2:]
                else:
                    new_str += "{" + a + "}" + b + substr[2:]
    return new_str


def _fix_a_slash_b(string: str) -> str:
    if len(string.split("/")) != 2:
        return string
    a, b = string.split("/")
    try:
        a, b = int(a), int(b)
        assert string == f"{a}/{b}"
        return "\\frac{" + str(a) + "}{" + str(b) + "}"
    except AssertionError:
        return string  # theirs lets int()'s ValueError through, to is_equiv's plain equality


def _remove_right_units(string: str) -> str:
    # "\\text{ " only ever occurs (at least in the val set) when describing units
    if "\\text{ " in string:
        splits = string.split("\\text{ ")
        assert len(splits) == 2
        return splits[0]
    return string


def _fix_sqrt(string: str) -> str:
    if "\\sqrt" not in string:
        return string
    splits = string.split("\\sqrt")
    new_string = splits[0]
    for split in splits[1:]:
        if split[0] != "{":
            new_string += "\\sqrt{" + split[0] + "}" + split[1:]
        else:
            new_string += "\\sqrt" + split
    return new_string


def strip_string(string: str) -> str:
    """hendrycks' normalisation of an answer string, step for step."""
    string = string.replace("\n", "")
    string = string.replace("\\!", "")
    string = string.replace("\\\\", "\\")
    string = string.replace("tfrac", "frac")
    string = string.replace("dfrac", "frac")
    string = string.replace("\\left", "")
    string = string.replace("\\right", "")
    string = string.replace("^{\\circ}", "")
    string = string.replace("^\\circ", "")
    string = string.replace("\\$", "")
    string = _remove_right_units(string)
    string = string.replace("\\%", "")
    string = string.replace("\\%", "")  # theirs has this twice (once as the invalid escape "\%")
    string = string.replace(" .", " 0.")
    string = string.replace("{.", "{0.")
    if len(string) == 0:
        return string
    if string[0] == ".":
        string = "0" + string
    # "k = 5" -> "5" when the left side is short
    if len(string.split("=")) == 2 and len(string.split("=")[0]) <= 2:
        string = string.split("=")[1]
    string = _fix_sqrt(string)
    string = string.replace(" ", "")
    string = _fix_fracs(string)
    if string == "0.5":
        string = "\\frac{1}{2}"
    return _fix_a_slash_b(string)
