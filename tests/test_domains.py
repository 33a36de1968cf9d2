"""Mixed domains: several seed sources read as one set, the domain's prompt and filter per question,
one cascade of judges for all, shards mixed or single-domain, the funnel and the report per domain,
domain weights in the SFT mix, and the shipped mixed config."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from svd_hpc import config, launch
from svd_hpc.config import ConfigError
from svd_hpc.eval import benchmarks
from svd_hpc.eval.scores import EvalScores
from svd_hpc.inputs import seeds
from svd_hpc.merge import selection
from svd_hpc.records import VERDICT
from svd_hpc.report.domains import domains_section
from svd_hpc.rundir.layout import RunDir
from svd_hpc.runner import catalog
from svd_hpc.sampling import prompts
from svd_hpc.sampling.engine import Completion, Sampling
from svd_hpc.stages import generate, merge, verify

REPO = Path(__file__).resolve().parent.parent
MIXED = REPO / "configs" / "qwen3-4b-mixed.yaml"


def write_jsonl(path: Path, questions: list[str], **extra) -> str:
    path.write_text("".join(json.dumps({"question": q, **extra}) + "\n" for q in questions))
    return str(path)


def sources_config(tmp_path: Path, counts: dict[str, int], **seeds_keys) -> Path:
    """A config reading one JSONL source per domain, `counts[domain]` questions each."""
    sources = [
        {"path": write_jsonl(tmp_path / f"{d}.jsonl", [f"{d} question {i}?" for i in range(n)]), "domain": d}
        for d, n in counts.items()
    ]
    data = {
        "name": "mixed",
        "run_root": str(tmp_path / "runs"),
        "model": {"path": "builtin:tiny-qwen3"},
        "seeds": {"sources": sources, **seeds_keys},
        "generate": {"n": 2, "require_think": "off"},
        "verify": {"votes": 2},
        "train": {"enabled": False},
    }
    path = tmp_path / "mixed.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


# ----------------------------------------------------------------------------- seeds


def test_sources_are_one_set_interleaved_in_each_domains_share(tmp_path):
    math = write_jsonl(tmp_path / "m.jsonl", [f"m{i}" for i in range(6)] + ["Shared question"])
    sci = write_jsonl(tmp_path / "s.jsonl", ["shared  QUESTION", "s0", "s1", "s2"])  # a copy of math's: dropped
    code = write_jsonl(tmp_path / "c.jsonl", ["c0", "c1", "c2", "c3", "c4"])
    cfg = config.SeedsConfig(
        sources=[
            config.SeedSource(path=math, domain="math", limit=6),  # "Shared question" is past the limit
            config.SeedSource(path=sci, domain="science"),
            config.SeedSource(path=code, domain="code", limit=3),
        ]
    )
    table, stats = seeds.load_with_report(cfg)
    rows = table.to_pylist()
    # each domain keeps its source order; math 6, science 4 (its copy of a question math left out counts), code 3
    for domain, expected in (
        ("math", [f"m{i}" for i in range(6)]),
        ("science", ["shared  QUESTION", "s0", "s1", "s2"]),
        ("code", ["c0", "c1", "c2"]),
    ):
        assert [r["question"] for r in rows if r["domain"] == domain] == expected
    assert stats["per_domain"] == {"math": 6, "science": 4, "code": 3} and stats["seeds"] == 13
    assert [s["seeds"] for s in stats["sources"]] == [6, 4, 3] and stats["rows_read"] == 16
    # every prefix holds each domain in its share, to within one question
    for k in range(1, len(rows) + 1):
        prefix = [r["domain"] for r in rows[:k]]
        for domain, total in stats["per_domain"].items():
            assert abs(prefix.count(domain) - k * total / 13) <= 1, (k, domain)
    # the total limit takes a prefix of that order: the domains keep their shares
    cfg.limit = 6
    limited = seeds.load(cfg)["domain"].to_pylist()
    assert (limited.count("math"), limited.count("science"), limited.count("code")) in {(3, 2, 1), (3, 1, 2)}
    # a question in two sources is kept once: the first source's copy
    cfg.limit = cfg.sources[0].limit = None
    both = seeds.load(cfg).to_pylist()
    assert [r["domain"] for r in both if r["question"].casefold().split() == ["shared", "question"]] == ["math"]


def test_one_source_with_a_domain_field_gives_each_question_its_domain(tmp_path):
    path = tmp_path / "mixed.jsonl"
    domains = ["math", "math", "math", "math", "code", "code", "science", "science"]
    path.write_text("".join(json.dumps({"question": f"q{i}", "area": d}) + "\n" for i, d in enumerate(domains)))
    table = seeds.load(config.SeedsConfig(path=str(path), domain_field="area"))
    assert dict(zip(table["question"].to_pylist(), table["domain"].to_pylist())) == {
        f"q{i}": d for i, d in enumerate(domains)
    }
    # interleaved: the file lists all math first, the set's first half holds every domain
    assert set(table["domain"].to_pylist()[:4]) == {"math", "science", "code"}


def test_ids_must_differ_across_sources(tmp_path):
    a = tmp_path / "a.jsonl"
    b = tmp_path / "b.jsonl"
    a.write_text(json.dumps({"question": "x", "id": 1}) + "\n")
    b.write_text(json.dumps({"question": "y", "id": 1}) + "\n")
    cfg = config.SeedsConfig(
        sources=[config.SeedSource(path=str(a), id_field="id"), config.SeedSource(path=str(b), id_field="id")]
    )
    with pytest.raises(ValueError, match=rf"{re.escape(str(b))} line 1: id '1' is also the id of a question at"):
        seeds.load(cfg)


@pytest.mark.parametrize("mix", [True, False])
def test_shards_mix_domains_or_hold_one_each(tmp_path, mix):
    cfg = config.load(sources_config(tmp_path, {"math": 12, "science": 6, "code": 6}, shards=4, mix_domains=mix))
    run = RunDir(tmp_path / "run")
    stats = seeds.prepare(cfg, run)
    shards = [pq.read_table(run.shard_path("seeds", i))["domain"].to_pylist() for i in range(4)]
    assert sum(map(len, shards)) == 24 and stats["shard_sizes"] == [len(s) for s in shards]
    assert stats["mix_domains"] is mix
    if mix:  # every shard: half math, a quarter each of science and code
        assert all(len(s) == 6 and s.count("math") == 3 for s in shards)
        assert all({s.count("science"), s.count("code")} <= {1, 2} for s in shards)
        assert sum(s.count("science") for s in shards) == sum(s.count("code") for s in shards) == 6
    else:  # each shard one domain; math has half the questions, so half the shards
        assert [sorted(set(s)) for s in shards] == [["math"], ["math"], ["science"], ["code"]]
        assert [len(s) for s in shards] == [6, 6, 6, 6]


def test_single_domain_shards_need_a_shard_per_domain(tmp_path):
    path = sources_config(tmp_path, {"math": 4, "science": 2, "code": 2}, shards=2, mix_domains=False)
    message = (
        "seeds.mix_domains is false and the seeds hold 3 domains (math, science, code) but seeds.shards is 2; "
        "set seeds.shards to at least 3, or seeds.mix_domains to true."
    )
    with pytest.raises(ValueError, match=re.escape(message)):
        seeds.load(config.load(path).seeds)
    # at launch: one sentence, exit code 2, nothing written
    assert launch.main(["--config", str(path)]) == 2
    assert not (tmp_path / "runs" / "mixed").exists()


def test_shard_allotment_follows_each_domains_share():
    domains = ["math"] * 90 + ["science"] * 9 + ["code"] * 1
    order, bounds = seeds.shard_layout(domains, 10, mix_domains=False)
    per_shard = [{domains[i] for i in order[a:b]} for a, b in bounds]
    assert [d.pop() for d in per_shard] == ["math"] * 8 + ["science", "code"]
    assert sorted(order.tolist()) == list(range(100))


def test_sources_replace_the_single_source_keys(tmp_path):
    path = sources_config(tmp_path, {"math": 1})
    with pytest.raises(ConfigError, match=r"seeds.question_field is set beside seeds.sources, which replaces it"):
        config.load(path, ["seeds.question_field=problem"])
    cfg = config.load(path, ["seeds.limit=1"])  # the total limit belongs to the section
    assert cfg.seeds.limit == 1


@pytest.mark.parametrize(
    "override",
    ["merge.domain_weights={poetry: 0.5}", "merge.domain_weights={code: 1.5}", "merge.domain_weights={code: -1}"],
)
def test_bad_domain_weights_are_one_sentence(tmp_path, override):
    with pytest.raises(ConfigError, match=r"merge.domain_weights\.\w+ is .*; name a domain \(math, science, code\)"):
        config.load(sources_config(tmp_path, {"math": 1}), [override])


# ----------------------------------------------------------------------------- the stages per domain


class DomainEngine:
    """Answers every math and science question "<think>..</think> The answer to .. is 4.", which only
    science's filter lets through, and code with a fenced block; judges say [[Y]]. Records every prompt."""

    def __init__(self):
        self.model_cfg = config.ModelConfig(seed=1)
        self.thinking = False
        self.sent: list[str] = []

    def render(self, conversation, enable_thinking=None, reply_prefix=""):
        return conversation[-1]["content"], reply_prefix

    def stream(self, rendered, sampling, seeds=None):
        samplings = [sampling] * len(rendered) if isinstance(sampling, Sampling) else list(sampling)
        for i, ((text, _), s) in enumerate(zip(rendered, samplings)):
            self.sent.append(text)
            if text.startswith(prompts.INFER_QUESTION):
                reply = "What is 2 + 2?"
            elif text.startswith((prompts.CYCLE_JUDGE, prompts.FACTUALITY_JUDGE, prompts.CORRECTNESS_JUDGE)):
                reply = "[[Y]]"
            else:
                asked = text.split("?", 1)[0]  # each question its own answers: dedup keeps them all
                plain = f"<think>add</think> The answer to {asked} is 4."
                reply = plain if "code" not in text else f"```python\nprint('{asked}')\n```"
            yield i, [Completion(f"{reply} #{k}", 5, "stop", 10) for k in range(s.n)]


