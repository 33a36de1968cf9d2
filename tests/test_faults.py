"""Disk and filesystem faults while a task writes: a small tmpfs that fills up, or goes read-only.

The task fails with one sentence naming the path and what to do, leaves no partial file under a
final name, and the next attempt resumes from what was saved.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from svd_hpc.rundir.atomic import StorageError, atomic_write_text
from svd_hpc.rundir.layout import RunDir
from svd_hpc.runner.task import run_once
from svd_hpc.stages import verify
from tests.helpers import REPO, run_launch, write_config
from tests.test_generate_verify import ScriptedEngine, prepare_run, synthetic_candidates


@pytest.fixture
def small_fs(tmp_path):
    """A 1 MiB tmpfs at tmp_path/fs (root may mount; skipped where that is not permitted)."""
    mount_point = tmp_path / "fs"
    mount_point.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip() or 'mount failed'}); needs root")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def remount(mount_point: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(mount_point)], check=True)


def fill(mount_point: Path, leave_pages: int) -> Path:
    """Take all but `leave_pages` 4 KiB pages of the filesystem."""
    stat = os.statvfs(mount_point)
    filler = mount_point / "filler"
    filler.write_bytes(b"\0" * (stat.f_bavail * stat.f_frsize - leave_pages * 4096))
    return filler


def leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if ".tmp-" in p.name]


def test_atomic_write_names_the_path_and_keeps_the_old_content(small_fs):
    target = small_fs / "out" / "stats.json"
    atomic_write_text(target, "old\n")
    fill(small_fs, leave_pages=0)
    with pytest.raises(StorageError, match=rf"^cannot write {target}: the filesystem is full; free space"):
        atomic_write_text(target, "x" * 20000)
    assert target.read_text() == "old\n" and not leftovers(small_fs)
    (small_fs / "filler").unlink()
    remount(small_fs, "ro")
    with pytest.raises(StorageError, match=rf"^cannot write {target}: the filesystem is read-only; make it writable"):
        atomic_write_text(target, "new\n")
    with pytest.raises(StorageError, match=r"cannot write .*/fresh/stats.json: the filesystem is read-only"):
        atomic_write_text(small_fs / "fresh" / "stats.json", "new\n")  # its folder cannot be made either
    remount(small_fs, "rw")
    atomic_write_text(target, "new\n")
    assert target.read_text() == "new\n"


class FaultyEngine(ScriptedEngine):
    """A judge whose run directory fails after `after` replies: filled up, or remounted read-only."""

    def __init__(self, fault, after: int):
        super().__init__()
        self.fault, self.after = fault, after

    def stream(self, rendered, sampling, seeds=None):
        for reply in super().stream(rendered, sampling, seeds):
            if self.replies == self.after:
                self.fault()
            yield reply


@pytest.mark.parametrize("fault", ["full", "read-only"])
def test_verify_task_fails_clearly_mid_stage_and_resumes(small_fs, tmp_path, monkeypatch, fault):
    settings = {"verify": {"votes": 3, "chunk_size": 2, "keep_judge_text": True}}
    run = prepare_run(small_fs, "faulty", settings, [{"question": "Q?"}])
    reference = prepare_run(tmp_path, "reference", settings, [{"question": "Q?"}])
    for r in (run, reference):
        synthetic_candidates(r, 5)
    progress = verify.progress_path(run, 0)

    def strike():
        if fault == "full":
            fill(small_fs, leave_pages=0)
        else:
            remount(small_fs, "ro")

    monkeypatch.setattr(verify, "Engine", lambda model_cfg: FaultyEngine(strike, after=5))
    message = "the filesystem is full; free space" if fault == "full" else "the filesystem is read-only"
    with pytest.raises(StorageError, match=rf"^cannot write {progress}/chunk-\d+\.json: {message}"):
        run_once(run.root, "verify", 0)
    # nothing partial under a final name: every chunk is whole, no shard, no done marker
    saved = {k: v for p in progress.glob("chunk-*.json") for k, v in json.loads(p.read_text()).items()}
    assert 4 <= len(saved) <= 5 and not leftovers(run.root)
    assert not run.shard_path("verify", 0).exists() and not run.is_done("verify", 0)

    if fault == "full":
        (small_fs / "filler").unlink()
    else:
        remount(small_fs, "rw")
    monkeypatch.setattr(verify, "Engine", lambda model_cfg: ScriptedEngine())
    run_once(run.root, "verify", 0)
    marker = json.loads(run.done_marker("verify", 0).read_text())
    assert marker["judge_replies_resumed"] == len(saved)
    run_once(reference.root, "verify", 0)
    assert pq.read_table(run.shard_path("verify", 0)).equals(pq.read_table(reference.shard_path("verify", 0)))


def test_the_task_command_says_what_to_do_and_exits_74(small_fs):
    # one seed over two shards: shard 0 is empty, so its generate task writes without a model
    prepared = run_launch(
        ["prepare", "--config", str(REPO / "configs" / "tiny.yaml"), f"run_root={small_fs}", "seeds.limit=1"]
    )
    assert prepared.returncode == 0, prepared.stderr
    run = RunDir(small_fs / "tiny")
    fill(small_fs, leave_pages=0)
    command = [sys.executable, "-m", "svd_hpc.task", "generate", "--run-dir", str(run.root), "--index", "0"]
    failed = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    shard = run.shard_path("generate", 0)
    assert failed.returncode == 74
    last = failed.stderr.strip().splitlines()[-1]
    assert re.fullmatch(
        rf"error: stage generate task 0: cannot write {run.root}/generate/\S+: the filesystem is full; "
        r"free space there \(or move the run directory\) and resume the run\.",
        last,
    ), failed.stderr[-2000:]
    assert not shard.exists() and not run.is_done("generate", 0) and not leftovers(run.root)
    (small_fs / "filler").unlink()
    resumed = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert run.is_done("generate", 0) and pq.read_table(shard).num_rows == 0


@pytest.mark.parametrize(("stage", "code"), [("train", 0), ("merge", -signal.SIGABRT)])
def test_a_finished_distributed_task_is_not_failed_by_an_abort_at_exit(tmp_path, stage, code):
    """A body that finishes, then aborts the process at exit (as gloo, NCCL or Arrow threads may in
    their destructors): the distributed train task ends before the teardown and exits 0; merge, a
    plain task, shows the abort is real."""
    prepared = run_launch(["prepare", "--config", str(write_config(tmp_path, 1))])
    assert prepared.returncode == 0, prepared.stderr
    run = RunDir(tmp_path / "runs" / "toy")
    done = subprocess.run(
        [sys.executable, "-m", "svd_hpc.task", stage, "--run-dir", str(run.root), "--index", "0"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
        env={**os.environ, "SVD_HPC_TEST_BODIES": "tests.toy_stages:ABORT_AT_EXIT"},
    )  # fmt: skip
    assert done.returncode == code, done.stderr[-2000:]
    assert run.is_done(stage, 0)
