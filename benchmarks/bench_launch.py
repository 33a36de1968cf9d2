"""Launch benchmark: submit a 7-stage plan with 1,000-task arrays to the local SLURM cluster.

Run as:  scripts/local-slurm.sh start && eval "$(scripts/local-slurm.sh env)" && \
         .venv/bin/python benchmarks/bench_launch.py [--shards 1000] [--quick]

Measured in one run, all jobs submitted held (--hold) and cancelled afterwards:
  baseline  bare `sbatch` calls for the same 7 jobs and dependencies (one tiny script each)
  svd_hpc   slurm.plan_submissions + slurm.submit: render (batch_script), write scripts, sbatch
  submitit  submitit's own map_array for the three arrays (one pickle and folder per task;
            `pip install -e ".[bench]"`)
Prints wall time, sbatch calls, files and directories written, and the ratios to the baseline.
--quick (CI): the same 1,000-shard plan without submitit, and fails unless svd_hpc submits with
7 sbatch calls and 7 files within QUICK_WALL_S (the 0.5 s target less half its margin over the
idle figure).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import quick  # noqa: E402

from svd_hpc import config  # noqa: E402
from svd_hpc.rundir.layout import RunDir  # noqa: E402
from svd_hpc.runner import plan  # noqa: E402
from svd_hpc.slurm import commands as slurm  # noqa: E402

# README: 0.035 s idle (0.10-0.42 s under load) against the 0.5 s target
QUICK_WALL_S = 0.27


def count_tree(root: Path) -> tuple[int, int]:
    files = dirs = 0
    for _, dirnames, filenames in os.walk(root):
        files += len(filenames)
        dirs += len(dirnames)
    return files, dirs


def job_ids_from(outputs: list[str]) -> list[str]:
    return [o.strip().split(";")[0] for o in outputs if o.strip()]


def bare_sbatch(shards: int, evals: int, workdir: Path) -> tuple[float, int, list[str]]:
    script = workdir / "task.sh"
    script.write_text("#!/bin/bash\ntrue\n")
    calls = 0

    def sb(*args: str) -> str:
        nonlocal calls
        calls += 1
        return subprocess.run(
            ["sbatch", "--parsable", "--hold", *args, str(script)], capture_output=True, text=True, check=True
        ).stdout.strip()

    start = time.perf_counter()
    ids = [sb(f"--array=0-{evals - 1}")]
    gen = sb(f"--array=0-{shards - 1}")
    ver = sb(f"--array=0-{shards - 1}", f"--dependency=aftercorr:{gen}", "--kill-on-invalid-dep=yes")
    merge = sb(f"--dependency=afterok:{ver}", "--kill-on-invalid-dep=yes")
    train = sb(f"--dependency=afterok:{merge}", "--kill-on-invalid-dep=yes")
    ev = sb(f"--array=0-{evals - 1}", f"--dependency=afterok:{train}", "--kill-on-invalid-dep=yes")
    rep = sb(f"--dependency=afterok:{ev}:{ids[0]}:{merge}", "--kill-on-invalid-dep=yes")
    elapsed = time.perf_counter() - start
    return elapsed, calls, ids + [gen, ver, merge, train, ev, rep]


def ours(shards: int, evals: int, workdir: Path) -> tuple[float, int, list[str], tuple[int, int]]:
    benches = [{"name": f"b{i}", "path": "x"} for i in range(evals)]
    cfg = config.build(
        config.RunConfig,
        {"name": "bench", "cluster": "local-slurm", "seeds": {"shards": shards}, "eval": {"benchmarks": benches}},
    )
    cfg.profile = config.build(config.ClusterProfile, {"name": "local-slurm", "partition": "debug", "time": "00:10:00"})
    run = RunDir(workdir / "run")
    start = time.perf_counter()
    stages = plan.build_plan(cfg)
    todo = {s.name: list(range(s.array_size)) for s in stages}
    subs = slurm.plan_submissions(cfg, run, stages, todo, slurm.site_max_array_size())
    subs = slurm.submit(cfg, run, stages, subs, workdir, hold=True)
    elapsed = time.perf_counter() - start
    return elapsed, len(subs), [s.job_id for s in subs], count_tree(run.root)


def with_submitit(shards: int, evals: int, workdir: Path) -> tuple[float, list[str], tuple[int, int]]:
    import submitit

    folder = workdir / "submitit"
    executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
    executor.update_parameters(
        timeout_min=10,
        slurm_partition="debug",
        slurm_array_parallelism=1000,
        slurm_additional_parameters={"hold": True},
    )
    start = time.perf_counter()
    jobs = []
    for size in (evals, shards, shards):
        jobs += executor.map_array(abs, list(range(size)))
    for _ in range(4):
        jobs.append(executor.submit(abs, 1))
    elapsed = time.perf_counter() - start
    ids = sorted({j.job_id.split("_")[0] for j in jobs})
    return elapsed, ids, count_tree(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=1000)
    parser.add_argument("--evals", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="CI: no submitit, pass/fail against QUICK_WALL_S")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR"), ignore_cleanup_errors=True) as tmp:
        workdir = Path(tmp)
        try:
            base_t, base_calls, base_ids = bare_sbatch(args.shards, args.evals, workdir)
            slurm.cancel(base_ids)
            our_t, our_calls, our_ids, (our_files, our_dirs) = ours(args.shards, args.evals, workdir)
            slurm.cancel(our_ids)
            if not args.quick:
                sub_t, sub_ids, (sub_files, sub_dirs) = with_submitit(args.shards, args.evals, workdir)
                slurm.cancel(sub_ids)
        finally:  # never leave held jobs behind, whatever failed: they are all this benchmark's names
            names = ["task.sh", "submitit"] + [f"svd-bench-{stage}" for stage in plan.BODIES]
            for name in names:
                subprocess.run(["scancel", "--state=PENDING", f"--name={name}"], capture_output=True)
    print(f"plan: 7 stages, arrays of {args.shards} (generate, verify) and {args.evals} (evals)")
    print(f"{'method':<22}{'wall s':>9}{'sbatch':>8}{'files':>8}{'dirs':>7}{'vs bare':>9}")
    print(f"{'bare sbatch':<22}{base_t:>9.3f}{base_calls:>8}{1:>8}{0:>7}{1.0:>9.2f}")
    print(f"{'svd_hpc submit':<22}{our_t:>9.3f}{our_calls:>8}{our_files:>8}{our_dirs:>7}{our_t / base_t:>9.2f}")
    if not args.quick:
        print(f"{'submitit map_array':<22}{sub_t:>9.3f}{7:>8}{sub_files:>8}{sub_dirs:>7}{sub_t / base_t:>9.2f}")
    print(f"target: svd_hpc under 0.5 s -> {'met' if our_t < 0.5 else 'NOT met'} ({our_t:.3f} s)")
    if args.quick:
        quick.gate(
            [
                ("svd_hpc submit wall s", our_t, "<=", QUICK_WALL_S),
                ("sbatch calls", our_calls, "<=", 7),
                ("files written", our_files, "<=", 7),
            ]
        )


if __name__ == "__main__":
    main()