def test_each_question_gets_its_domains_prompt_and_filter_and_the_one_cascade(tmp_path):
    cfg_path = sources_config(tmp_path, {"math": 2, "science": 2, "code": 2}, shards=1)
    cfg = config.load(cfg_path)
    run = RunDir(tmp_path / "run")
    run.write_config(cfg, meta={})
    seeds.prepare(cfg, run)
    engine = DomainEngine()
    run.mark_done("generate", 0, **generate.run_shard(run, 0, engine=engine))
    verify.run_shard(run, 0, engine=engine)
    table = pq.read_table(run.shard_path("verify", 0)).to_pylist()
    for row in table:
        assert row["prompt"] == f"{row['question']}\n{prompts.DOMAIN_INSTRUCTIONS[row['domain']]}"
    reasons = {r["domain"]: r["filter_reason"] for r in table}
    # the same "The answer is 4." is filtered for math (no \boxed{}) and passes for science; code has its block
    assert reasons == {"math": "no_boxed", "science": None, "code": None}
    # one cascade for every domain (the authors' judges take no domain): the same judge prompts per stage
    judged = [r for r in table if r["status"] != "filtered"]
    assert {r["domain"] for r in judged} == {"science", "code"} and all(r["status"] == "passed" for r in judged)
    for row in judged:
        answer = prompts.final_answer(row["text"])
        assert prompts.factuality_prompt(row["question"], answer) in engine.sent
        assert prompts.correctness_prompt(row["question"], answer) in engine.sent
    # the funnel counts per domain, and the report has a per-domain table
    stats = merge.merge_shards([run.shard_path("verify", 0)], cfg, run.stage_dir("merge"))
    assert {d: c["candidates"] for d, c in stats["per_domain"].items()} == {"math": 4, "science": 4, "code": 4}
    assert {d: c["filtered"] for d, c in stats["per_domain"].items()} == {"math": 4, "science": 0, "code": 0}
    assert {d: c["kept"] for d, c in stats["per_domain"].items()} == {"math": 0, "science": 2, "code": 2}
    section = domains_section(run, cfg, None)
    assert section.headers[:5] == ["domain", "seeds", "candidates", "valid %", "kept"]
    assert [row[:5] for row in section.rows] == [
        ["math", "2", "4", "0.0", "0"],
        ["science", "2", "4", "100.0", "2"],
        ["code", "2", "4", "100.0", "2"],
    ]
    assert [row[6:8] for row in section.rows] == [["1", "0.0"], ["1", "50.0"], ["1", "50.0"]]


