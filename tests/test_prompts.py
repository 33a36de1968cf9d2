"""Prompt building, the static filter and verdict parsing (no model needed)."""

import json
import os
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from svd_hpc.records import VOTE_NO, VOTE_NONE, VOTE_YES
from svd_hpc.sampling import prompts

# ----------------------------------------------------------------------------- verdicts

STRICT_TABLE = [
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


@pytest.mark.parametrize("text,expected", STRICT_TABLE)
def test_parse_verdict_strict_table(text, expected):
    assert prompts.parse_verdict(text, "strict") == expected


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


def reference_strict(text: str) -> int:
    """The strict rule's precedence, written independently of the implementation."""
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
def test_parse_verdict_strict_properties(text):
    verdict = prompts.parse_verdict(text, "strict")
    assert verdict in (VOTE_YES, VOTE_NO, VOTE_NONE)
    assert verdict == reference_strict(text)


@given(st.text(max_size=40), st.sampled_from(["[[Y]]", "[[N]]"]), st.text(alphabet="abc xyz.,!?", max_size=30))
def test_last_bracketed_verdict_wins_over_anything_before(prefix, final, tail):
    # whatever came before, a closing bracketed verdict followed by plain prose decides
    text = prefix.replace("<think>", "") + "</think>" + final + tail
    for rule in ("authors", "strict"):
        assert prompts.parse_verdict(text, rule) == (VOTE_YES if final == "[[Y]]" else VOTE_NO)


@given(st.lists(TOKENS, max_size=12).map("".join), st.text(alphabet="abcdfghm .,;:!?0123456789\n", max_size=30))
def test_prose_without_verdict_markers_never_changes_the_verdict(text, prose):
    # letters chosen to contain no y/n (so no Y, N, yes or no can form) and no think tags
    for rule in ("authors", "strict"):
        assert prompts.parse_verdict(text + " " + prose, rule) == prompts.parse_verdict(text + " ", rule)


# the authors' rule (evalchemy eval/chat_benchmarks/ttc_utils.py, extract_decision_robust): the
# whole reply, the judge's thinking included; a standalone y/n in any case counts
AUTHORS_TABLE = [
    ("Relevant: [[Y]]", VOTE_YES),
    ("[[ y ]]", VOTE_YES),
    ("first [[Y]] then on reflection [[N]]", VOTE_NO),
    ("<think>I think [[Y]]</think>", VOTE_YES),  # a verdict inside the thinking counts
    ("<think>still thinking [[Y]] when the tokens ran out", VOTE_YES),  # so does one in a cut-off reply
    ("<think>clearly [[N]] ... no wait</think>Answer accepted: [[Y]]", VOTE_YES),
    ("n = 5 so yes", VOTE_NO),  # a lower-case n stands alone: it is the last letter verdict
    ("the answer is y", VOTE_YES),
    ("x2N", VOTE_NO),  # only letters bar a standalone letter, digits do not
    ("YES, it is right. Final: N", VOTE_NO),
    ("Yes, correct.", VOTE_YES),
    ("Yesterday, nobody knew. Nothing else.", VOTE_NONE),
    ("YN or NY are not verdicts", VOTE_NONE),
    ("", VOTE_NONE),
    ("<think>no verdict reached before the cut", VOTE_NO),  # "no" is a word verdict under this rule
    ("<think>the tokens ran out mid-thought", VOTE_NONE),
]


@pytest.mark.parametrize("text,expected", AUTHORS_TABLE)
def test_parse_verdict_authors_table(text, expected):
    assert prompts.parse_verdict(text, "authors") == expected
    assert prompts.parse_verdict(text) == expected  # the default rule


def reference_authors(text: str) -> int:
    """The authors' decision rule, restated from ttc_utils.py: upper-case, then three patterns."""
    upper = text.upper()
    for pattern in (r"\[\[\s*([YN])\s*\]\]", r"(?<![A-Za-z])([YN])(?![A-Za-z])", r"\b(YES|NO)\b"):
        found = re.findall(pattern, upper, re.IGNORECASE)
        if found:
            return VOTE_YES if found[-1][0] == "Y" else VOTE_NO
    return VOTE_NONE


@given(st.lists(st.one_of(TOKENS, st.text(max_size=6)), max_size=14).map("".join))
def test_parse_verdict_authors_matches_their_rule(text):
    assert prompts.parse_verdict(text, "authors") == reference_authors(text)


def test_unknown_verdict_rule_is_refused():
    with pytest.raises(ValueError, match="unknown verdict rule 'lenient'"):
        prompts.parse_verdict("[[Y]]", "lenient")


# ----------------------------------------------------------------------------- inferred question


@pytest.mark.parametrize(
    "text,first_line,full",
    [
        (
            "<think>hmm\nmaybe</think>\n\nWhat is 2+2?\nIt asks for a sum.",
            "What is 2+2?",
            "What is 2+2?\nIt asks for a sum.",
        ),
        ("What is 2+2?\nA) 3\nB) 4", "What is 2+2?", "What is 2+2?\nA) 3\nB) 4"),
        ("<think>ran out of tokens while thinking", "<think>ran out of tokens while thinking", ""),
        ("", "", ""),
    ],
)
def test_inferred_question_rules(text, first_line, full):
    assert prompts.inferred_question(text) == first_line  # the default: the authors' rule
    assert prompts.inferred_question(text, "first_line") == first_line
    assert prompts.inferred_question(text, "full") == full


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
        # one rule with the grader (answers.last_boxed): `\boxed 5` is TeX's boxed 5, a cut-off box is none
        ("<think>x</think>So \\boxed 5", "math", True, None),
        ("<think>x</think>So \\fbox{5}", "math", True, None),
        ("<think>x</think>So \\boxed{\\frac{1}{2", "math", True, "no_boxed"),
        ("<think>x</think>Answer: C", "science", True, None),
        ("<think>x</think>```python\nprint(1)\n```", "code", True, None),
        ("<think>x</think>```python\nprint(1)", "code", True, "no_code_block"),  # unclosed fence
        ("print(1)", "code", False, "no_code_block"),
    ],
)
def test_filter_reason(text, domain, require_think, reason):
    assert prompts.filter_reason(text, domain, require_think) == reason


