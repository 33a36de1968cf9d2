"""The pilot: sampling, measurement, timed training steps, projection, warnings, reuse by the full launch, bad input.

The pipeline tests run the pilot through the real launcher, local scheduler and task runner with
the small generate and verify bodies below (SVD_HPC_TEST_BODIES=tests.test_pilot:BODIES): they
write real CANDIDATE and VERDICT records, so the real merge body counts the funnel.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from svd_hpc import config as config_mod
from svd_hpc import launch
from svd_hpc.forecast import pilot, projection
from svd_hpc.records import CANDIDATE, VERDICT
from svd_hpc.rundir.atomic import atomic_path
from svd_hpc.rundir.chunks import Checkpoint
from svd_hpc.rundir.layout import RunDir
from svd_hpc.sampling.engine import Completion
from svd_hpc.slurm import commands as slurm
from svd_hpc.stages import generate

REPO = Path(__file__).resolve().parent.parent
N = 2  # candidates per question in the test config
NO_TRAIN = ("--pilot-train-steps", "0")  # the tests that are not about the timed training steps skip them
ENGINE_S, PER_QUESTION_S = 0.5, 0.25  # what the toy generate body reports

# ----------------------------------------------------------------------------- toy bodies


def toy_generate(run: RunDir, index: int) -> dict:
    """N candidates per question, 10 + question number tokens each; reports an engine load and its seconds."""
    seeds = generate.read_seed_shard(run, index).to_pylist()
    rows = [
        dict(
            question_id=s["question_id"], question=s["question"], domain=s["domain"], candidate_index=k,
            prompt=s["question"], text=f"{s['question_id']} answer {k}", answer=f"{k}", prompt_tokens=5,
            completion_tokens=10 + s["source_index"], finish_reason="stop", passed_filter=True,
            filter_reason=None, skip_reason=None,
        )
        for s in seeds
        for k in range(N)
    ]  # fmt: skip
    with atomic_path(run.shard_path("generate", index)) as tmp:
        pq.write_table(pa.Table.from_pylist(rows, schema=CANDIDATE), tmp)
    logging.getLogger("svd_hpc").info(f"engine ready: model=toy device=cpu thinking=False in {ENGINE_S}s")
    seconds = ENGINE_S + PER_QUESTION_S * len(seeds)
    time.sleep(seconds)  # the time it reports, spent: the task's wall time can never be less
    return {"questions": len(seeds), "seconds": seconds}


def toy_verdicts(candidates: pa.Table) -> pa.Table:
    """Every candidate passes cycle (one of its two votes cut off); factuality passes candidate 0 of
    questions with an even source line; correctness passes all that reach it."""
    out = candidates.to_pydict()
    n = candidates.num_rows
    even = [int(q[1:]) % 2 == 0 for q in out["question_id"]]
    fact_ok = [e and k == 0 for e, k in zip(even, out["candidate_index"])]
    out |= {
        "cycle_votes": [[1, 1]] * n,
        "cycle_cut_off": [[True, False]] * n,
        "factuality_votes": [[1, 1] if ok else [0, -1] for ok in fact_ok],
        "factuality_cut_off": [[False, False]] * n,
        "correctness_votes": [[1, 1] if ok else None for ok in fact_ok],
        "correctness_cut_off": [[False, False] if ok else None for ok in fact_ok],
        "inferred_questions": [["q"]] * n,
        "status": ["passed" if ok else "rejected" for ok in fact_ok],
        "failed_stage": [None if ok else "factuality" for ok in fact_ok],
        "judge_prompt_tokens": [30] * n,
        "judge_completion_tokens": [4 if ok else 2 for ok in fact_ok],
        "judge_samples": [6 if ok else 4 for ok in fact_ok],
        "judge_texts": [None] * n,
    }
    return pa.Table.from_pydict(out, schema=VERDICT)


def toy_verify(run: RunDir, index: int) -> dict:
    table = toy_verdicts(pq.read_table(run.shard_path("generate", index)))
    with atomic_path(run.shard_path("verify", index)) as tmp:
        pq.write_table(table, tmp)
    return {"seconds": 1.0}


BODIES = {"generate": toy_generate, "verify": toy_verify}  # merge: the real body


# ----------------------------------------------------------------------------- helpers


def write_config(tmp_path: Path, questions: int = 12, **over) -> Path:
    """A run config over `questions` toy seeds with ids q0, q1, ... (source line = number)."""
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text(
        "".join(json.dumps({"id": f"q{i}", "question": f"What is {i} + {i}?"}) + "\n" for i in range(questions))
    )
    data = {
        "name": "p",
        "run_root": str(tmp_path / "runs"),
        "model": {"path": "builtin:tiny-qwen3"},
        "seeds": {"path": str(seeds), "id_field": "id", "shards": 3},
        "generate": {"n": N, "max_tokens": 32, "chunk_size": 2},
        "verify": {"votes": 2, "max_tokens": 16},
        "train": {"steps": 5, "global_batch": 4, "procs_per_node": 1, "max_seq_len": 96},
    }
    for key, value in over.items():  # section__field=value, or a top-level key
        section, _, field = key.partition("__")
        if field:
            data.setdefault(section, {})[field] = value
        else:
            data[key] = value
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def run_launch(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "svd_hpc.launch", *args],
        capture_output=True, text=True, cwd=REPO, timeout=300,
        env={**os.environ, "SVD_HPC_TEST_BODIES": "tests.test_pilot:BODIES", **(env or {})},
    )  # fmt: skip


# ----------------------------------------------------------------------------- the pilot end to end


def test_pilot_measures_projects_and_writes_pilot_json(tmp_path):
    cfg_path = write_config(tmp_path)
    proc = run_launch("--config", str(cfg_path), "--pilot", "6", "--pilot-seed", "3", "--pilot-train-steps", "3")
    assert proc.returncode == 0, proc.stderr
    run = RunDir(tmp_path / "runs" / "p")
    result = json.loads((run.root / "pilot.json").read_text())
    drawn = json.loads((run.root / "pilot" / "questions.json").read_text())
    # the draw is the seeded one, recorded, and in seed-file order
    expected = pilot.sample(pa.table({"question_id": [f"q{i}" for i in range(12)]}), 6, 3)
    assert drawn["question_ids"] == expected["question_id"].to_pylist()
    assert drawn["seed"] == 3 and drawn["of"] == 12
    numbers = [int(q[1:]) for q in drawn["question_ids"]]

    gen = result["pilot"]["measured"]["generate"]
    assert gen["samples"] == 6 * N and gen["tokens"] == sum(N * (10 + i) for i in numbers)
    assert gen["work_s"] == pytest.approx(PER_QUESTION_S * 6)  # the engine load is not per-question work
    assert gen["fixed_s"] == pytest.approx(gen["wall_s"] - PER_QUESTION_S * 6)
    # 12 questions in 3 shards of 4: each task = fixed + 4 questions of work
    g = result["stages"]["generate"]
    assert g["tasks"] == 3 and g["max_task_s"] == pytest.approx(gen["fixed_s"] + 4 * PER_QUESTION_S)
    assert g["task_hours"] == pytest.approx(3 * g["max_task_s"] / 3600)
    assert g["samples"] == 12 * N and g["gpu_hours"] is None and g["rate_unit"] == "per task"
    # the funnel is merge's count of the pilot's verdicts
    even = sum(1 for i in numbers if i % 2 == 0)
    stages = {row["stage"]: row for row in result["funnel"]["stages"]}
    assert stages["cycle"]["passed"] == 6 * N and stages["cycle"]["cut_off"] == 6 * N
    assert stages["factuality"]["passed"] == even and stages["factuality"]["no_verdict"] == 6 * N - even
    assert result["funnel"]["kept"] == even
    lo, hi = projection.wilson(even, 6)
    assert result["kept"]["expected"] == round(even / 6 * 12)
    assert (result["kept"]["low"], result["kept"]["high"]) == (math.floor(lo * 12), math.ceil(hi * 12))
    # half the cycle votes cut off: a warning that names the knob
    assert any("verify.max_tokens" in w for w in result["warnings"])
    printed = " ".join(proc.stdout.split())
    assert "pilot funnel" in printed and "ignoring queue wait" in printed
    # three real optimiser steps of tiny-qwen3 (torchrun, one process) on the pilot's SFT set, each
    # of global_batch sequences filled to max_seq_len; the first warms up and is not timed
    prun = run.pilot_dir
    steps = prun.load_json(prun.done_marker("pilot_train", 0))
    assert steps["step_tokens"] == [4 * 96] * 3 and steps["world_size"] == 1 and len(steps["step_seconds"]) == 3
    t = result["pilot"]["measured"]["train"]
    assert t["timed_steps"] == 2 and t["step_s"] == pytest.approx(sum(steps["step_seconds"][1:]) / 2)
    assert 0 < t["fixed_s"] < t["wall_s"]
    p = result["stages"]["train"]
    assert p["steps"] == 5 and p["max_task_s"] == pytest.approx(t["fixed_s"] + 5 * t["step_s"])
    assert p["tokens_per_s"] == pytest.approx(4 * 96 / t["step_s"]) and p["rate_unit"] == "per process"
    assert "through_train_at" in result["finish"] and "train" in printed and "timed steps" in printed
    # nothing of the full run was written: its config, plan and seed shards wait for the launch
    assert not run.config_path.exists() and not run.plan_path.exists()


def test_launch_after_pilot_generates_only_the_other_questions(tmp_path, monkeypatch):
    """The full launch puts the pilot's candidates into its generate checkpoints by question id;
    the shard's generate task asks the engine only for the rest, and its records equal the pilot's."""
    cfg_path = write_config(tmp_path)
    proc = run_launch("--config", str(cfg_path), "--pilot", "5", *NO_TRAIN, env={"COLUMNS": ""})
    assert proc.returncode == 0, proc.stderr
    # piped, as into a batch log or `| tee`: each table row on one line, not wrapped at 80 columns
    header = ("stage", "samples", "tokens", "tokens/s", "tasks", "task-hours", "GPU-hours", "wall")
    assert any(all(word in line for word in header) for line in proc.stdout.splitlines()), proc.stdout
    cfg = config_mod.load(cfg_path)
    run = RunDir(tmp_path / "runs" / "p")
    launch.prepare(cfg, run)  # what launch does first: config, plan, seed shards
    assert pilot.reuse(run) == 5
    assert pilot.reuse(run) == 0  # idempotent: a second launch adds nothing

    picked = json.loads((run.root / "pilot" / "questions.json").read_text())["question_ids"]
    pilot_rows = pq.read_table(run.root / "pilot" / "generate" / "shard-00000.parquet").to_pylist()
    asked = []

    class FakeEngine:
        thinking = False

        def __init__(self, *_):
            pass

        def render(self, conversation):
            return conversation[0]["content"]

        def stream(self, rendered, sampling, seeds):
            asked.extend(rendered)
            for i, _ in enumerate(rendered):
                yield i, [Completion("new", 3, "stop", 5) for _ in range(sampling.n)]

    monkeypatch.setattr(generate, "Engine", FakeEngine)
    for index in range(cfg.seeds.shards):
        shard_ids = generate.read_seed_shard(run, index)["question_id"].to_pylist()
        stats = generate.run_shard(run, index)
        assert stats["questions_resumed"] == len([q for q in shard_ids if q in picked])
        records = pq.read_table(run.shard_path("generate", index)).to_pylist()
        assert [r["question_id"] for r in records[::N]] == shard_ids
        for r in records:
            if r["question_id"] in picked:
                assert r == next(
                    p
                    for p in pilot_rows
                    if (p["question_id"], p["candidate_index"]) == (r["question_id"], r["candidate_index"])
                )
            else:
                assert r["text"] == "new"
    assert len(asked) == 12 - 5


def test_pilot_of_a_run_of_rounds_measures_round_1(tmp_path):
    """rounds: 2: the pilot runs round 1's stages and says it projects round 1; the full launch
    generates afresh (round 1's questions are picked by its seeds task after the launch)."""
    cfg_path = write_config(tmp_path, rounds=2)
    proc = run_launch("--config", str(cfg_path), "--pilot", "4", *NO_TRAIN)
    assert proc.returncode == 0, proc.stderr
    run = RunDir(tmp_path / "runs" / "p")
    result = json.loads((run.root / "pilot.json").read_text())
    assert result["pilot"]["measured"]["generate"]["samples"] == 4 * N
    assert result["finish"]["covers"].endswith("round 1 of 2 only (later rounds depend on what each round trains)")
    launch.prepare(config_mod.load(cfg_path), run)
    assert pilot.reuse(run) == 0


def test_reuse_needs_the_same_sampling_settings(tmp_path):
    cfg_path = write_config(tmp_path)
    assert run_launch("--config", str(cfg_path), "--pilot", "4", *NO_TRAIN).returncode == 0
    run = RunDir(tmp_path / "runs" / "p")
    launch.prepare(config_mod.load(cfg_path, ["generate.temperature=0.3"]), run)
    assert pilot.reuse(run) == 0
    for index in range(3):
        assert not generate.chunk_dir(run, index).exists()


def test_reuse_places_candidates_whatever_the_shard_count(tmp_path):
    cfg_path = write_config(tmp_path)
    assert run_launch("--config", str(cfg_path), "--pilot", "12", *NO_TRAIN).returncode == 0
    cfg = config_mod.load(cfg_path, ["seeds.shards=5"])
    run = RunDir(tmp_path / "runs" / "p")
    launch.prepare(cfg, run)
    assert pilot.reuse(run) == 12
    for index in range(5):
        shard = generate.read_seed_shard(run, index)
        saved = Checkpoint(generate.chunk_dir(run, index), 2, generate.fingerprint(run.load_config(), shard))
        assert all(q in saved for q in shard["question_id"].to_pylist())


# ----------------------------------------------------------------------------- projection


def test_wilson_interval_matches_the_formula():
    lo, hi = projection.wilson(0, 10)
    assert lo == 0 and hi == pytest.approx(0.2775, abs=1e-4)
    lo, hi = projection.wilson(5, 10)
    assert (lo, hi) == (pytest.approx(0.2366, abs=1e-4), pytest.approx(0.7634, abs=1e-4))


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30", 1800), ("10:05", 605), ("01:00:00", 3600), ("1-00", 86400), ("1-02:03:04", 93784), ("2-12:00", 216000)],
)
def test_slurm_times(text, seconds):
    assert projection.slurm_seconds(text) == seconds


