"""The config reference, generated from the sections: every key with its type, default and meaning.

A field's documentation is the string literal right below it (torchtitan's convention), read here
from the source, so the code, `config-help` and docs/CONFIG.md say the same thing.
Regenerate the file with: python -m svd_hpc.launch config-help --markdown > docs/CONFIG.md
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import textwrap
import types
import typing
from typing import Any, Literal

import yaml

from .checks import ConfigError
from .cluster import ClusterProfile, StageResources
from .decontamination import DecontaminateConfig
from .evaluation import BenchmarkSpec, EvalConfig, SelectConfig
from .hub import HubConfig
from .iteration import IterationConfig
from .method import (
    GenerateConfig,
    MergeConfig,
    ModelConfig,
    PromptsConfig,
    SeedsConfig,
    SeedSource,
    TrainConfig,
    VerifyConfig,
)
from .run import RunConfig

# section name (for config-help) -> (the dataclass, how its keys are written in a config)
SECTIONS: dict[str, tuple[type, str]] = {
    "run": (RunConfig, ""),
    "model": (ModelConfig, "model."),
    "seeds": (SeedsConfig, "seeds."),
    "seeds.sources": (SeedSource, "seeds.sources[]."),
    "prompts": (PromptsConfig, "prompts."),
    "generate": (GenerateConfig, "generate."),
    "verify": (VerifyConfig, "verify."),
    "merge": (MergeConfig, "merge."),
    "train": (TrainConfig, "train."),
    "train.select": (SelectConfig, "train.select."),
    "eval": (EvalConfig, "eval."),
    "eval.benchmarks": (BenchmarkSpec, "eval.benchmarks[]."),
    "decontaminate": (DecontaminateConfig, "decontaminate."),
    "iteration": (IterationConfig, "iteration."),
    "resources": (StageResources, "resources.STAGE."),
    "hub": (HubConfig, "hub."),
    "cluster": (ClusterProfile, ""),
}
SECTION_TITLES = {
    "run": "run config: top-level keys",
    "seeds.sources": "seeds.sources[]: one entry per seed source (e.g. one per domain)",
    "eval.benchmarks": "eval.benchmarks[]: one entry per benchmark",
    "resources": "resources.STAGE: per-stage resources (STAGE: eval_base, generate, verify, merge, train, "
    "select_eval, select, eval_trained, report)",
    "cluster": "cluster profile: a file of its own (configs/clusters/NAME.yaml), chosen by `cluster`",
}


def user_fields(cls: type) -> list[dataclasses.Field]:
    """The keys a user may write (RunConfig.profile comes from the cluster profile file instead)."""
    return [f for f in dataclasses.fields(cls) if not (cls is RunConfig and f.name == "profile")]


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Each field's documentation: the string literal on the lines right after it in the class body."""
    docs = {}
    for klass in reversed([k for k in cls.__mro__ if dataclasses.is_dataclass(k)]):  # a subclass's own docs win
        body = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0].body
        for node, after in zip(body, body[1:]):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
            ):
                docs[node.target.id] = inspect.cleandoc(after.value.value)
    return docs


def default_value(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def yaml_text(f: dataclasses.Field) -> str:
    """A field's default as it would be written in the YAML config."""
    value = default_value(f)
    if dataclasses.is_dataclass(value):
        return "{...}"
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("\n...")


def type_text(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_text(a) for a in args)
    if origin is Literal:
        return " | ".join(map(str, args))
    if origin is list:
        if dataclasses.is_dataclass(args[0]):
            return "list of entries"
        return f"list[{type_text(args[0])}]"
    if origin is dict:
        keys = "stage names" if args[0] is str else f"({type_text(args[0])})"
        return f"mapping of {keys} to {type_text(args[1])}s"
    if dataclasses.is_dataclass(tp):
        return "section"
    if tp is type(None):
        return "null"
    return tp.__name__


def rows(section: str) -> list[tuple[str, str, str, str]]:
    """(key, type, default, meaning) of every key of a section."""
    cls, prefix = SECTIONS[section]
    hints, docs = typing.get_type_hints(cls), field_docs(cls)
    return [(prefix + f.name, type_text(hints[f.name]), yaml_text(f), docs.get(f.name, "")) for f in user_fields(cls)]


def _intro(section: str) -> str:
    cls = SECTIONS[section][0]
    return inspect.cleandoc(cls.__doc__ or "")


def text(section: str | None = None) -> str:
    """The reference for a terminal: one section, or all of them."""
    if section is not None and section not in SECTIONS:
        raise ConfigError(f"unknown config section '{section}'; choose one of: {', '.join(SECTIONS)}.")
    out = []
    for name in [section] if section else SECTIONS:
        out += [f"{SECTION_TITLES.get(name, name)}", textwrap.indent(_intro(name), "  "), ""]
        for key, tp, default, doc in rows(name):
            out.append(f"  {key}: {tp} = {default}")
            out += [textwrap.indent(textwrap.fill(p, 100), "      ") for p in doc.split("\n\n")]
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def _cell(value: str) -> str:
    return " ".join(value.split()).replace("|", "\\|")


def markdown() -> str:
    """docs/CONFIG.md: every section as a table of key, type, default and meaning."""
    out = [
        "# Config reference",
        "",
        "Generated from the typed config (svd_hpc/config/): do not edit by hand. Regenerate with",
        "`python -m svd_hpc.launch config-help --markdown > docs/CONFIG.md`; `python -m svd_hpc.launch",
        "config-help [section]` prints the same in a terminal. `null` in YAML is `None`. Override any key",
        "on the command line as `section.key=value`.",
        "",
    ]
    for name in SECTIONS:
        out += [f"## {SECTION_TITLES.get(name, name)}", "", _cell(_intro(name)), ""]
        out += ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
        for key, tp, default, doc in rows(name):
            out.append(f"| `{key}` | {_cell(tp)} | `{default}` | {_cell(doc)} |")
        out.append("")
    return "\n".join(out).rstrip() + "\n"
