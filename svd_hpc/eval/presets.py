"""Which benchmark a spec names: the paper's presets, and a spec with its preset applied (`resolve`).

A preset fills every field left at its default: where its rows are, its eval prompt, its repeats
(eval seeds), its option order and, for LiveCodeBench, its contest window — each as the authors'
evalchemy has it (docs/PROTOCOL.md).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..config import BenchmarkSpec, ConfigError, EvalConfig
from ..config.evaluation import GRADER_KINDS


@dataclass(frozen=True)
class Preset:
    hub_id: str | None
    split: str
    question_field: str
    answer_field: str
    id_field: str | None
    domain: str
    grader: str
    layout: str = "plain"  # plain | gpqa | hle | lcb
    hf_config: str | None = None  # lcb: the version tag
    access: str = ""  # what the hub needs beyond a connection
    # as the authors' evalchemy eval/chat_benchmarks/<benchmark>/eval_instruct.py has them
    prompt: str = "sft"  # the eval prompt (eval/prompts.py)
    repeats: int = 1  # n_repeat: samples per question, one per eval seed
    option_order: str = "seeded"
    contest_from: str | None = None  # lcb: filter_by_contest_date's months
    contest_to: str | None = None


_LCB = {
    "hub_id": "livecodebench/code_generation_lite",
    "split": "test",
    "question_field": "question_content",
    "answer_field": "public_test_cases",
    "id_field": "question_id",
    "domain": "code",
    "grader": "code",
    "layout": "lcb",
    "prompt": "lcb",
    "repeats": 3,
}
_GATED = "it is gated: accept its terms on huggingface.co and export HF_TOKEN"
PRESETS = {
    "aime26": Preset(
        "MathArena/aime_2026", "train", "problem", "answer", "problem_idx", "math", "math", prompt="aime", repeats=1
    ),
    "hmmt_feb_2025": Preset(
        "MathArena/hmmt_feb_2025",
        "train",
        "problem",
        "answer",
        "problem_idx",
        "math",
        "math",
        prompt="hmmt",
        repeats=10,
    ),
    # the authors' fixed42 order puts the correct option at D every time: ours shuffles per (seed, question)
    "gpqa_diamond": Preset(
        "Idavidrein/gpqa",
        "train",
        "Question",
        "Correct Answer",
        "Record ID",
        "science",
        "choice",
        layout="gpqa",
        hf_config="gpqa_diamond",
        access=_GATED,
        prompt="gpqa",
        repeats=3,
    ),
    "hle_mc": Preset(
        "cais/hle",
        "test",
        "question",
        "answer",
        "id",
        "science",
        "choice",
        layout="hle",
        access=_GATED,
        prompt="hle",
        repeats=3,
        option_order="original",
    ),
    # version tags as LiveCodeBench names them: release_vN = releases 1..N (test.jsonl ... testN.jsonl),
    # vN = only the problems added in release N, vA_vB = releases A..B; the authors take a release
    # and keep the problems of a contest window
    "lcb_v5": Preset(**_LCB, hf_config="release_v5", contest_from="2024-08", contest_to="2025-01"),
    "lcb_v6": Preset(**_LCB, hf_config="release_v6", contest_from="2025-01", contest_to="2025-04"),
}
_FILLED = ("hf_config", "split", "question_field", "answer_field", "id_field", "domain", "grader")
_UNSET_IS_NONE = ("prompt", "option_order", "contest_from", "contest_to")  # spec None: the preset's
_DEFAULTS = BenchmarkSpec()


@dataclass(frozen=True)
class Source(Preset):
    """A benchmark spec with its preset applied: where to read it and how."""

    name: str = ""
    path: str | None = None
    limit: int | None = None
    revision: str | None = None  # of the hub copy; a commit once the launch has staged it


def resolve(spec: BenchmarkSpec) -> Source:
    """Apply the preset (fields left at their defaults take the preset's); ConfigError if unknown."""
    values = {f: getattr(spec, f) for f in _FILLED}
    preset = Preset(None, "", "", "", None, "", "")  # no preset: the Preset defaults (sft prompt, one repeat)
    hub_id = None
    if spec.preset:
        if spec.preset not in PRESETS:
            raise ConfigError(
                f"eval.benchmarks '{spec.name}': unknown preset '{spec.preset}'; presets: {', '.join(PRESETS)}."
            )
        preset = PRESETS[spec.preset]
        for f in _FILLED:
            if values[f] == getattr(_DEFAULTS, f):
                values[f] = getattr(preset, f)
        hub_id = preset.hub_id
        if GRADER_KINDS[values["grader"]] != GRADER_KINDS[preset.grader]:
            readers = ", ".join(g for g, kind in GRADER_KINDS.items() if kind == GRADER_KINDS[preset.grader])
            raise ConfigError(
                f"eval.benchmarks '{spec.name}': grader '{values['grader']}' cannot read {spec.preset}'s "
                f"answers; choose one of {readers}."
            )
    elif not spec.path:
        raise ConfigError(f"eval.benchmarks '{spec.name}' needs a preset ({', '.join(PRESETS)}) or a path.")
    elif _looks_like_hub_id(spec.path):
        hub_id = spec.path
    for f in _UNSET_IS_NONE:
        values[f] = getattr(preset, f) if getattr(spec, f) is None else getattr(spec, f)
    return Source(
        name=spec.name,
        path=spec.path,
        hub_id=hub_id,
        layout=preset.layout,
        access=preset.access,
        repeats=preset.repeats,
        limit=spec.limit,
        revision=spec.revision,
        **values,
    )


def seeds_of(eval_cfg: EvalConfig, spec: BenchmarkSpec) -> list[int]:
    """A benchmark's eval seeds: its own, else eval.seeds, else its preset's repeats as seeds 0..R-1."""
    if spec.seeds is not None:
        return list(spec.seeds)
    if eval_cfg.seeds is not None:
        return list(eval_cfg.seeds)
    return list(range(PRESETS[spec.preset].repeats if spec.preset in PRESETS else 1))


def _looks_like_hub_id(path: str) -> bool:
    return (
        not Path(path).expanduser().exists()
        and re.fullmatch(r"[\w.-]+/[\w.-]+", path) is not None
        and not Path(path).suffix
    )
