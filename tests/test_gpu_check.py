"""scripts/gpu-check.sh: on this GPU-less machine it says so and exits 0; a failing check exits 1."""

import subprocess
from pathlib import Path

from svd_hpc import gpu_check

REPO = Path(__file__).resolve().parent.parent


def test_without_a_gpu_it_says_so_and_exits_0():
    result = subprocess.run(
        ["bash", str(REPO / "scripts" / "gpu-check.sh")], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("no CUDA GPU here (torch ") and "nothing to check" in result.stdout


def test_a_failing_check_fails_the_script(monkeypatch, capsys):
    ran = []

    def run(cmd, **kwargs):
        ran.append(cmd[-1])
        return subprocess.CompletedProcess(cmd, 1 if cmd[-1] == "train" else 0)

    monkeypatch.setattr(gpu_check, "gpu_count", lambda: (1, "a stand-in GPU"))
    monkeypatch.setattr(gpu_check.subprocess, "run", run)
    assert gpu_check.main() == 1
    assert ran == ["train", "engine"]  # every check runs, each in its own process
    out = capsys.readouterr().out
    assert "[FAIL] train: exit code 1" in out and out.rstrip().endswith("failed: train")
