"""Every shipped config validates and dry-runs; the rendered sbatch scripts say what they must."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import yaml

from svd_hpc import config, launch
from svd_hpc.rundir.layout import RunDir

REPO = Path(__file__).resolve().parent.parent
CONFIGS = sorted(p for p in (REPO / "configs").glob("*.yaml"))
GOLDEN = REPO / "tests" / "golden" / "qwen3-8b-math-verify.sh"


def header(script: str) -> dict[str, str]:
    return dict(re.findall(r"^#SBATCH --([\w-]+)(?:=(.*))?$", script, flags=re.M))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_config_dry_runs(path, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    cfg = config.load(path, [f"run_root={tmp_path}"])
    assert launch.main(["--config", str(path), f"run_root={tmp_path}", "--dry-run"]) == 0
    run = RunDir(tmp_path / cfg.name)
    assert run.config_path.is_file() and run.plan_path.is_file() and not run.jobs_path.exists()
    plan = [s["name"] for s in json.loads(run.plan_path.read_text())]
    assert plan[-1] == "report"
    # dependencies come first; the chain to the trained model is submitted before base-model eval
    # (with rounds: in round 1, whose stages are named round-1/STAGE)
    first = [name.removeprefix("round-1/") for name in plan if "/" not in name or name.startswith("round-1/")]
    assert first.index("train") < first.index("eval_base")
    if cfg.rounds > 1:
        assert f"round-{cfg.rounds}/eval_trained" in plan
    if cfg.is_local:
        return
    scripts = {p.stem: p.read_text() for p in (run.root / "sbatch").glob("*.sh")}
    assert set(scripts) == {"eval_base", "generate", "verify", "merge", "train", "eval_trained", "report"}
    for stage, text in scripts.items():
        h = header(text)
        assert f"svd_hpc.task {stage} --run-dir {run.root}" in text
        assert h["account"] == cfg.profile.account and "module load cuda/12.4" in text
        if stage not in ("eval_base", "generate"):
            assert "kill-on-invalid-dep" in h, stage
    tp = cfg.model.tensor_parallel_size
    assert header(scripts["generate"])["gpus-per-node"] == str(tp)
    assert header(scripts["generate"])["array"] == f"0-{cfg.seeds.shards - 1}%32"
    assert header(scripts["verify"])["dependency"] == "aftercorr:GENERATE_JOB"
    assert "requeue" in header(scripts["generate"]) and "requeue" in header(scripts["train"])
    train = header(scripts["train"])
    assert train["nodes"] == str(cfg.resources["train"].nodes) and train["ntasks-per-node"] == "4"
    assert train["gpus-per-node"] == "4" and "MASTER_ADDR" in scripts["train"]
    assert header(scripts["merge"])["partition"] == "cpu" and "gpus-per-node" not in header(scripts["merge"])


def test_rendered_verify_script_matches_golden(tmp_path, monkeypatch):
    """The exact text submitted for one stage, pinned (paths and interpreter normalised)."""
    monkeypatch.chdir(REPO)
    path = REPO / "configs" / "qwen3-8b-math.yaml"
    assert launch.main(["--config", str(path), f"run_root={tmp_path}", "--dry-run"]) == 0
    text = (tmp_path / "qwen3-8b-math" / "sbatch" / "verify.sh").read_text()
    text = text.replace(str(tmp_path), "RUNS").replace(str(REPO), "REPO")
    if os.environ.get("SVD_UPDATE_GOLDEN"):  # after an intended change: rewrite, review the diff, commit
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text()


def test_unknown_key_lists_valid_keys(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"verify": {"vots": 3}}))
    with pytest.raises(
        config.ConfigError,
        match=re.escape(
            "unknown key 'verify.vots'; valid keys under 'verify' (with their defaults): "
            "stages=[cycle, factuality, correctness], votes=5, temperature=0.6,"
        ),
    ) as err:
        config.load(path)
    assert "aggregation=unanimous, k=null," in str(err.value) and str(err.value).endswith("chunk_size=256.")


@pytest.mark.parametrize(
    "override, message",
    [
        ("generate.n=many", "generate.n must be int"),
        ("verify.aggregation=most", "choose one of unanimous, majority, k_of_v"),
        ("verify.aggregation=k_of_v", "verify.k must be between 1 and verify.votes"),
        ("merge.aggregation=k_of_v", "merge.k must be between 1 and verify.votes (5) for k_of_v"),
        ("seeds.shards=0", "seeds.shards must be at least 1"),
        ("cluster=nowhere", "cluster profile 'nowhere' not found"),
        ("resources.merge.nodes=2", "only train runs on several nodes"),
        ("resources.generate.time=soon", "is not a SLURM time"),
        ("resources.gen.time=01:00:00", "unknown stage 'resources.gen'"),
        ("train.global_batch=3", "not divisible by world size"),
    ],
)
def test_bad_values_are_one_clear_sentence(tmp_path, override, message):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"train": {"global_batch": 4, "procs_per_node": 2}}))
    with pytest.raises(config.ConfigError, match=re.escape(message)):
        config.load(path, [override])


def test_tensor_parallel_needs_enough_gpus():
    with pytest.raises(config.ConfigError, match="tensor_parallel_size=8 needs that many GPUs"):
        config.load(
            REPO / "configs" / "qwen3-8b-math.yaml", ["model.tensor_parallel_size=8", "resources.generate.gpus=4"]
        )


def test_overrides_and_round_trip(tmp_path):
    cfg = config.load(REPO / "configs" / "qwen3-0.6b-code.yaml", ["generate.n=4", "verify.stages=[cycle, correctness]"])
    assert cfg.generate.n == 4 and cfg.verify.stages == ["cycle", "correctness"]
    run = RunDir(tmp_path)
    run.write_config(cfg, {"version": "x"})
    assert config.to_dict(run.load_config()) == config.to_dict(cfg)
