"""Reading a run config: YAML plus dotted overrides, built into the typed sections and checked."""

from __future__ import annotations

import dataclasses
import logging
import os
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from .checks import ConfigError
from .cluster import ClusterProfile
from .reference import user_fields, yaml_text
from .run import RunConfig

# the package's own configs and demo data: svd_hpc/configs and svd_hpc/data (links to the repository's
# configs/ and data/ in a checkout, copies in an installed wheel)
PACKAGE_CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str, source: str) -> Any:
    """Check `value` against the annotation `tp`, building nested dataclasses."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], where, source)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{source}: {where} is {value!r}; choose one of {', '.join(map(str, args))}.")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {where} must be a mapping, got {type(value).__name__}.")
        return build(tp, value, source, where)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{source}: {where} must be a list, got {type(value).__name__}.")
        return [_coerce(v, args[0], f"{where}[{i}]", source) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {where} must be a mapping, got {type(value).__name__}.")
        return {str(k): _coerce(v, args[1], f"{where}.{k}", source) for k, v in value.items()}
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if (
        tp is str
        and isinstance(value, (int, float))
        and not isinstance(value, bool)
        and where.endswith(("time", "mem"))
    ):
        return str(value)
    if tp is str and where.endswith("filter_value") and isinstance(value, (int, float, bool)):
        return str(value).lower() if isinstance(value, bool) else str(value)  # compared as text (seeds.filter_value)
    if tp in (int, float, str, bool):
        if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
            raise ConfigError(f"{source}: {where} must be {_type_name(tp)}, got {value!r} ({type(value).__name__}).")
        return value
    return value


def build(cls: type, data: dict, source: str = "<config>", where: str = "") -> Any:
    """Build dataclass `cls` from a mapping, rejecting unknown keys and listing the valid ones with their defaults."""
    hints = typing.get_type_hints(cls)
    fields = user_fields(cls)
    names = [f.name for f in fields]
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in names:
            valid = ", ".join(f"{f.name}={yaml_text(f)}" for f in fields)
            raise ConfigError(
                f"{source}: unknown key '{path}'; valid keys{' under ' + repr(where) if where else ''} "
                f"(with their defaults): {valid}."
            )
        kwargs[key] = _coerce(value, hints[key], path, source)
    return cls(**kwargs)


def apply_override(data: dict, override: str) -> None:
    """Apply one `a.b.c=value` override (value parsed as YAML) to a nested mapping."""
    if "=" not in override:
        raise ConfigError(f"override '{override}' must look like key.sub=value.")
    key, raw = override.split("=", 1)
    value = yaml.safe_load(raw) if raw != "" else ""
    node = data
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override '{override}': '{part}' is not a section.")
    node[parts[-1]] = value


def _read_yaml(path: Path, what: str) -> dict:
    if not path.is_file():
        raise ConfigError(f"{what} file {path} does not exist; check the path.")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}: invalid YAML{line}; fix the syntax.") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys.")
    return data


def find_profile(name: str, config_dir: Path) -> Path:
    """A cluster profile by path, or by name in configs/clusters/ next to the config or in the package."""
    candidates = [Path(name), config_dir / "clusters" / f"{name}.yaml", PACKAGE_CONFIGS / "clusters" / f"{name}.yaml"]
    for candidate in candidates:
        if candidate.suffix in (".yaml", ".yml") and candidate.is_file():
            return candidate
    known = sorted(p.stem for p in (PACKAGE_CONFIGS / "clusters").glob("*.yaml"))
    raise ConfigError(f"cluster profile '{name}' not found; use 'local', a YAML path, or one of: {', '.join(known)}.")


def validate(cfg: RunConfig, source: str) -> None:
    """Cross-field checks that types alone cannot express (each section's `check`, then those across sections)."""
    cfg.check(source)


def find_config(name: str | Path) -> Path:
    """A config file by path, else one of the package's by name (`demo`, `qwen3-8b-math`)."""
    path = Path(name)
    packaged = PACKAGE_CONFIGS / f"{name}.yaml"
    return packaged if not path.exists() and path.suffix == "" and packaged.is_file() else path


def _locate_inputs(cfg: RunConfig, config_dir: Path) -> None:
    """A relative seeds or benchmark path missing from the launch directory is looked up beside the config.

    First in the config's folder, then in the one above it, where a project's configs/ sits next to
    its data/ (the package's own demo configs and questions are laid out that way).
    """
    holders = [(source, "path") for source in cfg.seeds.source_list()] + [(b, "path") for b in cfg.eval.benchmarks]
    for holder, key in holders:
        value = getattr(holder, key)
        if not value or Path(value).is_absolute() or Path(value).expanduser().exists():
            continue
        for base in (config_dir, config_dir.parent):
            if (base / value).exists():
                setattr(holder, key, str(base / value))
                break


def load(path: str | Path, overrides: list[str] = ()) -> RunConfig:
    """Read, override and validate a run config (a path, or a packaged config's name)."""
    path = find_config(path)
    data = _read_yaml(path, "config")
    for override in overrides:
        apply_override(data, override)
    cfg = build(RunConfig, data, str(path))
    if cfg.cluster != "local":
        profile_path = find_profile(cfg.cluster, path.resolve().parent)
        cfg.profile = build(ClusterProfile, _read_yaml(profile_path, "cluster profile"), str(profile_path))
        if "run_root" not in data and cfg.profile.run_root:
            cfg.run_root = site_run_root(cfg.profile.run_root, profile_path)
    _locate_inputs(cfg, path.resolve().parent)
    validate(cfg, str(path))
    return cfg


def site_run_root(value: str, profile_path: Path) -> str:
    """The profile's run_root with $VARIABLES and ~ expanded; one naming a variable this shell lacks
    (a laptop's dry run of a cluster config) falls back to ./runs, with a warning."""
    expanded = os.path.expanduser(os.path.expandvars(value))
    if "$" in expanded:
        logging.getLogger("svd_hpc").warning(
            f"{profile_path}: run_root {value!r} names a variable this shell does not set; using ./runs "
            "(set the variable, or run_root in the run config)"
        )
        return "runs"
    return expanded


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(data: dict) -> RunConfig:
    """Rebuild a resolved config (as saved in a run directory), profile included."""
    data = dict(data)
    profile = data.pop("profile", {})
    if "eval" in data and "uq_ttc_seeds" not in data["eval"]:
        # a run directory written before eval.uq_ttc_seeds planned UQ-TTC on every eval seed
        data["eval"] = {**data["eval"], "uq_ttc_seeds": "all"}
    cfg = build(RunConfig, data, "config.yaml")
    cfg.profile = build(ClusterProfile, profile, "config.yaml (profile)")
    return cfg
