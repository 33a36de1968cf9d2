"""Small stage bodies that exercise the launcher's chain without a model.

They follow the stage contract (read inputs, write output atomically, return the stats the task
runner writes as the done marker) and leave a trace the tests check: start/end times per task,
the nodes and ranks of `train`. Tests put them in place of the real bodies through the
environment: SVD_HPC_TEST_BODIES=tests.toy_stages:BODIES (plan.TEST_BODIES).
Knobs come from the environment, which sbatch passes on to the jobs:
  TOY_SLEEP_<STAGE>=seconds   per task (e.g. TOY_SLEEP_GENERATE=2)
  TOY_SELECT_GAP=seconds      with train.select: train saves its selection checkpoints this far apart
  TOY_SELECT_SCORES=2:0.5,... with train.select: select_eval's pass@1 of each step (else 0)
  TOY_FAIL=<stage>:<index>    that task fails once (a file in the run dir remembers it failed)
  TOY_HANG=<stage>:<index>    that task's engine hangs once: the real stall watchdog ends the task
  TOY_RAISE=<stage>:<error>   every task of that stage raises `error` (see RAISES)
"""

from __future__ import annotations

import atexit
import json
import os
import socket
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from svd_hpc.eval.selection import select_tasks
from svd_hpc.rundir.atomic import atomic_path, atomic_write_json
from svd_hpc.rundir.layout import RunDir, selection_checkpoint
from svd_hpc.sampling.watchdog import Watchdog
from svd_hpc.stages import select


def _torch():
    import torch.distributed  # only the tasks that raise its errors pay for the import

    return torch


# What TOY_RAISE raises: a collective that failed (retried elsewhere), errors a retry would repeat
RAISES = {
    "collective": lambda: _torch().distributed.DistNetworkError("connection to rank 1 lost (toy)"),
    "cuda-oom": lambda: _torch().OutOfMemoryError("CUDA out of memory (toy)"),
    "python": lambda: KeyError("toy"),
}


def _hang_engine(run: RunDir, stage: str, index: int) -> None:
    """A step of an engine that never returns, watched as the real engine's steps are."""
    flag = run.root / f"toy-hung-{stage}-{index}"
    if flag.exists():
        return
    flag.write_text(os.environ.get("SLURMD_NODENAME", ""))

    class Engine:
        def background_died(self) -> bool:
            return False

    engine = Engine()
    watchdog = Watchdog(engine.background_died, timeout_s=1.0)
    with watchdog.step():
        time.sleep(120)  # the watchdog ends the process long before this


def _begin(run: RunDir, stage: str, index: int) -> float:
    start = time.time()
    time.sleep(float(os.environ.get(f"TOY_SLEEP_{stage.upper()}", "0")))
    if os.environ.get("TOY_HANG") == f"{stage}:{index}":
        _hang_engine(run, stage, index)
    raising, _, error = os.environ.get("TOY_RAISE", "").partition(":")
    if raising == stage:
        raise RAISES[error]()
    failing = os.environ.get("TOY_FAIL", "")
    if failing == f"{stage}:{index}":
        flag = run.root / f"toy-failed-{stage}-{index}"
        if not flag.exists():
            flag.touch()
            raise RuntimeError(f"toy failure of {stage} task {index}")
    return start


def _finish(run: RunDir, stage: str, index: int, start: float) -> dict:
    trace = {
        "start": start,
        "end": time.time(),
        "host": socket.gethostname(),
        "node": os.environ.get("SLURMD_NODENAME"),
        "omp_threads": os.environ.get("OMP_NUM_THREADS"),
    }
    atomic_write_json(run.root / "trace" / f"{stage}-{index:05d}.json", trace)
    return {}


def _write_table(path: Path, table: pa.Table) -> None:
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def _transform(stage: str, upstream: str):
    def body(run: RunDir, index: int) -> dict:
        start = _begin(run, stage, index)
        table = pq.read_table(run.shard_path(upstream, index))
        out = table.append_column(stage, pa.array([f"{stage}({q})" for q in table.column(0).to_pylist()]))
        _write_table(run.shard_path(stage, index), out)
        return _finish(run, stage, index, start)

    return body


generate = _transform("generate", "seeds")
verify = _transform("verify", "generate")


