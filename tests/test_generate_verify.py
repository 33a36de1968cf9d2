"""Generate and verify: the engine, the cascade logic, and both stage bodies end to end on real
vLLM (CPU) with the tiny random Qwen3, a kill-and-resume of generate, and a SmolLM2 smoke run."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from svd_hpc import config
from svd_hpc.config import ModelConfig, VerifyConfig
from svd_hpc.inputs import seeds
from svd_hpc.records import CANDIDATE, VERDICT, VOTE_NO, VOTE_NONE, VOTE_YES
from svd_hpc.rundir.layout import RunDir
from svd_hpc.runner.task import run_once
from svd_hpc.sampling import cascade, prompts
from svd_hpc.sampling.engine import Completion, Engine, Sampling
from svd_hpc.stages import generate, verify

REPO = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------- helpers


def prepare_run(tmp_path: Path, name: str, settings: dict, questions: list[dict]) -> RunDir:
    """A run directory as launch leaves it: resolved config and seed shards."""
    seeds_path = tmp_path / f"{name}-seeds.jsonl"
    seeds_path.write_text("".join(json.dumps(q, ensure_ascii=False) + "\n" for q in questions))
    data = {"name": name, **settings}
    data["seeds"] = {"path": str(seeds_path), **settings.get("seeds", {})}
    cfg_path = tmp_path / f"{name}.yaml"
    cfg_path.write_text(yaml.safe_dump(data, allow_unicode=True))
    cfg = config.load(cfg_path)
    run = RunDir(tmp_path / name)
    run.write_config(cfg, meta={})
    seeds.prepare(cfg, run)
    return run


def check_verdicts(table: pa.Table, cfg: config.RunConfig) -> None:
    """What every verify shard must satisfy, whatever the model said."""
    assert table.schema.equals(VERDICT)
    votes, stages = cfg.verify.votes, cfg.verify.stages
    for row in table.to_pylist():
        status = row["status"]
        assert status in ("passed", "rejected", "filtered")
        assert (status == "filtered") == (not row["passed_filter"])
        reached = [] if status == "filtered" else list(stages)
        if status == "rejected":
            reached = stages[: stages.index(row["failed_stage"]) + 1]
        else:
            assert row["failed_stage"] is None
        for stage in config.VERIFY_STAGES:
            stage_votes = row[f"{stage}_votes"]
            if stage in reached:
                assert len(stage_votes) == votes and set(stage_votes) <= {VOTE_YES, VOTE_NO, VOTE_NONE}
            else:  # early exit: nothing recorded past the stage a candidate failed
                assert stage_votes is None
        if status == "rejected":
            assert not cascade.aggregate(row[f"{row['failed_stage']}_votes"], cfg.verify.aggregation, cfg.verify.k)
        inferences = cfg.verify.cycle_inferences if "cycle" in reached else 0
        assert len(row["inferred_questions"] or []) == inferences
        assert row["judge_samples"] == inferences + votes * len(reached)
        assert (row["judge_prompt_tokens"] > 0) == bool(reached)


# ----------------------------------------------------------------------------- the engine


@pytest.fixture
def engine(tiny_engine):
    return tiny_engine


def test_engine_samples_n_per_conversation_with_reproducible_seeds(engine):
    convs = [[{"role": "user", "content": f"What is {i} + {i}? ✓"}] for i in range(3)]
    sampling = Sampling(n=3, temperature=1.0, max_tokens=24)
    first = engine.chat(convs, sampling, seeds=[11, 12, 13])
    assert [len(c) for c in first] == [3, 3, 3]
    assert all(c.prompt_tokens == len(engine.render(convs[i])) for i, cs in enumerate(first) for c in cs)
    assert all(0 < c.completion_tokens <= 24 and c.finish_reason in ("stop", "length") for cs in first for c in cs)
    # a request's samples depend on its seed only, not on what else is in the batch
    alone = engine.chat(convs[2:], sampling, seeds=[13])
    assert [c.text for c in alone[0]] == [c.text for c in first[2]]
    other = engine.chat(convs[:1], sampling, seeds=[99])
    assert [c.text for c in other[0]] != [c.text for c in first[0]]


def test_engine_stop_strings_can_stay_in_the_text(engine):
    conv = [[{"role": "user", "content": "Say something."}]]
    full = engine.chat(conv, Sampling(temperature=1.0, max_tokens=24), seeds=[5])[0][0].text
    stop = full[len(full) // 2 : len(full) // 2 + 2]  # a string the seeded sample is known to write
    cut = full[: full.index(stop)]
    kept = engine.chat(conv, Sampling(temperature=1.0, max_tokens=24, stop=[stop], include_stop=True), seeds=[5])
    dropped = engine.chat(conv, Sampling(temperature=1.0, max_tokens=24, stop=[stop]), seeds=[5])
    assert (kept[0][0].text, dropped[0][0].text) == (cut + stop, cut)


def test_engine_survives_prompts_and_budgets_beyond_the_context(engine):
    def conversation(repeats: int) -> list[dict]:
        return [{"role": "user", "content": "Judge [[Y]] " * repeats}]

    per_repeat = (len(engine.render(conversation(100))) - len(engine.render(conversation(0)))) / 100
    too_long = conversation(int(1100 / per_repeat))  # beyond max_model_len 1024
    nearly_full = conversation(int(1000 / per_repeat))  # leaves a few tokens of room
    assert len(engine.render(too_long)) >= 1024 > len(engine.render(nearly_full)) > 950
    outs = engine.chat([too_long, nearly_full], Sampling(n=2, max_tokens=2000), seeds=[1, 2])
    assert [(c.text, c.completion_tokens, c.finish_reason) for c in outs[0]] == [("", 0, "skipped")] * 2
    assert outs[0][0].skip_reason.startswith("prompt_too_long: ")
    assert all(c.completion_tokens > 0 and c.prompt_tokens + c.completion_tokens <= 1024 for c in outs[1])


def test_engine_thinking_follows_the_chat_template(engine):
    assert engine.template_knows_thinking and engine.thinking  # model.thinking=auto
    convs = [{"role": "user", "content": "Q"}]
    off = engine.tokenizer.decode(engine.render(convs, enable_thinking=False))
    on = engine.tokenizer.decode(engine.render(convs))
    assert off.endswith("<think>\n\n</think>\n\n") and not on.endswith("</think>\n\n")
    # a reply prefix comes after the generation prompt, where the model continues it
    prefixed = engine.tokenizer.decode(engine.render(convs, enable_thinking=False, reply_prefix="Verdict: [["))
    assert prefixed == off + "Verdict: [["


def test_engine_counts_prefill_computed_and_cached(engine):
    before = engine.prefill_stats()
    long_prompt = [{"role": "user", "content": "Judge this answer carefully. " * 30}]
    engine.chat([long_prompt], Sampling(n=4, max_tokens=4), seeds=[1])
    after = engine.prefill_stats()
    computed, cached = (after[k] - before[k] for k in ("computed", "cached"))
    prompt_len = len(engine.render(long_prompt))
    assert computed + cached == 4 * prompt_len  # vLLM splits n=4 into four requests
    assert cached >= 2 * prompt_len  # ... whose shared prompt the prefix cache serves


# ----------------------------------------------------------------------------- cascade logic


class ScriptedEngine:
    """Judges by markers in the answer, and records every call: the cascade without a model.

    "fail:<stage>" in an answer makes one of that stage's votes [[N]]; "mute:<stage>" makes every
    vote a text without a verdict. The inferred question carries the answer along, so cycle votes
    see the markers too. `fail_after` raises after that many replies (a task killed mid-stage).
    """

    def __init__(self, fail_after: int | None = None):
        self.model_cfg = ModelConfig(seed=3)
        self.calls: list[dict] = []
        self.fail_after = fail_after
        self.replies = 0

    def render(self, conversation, enable_thinking=None, reply_prefix=""):
        return conversation[-1]["content"], reply_prefix

    def stream(self, rendered, sampling, seeds=None):
        samplings = [sampling] * len(rendered) if isinstance(sampling, Sampling) else list(sampling)
        prompts_sent = [p for p, _ in rendered]
        prefixes = {prefix for _, prefix in rendered}
        assert len(prefixes) == 1
        self.calls.append(
            {"prompts": prompts_sent, "n": [s.n for s in samplings], "seeds": list(seeds), "prefix": prefixes.pop()}
        )
        for i, (p, s) in enumerate(zip(prompts_sent, samplings)):
            if self.fail_after is not None and self.replies >= self.fail_after:
                raise RuntimeError("killed")
            self.replies += 1
            prefix = rendered[i][1]
            yield i, [Completion(self.continue_reply(t, prefix), 7, "stop", len(p)) for t in self.respond(p, s.n)]

    @staticmethod
    def continue_reply(text: str, prefix: str) -> str:
        """What a model writes after `prefix`: its scripted reply's verdict, continued ("[[" -> "Y]]")."""
        if not prefix:
            return text
        verdict = text.rsplit("[[", 1)[-1] if "[[" in text else text
        return verdict.strip()

    @staticmethod
    def respond(prompt: str, n: int) -> list[str]:
        if prompt.startswith(prompts.INFER_QUESTION):
            answer = prompt.split("Answer:\n", 1)[1]
            return [f"<think>what was asked?</think> Inferred #{j}: {answer}" for j in range(n)]
        stage = next(s for s, p in STAGE_PREFIX.items() if prompt.startswith(p))
        if f"mute:{stage}" in prompt:
            return ["I cannot decide."] * n
        votes = ["<think>maybe [[N]]</think>Verdict: [[Y]]"] * n
        if f"fail:{stage}" in prompt:
            votes[-1] = "<think>looks fine [[Y]]</think> [[ n ]]"
        return votes