def test_the_filter_passes_what_the_grader_reads_as_an_answer():
    from svd_hpc.eval.grading.math import grade_math

    for reply in ("<think>x</think>So \\boxed 5", "<think>x</think>So \\boxed{5}", "<think>x</think>So \\fbox{5}"):
        assert prompts.filter_reason(reply, "math", True) is None and grade_math(reply, "5").correct
    for reply in ("<think>x</think>So 5", "<think>x</think>So \\boxed{5", "<think>So \\boxed{5}"):
        assert prompts.filter_reason(reply, "math", False) is not None and not grade_math(reply, "5").correct


def test_final_answer_of_a_reply_cut_off_while_thinking_is_what_came_before():
    assert prompts.final_answer("<think>draft \\boxed{4}") == ""
    assert prompts.final_answer("Intro <think>draft") == "Intro"


def test_user_prompt_is_question_newline_instruction():
    assert prompts.user_prompt("What is 2+2?", "math") == (
        "What is 2+2?\nWork through the problem step by step, then write the final answer inside \\boxed{}."
    )
    assert prompts.user_prompt("Q", "code").endswith("one fenced code block.")
    with pytest.raises(ValueError, match="unknown domain 'poetry'"):
        prompts.user_prompt("Q", "poetry")


# ----------------------------------------------------------------------------- golden prompts

GOLDEN_DIR = Path(__file__).parent / "golden" / "prompts"
QUESTION = "A train covers 120 km in 1.5 hours. What is its average speed in km/h?"
ANSWER = "Average speed is distance over time: 120 / 1.5 = 80.\n\n\\boxed{80}"
INFERRED = "What is the average speed of a train that travels 120 km in 1.5 hours?"
CHOICE = "Which gas makes up most of Earth's atmosphere?\n\nA) Oxygen\nB) Nitrogen\nC) Argon\nD) Carbon dioxide"
FREE = "Which gas makes up most of Earth's atmosphere?"
CODE = "Read two integers a and b from standard input and print their sum."


