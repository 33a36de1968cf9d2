"""From a pilot's measurements to the full run: task-hours, GPU-hours, wall time, yield, warnings.

The method (README "Pilot: will it be done by morning?"):
- a task costs a fixed part (process start, imports, engine load: measured on the pilot's task)
  plus a part linear in its questions (the pilot's work seconds per question);
- tokens, samples and the SFT set scale linearly with the number of questions;
- the two arrays' wall time is their schedule replayed (schedule()): each array runs at most its
  `array_parallelism` tasks at once, the run's tasks together at most what the partition's nodes
  hold (sinfo, the partition empty), verify task i starts once generate task i has ended
  (aftercorr), and a free slot goes to the earliest submitted task; queue wait is ignored;
- not linear, so not captured: the long tail of output lengths within one shard (a task waits
  for its longest sample), a fuller engine batch on bigger shards (faster per token), and merge
  (its pilot time is taken as is);
- train is one task: its pilot's fixed part (start, model load) plus train.steps × the seconds of a
  timed step (after a warm-up step, packs full to max_seq_len), the step scaled by the pilot's
  world size over the configured one (each rank's share of the global batch; the pilot runs on one
  node, so traffic between nodes is not measured), and tokenizing the full SFT set, checkpoints
  and the final export are not counted.
"""

from __future__ import annotations

import heapq
import math
import time

from rich.console import Console
from rich.table import Table

from ..config import RunConfig, train_procs_per_node
from ..inputs.seeds import shard_bounds
from ..runner.plan import resolve_resources

VLLM_STAGES = ("generate", "verify")
TIME_MARGIN = 0.9  # a task projected to use more than this share of its time limit is warned about
CUT_OFF_WARN = 0.10  # share of judge votes cut off at verify.max_tokens that deserves a warning
Z95 = 1.959964


def slurm_seconds(value: str) -> int:
    """A SLURM time (minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS) in seconds."""
    days = 0
    if "-" in value:
        head, value = value.split("-", 1)
        days = int(head)
        h, m, s = ([int(p) for p in value.split(":")] + [0, 0])[:3]
    else:
        parts = [int(p) for p in value.split(":")]
        h, m, s = {1: (0, parts[0], 0), 2: (0, *parts[:2])}.get(len(parts), tuple(parts[:3]))
    return days * 86400 + h * 3600 + m * 60 + s


