"""Experiment tracking (train.report_to): TensorBoard and Weights & Biases, as transformers' Trainer offers them.

Train's rank 0 sends every step record (train/metrics.jsonl's: loss, lr, grad_norm, tokens_per_s,
padding_efficiency) under `train/`; the report job sends pass@1 per benchmark and model under
`eval/` once eval is done. TensorBoard writes to RUN_DIR/train/tensorboard. W&B runs offline
unless train.wandb_mode says online (compute nodes are often offline, and WANDB_API_KEY, a secret,
never reaches a task: online needs the netrc `wandb login` writes); the run files stay in
RUN_DIR/train/wandb and the log names the `wandb sync` command that uploads them. The train job
and the report job write to one W&B run: its id comes from the run directory.
"""

from __future__ import annotations

import hashlib
import logging
import re

from .. import config as config_mod
from ..rundir.layout import RunDir

log = logging.getLogger("svd_hpc")

STEP_KEYS = ("loss", "lr", "grad_norm", "tokens_per_s", "padding_efficiency")
INSTALL = {"tensorboard": "pip install tensorboard", "wandb": "pip install wandb"}


class TrackerMissing(config_mod.ConfigError):
    """train.report_to names a tracker whose package is not installed."""


def _import(name: str):
    try:
        if name == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter

            return SummaryWriter
        import wandb

        return wandb
    except ImportError:
        raise TrackerMissing(
            f"train.report_to lists {name}, but it is not installed here: {INSTALL[name]} "
            f"(or pip install 'svd_hpc[tracking]'), or drop it from train.report_to."
        ) from None


def wandb_run_id(run: RunDir, name: str) -> str:
    """One W&B run per run directory, the same in the train job and the report job."""
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-")[:48] or "run"
    return f"{slug}-{hashlib.blake2b(str(run.root.resolve()).encode(), digest_size=4).hexdigest()}"


def tags(cfg: config_mod.RunConfig) -> list[str]:
    """The run's W&B tags, from its config."""
    model = re.split(r"[/:]", cfg.model.path.rstrip("/"))[-1]
    domains = ["mixed" if s.domain_field else s.domain for s in cfg.seeds.source_list()]
    return [model, *dict.fromkeys(domains), f"N={cfg.generate.n}", f"V={cfg.verify.votes}", cfg.merge.selection]


class Tracker:
    """The trackers train.report_to names; each call goes to all of them. Use on one process only."""

    def __init__(self, run: RunDir, cfg: config_mod.RunConfig, start_step: int = 0):
        self.writers, self.wandb_run = [], None
        t = cfg.train
        self.wandb_offline = t.wandb_mode == "offline"
        for name in t.report_to:
            module = _import(name)
            if name == "tensorboard":
                # purge_step: a resumed job redoes the steps after its checkpoint; TensorBoard drops the old ones
                logdir = str(run.stage_dir("train") / "tensorboard")
                self.writers.append(module(logdir, purge_step=start_step + 1 if start_step else None))
            else:
                folder = run.stage_dir("train")
                folder.mkdir(parents=True, exist_ok=True)
                self.wandb_run = module.init(
                    project=t.wandb_project,
                    name=cfg.name,
                    id=wandb_run_id(run, cfg.name),
                    resume="allow",
                    mode=t.wandb_mode,
                    dir=str(folder),
                    tags=tags(cfg),
                    config={k: v for k, v in config_mod.to_dict(cfg).items() if k not in ("profile", "resources")},
                )

    def log_step(self, record: dict) -> None:
        """One train step record (step_log.py): its STEP_KEYS at its step."""
        step = record["step"]
        for writer in self.writers:
            for key in STEP_KEYS:
                writer.add_scalar(f"train/{key}", record[key], step)
        if self.wandb_run is not None:
            self.wandb_run.log({f"train/{key}": record[key] for key in STEP_KEYS}, step=step)

    def log_eval(self, summary: dict, step: int) -> None:
        """pass@1 per benchmark (and domain) and model from eval/summary.json, at the last train step."""
        scores = {
            f"eval/{variant}/{group}/pass@1": entry["pass_at_1"]
            for group, row in summary.items()
            for variant, entry in row.items()
            if isinstance(entry, dict) and "pass_at_1" in entry
        }
        for writer in self.writers:
            for key, value in scores.items():
                writer.add_scalar(key, value, step)
        if self.wandb_run is not None:
            self.wandb_run.summary.update(scores)  # the final figures: W&B's run table shows the summary

    def close(self) -> None:
        for writer in self.writers:
            writer.close()
        if self.wandb_run is not None:
            folder = self.wandb_run.dir  # .../wandb/offline-run-*/files
            self.wandb_run.finish()
            if self.wandb_offline:
                log.warning(f"W&B run saved offline; upload it with: wandb sync {folder.rsplit('/files', 1)[0]}")


def log_eval(run: RunDir, cfg: config_mod.RunConfig, summary: dict | None) -> None:
    """The report job's part: pass@1 per benchmark to every tracker of train.report_to."""
    if not cfg.train.report_to or not summary:
        return
    tracker = Tracker(run, cfg)
    try:
        tracker.log_eval(summary, step=cfg.train.steps)
    finally:
        tracker.close()
