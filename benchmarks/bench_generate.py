"""Generation overhead: the generate stage on one shard vs a bare `LLM.generate` on the same
prompts, model, sampling parameters and per-request seeds (so both produce the same tokens).

Run as: .venv/bin/python benchmarks/bench_generate.py [--questions 32 --n 4 --max-tokens 96 --chunk-size 16] [--quick]

Both sides share one engine (loaded once, not timed); the prefix cache is emptied before every
run and the two sides alternate, so neither profits from the other's cache or warm-up. The stage
side pays for what the stage adds: chunked batches, parquet writes, the filter and record build.
Target: stage output tokens/s >= 0.95 x bare.
--quick (CI): 6 questions, n=2, 32 tokens, 4 repeats, still SmolLM2 (with the tiny random model
the stage's fixed costs outweigh its generation and the ratio swings 0.66-2.2 with load); fails
unless both sides produce the same tokens and the pooled CPU-time ratio stays above QUICK_RATIO.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import quick
from seeded_runs import prepare, write_questions

from svd_hpc import config
from svd_hpc.sampling import prompts
from svd_hpc.sampling.engine import Engine, request_seed
from svd_hpc.stages import generate

# README: 1.09 pooled, 1.07 by CPU time against the 0.95 target; half way would be 1.01, but both
# sides run the same engine calls, so their true ratio is about 1, and a quick run's repeats swung
# 0.74-1.16 on a loaded 2-core machine (pooled 0.95): the bound sits below the target, and still
# fails a stage that adds a tenth to generation.
QUICK_RATIO = 0.90


def machine() -> str:
    import torch

    return (
        f"{platform.node()} {platform.machine()} {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"cuda={torch.cuda.is_available()}, load average {os.getloadavg()[0]:.1f}"
    )


def bare_generate(engine: Engine, cfg: config.RunConfig, rows: list[dict]) -> tuple[int, float, float]:
    """What a user would write: render the chat prompts, one LLM.generate call, same params."""
    from vllm import SamplingParams

    tok = engine.tokenizer
    gen = cfg.generate
    texts = [
        tok.apply_chat_template(
            [{"role": "user", "content": prompts.user_prompt(r["question"], r["domain"])}],
            tokenize=False,
            add_generation_prompt=True,
            **({"enable_thinking": engine.thinking} if engine.template_knows_thinking else {}),
        )
        for r in rows
    ]
    token_prompts = [{"prompt_token_ids": tok.encode(t, add_special_tokens=False)} for t in texts]
    params = [
        SamplingParams(
            n=gen.n,
            temperature=gen.temperature,
            top_p=gen.top_p,
            max_tokens=gen.max_tokens,
            seed=request_seed(cfg.model.seed, "generate", r["question_id"]),
            skip_special_tokens=False,
        )
        for r in rows
    ]
    started, cpu = time.perf_counter(), time.process_time()
    outputs = engine.llm.generate(token_prompts, params, use_tqdm=False)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    return sum(len(c.token_ids) for o in outputs for c in o.outputs), seconds, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="builtin:smollm2")
    parser.add_argument("--questions", type=int, default=32)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--chunk-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="CI: 6 questions, n=2, 32 tokens, pass/fail")
    args = parser.parse_args()
    if args.quick:
        args.questions, args.n, args.max_tokens, args.repeats = 6, 2, 32, 4
    logging.basicConfig(level=logging.WARNING)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        src = tmp / "seeds.jsonl"
        write_questions(src, args.questions)
        settings = {
            "name": "bench",
            "model": {"path": args.model, "max_model_len": 2048},
            "seeds": {"path": str(src)},
            "generate": {"n": args.n, "max_tokens": args.max_tokens, "chunk_size": args.chunk_size, "temperature": 0.8},
        }
        run0 = prepare(tmp / "r0", settings)
        cfg = run0.load_config()
        rows = generate.read_seed_shard(run0, 0).to_pylist()
        engine = Engine(cfg.model)

        wall = {"bare": [], "stage": []}  # (tokens, seconds) per repeat
        cpu = {"bare": [], "stage": []}
        for rep in range(args.repeats):
            # alternate who goes first, so a drift in background load hits both sides alike
            for side in ("bare", "stage") if rep % 2 == 0 else ("stage", "bare"):
                engine.llm.reset_prefix_cache()
                if side == "bare":
                    tokens, seconds, cpu_seconds = bare_generate(engine, cfg, rows)
                else:
                    run = prepare(tmp / f"s{rep}", settings)
                    started, cpu_started = time.perf_counter(), time.process_time()
                    tokens = generate.run_shard(run, 0, engine=engine)["completion_tokens_generated"]
                    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
                wall[side].append((tokens, seconds))
                cpu[side].append((tokens, cpu_seconds))
                print(
                    f"  repeat {rep} {side:5}: {tokens} tokens in {seconds:.1f}s wall, {cpu_seconds:.1f}s CPU",
                    flush=True,
                )

    def rate(pairs):
        return sum(t for t, _ in pairs) / sum(s for _, s in pairs)

    ratios = [(ts / ss) / (tb / sb) for (ts, ss), (tb, sb) in zip(wall["stage"], wall["bare"])]
    same = [t for t, _ in wall["stage"]] == [t for t, _ in wall["bare"]]
    print("\n== generate stage vs bare LLM.generate ==")
    print(f"machine : {machine()}")
    print(f"model   : {args.model} ({engine.path}), vllm {__import__('vllm').__version__}, dtype float32 on CPU")
    print(
        f"settings: {len(rows)} questions, n={args.n}, max_tokens={args.max_tokens}, temperature=0.8, "
        f"chunk_size={args.chunk_size}, default KV block size, prefix caching on, chunked prefill off, "
        f"per-request seeds, {args.repeats} repeats"
    )
    print(f"same output tokens on both sides: {same}")
    print(f"bare  output tok/s: {rate(wall['bare']):.1f} wall, {rate(cpu['bare']):.1f} per CPU-second")
    print(f"stage output tok/s: {rate(wall['stage']):.1f} wall, {rate(cpu['stage']):.1f} per CPU-second")
    print(
        f"ratio stage/bare, wall  : {rate(wall['stage']) / rate(wall['bare']):.3f} pooled, "
        f"{statistics.median(ratios):.3f} median (per repeat {', '.join(f'{r:.3f}' for r in ratios)}); target >= 0.95"
    )
    print(f"ratio stage/bare, CPU   : {rate(cpu['stage']) / rate(cpu['bare']):.3f} (less sensitive to other load)")
    if args.quick:
        quick.gate(
            [
                ("same output tokens on both sides (1 = yes)", same, ">=", 1),
                ("stage/bare output tok/s by CPU time", rate(cpu["stage"]) / rate(cpu["bare"]), ">=", QUICK_RATIO),
            ]
        )


if __name__ == "__main__":
    main()
