"""The smoke run: the user's cluster profile, resources and dependencies with a tiny model and a
handful of questions, through every stage to the report, in minutes, before committing a night.

Run as:  python -m svd_hpc.launch smoke --config configs/X.yaml [key.sub=value ...]

Every task of a smoke run records, on the compute node where it runs, what an overnight run
needs there (checks/<stage>-<index>.json in the run's smoke/ folder): the run directory is
writable, the interpreter and package are the launcher's, the task sees the GPUs it asked for,
the hub is offline and the staged model is readable without it, the train job's ranks complete
an all-reduce across all its nodes, and eval tasks know which sandbox isolation they would use.
A task that never started leaves no record: its log's last line says why. `summarize` turns all
of it into one table.
"""

from __future__ import annotations

import copy
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .. import __version__
from ..config import RunConfig, StageResources
from ..rundir import planfile
from ..rundir.atomic import atomic_write_json
from ..rundir.layout import RunDir
from . import device_guard
from .plan import uses_engine

if TYPE_CHECKING:
    from .stage_status import StageStatus

SMOKE_MODEL = "builtin:tiny-qwen3"
SMOKE_QUESTIONS = 8
SMOKE_TIME = "00:20:00"  # a short limit backfills sooner; the smoke run needs minutes


@dataclass
class Check:
    name: str
    ok: bool
    detail: str  # the log line that says why


def shrink(cfg: RunConfig, model: str = SMOKE_MODEL) -> RunConfig:
    """The smoke version of a run config: same cluster, resources and stages; tiny everything else."""
    smoke = copy.deepcopy(cfg)
    smoke.name = f"{cfg.name}-smoke"
    smoke.model.path = model
    smoke.model.revision = None
    smoke.model.max_model_len = 1024
    smoke.seeds.limit = SMOKE_QUESTIONS
    smoke.seeds.shards = min(cfg.seeds.shards, 2)
    smoke.seeds.mix_domains = True  # two shards hold three domains only mixed
    g = smoke.generate
    g.n, g.max_tokens, g.chunk_size = 2, 32, 4
    g.require_think, g.format_filter = "off", False  # a random model writes no think block or \boxed{}
    v = smoke.verify
    v.votes, v.max_tokens, v.cycle_inferences = 2, 16, 1
    # the judges still run; their votes are ignored so that training has data (a random model never says yes)
    smoke.merge.disabled_stages = list(v.stages)
    t = smoke.train
    t.model = None
    t.steps, t.checkpoint_every, t.max_seq_len, t.micro_batch = 2, 1, 256, 1
    t.global_batch = _train_world_size(cfg)
    t.activation_checkpointing = False
    e = smoke.eval
    e.benchmarks = e.benchmarks[:]
    for bench in e.benchmarks:
        bench.limit = 2
        bench.seeds = None
    e.seeds = [0]  # one repeat of every benchmark, whatever its preset repeats
    e.max_tokens = 32
    e.uq_ttc = False
    if t.select.enabled:  # two selection checkpoints (steps 1 and 2), two questions of each selection benchmark
        t.select.every, t.select.seeds = 1, [0]
        for bench in t.select.benchmarks:
            bench.limit, bench.seeds = 2, None
    for stage in (
        "generate",
        "verify",
        "merge",
        "train",
        "select_eval",
        "select",
        "eval_base",
        "eval_trained",
        "report",
    ):
        res = copy.deepcopy(smoke.resources.get(stage, StageResources()))
        res.time = SMOKE_TIME
        smoke.resources[stage] = res
    return smoke


def _train_world_size(cfg: RunConfig) -> int:
    from ..config import train_procs_per_node

    return cfg.stage_resources("train").nodes * train_procs_per_node(cfg)


# ----------------------------------------------------------------------------- on the compute node


def checks_dir(run: RunDir) -> Path:
    return run.root / "smoke" / "checks"


def is_smoke(run: RunDir) -> bool:
    return (run.root / "smoke").is_dir()


def mark(run: RunDir) -> None:
    """Make `run` a smoke run: its tasks record their checks."""
    checks_dir(run).mkdir(parents=True, exist_ok=True)


def node_name() -> str:
    return os.environ.get("SLURMD_NODENAME") or socket.gethostname()