def cluster_config(tmp_path: Path, **over) -> config_mod.RunConfig:
    profile = tmp_path / "site.yaml"
    profile.write_text(yaml.safe_dump({"name": "site", "partition": "gpu", "gpus_per_node": 4, "time": "04:00:00"}))
    return config_mod.load(write_config(tmp_path, cluster=str(profile), **over))


def measured(fixed: float, per_question: float, questions: int = 10) -> dict:
    stage = {"questions": questions, "samples": 40, "tokens": 4000, "wall_s": fixed + per_question * questions}
    stage |= {"work_s": per_question * questions, "fixed_s": fixed}
    funnel = {"candidates": 20, "filtered": 0, "skipped": 0, "kept": 5, "votes_cycle": 100, "cut_off_cycle": 0}
    return {"stages": {"generate": dict(stage), "verify": dict(stage), "merge": {"wall_s": 3.0}}, "funnel": funnel}


def test_projection_on_a_cluster_counts_gpus_waves_and_the_time_limit(tmp_path):
    cfg = cluster_config(tmp_path, seeds__shards=10, resources={"generate": {"array_parallelism": 4}})
    # 10,000 questions in 10 shards of 1,000; 60 s fixed + 20 s per question: 20,060 s per task > 4 h
    result = projection.project(cfg, 10_000, measured(60.0, 20.0), started=0.0)
    g = result["stages"]["generate"]
    assert g["max_task_s"] == pytest.approx(20_060) and g["waves"] == 3 and g["parallel"] == 4
    assert g["gpu_hours"] == pytest.approx(10 * 20_060 / 3600)  # tensor parallel 1: one GPU per task
    assert g["tokens_per_s"] == pytest.approx(4000 / 200) and g["rate_unit"] == "per GPU"
    # verify (no cap) keeps up with generate: the last verify task follows generate's last wave
    assert result["generate_verify_wall_s"] == pytest.approx(3 * 20_060 + 20_060)
    warning = next(w for w in result["warnings"] if w.startswith("generate:"))
    # 0.9 × 4 h − 60 s leaves room for 645 questions: 16 shards
    assert "seeds.shards=16" in warning and "4.00 h" in warning
    assert projection.shards_that_fit(60.0, 20.0, 10_000, 14_400) == 16


