"""Merge stage: thresholds, selection, dedup, output format, determinism and bad input."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from unittest import mock

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from svd_hpc import records
from svd_hpc.config import VERIFY_STAGES, MergeConfig, RunConfig
from svd_hpc.merge import selection
from svd_hpc.rundir.layout import RunDir
from svd_hpc.runner.task import run_once
from svd_hpc.sampling import aggregation, cascade
from svd_hpc.stages import merge

YES5 = [1, 1, 1, 1, 1]
INSTRUCTION = "\nPut the final answer in \\boxed{}."


def cand(qid, cidx, votes=None, *, text=None, status=None, question=None, domain="math"):
    """One VERDICT row; votes maps stage -> list (missing stages: five yes votes)."""
    votes = {s: YES5 for s in VERIFY_STAGES} | (votes or {})
    question = question if question is not None else f"question {qid}"
    text = text if text is not None else f"<think>\nwork for {qid}/{cidx}\n</think>\n\\boxed{{{cidx}}}"
    passed = all(v is not None and v and all(x == 1 for x in v) for v in votes.values())
    return {
        "question_id": qid,
        "question": question,
        "domain": domain,
        "candidate_index": cidx,
        "prompt": question + INSTRUCTION,
        "text": text,
        "answer": text.rsplit("</think>", 1)[-1],
        "prompt_tokens": 10,
        "completion_tokens": len(text) // 4,
        "finish_reason": "stop",
        "passed_filter": status != "filtered",
        "filter_reason": "no_boxed" if status == "filtered" else None,
        **{f"{s}_votes": votes[s] for s in VERIFY_STAGES},
        "inferred_questions": [question],
        "status": status or ("passed" if passed else "rejected"),
        "failed_stage": None,
        "judge_prompt_tokens": 100,
        "judge_completion_tokens": 10,
        "judge_samples": 16,
        "judge_texts": None,
    }


def table(rows) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=records.VERDICT)


def make_cfg(**merge_options) -> RunConfig:
    cfg = RunConfig()
    for key, value in merge_options.items():
        setattr(cfg.merge, key, value)
    return cfg


def write_shards(folder: Path, shards: list[list[dict]], row_group_size: int | None = None) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, rows in enumerate(shards):
        paths.append(folder / f"shard-{i:05d}.parquet")
        pq.write_table(table(rows), paths[-1], row_group_size=row_group_size)
    return paths


def merged(tmp_path: Path, shards: list[list[dict]], name="out", **merge_options):
    """Run merge_shards; returns (kept (question_id, candidate_index) in file order, stats, out dir)."""
    paths = write_shards(tmp_path / f"{name}-verify", shards)
    out = tmp_path / name
    stats = merge.merge_shards(paths, make_cfg(**merge_options), out)
    rows = pq.read_table(out / "sft" / "train.parquet").to_pylist()
    return [(r["question_id"], r["candidate_index"]) for r in rows], stats, out


# ----------------------------------------------------------------------------- thresholds


def test_vote_thresholds_unanimous_majority_k_of_v():
    rows = [
        cand("a", 0),  # 5/5 everywhere
        cand("a", 1, {"cycle": [1, 1, 1, 1, 0]}),  # 4/5
        cand("a", 2, {"cycle": [1, 1, -1]}),  # 2/3, one vote without a verdict
        cand("a", 3, {"factuality": [1, 0, 0, 0, 0]}),  # 1/5
        cand("a", 4, {"correctness": None}),  # never reached correctness
        cand("a", 5, {"cycle": []}),  # no votes recorded at all
        cand("a", 6, status="filtered"),
    ]
    t = table(rows)
    stages = list(VERIFY_STAGES)

    def verdicts(**options):
        return selection.passes(t, MergeConfig(**options), stages).to_pylist()

    assert verdicts() == [True, False, False, False, False, False, False]
    assert verdicts(aggregation="majority") == [True, True, True, False, False, False, False]
    assert verdicts(aggregation="k_of_v", k=4) == [True, True, False, False, False, False, False]
    assert verdicts(aggregation="k_of_v", k=2) == [True, True, True, False, False, False, False]
    assert verdicts(aggregation="k_of_v", k=1) == [True, True, True, True, False, False, False]
    # a switched-off stage is ignored, and so is a stage verify did not run
    assert verdicts(disabled_stages=["correctness"]) == [True, False, False, False, True, False, False]
    assert selection.passes(t, MergeConfig(), ["cycle", "factuality"]).to_pylist()[4] is True


def test_cascade_and_merge_apply_one_aggregation_rule(monkeypatch):
    """verify's cascade and merge's thresholds both decide through aggregation.passes, and agree."""
    asked = []
    rule = aggregation.passes
    monkeypatch.setattr(aggregation, "passes", lambda *a, **kw: asked.append(kw["section"]) or rule(*a, **kw))
    stage_votes = [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0], [1, 1, -1], [1, 0, 0, 0, 0], []]
    rows = [cand("a", i, {"cycle": v}) for i, v in enumerate(stage_votes)]
    for options in ({}, {"aggregation": "majority"}, {"aggregation": "k_of_v", "k": 2}):
        merge_cfg = MergeConfig(**options)
        at_merge = selection.passes(table(rows), merge_cfg, ["cycle"]).to_pylist()
        at_verify = [cascade.aggregate(v, merge_cfg.aggregation, merge_cfg.k) for v in stage_votes]
        assert at_merge == at_verify, options
    assert set(asked) == {"merge", "verify"}


def test_k_of_v_without_k_is_rejected():
    with pytest.raises(ValueError, match="merge.k"):
        selection.passes(table([cand("a", 0)]), MergeConfig(aggregation="k_of_v"), list(VERIFY_STAGES))


# ----------------------------------------------------------------------------- selection


def _question_with_valid_1_3_4():
    no = {"factuality": [0, 0, 0, 0, 0]}
    # rows out of sampling order: selection must follow candidate_index, not row order
    return [cand("q", 4), cand("q", 3), cand("q", 2, no), cand("q", 1), cand("q", 0, no)]


@pytest.mark.parametrize(
    "options, expected",
    [
        ({}, [1]),
        ({"selection": "all-valid"}, [1, 3, 4]),
        ({"selection": "all-valid", "max_per_question": 2}, [1, 3]),
        ({"max_per_question": 5}, [1, 3, 4]),
    ],
)
def test_selection_rules(tmp_path, options, expected):
    kept, stats, _ = merged(tmp_path, [_question_with_valid_1_3_4()], **options)
    assert sorted(c for _, c in kept) == expected
    assert stats["overall"]["selected"] == len(expected)


def test_max_per_question_below_one_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="max_per_question"):
        merged(tmp_path, [[cand("a", 0)]], max_per_question=0)


def test_identical_solutions_across_questions_and_shards_keep_the_lowest_key(tmp_path):
    # "b" is read first (shard 0) but "a" has the lower question_id: a's copy survives
    shards = [
        [cand("b", 0, text="<think>same\n  solution</think> \\boxed{1}"), cand("c", 0)],
        [cand("a", 0, text="<think>same solution</think>\t\\boxed{1}\n"), cand("a", 1)],
    ]
    kept, stats, _ = merged(tmp_path, shards)
    assert sorted(kept) == [("a", 0), ("c", 0)]
    assert stats["overall"]["duplicate_solutions"] == 1
    assert stats["overall"]["selected"] == 3


def test_identical_solutions_within_a_question(tmp_path):
    rows = [cand("q", 0, text="x  y"), cand("q", 1, text="z"), cand("q", 2, text=" x\ny ")]
    kept, stats, _ = merged(tmp_path, [rows], selection="all-valid")
    assert sorted(kept) == [("q", 0), ("q", 1)]
    assert stats["overall"]["duplicate_solutions"] == 1


def test_identical_questions_are_one_group(tmp_path):
    no = {"cycle": [0, 0, 0, 0, 0]}
    shards = [
        [cand("q2", 0, question="What is  2+2?", text="four"), cand("q3", 0, question="Other?")],
        [cand("q1", 0, no, question="what is 2+2?"), cand("q1", 1, no, question="what is 2+2?")],
    ]
    # q1 (lowest id) has no valid candidate, so the group's pick comes from its copy q2
    kept, stats, _ = merged(tmp_path, shards)
    assert sorted(kept) == [("q2", 0), ("q3", 0)]
    assert stats["overall"]["seeds"] == 3
    assert stats["overall"]["duplicate_questions"] == 1
    # with q1 valid, q1 supplies the only pick of the group
    shards[1] = [cand("q1", 0, question="what is 2+2?")]
    kept, _, _ = merged(tmp_path, shards, name="again")
    assert sorted(kept) == [("q1", 0), ("q3", 0)]


# ----------------------------------------------------------------------------- output


def test_sft_records_and_funnel_counts(tmp_path):
    rows = [
        cand("a", 0, {"cycle": [1, 1, 1, 1, 0]}),
        cand("a", 1, domain="math"),
        cand("b", 0, status="filtered", domain="code", votes={s: None for s in VERIFY_STAGES}),
        cand("b", 1, {"correctness": [0, 1, 1, 1, 1]}, domain="code"),
        cand("c", 0, domain="code"),
    ]
    kept, stats, out = merged(tmp_path, [rows])
    assert sorted(kept) == [("a", 1), ("c", 0)]
    record = next(r for r in pq.read_table(out / "sft" / "train.parquet").to_pylist() if r["question_id"] == "a")
    assert record["messages"] == [
        {"role": "user", "content": "question a" + INSTRUCTION},
        {"role": "assistant", "content": rows[1]["text"]},
    ]
    assert (record["candidate_index"], record["domain"], record["votes_yes"], record["votes_total"]) == (
        1,
        "math",
        15,
        15,
    )
    overall = stats["overall"]
    assert {k: overall[k] for k in ("seeds", "candidates", "filtered", "passed_cycle", "passed_factuality")} == {
        "seeds": 3,
        "candidates": 5,
        "filtered": 1,
        "passed_cycle": 3,
        "passed_factuality": 3,
    }
    assert (overall["passed_correctness"], overall["valid"], overall["selected"], overall["kept"]) == (2, 2, 2, 2)
    assert stats["per_domain"]["code"]["candidates"] == 3 and stats["per_domain"]["code"]["kept"] == 1
    assert json.loads((out / "stats.json").read_text()) == stats
    assert not (out / ".spill").exists()


def test_validation_split_holds_out_whole_questions(tmp_path):
    rows = [cand(f"q{i:03d}", c) for i in range(60) for c in range(2)]
    paths = write_shards(tmp_path / "verify", [rows[:50], rows[50:]])
    cfg = make_cfg(selection="all-valid", validation_fraction=0.3)
    stats = merge.merge_shards(paths, cfg, tmp_path / "out")
    train = pq.read_table(tmp_path / "out/sft/train.parquet")["question_id"].to_pylist()
    validation = pq.read_table(tmp_path / "out/sft/validation.parquet")["question_id"].to_pylist()
    assert len(train) + len(validation) == 120 and validation and train
    assert not set(train) & set(validation)
    assert stats["overall"]["validation"] == len(validation)


def test_output_loads_with_datasets(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = [cand(f"q{i}", c) for i in range(20) for c in range(2)]
    paths = write_shards(tmp_path / "verify", [rows])
    merge.merge_shards(paths, make_cfg(validation_fraction=0.25), tmp_path / "out")
    files = {split: str(tmp_path / f"out/sft/{split}.parquet") for split in ("train", "validation")}
    ds = datasets.load_dataset("parquet", data_files=files, cache_dir=str(tmp_path / "hf-cache"))
    assert ds["train"].num_rows + ds["validation"].num_rows == 20
    first = ds["train"][0]
    assert [m["role"] for m in first["messages"]] == ["user", "assistant"]
    assert first["messages"][1]["content"].startswith("<think>")


def _rows_for_property(draw_rows):
    return [cand(q, c, v, text=t) for q, c, v, t in draw_rows]


# mostly passing votes, so that most examples keep several rows
vote_lists = st.sampled_from(
    [YES5, YES5, YES5, YES5, [1, 1, 1, 1, 0], [1, 1, 0], [1, -1, 1, 1, 1], [0, 0, 0, 0, 0], None, []]
)
candidate_rows = st.lists(
    st.tuples(
        st.sampled_from([f"q{i}" for i in range(6)]),
        st.integers(0, 5),
        st.fixed_dictionaries({s: vote_lists for s in VERIFY_STAGES}),
        st.sampled_from(["A b", "A  b\n", "c", "<think>x</think>y", None, None, None]),  # None: a unique text
    ),
    min_size=1,
    max_size=25,
    unique_by=lambda r: (r[0], r[1]),
)
QUICK = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@QUICK
@given(rows=candidate_rows, seed=st.integers(0, 2**16), shards=st.integers(1, 4))
def test_output_is_independent_of_sharding_read_order_and_spill_buckets(tmp_path_factory, rows, seed, shards):
    tmp = tmp_path_factory.mktemp("order")
    rows = _rows_for_property(rows)
    cfg = make_cfg(selection="all-valid", max_per_question=2, aggregation="majority", validation_fraction=0.3)
    outputs = []
    for attempt in range(2):
        shuffled = random.Random(seed + attempt).sample(rows, len(rows))
        cuts = sorted(random.Random(seed - attempt).sample(range(1, len(rows) + 1), min(shards, len(rows)) - 1))
        parts = [shuffled[a:b] for a, b in zip([0, *cuts], [*cuts, len(rows)])]
        # the second attempt also has several row groups per shard and spills into many buckets, not one
        paths = write_shards(tmp / f"verify{attempt}", parts, row_group_size=3 if attempt else None)
        with mock.patch.object(merge, "BUCKET_TARGET_BYTES", 1 if attempt else merge.BUCKET_TARGET_BYTES):
            merge.merge_shards(paths, cfg, tmp / f"out{attempt}")
        outputs.append([(tmp / f"out{attempt}/sft/{f}.parquet").read_bytes() for f in ("train", "validation")])
    assert outputs[0] == outputs[1]


@QUICK
@given(rows=candidate_rows, k=st.integers(1, 4), limit=st.sampled_from([None, 1, 2]))
def test_selected_meet_thresholds_and_raising_k_never_grows(tmp_path_factory, rows, k, limit):
    tmp = tmp_path_factory.mktemp("monotone")
    rows = _rows_for_property(rows)
    results = []
    for threshold in (k, k + 1):
        options = {"aggregation": "k_of_v", "k": threshold, "selection": "all-valid", "max_per_question": limit}
        passing = selection.passes(table(rows), MergeConfig(**options), list(VERIFY_STAGES)).to_pylist()
        valid = {(r["question_id"], r["candidate_index"]) for r, ok in zip(rows, passing) if ok}
        kept, stats, _ = merged(tmp, [rows], name=f"k{threshold}", **options)
        assert set(kept) <= valid
        texts = {(r["question_id"], r["candidate_index"]): " ".join(r["text"].split()) for r in rows}
        assert len({texts[key] for key in kept}) == len(kept)  # no solution twice
        results.append((valid, stats["overall"]["selected"], {texts[key] for key in kept}))
    (valid_k, selected_k, solutions_k), (valid_up, selected_up, solutions_up) = results
    assert valid_up <= valid_k
    assert selected_up <= selected_k  # per group: min(limit, valid candidates), before dedup
    if limit is None:  # all-valid keeps one copy of every distinct valid solution
        assert solutions_up <= solutions_k


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.text(alphabet=st.sampled_from(list("ab \t\n\r\x0b\x0c\x1c\u00a0\u2003\u3000Éé")), max_size=12), max_size=8
    )
)
def test_batch_normalisation_equals_the_definition(values):
    array = pa.array(values, pa.string())
    assert selection.normalised_digests(array).to_pylist() == [
        selection.digest(selection.normalise_solution(v).encode()) for v in values
    ]
    assert selection.normalised_digests(array, fold_case=True).to_pylist() == [
        selection.digest(selection.normalise_question(v).encode()) for v in values
    ]


def test_ascii_blanks_are_what_str_split_splits_on():
    blanks = [c for c in range(128) if bytes([c]).translate(selection._SPACE_TO_BLANK) == b" "]
    assert blanks == [c for c in range(128) if chr(c).isspace()]


# ----------------------------------------------------------------------------- the stage and bad input


def make_run(tmp_path: Path, shards: list[list[dict]], **merge_options) -> RunDir:
    cfg = make_cfg(**merge_options)
    cfg.seeds.shards = len(shards)
    run = RunDir(tmp_path / "run")
    run.write_config(cfg, {"version": "test"})
    for i, rows in enumerate(shards):
        run.shard_path("verify", i).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table(rows), run.shard_path("verify", i))
    return run


def two_shards():
    return [[cand("a", 0), cand("a", 1)], [cand("b", 0, text="other"), cand("c", 0, status="filtered")]]


def test_run_task_writes_outputs_then_marker_and_reruns_identically(tmp_path):
    run = make_run(tmp_path, two_shards(), validation_fraction=0.0)
    run_once(run.root, "merge", 0)
    out = run.stage_dir("merge")
    assert run.is_done("merge", 0)
    assert {p.name for p in out.iterdir()} == {"sft", "stats.json", "funnel.png", "done"}
    assert (out / "funnel.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    first = (out / "sft/train.parquet").read_bytes()
    run_once(run.root, "merge", 0)  # done: a no-op
    assert (out / "sft/train.parquet").read_bytes() == first
    run.done_marker("merge", 0).unlink()
    run_once(run.root, "merge", 0)
    assert (out / "sft/train.parquet").read_bytes() == first
    assert not list(run.root.glob(".merge.tmp-*"))


def _assert_nothing_written(run: RunDir):
    assert not run.stage_dir("merge").exists()
    assert not list(run.root.glob(".merge.tmp-*"))


@pytest.mark.parametrize("damage", ["missing", "truncated", "garbage"])
def test_unreadable_shard_names_it_and_the_way_out(tmp_path, damage):
    run = make_run(tmp_path, two_shards())
    shard = run.shard_path("verify", 1)
    if damage == "missing":
        shard.unlink()
    elif damage == "truncated":
        shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    else:
        shard.write_bytes(hashlib.sha256(b"x").digest() * 100)
    with pytest.raises(ValueError) as err:
        run_once(run.root, "merge", 0)
    message = str(err.value)
    assert str(shard) in message and "launch resume" in message and "merge.allow_missing=true" in message
    _assert_nothing_written(run)


def test_allow_missing_proceeds_and_records_the_skipped_shard(tmp_path):
    run = make_run(tmp_path, two_shards(), allow_missing=True)
    run.shard_path("verify", 1).unlink()
    run_once(run.root, "merge", 0)
    stats = json.loads((run.stage_dir("merge") / "stats.json").read_text())
    assert stats["skipped_shards"] == [{"shard": "shard-00001.parquet", "reason": "is missing"}]
    assert stats["overall"]["kept"] == 1 and stats["overall"]["candidates"] == 2


def test_corrupt_page_is_reported_as_unreadable(tmp_path):
    rows = [cand(f"q{i}", 0, text="word " * 2000 + str(i)) for i in range(20)]
    paths = write_shards(tmp_path / "verify", [rows])
    data = bytearray(paths[0].read_bytes())
    start = len(data) // 3
    data[start : start + 4096] = b"\xff" * 4096  # inside the column data, footer intact
    paths[0].write_bytes(bytes(data))
    with pytest.raises(ValueError, match="truncated or corrupt"):
        merge.merge_shards(paths, make_cfg(), tmp_path / "out")


@pytest.mark.parametrize("field, change", [("status", "drop"), ("candidate_index", "retype")])
def test_wrong_schema_names_shard_and_field(tmp_path, field, change):
    run = make_run(tmp_path, two_shards())
    shard = run.shard_path("verify", 0)
    bad = pq.read_table(shard)
    if change == "drop":
        bad = bad.drop_columns([field])
    else:
        bad = bad.set_column(bad.schema.get_field_index(field), field, bad[field].cast(pa.string()))
    pq.write_table(bad, shard)
    with pytest.raises(ValueError, match=rf"shard-00000\.parquet.*'{field}'"):
        run_once(run.root, "merge", 0)
    _assert_nothing_written(run)


def test_null_questions_and_domains_are_read_as_empty(tmp_path):
    rows = [cand("a", 0), cand("b", 0, text="other"), cand("c", 0, text="third")]
    rows[0]["question"] = rows[1]["question"] = rows[2]["domain"] = None
    kept, stats, _ = merged(tmp_path, [rows])
    assert sorted(kept) == [("a", 0), ("c", 0)]  # a and b: the same (empty) question
    assert stats["overall"]["duplicate_questions"] == 1 and stats["per_domain"]["unknown"]["kept"] == 1


def test_empty_input_writes_an_empty_dataset(tmp_path):
    kept, stats, _ = merged(tmp_path, [[cand("a", 0, status="filtered")]])
    assert kept == [] and stats["overall"]["kept"] == 0 and stats["overall"]["filtered"] == 1


def test_resolve_on_hand_built_tables():
    d = [bytes([i]) * 16 for i in range(4)]
    questions = pa.table(
        {"question_id": ["q2", "q1", "q3", "q2"], "question_digest": pa.array([d[0], d[0], d[1], d[0]], pa.binary(16))}
    )
    candidates = pa.table(
        {
            "question_id": ["q2", "q2", "q1", "q3", "q3"],
            "candidate_index": pa.array([0, 1, 5, 0, 1], pa.int32()),
            "shard": pa.array([0, 0, 1, 2, 2], pa.int32()),
            "solution_digest": pa.array([d[2], d[3], d[3], d[3], d[2]], pa.binary(16)),
        }
    )
    first = selection.resolve(questions, candidates, limit=1)
    assert first.question_ids.to_pylist() == ["q1", "q2", "q3"]
    assert first.duplicate_questions.tolist() == [False, True, False]  # q2 joins q1's group
    assert first.selected.tolist() == [False, False, True, True, False]  # q1/5 leads the q1+q2 group
    assert first.kept.tolist() == [False, False, True, False, False]  # q3/0 repeats q1/5: q1 < q3
    everything = selection.resolve(questions, candidates, limit=None)
    assert everything.selected.all()
    assert everything.kept.tolist() == [True, False, True, False, False]  # q2/0 first with d2, q1/5 with d3


def test_rank_in_group():
    groups = np.array([5, 3, 5, 3, 5])
    order = np.array([1, 3, 4, 0, 2])  # group 3: rows 1, 3; group 5: rows 4, 0, 2
    assert selection.rank_in_group(order, groups).tolist() == [1, 0, 2, 1, 0]


# ----------------------------------------------------------------------------- starved judges


class CutOffEngine:
    """Judges scripted per candidate answer; replies marked "length" were cut off by max_tokens.

    a0: cycle yes; factuality replies hold no verdict.  a1: one cycle reply cut off while
    thinking (no verdict), two yes.  a2: three cycle replies cut off after a [[Y]] in the
    thinking; factuality and correctness yes.
    """

    def __init__(self):
        from svd_hpc.config import ModelConfig

        self.model_cfg = ModelConfig(seed=1)

    def render(self, conversation, enable_thinking=None, reply_prefix=""):
        return conversation[-1]["content"]

    def chat(self, conversations, samplings, seeds=None, reply_prefix=""):
        rendered = [self.render(c) for c in conversations]
        return [completions for _, completions in self.stream(rendered, samplings, seeds)]

    def stream(self, rendered, samplings, seeds=None):
        from svd_hpc.sampling import prompts
        from svd_hpc.sampling.engine import Completion

        for i, (prompt, sampling) in enumerate(zip(rendered, samplings)):
            answer = "a0" if "a0" in prompt else "a1" if "a1" in prompt else "a2"
            if prompt.startswith(prompts.INFER_QUESTION):
                replies = [(f"What is asked in {answer}?", "stop")] * sampling.n
            elif prompt.startswith(prompts.CYCLE_JUDGE):
                replies = {
                    "a0": [("[[Y]]", "stop")] * 3,
                    "a1": [("<think>weighing it up", "length"), ("[[Y]]", "stop"), ("[[Y]]", "stop")],
                    "a2": [("<think>it holds, [[Y]], but let me check", "length")] * 3,
                }[answer]
            elif prompt.startswith(prompts.FACTUALITY_JUDGE) and answer == "a0":
                replies = [("I cannot decide.", "stop")] * 3
            else:
                replies = [("[[Y]]", "stop")] * 3
            yield i, [Completion(text, 50, reason, 10) for text, reason in replies[: sampling.n]]


def judged_shard(tmp_path: Path, verdict_rule: str) -> Path:
    """Three candidates of one question through the real cascade, written as a verify shard."""
    from svd_hpc.config import VerifyConfig
    from svd_hpc.sampling import cascade

    rows = [cand("q", k, text=f"<think>w</think>a{k}") for k in range(3)]
    candidates = pa.Table.from_pylist(rows, schema=records.CANDIDATE)
    items = [cascade.CascadeItem("question q", f"a{k}", key=f"q/{k}") for k in range(3)]
    cfg = VerifyConfig(votes=3, verdict_rule=verdict_rule)
    results = cascade.run_cascade(CutOffEngine(), items, cfg)
    path = tmp_path / f"verify-{verdict_rule}" / "shard-00000.parquet"
    path.parent.mkdir(parents=True)
    pq.write_table(cascade.verdict_table(candidates, dict(enumerate(results))), path)
    return path


def test_funnel_counts_votes_without_verdict_and_cut_off(tmp_path):
    path = judged_shard(tmp_path, "authors")
    table = pq.read_table(path)
    assert table["cycle_cut_off"].to_pylist() == [[False] * 3, [True, False, False], [True] * 3]
    assert table["factuality_cut_off"].to_pylist() == [[False] * 3, None, [False] * 3]  # a1 left at cycle
    stats = merge.merge_shards([path], make_cfg(), tmp_path / "out")
    counts = {k: v for k, v in stats["overall"].items() if k.startswith(("votes_", "no_verdict_", "cut_off_"))}
    assert counts == {
        "votes_cycle": 9,
        "no_verdict_cycle": 1,
        "cut_off_cycle": 4,
        "votes_factuality": 6,
        "no_verdict_factuality": 3,
        "cut_off_factuality": 0,
        "votes_correctness": 3,
        "no_verdict_correctness": 0,
        "cut_off_correctness": 0,
    }
    assert stats["per_domain"]["math"]["cut_off_cycle"] == 4
    assert stats["overall"]["valid"] == 1  # a2: its cut-off cycle votes still said yes (the authors' rule)
    from svd_hpc.merge import funnel

    funnel.chart(stats, tmp_path / "funnel.png")
    assert (tmp_path / "funnel.png").stat().st_size > 0


def test_strict_rule_reads_a_verdict_inside_cut_off_thinking_as_none(tmp_path):
    stats = merge.merge_shards([judged_shard(tmp_path, "strict")], make_cfg(), tmp_path / "out")
    overall = stats["overall"]
    assert (overall["no_verdict_cycle"], overall["cut_off_cycle"], overall["valid"]) == (4, 4, 0)


def test_the_authors_dedup_groups_no_questions_and_keeps_equal_solutions():
    """merge.group_questions and merge.dedup_solutions off: each question picks alone, equal picks all stay."""
    d = [bytes([i]) * 16 for i in range(4)]
    questions = pa.table(
        {"question_id": ["q2", "q1", "q3"], "question_digest": pa.array([d[0], d[0], d[1]], pa.binary(16))}
    )
    candidates = pa.table(
        {
            "question_id": ["q2", "q1", "q3"],
            "candidate_index": pa.array([0, 5, 0], pa.int32()),
            "shard": pa.array([0, 1, 2], pa.int32()),
            "solution_digest": pa.array([d[3], d[3], d[3]], pa.binary(16)),
        }
    )
    ours = selection.resolve(questions, candidates, limit=1)
    assert ours.kept.tolist() == [False, True, False]  # one group (q1, q2), and q3's pick repeats q1's
    theirs = selection.resolve(questions, candidates, limit=1, group_questions=False, dedup_solutions=False)
    assert theirs.selected.tolist() == [True, True, True] and theirs.kept.tolist() == [True, True, True]