STAGE_PREFIX = {
    "cycle": prompts.CYCLE_JUDGE,
    "factuality": prompts.FACTUALITY_JUDGE,
    "correctness": prompts.CORRECTNESS_JUDGE,
}

ITEMS = [
    cascade.CascadeItem("Q0?", "clean answer", key="q0/0"),
    cascade.CascadeItem("Q1?", "fail:cycle", key="q1/0"),
    cascade.CascadeItem("Q2?", "fail:factuality", key="q2/0"),
    cascade.CascadeItem("Q3?", "fail:correctness", key="q3/0"),
    cascade.CascadeItem("Q4?", "mute:cycle", key="q4/0"),
]


def test_cascade_early_exit_batching_and_votes():
    eng = ScriptedEngine()
    results = cascade.run_cascade(eng, ITEMS, VerifyConfig(votes=3))
    assert [r.status for r in results] == ["passed", "rejected", "rejected", "rejected", "rejected"]
    assert [r.failed_stage for r in results] == [None, "cycle", "factuality", "correctness", "cycle"]
    assert results[0].votes == {"cycle": [1, 1, 1], "factuality": [1, 1, 1], "correctness": [1, 1, 1]}
    assert results[1].votes == {"cycle": [1, 1, 0], "factuality": None, "correctness": None}
    assert results[2].votes == {"cycle": [1, 1, 1], "factuality": [1, 1, 0], "correctness": None}
    assert results[4].votes["cycle"] == [VOTE_NONE] * 3
    # one batched call per step, only the survivors of the previous stage, votes as n=V
    assert [len(c["prompts"]) for c in eng.calls] == [5, 5, 3, 2]
    assert [set(c["n"]) for c in eng.calls] == [{1}, {3}, {3}, {3}]
    assert results[0].inferred_questions == ["Inferred #0: clean answer"]  # judge's think block stripped
    assert results[0].samples == 1 + 3 * 3 and results[1].samples == 1 + 3
    assert results[0].completion_tokens == 7 * results[0].samples
    assert all(not r.judge_texts for r in results)
    # per-request seeds: distinct, and the same on a second run
    seeds_first = [s for c in eng.calls for s in c["seeds"]]
    assert len(set(seeds_first)) == len(seeds_first)
    again = ScriptedEngine()
    cascade.run_cascade(again, ITEMS, VerifyConfig(votes=3))
    assert [s for c in again.calls for s in c["seeds"]] == seeds_first


