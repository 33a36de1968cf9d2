"""Run one task of one stage: what every SLURM job, sbatch template and local run calls.

Run as:  python -m svd_hpc.task STAGE --run-dir DIR [--index I]

The task index is --index, else SVD_ARRAY_OFFSET + SLURM_ARRAY_TASK_ID, else 0. This runner owns
completion: a task whose done marker exists returns at once; otherwise the stage body
(plan.stage_body) runs and returns its stats, and the runner writes them as the done marker. A
body never touches markers; one that returns None (a training rank other than 0) writes none.
A multi-process stage (train) gets the torch.distributed variables from SLURM's when srun
started it, as torchrun would have set them.

Tasks never requeue themselves: the batch script does (slurm/script.py), outside any container.
It asks a multi-process task to stop by creating contract.stop_request_path; the task then
checkpoints and exits contract.EXIT_STOPPED, and the script requeues the job. A task that fails
for a cause a retry can help with (a collective or the GPU failed, the engine hung) writes the cause
for the script (rundir/failures.py) and exits EXIT_TRANSIENT or EXIT_ENGINE_FAILED; the script
retries it on another node. A task whose allocation has GPUs that this install cannot use stops
before any model loads, with EXIT_WRONG_DEVICE and one sentence on why (device_guard.py): never a
night on the CPU.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from ..config import ConfigError
from ..inputs import staging
from ..rundir import failures, planfile
from ..rundir.atomic import StorageError
from ..rundir.contract import EXIT_STORAGE, EXIT_TRANSIENT, EXIT_USAGE, EXIT_WRONG_DEVICE
from ..rundir.env import drop_secrets
from ..rundir.layout import RunDir
from . import device_guard, smoke
from . import plan as plan_mod

log = logging.getLogger("svd_hpc")


def task_index(explicit: int | None) -> int:
    if explicit is not None:
        return explicit
    if "SLURM_ARRAY_TASK_ID" in os.environ:
        return int(os.environ.get("SVD_ARRAY_OFFSET", "0")) + int(os.environ["SLURM_ARRAY_TASK_ID"])
    return 0


def export_torch_env_from_slurm() -> None:
    """Set RANK/WORLD_SIZE/LOCAL_RANK/MASTER_* from SLURM when srun (not torchrun) started us."""
    if "RANK" in os.environ or "SLURM_PROCID" not in os.environ:
        return
    os.environ["RANK"] = os.environ["SLURM_PROCID"]
    os.environ["WORLD_SIZE"] = os.environ.get("SLURM_NTASKS", "1")
    os.environ["LOCAL_RANK"] = os.environ.get("SLURM_LOCALID", "0")
    os.environ["LOCAL_WORLD_SIZE"] = os.environ.get("SLURM_NTASKS_PER_NODE", "1").split("(")[0]
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29500")


def fit_threads_to_allocation() -> None:
    """Use as many CPU threads as SLURM gave this task (before torch or vLLM start any).

    Sites that pin tasks to their cores (task/affinity, cgroups) already narrow the affinity
    mask, and vLLM binds its threads to it. Where they do not (the local cluster), every task
    sees every core, and engines sharing a node would each spin threads on all of them.
    """
    cpus = os.environ.get("SLURM_CPUS_PER_TASK")
    if not cpus or len(os.sched_getaffinity(0)) <= int(cpus):
        return
    os.environ.setdefault("OMP_NUM_THREADS", cpus)
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")


def end_process(code: int) -> None:
    """Exit at once, without the interpreter's teardown: for a distributed task that has its done marker.

    The communication libraries' native threads outlive the process group (gloo's loops stay while
    a DeviceMesh keeps the group registered; NCCL's watchdog), as do Arrow's and the tokenizer's
    pools, and a static destructor of one of them can abort the process at exit ("terminate called
    without an active exception", SIGABRT). The work is recorded by then; an abort would fail the
    job and, under afterok, cancel the rest of the chain overnight.
    """
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run(stage: str, run_dir: str, index: int) -> str:
    rd = RunDir(run_dir)
    plan = planfile.plan_from_json(rd.load_json(rd.plan_path, default=[]))
    stages = {s.name: s for s in plan}
    if stage not in stages:
        raise ConfigError(f"stage '{stage}' is not in {rd.plan_path}; stages: {', '.join(stages) or 'none'}.")
    spec = stages[stage]
    if not 0 <= index < spec.array_size:
        raise ConfigError(f"task index {index} is outside stage '{stage}' (array of {spec.array_size}).")
    if done_stats(rd, stage, index) is not None:
        return spec.kind
    failures.expect_failures_at(failures.failure_path(rd.stage_dir(stage), index))
    fit_threads_to_allocation()
    if spec.kind == "distributed":
        export_torch_env_from_slurm()
    if smoke.is_smoke(rd):
        smoke.record(rd, spec, index)  # what this node gives the task, the device among it, before the body
    device_guard.refuse_unusable_gpus(uses_engine=plan_mod.uses_engine(stage))
    run_once(rd, stage, index)
    return spec.kind


def run_once(run: RunDir | str | Path, stage: str, index: int, body: Callable | None = None) -> dict | None:
    """Task `index` of `stage`, unless done: the body's stats become the done marker; returns them.

    A finished task returns its marker's contents. `body` replaces the stage's own (tests pass
    one holding a loaded engine). After the marker, the stage's scratch (chunks of a resumable
    task) is dropped: a task that dies before its marker resumes from it.
    """
    run = run if isinstance(run, RunDir) else RunDir(run)
    done = done_stats(run, stage, index)
    if done is not None:
        return done
    stats = (body or plan_mod.stage_body(stage))(run, index)
    if stats is None:
        return None
    run.mark_done(stage, index, **stats)
    plan_mod.drop_scratch(stage, run, index)
    return stats


def done_stats(run: RunDir, stage: str, index: int) -> dict | None:
    """The done marker's stats when the task has finished, else None."""
    marker = run.done_marker(stage, index)
    if not marker.exists():
        return None
    log.info(f"{stage=} {index=} already done")
    return run.load_json(marker, default={})


