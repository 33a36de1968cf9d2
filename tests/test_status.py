"""Progress inside a task and `status`: the progress file per chunk, the local bars, the ETA, --watch."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest
import yaml
from rich.console import Console
from rich.progress import Progress

from svd_hpc import config
from svd_hpc.inputs import seeds
from svd_hpc.rundir import progress
from svd_hpc.rundir.layout import RunDir
from svd_hpc.rundir.planfile import Dependency, Stage
from svd_hpc.runner import eta, local, stage_status, status
from svd_hpc.sampling.engine import Completion
from svd_hpc.stages import generate
from tests.helpers import REPO, run_launch, write_config

# ----------------------------------------------------------------------------- the ETA arithmetic


def test_stage_eta_from_done_durations_and_running_progress():
    now = 1_000_000.0
    st = stage_status.StageStatus("generate", 10, done=[0, 1], running=[3, 4], durations=[100.0, 120.0])
    # task 3: 30 of 60 questions in the 60 s since it started, written 0 s ago: 60 s to go
    st.progress[3] = dict(done=30, total=60, resumed=0, tokens=0, started=now - 60, updated=now)
    st.running_s = {3: 75.0, 4: 40.0}  # task 4 has no chunk yet: the mean done task (110 s) less 40 s = 70 s
    est = eta.stage_estimate(st, now)
    # 6 waiting tasks of 110 s on 2 slots free after 60 and 70 s: 170, 180, 280, 290, 390, 400
    assert est.typical == 110.0 and est.left == 400.0
    assert eta.schedule([60.0, 70.0], 6, 110.0, 2) == 400.0
    assert eta.schedule([], 3, 10.0, 1) == 30.0 and eta.schedule([5.0], 0, 10.0, 4) == 5.0


def test_stage_eta_discounts_resumed_units_and_time_since_the_last_write():
    now = 5000.0
    # 40 of 100 done, 20 of them resumed: 20 units in 100 s -> 0.2/s, 60 to go = 300 s, written 50 s ago
    record = dict(done=40, total=100, resumed=20, tokens=900, started=now - 150, updated=now - 50)
    assert progress.rate(record) == pytest.approx(0.2)
    assert progress.remaining_s(record, now) == pytest.approx(250.0)
    assert progress.tokens_per_s(record) == pytest.approx(9.0)
    # before any done task, the running task's projected duration (its 150 s + 250 s) stands for the rest
    st = stage_status.StageStatus("verify", 3, running=[0], progress={0: record}, running_s={0: 150.0}, parallelism=4)
    est = eta.stage_estimate(st, now)
    assert est.typical == pytest.approx(400.0) and est.left == pytest.approx(250.0 + 400.0 + 400.0)


def test_nothing_to_go_by_gives_no_eta():
    assert eta.stage_estimate(stage_status.StageStatus("train", 1), 0.0).left is None
    failed = stage_status.StageStatus("merge", 1, failed=[object()])  # a failed task waits for resume
    assert eta.stage_estimate(failed, 0.0).left == 0.0


def test_projected_end_chains_the_stages():
    now = 10_000.0
    plan = [
        Stage("generate", 4, "array"),
        Stage("verify", 4, "array", [Dependency("generate", "aftercorr")]),
        Stage("merge", 1, "single", [Dependency("verify", "afterok")]),
        Stage("train", 1, "distributed", [Dependency("merge", "afterok")]),
    ]
    gen = stage_status.StageStatus("generate", 4, done=[0, 1], running=[2, 3], durations=[100.0, 100.0])
    gen.running_s = {2: 30.0, 3: 50.0}  # no chunk yet: 70 and 50 s to go
    ver = stage_status.StageStatus("verify", 4, done=[0], running=[1], durations=[40.0], running_s={1: 10.0})
    merge = stage_status.StageStatus("merge", 1)
    train = stage_status.StageStatus("train", 1)
    end, unmeasured = eta.projected_end(plan, [gen, ver, merge, train], now)
    # generate ends in 70 s; verify's own schedule: 30 s, then 2 tasks of 40 s on 1 slot = 110 s,
    # and at least one verify task (40 s) after generate's last: max(110, 70 + 40) = 110
    assert unmeasured == ["merge", "train"] and end == now + 110.0
    # later: all but train done; train has done 2 of 10 steps in 10 s: 8 steps at 0.2/s
    for st in (gen, ver, merge):
        st.done, st.running, st.durations = list(range(st.size)), [], [5.0] * st.size
    train.running, train.running_s = [0], {0: 10.0}
    train.progress[0] = dict(done=2, total=10, resumed=0, tokens=0, started=now - 10, updated=now)
    end, unmeasured = eta.projected_end(plan, [gen, ver, merge, train], now)
    assert unmeasured == [] and end == now + 40.0


# ----------------------------------------------------------------------------- the progress file


class CountingEngine:
    """Answers every question with two 5-token samples; before each answer it reads the task's
    progress file, so the test sees what the file held after every finished question."""

    thinking = False

    def __init__(self, file):
        self.file, self.seen = file, []

    def render(self, conversation, enable_thinking=None, reply_prefix=""):
        return [1, 2, 3]

    def stream(self, rendered, sampling, seeds=None):
        for i in range(len(rendered)):
            record = progress.read(self.file)
            self.seen.append(record and record["done"])
            yield i, [Completion(f"answer {i}", 5, "stop", 3), Completion(f"other {i}", 5, "stop", 3)]
        self.seen.append(progress.read(self.file)["done"])


def test_generate_writes_the_progress_file_per_chunk_and_logs_a_line(tmp_path, caplog):
    questions = tmp_path / "q.jsonl"
    questions.write_text("".join(json.dumps({"question": f"What is {i}?"}) + "\n" for i in range(5)))
    cfg_path = tmp_path / "c.yaml"
    settings = {"name": "p", "seeds": {"path": str(questions)}, "generate": {"n": 2, "chunk_size": 2}}
    cfg_path.write_text(yaml.safe_dump(settings))
    cfg = config.load(cfg_path)
    run = RunDir(tmp_path / "p")
    run.write_config(cfg, meta={})
    seeds.prepare(cfg, run)
    file = progress.path(run, "generate", 0)
    engine = CountingEngine(file)
    with caplog.at_level("INFO", logger="svd_hpc"):
        generate.run_shard(run, 0, engine=engine)
    # written at the start, then after each chunk of 2 questions and at the shard's end
    assert engine.seen == [0, 0, 2, 2, 4, 5]
    record = progress.read(file)
    assert (record["done"], record["total"], record["unit"], record["tokens"]) == (5, 5, "questions", 50)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("generate task 0:")]
    assert [line.split(" (")[0] for line in lines] == [
        "generate task 0: 2/5 questions",
        "generate task 0: 4/5 questions",
        "generate task 0: 5/5 questions",
    ]
    assert all("tok/s, eta " in line for line in lines)
    assert pq.read_table(run.shard_path("generate", 0)).num_rows == 10


# ----------------------------------------------------------------------------- the local bars


def test_local_bars_move_per_chunk(tmp_path, monkeypatch):
    monkeypatch.setenv("SVD_HPC_TEST_BODIES", "tests.progress_stages:BODIES")
    monkeypatch.setattr(local, "POLL_S", 0.1)
    cfg = config.load(write_config(tmp_path, 2, **{"train.enabled": False, "eval.benchmarks": []}))
    from svd_hpc.launch import prepare

    run = RunDir(tmp_path / "runs" / "toy")
    plan = [s for s in prepare(cfg, run) if s.name == "generate"]
    moves = []
    update = Progress.update

    def spy(self, task_id, **kwargs):
        if "completed" in kwargs:
            moves.append(kwargs["completed"])
        return update(self, task_id, **kwargs)

    monkeypatch.setattr(Progress, "update", spy)
    local.run_plan(cfg, run, plan, Console(file=io.StringIO()))
    fractions = [round(m, 2) for m in moves]
    # task 0 at 1/3, 2/3 (and maybe 3/3 before it exits), done; task 1 likewise from 1
    assert {0.33, 0.67, 1, 1.33, 1.67, 2} <= set(fractions), fractions
    assert fractions == sorted(fractions)


# ----------------------------------------------------------------------------- status and --watch


def test_watch_ends_when_the_local_run_ends(tmp_path, toy_bodies):
    path = write_config(tmp_path, 2, **{"train.enabled": False})
    launch = subprocess.Popen(
        [sys.executable, "-m", "svd_hpc.launch", "--config", str(path)],
        cwd=REPO,
        env={**__import__("os").environ, "TOY_SLEEP_GENERATE": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    run = RunDir(tmp_path / "runs" / "toy")
    try:
        deadline = time.time() + 60
        while not run.local_running_path.is_file():
            assert time.time() < deadline and launch.poll() is None
            time.sleep(0.1)
        out = io.StringIO()
        assert status.watch(run, Console(file=out, width=200, force_terminal=True), every=0.2) == 0
        assert launch.wait(timeout=60) == 0
    finally:
        launch.kill()
    text = out.getvalue()
    assert "generate task 0: starting" in text and "projected end" in text and "run complete" in text
    assert all(run.is_done(s, 0) for s in ("generate", "verify", "merge", "report"))


def test_watch_ends_at_once_on_a_finished_run_and_on_ctrl_c(tmp_path, toy_bodies, monkeypatch):
    path = write_config(tmp_path, 1, **{"train.enabled": False, "eval.benchmarks": []})
    assert run_launch(["--config", str(path)]).returncode == 0
    run = tmp_path / "runs" / "toy"
    started = time.time()
    proc = run_launch(["status", str(run), "--watch", "30"])
    assert proc.returncode == 0 and "run complete" in proc.stdout and time.time() - started < 30
    # a stopped local run (its scheduler gone) with a task left: nothing runs, the watch ends with 1
    (RunDir(run).done_marker("report", 0)).unlink()
    out = io.StringIO()
    assert status.watch(RunDir(run), Console(file=out, width=200), every=30) == 1
    text = out.getvalue()
    assert "the run has stopped: no task of it runs or waits; not done: report" in text and "resume with" in text
    assert "projected end" not in text  # nothing will end while nothing runs

    def interrupted(seconds):
        raise KeyboardInterrupt

    monkeypatch.setattr(status.time, "sleep", interrupted)
    monkeypatch.setattr(status, "ended", lambda statuses: False)
    assert status.watch(RunDir(run), Console(file=io.StringIO()), every=30) == 130


def test_train_step_log_keeps_the_progress_file(tmp_path):
    from svd_hpc.train.step_log import StepLog

    steps = StepLog(tmp_path, rank=0, start=1, total=4)  # resumed after step 1
    for step in (2, 3):
        record = dict(step=step, loss=1.0, lr=1e-5, grad_norm=0.5, tokens=100, tokens_per_s=50.0)
        steps.write({**record, "padding_efficiency": 0.9, "seconds": 2.0})
        saved = progress.read(progress.file_of(tmp_path, 0))
        assert (saved["done"], saved["total"], saved["resumed"], saved["unit"]) == (step, 4, 1, "steps")
    steps.close()
    assert saved["tokens"] == 200
