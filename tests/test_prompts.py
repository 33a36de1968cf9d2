"""Prompt building, the static filter and verdict parsing (no model needed)."""

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from svd_hpc import prompts
from svd_hpc.records import VOTE_NO, VOTE_NONE, VOTE_YES

# ----------------------------------------------------------------------------- verdicts

VERDICT_TABLE = [
    ("Relevant: [[Y]]", VOTE_YES),
    ("[[N]]", VOTE_NO),
    ("[[ y ]]", VOTE_YES),  # any case, spaces inside the brackets
    ("first [[Y]] then on reflection [[N]]", VOTE_NO),  # the last bracketed verdict wins
    ("[[N]] ... final: [[Y]].", VOTE_YES),
    ("[[Y]] but the bare letter N comes later", VOTE_YES),  # brackets beat bare letters
    ("The verdict is Y.", VOTE_YES),
    ("Y at first, N in the end", VOTE_NO),
    ("YES, it is right. Final: N", VOTE_NO),  # a bare letter beats yes/no words
    ("n = 5 so yes", VOTE_YES),  # lower-case n is a variable, not a verdict
    ("Yes, correct.", VOTE_YES),
    ("Is it right? No.", VOTE_NO),
    ("yes... actually NO", VOTE_NO),
    ("Yesterday, nobody knew. Nothing else.", VOTE_NONE),  # yes/no only as whole words
    ("YN or NY are not verdicts", VOTE_NONE),
    ("", VOTE_NONE),
    ("[[Maybe]]", VOTE_NONE),
    ("[[Y]", VOTE_YES),  # broken brackets: falls through to the bare letter
    ("<think>clearly [[N]] ... no wait</think>Answer accepted: [[Y]]", VOTE_YES),
    ("<think>I think [[Y]]</think>", VOTE_NONE),  # the verdict sits only in the judge's reasoning
    ("<think>still thinking [[Y]] when the tokens ran out", VOTE_NONE),
    ("[[N]]<think>unclosed [[Y]]", VOTE_NO),  # before an unclosed think block counts
    ("<think>a</think>x<think>b</think>Final [[N]]", VOTE_NO),
    ("Verdict: [[Ｙ]]", VOTE_NONE),  # a full-width letter is not Y
]


@pytest.mark.parametrize("text,expected", VERDICT_TABLE)
def test_parse_verdict_table(text, expected):
    assert prompts.parse_verdict(text) == expected


TOKENS = st.sampled_from(
    [
        "[[Y]]",
        "[[N]]",
        "[[ y ]]",
        " Y ",
        " N ",
        "yes",
        "No",
        " n ",
        "<think>",
        "</think>",
        "x",
        " ",
        "\n",
        "[[",
        "]]",
        "Yes.",
    ]
)


def reference_verdict(text: str) -> int:
    """The stated precedence, written independently of the implementation."""
    if "</think>" in text:
        text = text[text.rindex("</think>") + len("</think>") :]
    elif "<think>" in text:
        text = text[: text.index("<think>")]
    positions = {}
    for m in re.finditer(r"\[\[\s*([yYnN])\s*\]\]", text):
        positions["b"] = m.group(1).upper()
    for m in re.finditer(r"(?<![A-Za-z0-9_])([YN])(?![A-Za-z0-9_])", text):
        positions["l"] = m.group(1)
    for m in re.finditer(r"(?<![A-Za-z0-9_])(yes|no)(?![A-Za-z0-9_])", text, re.IGNORECASE):
        positions["w"] = m.group(1)[0].upper()
    for kind in ("b", "l", "w"):
        if kind in positions:
            return VOTE_YES if positions[kind] == "Y" else VOTE_NO
    return VOTE_NONE


@given(st.lists(st.one_of(TOKENS, st.text(max_size=6)), max_size=14).map("".join))
def test_parse_verdict_properties(text):
    verdict = prompts.parse_verdict(text)
    assert verdict in (VOTE_YES, VOTE_NO, VOTE_NONE)
    assert verdict == reference_verdict(text)


@given(st.text(max_size=40), st.sampled_from(["[[Y]]", "[[N]]"]), st.text(alphabet="abc xyz.,!?", max_size=30))
def test_last_bracketed_verdict_wins_over_anything_before(prefix, final, tail):
    # whatever came before, a closing bracketed verdict followed by plain prose decides
    text = prefix.replace("<think>", "") + "</think>" + final + tail
    assert prompts.parse_verdict(text) == (VOTE_YES if final == "[[Y]]" else VOTE_NO)


@given(st.lists(TOKENS, max_size=12).map("".join), st.text(alphabet="abcdfghm .,;:!?0123456789\n", max_size=30))
def test_prose_without_verdict_markers_never_changes_the_verdict(text, prose):
    # letters chosen to contain no y/n (so no Y, N, yes or no can form) and no think tags
    assert prompts.parse_verdict(text + " " + prose) == prompts.parse_verdict(text + " ")


# ----------------------------------------------------------------------------- answers and filter


def test_final_answer_is_text_after_last_think_close():
    assert prompts.final_answer("<think>a</think>mid</think>  The end \\boxed{4}\n") == "The end \\boxed{4}"
    assert prompts.final_answer("no think block at all") == "no think block at all"
    assert prompts.final_answer("Ünïcode ✓ 漢字 </think> ответ") == "ответ"


