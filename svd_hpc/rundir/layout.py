"""The run directory: the one place a run's state lives (atomic.py holds the writes that keep it true).

A task writes its output under a temporary name, renames it into place, then writes its done
marker. A marker therefore always means "the output is complete"; a task whose marker exists
exits at once, so re-running a finished task is a no-op.
"""

from __future__ import annotations

import copy
import json
import os
import re
import socket
import time
from pathlib import Path

import yaml

from .. import config as config_mod
from .atomic import atomic_write_json, atomic_write_text

# A task process imports this module as it starts: the default "seconds" of a done marker
_PROCESS_START = time.monotonic()


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.parquet"


class RunDir:
    """Paths and markers of one run: runs/<name>/ (see README for the layout)."""

    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()

    # files of the whole run
    @property
    def config_path(self) -> Path:
        return self.root / "config.yaml"

    @property
    def plan_path(self) -> Path:
        return self.root / "plan.json"

    @property
    def jobs_path(self) -> Path:
        return self.root / "jobs.json"

    def sbatch_path(self, stage: str, part: int | None = None) -> Path:
        suffix = "" if part is None else f"-part{part}"
        return self.root / "sbatch" / f"{stage}{suffix}.sh"

    def log_dir(self, stage: str) -> Path:
        return self.root / "logs" / stage

    # per-stage outputs and markers
    def stage_dir(self, stage: str) -> Path:
        return self.root / stage

    def shard_path(self, stage: str, index: int) -> Path:
        return self.stage_dir(stage) / shard_name(index)

    def done_marker(self, stage: str, index: int) -> Path:
        return self.stage_dir(stage) / "done" / f"{index:05d}"

    def is_done(self, stage: str, index: int) -> bool:
        return self.done_marker(stage, index).exists()

    def mark_done(self, stage: str, index: int, **info) -> None:
        """Write the done marker: only after the task's output is in place.

        `seconds` (the task's wall time, which the report sums into task hours) defaults to
        the time since this process started.
        """
        info.setdefault("seconds", round(time.monotonic() - _PROCESS_START, 2))
        info.update(
            finished=time.strftime("%Y-%m-%dT%H:%M:%S"),
            host=socket.gethostname(),
            slurm_job=os.environ.get("SLURM_JOB_ID"),
        )
        atomic_write_json(self.done_marker(stage, index), info)

    def incomplete(self, stage: str, size: int) -> list[int]:
        """Task indices of `stage` (array of `size`) that have no done marker."""
        done_dir = self.stage_dir(stage) / "done"
        done = {p.name for p in done_dir.iterdir()} if done_dir.is_dir() else set()
        return [i for i in range(size) if f"{i:05d}" not in done]

    # the run's config and plan
    def write_config(self, cfg: config_mod.RunConfig, meta: dict) -> None:
        data = {"svd_hpc": meta, **config_mod.to_dict(cfg)}
        atomic_write_text(self.config_path, yaml.safe_dump(data, sort_keys=False, allow_unicode=True))

    def load_config(self) -> config_mod.RunConfig:
        if not self.config_path.is_file():
            raise config_mod.ConfigError(f"{self.root} is not a run directory (no config.yaml); check the path.")
        data = yaml.safe_load(self.config_path.read_text())
        data.pop("svd_hpc", None)
        return config_mod.from_dict(data)

    def load_json(self, path: Path, default=None):
        if not path.is_file():
            return default
        return json.loads(path.read_text())

    def exists(self) -> bool:
        return self.config_path.is_file()

    def submissions(self) -> list[dict]:
        """The SLURM submissions jobs.json records (job id, stage, array part), oldest first."""
        return self.load_json(self.jobs_path, default={"submissions": []})["submissions"]

    @property
    def local_running_path(self) -> Path:
        """Which task the local scheduler runs now: stage, index, pid and host."""
        return self.root / "logs" / "local_running.json"

    @property
    def pilot_dir(self) -> RunDir:
        """The pilot's own run directory: a small copy of the run, timed to project the full one."""
        return RunDir(self.root / "pilot")

    @property
    def pilot_result_path(self) -> Path:
        """What the pilot measured and projected (pilot.json)."""
        return self.root / "pilot.json"

    def round_dir(self, number: int) -> RoundDir:
        """Round `number` of a multi-round run: RUN_DIR/round-N/, the layout of a single-round run."""
        return RoundDir(self, number)


def round_folder(number: int) -> str:
    return f"round-{number}"