def test_schedule_replays_slots_aftercorr_and_submit_order():
    gen, ver = [100.0] * 4, [150.0] * 4
    # two slots per array, none shared: verify 0 and 1 start as generate 0 and 1 end (t=100), generate
    # 2 and 3 too; verify 2 and 3 wait for verify's slots (t=250)
    assert projection.schedule(gen, ver, 2, 2) == 400
    # two slots in all: generate's array was submitted first, so it takes both until it is done (t=200)
    assert projection.schedule(gen, ver, 2, 2, cluster_slots=2) == 200 + 150 + 150
    # one at a time: every task in turn, generate first (the local scheduler)
    assert projection.schedule(gen, ver, 4, 4, cluster_slots=1) == 4 * 100 + 4 * 150
    # unequal tasks: verify 1 starts when generate 1 ends, not when the longest generate task ends
    assert projection.schedule([10.0, 50.0], [5.0, 5.0], 2, 2) == 55
    assert projection.schedule([10.0, 50.0], [30.0, 5.0], 1, 1) == 65  # verify 0 runs during generate 1
    # a large array: 20 waves of 100 generate tasks, each verify task right after its generate task
    assert projection.schedule([60.0] * 2000, [30.0] * 2000, 100, 2000) == 20 * 60 + 30


def test_projection_counts_what_the_partition_holds(tmp_path):
    """array_parallelism 2 for both arrays; a partition that holds only 2 tasks makes them take turns."""
    res = {"generate": {"array_parallelism": 2}, "verify": {"array_parallelism": 2}}
    cfg = cluster_config(tmp_path, seeds__shards=4, resources=res)
    free = projection.project(cfg, 40, measured(60.0, 4.0), started=0.0)  # 100 s per task
    full = projection.project(cfg, 40, measured(60.0, 4.0), started=0.0, cluster_slots=2)
    assert free["generate_verify_wall_s"] == pytest.approx(300) and free["cluster_slots"] is None
    assert full["generate_verify_wall_s"] == pytest.approx(400) and full["cluster_slots"] == 2
    one = projection.project(cfg, 40, measured(60.0, 4.0), started=0.0, cluster_slots=1)
    assert one["stages"]["generate"]["parallel"] == 1 and one["generate_verify_wall_s"] == pytest.approx(800)


