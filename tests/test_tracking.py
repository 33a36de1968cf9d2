"""train.report_to: TensorBoard for real (its event files read back), W&B at the `wandb` module boundary."""

from __future__ import annotations

import importlib.util
import logging
import sys
import types

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from svd_hpc import config
from svd_hpc.publish import tracking
from svd_hpc.rundir.atomic import atomic_write_json
from svd_hpc.rundir.layout import RunDir
from svd_hpc.stages.report import run_task as report_task
from svd_hpc.train.step_log import StepLog

SUMMARY = {
    "demo": {"questions": 20, "base": {"pass_at_1": 0.125}, "SVD": {"pass_at_1": 0.175}, "delta": {"SVD": {}}},
}


def step(n: int, loss: float) -> dict:
    return {
        "step": n,
        "loss": loss,
        "lr": 1e-5 * n,
        "grad_norm": 0.5,
        "tokens": 100,
        "tokens_per_s": 250.0,
        "padding_efficiency": 0.9,
        "seconds": 0.4,
    }


def make_run(tmp_path, report_to) -> tuple[RunDir, config.RunConfig]:
    cfg = config.RunConfig(name="track me")
    cfg.train.report_to, cfg.train.steps = report_to, 3
    cfg.profile.account = "site-account"
    run = RunDir(tmp_path / "run")
    run.write_config(cfg, {"version": "0.1.0", "git_commit": None})
    return run, cfg


def scalars(run: RunDir, tag: str) -> list[tuple[int, float]]:
    acc = EventAccumulator(str(run.stage_dir("train") / "tensorboard"))
    acc.Reload()
    return [(e.step, round(e.value, 6)) for e in acc.Scalars(tag)]


def test_step_records_reach_tensorboard_and_a_resume_replaces_the_redone_steps(tmp_path):
    run, cfg = make_run(tmp_path, ["tensorboard"])
    out = run.stage_dir("train")
    out.mkdir(parents=True)
    log = StepLog(out, 0, 0, 3, tracking.Tracker(run, cfg))
    for n in (1, 2, 3):
        log.write(step(n, 2.0 - 0.5 * n))
    log.close()
    assert scalars(run, "train/loss") == [(1, 1.5), (2, 1.0), (3, 0.5)]
    for key in ("lr", "grad_norm", "tokens_per_s", "padding_efficiency"):
        assert len(scalars(run, f"train/{key}")) == 3

    # requeued after the checkpoint at step 1: steps 2 and 3 are trained again
    log = StepLog(out, 0, 1, 3, tracking.Tracker(run, cfg, start_step=1))
    for n in (2, 3):
        log.write(step(n, 0.25 * n))
    log.close()
    assert scalars(run, "train/loss") == [(1, 1.5), (2, 0.5), (3, 0.75)]

    atomic_write_json(run.stage_dir("eval") / "summary.json", SUMMARY)
    report_task(run, 0)  # the report job sends pass@1 per benchmark and model
    assert scalars(run, "eval/SVD/demo/pass@1") == [(3, 0.175)]
    assert scalars(run, "eval/base/demo/pass@1") == [(3, 0.125)]


class FakeWandb(types.ModuleType):
    """The `wandb` module at its boundary: init's arguments, and what the run is sent."""

    def __init__(self, tmp_path):
        super().__init__("wandb")
        self.inits, self.runs, self.tmp = [], [], tmp_path

    def init(self, **kwargs):
        self.inits.append(kwargs)
        run = types.SimpleNamespace(logged=[], summary={}, finished=False)
        run.dir = f"{kwargs['dir']}/wandb/offline-run-20260101_000000-{kwargs['id']}/files"
        run.log = lambda data, step=None: run.logged.append((step, data))
        run.finish = lambda: setattr(run, "finished", True)
        self.runs.append(run)
        return run


def test_wandb_runs_offline_under_the_run_name_and_prints_the_sync_command(tmp_path, monkeypatch, caplog):
    fake = FakeWandb(tmp_path)
    monkeypatch.setitem(sys.modules, "wandb", fake)
    run, cfg = make_run(tmp_path, ["wandb"])
    tracker = tracking.Tracker(run, cfg)
    tracker.log_step(step(1, 1.5))
    with caplog.at_level(logging.WARNING, logger="svd_hpc"):
        tracker.close()
    (init,) = fake.inits
    assert init["mode"] == "offline" and init["name"] == "track me" and init["project"] == "svd_hpc"
    assert init["resume"] == "allow" and init["dir"] == str(run.stage_dir("train"))
    assert init["tags"] == ["tiny-qwen3", "math", "N=8", "V=5", "first-valid"]
    assert init["config"]["verify"]["votes"] == 5 and "profile" not in init["config"]
    assert fake.runs[0].logged == [(1, {f"train/{k}": step(1, 1.5)[k] for k in tracking.STEP_KEYS})]
    assert fake.runs[0].finished
    sync = f"wandb sync {run.stage_dir('train')}/wandb/offline-run-20260101_000000-{init['id']}"
    assert sync in caplog.text

    atomic_write_json(run.stage_dir("eval") / "summary.json", SUMMARY)
    report_task(run, 0)
    assert fake.inits[1]["id"] == init["id"]  # the report job writes to the same W&B run
    assert fake.runs[1].summary == {"eval/base/demo/pass@1": 0.125, "eval/SVD/demo/pass@1": 0.175}


def test_online_mode_is_the_users_choice(tmp_path, monkeypatch):
    fake = FakeWandb(tmp_path)
    monkeypatch.setitem(sys.modules, "wandb", fake)
    run, cfg = make_run(tmp_path, ["wandb"])
    cfg.train.wandb_mode = "online"
    tracking.Tracker(run, cfg).close()
    assert fake.inits[0]["mode"] == "online"


def test_a_tracker_that_is_not_installed_stops_the_launch_saying_what_to_install(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    path = tmp_path / "c.yaml"
    path.write_text("train: {report_to: [tensorboard, wandb]}\n")
    with pytest.raises(
        config.ConfigError, match=r"train.report_to lists wandb, which is not installed: pip install wandb"
    ):
        config.load(path)
    path.write_text("train: {report_to: [mlflow]}\n")
    with pytest.raises(config.ConfigError, match="choose one of tensorboard, wandb"):
        config.load(path)


def test_no_report_to_writes_no_tracker_files(tmp_path):
    run, cfg = make_run(tmp_path, [])
    out = run.stage_dir("train")
    out.mkdir(parents=True)
    log = StepLog(out, 0, 0, 1, tracking.Tracker(run, cfg))
    log.write(step(1, 1.0))
    log.close()
    assert not {"tensorboard", "wandb"} & {p.name for p in out.iterdir()}
    assert (out / "metrics.jsonl").is_file()
