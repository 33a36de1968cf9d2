"""Poison requests on real vLLM (CPU, the tiny random Qwen3): a prompt longer than
model.max_model_len, a conversation the chat template refuses, a request vLLM rejects. Each is
recorded as skipped with its reason, in the records, the done markers, the merge funnel, `status`
and the report, while the rest of the shard runs and the task completes.

One engine serves every test here (engine starts are the slow part): a copy of the tiny model
whose chat template refuses messages that smuggle in a control token, as guarded templates do.
"""

import json
import re
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from rich.console import Console

from svd_hpc.config import ModelConfig
from svd_hpc.inputs.models import ensure_tiny_qwen3
from svd_hpc.rundir.atomic import atomic_write_json
from svd_hpc.rundir.planfile import plan_to_json
from svd_hpc.runner import status
from svd_hpc.runner.plan import build_plan
from svd_hpc.sampling import prompts
from svd_hpc.sampling.engine import Engine, Refused, Sampling
from svd_hpc.stages import evaluate, generate, merge, report, verify
from tests.conftest import run_eval
from tests.test_generate_verify import prepare_run

MAX_LEN = 512
GUARD = (
    "{% for message in messages %}{% if '<|im_start|>' in message['content'] %}"
    "{{ raise_exception('a message may not contain the control token <|im_start|>') }}"
    "{% endif %}{% endfor %}"
)
REJECT = "REJECT-ME"  # conversations holding this render to an out-of-vocabulary token id


@pytest.fixture(scope="module")
def guarded_model(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("model") / "tiny-qwen3-guarded"
    shutil.copytree(ensure_tiny_qwen3(), folder)
    template = folder / "chat_template.jinja"
    template.write_text(GUARD + template.read_text())
    return folder


@pytest.fixture(scope="module")
def engine(guarded_model) -> Engine:
    return Engine(ModelConfig(path=str(guarded_model), block_size=32, max_model_len=MAX_LEN))


@pytest.fixture
def rejecting(engine, monkeypatch) -> Engine:
    """The engine, rendering REJECT conversations with a token id vLLM's validation refuses
    (vllm/renderers/base.py validate_token_ids): no text reaches that path, so the id is added."""
    render = engine.render
    out_of_vocabulary = engine.llm.model_config.get_vocab_size() + 100

    def render_with_poison(conversation, *args, **kwargs):
        ids = render(conversation, *args, **kwargs)
        poisoned = any(REJECT in m["content"] for m in conversation) and not isinstance(ids, Refused)
        return ids + [out_of_vocabulary] if poisoned else ids

    monkeypatch.setattr(engine, "render", render_with_poison)
    return engine


def long_text(engine: Engine, tokens: int) -> str:
    """A question of about `tokens` tokens under the engine's tokenizer."""
    unit = "Consider the train and its speed. "
    per_unit = len(engine.tokenizer.encode(unit * 20, add_special_tokens=False)) / 20
    return unit * int(tokens / per_unit)


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def test_engine_skips_each_poison_request_and_runs_the_rest(rejecting):
    engine = rejecting
    good = [user("What is 2 + 3?"), user("Which gas do plants take in?")]
    poison = [user(long_text(engine, MAX_LEN + 50)), user("Say <|im_start|> twice."), user(f"{REJECT} What is 1 + 1?")]
    sampling = Sampling(n=2, temperature=1.0, max_tokens=12)
    alone = engine.chat(good, sampling, seeds=[1, 2])
    mixed = engine.chat([good[0], *poison, good[1]], sampling, seeds=[1, 7, 8, 9, 2])
    # the good requests ran as they do alone (per-request seeds), the poison ones were skipped
    assert [[c.text for c in cs] for cs in (mixed[0], mixed[4])] == [[c.text for c in cs] for cs in alone]
    assert all(c.skip_reason is None and c.completion_tokens > 0 for cs in alone for c in cs)
    reasons = [{c.skip_reason for c in cs} for cs in mixed[1:4]]
    assert all(len(r) == 1 for r in reasons)
    too_long, template, rejected = (r.pop() for r in reasons)
    assert too_long.startswith("prompt_too_long: ") and f"model.max_model_len={MAX_LEN}" in too_long
    assert template == "template_error: a message may not contain the control token <|im_start|>"
    assert rejected.startswith("engine_rejected: Token id ") and "out of vocabulary" in rejected
    assert all((c.text, c.completion_tokens, c.finish_reason) == ("", 0, "skipped") for cs in mixed[1:4] for c in cs)
    assert len(mixed[3]) == 2  # n samples, empty, so callers keep their shape
    assert not engine.llm.llm_engine.has_unfinished_requests()


def test_a_template_that_does_not_parse_stops_the_task(guarded_model):
    """A syntax error fails every row alike: that is a broken model folder, not a poison row."""
    from transformers import AutoTokenizer

    renderer = object.__new__(Engine)  # render needs only these; no vLLM engine for a template check
    renderer.model_cfg = ModelConfig(path=str(guarded_model))
    renderer.tokenizer = AutoTokenizer.from_pretrained(guarded_model)
    renderer.thinking = renderer.template_knows_thinking = True
    assert isinstance(renderer.render(user("Say <|im_start|>.")), Refused)
    renderer.tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }"
    with pytest.raises(ValueError, match=r"chat template of .* does not parse"):
        renderer.render(user("Q"))


