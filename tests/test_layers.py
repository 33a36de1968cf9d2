"""A compute task loads what its stage needs: the report and a round's seeds task never load the launcher,
the submission side of the runner or the forecast (pilot, projection)."""

import json
import subprocess
import sys

import pytest

# what the launcher side of a run loads; a task that loads it pays its import time on every node
LAUNCH_SIDE = ("svd_hpc.launch", "svd_hpc.forecast", "svd_hpc.runner.local", "svd_hpc.runner.status")


def loaded_by(code: str) -> list[str]:
    """The svd_hpc modules a fresh interpreter holds after running `code`."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(m for m in sys.modules if m.startswith('svd_hpc'))))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.splitlines()[-1])


@pytest.mark.parametrize("body", ["svd_hpc.stages.report", "svd_hpc.stages.rounds"])
def test_a_stage_body_loads_neither_the_launcher_nor_the_forecast(body):
    modules = loaded_by(f"import {body}")
    assert not [m for m in modules if m.startswith(LAUNCH_SIDE) or m.startswith("svd_hpc.runner")]


@pytest.mark.parametrize("stage", ["report", "seeds"])
def test_the_task_runner_loads_neither_the_launcher_nor_the_forecast(stage):
    """What `python -m svd_hpc.task STAGE` imports before the body runs: the runner, then the body."""
    modules = loaded_by(f"from svd_hpc.runner import plan, task\nplan.stage_body({stage!r})")
    assert "svd_hpc.runner.task" in modules
    assert not [m for m in modules if m.startswith(LAUNCH_SIDE)]


def test_the_seeds_task_loads_no_slurm_client():
    modules = loaded_by("from svd_hpc.runner import plan, task\nplan.stage_body('seeds')")
    assert not [m for m in modules if m.startswith("svd_hpc.slurm")]
