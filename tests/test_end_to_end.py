"""The whole method, CI-sized (configs/tiny.yaml), through the local scheduler and the local cluster.

Checks that every stage produced what the next one needs and that the report's numbers are the
records' numbers. The tiny model is random: only shapes and bookkeeping are asserted.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess

import datasets
import pyarrow.parquet as pq
import pytest
import torch
from transformers import AutoModelForCausalLM

from svd_hpc import records
from svd_hpc.eval.tasks import eval_tasks
from svd_hpc.inputs import models
from svd_hpc.rundir.layout import RunDir
from tests.helpers import REPO, run_launch, wait_jobs

CONFIG = REPO / "configs" / "tiny.yaml"


def check_run(run: RunDir) -> None:
    cfg = run.load_config()
    shards = cfg.seeds.shards
    seeds = sum(pq.read_table(run.shard_path("seeds", i)).num_rows for i in range(shards))
    assert seeds == cfg.seeds.limit

    candidates = [pq.read_table(run.shard_path("generate", i)) for i in range(shards)]
    verdicts = [pq.read_table(run.shard_path("verify", i)) for i in range(shards)]
    for table in candidates:
        records.check_schema(table, records.CANDIDATE, "generate")
    assert sum(t.num_rows for t in candidates) == seeds * cfg.generate.n
    for gen, ver in zip(candidates, verdicts):
        records.check_schema(ver, records.VERDICT, "verify")
        assert ver.column("text").to_pylist() == gen.column("text").to_pylist()
        for row in ver.to_pylist():
            assert row["status"] in ("passed", "rejected", "filtered")
            if row["status"] == "filtered":
                assert all(row[f"{s}_votes"] is None for s in cfg.verify.stages)
            if row["failed_stage"]:  # early exit: no votes past the failing stage
                later = cfg.verify.stages[cfg.verify.stages.index(row["failed_stage"]) + 1 :]
                assert all(row[f"{s}_votes"] is None for s in later)

    stats = json.loads((run.stage_dir("merge") / "stats.json").read_text())
    sft = datasets.load_dataset("parquet", data_files=str(run.stage_dir("merge") / "sft" / "train.parquet"))["train"]
    unfiltered = sum(r["status"] != "filtered" for t in verdicts for r in t.select(["status"]).to_pylist())
    assert 0 < len(sft) <= unfiltered
    assert [m["role"] for m in sft[0]["messages"]] == ["user", "assistant"]
    # the funnel counts what the records and the SFT files hold
    overall = stats["overall"]
    assert overall["candidates"] == seeds * cfg.generate.n
    assert overall["filtered"] == sum(
        r["status"] == "filtered" for t in verdicts for r in t.select(["status"]).to_pylist()
    )
    validation = run.stage_dir("merge") / "sft" / "validation.parquet"
    held_out = pq.read_table(validation).num_rows if validation.exists() else 0
    assert (overall["train"], overall["validation"], overall["kept"]) == (len(sft), held_out, len(sft) + held_out)

    # the trained model loads, and training moved its weights away from the base model's
    trained = AutoModelForCausalLM.from_pretrained(run.stage_dir("train") / "final")
    base = AutoModelForCausalLM.from_pretrained(models.train_base(cfg)[0])
    base_weights = dict(base.named_parameters())
    changed = [n for n, p in trained.named_parameters() if not torch.equal(p, base_weights[n])]
    assert changed, "no parameter changed in training"
    metrics = [json.loads(line) for line in (run.stage_dir("train") / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "loss" in m][-1] == cfg.train.steps

    # the report's pass@1 is the mean over seeds of the graded records
    summary = json.loads((run.stage_dir("eval") / "summary.json").read_text())
    variants = [("base", "direct", "base"), ("trained", "direct", "SVD")]
    if cfg.eval.uq_ttc:
        variants.append(("base", "uq_ttc", "UQ-TTC"))
    for model, mode, variant in variants:
        per_seed = []
        # UQ-TTC runs on the seeds its tasks name (eval.uq_ttc_seeds), direct eval on every seed
        for seed in sorted({t.seed for t in eval_tasks(cfg, model) if t.mode == mode}):
            suffix = "-uq_ttc" if mode == "uq_ttc" else ""
            table = pq.read_table(run.stage_dir("eval") / model / "demo_arithmetic" / f"seed-{seed}{suffix}.parquet")
            assert table.num_rows == 4
            per_seed.append(sum(table.column("correct").to_pylist()) / table.num_rows)
        assert summary["demo_arithmetic"][variant]["pass_at_1"] == pytest.approx(statistics.mean(per_seed))
    report = (run.root / "report.md").read_text()
    assert "demo_arithmetic" in report and (run.root / "report.png").is_file()
    # every task recorded its wall time, which the report sums into task hours
    for stage in ("generate", "verify", "merge", "train", "eval_base", "eval_trained"):
        markers = list((run.stage_dir(stage) / "done").iterdir())
        assert markers and all(json.loads(m.read_text())["seconds"] > 0 for m in markers), stage


@pytest.mark.slow  # ~3 min; the same run on the local cluster below stays in the default run
def test_tiny_run_through_the_local_scheduler(tmp_path):
    proc = run_launch(["--config", str(CONFIG), f"run_root={tmp_path}"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    check_run(RunDir(tmp_path / "tiny"))


@pytest.mark.slurm
@pytest.mark.slow  # the whole tiny run through sbatch (150-300 s)
@pytest.mark.readme_claim  # README "Trying it on a real SLURM cluster on this machine"
def test_tiny_run_on_the_local_cluster(tmp_path, slurm_cluster):
    proc = run_launch(
        [
            "--config",
            str(CONFIG),
            f"run_root={tmp_path}",
            "cluster=local-slurm",
            "resources.train.nodes=2",
            "train.procs_per_node=1",
            # one engine start fewer per stage, to keep the default run short: arrays of many tasks
            # and UQ-TTC eval are covered elsewhere (test_launcher.py, test_evaluate.py)
            "seeds.shards=1",
            "eval.uq_ttc=false",
        ],
        env=slurm_cluster,
    )
    assert proc.returncode == 0, proc.stderr
    run = RunDir(tmp_path / "tiny")
    wait_jobs(run, slurm_cluster, timeout=1200)
    status = run_launch(["status", str(run.root)], env=slurm_cluster)
    assert "run complete" in status.stdout, status.stdout
    check_run(run)
    train_job = next(s["job_id"] for s in json.loads(run.jobs_path.read_text())["submissions"] if s["stage"] == "train")
    nodes = subprocess.run(
        ["sacct", "-n", "-P", "-X", "-j", str(train_job), "--format=NNodes,State"],
        capture_output=True,
        text=True,
        env={**os.environ, **slurm_cluster},
    ).stdout.split()
    assert nodes == ["2|COMPLETED"]  # training ran across both simulated nodes