def merge(run: RunDir, index: int) -> dict:
    start = _begin(run, "merge", index)
    shards = run.load_config().seeds.shards
    table = pa.concat_tables([pq.read_table(run.shard_path("verify", i)) for i in range(shards)])
    _write_table(run.stage_dir("merge") / "merged.parquet", table)
    return _finish(run, "merge", index, start)


def train(run: RunDir, index: int) -> dict | None:
    """Every rank records where it ran; rank 0 finishes once all ranks have reported."""
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    start = _begin(run, "train", index) if rank == 0 else time.time()
    ranks_dir = run.stage_dir("train") / "ranks"
    info = {
        "rank": rank,
        "world": world,
        "node": os.environ.get("SLURMD_NODENAME"),
        "master": os.environ.get("MASTER_ADDR"),
    }
    atomic_write_json(ranks_dir / f"{rank}.json", info)
    if rank == 0:
        deadline = time.time() + 120
        while len(list(ranks_dir.glob("*.json"))) < world:
            if time.time() > deadline:
                raise RuntimeError("not every rank reported")
            time.sleep(0.2)
        _export_selection_checkpoints(run)
        return _finish(run, "train", index, start)


def _export_selection_checkpoints(run: RunDir) -> None:
    """With train.select: each selection checkpoint's folder, TOY_SELECT_GAP seconds apart, as train saves them."""
    cfg = run.load_config()
    for step in cfg.train.select.steps(cfg.train.steps):
        time.sleep(float(os.environ.get("TOY_SELECT_GAP", "0")))
        with atomic_path(selection_checkpoint(run, step, cfg.train.steps)) as tmp:
            tmp.mkdir(parents=True)
            (tmp / "config.json").write_text("{}")


def select_eval(run: RunDir, index: int) -> dict:
    """The real wait for the checkpoint, then a score per step from TOY_SELECT_SCORES ("2:0.5,4:0.25")."""
    start = time.time()
    cfg = run.load_config()
    step = select.selection_steps(cfg)[index]
    select.wait_for_checkpoint(run, cfg, step)
    scores = dict(item.split(":") for item in os.environ.get("TOY_SELECT_SCORES", "").split(",") if item)
    for _, task in select_tasks(cfg):
        summary = {"pass_at_1": float(scores.get(str(step), 0)), "completion_tokens": 1, "samples": 1}
        atomic_write_json(select.output_path(run, step, task).with_suffix(".json"), summary)
    return _finish(run, "select_eval", index, start)


def _record(stage: str):
    def body(run: RunDir, index: int) -> dict:
        start = _begin(run, stage, index)
        atomic_write_json(run.stage_dir(stage) / f"result-{index}.json", {"index": index})
        return _finish(run, stage, index, start)

    return body


eval_base = _record("eval_base")
eval_trained = _record("eval_trained")


def report(run: RunDir, index: int) -> dict:
    start = _begin(run, "report", index)
    rows = pq.read_table(run.stage_dir("merge") / "merged.parquet").num_rows
    with atomic_path(run.root / "report.md") as tmp:
        tmp.write_text(f"# toy report\nmerged rows: {rows}\n")
    return _finish(run, "report", index, start)


def trace(run: RunDir, stage: str, index: int) -> dict:
    return json.loads((run.root / "trace" / f"{stage}-{index:05d}.json").read_text())


BODIES = {
    "generate": generate,
    "verify": verify,
    "merge": merge,
    "train": train,
    "eval_base": eval_base,
    "eval_trained": eval_trained,
    "report": report,
    "select_eval": select_eval,  # select itself runs its real body on these scores
}
# the real train stage among toy ones (tests of the sbatch train template)
BODIES_BUT_TRAIN = {stage: body for stage, body in BODIES.items() if stage != "train"}
ENV = {"SVD_HPC_TEST_BODIES": "tests.toy_stages:BODIES"}


def _aborts_at_exit(run: RunDir, index: int) -> dict:
    """Finishes, then aborts the process at interpreter exit, as a native library's destructor may."""
    atexit.register(os.abort)
    return {"seconds": 0.0}


ABORT_AT_EXIT = {"train": _aborts_at_exit, "merge": _aborts_at_exit}