def test_cascade_aggregation_order_and_judge_texts():
    eng = ScriptedEngine()
    cfg = VerifyConfig(votes=3, aggregation="majority", stages=["correctness", "cycle"], keep_judge_text=True)
    results = cascade.run_cascade(eng, ITEMS, cfg)
    # 2 of 3 yes passes a majority; the silent judge still rejects
    assert [r.status for r in results] == ["passed", "passed", "passed", "passed", "rejected"]
    assert results[0].votes["factuality"] is None  # not a configured stage
    assert eng.calls[0]["prompts"][0].startswith(prompts.CORRECTNESS_JUDGE)
    assert set(results[0].judge_texts) == {"correctness", "cycle_infer", "cycle"}
    assert len(results[0].judge_texts["cycle"]) == 3
    k_of_v = cascade.run_cascade(ScriptedEngine(), ITEMS, VerifyConfig(votes=3, aggregation="k_of_v", k=3))
    assert [r.status for r in k_of_v] == ["passed", "rejected", "rejected", "rejected", "rejected"]


def test_verdict_prefix_opens_judge_replies_but_not_inferred_questions():
    plain = cascade.run_cascade(ScriptedEngine(), ITEMS, VerifyConfig(votes=3))
    eng = ScriptedEngine()
    results = cascade.run_cascade(eng, ITEMS, VerifyConfig(votes=3, verdict_prefix="[[", keep_judge_text=True))
    assert [c["prefix"] for c in eng.calls] == ["", "[[", "[[", "[["]
    assert [r.votes for r in results] == [r.votes for r in plain]
    assert results[0].inferred_questions == plain[0].inferred_questions
    assert results[0].judge_texts["factuality"] == ["[[Y]]"] * 3  # the prefix is part of the verdict read
    assert results[2].judge_texts["factuality"][-1] == "[[n ]]"