def visible_gpus() -> tuple[int, str]:
    """GPUs this task can see, without initialising CUDA in this process (vLLM forks later)."""
    devices = os.environ.get("CUDA_VISIBLE_DEVICES")
    if devices is not None:
        ids = [d for d in devices.split(",") if d.strip() and d.strip() != "-1"]
        return len(ids), f"CUDA_VISIBLE_DEVICES={devices}"
    if shutil.which("nvidia-smi"):
        proc = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=60)
        gpus = [line for line in proc.stdout.splitlines() if line.startswith("GPU ")]
        return len(gpus), f"nvidia-smi -L lists {len(gpus)}"
    return 0, "no CUDA_VISIBLE_DEVICES and no nvidia-smi"


def gpu_check(resources: dict, distributed: bool) -> Check:
    asked = resources.get("gpus_per_node") or 0
    seen, how = visible_gpus()
    # a train rank sees either the node's GPUs or, under --gpu-bind, its own one
    ok = seen == asked or (distributed and asked and seen == 1 and resources.get("ntasks_per_node") == asked)
    return Check("GPUs visible", bool(ok), f"asked {asked} per node, task sees {seen} ({how})")


def device_check(resources: dict, uses_engine: bool) -> Check:
    """The engine and the trainer would run on the GPUs the job asked for, not on the CPU (device_guard)."""
    asked = resources.get("gpus_per_node") or 0
    name = "engine and trainer run on the GPUs the job asked for"
    if not asked:
        return Check(name, True, "no GPUs asked: this stage runs on the CPU")
    try:
        device_guard.refuse_unusable_gpus(uses_engine)
    except device_guard.UnusableGpus as err:
        return Check(name, False, str(err))
    import torch

    return Check(name, True, f"torch {torch.__version__} built for CUDA {torch.version.cuda}")


def task_checks(run: RunDir, stage, index: int) -> list[Check]:
    """What a task of `stage` can check about its node before its body starts."""
    meta = _launch_meta(run)
    checks = [
        Check("run directory writable", True, f"{run.root} on {node_name()}"),
        Check(
            "interpreter and package",
            meta.get("version") in (None, __version__),
            f"{sys.executable} (Python {platform.python_version()}, "
            f"svd_hpc {__version__}; launcher had {meta.get('version')})",
        ),
        gpu_check(stage.resources, stage.kind == "distributed"),
        device_check(stage.resources, uses_engine(stage.name)),
        offline_check(),
        model_check(run),
    ]
    if stage.name in ("eval_base", "eval_trained", "select_eval"):
        checks.append(sandbox_check(run))
    return checks


def _launch_meta(run: RunDir) -> dict:
    import yaml

    data = yaml.safe_load(run.config_path.read_text()) or {}
    return data.get("svd_hpc") or {}


def offline_check() -> Check:
    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    return Check("hub offline", offline, f"HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', '(unset)')}")


def model_check(run: RunDir) -> Check:
    """The run's model loads from local files alone (config and tokenizer: what every stage reads first)."""
    from ..inputs import models

    cfg = run.load_config()
    try:
        path = models.resolve(cfg.model.path)
        from transformers import AutoConfig, AutoTokenizer

        AutoConfig.from_pretrained(path, revision=cfg.model.revision, local_files_only=True)
        AutoTokenizer.from_pretrained(path, revision=cfg.model.revision, local_files_only=True)
    except Exception as err:  # any failure here is the finding
        return Check("model readable offline", False, f"{cfg.model.path}: {type(err).__name__}: {err}".splitlines()[0])
    return Check("model readable offline", True, f"{cfg.model.path} -> {path}")


def sandbox_check(run: RunDir) -> Check:
    """The isolation model-written code would get on this node, as code benchmarks would demand it."""
    from ..eval import sandbox

    allow = run.load_config().eval.allow_unisolated_code
    try:
        mode = sandbox.require_isolation(allow, "code benchmarks")
    except sandbox.IsolationMissing as err:
        return Check("sandbox isolation", False, str(err))
    return Check(
        "sandbox isolation",
        True,
        f"mode {mode}"
        + (" (unisolated, as eval.allow_unisolated_code allows)" if mode not in sandbox.ISOLATING else ""),
    )


