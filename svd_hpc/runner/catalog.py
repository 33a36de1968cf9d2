"""The hub inputs of a run: the models, seed datasets and benchmarks of a config that come from the hub.

The launch and the pilot list them here, then hand the list to staging.stage to pin and fetch.
"""

from __future__ import annotations

from pathlib import Path

from ..config import ConfigError, RunConfig
from ..eval import benchmarks
from ..inputs import models, seeds
from ..inputs.staging import HubInput


def hub_inputs(cfg: RunConfig) -> list[HubInput]:
    """The inputs of `cfg` that come from the hub; ConfigError/ValueError for a path that is nothing."""
    found = []
    model_inputs = [("model.path", cfg.model, "path", "revision")]
    if cfg.train.enabled and cfg.train.model:
        model_inputs.append(("train.model", cfg.train, "model", "model_revision"))
    for key, holder, path_field, rev_field in model_inputs:
        path = getattr(holder, path_field)
        if models.is_hub_id(path):
            found.append(HubInput(key, key, path, "model", holder, rev_field, f"{key.split('.')[0]}.{rev_field}"))
        elif not path.startswith(models.BUILTIN_PREFIX) and not Path(path).expanduser().exists():
            raise ConfigError(f"{key} {path} is neither a local folder, a built-in model nor a hub id; check the path.")
    for i, source in enumerate(cfg.seeds.source_list()):
        if seeds.is_hub_dataset(source):
            key = seeds.source_key(cfg.seeds, i)
            found.append(
                HubInput(f"{key}.path", f"{key}.path", source.path, "dataset", source, "revision", f"{key}.revision")
            )
    selection = cfg.train.select.benchmarks if cfg.train.select.enabled else []
    for key, spec in [("eval.benchmarks", s) for s in cfg.eval.benchmarks] + [
        ("train.select.benchmarks", s) for s in selection
    ]:
        src = benchmarks.resolve(spec)
        if src.hub_id:
            local = src.path if src.path and Path(src.path).expanduser().exists() else None
            label = f"{key} '{spec.name}'"
            found.append(
                HubInput(
                    f"{key}.{spec.name}",
                    label,
                    src.hub_id,
                    "dataset",
                    spec,
                    "revision",
                    f"the revision of {label}",
                    benchmarks.hub_files(src),
                    local,
                )
            )
    return found