# ----------------------------------------------------------------------------- domain weights


def verify_shard(path: Path, rows: list[tuple[str, str]]) -> None:
    """A verify shard of (question_id, domain) candidates that passed every stage, one per question."""
    records = []
    for qid, domain in rows:
        record = {name: None for name in VERDICT.names}
        record.update(
            question_id=qid,
            question=f"question {qid}",
            domain=domain,
            candidate_index=0,
            prompt=f"question {qid}",
            text=f"solution of {qid}",
            answer=f"solution of {qid}",
            passed_filter=True,
            status="passed",
            **{f"{s}_votes": [1, 1] for s in config.VERIFY_STAGES},
            **{f"{s}_cut_off": [False, False] for s in config.VERIFY_STAGES},
        )
        records.append(record)
    pq.write_table(pa.Table.from_pylist(records, schema=VERDICT), path)


def test_domain_weights_subsample_a_domain_by_a_fixed_draw(tmp_path):
    rows = [(f"m{i}", "math") for i in range(10)] + [(f"c{i}", "code") for i in range(9)]
    cfg = config.load(REPO / "configs" / "tiny.yaml", ["merge.domain_weights={code: 0.5, science: 0.0}"])
    one = tmp_path / "one.parquet"
    verify_shard(one, rows)
    stats = merge.merge_shards([one], cfg, tmp_path / "a")
    assert stats["per_domain"]["math"]["kept"] == 10 and stats["per_domain"]["math"]["weighted_out"] == 0
    # round(0.5 × 9), halves up: 5 of code's 9 rows, those with the lowest draw
    assert stats["per_domain"]["code"]["kept"] == 5 and stats["per_domain"]["code"]["weighted_out"] == 4
    assert stats["rules"]["domain_weights"] == {"code": 0.5, "science": 0.0}
    kept = set(pq.read_table(tmp_path / "a" / "sft" / "train.parquet")["question_id"].to_pylist())
    draws = sorted((selection.row_hash(f"c{i}", 0), f"c{i}") for i in range(9))
    assert {q for q in kept if q.startswith("c")} == {q for _, q in draws[:5]}
    # the same rows however the shards are laid out
    halves = [tmp_path / "h0.parquet", tmp_path / "h1.parquet"]
    verify_shard(halves[0], rows[::2])
    verify_shard(halves[1], rows[1::2])
    merge.merge_shards(halves, cfg, tmp_path / "b")
    assert set(pq.read_table(tmp_path / "b" / "sft" / "train.parquet")["question_id"].to_pylist()) == kept


