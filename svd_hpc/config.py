"""Typed run configuration: YAML plus dotted overrides, validated before anything runs.

Every section is a small dataclass; a field's comment is its documentation. Loading rejects
unknown keys (naming the valid ones at that level), wrong types and impossible values with one
sentence that names the file and the key, as a ConfigError (exit code 2 at the CLI).
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

PACKAGE_CONFIGS = Path(__file__).resolve().parent.parent / "configs"
STAGE_NAMES = ("eval_base", "generate", "verify", "merge", "train", "eval_trained", "report")
VERIFY_STAGES = ("cycle", "factuality", "correctness")


class ConfigError(ValueError):
    """A user-fixable problem with the configuration (reported in one sentence, exit code 2)."""


# ----------------------------------------------------------------------------- cluster


@dataclass
class ClusterProfile:
    """What a site looks like: defaults for every job, overridden per stage in `resources`."""

    name: str = "local"
    partition: str | None = None  # GPU partition for generate/verify/train/eval
    cpu_partition: str | None = None  # partition for merge and report (CPU-only stages)
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    exclude: str | None = None  # nodes never to use, e.g. "node[01-03]"
    gpus_per_node: int = 0  # 0 on CPU clusters
    cpus_per_task: int = 1
    mem: str | None = None  # e.g. "64G"; None leaves the site default
    time: str = "01:00:00"
    setup: list[str] = field(default_factory=list)  # lines run before each task: module load, conda activate
    command_prefix: str | None = None  # e.g. "apptainer exec --nv image.sif"
    python: str | None = None  # interpreter on the compute nodes; default: the launcher's own
    mail_user: str | None = None
    mail_type: str | None = None  # e.g. "END,FAIL"
    max_array_size: int | None = None  # None: read MaxArraySize from `scontrol show config`
    requeue_cap: int = 3  # a preempted task is requeued at most this many times
    signal_seconds: int = 120  # warning signal (USR2) this many seconds before the time limit


@dataclass
class StageResources:
    """Per-stage overrides of the cluster profile; None keeps the profile's value."""

    partition: str | None = None
    gpus: int | None = None  # GPUs per task (tensor parallel size for vLLM stages)
    cpus: int | None = None
    mem: str | None = None
    time: str | None = None
    nodes: int = 1  # train only: number of nodes
    tasks_per_node: int | None = None  # train: processes per node (default: GPUs per node, else 1)
    array_parallelism: int | None = None  # at most this many array tasks at once
    preemptible: bool = False  # adds --requeue and the warning signal


# ----------------------------------------------------------------------------- method


@dataclass
class ModelConfig:
    """The base model: a hub id, a local directory, or `builtin:tiny-qwen3` / `builtin:smollm2`."""

    path: str = "builtin:tiny-qwen3"
    revision: str | None = None
    thinking: Literal["auto", "on", "off"] = (
        "auto"  # chat template enable_thinking; auto = on when the template knows it
    )
    dtype: str = "auto"  # "auto" = bfloat16 on GPU, float32 on CPU
    tensor_parallel_size: int = 1
    max_model_len: int = 4096
    gpu_memory_utilization: float = 0.9
    seed: int = 0
    enable_prefix_caching: bool = True
    block_size: int | None = None  # KV block size; 32 shares more judge prefix on CPU
    cpu_kvcache_gib: int = 1  # VLLM_CPU_KVCACHE_SPACE on CPU machines
    max_num_seqs: int | None = None  # sequences decoded at once; None keeps vLLM's default
    # Each request samples with its own seed (from model.seed and the item's identity), so a
    # resumed task reproduces an uninterrupted one exactly. It costs speed on GPUs: vLLM then
    # samples seeded requests one by one in Python instead of in FlashInfer's batched kernel.
    # false: one engine-wide seed; a task is still reproducible when run uninterrupted with the
    # same batch, but a resumed (or differently batched) task samples different text.
    per_request_seeds: bool = True
    # "auto": sampling settings a stage leaves unset (null) come from the model's own
    # generation_config.json (Qwen3: top_k 20, top_p 0.95, ...); "vllm": vLLM's neutral defaults.
    generation_config: Literal["auto", "vllm"] = "auto"
    # An engine that finishes no step for this long (a hung GPU, NCCL, or a dead engine process)
    # ends its task with exit code 70 and one log line, so requeue or `resume` takes over
    # instead of the allocation idling until its time limit. 0 turns the watchdog off.
    stall_timeout_s: float = 1800.0