LCB_TEST = json.dumps([{"input": "1 2\n", "output": "3\n", "testtype": "stdin"}])
LCB_CALL = json.dumps([{"input": "2\n3", "output": "5", "testtype": "functional"}])
# one fixed row per eval preset, in the layout of the benchmark's dataset
EVAL_ROWS = {
    "aime26": {"problem_idx": 1, "problem": QUESTION, "answer": "80"},
    "hmmt_feb_2025": {"problem_idx": 1, "problem": QUESTION, "answer": "80"},
    "gpqa_diamond": {
        "Record ID": "rec1",
        "Question": FREE,
        "Correct Answer": "Nitrogen",
        "Incorrect Answer 1": "Oxygen",
        "Incorrect Answer 2": "Argon",
        "Incorrect Answer 3": "Carbon dioxide",
    },
    "hle_mc": {
        "id": "h1",
        "question": FREE + "\n\nAnswer Choices:\nA. Oxygen\nB. Nitrogen\nC. Argon\nD. Carbon dioxide",
        "answer": "B",
        "answer_type": "multipleChoice",
        "image": "",
    },
    "lcb_v5": {
        "question_id": "s1",
        "question_content": CODE,
        "starter_code": "",
        "metadata": "{}",
        "public_test_cases": LCB_TEST,
        "private_test_cases": LCB_TEST,
        "contest_date": "2024-09-01T00:00:00",
    },
    "lcb_v6": {
        "question_id": "f1",
        "question_content": "Return the sum of two integers a and b.",
        "starter_code": "class Solution:\n    def add(self, a: int, b: int) -> int:\n        ",
        "metadata": json.dumps({"func_name": "add"}),
        "public_test_cases": LCB_CALL,
        "private_test_cases": LCB_CALL,
        "contest_date": "2025-02-01T00:00:00",
    },
}


def eval_prompts_rendered() -> dict[str, str]:
    """Each eval preset's prompt for its fixed row under eval seed 0 (options in that seed's order)."""
    from svd_hpc.config import BenchmarkSpec
    from svd_hpc.eval import benchmarks
    from svd_hpc.eval import prompts as eval_prompts

    out = {}
    for preset, row in EVAL_ROWS.items():
        [problem] = benchmarks.from_rows(BenchmarkSpec(name=preset, preset=preset), [row])
        out[f"eval-{preset}"] = eval_prompts.user_prompt(problem, 0)
    return out


def rendered_prompts() -> dict[str, str]:
    """Every prompt the method sends, for one fixed example: generation per domain, each judge step,
    each eval benchmark."""
    return {
        **eval_prompts_rendered(),
        "generate-math": prompts.user_prompt(QUESTION, "math"),
        "generate-science-options": prompts.user_prompt(CHOICE, "science"),
        "generate-science-free-form": prompts.user_prompt(FREE, "science"),
        "generate-code": prompts.user_prompt(CODE, "code"),
        "verify-cycle_infer": prompts.infer_question_prompt(ANSWER),
        "verify-cycle": prompts.cycle_judge_prompt(QUESTION, INFERRED),
        "verify-factuality": prompts.factuality_prompt(QUESTION, ANSWER),
        "verify-correctness": prompts.correctness_prompt(QUESTION, ANSWER),
    }


