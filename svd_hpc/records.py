"""The data each stage hands the next: one Arrow schema per hand-off, defined here only.

seeds/shard-NNNNN.parquet     SEED        (launch -> generate)
generate/shard-NNNNN.parquet  CANDIDATE   (generate -> verify)
verify/shard-NNNNN.parquet    VERDICT     (verify -> merge): CANDIDATE columns + the judges' votes
merge/sft/{train,validation}.parquet  SFT (merge -> train), loadable by datasets.load_dataset("parquet")
eval/<model>/<benchmark>/seed-K[-uq_ttc].parquet  EVAL (eval -> report)

Votes are int8: 1 = yes ([[Y]]), 0 = no, -1 = no verdict found (counts as a rejection). A stage's
vote list is null when the candidate never reached that stage (early exit or static filter); its
cut-off list, parallel to the votes, says which replies hit verify.max_tokens before they ended.

skip_reason is null unless the engine could not run the item (see sampling/engine.py): "<kind>: <detail>",
kind prompt_too_long | template_error | engine_rejected. A skipped question keeps its N candidate
rows (empty text, passed_filter false); in VERDICT a candidate whose own judge request could not
run is skipped too (failed_stage names the stage), and a skipped candidate never passes.
"""

from __future__ import annotations

import hashlib

import pyarrow as pa

from .config import VERIFY_STAGES

VOTE_YES, VOTE_NO, VOTE_NONE = 1, 0, -1

SEED = pa.schema(
    [
        ("question_id", pa.string()),  # stable id: the dataset's id field, else a hash of the question
        ("question", pa.string()),
        ("domain", pa.string()),  # math | science | code
        ("source_index", pa.int64()),  # row number in the seed file, for tracing back
        # the known answer (seeds.answer_field), null without one; read only by the report's judge
        # precision table, never by a prompt
        ("reference", pa.string()),
    ]
)
# SEED columns added after runs were written: a shard without them still reads, as all null
SEED_ADDED = ("reference",)

CANDIDATE = pa.schema(
    [
        ("question_id", pa.string()),
        ("question", pa.string()),
        ("domain", pa.string()),
        ("candidate_index", pa.int32()),  # sampling order within the question, 0..N-1
        ("prompt", pa.string()),  # the user turn as sent: question + domain instruction
        ("text", pa.string()),  # full completion, think block included
        ("answer", pa.string()),  # final answer part: text after the last </think> (all text if none)
        ("prompt_tokens", pa.int32()),
        ("completion_tokens", pa.int32()),
        ("finish_reason", pa.string()),  # stop | length | abort
        ("passed_filter", pa.bool_()),
        ("filter_reason", pa.string()),  # null when passed; e.g. "no_boxed", "unclosed_think", "no_code_block"
        ("skip_reason", pa.string()),  # null unless the engine could not run the question
    ]
)

VOTES = pa.list_(pa.int8())

VERDICT = pa.schema(
    list(CANDIDATE)
    + [pa.field(f"{stage}_votes", VOTES) for stage in VERIFY_STAGES]
    + [pa.field(f"{stage}_cut_off", pa.list_(pa.bool_())) for stage in VERIFY_STAGES]
    + [
        ("inferred_questions", pa.list_(pa.string())),  # cycle stage: questions inferred from the answer
        ("status", pa.string()),  # passed | rejected | filtered | skipped
        ("failed_stage", pa.string()),  # rejected, or skipped while judged: cycle | factuality | correctness
        ("judge_prompt_tokens", pa.int64()),
        ("judge_completion_tokens", pa.int64()),
        ("judge_samples", pa.int32()),  # judge completions drawn for this candidate (inferences + votes)
        ("judge_texts", pa.string()),  # JSON of raw judge outputs when verify.keep_judge_text, else null
    ]
)

MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])

SFT = pa.schema(
    [
        ("messages", pa.list_(MESSAGE)),  # [user: question + instruction, assistant: full candidate]
        ("question_id", pa.string()),
        ("candidate_index", pa.int32()),
        ("domain", pa.string()),
        ("votes_yes", pa.int32()),  # yes votes over all stages
        ("votes_total", pa.int32()),
    ]
)

EVAL = pa.schema(
    [
        ("benchmark", pa.string()),
        ("model", pa.string()),  # base | trained
        ("mode", pa.string()),  # direct | uq_ttc
        ("seed", pa.int64()),
        ("question_id", pa.string()),
        ("question", pa.string()),
        ("reference", pa.string()),
        ("response", pa.string()),  # the answer graded (for uq_ttc: the chosen candidate)
        ("extracted", pa.string()),  # what the grader read from the response
        ("correct", pa.bool_()),
        ("grade_reason", pa.string()),
        ("completion_tokens", pa.int64()),
        ("samples", pa.int32()),  # samples drawn for this question (1 direct; N + judges for uq_ttc)
        ("chosen_candidate", pa.int32()),  # uq_ttc: index of the answer used; direct: 0
        ("skip_reason", pa.string()),  # null unless the engine could not run the question (then correct is false)
    ]
)


def check_schema(table: pa.Table, expected: pa.Schema, where: str, optional: tuple[str, ...] = ()) -> None:
    """Raise ValueError naming `where` and the first missing or mistyped field (`optional` ones may be missing)."""
    for field in expected:
        if field.name not in table.schema.names:
            if field.name in optional:
                continue
            raise ValueError(f"{where}: field '{field.name}' is missing; re-run the stage that wrote it.")
        actual = table.schema.field(field.name).type
        if actual != field.type and not (pa.types.is_null(actual)):
            raise ValueError(f"{where}: field '{field.name}' has type {actual}, expected {field.type}.")


def question_id(question: str) -> str:
    """The id of a question without an id field: a hash of its text, stable across runs."""
    return hashlib.sha256(question.encode()).hexdigest()[:16]


# Why a request was skipped, the first word of its skip_reason
SKIP_KINDS = ("prompt_too_long", "template_error", "engine_rejected")


def skip_kind(reason: str) -> str:
    return reason.split(":", 1)[0]
