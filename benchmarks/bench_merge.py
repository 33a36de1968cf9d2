"""Merge benchmark: svd_hpc.merge against a plain pandas implementation of the same rules.

Run as:  .venv/bin/python benchmarks/bench_merge.py            (1,000,000 candidates, 200 shards)
         .venv/bin/python benchmarks/bench_merge.py --small    (a quick sanity run)
         .venv/bin/python benchmarks/bench_merge.py --quick    (CI: 160,000 candidates, 3 repeats, pass/fail)

Synthetic verify shards (VERDICT schema: 8 candidates per question, 3 stages x 5 votes with early
exit, text median ~1,500 chars, 1 in 10 texts not pure ASCII, 1% duplicate questions, 2% copied
solutions) are generated once into
the cache directory and reused. Each engine runs in a fresh child process, so its peak RSS is its
own (ru_maxrss from wait4); both outputs must select the same candidates. --quick fails unless
its figures stay within QUICK_BOUNDS: about half way from README's figures (0.23 x pandas full,
0.41 x at --small, 0.30 x measured at the quick size; 0.32 GiB) to the targets (0.5 x, 0.5 GiB).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import quick

from svd_hpc import records
from svd_hpc.config import VERIFY_STAGES, RunConfig

FULL = {"questions": 125_000, "per_question": 8, "shards": 200, "votes": 5}
SMALL = {"questions": 5_000, "per_question": 8, "shards": 20, "votes": 5}
# --quick: 4 x --small, so the engines' fixed start-up no longer dominates the ratio (it does at
# --small, where a loaded 2-core machine swings it from 0.29 to 0.46)
QUICK = {"questions": 20_000, "per_question": 8, "shards": 40, "votes": 5}
QUICK_BOUNDS = {"wall/pandas": 0.40, "peak GiB": 0.41}
INSTRUCTION = "\nPlease reason step by step, and put your final answer within \\boxed{}."

# ----------------------------------------------------------------------------- data


def _word_pool(rng: np.random.Generator, chars: int) -> str:
    """A long string of random words and line breaks that texts are sliced from."""
    letters = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz", dtype=np.uint8)
    vocab = ["".join(map(chr, rng.choice(letters, size=rng.integers(1, 11)))) for _ in range(3_000)]
    vocab += ["=", "+", "x^2", "\\frac{1}{2}", "so", "the", "we", "is", "$n$", "Let"]
    zipf = 1.0 / np.arange(1, len(vocab) + 1)  # word frequencies of natural text
    words = rng.choice(np.array(vocab, dtype=object), size=chars // 5, p=zipf / zipf.sum())
    seps = rng.choice(np.array([" "] * 30 + ["\n", ", ", ". "], dtype=object), size=len(words))
    return "".join(w + s for w, s in zip(words, seps))[:chars]


def _cascade_votes(rng, n: int, votes: int, filtered: np.ndarray):
    """Votes per stage with the verify stage's early exit (unanimous): a list array per stage."""
    quality = rng.beta(8, 1, size=n)  # most candidates are judged good most of the time
    alive = ~filtered
    columns, failed = {}, np.full(n, None, dtype=object)
    for stage in VERIFY_STAGES:
        draws = rng.random((n, votes))
        vals = np.where(draws < quality[:, None], 1, 0).astype(np.int8)
        vals[rng.random((n, votes)) < 0.01] = -1
        offsets = np.zeros(n + 1, dtype=np.int32)
        offsets[1:] = np.cumsum(np.where(alive, votes, 0))
        flat = vals[alive].reshape(-1)
        columns[stage] = pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat, pa.int8()), mask=pa.array(~alive))
        ok = (vals == 1).all(axis=1)
        failed[alive & ~ok] = stage
        alive = alive & ok
    return columns, failed, alive