def test_cycle_votes_spread_over_several_inferred_questions():
    eng = ScriptedEngine()
    results = cascade.run_cascade(eng, ITEMS[:1], VerifyConfig(votes=5, cycle_inferences=2, stages=["cycle"]))
    assert eng.calls[0]["n"] == [2]
    assert eng.calls[1]["n"] == [3, 2]  # votes 5 over 2 inferred questions
    assert len(results[0].inferred_questions) == 2 and len(results[0].votes["cycle"]) == 5
    assert results[0].samples == 2 + 5
    with pytest.raises(ValueError, match=r"cycle_inferences \(6\) must not exceed verify.votes \(5\)"):
        cascade.run_cascade(ScriptedEngine(), ITEMS, VerifyConfig(votes=5, cycle_inferences=6))


def test_cascade_killed_anywhere_redoes_at_most_one_chunk(tmp_path):
    cfg = VerifyConfig(votes=3, chunk_size=2)
    fresh = cascade.run_cascade(ScriptedEngine(), ITEMS, cfg)
    total = 5 + 5 + 3 + 2  # replies: inferred questions, then cycle, factuality, correctness votes
    for killed_after in range(total):
        checkpoint = tmp_path / f"progress-{killed_after}"
        with pytest.raises(RuntimeError, match="killed"):
            cascade.run_cascade(ScriptedEngine(fail_after=killed_after), ITEMS, cfg, checkpoint=checkpoint)
        saved = sum(len(json.loads(p.read_text())) for p in checkpoint.glob("chunk-*.json"))
        assert killed_after - cfg.chunk_size < saved <= killed_after  # at most one chunk lost
        resumed = ScriptedEngine()
        results = cascade.run_cascade(resumed, ITEMS, cfg, checkpoint=checkpoint)
        assert resumed.replies == total - saved  # only what was not saved is asked again
        assert results == fresh
    # a changed chunk size keeps the saved replies; different items make them stale
    again = ScriptedEngine()
    assert cascade.run_cascade(again, ITEMS, VerifyConfig(votes=3, chunk_size=5), checkpoint=checkpoint) == fresh
    assert again.replies == 0
    other = ScriptedEngine()
    cascade.run_cascade(other, ITEMS[:2], cfg, checkpoint=checkpoint)
    assert len(other.calls) == 4 and other.replies == 2 + 2 + 1 + 1