@pytest.mark.parametrize(("text", "mb"), [("8G", 8192), ("8000", 8000), ("512M", 512), ("1T", 1048576), ("2gb", 2048)])
def test_memory_sizes(text, mb):
    assert slurm.memory_mb(text) == mb


def test_gpus_from_gres():
    assert slurm.gres_gpus("gpu:a100:4(S:0-1),shard:8") == 4
    assert slurm.gres_gpus("gpu:8") == 8 and slurm.gres_gpus("(null)") == 0
    assert slurm.gres_gpus("gpu:h100:4,gpu:a100:2") == 6


def test_waiting_for_the_pilots_jobs_outlasts_a_failing_squeue(monkeypatch):
    """squeue timing out (exit 1, nothing printed) is not the end of the jobs: the wait goes on."""
    replies = iter([(1, ""), (0, "17_0\n"), (0, "")])
    calls = []

    def fake_run(cmd, what, check=True):
        calls.append(cmd[0])
        code, out = next(replies)
        return subprocess.CompletedProcess(cmd, code, out, "")

    monkeypatch.setattr(slurm, "_run", fake_run)
    monkeypatch.setattr(slurm, "task_states", lambda ids: {"17_0": "done"})
    assert slurm.wait(["17"], timeout_s=60, poll_s=0) == {"17_0": "done"}
    assert calls == ["squeue"] * 3