def test_weighted_out_mask_rounds_halves_up_and_ignores_unkept_rows():
    kept = np.array([True, True, True, False, True])
    domain = ["code", "code", "code", "code", "math"]
    out = selection.weighted_out(kept, domain, ["a", "b", "c", "d", "e"], [0] * 5, {"code": 0.5, "math": 0.0})
    assert not out[3] and out[4] and out[:3].sum() == 1  # 3 kept code rows: round(1.5) = 2 stay


# ----------------------------------------------------------------------------- the report


def test_domain_section_only_for_several_domains(tmp_path):
    cfg = config.load(REPO / "configs" / "tiny.yaml", ["merge.domain_weights={code: 0.5}"])
    run = RunDir(tmp_path / "run")
    (run.root / "merge").mkdir(parents=True)
    counts = {"seeds": 4, "candidates": 8, "valid": 2, "kept": 2}
    (run.root / "merge" / "stats.json").write_text(json.dumps({"per_domain": {"math": counts}}))
    assert domains_section(run, cfg, None) is None
    code = {"seeds": 10, "candidates": 20, "valid": 5, "kept": 3}
    (run.root / "merge" / "stats.json").write_text(json.dumps({"per_domain": {"code": code, "math": counts}}))
    scores = EvalScores(
        pass1={("base", "domain:math"): (0.5, 0.1), ("SVD", "domain:math"): (0.7, 0.1)},
        seeds={},
        questions={},
        pass_k={},
    )
    section = domains_section(run, cfg, scores)
    assert [row[0] for row in section.rows] == ["math", "code"]  # the paper's order
    assert section.rows[0] == ["math", "4", "8", "25.0", "2", "0.50", "1", "40.0", "50.0 ± 10.0", "70.0 ± 10.0"] + [
        "+20.0 ± 14.1",
        "—",
        "—",
        "—",
    ]
    assert section.rows[1][:8] == ["code", "10", "20", "25.0", "3", "0.30", "0.5", "60.0"]
    assert section.rows[1][8:] == ["—"] * 6