def test_judges_never_see_the_think_block(tmp_path):
    run = prepare_run(tmp_path, "think", {"verify": {"votes": 2}}, [{"question": "What is 2+3?"}])
    texts = [
        "<think>SECRET reasoning 2+3=6?</think>The sum is \\boxed{5}.",
        "<think>SECRET again</think>fail:factuality \\boxed{5}",
        "<think>SECRET never closed",
    ]
    rows = [
        dict(
            question_id="q",
            question="What is 2+3?",
            domain="math",
            candidate_index=k,
            prompt="What is 2+3?",
            text=t,
            answer=prompts.final_answer(t),
            prompt_tokens=5,
            completion_tokens=9,
            finish_reason="stop",
            passed_filter=prompts.filter_reason(t, "math", True) is None,
            filter_reason=prompts.filter_reason(t, "math", True),
        )
        for k, t in enumerate(texts)
    ]
    run.stage_dir("generate").mkdir()
    pq.write_table(pa.Table.from_pylist(rows, schema=CANDIDATE), run.shard_path("generate", 0))
    run.mark_done("generate", 0)
    eng = ScriptedEngine()
    stats = verify.run_shard(run, 0, engine=eng)
    sent = [p for call in eng.calls for p in call["prompts"]]
    assert sent and not any("SECRET" in p or "<think>" in p for p in sent)
    table = pq.read_table(run.shard_path("verify", 0))
    check_verdicts(table, run.load_config())
    assert table.column("status").to_pylist() == ["passed", "rejected", "filtered"]
    assert stats["passed"] == 1 and stats["rejected"] == 1 and stats["filtered"] == 1


def test_an_empty_shard_finishes_without_loading_a_model(tmp_path, monkeypatch):
    settings = {"seeds": {"shards": 3}}
    run = prepare_run(tmp_path, "empty", settings, [{"question": "A?"}, {"question": "B?"}])  # shard 0 gets none

    def no_engine(*args, **kwargs):
        raise AssertionError("an empty shard must not load a model")

    monkeypatch.setattr(generate, "Engine", no_engine)
    monkeypatch.setattr(verify, "Engine", no_engine)
    run_once(run.root, "generate", 0)
    run_once(run.root, "verify", 0)
    assert pq.read_table(run.shard_path("generate", 0)).schema.equals(CANDIDATE)
    table = pq.read_table(run.shard_path("verify", 0))
    assert table.num_rows == 0 and table.schema.equals(VERDICT)
    assert run.is_done("generate", 0) and run.is_done("verify", 0)


def test_verify_refuses_an_unfinished_generate_shard(tmp_path):
    run = prepare_run(tmp_path, "early", {}, [{"question": "Q?"}])
    with pytest.raises(ValueError, match=r"generate shard 0 is not finished"):
        run_once(run.root, "verify", 0)


# ----------------------------------------------------------------------------- end to end, real vLLM

TINY = {
    "model": {"path": "builtin:tiny-qwen3", "block_size": 32, "max_model_len": 1024},
    "seeds": {"id_field": "id", "domain_field": "domain", "shards": 2},
    "generate": {"n": 3, "max_tokens": 48, "chunk_size": 2, "require_think": "off"},
    "verify": {"votes": 3, "max_tokens": 24, "keep_judge_text": True, "chunk_size": 4},
}

# science answers pass the static filter whatever the random model writes; math ones need \boxed{}
QUESTIONS = [
    {"id": f"q{i}", "question": q, "domain": "science" if i % 3 else "math"}
    for i, q in enumerate(
        [
            "What is 17 + 25?",
            "Which planet is largest? A) Mars B) Jupiter",
            "Что тяжелее: килограмм пуха или килограмм железа? A) пух B) железо C) одинаково",
            "What is 8 × 7?",
            "水の化学式は？ A) H2O B) CO2",
            "Which gas do plants take in? A) O2 B) CO2 🌱",
            "What is 144 / 12?",
        ]
    )
]