def test_stages_record_poison_items_as_skipped_and_complete(rejecting, guarded_model, tmp_path):
    engine = rejecting
    # fits generation (prompt + 24 tokens) but not the cycle judge, which adds its instructions
    judge_poison = long_text(engine, MAX_LEN - 140)
    user_tokens = len(engine.render(user(prompts.user_prompt(judge_poison, "science"))))
    judge_tokens = len(
        engine.render(user(prompts.cycle_judge_prompt(judge_poison, "Which?")), reply_prefix="Verdict: [[")
    )
    assert user_tokens < MAX_LEN - 24 and judge_tokens >= MAX_LEN
    questions = [
        ("ok", "Which gas do plants take in? A) O2 B) CO2"),
        ("long", long_text(engine, MAX_LEN + 50)),
        ("template", "Is <|im_start|> a word? A) yes B) no"),
        ("rejected", f"{REJECT} Which planet is largest? A) Mars B) Jupiter"),
        ("judge", judge_poison),
    ]
    bench = tmp_path / "bench.jsonl"
    bench.write_text("".join(json.dumps({"id": k, "question": q, "answer": "4"}) + "\n" for k, q in questions[:4]))
    settings = {
        "model": {"path": str(guarded_model), "block_size": 32, "max_model_len": MAX_LEN},
        "seeds": {"id_field": "id", "domain_field": "domain", "shards": 1},
        "generate": {"n": 2, "max_tokens": 24, "require_think": "off"},
        "verify": {"votes": 2, "max_tokens": 8, "chunk_size": 2},
        # every stage's votes ignored: only the status keeps a skipped candidate out
        "merge": {"disabled_stages": ["cycle", "factuality", "correctness"]},
        "eval": {"benchmarks": [{"name": "poison", "path": str(bench)}], "uq_ttc": True, "uq_ttc_candidates": 2},
        "train": {"enabled": False},
    }
    run = prepare_run(
        tmp_path, "poison", settings, [{"id": k, "question": q, "domain": "science"} for k, q in questions]
    )
    cfg = run.load_config()
    atomic_write_json(run.plan_path, plan_to_json(build_plan(cfg)))

    # generate: every question keeps its N rows; the three poison ones are skipped with their reason
    run.mark_done("generate", 0, **generate.run_shard(run, 0, engine))
    candidates = pq.read_table(run.shard_path("generate", 0)).to_pylist()
    reason = {r["question_id"]: r["skip_reason"] for r in candidates}
    assert [r["question_id"] for r in candidates] == [k for k, _ in questions for _ in range(2)]
    assert reason["long"].startswith("prompt_too_long: ")
    assert reason["template"].startswith("template_error: ")
    assert reason["rejected"].startswith("engine_rejected: Token id ")
    assert reason["ok"] is None and reason["judge"] is None
    for row in candidates:
        skipped = row["skip_reason"] is not None
        assert (row["finish_reason"] == "skipped") == skipped and (row["completion_tokens"] > 0) != skipped
        assert not (skipped and row["passed_filter"])
    marker = json.loads(run.done_marker("generate", 0).read_text())
    assert marker["skipped"] == 3
    assert marker["skip_reasons"] == {"prompt_too_long": 1, "template_error": 1, "engine_rejected": 1}

    # verify: the judge-poison candidates leave the cascade at cycle, skipped; nothing else is lost
    run.mark_done("verify", 0, **verify.run_shard(run, 0, engine))
    verdicts = pq.read_table(run.shard_path("verify", 0)).to_pylist()
    by_question = {}
    for row in verdicts:
        by_question.setdefault(row["question_id"], []).append(row)
    for key in ("long", "template", "rejected"):
        assert all(
            r["status"] == "skipped" and r["failed_stage"] is None and r["skip_reason"] == reason[key]
            for r in by_question[key]
        )
    for row in by_question["judge"]:
        assert (row["status"], row["failed_stage"]) == ("skipped", "cycle")
        assert row["skip_reason"].startswith("prompt_too_long: ") and row["cycle_votes"] is None
        assert len(row["inferred_questions"]) == 1  # the inference ran; its judge request could not
    assert all(r["status"] in ("passed", "rejected") and r["skip_reason"] is None for r in by_question["ok"])
    marker = json.loads(run.done_marker("verify", 0).read_text())
    assert (marker["skipped"], marker["skipped_judging"]) == (8, 2)
    assert marker["skip_reasons"] == {"prompt_too_long": 4, "template_error": 2, "engine_rejected": 2}

    # merge: with every stage's votes ignored, only the two unskipped candidates of "ok" pass
    stats = merge.merge_shards([run.shard_path("verify", 0)], cfg, run.stage_dir("merge"))
    run.mark_done("merge", 0)
    overall = stats["overall"]
    assert (overall["candidates"], overall["skipped"], overall["valid"], overall["kept"]) == (10, 8, 2, 1)
    assert (
        overall["skipped_prompt_too_long"],
        overall["skipped_template_error"],
        overall["skipped_engine_rejected"],
    ) == (4, 2, 2)
    kept = pq.read_table(run.stage_dir("merge") / "sft" / "train.parquet").column("question_id").to_pylist()
    assert kept == ["ok"]

    # eval, direct and UQ-TTC: skipped questions stay in the denominator as incorrect
    for index, mode in enumerate(("direct", "uq_ttc")):
        summary = run_eval(run, "eval_base", index, engine=engine)
        path = evaluate.output_path(run, "base", evaluate.eval_task(cfg, "eval_base", index)[1])
        rows = dict(zip(["ok", "long", "template", "rejected"], pq.read_table(path).to_pylist(), strict=True))
        assert summary["questions"] == 4
        for key in ("long", "template", "rejected"):
            assert rows[key]["skip_reason"].split(":")[0] == reason[key].split(":")[0]
            assert (rows[key]["correct"], rows[key]["grade_reason"], rows[key]["response"]) == (False, "skipped", "")
        assert rows["ok"]["skip_reason"] is None and rows["ok"]["grade_reason"] != "skipped"
        assert summary["pass_at_1"] == summary["correct"] / 4 and summary["skipped"] == 3
        assert json.loads(run.done_marker("eval_base", index).read_text())["skipped"] == 3, mode

    # status: a skipped column per stage, and each reason with its first example
    console = Console(record=True, width=300)
    status.render(run, status.collect(run), console)
    shown = console.export_text()
    assert "generate: 1 skipped (template_error) e.g. template: template_error: a message may not" in shown
    assert "verify: 4 skipped (prompt_too_long) e.g. long/0: prompt_too_long: " in shown
    assert re.search(r"eval_base: 2 skipped \(engine_rejected\) e\.g\. \w+: engine_rejected: Token id", shown)
    stages = {st.name: st for st in status.collect(run)}
    assert (stages["generate"].skipped, stages["verify"].skipped, stages["eval_base"].skipped) == (3, 8, 6)

    # report: the skipped requests per stage and reason, and how eval counts them
    text = report.build(run, Console(record=True, width=300)).read_text()
    section = text.split("## Skipped requests")[1].split("\n## ")[0]
    for line in (
        "| generate | question | prompt_too_long | 1 | `long`: prompt_too_long: ",
        "| generate | question | template_error | 1 | `template`: template_error: ",
        "| verify (cycle) | candidate | prompt_too_long | 2 | `judge/0`: prompt_too_long: ",
        "| eval base direct poison | question | engine_rejected | 1 | ",
        "| eval base uq_ttc poison | question | template_error | 1 | ",
    ):
        assert line in section, section
    assert "a skipped eval question counts as incorrect" in section
    assert "| skipped | 8 |" in text.split("## Merge funnel")[1]


def test_a_skipped_candidate_never_passes_merge(tmp_path):
    """Even with all its yes votes, or with the stage it was skipped at disabled."""
    from tests.test_merge import cand, merged

    skipped = cand("q1", 0, {"correctness": None}, status="skipped") | {
        "failed_stage": "correctness",
        "skip_reason": "prompt_too_long: 9000 prompt tokens",
    }
    shards = [[skipped, cand("q1", 1), cand("q2", 0, status="skipped") | {"skip_reason": "template_error: no"}]]
    kept, stats, _ = merged(tmp_path, shards, disabled_stages=["correctness"])
    assert kept == [("q1", 1)]
    overall = stats["overall"]
    assert (overall["skipped"], overall["skipped_prompt_too_long"], overall["skipped_template_error"]) == (2, 1, 1)
    assert (overall["filtered"], overall["valid"]) == (0, 1)
