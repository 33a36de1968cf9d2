"""Verification efficiency: our cascade vs a naive verifier on the same candidates.

Run as: .venv/bin/python benchmarks/bench_verify.py [--questions 6 --n 4 --votes 5] [--quick]

Ours: `cascade.run_cascade` (one batched call per stage, votes as n=V, judge instruction as the
shared prompt prefix, prefix caching with block_size 32, early exit).
Naive: every stage of every candidate asked with V separate requests (n=1), no early exit, on an
engine without prefix caching, with the same prompts and sampling settings.
Prompt tokens actually computed come from vLLM's own counters (prompt_tokens_by_source).
Targets: computed prompt tokens <= 1/3 of naive; never more judge samples than naive.

Two judge settings, one run each: "free" (the judge writes what it likes; a 135M judge seldom
reaches a verdict, so most candidates leave at the first stage and early exit flatters the
ratio) and "verdict prefix" (replies open with "[[" and stop at "]]", as the demo runs, so
candidates pass stages at the demo's rates). Each reports the measured pass rates beside the
ratio with every stage run on every candidate. Last, the prefill cost of restating the verdict
format after the answer: every stage on every candidate, with and without the reminder.

--quick (CI): the tiny random Qwen3 (SmolLM2's two engines took over 18 min on a loaded 2-core
machine, the tiny model 165 s), 3 questions x n=2, 96 answer and 32 judge tokens; token counts
are seeded, so load does not move them. It fails unless, under both judge settings, every stage
on every candidate (the bound at any pass rate, whatever the judge decides) computes at most
QUICK_BOUNDS of naive's prompt tokens (half way from README's 0.183-0.186 to the 1/3 target) and
draws at most half way from 0.375-0.479 to 1 x its judge samples.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import quick
from bench_generate import machine, write_questions

from svd_hpc.config import ModelConfig, VerifyConfig
from svd_hpc.sampling import cascade, prompts
from svd_hpc.sampling.engine import Engine, Sampling, request_seed

QUICK_BOUNDS = {"computed prompt tokens": 0.26, "judge samples": 0.74}


def make_candidates(engine: Engine, questions: list[str], n: int, max_tokens: int) -> list[cascade.CascadeItem]:
    convs = [[{"role": "user", "content": prompts.user_prompt(q, "math")}] for q in questions]
    outs = engine.chat(
        convs, Sampling(n=n, temperature=0.8, top_p=0.95, max_tokens=max_tokens), seeds=list(range(len(convs)))
    )
    return [
        cascade.CascadeItem(q, prompts.final_answer(c.text), key=f"{i}/{k}")
        for i, (q, cs) in enumerate(zip(questions, outs))
        for k, c in enumerate(cs)
    ]


def naive_verify(engine: Engine, items: list[cascade.CascadeItem], cfg: VerifyConfig) -> int:
    """Every stage of every candidate, V separate n=1 requests each; returns judge samples drawn."""
    one = Sampling(n=1, temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_tokens)
    seed = engine.model_cfg.seed
    inferred = engine.chat(
        [[{"role": "user", "content": prompts.infer_question_prompt(it.answer)}] for it in items],
        one,
        seeds=[request_seed(seed, "naive", "infer", it.key) for it in items],
    )
    requests, seeds = [], []
    for it, inf in zip(items, inferred):
        question = prompts.inferred_question(inf[0].text, cfg.inferred_question)
        stage_prompts = [
            prompts.cycle_judge_prompt(it.question, question),
            prompts.factuality_prompt(it.question, it.answer),
            prompts.correctness_prompt(it.question, it.answer),
        ]
        for s, prompt in enumerate(stage_prompts):
            for v in range(cfg.votes):
                requests.append([{"role": "user", "content": prompt}])
                seeds.append(request_seed(seed, "naive", s, it.key, v))
    judge = dataclasses.replace(one, stop=list(cfg.judge_stop), include_stop=True)
    outs = engine.chat(requests, judge, seeds=seeds, reply_prefix=cfg.verdict_prefix)
    return len(items) + sum(len(o) for o in outs)


def measure(engine: Engine, items: list[cascade.CascadeItem], vcfg: VerifyConfig) -> dict:
    """Our cascade (early exit), then every stage on every candidate; prompt tokens and samples."""
    out = {}
    engine.llm.reset_prefix_cache()
    before = engine.prefill_stats()
    started = time.perf_counter()
    results = cascade.run_cascade(engine, items, vcfg)
    out["seconds"] = time.perf_counter() - started
    after = engine.prefill_stats()
    out["computed"], out["cached"] = after["computed"] - before["computed"], after["cached"] - before["cached"]
    out["samples"] = sum(r.samples for r in results)
    out["reached"] = {s: sum(r.votes[s] is not None for r in results) for s in vcfg.stages}
    out["passed"] = sum(r.status == "passed" for r in results)
    out["full_computed"], out["full_cached"], out["full_samples"] = every_stage(engine, items, vcfg)
    return out


def every_stage(engine: Engine, items: list[cascade.CascadeItem], vcfg: VerifyConfig) -> tuple[int, int, int]:
    """The cascade without early exit (each stage on every candidate): what caching and n=V
    alone save, whatever the judges decide."""
    engine.llm.reset_prefix_cache()
    before = engine.prefill_stats()
    samples = 0
    for stage in vcfg.stages:
        full = cascade.run_cascade(engine, items, dataclasses.replace(vcfg, stages=[stage]))
        samples += sum(r.samples for r in full)
    after = engine.prefill_stats()
    return after["computed"] - before["computed"], after["cached"] - before["cached"], samples


def rates(m: dict, n_items: int) -> str:
    """Share of candidates passing each stage, of those that reached it."""
    reached = list(m["reached"].values()) + [m["passed"]]
    stages = list(m["reached"])
    return (
        ", ".join(f"{s} {reached[i + 1]}/{reached[i]}" if reached[i] else f"{s} -" for i, s in enumerate(stages))
        + f" (of {n_items} candidates)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="builtin:smollm2")
    parser.add_argument("--questions", type=int, default=6)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--answer-tokens", type=int, default=160)
    parser.add_argument("--votes", type=int, default=5)
    parser.add_argument("--judge-tokens", type=int, default=48)
    parser.add_argument("--quick", action="store_true", help="CI: tiny-qwen3, 3 questions x n=2, pass/fail")
    args = parser.parse_args()
    if args.quick:
        args.model, args.questions, args.n, args.answer_tokens, args.judge_tokens = "builtin:tiny-qwen3", 3, 2, 96, 32
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "q.jsonl"
        write_questions(path, args.questions)
        questions = [json.loads(line)["question"] for line in path.read_text().splitlines()]
    vcfg = VerifyConfig(votes=args.votes, max_tokens=args.judge_tokens)
    model = ModelConfig(path=args.model, block_size=32, max_model_len=2048)

    ours_engine = Engine(model)
    items = make_candidates(ours_engine, questions, args.n, args.answer_tokens)
    settings = {
        "free": vcfg,
        "verdict prefix": dataclasses.replace(vcfg, verdict_prefix="[[", judge_stop=["]]"]),
    }
    measured = {name: measure(ours_engine, items, cfg) for name, cfg in settings.items()}
    # the verdict format restated after the answer: its prefill cost, every stage on every candidate
    with_reminder = every_stage(ours_engine, items, settings["verdict prefix"])[0]
    reminder, prompts.VERDICT_REMINDER = prompts.VERDICT_REMINDER, ""
    try:
        without_reminder = every_stage(ours_engine, items, settings["verdict prefix"])[0]
    finally:
        prompts.VERDICT_REMINDER = reminder
    del ours_engine  # one engine at a time in this process

    naive_engine = Engine(dataclasses.replace(model, enable_prefix_caching=False, block_size=None))
    naive = {}
    for name, cfg in settings.items():
        before = naive_engine.prefill_stats()
        started = time.perf_counter()
        samples = naive_verify(naive_engine, items, cfg)
        naive[name] = {
            "seconds": time.perf_counter() - started,
            "computed": naive_engine.prefill_stats()["computed"] - before["computed"],
            "samples": samples,
        }

    print("\n== verify cascade vs naive verifier ==")
    print(f"machine : {machine()}")
    print(f"model   : {args.model}, vllm {__import__('vllm').__version__}, float32 on CPU")
    print(
        f"settings: {len(items)} candidates ({len(questions)} questions "
        f"x n={args.n}, {args.answer_tokens} answer tokens max), "
        f"V={args.votes}, judge max_tokens={args.judge_tokens}, temperature={vcfg.temperature}, top_p={vcfg.top_p}, "
        f"unanimous, verdict rule {vcfg.verdict_rule}; ours: prefix caching on, block_size 32; "
        f"naive: caching off, V separate requests, no early exit"
    )
    for name, m in measured.items():
        n = naive[name]
        print(f"\n-- judges: {name} --")
        print(f"ours : pass rates {rates(m, len(items))}")
        print(
            f"ours : prompt tokens computed {m['computed']} (+{m['cached']} "
            f"from cache), judge samples {m['samples']}, {m['seconds']:.1f}s"
        )
        print(
            f"ours without early exit: prompt tokens computed {m['full_computed']} (+{m['full_cached']} from cache), "
            f"judge samples {m['full_samples']}"
        )
        print(f"naive: prompt tokens computed {n['computed']}, judge samples {n['samples']}, {n['seconds']:.1f}s")
        print(
            "ratio computed prompt tokens ours/naive at these pass rates: "
            f"{m['computed'] / n['computed']:.3f} (target <= 0.333)"
        )
        print(
            "ratio computed prompt tokens, every stage on every "
            f"candidate/naive: {m['full_computed'] / n['computed']:.3f}"
        )
        print(f"ratio judge samples ours/naive         : {m['samples'] / n['samples']:.3f} (target <= 1)")
        print(f"ratio wall time ours/naive             : {m['seconds'] / n['seconds']:.3f}")
    checks = []
    for name, m in measured.items():
        checks.append((f"{name}: every stage, prompt tokens ours/naive", m["full_computed"] / naive[name]["computed"],
                       "<=", QUICK_BOUNDS["computed prompt tokens"]))  # fmt: skip
        checks.append((f"{name}: judge samples ours/naive", m["samples"] / naive[name]["samples"],
                       "<=", QUICK_BOUNDS["judge samples"]))  # fmt: skip
    print("\n-- verdict format restated after the answer (every stage on every candidate, verdict prefix) --")
    print(
        f"prompt tokens computed with the reminder {with_reminder}, without {without_reminder}: "
        f"ratio {with_reminder / without_reminder:.3f}"
    )
    if args.quick:
        quick.gate(checks)


if __name__ == "__main__":
    main()