def test_generate_and_verify_shards_end_to_end(tmp_path):
    run = prepare_run(tmp_path, "e2e", TINY, QUESTIONS)
    cfg = run.load_config()
    for index in range(2):
        run_once(run.root, "generate", index)
        run_once(run.root, "verify", index)
    shard_seeds = [pq.read_table(run.shard_path("seeds", i)) for i in range(2)]
    for index in range(2):
        assert run.is_done("generate", index) and run.is_done("verify", index)
        assert not generate.chunk_dir(run, index).exists() and not verify.progress_path(run, index).exists()
        candidates = pq.read_table(run.shard_path("generate", index))
        assert candidates.schema.equals(CANDIDATE)
        # every question of the shard, N candidates each, in sampling order
        expected = [(q, k) for q in shard_seeds[index].column("question_id").to_pylist() for k in range(3)]
        assert (
            list(zip(candidates.column("question_id").to_pylist(), candidates.column("candidate_index").to_pylist()))
            == expected
        )
        table = pq.read_table(run.shard_path("verify", index))
        check_verdicts(table, cfg)
        assert table.select(CANDIDATE.names).equals(candidates)
        for row in table.to_pylist():
            assert row["answer"] == prompts.final_answer(row["text"])
            assert row["prompt"] == prompts.user_prompt(row["question"], row["domain"])
            assert 0 < row["completion_tokens"] <= 48
            # the random model may open a think block it never closes; nothing else stops science
            if row["domain"] == "science":
                assert row["filter_reason"] in (None, "unclosed_think", "empty_answer")
            if row["status"] != "filtered":
                texts = json.loads(row["judge_texts"])
                assert len(texts["cycle"]) == len(row["cycle_votes"])
        assert any(table.column("passed_filter").to_pylist())  # the judges had work
        marker = json.loads(run.done_marker("verify", index).read_text())
        assert marker["passed"] + marker["rejected"] + marker["filtered"] == table.num_rows
    generated = pa.concat_tables([pq.read_table(run.shard_path("generate", i)) for i in range(2)])
    assert sorted(set(generated.column("question").to_pylist())) == sorted(q["question"] for q in QUESTIONS)
    # finished tasks are no-ops
    stamp = run.shard_path("verify", 0).stat().st_mtime_ns
    run_once(run.root, "generate", 0)
    run_once(run.root, "verify", 0)
    assert run.shard_path("verify", 0).stat().st_mtime_ns == stamp


@pytest.mark.slow  # a real engine killed and resumed twice (~100 s)
@pytest.mark.readme_claim  # README "The run directory": a task killed at any moment redoes at most one chunk
def test_killed_generate_task_resumes_to_the_same_records(tmp_path):
    settings = {**TINY, "seeds": {**TINY["seeds"], "shards": 1}}
    settings["generate"] = {**TINY["generate"], "max_tokens": 40}
    # one question decoding at a time, so the chunks finish one after another
    settings["model"] = {**TINY["model"], "max_num_seqs": 3}
    questions = [{"id": f"k{i}", "question": f"What is {i} + {2 * i}? ✓", "domain": "science"} for i in range(8)]
    killed = prepare_run(tmp_path, "killed", settings, questions)
    chunks = generate.chunk_dir(killed, 0)
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    code = "import sys; from svd_hpc.runner.task import run_once; run_once(sys.argv[1], 'generate', 0)"
    log = tmp_path / "killed.log"
    with log.open("wb") as sink:  # a file, not a pipe: a full pipe would stall the task
        proc = subprocess.Popen([sys.executable, "-c", code, str(killed.root)], env=env, stdout=sink, stderr=sink)
    deadline = time.time() + 180
    while not list(chunks.glob("chunk-*.json")):
        assert proc.poll() is None, log.read_text(errors="replace")[-2000:]
        assert time.time() < deadline, "the generate task wrote no chunk within 180 s"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = [q for path in chunks.glob("chunk-*.json") for q in json.loads(path.read_text())]
    assert 2 <= len(saved) < 8 and not killed.is_done("generate", 0)

    run_once(killed.root, "generate", 0)  # resume
    marker = json.loads(killed.done_marker("generate", 0).read_text())
    assert marker["questions_resumed"] == len(saved) and marker["questions"] == 8

    whole = prepare_run(tmp_path, "whole", settings, questions)
    run_once(whole.root, "generate", 0)
    resumed = pq.read_table(killed.shard_path("generate", 0))
    uninterrupted = pq.read_table(whole.shard_path("generate", 0))
    assert resumed.num_rows == 8 * 3
    assert resumed.equals(uninterrupted)