def make_shards(cache: Path, questions: int, per_question: int, shards: int, votes: int, seed: int = 0) -> list[Path]:
    """Write the synthetic verify shards once; reuse them when the parameters match."""
    params = {"questions": questions, "per_question": per_question, "shards": shards, "votes": votes, "seed": seed}
    params["version"] = 2  # of the generator: a change here regenerates the cache
    stamp = cache / "params.json"
    paths = [cache / records_shard(i) for i in range(shards)]
    if stamp.is_file() and json.loads(stamp.read_text()) == params and all(p.is_file() for p in paths):
        return paths
    cache.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    pool = _word_pool(rng, 8_000_000)
    t0 = time.perf_counter()
    # question texts; 1% repeat an earlier question with other case and spacing
    q_start = rng.integers(0, len(pool) - 2000, size=questions)
    q_len = np.clip(rng.lognormal(np.log(250), 0.5, size=questions), 30, 1500).astype(int)
    q_copy = np.where(rng.random(questions) < 0.01, rng.integers(0, questions, size=questions), -1)
    ids = [hashlib.blake2b(str(i).encode(), digest_size=8).hexdigest() for i in range(questions)]
    domains = rng.choice(np.array(["math", "science", "code"]), size=questions, p=[0.6, 0.25, 0.15])
    # candidate texts: (start, length) into the pool; 2% copy another candidate's text
    total = questions * per_question
    t_start = rng.integers(0, len(pool) - 40_000, size=total)
    t_len = np.clip(rng.lognormal(np.log(1500), 0.5, size=total), 100, 16_000).astype(int)
    t_copy = np.where(rng.random(total) < 0.02, rng.integers(0, total, size=total), -1)
    order = rng.permutation(questions)  # questions land in shards in no particular id order
    for shard, qs in enumerate(np.array_split(order, shards)):
        rows = _shard_rows(
            rng, pool, qs, ids, domains, q_start, q_len, q_copy, t_start, t_len, t_copy, per_question, votes
        )
        pq.write_table(rows, cache / records_shard(shard))
        if shard % 20 == 0:
            print(f"generated shard {shard}/{shards} ({time.perf_counter() - t0:.0f} s)", flush=True)
    stamp.write_text(json.dumps(params))
    return paths


def records_shard(index: int) -> str:
    return f"shard-{index:05d}.parquet"


def _question_text(pool, q, q_start, q_len, q_copy) -> str:
    src = q_copy[q] if q_copy[q] >= 0 else q
    text = pool[q_start[src] : q_start[src] + q_len[src]]
    return text.upper() + "  " if q_copy[q] >= 0 else text


def _no_cut_off(votes: pa.Array) -> pa.Array:
    cut = [None if v is None else [False] * len(v) for v in votes.to_pylist()]
    return pa.array(cut, pa.list_(pa.bool_()))


