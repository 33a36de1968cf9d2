"""`status --json` and `report --json` against their schemas (docs/schema/), and the terminal a newcomer reads."""

from __future__ import annotations

import io
import json
import os
import socket
import time

import jsonschema
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from rich.console import Console
from rich.progress import Progress

from svd_hpc import config
from svd_hpc.records import EVAL
from svd_hpc.rundir.atomic import atomic_write_json
from svd_hpc.rundir.layout import RunDir
from svd_hpc.runner import local, status, status_json
from tests.helpers import REPO, run_launch, wait_jobs, write_config


def validate(kind: str, data: dict) -> None:
    schema = json.loads((REPO / "docs" / "schema" / f"{kind}.v1.json").read_text())
    jsonschema.Draft202012Validator(schema).validate(data)
    assert data["schema"] == f"svd_hpc.{kind}/1"


def json_of(proc) -> dict:
    """The whole of stdout is one JSON object (logs go to stderr)."""
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def write_eval_and_funnel(run: RunDir) -> None:
    """What the real eval and merge stages leave: one benchmark's records, merge/stats.json."""
    for model, seed, correct in (("base", 0, [1, 0]), ("base", 1, [1, 1]), ("trained", 0, [1, 1])):
        rows = [
            dict(benchmark="b1", model=model, mode="direct", seed=seed, question_id=f"q{i}", question="q",
                 reference="1", response="r", extracted="1", correct=bool(c), grade_reason="correct",
                 completion_tokens=5, samples=1, chosen_candidate=0)
            for i, c in enumerate(correct)
        ]  # fmt: skip
        path = run.root / "eval" / model / "b1" / f"seed-{seed}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows, schema=EVAL), path)
    counts = {"seeds": 2, "candidates": 8, "valid": 4, "kept": 3}
    atomic_write_json(
        run.stage_dir("merge") / "stats.json",
        {"rules": {"k": 1}, "overall": counts, "per_domain": {"math": counts}, "skipped_shards": [], "files": {}},
    )


def test_local_run_status_and_report_json_follow_their_schemas(tmp_path, toy_bodies):
    path = write_config(tmp_path, 2, **{"train.enabled": False})
    launched = run_launch(["--config", str(path)])
    assert launched.returncode == 0, launched.stderr
    # the seed stats as a table, not a Python dict
    assert "duplicates dropped" in launched.stdout and "{'seeds'" not in launched.stdout
    run = RunDir(tmp_path / "runs" / "toy")

    done = json_of(run_launch(["status", str(run.root), "--json"]))
    validate("status", done)
    assert (done["state"], done["scheduler"], done["projected_end"]) == ("complete", "local", None)
    generate = next(s for s in done["stages"] if s["name"] == "generate")
    assert generate["counts"]["done"] == 2 and generate["elapsed_s"] is not None and generate["job_ids"] == []

    # a retry and a task left undone: the stopped run, its idle task and the retry appear
    retries = run.stage_dir("verify") / "retries" / "00001.jsonl"
    retries.parent.mkdir(parents=True)
    retries.write_text(
        json.dumps({"event": "start", "life": 0, "node": "n1"}) + "\n"
        + json.dumps({"event": "retry", "life": 0, "cause": "engine", "node": "n1", "exit": 75, "excluded": "n1"})
        + "\n"
    )  # fmt: skip
    run.done_marker("report", 0).unlink()
    stopped = json_of(run_launch(["status", str(run.root), "--json"]))
    validate("status", stopped)
    stages = {s["name"]: s for s in stopped["stages"]}
    assert stopped["state"] == "stopped" and stages["report"]["task_states"] == [{"index": 0, "state": "idle"}]
    assert stages["verify"]["retries"] == [
        {"index": 1, "life": 0, "cause": "engine", "node": "n1", "exit": 75, "excluded": "n1"}
    ]

    write_eval_and_funnel(run)
    report = json_of(run_launch(["report", str(run.root), "--json"]))
    validate("report", report)
    assert report["scores"]["b1"]["base"]["pass_at_1"] == pytest.approx(0.75)
    assert report["scores"]["b1"]["SVD"]["pass_at_1"] == pytest.approx(1.0)
    assert report["funnel"]["overall"]["kept"] == 3 and not report["complete"]
    assert {s["name"]: s["retries"] for s in report["stages"]}["verify"][0]["cause"] == "engine"

    assert run_launch(["status", str(run.root), "--json", "--watch"]).returncode == 2