@pytest.mark.parametrize("name", sorted(rendered_prompts()))
def test_prompt_matches_golden_file(name):
    """A changed prompt shows as a diff here; SVD_UPDATE_GOLDEN=1 rewrites the files after review."""
    text = rendered_prompts()[name]
    path = GOLDEN_DIR / f"{name}.txt"
    if os.environ.get("SVD_UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.is_file(), f"{path} is missing; render it with SVD_UPDATE_GOLDEN=1"
    assert text == path.read_text()


def test_golden_folder_holds_only_rendered_prompts():
    # a prompt dropped from the method leaves no stale golden file behind
    assert sorted(p.stem for p in GOLDEN_DIR.glob("*.txt")) == sorted(rendered_prompts())


def test_judge_prompts_restate_the_verdict_format_last():
    for name, text in rendered_prompts().items():
        if name.startswith("verify-") and name != "verify-cycle_infer":
            assert text.endswith(prompts.VERDICT_REMINDER)


def test_science_instruction_follows_the_seed():
    assert prompts.shows_options(CHOICE) and not prompts.shows_options(FREE)
    assert prompts.shows_options("Q?\nAnswer Choices:\nA. one\nB. two")  # HLE's layout
    assert not prompts.shows_options("Solve for A. Then find B) nothing")  # one letter per line start
    assert prompts.user_prompt(CHOICE, "science").endswith("letter of the correct option.")
    assert prompts.user_prompt(FREE, "science").endswith("\\boxed{}.")


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
    assert "Original question:\nOriginal?\n\nReconstructed question:\nInferred?\n\n" in prompt
    assert "Answer:" not in prompt


def test_format_filter_off_keeps_unboxed_math_answers():
    assert prompts.filter_reason("The answer is 42.", "math", False) == "no_boxed"
    assert prompts.filter_reason("The answer is 42.", "math", False, require_format=False) is None
    assert prompts.filter_reason("<think>still thinking", "math", False, require_format=False) == "unclosed_think"


# ----------------------------------------------------------------------------- the authors' texts

AUTHORS_DIR = Path(__file__).parent / "golden" / "authors"
AUTHORS_TEMPLATES = {
    "judge_cycle_infer": "AUTHORS_INFER_QUESTION",
    "judge_cycle_compare": "AUTHORS_CYCLE_JUDGE",
    "judge_factuality": "AUTHORS_FACTUALITY_JUDGE",
    "judge_correctness": "AUTHORS_CORRECTNESS_JUDGE",
    "generation_math_template": "AUTHORS_GENERATION_MATH",
}


@pytest.mark.parametrize("name", sorted(AUTHORS_TEMPLATES))
def test_authors_templates_are_their_text_byte_for_byte(name):
    # the fixture is the authors' string as extracted from their code (golden/authors/README.md)
    assert getattr(prompts, AUTHORS_TEMPLATES[name]).encode() == (AUTHORS_DIR / f"{name}.txt").read_bytes()


def test_authors_generation_prompt_is_what_their_model_sees():
    fixture = (AUTHORS_DIR / "generation_math.txt").read_text()
    assert prompts.user_prompt("{question}", "math", "authors") == fixture
    # the seed goes in as it is, braces and surrounding space included
    seed = " Find {x}: 2x = 4.\n"
    assert prompts.user_prompt(seed, "math", "authors") == fixture.replace("{question}", seed)
    # their science and code prompts are not public: ours stays
    for question, domain in ((CHOICE, "science"), (FREE, "science"), (CODE, "code")):
        assert prompts.user_prompt(question, domain, "authors") == prompts.user_prompt(question, domain)


def test_authors_judge_prompts_filled_as_the_authors_fill_them():
    candidate = "<think>120 / 1.5 ... </think> wait</think>\n\n  " + ANSWER + "\n"
    reply = "<think>It asks for a speed.</think>\n" + INFERRED + "\nIt is about trains."
    question = "\n" + QUESTION + "  \n"
    answer, inferred = prompts.final_answer(candidate), prompts.inferred_question(reply)
    # their fill, written out: {answer} after the last </think>, stripped; the question stripped;
    # {inferred_question} the first line after </think>
    assert answer == ANSWER and inferred == INFERRED
    read = {name: (AUTHORS_DIR / f"{name}.txt").read_text() for name in AUTHORS_TEMPLATES}
    assert prompts.infer_question_prompt(answer, "authors") == read["judge_cycle_infer"].replace("{answer}", ANSWER)
    assert prompts.cycle_judge_prompt(question, inferred, "authors") == read["judge_cycle_compare"].replace(
        "{original_question}", QUESTION
    ).replace("{inferred_question}", INFERRED)
    for build, name in (
        (prompts.factuality_prompt, "judge_factuality"),
        (prompts.correctness_prompt, "judge_correctness"),
    ):
        expected = read[name].replace("{question}", QUESTION).replace("{answer}", ANSWER)
        assert build(question, answer, "authors") == expected
    # a brace in an answer is text, not a placeholder
    assert "{x}" in prompts.factuality_prompt("Q", "{x} = {answer}", "authors")


def test_unknown_prompt_style_is_refused():
    with pytest.raises(ValueError, match="prompt style 'theirs'"):
        prompts.factuality_prompt("Q", "A", "theirs")


def test_the_eval_sft_prompt_follows_prompts_style():
    """A benchmark with prompt: sft asks as the run's generation prompt does, in the run's prompts.style."""
    from svd_hpc.config import BenchmarkSpec
    from svd_hpc.eval import benchmarks
    from svd_hpc.eval import prompts as eval_prompts

    spec = BenchmarkSpec(name="plain", path="plain.jsonl", prompt="sft")
    [problem] = benchmarks.from_rows(spec, [{"question": QUESTION, "answer": "4"}])
    for style in ("ours", "authors"):
        assert eval_prompts.user_prompt(problem, 0, style) == prompts.user_prompt(QUESTION, problem.domain, style)