@dataclass
class SeedsConfig:
    """Unlabeled seed questions, split into `shards` slices at launch."""

    path: str = "data/demo_seeds.jsonl"  # JSONL, parquet, a local HF dataset dir, or a hub id
    format: Literal["auto", "jsonl", "parquet", "hf"] = "auto"
    hf_config: str | None = None
    revision: str | None = None  # hub id only: branch, tag or commit; the launch pins it to a commit
    split: str = "train"
    question_field: str = "question"
    id_field: str | None = None
    domain_field: str | None = None
    domain: Literal["math", "science", "code"] = "math"  # used when no domain_field
    limit: int | None = None  # keep the first `limit` questions
    shards: int = 1


@dataclass
class GenerateConfig:
    n: int = 8
    # sampling: null leaves a setting to the model's generation_config (see model.generation_config)
    temperature: float | None = 0.8
    top_p: float | None = 0.95
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    max_tokens: int = 32768
    stop: list[str] = field(default_factory=list)
    require_think: Literal["auto", "on", "off"] = "auto"  # demand a closed think block; auto follows the model
    # demand the domain's answer format (\boxed{}, a code block) before judging; small instruct
    # models that ignore the format instruction need it off
    format_filter: bool = True
    chunk_size: int = 64  # questions per checkpointed chunk within a shard


@dataclass
class VerifyConfig:
    stages: list[str] = field(default_factory=lambda: list(VERIFY_STAGES))
    votes: int = 5
    temperature: float | None = 0.6  # sampling knobs as in generate
    top_p: float | None = 0.95
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    max_tokens: int = 32768
    cycle_inferences: int = 1
    aggregation: Literal["unanimous", "majority", "k_of_v"] = "unanimous"
    k: int | None = None  # for k_of_v
    keep_judge_text: bool = False
    # Text that opens every judge reply, e.g. "[[": the judge's first tokens are then its verdict.
    # For small models that never reach the verdict format on their own; it skips their reasoning.
    verdict_prefix: str = ""
    # Stop strings of judge replies (not of inferred questions), kept in the text: with
    # verdict_prefix "[[", judge_stop ["]]"] ends each reply once its verdict is out.
    judge_stop: list[str] = field(default_factory=list)
    # How a vote is read: "authors" (evalchemy ttc_utils: the whole reply, thinking included, any
    # case) or "strict" (only after the judge's thinking, capital Y/N as bare letters).
    verdict_rule: Literal["authors", "strict"] = "authors"
    # The inferred question kept from a cycle_infer reply: "first_line" after the thinking (the
    # authors') or "full" (all text after the thinking, for questions that span several lines).
    inferred_question: Literal["first_line", "full"] = "first_line"
    chunk_size: int = 256  # judge requests (one candidate's votes of one stage) per checkpointed chunk


@dataclass
class MergeConfig:
    selection: Literal["first-valid", "all-valid"] = "first-valid"
    max_per_question: int | None = None
    aggregation: Literal["unanimous", "majority", "k_of_v"] = "unanimous"
    k: int | None = None
    disabled_stages: list[str] = field(default_factory=list)  # ablations: stages whose votes are ignored
    validation_fraction: float = 0.0
    allow_missing: bool = False  # proceed without missing verify shards (recorded in stats.json)


@dataclass
class TrainConfig:
    enabled: bool = True
    model: str | None = None  # default: the run's base model
    model_revision: str | None = None  # train.model on the hub: branch, tag or commit; pinned at launch
    steps: int = 2000
    global_batch: int = 64  # sequences per optimiser step
    micro_batch: int = 1  # packed sequences per process per forward
    lr: float = 3e-5
    warmup_ratio: float = 0.05
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    # Levanter's schedule (the authors'): warmup, then the peak held, then cosine over this
    # fraction of the steps. None: cosine over every step after warmup.
    decay_ratio: float | None = 0.9
    # Weight decay on embedding tables too (False, as Levanter: only on weight matrices of layers).
    decay_embeddings: bool = False
    max_seq_len: int = 32768
    overlong: Literal["truncate", "drop"] = "drop"
    seed: int = 42
    checkpoint_every: int = 200
    # recompute each decoder layer in backward; default (None): on from ACTIVATION_CHECKPOINTING_FROM
    # tokens of max_seq_len (svd_hpc/train/train.py says why); true/false wins over the default
    activation_checkpointing: bool | None = None
    procs_per_node: int = 1  # local scheduler / CPU: torchrun --nproc_per_node