@pytest.mark.parametrize(
    "text,domain,require_think,reason",
    [
        ("<think>2+2</think>So \\boxed{4}", "math", True, None),
        ("So \\boxed{4}", "math", True, "unclosed_think"),  # a thinking model must close its block
        ("So \\boxed{4}", "math", False, None),  # an instruct model has none to close
        ("<think>2+2 and then", "math", False, "unclosed_think"),  # opened, never closed
        ("<think>\\boxed{4}</think>four", "math", True, "no_boxed"),  # boxed only in the reasoning
        ("<think>x</think>   ", "science", True, "empty_answer"),
        ("<think>x</think>Answer: C", "science", True, None),
        ("<think>x</think>```python\nprint(1)\n```", "code", True, None),
        ("<think>x</think>```python\nprint(1)", "code", True, "no_code_block"),  # unclosed fence
        ("print(1)", "code", False, "no_code_block"),
    ],
)
def test_filter_reason(text, domain, require_think, reason):
    assert prompts.filter_reason(text, domain, require_think) == reason


def test_user_prompt_is_question_newline_instruction():
    assert prompts.user_prompt("What is 2+2?", "math") == (
        "What is 2+2?\nWork through the problem step by step, then write the final answer inside \\boxed{}."
    )
    assert prompts.user_prompt("Q", "code").endswith("one fenced code block.")
    with pytest.raises(ValueError, match="unknown domain 'poetry'"):
        prompts.user_prompt("Q", "poetry")


# ----------------------------------------------------------------------------- golden judge prompts

GOLDEN = {
    "infer": (
        "Below is an answer written in reply to some question. Work out the question this answer most "
        "likely replies to: its topic, its given facts and numbers, and what it asks for. "
        "Output only the question itself, with no preamble and no comment.\n\n"
        "Answer:\nThe sum is \\boxed{42}."
    ),
    "cycle": (
        "You compare two questions: an original question, and a question reconstructed only from an "
        "answer to it. Decide whether they ask the same thing: the same core topic, the same key "
        "facts, numbers and requirements, so that a full answer to one would also answer the other. "
        "Small differences of wording do not matter; a different quantity, condition or goal does.\n"
        "Finish with [[Y]] if they ask the same thing, or [[N]] if they do not.\n\n"
        "Original question:\nWhat is 17 + 25?\n\nReconstructed question:\nWhat is seventeen plus twenty-five?"
    ),
    "factuality": (
        "You are an impartial reviewer checking an answer for errors of fact and reasoning. Look for "
        "wrong facts, numbers, formulas or dates; steps whose logic does not hold; explanations that "
        "mislead or leave out something essential; common misconceptions. Be strict about any "
        "calculation mistake or logical flaw; ignore typos and style. When a claim is plausible and "
        "you find no clear error in it, give it the benefit of the doubt.\n"
        "Finish with [[Y]] if the answer has no factual or logical errors, or [[N]] if it has any.\n\n"
        "Question:\nWhat is 17 + 25?\n\nAnswer:\nThe sum is \\boxed{42}."
    ),
    "correctness": (
        "You are an impartial examiner deciding whether an answer fully and correctly solves a "
        "question. First solve the question yourself, briefly. Then compare the answer with your "
        "solution. Reject the answer if it is partial or only sketches an approach, if it gives up or "
        "calls the problem open, if it lacks the detail needed to follow it, or if it contains any "
        "error. Accept it only if it is at least 95% correct and really answers what was asked. "
        "Check your decision a second time before you give it.\n"
        "Finish with [[Y]] if you accept the answer, or [[N]] if you reject it.\n\n"
        "Question:\nWhat is 17 + 25?\n\nAnswer:\nThe sum is \\boxed{42}."
    ),
}


def test_golden_judge_prompts():
    q, a = "What is 17 + 25?", "The sum is \\boxed{42}."
    assert prompts.infer_question_prompt(a) == GOLDEN["infer"]
    assert prompts.cycle_judge_prompt(q, "What is seventeen plus twenty-five?") == GOLDEN["cycle"]
    assert prompts.factuality_prompt(q, a) == GOLDEN["factuality"]
    assert prompts.correctness_prompt(q, a) == GOLDEN["correctness"]


def test_judge_prompts_open_with_their_fixed_instruction():
    # the shared prefix is what lets vLLM's prefix cache serve every candidate of a stage
    pairs = [("What is 1+1?", "2"), ("Кто написал «Войну и мир»?", "Толстой")]
    for build in (prompts.factuality_prompt, prompts.correctness_prompt, prompts.cycle_judge_prompt):
        first, second = (build(q, a) for q, a in pairs)
        shared = len(
            next(
                p
                for p in (prompts.FACTUALITY_JUDGE, prompts.CORRECTNESS_JUDGE, prompts.CYCLE_JUDGE)
                if first.startswith(p)
            )
        )
        assert first[:shared] == second[:shared]
        assert "[[Y]]" in first[:shared] and "[[N]]" in first[:shared]  # the verdict format is stated


def test_cycle_judge_sees_only_the_two_questions():
    prompt = prompts.cycle_judge_prompt("Original?", "Inferred?")
    assert prompt.endswith("Original question:\nOriginal?\n\nReconstructed question:\nInferred?")
    assert "Answer:" not in prompt


def test_format_filter_off_keeps_unboxed_math_answers():
    assert prompts.filter_reason("The answer is 42.", "math", False) == "no_boxed"
    assert prompts.filter_reason("The answer is 42.", "math", False, require_format=False) is None
    assert prompts.filter_reason("<think>still thinking", "math", False, require_format=False) == "unclosed_think"