def node_mb(slurm_cluster: dict) -> int:
    """A local cluster node's memory in MB, as slurmd declares it."""
    node = subprocess.run(
        ["scontrol", "show", "node", "n1"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **slurm_cluster},
    ).stdout
    return int(re.search(r"RealMemory=(\d+)", node).group(1))


@pytest.mark.slurm
def test_partition_slots_from_sinfo(slurm_cluster, monkeypatch):
    """The local cluster: 2 nodes of 8 CPUs and 90% of the machine's memory shared (scripts/local-slurm.sh)."""
    for key, value in slurm_cluster.items():
        monkeypatch.setenv(key, value)
    assert slurm.partition_slots("debug", 1, "8G", 0) == 2 * min(8, node_mb(slurm_cluster) // 8192)  # memory bounds it
    assert slurm.partition_slots("debug", 2, "1G", 0) == 8  # CPUs allow four per node
    assert slurm.partition_slots("debug", 1, None, 0) == 16
    assert slurm.partition_slots("debug", 1, None, 1) == 0  # no GPUs there
    assert slurm.partition_slots("no-such-partition", 1, None, 0) is None


def test_projection_warns_when_the_sft_set_is_too_small(tmp_path):
    cfg = cluster_config(tmp_path, train__steps=100, train__global_batch=8)
    result = projection.project(cfg, 40, measured(10.0, 1.0), started=0.0)
    # 5 of 10 questions kept → 20 of 40 projected, far below 100 × 8
    assert result["kept"]["expected"] == 20
    assert any("smaller than train.steps × train.global_batch = 800" in w for w in result["warnings"])
    assert not any(w.startswith(("generate:", "verify ")) for w in result["warnings"])


def timed(step_s: float = 30.0, world_size: int = 4, wall: float = 300.0) -> dict:
    """The pilot's timed training steps as pilot.measure_train gives them: 4 steps, 3 timed."""
    fixed = wall - 4 * step_s
    return {"steps": 4, "timed_steps": 3, "world_size": world_size, "device": "cuda", "step_s": step_s,
            "tokens_per_step": 64 * 4096, "wall_s": wall, "fixed_s": fixed}  # fmt: skip


def train_cluster_config(tmp_path: Path, steps: int, **resources) -> config_mod.RunConfig:
    """4 GPUs per node, 2 nodes for train (8 processes), 4 h limit; 64 sequences of 4,096 tokens per step."""
    res = {"train": {"nodes": 2, **resources}}
    return cluster_config(tmp_path, resources=res, train__steps=steps, train__global_batch=64, train__max_seq_len=4096)


def test_pilot_measures_train_after_the_warm_up_step():
    m = pilot.measure_train({"world_size": 4, "device": "cuda", "step_seconds": [55.0, 31.0, 29.0, 30.0],
                             "step_tokens": [9, 262144, 262144, 262144]}, wall=300.0)  # fmt: skip
    assert m == timed()  # warm-up excluded: (31 + 29 + 30) / 3 = 30 s; fixed 300 − 4 × 30


def test_projection_of_train_from_the_timed_steps(tmp_path):
    cfg = train_cluster_config(tmp_path, steps=1000)
    data = measured(10.0, 1.0)
    data["stages"]["train"] = timed()
    result = projection.project(cfg, 40, data, started=0.0)
    p = result["stages"]["train"]
    # the pilot's 4 ranks each ran 16 of the 64 sequences in 30 s; the run's 8 ranks run 8: 15 s a step
    assert (p["nodes"], p["processes"], p["step_s"]) == (2, 8, pytest.approx(15.0))
    assert p["max_task_s"] == pytest.approx(180 + 1000 * 15) and p["wall_s"] == p["max_task_s"]
    assert p["task_hours"] == pytest.approx(15_180 / 3600)
    assert p["gpu_hours"] == pytest.approx(15_180 * 8 / 3600)  # 2 nodes × 4 GPUs
    assert p["tokens_per_s"] == pytest.approx(64 * 4096 / 30 / 4) and p["rate_unit"] == "per GPU"
    assert (p["samples"], p["tokens"]) == (64_000, 64_000 * 4096)
    # 15,180 s against a 4 h limit less the 120 s warning: 2 jobs
    assert p["time_limit_s"] == 14_400 and p["jobs"] == 2
    # generate+verify 48 s (3 shards of ≤14 questions: 24 s each), merge 3 s, then train
    assert result["train_s"] == pytest.approx(15_180)
    assert result["finish"]["through_train_at"] == time.strftime("%Y-%m-%d %H:%M", time.localtime(48 + 3 + 15_180))
    warning = next(w for w in result["warnings"] if w.startswith("train:"))
    assert "4.22 h" in warning and "set resources.train.preemptible=true" in warning and "2 jobs" in warning


def test_projection_of_train_under_its_time_limit_or_requeued(tmp_path):
    fits = projection.project(train_cluster_config(tmp_path, steps=500), 40, measured(10.0, 1.0), started=0.0)
    assert "train" not in fits["stages"]  # no timed steps measured: train is not projected
    data = measured(10.0, 1.0)
    data["stages"]["train"] = timed()
    fits = projection.project(train_cluster_config(tmp_path, steps=500), 40, data, started=0.0)
    assert fits["stages"]["train"]["max_task_s"] == pytest.approx(180 + 500 * 15)  # 2.1 h: no warning
    assert not any(w.startswith("train:") for w in fits["warnings"])
    requeued = projection.project(train_cluster_config(tmp_path, 1000, preemptible=True), 40, data, started=0.0)
    warning = next(w for w in requeued["warnings"] if w.startswith("train:"))
    assert "its batch script requeues it, so it runs as 2 jobs" in warning
    assert requeued["finish"]["covers"].startswith("generate, verify, merge and train")


def test_pilot_times_training_only_when_the_config_trains(tmp_path):
    from svd_hpc.rundir.planfile import plan_from_json

    plans = {}
    for enabled in (True, False):
        (tmp_path / str(enabled)).mkdir()
        cfg = config_mod.load(write_config(tmp_path / str(enabled), train__enabled=enabled))
        _, prun, _ = pilot.prepare(cfg, RunDir(tmp_path / str(enabled) / "runs" / "p"), 4, 0, train_steps=3)
        plans[enabled] = {s.name: s for s in plan_from_json(prun.load_json(prun.plan_path))}
        assert json.loads((prun.root / "questions.json").read_text())["train_steps"] == (3 if enabled else 0)
    assert list(plans[False]) == ["generate", "verify", "merge"]
    assert list(plans[True]) == ["generate", "verify", "merge", "pilot_train"]
    train = plans[True]["pilot_train"]  # run as train runs: torchrun here, srun on SLURM, on one node
    assert train.kind == "distributed" and train.resources["nodes"] == 1 and train.resources["ntasks_per_node"] == 1
    assert [(d.stage, d.kind) for d in train.depends_on] == [("merge", "afterok")]


def test_timed_steps_fill_every_pack_to_max_seq_len():
    import numpy as np

    from svd_hpc.stages import pilot_train as pilot_steps
    from svd_hpc.train import sft_data

    lengths = [5, 3, 7]
    ids = np.arange(15, dtype=np.int32)
    labels = ids + 100  # every token carries loss
    data = sft_data.TokenizedSet(ids, labels, np.array([0, 5, 8, 15]), {})
    pieces, rows = pilot_steps.fill(data, 8, packs=4, seed=0)
    assert [int(pieces.lengths[r].sum()) for r in rows] == [8] * 4
    starts = {0: 0, 1: 5, 2: 8}
    for i in range(len(pieces)):
        got_ids, got_labels = pieces.sample(i)
        sample = next(k for k, at in starts.items() if ids[at] == got_ids[0])
        assert list(got_ids) == list(ids[starts[sample] : starts[sample] + len(got_ids)])  # a prefix of a sample
        cut = len(got_ids) < lengths[sample]
        assert got_labels[-1] == (sft_data.IGNORE if cut else got_ids[-1] + 100)
    assert all(pieces.lengths[r[0]] in lengths for r in rows)  # every pack opens with a whole sample


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("argv", "overrides", "questions"),
    [
        (["--config", "X", "a=1", "--pilot"], ["a=1"], pilot.DEFAULT_QUESTIONS),
        (["--config", "X", "--pilot", "a=1"], ["a=1"], pilot.DEFAULT_QUESTIONS),  # not N: an override
        (["--config", "X", "a=1", "--pilot", "5", "b=2"], ["a=1", "b=2"], 5),
        (["--config", "X", "a=1", "--dry-run", "b=2"], ["a=1", "b=2"], None),
    ],
)
def test_overrides_may_come_before_or_after_the_options(argv, overrides, questions):
    args = launch.parse_args(["run", *argv])
    assert args.overrides == overrides and args.pilot == questions