@dataclass
class BenchmarkSpec:
    name: str = ""
    preset: str | None = None  # aime26, hmmt_feb_2025, gpqa_diamond, hle_mc, lcb_v5, lcb_v6
    path: str | None = None  # local JSONL/parquet, local HF dir, or hub id
    hf_config: str | None = None
    revision: str | None = None  # of the hub copy: branch, tag or commit; the launch pins it to a commit
    split: str = "test"
    question_field: str = "question"
    answer_field: str = "answer"
    id_field: str | None = None
    domain: Literal["math", "science", "code"] = "math"
    # math_last_number: math, but an answer without \boxed{} is read as its last number (weak models)
    grader: Literal["math", "math_last_number", "choice", "code"] = "math"
    limit: int | None = None
    # Left at None, these take the preset's value (docs/PROTOCOL.md), else the value after "else".
    # The eval prompt: the benchmark's own (the authors' evalchemy), or sft = our generation prompt. Else sft.
    prompt: Literal["sft", "aime", "hmmt", "gpqa", "hle", "lcb"] | None = None
    # This benchmark's eval seeds (one sample per question each). Else eval.seeds, else the preset's
    # repeats as seeds 0..R-1, else [0].
    seeds: list[int] | None = None
    # Choice options: seeded = shuffled per (eval seed, question); fixed42 = the authors' GPQA order
    # (Random(42) per question: the correct option always at D); original = the dataset's order. Else seeded.
    option_order: Literal["seeded", "fixed42", "original"] | None = None
    # LiveCodeBench: keep problems whose contest month ("YYYY-MM") lies in [contest_from, contest_to].
    contest_from: str | None = None
    contest_to: str | None = None


@dataclass
class EvalConfig:
    benchmarks: list[BenchmarkSpec] = field(default_factory=list)
    # Seeds of every benchmark (a benchmark's own `seeds` wins); None: each benchmark repeats as its
    # preset does (the authors': AIME26 1, HMMT 10, GPQA/HLE/LCB 3), a benchmark without preset once.
    seeds: list[int] | None = None
    temperature: float | None = 0.7  # sampling knobs as in generate; the authors' T 0.7, top_p 1.0
    top_p: float | None = 1.0
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    max_tokens: int = 32768
    uq_ttc: bool = False  # also evaluate the test-time baseline on the base model
    uq_ttc_candidates: int = 8
    # UQ-TTC as the authors run it (evalchemy ttc_utils.uq_filter_candidates): every candidate goes
    # to the judges (no static filter), and the judges see the raw question, not the presented one
    uq_ttc_filter: bool = False
    uq_ttc_judge_question: Literal["raw", "presented"] = "raw"
    code_timeout_s: float = 6.0
    # Code grading: private = the private tests only (the authors'; all = public and private), and
    # total = one budget of (code_timeout_s + 1) × tests + 5 s for all of a problem's tests (the
    # authors' lcb_run; per_test = code_timeout_s for each test).
    code_tests: Literal["private", "all"] = "private"
    code_time_limit: Literal["total", "per_test"] = "total"
    # Run model-written code even where nothing isolates it (no namespaces, bubblewrap or
    # apptainer): it then has network access and our file permissions.
    allow_unisolated_code: bool = False


