"""sbatch/pipeline.sh and the per-stage templates run the same chain on the local cluster."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from svd_hpc.rundir import RunDir
from tests import toy_stages
from tests.test_launcher import REPO, merged_rows, squeue_ids, write_config


@pytest.mark.slurm
def test_pipeline_sh_runs_every_stage(tmp_path, slurm_cluster):
    path = write_config(tmp_path, 3, cluster="local-slurm", name="plain")
    env = {
        **os.environ,
        **slurm_cluster,
        "SVD_NO_GPU": "1",
        # the templates ask for GPU-node sizes; the local nodes have 8 CPUs and a share of this machine's memory
        "SVD_SBATCH_SED": "s/--cpus-per-task=.*/--cpus-per-task=1/;s/--mem=.*/--mem=1G/",
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    proc = subprocess.run(
        ["bash", "sbatch/pipeline.sh", str(path)], cwd=REPO, capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    assert "submitted: generate" in proc.stdout
    run = RunDir(tmp_path / "runs" / "plain")
    ids = {word.strip(",") for word in proc.stdout.split() if word.strip(",").isdigit()}
    import time

    deadline = time.monotonic() + 300
    while ids & squeue_ids(slurm_cluster):
        assert time.monotonic() < deadline, "pipeline jobs still queued"
        time.sleep(1)
    assert run.is_done("report", 0), (run.root / "logs").as_posix()
    assert len(merged_rows(run)) == 6
    ranks = [json.loads(p.read_text()) for p in (run.stage_dir("train") / "ranks").iterdir()]
    assert sorted(r["node"] for r in ranks) == ["n1", "n2"]  # the template's two nodes
    assert toy_stages.trace(run, "verify", 0)["start"] >= toy_stages.trace(run, "generate", 0)["end"]
