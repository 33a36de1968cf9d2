"""Rounds: K rounds of the method chained in one launch, each generating and judging with the model
the round before trained.

A run with `rounds: 1` is today's run, untouched. With more, the plan names each stage of round R
"round-R/STAGE" and its outputs live in RUN_DIR/round-R/ (rundir.RoundDir), the layout of a
single-round run; the seed shards written at launch (RUN_DIR/seeds/) are the pool every round draws
from. Each round starts with a one-task `seeds` stage (run_seeds) that first applies the stopping
rule to the round before, then writes the round's seed shards. When the rule is met it records why
in round-R/stopped.json, and every later task of the chain exits at once as "skipped by the stopping
rule" (its done marker says so), so the SLURM dependencies hold, the report runs and says why.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import pyarrow as pa
import pyarrow.parquet as pq

from ..config import RunConfig
from ..rundir.atomic import atomic_path, atomic_write_json
from ..rundir.layout import SKIPPED_KEY, STOPPED, RoundDir, RunDir, stop_reason, trains_on_union, union_dir

log = logging.getLogger("svd_hpc")


def round_body(body: Callable, number: int, stage: str) -> Callable:
    """`body` run inside round `number`: it sees the round's folder and config, and is skipped once the
    stopping rule ended the chain."""

    def run_in_round(run: RunDir, index: int) -> dict | None:
        view = run.round_dir(number)
        reason = stop_reason(run, number if stage != "seeds" else number - 1)
        if reason is not None:
            log.info(f"{stage=} round={number} {index=} skipped by the stopping rule: {reason}")
            # a training rank other than 0 writes no marker, as after a real training
            return {SKIPPED_KEY: reason} if os.environ.get("RANK", "0") == "0" else None
        cfg = run.load_config()
        if stage == "train" and trains_on_union(cfg, number):
            view = RoundDir(run, number, merge_dir=union_dir(view))
        stats = body(view, index)
        if stage == "merge" and trains_on_union(cfg, number):
            write_union(run, number)
        return stats

    return run_in_round


# ----------------------------------------------------------------------------- the seeds stage


def run_seeds(run: RoundDir, index: int) -> dict:
    """Stage body of round-R/seeds: apply the stopping rule to round R-1, then write round R's seed shards."""
    from ..rundir.planfile import plan_from_json, plan_to_json, round_plan

    top, number = run.run, run.number
    cfg = top.load_config()
    reason = rule_met(cfg, top, number - 1) if number > 1 else None
    table = None
    if reason is None:
        table = pick_questions(cfg, top, number)
        if table.num_rows == 0:
            reason = f"no seed questions left for round {number} (iteration.seeds: {cfg.iteration.seeds})"
    if reason is not None:
        log.info(f"round {number} does not run: {reason}")
        atomic_write_json(run.root / STOPPED, {"round": number, "reason": reason})
        return {"stopped": reason}
    from ..inputs.seeds import write_shards

    # the round's own plan under plain stage names: what a single-round run's report reads
    atomic_write_json(run.plan_path, plan_to_json(round_plan(plan_from_json(top.load_json(top.plan_path)), number)))

    sizes = write_shards(run, table, cfg.seeds)  # laid out by seeds.mix_domains, as the launch's
    stats = {"seeds": table.num_rows, "shards": cfg.seeds.shards, "shard_sizes": sizes, "mode": cfg.iteration.seeds}
    atomic_write_json(run.stage_dir("seeds") / "stats.json", stats)
    return {"seeds": table.num_rows, "mode": cfg.iteration.seeds}


def pick_questions(cfg: RunConfig, run: RunDir, number: int) -> pa.Table:
    """Round `number`'s questions from the pool the launch sharded (RUN_DIR/seeds/)."""
    from ..inputs.seeds import interleave

    pool = pa.concat_tables([pq.read_table(run.shard_path("seeds", i)) for i in range(cfg.seeds.shards)])
    if not cfg.seeds.mix_domains:  # grouped by domain: interleaved again, so fresh slices keep each domain's share
        pool = interleave(pool)
    mode = cfg.iteration.seeds
    if mode == "fresh":
        start, stop = (number - 1) * pool.num_rows // cfg.rounds, number * pool.num_rows // cfg.rounds
        return pool.slice(start, stop - start)
    if mode == "unsolved":
        solved = set()
        for earlier in range(1, number):
            solved |= set(sft_table(run.round_dir(earlier), ["question_id"]).column("question_id").to_pylist())
        keep = [qid not in solved for qid in pool.column("question_id").to_pylist()]
        return pool.filter(pa.array(keep, pa.bool_()))
    return pool


def sft_table(run: RunDir, columns: list[str] | None = None) -> pa.Table:
    """A round's SFT set (merge/sft/train.parquet)."""
    return pq.read_table(run.stage_dir("merge") / "sft" / "train.parquet", columns=columns)


def write_union(run: RunDir, number: int) -> int:
    """Rounds 1..number's SFT sets as one, a question kept in several rounds with its latest answer."""
    tables = [sft_table(run.round_dir(r)) for r in range(1, number + 1)]
    union = pa.concat_tables(tables, promote_options="default")
    latest = {qid: i for i, qid in enumerate(union.column("question_id").to_pylist())}
    union = union.take(pa.array(sorted(latest.values()), pa.int64()))
    with atomic_path(union_dir(run.round_dir(number)) / "sft" / "train.parquet") as tmp:
        pq.write_table(union, tmp)
    return union.num_rows


# ----------------------------------------------------------------------------- the stopping rule


def kept(run: RunDir, number: int) -> int | None:
    """SFT examples round `number`'s merge kept (merge/stats.json), or None when not recorded."""
    stats = run.load_json(run.round_dir(number).stage_dir("merge") / "stats.json", default={}) or {}
    value = (stats.get("overall") or {}).get("kept")
    return value if isinstance(value, int) else None


def mean_pass1(run: RunDir, number: int) -> float | None:
    """Mean over benchmarks of pass@1 of round `number`'s trained model (0: the base model), or None."""
    from ..eval.scores import read_eval, score

    view = run.round_dir(max(number, 1))
    table = read_eval(view)
    if table is None:
        return None
    variant = "base" if number == 0 else "SVD"
    benches = sorted(set(table.column("benchmark").to_pylist()))
    pass1 = score(table, {}).pass1
    values = [pass1[(variant, b)][0] for b in benches if (variant, b) in pass1]
    return sum(values) / len(values) if values and len(values) == len(benches) else None


def rule_met(cfg: RunConfig, run: RunDir, number: int) -> str | None:
    """Why the chain ends after round `number`, or None when the next round runs."""
    it = cfg.iteration
    if it.stop_min_kept:
        n = kept(run, number)
        if n is not None and n < it.stop_min_kept:
            return f"round {number} kept {n} SFT example(s), fewer than iteration.stop_min_kept={it.stop_min_kept}"
    if it.stop_unless_improved:
        now, before = mean_pass1(run, number), mean_pass1(run, number - 1)
        if now is not None and before is not None and now <= before:
            what = "the base model" if number == 1 else f"round {number - 1}"
            return (
                f"round {number}'s pass@1 ({100 * now:.1f}%) is not above {what}'s ({100 * before:.1f}%) "
                "(iteration.stop_unless_improved)"
            )
    return None
