"""Verification efficiency: our cascade vs a naive verifier on the same candidates.

Run as: .venv/bin/python benchmarks/bench_verify.py [--questions 6 --n 4 --votes 5]

Ours: `verify.run_cascade` (one batched call per stage, votes as n=V, judge instruction as the
shared prompt prefix, prefix caching with block_size 32, early exit).
Naive: every stage of every candidate asked with V separate requests (n=1), no early exit, on an
engine without prefix caching, with the same prompts and sampling settings.
Prompt tokens actually computed come from vLLM's own counters (prompt_tokens_by_source).
Targets: computed prompt tokens <= 1/3 of naive; never more judge samples than naive.
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

from bench_generate import machine, write_questions

from svd_hpc import prompts, verify
from svd_hpc.config import ModelConfig, VerifyConfig
from svd_hpc.engine import Engine, Sampling, request_seed


def make_candidates(engine: Engine, questions: list[str], n: int, max_tokens: int) -> list[verify.CascadeItem]:
    convs = [[{"role": "user", "content": prompts.user_prompt(q, "math")}] for q in questions]
    outs = engine.chat(
        convs, Sampling(n=n, temperature=0.8, top_p=0.95, max_tokens=max_tokens), seeds=list(range(len(convs)))
    )
    return [
        verify.CascadeItem(q, prompts.final_answer(c.text), key=f"{i}/{k}")
        for i, (q, cs) in enumerate(zip(questions, outs))
        for k, c in enumerate(cs)
    ]


def naive_verify(engine: Engine, items: list[verify.CascadeItem], cfg: VerifyConfig) -> int:
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
        question = prompts.strip_think(inf[0].text).strip()
        stage_prompts = [
            prompts.cycle_judge_prompt(it.question, question),
            prompts.factuality_prompt(it.question, it.answer),
            prompts.correctness_prompt(it.question, it.answer),
        ]
        for s, prompt in enumerate(stage_prompts):
            for v in range(cfg.votes):
                requests.append([{"role": "user", "content": prompt}])
                seeds.append(request_seed(seed, "naive", s, it.key, v))
    outs = engine.chat(requests, one, seeds=seeds)
    return len(items) + sum(len(o) for o in outs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="builtin:smollm2")
    parser.add_argument("--questions", type=int, default=6)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--answer-tokens", type=int, default=160)
    parser.add_argument("--votes", type=int, default=5)
    parser.add_argument("--judge-tokens", type=int, default=48)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "q.jsonl"
        write_questions(path, args.questions)
        questions = [json.loads(line)["question"] for line in path.read_text().splitlines()]
    vcfg = VerifyConfig(votes=args.votes, max_tokens=args.judge_tokens)
    model = ModelConfig(path=args.model, block_size=32, max_model_len=2048)

    ours_engine = Engine(model)
    items = make_candidates(ours_engine, questions, args.n, args.answer_tokens)
    ours_engine.llm.reset_prefix_cache()
    before = ours_engine.prefill_stats()
    started = time.perf_counter()
    results = verify.run_cascade(ours_engine, items, vcfg)
    ours_seconds = time.perf_counter() - started
    after = ours_engine.prefill_stats()
    ours_computed = after["computed"] - before["computed"]
    ours_cached = after["cached"] - before["cached"]
    ours_samples = sum(r.samples for r in results)
    reached = {s: sum(r.votes[s] is not None for r in results) for s in vcfg.stages}
    passed = sum(r.status == "passed" for r in results)
    # the same cascade without early exit (each stage on every candidate): what caching and n=V
    # alone save, whatever the judges decide
    ours_engine.llm.reset_prefix_cache()
    before = ours_engine.prefill_stats()
    full_samples = 0
    for stage in vcfg.stages:
        full = verify.run_cascade(ours_engine, items, dataclasses.replace(vcfg, stages=[stage]))
        full_samples += sum(r.samples for r in full)
    after = ours_engine.prefill_stats()
    full_computed = after["computed"] - before["computed"]
    full_cached = after["cached"] - before["cached"]
    del ours_engine  # one engine at a time in this process

    naive_engine = Engine(dataclasses.replace(model, enable_prefix_caching=False, block_size=None))
    before = naive_engine.prefill_stats()
    started = time.perf_counter()
    naive_samples = naive_verify(naive_engine, items, vcfg)
    naive_seconds = time.perf_counter() - started
    after = naive_engine.prefill_stats()
    naive_computed = after["computed"] - before["computed"]

    print("\n== verify cascade vs naive verifier ==")
    print(f"machine : {machine()}")
    print(f"model   : {args.model}, vllm {__import__('vllm').__version__}, float32 on CPU")
    print(
        f"settings: {len(items)} candidates ({len(questions)} questions x n={args.n}, {args.answer_tokens} answer tokens max), "
        f"V={args.votes}, judge max_tokens={args.judge_tokens}, temperature={vcfg.temperature}, top_p={vcfg.top_p}, "
        f"unanimous; ours: prefix caching on, block_size 32; naive: caching off, V separate requests, no early exit"
    )
    print(f"ours : candidates reaching each stage {reached}, passed all {passed}")
    print(
        f"ours : prompt tokens computed {ours_computed} (+{ours_cached} from cache), judge samples {ours_samples}, {ours_seconds:.1f}s"
    )
    print(
        f"ours without early exit: prompt tokens computed {full_computed} (+{full_cached} from cache), judge samples {full_samples}"
    )
    print(f"naive: prompt tokens computed {naive_computed}, judge samples {naive_samples}, {naive_seconds:.1f}s")
    print(f"ratio computed prompt tokens ours/naive: {ours_computed / naive_computed:.3f} (target <= 0.333)")
    print(f"ratio computed prompt tokens, ours without early exit/naive: {full_computed / naive_computed:.3f}")
    print(f"ratio judge samples ours/naive         : {ours_samples / naive_samples:.3f} (target <= 1)")
    print(f"ratio wall time ours/naive             : {ours_seconds / naive_seconds:.3f}")


if __name__ == "__main__":
    main()