def synthetic_candidates(run: RunDir, count: int) -> None:
    """A finished generate shard of `count` candidates that all passed the filter (no model needed)."""
    rows = [
        dict(
            question_id=f"v{i}",
            question=f"What is {i} + {i}?",
            domain="science",
            candidate_index=0,
            prompt=f"What is {i} + {i}?",
            text=f"It is {2 * i}.",
            answer=f"It is {2 * i}.",
            prompt_tokens=9,
            completion_tokens=5,
            finish_reason="stop",
            passed_filter=True,
            filter_reason=None,
        )
        for i in range(count)
    ]
    run.stage_dir("generate").mkdir(exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=CANDIDATE), run.shard_path("generate", 0))
    run.mark_done("generate", 0)


def start_task(stage: str, run: RunDir, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    code = f"import sys; from svd_hpc.runner.task import run_once; run_once(sys.argv[1], '{stage}', 0)"
    with log.open("ab") as sink:  # a file, not a pipe: a full pipe would stall the task
        return subprocess.Popen([sys.executable, "-c", code, str(run.root)], env=env, stdout=sink, stderr=sink)


def saved_replies(folder: Path) -> dict:
    return {k: v for path in folder.glob("chunk-*.json") for k, v in json.loads(path.read_text()).items()}


@pytest.mark.slow  # three engine loads (two killed attempts, then resume and the reference): ~90 s of CPU
@pytest.mark.readme_claim  # "a task killed at any moment redoes at most one chunk ... equal an uninterrupted run's"
def test_verify_killed_mid_stage_resumes_to_the_same_records(tmp_path):
    settings = {**TINY, "seeds": {**TINY["seeds"], "shards": 1}}
    # a few requests decoding at a time, so chunks of 3 replies finish one after another
    settings["model"] = {**TINY["model"], "max_num_seqs": 4}
    settings["verify"] = {**TINY["verify"], "max_tokens": 16, "chunk_size": 3}
    killed = prepare_run(tmp_path, "vkilled", settings, QUESTIONS[:1])
    whole = prepare_run(tmp_path, "vwhole", settings, QUESTIONS[:1])
    for run in (killed, whole):
        synthetic_candidates(run, 12)
    progress = verify.progress_path(killed, 0)
    log = tmp_path / "vkilled.log"
    # kill twice: once in the inferred-question step, once later (the resumed attempt adds chunks)
    history = []
    for chunks_before_kill in (1, 6):
        proc = start_task("verify", killed, log)
        deadline = time.time() + 300
        while len(list(progress.glob("chunk-*.json"))) < chunks_before_kill:
            assert proc.poll() is None, log.read_text(errors="replace")[-2000:]
            assert time.time() < deadline, f"verify wrote fewer than {chunks_before_kill} chunks within 300 s"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert not killed.is_done("verify", 0) and not killed.shard_path("verify", 0).exists()
        history.append(saved_replies(progress))
    # what an attempt saved, the next one kept (and did not ask for again)
    assert history[0].items() <= history[1].items() and len(history[1]) > len(history[0])
    assert any(key.startswith("cycle_infer/") for key in history[0])

    engine = Engine(killed.load_config().model)  # one engine for both runs: per-request seeds
    resume_stats = verify.run_shard(killed, 0, engine=engine)
    whole_stats = verify.run_shard(whole, 0, engine=engine)
    assert resume_stats["judge_replies_resumed"] == len(history[1]) and whole_stats["judge_replies_resumed"] == 0
    resumed = pq.read_table(killed.shard_path("verify", 0))
    uninterrupted = pq.read_table(whole.shard_path("verify", 0))
    check_verdicts(resumed, killed.load_config())
    assert resumed.equals(uninterrupted)


def test_stale_chunks_are_regenerated(tmp_path):
    settings = {**TINY, "seeds": {**TINY["seeds"], "shards": 1}}
    run = prepare_run(tmp_path, "stale", settings, QUESTIONS[:4])
    folder = generate.chunk_dir(run, 0)
    folder.mkdir(parents=True)
    # chunks of an attempt with other settings (another model seed) are not taken
    other = dataclasses.replace(run.load_config(), model=dataclasses.replace(run.load_config().model, seed=1))
    (folder / "fingerprint").write_text(generate.fingerprint(other, pq.read_table(run.shard_path("seeds", 0))))
    (folder / "chunk-00000.json").write_text(json.dumps({"q0": []}))
    run_once(run.root, "generate", 0)
    marker = json.loads(run.done_marker("generate", 0).read_text())
    assert marker["questions_resumed"] == 0 and marker["candidates"] == 4 * 3


# ----------------------------------------------------------------------------- SmolLM2 smoke


@pytest.mark.slow  # ~2 min on 2 busy cores: two engine loads of a real 135M model plus sampling
def test_smollm2_smoke_formats(tmp_path):
    settings = {
        "model": {"path": "builtin:smollm2", "block_size": 32, "max_model_len": 2048},
        "seeds": {"id_field": "id"},
        "generate": {"n": 2, "max_tokens": 96, "temperature": 0.7},
        "verify": {"votes": 2, "max_tokens": 48},
    }
    demo = [json.loads(line) for line in (REPO / "data/demo_seeds.jsonl").read_text().splitlines()[:3]]
    # science answers skip the \boxed{} check, so the judges surely get work
    questions = [{**q, "domain": d} for q, d in zip(demo, ("math", "science", "science"))]
    settings["seeds"]["domain_field"] = "domain"
    run = prepare_run(tmp_path, "smol", settings, questions)
    run_once(run.root, "generate", 0)
    run_once(run.root, "verify", 0)
    table = pq.read_table(run.shard_path("verify", 0))
    check_verdicts(table, run.load_config())
    assert table.num_rows == 3 * 2
    for row in table.to_pylist():
        # no think block in an instruct model: the whole text is the answer, none is demanded
        assert row["answer"] == row["text"].strip() and row["text"]
        assert row["filter_reason"] in (None, "no_boxed")
    assert table.column("judge_samples").to_pylist()[2:] != [0] * 4


def test_cascade_asks_in_the_authors_words_and_keeps_the_verdict_prefix():
    sent = []

    class Recording(ScriptedEngine):
        def stream(self, rendered, sampling, seeds=None):
            sent.extend(rendered)
            for i, _ in enumerate(rendered):
                yield (
                    i,
                    [Completion("<think>a</think>What is it?\nmore" if not rendered[i][1] else "Y]]", 7, "stop", 1)],
                )

    cfg = VerifyConfig(votes=1, verdict_prefix="[[", judge_stop=["]]"])
    [result] = cascade.run_cascade(Recording(), [cascade.CascadeItem(" Q? ", "A")], cfg, style="authors")
    assert result.status == "passed" and result.inferred_questions == ["What is it?"]
    assert [p for p, _ in sent] == [
        prompts.AUTHORS_INFER_QUESTION.format(answer="A"),
        prompts.AUTHORS_CYCLE_JUDGE.format(original_question="Q?", inferred_question="What is it?"),
        prompts.AUTHORS_FACTUALITY_JUDGE.format(question="Q?", answer="A"),
        prompts.AUTHORS_CORRECTNESS_JUDGE.format(question="Q?", answer="A"),
    ]
    assert [prefix for _, prefix in sent] == ["", "[[", "[[", "[["]
    # the style decides the replies, so a checkpoint of one is no checkpoint of the other; ours keeps
    # the fingerprint it had before the style existed
    model, items = ModelConfig(), [cascade.CascadeItem("Q", "A")]
    ours = cascade.fingerprint(model, items, cfg)
    assert cascade.fingerprint(model, items, cfg, "ours") == ours != cascade.fingerprint(model, items, cfg, "authors")