def allreduce_check(resources: dict) -> Check:
    """Every rank of the train job joins the process group and sums across all nodes."""
    import torch
    import torch.distributed as dist

    from ..train.fsdp import init_distributed

    d = init_distributed()
    nodes: list[str] = [""] * d.world_size
    dist.all_gather_object(nodes, node_name())
    total = torch.ones((), device=d.device)
    dist.all_reduce(total)
    expected_world = resources["nodes"] * resources["ntasks_per_node"]
    ok = int(total) == d.world_size == expected_world and len(set(nodes)) == resources["nodes"]
    asked = f"{resources['nodes']} node(s) × {resources['ntasks_per_node']}"
    detail = f"all-reduce over {int(total)} ranks on nodes {','.join(sorted(set(nodes)))}; asked {asked}"
    return Check("all-reduce across nodes", ok, detail)


def record(run: RunDir, stage, index: int) -> None:
    """Run the task's checks and write them (rank 0 writes for a distributed stage)."""
    checks = task_checks(run, stage, index)
    if stage.kind == "distributed":
        checks.append(allreduce_check(stage.resources))
        if os.environ.get("RANK", "0") != "0":
            return
    atomic_write_json(
        checks_dir(run) / f"{stage.name}-{index:05d}.json",
        {"node": node_name(), "job": os.environ.get("SLURM_JOB_ID"), "checks": [asdict(c) for c in checks]},
    )


# ----------------------------------------------------------------------------- the table


def summarize(run: RunDir, stage_statuses: list[StageStatus]) -> list[tuple[str, Check]]:
    """(task, check) for every task of the plan: its recorded checks, or why it left none.

    `stage_statuses` is status.collect(run): the caller reads the queue, so a task, which imports this
    module to record its checks, loads no Slurm client.
    """
    rows: list[tuple[str, Check]] = []
    statuses = {s.name: s for s in stage_statuses}
    for stage in planfile.plan_from_json(run.load_json(run.plan_path, default=[])):
        st = statuses.get(stage.name)
        failed = {f.index: f for f in (st.failed if st else [])}
        for index in range(stage.array_size):
            task = f"{stage.name}[{index}]" if stage.is_array else stage.name
            path = checks_dir(run) / f"{stage.name}-{index:05d}.json"
            if path.is_file():
                rows += [(task, Check(**c)) for c in json.loads(path.read_text())["checks"]]
            if run.is_done(stage.name, index):
                rows.append((task, Check("task finished", True, "done marker written")))
            elif index in failed:
                why = why_line(failed[index].tail) or f"{failed[index].state}, empty log"
                rows.append((task, Check("task finished", False, why)))
            else:
                rows.append(
                    (task, Check("task finished", False, "never ran: an upstream task failed, or it is still queued"))
                )
    return rows


# srun's own lines about a step it is ending say that a task failed, never why
_SRUN_BOOKKEEPING = re.compile(
    r"^srun: (error: \S+: task \d+: Exited|launch/slurm: _step_signal|Job step aborted|.*Terminating)"
)


def why_line(tail: str) -> str:
    """The log line that says why a task failed: the last error line that is not srun's bookkeeping."""
    lines = [line.strip() for line in tail.splitlines() if line.strip() and not _SRUN_BOOKKEEPING.search(line.strip())]
    errors = [line for line in lines if re.search(r"error|exception|denied|no such file|not found|killed", line, re.I)]
    return (errors or lines or [""])[-1]


def render(run: RunDir, rows: list[tuple[str, Check]], console) -> bool:
    """Print one row per check (over every task that made it), write smoke/summary.json; True if all passed."""
    from rich.table import Table

    by_check: dict[str, list[tuple[str, Check]]] = {}
    for task, check in rows:
        by_check.setdefault(check.name, []).append((task, check))
    table = Table(title=f"smoke run {run.root}")
    for column in ("check", "tasks", "result", "why"):
        table.add_column(column, overflow="fold")
    for name, results in by_check.items():
        failed = [(task, c) for task, c in results if not c.ok]
        if failed:
            tasks = ", ".join(task for task, _ in failed[:4]) + (f" (+{len(failed) - 4})" if len(failed) > 4 else "")
            table.add_row(name, f"{len(failed)} of {len(results)}", "[red]FAIL", f"{tasks}: {failed[0][1].detail}")
        else:
            table.add_row(name, str(len(results)), "[green]pass", results[-1][1].detail)
    console.print(table)
    passed = bool(rows) and all(c.ok for _, c in rows)
    atomic_write_json(
        run.root / "smoke" / "summary.json",
        {"passed": passed, "checks": [{"task": t, **asdict(c)} for t, c in rows]},
    )
    console.print(
        "[green]smoke run passed: the overnight run can start"
        if passed
        else "[red]smoke run failed: fix the FAIL rows first"
    )
    return passed