def main(argv: list[str] | None = None, exit_when_done: bool = False) -> int:
    """The task command; exit_when_done: a distributed task that finished ends its process at once (end_process)."""
    parser = argparse.ArgumentParser(prog="python -m svd_hpc.task", description=__doc__.splitlines()[0])
    parser.add_argument("stage")
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--index", type=int, default=None)
    args = parser.parse_args(argv)
    drop_secrets()  # a task needs none (the hub is offline for it); under plain sbatch it may get them
    # first, before any hub client is imported (they read these once): a task never reaches for
    # the network; it reads the HF cache the launcher staged the run's hub inputs into
    staging.go_offline(args.run_dir)
    rank = os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0"))
    logging.basicConfig(
        level=logging.INFO if rank == "0" else logging.WARNING,
        format=f"%(asctime)s %(levelname)s [{args.stage} rank{rank}] %(message)s",
        stream=sys.stderr,
    )
    index = task_index(args.index)
    try:
        kind = run(args.stage, args.run_dir, index)
    except device_guard.UnusableGpus as err:
        print(f"error: stage {args.stage} task {index}: {err}", file=sys.stderr)
        failures.record(failures.WRONG_DEVICE, str(err))
        return EXIT_WRONG_DEVICE
    except (ConfigError, ValueError) as err:
        print(f"error: stage {args.stage} task {index}: {err}", file=sys.stderr)
        return EXIT_USAGE
    except StorageError as err:
        print(f"error: stage {args.stage} task {index}: {err}", file=sys.stderr)
        return EXIT_STORAGE
    except Exception as err:
        cause = failures.transient_cause(err)
        if cause is None:
            raise  # an error of ours: its traceback, exit 1, and no retry
        log.exception(f"stage {args.stage} task {index}: {cause} failure; the batch script retries it elsewhere")
        failures.record(cause, f"{type(err).__name__}: {err}")
        if exit_when_done and os.environ.get("WORLD_SIZE", "1") != "1":
            end_process(EXIT_TRANSIENT)  # a broken process group can hang or abort the interpreter's teardown
        return EXIT_TRANSIENT
    if exit_when_done and kind == "distributed":
        end_process(0)
    return 0


if __name__ == "__main__":
    sys.exit(main(exit_when_done=True))