def wilson(successes: int, trials: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (95% by default)."""
    if trials <= 0:
        return 0.0, 1.0
    p = successes / trials
    denom = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def gpus_per_task(cfg: RunConfig, stage: str) -> int:
    """GPUs a task of `stage` holds (0 on CPU clusters and here)."""
    return 0 if cfg.is_local else int(resolve_resources(cfg, stage)["gpus_per_node"] or 0)


def parallel_slots(cfg: RunConfig, stage: str, tasks: int, cluster_slots: int | None = None) -> int:
    """Tasks of an array running at once: one here; on a cluster array_parallelism (else all), at
    most what the partition holds."""
    if cfg.is_local:
        return 1
    return max(1, min(tasks, resolve_resources(cfg, stage)["array_parallelism"] or tasks, cluster_slots or tasks))


def schedule(
    generate_s: list[float],
    verify_s: list[float],
    generate_slots: int,
    verify_slots: int,
    cluster_slots: int | None = None,
) -> float:
    """Seconds from the first generate task's start to the last verify task's end, as SLURM runs them.

    Each array runs at most its slots at once, both together at most cluster_slots; verify task i
    waits for generate task i (aftercorr). A free slot goes to the earliest submitted pending task:
    SLURM's default priority is submit time, generate's array is submitted first, and an array's
    tasks start in index order.
    """
    cap = cluster_slots or len(generate_s) + len(verify_s)
    next_generate = 0
    ready: list[int] = []  # verify tasks whose generate task has ended (a heap of indices)
    running: list[tuple[float, bool, int]] = []  # a heap of (end, is_generate, index)
    busy = {True: 0, False: 0}  # running tasks per array: generate (True), verify (False)
    now = 0.0
    while next_generate < len(generate_s) or ready or running:
        while len(running) < cap:
            if next_generate < len(generate_s) and busy[True] < generate_slots:
                is_generate, index, seconds = True, next_generate, generate_s[next_generate]
                next_generate += 1
            elif ready and busy[False] < verify_slots:
                index = heapq.heappop(ready)
                is_generate, seconds = False, verify_s[index]
            else:
                break
            heapq.heappush(running, (now + seconds, is_generate, index))
            busy[is_generate] += 1
        now, is_generate, index = heapq.heappop(running)
        busy[is_generate] -= 1
        if is_generate:
            heapq.heappush(ready, index)
    return now


def project_stage(
    cfg: RunConfig, stage: str, measured: dict, shard_sizes: list[int], cluster_slots: int | None = None
) -> dict:
    """One vLLM stage of the full run from its pilot task: per task, per array, per GPU."""
    n = measured["questions"]
    per_question = measured["work_s"] / n
    fixed = measured["fixed_s"]
    task_s = [fixed + per_question * q for q in shard_sizes if q] or [0.0]
    gpus = gpus_per_task(cfg, stage)
    slots = parallel_slots(cfg, stage, len(task_s), cluster_slots)
    limit = slurm_seconds(resolve_resources(cfg, stage)["time"])
    total_q = sum(shard_sizes)
    return {
        "tasks": len(task_s),
        "samples": round(measured["samples"] / n * total_q),
        "tokens": round(measured["tokens"] / n * total_q),
        "tokens_per_s": measured["tokens"] / measured["work_s"] / max(gpus, 1) if measured["work_s"] else None,
        "rate_unit": "per GPU" if gpus else "per task",
        "fixed_s": fixed,
        "per_question_s": per_question,
        "max_task_s": max(task_s),
        "task_hours": sum(task_s) / 3600,
        "gpu_hours": sum(task_s) * gpus / 3600 if gpus else None,
        "parallel": slots,
        "waves": math.ceil(len(task_s) / slots),
        "wall_s": math.ceil(len(task_s) / slots) * max(task_s),  # the array alone
        "time_limit_s": limit,
        "task_s": task_s,
    }


def project_train(cfg: RunConfig, measured: dict) -> dict:
    """The train task of the full run from the pilot's timed steps (the keys of project_stage, and more)."""
    t, res = cfg.train, resolve_resources(cfg, "train")
    nodes = res["nodes"] or 1
    world = nodes * train_procs_per_node(cfg)
    step_s = measured["step_s"] * measured["world_size"] / world  # each rank's share of the global batch
    task_s = measured["fixed_s"] + t.steps * step_s
    gpus = gpus_per_task(cfg, "train") * nodes
    limit = slurm_seconds(res["time"])
    return {
        "tasks": 1,
        "nodes": nodes,
        "processes": world,
        "steps": t.steps,
        "samples": t.steps * t.global_batch,  # packed sequences
        "tokens": t.steps * t.global_batch * t.max_seq_len,
        "tokens_per_s": measured["tokens_per_step"] / measured["step_s"] / measured["world_size"],
        "rate_unit": "per GPU" if gpus else "per process",
        "fixed_s": measured["fixed_s"],
        "step_s": step_s,
        "max_task_s": task_s,
        "task_hours": task_s / 3600,
        "gpu_hours": task_s * gpus / 3600 if gpus else None,
        "parallel": 1,
        "waves": 1,
        "wall_s": task_s,
        "time_limit_s": limit,
        # jobs it takes when it checkpoints at each time-limit warning and is requeued
        "jobs": math.ceil(task_s / max(1, limit - res["signal_seconds"])),
    }


def train_warning(cfg: RunConfig, p: dict) -> str | None:
    """A train task over TIME_MARGIN of its limit: how it would go on, and what to change."""
    if p["max_task_s"] <= TIME_MARGIN * p["time_limit_s"]:
        return None
    res = resolve_resources(cfg, "train")
    head = (
        f"train: the task is projected at {_hours(p['max_task_s'])}, over {TIME_MARGIN:.0%} of its time limit "
        f"{_hours(p['time_limit_s'])}; "
    )
    restart = f"each restart reloads the model (~{_hours(p['fixed_s'])})"
    if res["preemptible"] and p["jobs"] - 1 <= res["requeue_cap"]:
        return head + (
            f"it checkpoints at the time-limit warning and its batch script requeues it, so it runs as "
            f"{p['jobs']} jobs ({restart}); raise resources.train.time or resources.train.nodes to need fewer."
        )
    if res["preemptible"]:
        return head + (
            f"it would need {p['jobs']} jobs, more than the profile's requeue_cap {res['requeue_cap']} requeues allow; "
            "raise resources.train.time, resources.train.nodes or requeue_cap."
        )
    return head + (
        "the time limit ends it: set resources.train.preemptible=true so it checkpoints at the warning and is "
        f"requeued ({p['jobs']} jobs, {restart}), or raise resources.train.time or resources.train.nodes; "
        "else `launch resume` restarts it from its last checkpoint "
        f"(every train.checkpoint_every={cfg.train.checkpoint_every} steps)."
    )


def shards_that_fit(fixed: float, per_question: float, questions: int, limit_s: float) -> int | None:
    """The fewest shards whose largest task stays under TIME_MARGIN of the limit; None if none can."""
    room = TIME_MARGIN * limit_s - fixed
    if room <= per_question:
        return None
    return math.ceil(questions / math.floor(room / per_question))


def funnel(cfg: RunConfig, overall: dict, questions: int) -> dict:
    """Pass rates per cascade stage and vote health on the pilot, from merge's stats.json counts."""
    candidates = overall.get("candidates", 0)
    judged = candidates - overall.get("filtered", 0) - overall.get("skipped", 0)
    rows = [{"stage": "static filter", "in": candidates, "passed": judged}]
    before = judged
    for stage in cfg.verify.stages:
        key = f"passed_{stage}"
        passed = overall.get(key, before)  # a stage merge ignores passes everything
        votes = overall.get(f"votes_{stage}", 0)
        rows.append(
            {
                "stage": stage,
                "in": before,
                "passed": passed,
                "votes": votes,
                "no_verdict": overall.get(f"no_verdict_{stage}", 0),
                "cut_off": overall.get(f"cut_off_{stage}", 0),
            }
        )
        before = passed
    return {"questions": questions, "candidates": candidates, "kept": overall.get("kept", 0), "stages": rows}


def project_kept(cfg: RunConfig, pilot: dict, total_questions: int) -> dict:
    """The SFT set of the full run with a 95% Wilson interval.

    With one pick per question (first-valid or max_per_question 1) the kept rate is per question,
    a binomial proportion; otherwise it is taken per candidate (an approximation: candidates of one
    question are not independent, so the interval is too narrow).
    """
    kept, n = pilot["kept"], pilot["questions"]
    per_question = cfg.merge.selection == "first-valid" or cfg.merge.max_per_question == 1
    trials, scale = (n, total_questions) if per_question else (pilot["candidates"], total_questions * cfg.generate.n)
    lo, hi = wilson(kept, trials)
    return {
        "basis": "per question" if per_question else "per candidate",
        "rate": kept / trials if trials else 0.0,
        "expected": round(kept / trials * scale) if trials else 0,
        "low": math.floor(lo * scale),
        "high": math.ceil(hi * scale),
        "interval": f"95% Wilson score interval on the kept rate {'per question' if per_question else 'per candidate'}",
        "train_rows": round(kept / trials * scale * (1 - cfg.merge.validation_fraction)) if trials else 0,
    }


def warnings(cfg: RunConfig, stages: dict, funnel_: dict, kept: dict, total_questions: int) -> list[str]:
    """What a user can act on before launching, one sentence each."""
    out = []
    for name, p in stages.items():
        if name not in VLLM_STAGES or p["max_task_s"] <= TIME_MARGIN * p["time_limit_s"]:
            continue
        fit = shards_that_fit(p["fixed_s"], p["per_question_s"], total_questions, p["time_limit_s"])
        fix = (
            f"use seeds.shards={fit} (or raise resources.{name}.time)"
            if fit
            else f"raise resources.{name}.time: its fixed start-up alone nearly fills it"
        )
        out.append(
            f"{name}: a task is projected at {_hours(p['max_task_s'])}, over {TIME_MARGIN:.0%} of its time limit "
            f"{_hours(p['time_limit_s'])}; {fix}."
        )
    for row in funnel_["stages"][1:]:
        if row["votes"] and row["cut_off"] / row["votes"] >= CUT_OFF_WARN:
            out.append(
                f"verify {row['stage']}: {row['cut_off']} of {row['votes']} judge votes were cut off at "
                f"verify.max_tokens={cfg.verify.max_tokens} (they count as no); raise verify.max_tokens."
            )
    if "train" in stages and (line := train_warning(cfg, stages["train"])):
        out.append(line)
    need = cfg.train.steps * cfg.train.global_batch
    if cfg.train.enabled and kept["train_rows"] < need:
        repeats = need / max(kept["train_rows"], 1)
        out.append(
            f"the projected SFT set ({kept['train_rows']} training rows, {kept['low']}–{kept['high']} kept) is smaller "
            f"than train.steps × train.global_batch = {need}: training repeats it ~{repeats:.1f} times; "
            "add seeds or lower train.steps."
        )
    return out


def project(
    cfg: RunConfig,
    total_questions: int,
    measured: dict,
    started: float | None = None,
    cluster_slots: int | None = None,
) -> dict:
    """pilot.json's projection: per stage, the generate+verify wall, yield, warnings, finish time.

    cluster_slots: how many generate or verify tasks the partition holds at once (None: not limiting).
    """
    if cfg.is_local:  # the local scheduler runs one task at a time: every task of generate, then of verify
        cluster_slots = 1
    sizes = [b - a for a, b in shard_bounds(total_questions, cfg.seeds.shards)]
    stages = {name: project_stage(cfg, name, measured["stages"][name], sizes, cluster_slots) for name in VLLM_STAGES}
    g, v = stages["generate"], stages["verify"]
    wall = schedule(g.pop("task_s"), v.pop("task_s"), g["parallel"], v["parallel"], cluster_slots)
    merge_s = measured["stages"].get("merge", {}).get("wall_s", 0.0)
    if cfg.train.enabled and "train" in measured["stages"]:
        stages["train"] = project_train(cfg, measured["stages"]["train"])
    train_s = stages["train"]["wall_s"] if "train" in stages else 0.0
    funnel_ = funnel(cfg, measured["funnel"], measured["stages"]["generate"]["questions"])
    kept = project_kept(cfg, funnel_, total_questions)
    now = time.time() if started is None else started
    finish = {
        "if_launched_at": time.strftime("%Y-%m-%d %H:%M", time.localtime(now)),
        "through_merge_at": time.strftime("%Y-%m-%d %H:%M", time.localtime(now + wall + merge_s)),
        "covers": "generate, verify and merge; ignoring queue wait; train and eval are not projected",
    }
    if "train" in stages:
        finish["through_train_at"] = time.strftime("%Y-%m-%d %H:%M", time.localtime(now + wall + merge_s + train_s))
        finish["covers"] = "generate, verify, merge and train; ignoring queue wait; eval is not projected"
    if cfg.rounds > 1:
        finish["covers"] += f"; round 1 of {cfg.rounds} only (later rounds depend on what each round trains)"
    return {
        "questions": total_questions,
        "shards": cfg.seeds.shards,
        "cluster_slots": cluster_slots,
        "stages": stages,
        "generate_verify_wall_s": wall,
        "merge_s": merge_s,
        "train_s": train_s,
        "funnel": funnel_,
        "kept": kept,
        "warnings": warnings(cfg, stages, funnel_, kept, total_questions),
        "finish": finish,
    }


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def render(result: dict, console: Console) -> None:
    """The pilot's tables: cost per stage, funnel, yield, warnings, finish time."""
    cost = Table(title=f"pilot of {result['pilot']['questions']} questions → full run of {result['questions']}")
    for column in ("stage", "samples", "tokens", "tokens/s", "tasks", "task", "task-hours", "GPU-hours", "wall"):
        cost.add_column(column, justify="left" if column == "stage" else "right")
    for name, p in result["stages"].items():
        rate = f"{p['tokens_per_s']:.0f} {p['rate_unit']}" if p["tokens_per_s"] is not None else "—"
        cost.add_row(
            name,
            f"{p['samples']:,}",
            f"{p['tokens']:,}",
            rate,
            f"1 ({p['nodes']} node(s) × {p['processes'] // p['nodes']})"
            if name == "train"
            else f"{p['tasks']} ({p['parallel']} at once)",
            f"{_hours(p['max_task_s'])} / {_hours(p['time_limit_s'])}",
            f"{p['task_hours']:.2f}",
            "—" if p["gpu_hours"] is None else f"{p['gpu_hours']:.2f}",
            _hours(p["wall_s"]),
        )
    console.print(cost)
    if result.get("cluster_slots"):
        console.print(
            f"the partition holds {result['cluster_slots']} generate or verify task(s) at once when idle (sinfo); "
            "the wall time counts the run's tasks waiting for each other, not for other users' jobs."
        )
    f = result["funnel"]
    table = Table(title=f"pilot funnel: {f['candidates']} candidates of {f['questions']} questions")
    for column in ("stage", "in", "passed", "pass rate", "no verdict", "cut off"):
        table.add_column(column, justify="left" if column == "stage" else "right")
    for row in f["stages"]:
        votes = row.get("votes") or 0
        shares = [f"{row[k]}/{votes}" if votes else "—" for k in ("no_verdict", "cut_off")]
        rate = f"{row['passed'] / row['in']:.0%}" if row["in"] else "—"
        table.add_row(row["stage"], str(row["in"]), str(row["passed"]), rate, *shares)
    console.print(table)
    k = result["kept"]
    console.print(
        f"SFT set: {k['expected']} rows projected ({k['low']}–{k['high']}, {k['interval']}; "
        f"{f['kept']} kept of {f['questions']} pilot questions)"
    )
    finish = result["finish"]
    train = "through_train_at" in finish
    console.print(
        f"generate+verify wall {_hours(result['generate_verify_wall_s'])}, merge {result['merge_s']:.0f} s"
        + (f", train {_hours(result['train_s'])}" if train else "")
        + f": launched now ({finish['if_launched_at']}), through merge by {finish['through_merge_at']}"
        + (f", through train by {finish['through_train_at']}" if train else "")
        + f" ({finish['covers']})."
    )
    if "train" in result["stages"]:
        p, m = result["stages"]["train"], result["pilot"]["measured"]["train"]
        console.print(
            f"train: {m['timed_steps']} timed steps of the pilot at {m['step_s']:.2f} s each on {m['world_size']} "
            f"process(es) of one node → {p['step_s']:.2f} s per step on {p['processes']} process(es), "
            f"{p['steps']} steps (start-up {p['fixed_s']:.0f} s)."
        )
    for line in result["warnings"]:
        console.print(f"[yellow]warning:[/yellow] {line}", highlight=False)