def test_pilot_larger_than_the_seed_set_exits_2_and_writes_nothing(tmp_path):
    cfg_path = write_config(tmp_path)
    proc = run_launch("--config", str(cfg_path), "--pilot", "13")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: --pilot 13 asks for more questions than the 12 seeds in {tmp_path / 'seeds.jsonl'} "
        "(after seeds.limit and duplicates); use --pilot 12 or fewer."
    ]
    assert not (tmp_path / "runs").exists()


def test_pilot_of_a_config_without_judges_exits_2(tmp_path):
    proc = run_launch("--config", str(write_config(tmp_path, verify__stages=[])), "--pilot", "4")
    assert proc.returncode == 2
    assert "verify.stages is empty" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()


def test_pilot_with_one_training_step_exits_2(tmp_path):
    proc = run_launch("--config", str(write_config(tmp_path)), "--pilot", "4", "--pilot-train-steps", "1")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: --pilot-train-steps 1: the first step warms up and is not timed; "
        "use 0 (no training steps) or at least 2."
    ]
    assert not (tmp_path / "runs").exists()


@pytest.mark.slurm
def test_pilot_on_the_local_cluster(tmp_path, slurm_cluster):
    """The pilot's tasks as SLURM jobs: their wall times from sacct, what the partition holds from sinfo."""
    res = {stage: {"mem": "6G"} for stage in ("generate", "verify")}
    cfg_path = write_config(tmp_path, cluster="local-slurm", resources=res)
    proc = run_launch("--config", str(cfg_path), "--pilot", "4", *NO_TRAIN, env=slurm_cluster)
    assert proc.returncode == 0, proc.stderr
    run = RunDir(tmp_path / "runs" / "p")
    result = json.loads((run.root / "pilot.json").read_text())
    submitted = json.loads((run.root / "pilot" / "jobs.json").read_text())["submissions"]
    assert [s["stage"] for s in submitted] == ["generate", "verify", "merge"]
    gen = result["pilot"]["measured"]["generate"]
    assert gen["wall_s"] >= math.floor(ENGINE_S + 4 * PER_QUESTION_S)  # sacct's Elapsed, whole seconds
    assert gen["work_s"] == pytest.approx(4 * PER_QUESTION_S) and result["pilot"]["measured"]["merge"]["wall_s"] > 0
    assert result["cluster_slots"] == 2 * (node_mb(slurm_cluster) // 6144)  # a 6G task per node's memory
    assert result["stages"]["generate"]["tasks"] == 3 and result["funnel"]["candidates"] == 4 * N


@pytest.mark.slurm
def test_pilot_refused_by_the_cluster_submits_nothing(tmp_path, slurm_cluster):
    profile = tmp_path / "refusing.yaml"
    profile.write_text(yaml.safe_dump({"name": "refusing", "partition": "no-such-partition", "time": "00:10:00"}))
    proc = run_launch("--config", str(write_config(tmp_path, cluster=str(profile))), "--pilot", "4", env=slurm_cluster)
    assert proc.returncode == 2
    assert (
        proc.stderr.startswith("error: SLURM rejects stage 'generate'") and len(proc.stderr.strip().splitlines()) == 1
    )
    pilot_dir = tmp_path / "runs" / "p" / "pilot"
    assert not (pilot_dir / "jobs.json").exists() and not list((pilot_dir / "sbatch").glob("*.sh"))


# ----------------------------------------------------------------------------- the real engine


@pytest.mark.slow
def test_pilot_on_the_tiny_model(tmp_path):
    """The real generate, verify and merge on 2 questions of configs/tiny.yaml (minutes on 2 busy cores)."""
    proc = subprocess.run(
        [sys.executable, "-m", "svd_hpc.launch", "--config", "configs/tiny.yaml", f"run_root={tmp_path}",
         "--pilot", "2"],
        capture_output=True, text=True, cwd=REPO, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "tiny" / "pilot.json").read_text())
    gen = result["pilot"]["measured"]["generate"]
    assert gen["samples"] == 2 * 2 and gen["tokens"] > 0 and 0 < gen["work_s"] < gen["wall_s"]
    assert result["stages"]["generate"]["tasks"] == 2 and result["funnel"]["candidates"] == 4