# ----------------------------------------------------------------------------- the shipped config


def test_mixed_config_has_the_three_domains_and_their_benchmarks(monkeypatch):
    monkeypatch.chdir(REPO)
    cfg = config.load(MIXED)
    assert [(s.domain, s.question_field) for s in cfg.seeds.sources] == [
        ("math", "instruction_seed"),
        ("science", "instruction_seed"),
        ("code", "instruction_seed"),
    ]
    # the sources are the single-domain configs' seed sets
    for source in cfg.seeds.sources:
        single = config.load(REPO / "configs" / f"qwen3-4b-{source.domain}.yaml")
        assert (source.path, source.split) == (single.seeds.path, single.seeds.split)
        assert {b.name for b in single.eval.benchmarks} <= {b.name for b in cfg.eval.benchmarks}
    graders = {b.name: (benchmarks.resolve(b).domain, benchmarks.resolve(b).grader) for b in cfg.eval.benchmarks}
    assert graders == {
        "aime26": ("math", "math"),
        "hmmt_feb_2025": ("math", "math"),
        "gpqa_diamond": ("science", "choice"),
        "hle_mc": ("science", "choice"),
        "lcb_v5": ("code", "code"),
        "lcb_v6": ("code", "code"),
    }
    # every hub source is staged and pinned in its own entry
    inputs = {i.key: i for i in catalog.hub_inputs(cfg) if i.key.startswith("seeds")}
    assert sorted(inputs) == [f"seeds.sources[{i}].path" for i in range(3)]
    assert [inputs[f"seeds.sources[{i}].path"].holder for i in range(3)] == cfg.seeds.sources
    assert inputs["seeds.sources[2].path"].revision_key == "seeds.sources[2].revision"


def test_rounds_of_fresh_questions_keep_each_domains_share_with_single_domain_shards(tmp_path):
    from svd_hpc.stages import rounds

    path = sources_config(tmp_path, {"math": 8, "code": 4}, shards=3, mix_domains=False)
    cfg = config.load(path, ["rounds=2", "iteration.seeds=fresh", "train.enabled=true"])
    run = RunDir(tmp_path / "run")
    seeds.prepare(cfg, run)  # grouped: math, math, code
    for number in (1, 2):
        picked = rounds.pick_questions(cfg, run, number)
        assert sorted(picked["domain"].to_pylist()) == ["code"] * 2 + ["math"] * 4, number
        round_run = run.round_dir(number)
        assert seeds.write_shards(round_run, picked, cfg.seeds) == [2, 2, 2]
        shards = [pq.read_table(round_run.shard_path("seeds", i))["domain"].to_pylist() for i in range(3)]
        assert [set(s) for s in shards] == [{"math"}, {"math"}, {"code"}]