def test_local_status_before_anything_is_measured(tmp_path, toy_bodies):
    """A local run whose first task has just started: elapsed filled, no job column, no '(in 0s)'."""
    path = write_config(tmp_path, 2, **{"train.enabled": False})
    assert run_launch(["--config", str(path)]).returncode == 0
    run = RunDir(tmp_path / "runs" / "toy")
    for marker in run.root.glob("*/done/*"):
        marker.unlink()
    # the local scheduler's record of a live task (this process stands in for both)
    here = dict(pid=os.getpid(), scheduler_pid=os.getpid(), host=socket.gethostname())
    atomic_write_json(run.local_running_path, {"stage": "generate", "index": 0, "started": time.time() - 5, **here})
    statuses = status.collect(run)
    out = io.StringIO()
    for part in status.renderables(run, statuses):
        Console(file=out, width=200).print(part)
    text = out.getvalue()
    header = next(line for line in text.splitlines() if "stage" in line)
    generate_row = next(line for line in text.splitlines() if "generate" in line)
    assert "jobs" not in header and "elapsed" in header and "5s" in generate_row
    assert "(in 0s)" not in text
    assert "projected end: not known yet (no task of generate has reported progress or ended)" in text

    data = status_json.status_json(run, statuses)
    validate("status", data)
    assert data["projected_end"]["known"] is False and data["projected_end"]["in_s"] is None
    generate = data["stages"][0]
    assert generate["state"] == "running" and generate["running"][0]["index"] == 0
    assert generate["elapsed_s"] == pytest.approx(5, abs=2)


def test_projected_end_line_says_nothing_is_measured_instead_of_in_0s():
    now = time.time()
    assert "not known yet" in status.end_line(now, ["verify"], now)
    assert "after" in status.end_line(now + 600, ["verify"], now)  # something measured: a lower bound
    assert status.end_line(now + 600, [], now).startswith("projected end: ") and "in 10m00s" in status.end_line(
        now + 600, [], now
    )


def test_seed_stats_print_as_a_table():
    from svd_hpc.launch import seeds_table

    stats = dict(seeds=8, duplicates_dropped=1, questions_stripped=0, per_domain={"science": 8}, rows_read=40,
                 format="jsonl", shards=2, shard_sizes=[4, 4], path="data/s.jsonl")  # fmt: skip
    out = io.StringIO()
    Console(file=out, width=120).print(seeds_table(stats))
    text = out.getvalue()
    for shown in ("data/s.jsonl (jsonl)", "rows read", "40", "duplicates dropped", "science 8", "2 of 4 questions"):
        assert shown in text, text
    assert "whitespace" not in text and "{" not in text


def test_local_bars_start_their_clock_with_their_stage(tmp_path, toy_bodies, monkeypatch):
    """A waiting stage's bar shows no time: the clock used to run from launch for every bar."""
    cfg = config.load(write_config(tmp_path, 1, **{"train.enabled": False, "eval.benchmarks": []}))
    from svd_hpc.launch import prepare

    run = RunDir(tmp_path / "runs" / "toy")
    plan = prepare(cfg, run)
    started = {}
    start_task = Progress.start_task

    def spy(self, task_id):
        stage = next(t for t in self.tasks if t.id == task_id).fields["stage"]
        started[stage] = {t.fields["stage"]: t.started for t in self.tasks}
        return start_task(self, task_id)

    monkeypatch.setattr(Progress, "start_task", spy)
    local.run_plan(cfg, run, plan, Console(file=io.StringIO()))
    # when merge starts, generate and verify have run and report has not yet started its clock
    assert started["merge"]["report"] is False and started["merge"]["generate"] is True


@pytest.mark.slurm
def test_slurm_run_status_and_report_json_follow_their_schemas(tmp_path, slurm_cluster):
    path = write_config(tmp_path, 2, cluster="local-slurm", **{"train.enabled": False})
    env = {**slurm_cluster, "SVD_HPC_TEST_BODIES": "tests.toy_stages:BODIES", "TOY_FAIL": "generate:1"}
    assert run_launch(["--config", str(path)], env=env).returncode == 0
    run = RunDir(tmp_path / "runs" / "toy")
    live = json_of(run_launch(["status", str(run.root), "--json"], env=slurm_cluster))
    validate("status", live)
    assert live["scheduler"] == "slurm" and all(s["job_ids"] for s in live["stages"])
    wait_jobs(run, env)

    ended = json_of(run_launch(["status", str(run.root), "--json"], env=slurm_cluster))
    validate("status", ended)
    generate = ended["stages"][0]
    assert ended["state"] == "stopped" and generate["state"] == "failed"
    assert [(f["index"], f["state"]) for f in generate["failed"]] == [(1, "FAILED")]
    assert generate["elapsed_s"] is not None and generate["task_states"][0]["state"] == "done"

    report = json_of(run_launch(["report", str(run.root), "--json"], env=slurm_cluster))
    validate("report", report)
    assert report["stages"][0]["done"] == 1 and not report["complete"]


def test_report_images_print_as_their_paths_in_the_terminal(tmp_path):
    from svd_hpc.launch import terminal_markdown

    text = "# Report\n\n![merge funnel](merge/funnel.png)\n\n![pass@1 per benchmark](report.png)\n"
    out = io.StringIO()
    from rich.markdown import Markdown

    Console(file=out, width=200).print(Markdown(terminal_markdown(text, tmp_path)))
    shown = out.getvalue()
    assert "🌆" not in shown
    assert f"merge funnel: {tmp_path / 'merge/funnel.png'}" in shown and str(tmp_path / "report.png") in shown