def test_report_compares_the_pilot_with_the_run(tmp_path):
    from svd_hpc.report.pilot import pilot_section
    from svd_hpc.rundir.atomic import atomic_write_json

    cfg_path = write_config(tmp_path)
    assert run_launch("--config", str(cfg_path), "--pilot", "6", *NO_TRAIN).returncode == 0
    run = RunDir(tmp_path / "runs" / "p")
    launch.prepare(config_mod.load(cfg_path), run)
    assert pilot.reuse(run) == 6
    projected = json.loads((run.root / "pilot.json").read_text())
    projected["stages"]["train"] = {"task_hours": 0.02}  # what a pilot with timed steps projects: 72 s
    atomic_write_json(run.root / "pilot.json", projected)
    atomic_write_json(run.root / "logs" / "local_timings.json", {"generate": 30.0, "verify": 45.0, "train": 90.0})
    atomic_write_json(run.stage_dir("merge") / "stats.json", {"overall": {"kept": 7}})
    rows = {r[0].split(",")[0]: r for r in pilot_section(run).rows}
    g = projected["stages"]["generate"]
    want = g["task_hours"] * 3600 - 6 * g["per_question_s"]  # the 6 reused questions cost nothing
    assert rows["generate task seconds"][1:] == [f"{want:,.0f}", "30", f"{30 / want:.2f}"]
    assert rows["kept (SFT) rows"][1:3] == [f"{projected['kept']['expected']:,}", "7"]
    assert rows["train task seconds"][1:] == ["72", "90", "1.25"]
    assert "6 of its questions were reused" in pilot_section(run).note