def _shard_rows(rng, pool, qs, ids, domains, q_start, q_len, q_copy, t_start, t_len, t_copy, per_question, votes):
    n = len(qs) * per_question
    qrow = np.repeat(qs, per_question)
    cidx = np.tile(np.arange(per_question, dtype=np.int32), len(qs))
    cand = qrow * per_question + cidx
    questions = {q: _question_text(pool, q, q_start, q_len, q_copy) for q in qs}
    texts, answers = [], []
    for c in cand:
        src = t_copy[c] if t_copy[c] >= 0 else c
        body = pool[t_start[src] : t_start[src] + t_len[src]]
        cut = int(len(body) * 0.85)
        text = f"<think>\n{body[:cut]}\n</think>\n\n{body[cut:]} \\boxed{{{src % 97}}}"
        if c % 20 in (3, 13):  # one text in ten is not pure ASCII, as in real model output
            text = text.replace(" the ", " the — " if c % 20 == 3 else " the café ", 1)
        if t_copy[c] >= 0:
            text = text.replace(" ", "  ", 3) + "\n"  # same solution, other spacing
        texts.append(text)
        answers.append(text[text.rindex("</think>") + 8 :])
    filtered = rng.random(n) < 0.05
    votes_by_stage, failed, passed = _cascade_votes(rng, n, votes, filtered)
    status = np.where(filtered, "filtered", np.where(passed, "passed", "rejected"))
    reached = ~filtered
    q_list = [questions[q] for q in qrow]
    comp_tokens = np.array([len(t) // 4 for t in texts], dtype=np.int32)
    columns = {
        "question_id": pa.array([ids[q] for q in qrow]),
        "question": pa.array(q_list),
        "domain": pa.array(domains[qrow]),
        "candidate_index": pa.array(cidx, pa.int32()),
        "prompt": pa.array([q + INSTRUCTION for q in q_list]),
        "text": pa.array(texts),
        "answer": pa.array(answers),
        "prompt_tokens": pa.array([len(q) // 4 + 20 for q in q_list], pa.int32()),
        "completion_tokens": pa.array(comp_tokens, pa.int32()),
        "finish_reason": pa.array(["stop"] * n),
        "passed_filter": pa.array(~filtered),
        "filter_reason": pa.array([("no_boxed" if f else None) for f in filtered], pa.string()),
        "skip_reason": pa.nulls(n, pa.string()),
        **{f"{s}_votes": votes_by_stage[s] for s in VERIFY_STAGES},
        # no judge was cut off by its length limit: one False per vote drawn
        **{f"{s}_cut_off": _no_cut_off(votes_by_stage[s]) for s in VERIFY_STAGES},
        "inferred_questions": pa.array(
            [[q[:200]] if r else None for q, r in zip(q_list, reached)], pa.list_(pa.string())
        ),
        "status": pa.array(status),
        "failed_stage": pa.array(list(failed), pa.string()),
        "judge_prompt_tokens": pa.array(np.where(reached, comp_tokens.astype(np.int64) * 3, 0)),
        "judge_completion_tokens": pa.array(np.where(reached, 300, 0).astype(np.int64)),
        "judge_samples": pa.array(np.where(reached, 1 + 3 * votes, 0).astype(np.int32)),
        "judge_texts": pa.nulls(n, pa.string()),
    }
    return pa.table(columns, schema=records.VERDICT)


# ----------------------------------------------------------------------------- engines


def pandas_merge(paths: list[Path], cfg: RunConfig, out_dir: Path) -> int:
    """The same rules in plain pandas: everything in one DataFrame, a \\s+ regex for normalising."""
    import pandas as pd

    from svd_hpc.merge.selection import enabled_stages, selection_limit
    from svd_hpc.stages.merge import id_hash

    columns = ["question_id", "question", "domain", "candidate_index", "status", "prompt", "text"]
    columns += [f"{s}_votes" for s in VERIFY_STAGES]
    df = pd.read_parquet([str(p) for p in paths], columns=columns)  # one multi-threaded read of all files
    df["shard"] = np.repeat(np.arange(len(paths)), [pq.read_metadata(p).num_rows for p in paths])
    m = cfg.merge
    ok = df["status"] != "filtered"
    yes_all = pd.Series(0, index=df.index)
    total_all = pd.Series(0, index=df.index)
    for stage in VERIFY_STAGES:
        votes = df[f"{stage}_votes"]
        yes = (votes.explode() == 1).groupby(level=0).sum()  # vectorised, not a Python lambda per row
        total = votes.str.len().fillna(-1).astype(int)
        yes_all += yes
        total_all += total.clip(lower=0)
        if stage in enabled_stages(m, cfg.verify.stages):
            if m.aggregation == "unanimous":
                ok &= (total > 0) & (yes == total)
            elif m.aggregation == "majority":
                ok &= (total > 0) & (2 * yes > total)
            else:
                ok &= (total > 0) & (yes >= m.k)
    df["votes_yes"], df["votes_total"] = yes_all, total_all
    questions = df[["question_id", "question"]].drop_duplicates("question_id").sort_values("question_id")
    questions["norm"] = questions["question"].str.replace(r"\s+", " ", regex=True).str.strip().str.casefold()
    questions["leader"] = questions.groupby("norm")["question_id"].transform("min")
    # selection on the narrow columns; the texts move only once, for the rows that are kept
    keys = ["question_id", "candidate_index", "shard"]
    valid = df.loc[ok, keys].reset_index().merge(questions[["question_id", "leader"]], on="question_id")
    valid = valid.sort_values(["leader", *keys])
    limit = selection_limit(m)
    if limit is not None:
        valid = valid[valid.groupby("leader").cumcount() < limit]
    valid["norm"] = df.loc[valid["index"], "text"].str.replace(r"\s+", " ", regex=True).str.strip().to_numpy()
    kept = valid.sort_values(keys).drop_duplicates("norm", keep="first")
    kept = kept.assign(order=kept["question_id"].map(id_hash).astype("uint64")).sort_values(["order", *keys])
    out = df.loc[kept["index"]]
    out["messages"] = [
        [{"role": "user", "content": p}, {"role": "assistant", "content": t}]
        for p, t in zip(out["prompt"], out["text"])
    ]
    sft = out[["messages", "question_id", "candidate_index", "domain", "votes_yes", "votes_total"]]
    (out_dir / "sft").mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pandas(sft, schema=records.SFT, preserve_index=False)
    pq.write_table(table, out_dir / "sft" / "train.parquet")
    return len(sft)


def ours_merge(paths: list[Path], cfg: RunConfig, out_dir: Path) -> int:
    from svd_hpc.stages.merge import merge_shards

    return merge_shards(paths, cfg, out_dir)["overall"]["kept"]


ENGINES = {"svd_hpc.merge": ours_merge, "pandas": pandas_merge}


def child(engine: str, cache: Path, shards: int, out_dir: Path) -> None:
    """Run one engine in this (fresh) process and print its wall and CPU time as JSON."""
    paths = [cache / records_shard(i) for i in range(shards)]
    __import__("pandas" if engine == "pandas" else "svd_hpc.stages.merge")  # imports are not part of the timed merge
    wall, cpu = time.perf_counter(), time.process_time()
    rows = ENGINES[engine](paths, RunConfig(), out_dir)
    print(json.dumps({"seconds": time.perf_counter() - wall, "cpu": time.process_time() - cpu, "rows": rows}))


def run_child(engine: str, cache: Path, shards: int, out_dir: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", engine, "--cache", str(cache), "--shards", str(shards)]
    cmd += ["--out", str(out_dir)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage, not the sum over children
    if status != 0:
        raise SystemExit(f"{engine} failed (status {status}); run: {' '.join(cmd)}")
    result = json.loads(out.strip().splitlines()[-1])
    result["peak_gib"] = usage.ru_maxrss / 2**20  # KiB on Linux
    return result


def same_rows(a: Path, b: Path) -> bool:
    """Whether two SFT files hold the same rows in the same order (compared batch by batch)."""
    fa, fb = pq.ParquetFile(a), pq.ParquetFile(b)
    if fa.metadata.num_rows != fb.metadata.num_rows:
        return False
    for batch_a, batch_b in zip(fa.iter_batches(batch_size=4096), fb.iter_batches(batch_size=4096)):
        if not pa.Table.from_batches([batch_a]).equals(pa.Table.from_batches([batch_b]).cast(batch_a.schema)):
            return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", action="store_true", help="5,000 questions in 20 shards: a quick sanity run")
    parser.add_argument("--cache", type=Path, help="synthetic shards (default /tmp/svd-bench-merge[-small|-quick])")
    parser.add_argument("--repeats", type=int, default=1, help="runs per engine, alternating; the fastest counts")
    parser.add_argument(
        "--quick", action="store_true", help="CI: 160,000 candidates, 3 repeats, pass/fail against QUICK_BOUNDS"
    )
    parser.add_argument("--child", choices=list(ENGINES), help=argparse.SUPPRESS)
    parser.add_argument("--shards", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.repeats = max(args.repeats, 3)
    size, tag = (QUICK, "-quick") if args.quick else (SMALL, "-small") if args.small else (FULL, "")
    cache = args.cache or Path("/tmp/svd-bench-merge" + tag)
    if args.child:
        return child(args.child, cache, args.shards, args.out)

    paths = make_shards(cache, **size)
    mib = sum(p.stat().st_size for p in paths) / 2**20
    print(f"{size['questions'] * size['per_question']:,} candidates in {len(paths)} shards ({mib:,.0f} MiB) at {cache}")
    load_before = os.getloadavg()[0]
    runs: dict[str, list[dict]] = {engine: [] for engine in ENGINES}
    with tempfile.TemporaryDirectory(prefix="svd-bench-merge-out-") as tmp:
        for repeat in range(args.repeats):  # alternate, so both engines meet the same machine load
            for engine in ENGINES:
                runs[engine].append(run_child(engine, cache, len(paths), Path(tmp) / f"{engine}-{repeat}"))
        agree = same_rows(Path(tmp) / "svd_hpc.merge-0/sft/train.parquet", Path(tmp) / "pandas-0/sft/train.parquet")
    results = {
        e: min(r, key=lambda x: x["seconds"]) | {"peak_gib": max(x["peak_gib"] for x in r)} for e, r in runs.items()
    }

    base = results["pandas"]
    print(f"load average (1 min) before/after: {load_before:.1f} / {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"{'engine':<15}{'rows':>9}{'wall s':>8}{'cpu s':>8}{'peak GiB':>10}{'wall/pandas':>13}{'peak/pandas':>13}")
    for engine, r in results.items():
        print(
            f"{engine:<15}{r['rows']:>9,}{r['seconds']:>8.2f}{r['cpu']:>8.2f}{r['peak_gib']:>10.2f}"
            f"{r['seconds'] / base['seconds']:>13.2f}{r['peak_gib'] / base['peak_gib']:>13.2f}"
        )
    ours = results["svd_hpc.merge"]
    print(f"same rows in the same order: {agree}")
    for engine, r in runs.items():
        walls = ", ".join(f"{x['seconds']:.2f}" for x in r)
        print(f"{engine} wall s of each run: {walls}")
    ratio = ours["seconds"] / base["seconds"]
    print(f"target: wall/pandas <= 0.5 -> {ratio:.2f}; peak <= 0.5 GiB -> {ours['peak_gib']:.2f} GiB")
    if not agree:
        raise SystemExit("the two engines disagree: a bug in one of them")
    if args.quick:
        quick.gate(
            [
                ("wall/pandas", ratio, "<=", QUICK_BOUNDS["wall/pandas"]),
                ("peak GiB", ours["peak_gib"], "<=", QUICK_BOUNDS["peak GiB"]),
            ]
        )


if __name__ == "__main__":
    main()