@dataclass
class RunConfig:
    name: str = "run"
    run_root: str = "runs"
    cluster: str = "local"  # "local" or a profile name in configs/clusters/ or a YAML path
    model: ModelConfig = field(default_factory=ModelConfig)
    seeds: SeedsConfig = field(default_factory=SeedsConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    verify: VerifyConfig = field(default_factory=VerifyConfig)
    merge: MergeConfig = field(default_factory=MergeConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    resources: dict[str, StageResources] = field(default_factory=dict)
    # Filled in at load time from `cluster`; not a user key in the run config itself.
    profile: ClusterProfile = field(default_factory=ClusterProfile)

    @property
    def is_local(self) -> bool:
        return self.cluster == "local"

    def stage_resources(self, stage: str) -> StageResources:
        return self.resources.get(stage, StageResources())


# ----------------------------------------------------------------------------- loading


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
    if tp in (int, float, str, bool):
        if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
            raise ConfigError(f"{source}: {where} must be {_type_name(tp)}, got {value!r} ({type(value).__name__}).")
        return value
    return value


def build(cls: type, data: dict, source: str = "<config>", where: str = "") -> Any:
    """Build dataclass `cls` from a mapping, rejecting unknown keys and listing the valid ones."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if not (cls is RunConfig and f.name == "profile")]
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in names:
            raise ConfigError(
                f"{source}: unknown key '{path}'; valid "
                f"keys{' under ' + repr(where) if where else ''}: {', '.join(names)}."
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


def _check_time(value: str, where: str, source: str) -> None:
    import re

    if not re.fullmatch(r"(\d+-)?\d{1,2}(:\d{2}){0,2}|\d+", value):
        raise ConfigError(f"{source}: {where} '{value}' is not a SLURM time (use D-HH:MM:SS, HH:MM:SS or minutes).")


def validate(cfg: RunConfig, source: str) -> None:
    """Cross-field checks that types alone cannot express."""
    for stage in cfg.resources:
        if stage not in STAGE_NAMES:
            raise ConfigError(f"{source}: unknown stage 'resources.{stage}'; stages are: {', '.join(STAGE_NAMES)}.")
    positive = {
        "seeds.shards": cfg.seeds.shards,
        "generate.n": cfg.generate.n,
        "generate.max_tokens": cfg.generate.max_tokens,
        "generate.chunk_size": cfg.generate.chunk_size,
        "verify.votes": cfg.verify.votes,
        "verify.cycle_inferences": cfg.verify.cycle_inferences,
        "verify.chunk_size": cfg.verify.chunk_size,
        "train.steps": cfg.train.steps,
        "train.global_batch": cfg.train.global_batch,
        "train.micro_batch": cfg.train.micro_batch,
        "train.max_seq_len": cfg.train.max_seq_len,
        "train.procs_per_node": cfg.train.procs_per_node,
        "model.tensor_parallel_size": cfg.model.tensor_parallel_size,
        "model.max_model_len": cfg.model.max_model_len,
    }
    for key, value in positive.items():
        if value < 1:
            raise ConfigError(f"{source}: {key} must be at least 1, got {value}.")
    for stage in cfg.verify.stages:
        if stage not in VERIFY_STAGES:
            raise ConfigError(f"{source}: verify.stages has '{stage}'; valid stages: {', '.join(VERIFY_STAGES)}.")
    for section in (cfg.verify, cfg.merge):
        name = "verify" if section is cfg.verify else "merge"
        if section.aggregation == "k_of_v":
            if section.k is None or not 1 <= section.k <= cfg.verify.votes:
                raise ConfigError(
                    f"{source}: {name}.k must be between 1 and verify.votes ({cfg.verify.votes}) for k_of_v."
                )
    for stage in cfg.merge.disabled_stages:
        if stage not in VERIFY_STAGES:
            raise ConfigError(
                f"{source}: merge.disabled_stages has '{stage}'; valid stages: {', '.join(VERIFY_STAGES)}."
            )
    if not 0.0 <= cfg.merge.validation_fraction < 1.0:
        raise ConfigError(f"{source}: merge.validation_fraction must be in [0, 1).")
    if not 0.0 < cfg.model.gpu_memory_utilization <= 1.0:
        raise ConfigError(f"{source}: model.gpu_memory_utilization must be in (0, 1].")
    if not 0.0 <= cfg.train.warmup_ratio < 1.0 or not 0.0 <= cfg.train.min_lr_ratio <= 1.0:
        raise ConfigError(f"{source}: train.warmup_ratio must be in [0, 1) and train.min_lr_ratio in [0, 1].")
    decay = cfg.train.decay_ratio
    if decay is not None and not (0.0 < decay <= 1.0 and cfg.train.warmup_ratio + decay <= 1.0):
        raise ConfigError(
            f"{source}: train.decay_ratio must be in (0, 1] with train.warmup_ratio + train.decay_ratio <= 1, "
            f"got {decay} (warmup_ratio {cfg.train.warmup_ratio}); or null to decay over every step after warmup."
        )
    if len(cfg.train.betas) != 2:
        raise ConfigError(f"{source}: train.betas must be two numbers, e.g. [0.9, 0.999].")
    names = [b.name for b in cfg.eval.benchmarks]
    if any(not n for n in names) or len(set(names)) != len(names):
        raise ConfigError(f"{source}: every eval.benchmarks entry needs a unique 'name'.")
    if cfg.eval.seeds is not None and not cfg.eval.seeds:
        raise ConfigError(f"{source}: eval.seeds must list at least one seed, or be left out (each preset's repeats).")
    for bench in cfg.eval.benchmarks:
        if bench.seeds is not None and not bench.seeds:
            raise ConfigError(
                f"{source}: eval.benchmarks '{bench.name}': seeds must list at least one seed, or be left out."
            )
        for key in ("contest_from", "contest_to"):
            month = getattr(bench, key)
            if month is not None and not re.fullmatch(r"\d{4}-(0[1-9]|1[0-2])", month):
                raise ConfigError(
                    f"{source}: eval.benchmarks '{bench.name}': {key} is {month!r}; write a month as YYYY-MM."
                )
    for stage, res in cfg.resources.items():
        if res.time:
            _check_time(res.time, f"resources.{stage}.time", source)
        if res.nodes < 1 or (res.nodes > 1 and stage != "train"):
            raise ConfigError(f"{source}: resources.{stage}.nodes must be 1 (only train runs on several nodes).")
        if res.array_parallelism is not None and res.array_parallelism < 1:
            raise ConfigError(f"{source}: resources.{stage}.array_parallelism must be at least 1.")
    _check_time(cfg.profile.time, "time", f"cluster profile '{cfg.profile.name}'")
    if not cfg.is_local:
        for stage in ("generate", "verify", "eval_base", "eval_trained"):
            gpus = cfg.stage_resources(stage).gpus
            gpus = cfg.profile.gpus_per_node if gpus is None else gpus
            if gpus and cfg.model.tensor_parallel_size > gpus:
                raise ConfigError(
                    f"{source}: model.tensor_parallel_size={cfg.model.tensor_parallel_size} needs that many GPUs, "
                    f"but resources.{stage} gets {gpus}; raise "
                    f"resources.{stage}.gpus or lower the tensor parallel size."
                )
            if cfg.profile.gpus_per_node and gpus and gpus > cfg.profile.gpus_per_node:
                raise ConfigError(
                    f"{source}: resources.{stage}.gpus={gpus} exceeds the {cfg.profile.gpus_per_node} GPUs per node "
                    f"of cluster profile '{cfg.profile.name}'."
                )
    total = cfg.stage_resources("train").nodes * train_procs_per_node(cfg)
    if cfg.train.global_batch % (total * cfg.train.micro_batch):
        raise ConfigError(
            f"{source}: train.global_batch={cfg.train.global_batch} is not divisible by world size {total} × "
            f"train.micro_batch {cfg.train.micro_batch}; choose a multiple of {total * cfg.train.micro_batch}."
        )


def train_procs_per_node(cfg: RunConfig) -> int:
    """Training processes per node: one per GPU on GPU clusters, else train.procs_per_node."""
    res = cfg.stage_resources("train")
    if res.tasks_per_node:
        return res.tasks_per_node
    gpus = res.gpus if res.gpus is not None else cfg.profile.gpus_per_node
    return gpus if gpus else cfg.train.procs_per_node


def load(path: str | Path, overrides: list[str] = ()) -> RunConfig:
    """Read, override and validate a run config; relative paths in it resolve against its folder."""
    path = Path(path)
    data = _read_yaml(path, "config")
    for override in overrides:
        apply_override(data, override)
    cfg = build(RunConfig, data, str(path))
    if cfg.cluster != "local":
        profile_path = find_profile(cfg.cluster, path.resolve().parent)
        cfg.profile = build(ClusterProfile, _read_yaml(profile_path, "cluster profile"), str(profile_path))
    validate(cfg, str(path))
    return cfg


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(data: dict) -> RunConfig:
    """Rebuild a resolved config (as saved in a run directory), profile included."""
    data = dict(data)
    profile = data.pop("profile", {})
    cfg = build(RunConfig, data, "config.yaml")
    cfg.profile = build(ClusterProfile, profile, "config.yaml (profile)")
    return cfg
