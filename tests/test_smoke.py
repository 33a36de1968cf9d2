"""The smoke run: the user's cluster settings with a tiny model, checked on the compute nodes."""

from __future__ import annotations

import json

import pytest
import yaml

from svd_hpc import config as config_mod
from svd_hpc.rundir.layout import RunDir
from svd_hpc.runner import smoke
from svd_hpc.runner.plan import build_plan, resolve_resources
from tests.helpers import REPO, run_launch

TINY = REPO / "configs" / "tiny.yaml"


def test_smoke_keeps_the_cluster_shape_and_shrinks_the_work():
    cfg = config_mod.load(REPO / "configs" / "qwen3-8b-math.yaml", [])
    small = smoke.shrink(cfg)

    assert small.name == "qwen3-8b-math-smoke" and small.cluster == cfg.cluster
    assert small.model.path == smoke.SMOKE_MODEL
    assert small.model.tensor_parallel_size == 2  # vLLM tasks still ask for, and use, two GPUs
    assert small.seeds.path == cfg.seeds.path and small.seeds.limit == smoke.SMOKE_QUESTIONS
    assert [b.name for b in small.eval.benchmarks] == [b.name for b in cfg.eval.benchmarks]
    big = {s.name: s for s in build_plan(cfg)}
    for stage in build_plan(small):
        ours, theirs = stage.resources, big[stage.name].resources
        for key in ("partition", "account", "qos", "gpus_per_node", "nodes", "ntasks_per_node", "cpus_per_task", "mem"):
            assert ours[key] == theirs[key], (stage.name, key)
        assert ours["time"] == smoke.SMOKE_TIME
        assert [d.stage for d in stage.depends_on] == [d.stage for d in big[stage.name].depends_on]
    # one sequence per rank per step: 4 nodes × 4 GPUs
    world = resolve_resources(cfg, "train")["nodes"] * resolve_resources(cfg, "train")["ntasks_per_node"]
    assert small.train.global_batch == world == 16
    assert small.train.steps == 2 and small.train.model is None


def test_gpu_check_compares_what_was_asked_with_what_the_task_sees(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    assert smoke.gpu_check({"gpus_per_node": 2}, distributed=False).ok
    assert not smoke.gpu_check({"gpus_per_node": 4}, distributed=False).ok
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")  # a train rank bound to its own GPU
    assert smoke.gpu_check({"gpus_per_node": 4, "ntasks_per_node": 4}, distributed=True).ok
    assert not smoke.gpu_check({"gpus_per_node": 4, "ntasks_per_node": 4}, distributed=False).ok


def _smoke(tmp_path, slurm_cluster, *overrides):
    proc = run_launch(
        [
            "smoke",
            "--config",
            str(TINY),
            f"run_root={tmp_path}",
            "cluster=local-slurm",
            "resources.train.nodes=2",
            "train.procs_per_node=1",
            *overrides,
        ],  # a later cluster= wins
        env={**slurm_cluster, "SVD_WAIT_TIMEOUT": "900"},
    )
    run = RunDir(tmp_path / "tiny-smoke")
    return proc, run


@pytest.mark.slurm
@pytest.mark.slow  # ~2.5 min: every stage on the cluster, as test_tiny_run_on_the_local_cluster already does
@pytest.mark.readme_claim  # the smoke run "tested on the local cluster with two simulated nodes, passing"
def test_smoke_run_on_the_local_cluster_passes_every_check(tmp_path, slurm_cluster):
    proc, run = _smoke(tmp_path, slurm_cluster)

    summary = json.loads((run.root / "smoke" / "summary.json").read_text())
    failed = [c for c in summary["checks"] if not c["ok"]]
    assert proc.returncode == 0 and summary["passed"], (failed, proc.stdout[-3000:], proc.stderr[-3000:])
    names = {(c["task"], c["name"]) for c in summary["checks"]}
    assert ("train", "all-reduce across nodes") in names
    allreduce = next(c for c in summary["checks"] if c["name"] == "all-reduce across nodes")
    assert "nodes n1,n2" in allreduce["detail"]
    assert ("eval_base[0]", "sandbox isolation") in names
    assert ("report", "task finished") in names
    assert "smoke run passed" in proc.stdout


@pytest.mark.slurm
def test_smoke_run_names_a_failing_check_with_its_log_line(tmp_path, slurm_cluster):
    # a site profile whose interpreter does not exist on the compute nodes
    missing = tmp_path / "nowhere" / "python"
    profile = yaml.safe_load((REPO / "configs" / "clusters" / "local-slurm.yaml").read_text())
    profile.update(name="broken-python", python=str(missing))
    (tmp_path / "broken.yaml").write_text(yaml.safe_dump(profile))
    proc, run = _smoke(tmp_path, slurm_cluster, "seeds.shards=1", f"cluster={tmp_path / 'broken.yaml'}")

    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((run.root / "smoke" / "summary.json").read_text())
    generate = next(c for c in summary["checks"] if c["task"] == "generate[0]" and c["name"] == "task finished")
    assert not generate["ok"] and str(missing) in generate["detail"]
    assert "FAIL" in proc.stdout and "smoke run failed" in proc.stdout


def test_the_why_of_a_failed_task_is_its_error_line_not_sruns_bookkeeping():
    tail = (
        "slurmstepd-n1: error: execve(): /opt/env/bin/python: No such file or directory\n"
        "srun: error: n1: task 0: Exited with exit code 2\n"
        "srun: launch/slurm: _step_signal: Terminating StepId=489.0\n"
    )
    assert smoke.why_line(tail) == "slurmstepd-n1: error: execve(): /opt/env/bin/python: No such file or directory"
    assert (
        smoke.why_line("Traceback (most recent call last):\n  File 'x'\nValueError: shard 3 is empty\n")
        == "ValueError: shard 3 is empty"
    )
