"""The config reference (config-help, docs/CONFIG.md) is generated from the typed config and kept current."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

from svd_hpc import config, launch
from svd_hpc.config import reference

DOC = Path(__file__).resolve().parent.parent / "docs" / "CONFIG.md"
REGENERATE = "python -m svd_hpc.launch config-help --markdown > docs/CONFIG.md"


def sections_of(cls: type) -> set[type]:
    """Every dataclass reachable from `cls` through its fields (lists, mappings and optionals included)."""
    found = {cls}
    for tp in typing.get_type_hints(cls).values():
        for inner in (tp, *typing.get_args(tp)):
            if dataclasses.is_dataclass(inner) and inner not in found:
                found |= sections_of(inner)
    return found


def test_docs_config_md_is_current():
    assert DOC.read_text() == reference.markdown(), f"docs/CONFIG.md is out of date; regenerate it: {REGENERATE}"


def test_a_field_added_without_regenerating_fails_the_check(monkeypatch):
    @dataclasses.dataclass
    class Widened(config.MergeConfig):
        shuffle: bool = False
        """Shuffle the SFT set."""

    monkeypatch.setitem(reference.SECTIONS, "merge", (Widened, "merge."))
    text = reference.markdown()
    assert "| `merge.shuffle` | bool | `false` | Shuffle the SFT set. |" in text
    assert text != DOC.read_text()


def test_every_section_is_in_the_reference():
    listed = {cls for cls, _ in reference.SECTIONS.values()}
    assert listed == sections_of(config.RunConfig) | {config.ClusterProfile}


def test_every_key_has_a_type_default_and_one_line_of_meaning():
    undocumented = [
        f"{cls.__name__}.{f.name}"
        for cls, _ in reference.SECTIONS.values()
        for f in dataclasses.fields(cls)
        if not reference.field_docs(cls).get(f.name, "").strip()
    ]
    assert not undocumented, f"document each field with a string right below it: {undocumented}"
    row = dict((key, (tp, default, doc)) for key, tp, default, doc in reference.rows("verify"))
    assert row["verify.k"] == ("int | null", "null", "Yes votes needed with k_of_v, between 1 and `votes`.")
    assert row["verify.aggregation"][:2] == ("unanimous | majority | k_of_v", "unanimous")
    assert row["verify.stages"][1] == "[cycle, factuality, correctness]"


def test_config_help_prints_one_section(capsys):
    assert launch.main(["config-help", "train"]) == 0
    out = capsys.readouterr().out
    assert "  train.global_batch: int = 64\n      Sequences per optimiser step" in out
    assert "train.decay_ratio: float | null = 0.9" in out and "verify.votes" not in out


def test_config_help_prints_every_section_and_markdown(capsys):
    assert launch.main(["config-help"]) == 0
    out = capsys.readouterr().out
    for cls, prefix in reference.SECTIONS.values():
        assert all(f"  {prefix}{f.name}: " in out for f in reference.user_fields(cls)), cls.__name__
    assert launch.main(["config-help", "--markdown"]) == 0
    assert capsys.readouterr().out == reference.markdown()


def test_config_help_unknown_section_is_one_sentence(capsys):
    assert launch.main(["config-help", "verfy"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown config section 'verfy'; choose one of: run, model, seeds,")


def test_train_processes_per_node_follow_the_documented_precedence():
    cfg = config.RunConfig(train=config.TrainConfig(procs_per_node=3))
    assert config.train_procs_per_node(cfg) == 3  # no GPUs anywhere: train.procs_per_node
    cfg.profile.gpus_per_node = 4
    assert config.train_procs_per_node(cfg) == 4  # one per GPU of the profile
    cfg.resources["train"] = config.StageResources(gpus=2)
    assert config.train_procs_per_node(cfg) == 2  # one per GPU of resources.train
    cfg.resources["train"].tasks_per_node = 1
    assert config.train_procs_per_node(cfg) == 1  # resources.train.tasks_per_node wins
    precedence = (
        "Precedence: resources.train.tasks_per_node, else one process per GPU (resources.train.gpus, "
        "else the profile's gpus_per_node), else train.procs_per_node."
    )
    for cls, name in ((config.TrainConfig, "procs_per_node"), (config.StageResources, "tasks_per_node")):
        assert precedence in " ".join(reference.field_docs(cls)[name].split()), name


def test_overlapping_knobs_name_each_other():
    def doc(cls: type, name: str) -> str:
        return " ".join(reference.field_docs(cls)[name].split())

    verify, merge = doc(config.VerifyConfig, "aggregation"), doc(config.MergeConfig, "aggregation")
    assert "merge.aggregation decides who is kept" in verify and "not verify.aggregation" in merge
    assert "eval tasks use it too" in doc(config.GenerateConfig, "chunk_size")
    assert "generate.chunk_size" in config.EvalConfig.__doc__