class RoundDir(RunDir):
    """One round of a multi-round run, seen as a run of its own: its stage folders (seeds/, generate/,
    ..., eval/, report.md) live in RUN_DIR/round-N/; the config, plan, jobs and logs stay the run's.

    load_config gives the round's config: from round 2 on, the model that generates and judges is the
    round before's trained one (round_config). Stage names here are the plain ones
    ("generate"); the run's plan names them "round-N/generate", round-N/plan.json the plain way.
    `merge_dir` points train at another SFT set than the round's merge/ (the union of rounds).
    """

    def __init__(self, run: RunDir, number: int, merge_dir: Path | None = None):
        self.run = run
        self.number = number
        self.root = run.root / round_folder(number)
        self.merge_dir = merge_dir

    def stage_dir(self, stage: str) -> Path:
        if stage == "merge" and self.merge_dir is not None:
            return self.merge_dir
        return super().stage_dir(stage)

    @property
    def config_path(self) -> Path:
        return self.run.config_path

    @property
    def jobs_path(self) -> Path:
        return self.run.jobs_path

    def sbatch_path(self, stage: str, part: int | None = None) -> Path:
        return self.run.sbatch_path(f"{round_folder(self.number)}/{stage}", part)

    def log_dir(self, stage: str) -> Path:
        return self.run.log_dir(f"{round_folder(self.number)}/{stage}")

    def load_config(self) -> config_mod.RunConfig:
        return round_config(self.run.load_config(), self.run, self.number)


# ----------------------------------------------------------------------------- rounds in the run directory
# A round's stage is named "round-R/STAGE" in the plan; its folder is RUN_DIR/round-R/. The stopping rule
# (svd_hpc.stages.rounds) records why the chain ended in round-R/stopped.json.

_ROUND_STAGE = re.compile(r"^round-(\d+)/(\w+)$")
STOPPED = "stopped.json"
SKIPPED_KEY = "skipped_by_stopping_rule"


def stage_name(number: int, stage: str) -> str:
    return f"{round_folder(number)}/{stage}"


def split_stage(name: str) -> tuple[int | None, str]:
    """'round-2/generate' -> (2, 'generate'); a single-round stage name -> (None, name)."""
    match = _ROUND_STAGE.match(name)
    return (int(match.group(1)), match.group(2)) if match else (None, name)


def trained_model(run: RunDir, number: int) -> Path:
    """Where round `number`'s train stage saves its model (what eval.evaluate.trained_model_path reads)."""
    return run.round_dir(number).stage_dir("train") / "final"


def selection_checkpoint(run: RunDir, step: int, total: int) -> Path:
    """The model train exports at `step` for checkpoint selection (train.select): the final model at the last step.

    Each appears whole (a folder renamed into place), so its existence is its completion marker.
    """
    return run.stage_dir("train") / ("final" if step == total else f"select/step-{step:06d}")


def choice_path(run: RunDir) -> Path:
    """The select stage's record: every selection checkpoint's score and the one chosen."""
    return run.stage_dir("select") / "choice.json"


def trained_model_dir(run: RunDir) -> Path:
    """The run's trained model: the checkpoint the select stage chose, else train/final."""
    choice = run.load_json(choice_path(run))
    return run.root / choice["path"] if choice else run.stage_dir("train") / "final"


def round_config(cfg: config_mod.RunConfig, run: RunDir, number: int) -> config_mod.RunConfig:
    """The config round `number` runs with: from round 2 on, the round before's model generates and judges,
    and training starts from it (iteration.train_from: previous) or from the base model."""
    if number == 1:
        return cfg
    cfg = copy.deepcopy(cfg)
    base = (cfg.train.model, cfg.train.model_revision) if cfg.train.model else (cfg.model.path, cfg.model.revision)
    previous = str(trained_model(run, number - 1))
    cfg.model.path, cfg.model.revision = previous, None
    if cfg.iteration.train_from == "previous":
        cfg.train.model, cfg.train.model_revision = previous, None
    else:
        cfg.train.model, cfg.train.model_revision = base
    return cfg


def union_dir(run: RoundDir) -> Path:
    """The folder whose sft/train.parquet round `run` trains on when every round trains from the base."""
    return run.root / "union"


def trains_on_union(cfg: config_mod.RunConfig, number: int) -> bool:
    return number > 1 and cfg.iteration.train_from == "base"


def stop_reason(run: RunDir, through: int) -> str | None:
    """Why the chain stopped at or before round `through`, or None while it runs on."""
    for number in range(1, through + 1):
        record = run.load_json(run.round_dir(number).root / STOPPED)
        if record:
            return record["reason"]
    return None


def stopped_round(run: RunDir, rounds: int) -> tuple[int, str] | None:
    """(the first round the stopping rule skipped, why), or None."""
    for number in range(1, rounds + 1):
        record = run.load_json(run.round_dir(number).root / STOPPED)
        if record:
            return number, record["reason"]
    return None
