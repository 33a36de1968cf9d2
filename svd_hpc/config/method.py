"""The method's sections: the model, the seeds, the prompts, and the generate, verify, merge and train stages."""

from __future__ import annotations

import dataclasses
import importlib.util
from dataclasses import dataclass, field
from typing import Literal, get_args

from .checks import VERIFY_STAGES, ConfigError, check_at_least_one, check_verify_stages, check_vote_rule
from .evaluation import SelectConfig

Domain = Literal["math", "science", "code"]
DOMAINS: tuple[str, ...] = get_args(Domain)  # the paper's three: each has its prompt, filter and benchmarks


@dataclass
class ModelConfig:
    """The base model and how vLLM serves it."""

    path: str = "builtin:tiny-qwen3"
    """A hub id, a local directory, or `builtin:tiny-qwen3` / `builtin:smollm2`."""
    revision: str | None = None
    """Hub id only: branch, tag or commit; the launch pins it to a commit."""
    thinking: Literal["auto", "on", "off"] = "auto"
    """The chat template's enable_thinking; auto: on when the template knows it."""
    dtype: str = "auto"
    """Weights' dtype; auto: bfloat16 on GPU, float32 on CPU."""
    tensor_parallel_size: int = 1
    """GPUs one vLLM engine spans; each vLLM stage needs at least this many GPUs per task."""
    max_model_len: int = 4096
    """Longest prompt plus reply, in tokens, the engine accepts."""
    gpu_memory_utilization: float = 0.9
    """Fraction of each GPU's memory vLLM may take, in (0, 1]."""
    seed: int = 0
    """Sampling seed; each request's seed derives from it and the item's identity."""
    enable_prefix_caching: bool = True
    """Share the KV cache of common prompt prefixes (the judges' votes share a prompt)."""
    block_size: int | None = None
    """KV cache block size; null: vLLM's. 32 shares more judge prefix on CPU."""
    cpu_kvcache_gib: int = 1
    """KV cache size on CPU machines (VLLM_CPU_KVCACHE_SPACE), in GiB."""
    max_num_seqs: int | None = None
    """Sequences decoded at once; null keeps vLLM's default."""
    per_request_seeds: bool = True
    """Sample each request with its own seed, so a resumed task reproduces an uninterrupted one exactly.

    It costs speed on GPUs: vLLM then samples seeded requests one by one in Python instead of in
    FlashInfer's batched kernel. false: one engine-wide seed; a task is still reproducible when run
    uninterrupted with the same batch, but a resumed (or differently batched) task samples different text.
    """
    generation_config: Literal["auto", "vllm"] = "auto"
    """Where sampling settings a stage leaves null come from.

    auto: the model's own generation_config.json (Qwen3: top_k 20, top_p 0.95, ...); vllm: vLLM's
    neutral defaults.
    """
    stall_timeout_s: float = 1800.0
    """Seconds without a finished engine step before the task ends with exit code 70; 0 turns this off.

    A hung GPU, NCCL or a dead engine process then ends the task with one log line, so requeue or
    `resume` takes over instead of the allocation idling until its time limit.
    """

    def check(self, source: str) -> None:
        check_at_least_one(source, "model", self, "tensor_parallel_size", "max_model_len")
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ConfigError(f"{source}: model.gpu_memory_utilization must be in (0, 1].")


@dataclass
class SeedSource:
    """One source of seed questions; an entry of seeds.sources, or the seeds section itself without them."""

    path: str = "data/demo_seeds.jsonl"
    """JSONL, parquet, a local HF dataset directory, or a hub id."""
    format: Literal["auto", "jsonl", "parquet", "hf"] = "auto"
    """How to read `path`; auto: from its suffix, a directory or a hub id."""
    hf_config: str | None = None
    """HF dataset config (subset) name."""
    revision: str | None = None
    """Hub id only: branch, tag or commit; the launch pins it to a commit."""
    split: str = "train"
    """HF dataset split."""
    question_field: str = "question"
    """Field holding the question text; a dotted path reads into nested rows.

    `conversations.0.value`: the `value` of the first entry of the `conversations` list (OpenThoughts3's
    user turn). Each step is a list position or a key; a name that is itself a column is that column.
    The other field keys (answer_field, id_field, domain_field, filter_field) read paths alike.
    """
    filter_field: str | None = None
    """Field a row must match to be read as a seed (a dotted path as question_field); null: every row.

    With filter_value: keep the rows whose field equals it (OpenThoughts3-1.2M mixes domains:
    `filter_field: domain`, `filter_value: math`). The rows dropped are counted in the seed stats
    (`filtered_out`), before duplicates and limits.
    """
    filter_value: str | None = None
    """The value filter_field must equal, compared as text (a number as written, a flag as true/false)."""
    answer_field: str | None = None
    """Field holding the question's known answer; null: the seeds carry none (the method needs none).

    Kept in the seed shards beside the question and never shown to the model (no prompt reads it):
    the report grades each candidate against it to say how often the judges kept right answers and
    rejected wrong ones (the "How good was self-verification" table). A row without it counts as
    unknown there.
    """
    id_field: str | None = None
    """Field holding a question id; null: a hash of the question text."""
    domain_field: str | None = None
    """Field holding each question's domain (math, science, code); null: `domain` for all."""
    domain: Domain = "math"
    """Domain of every question when there is no domain_field.

    It picks the question's generation instruction, its static filter (math \\boxed{}, code a
    fenced block) and its column in the merge funnel and the report.
    """
    limit: int | None = None
    """Keep the first `limit` questions of this source (after dropping duplicates); null: all."""


@dataclass
class SeedsConfig(SeedSource):
    """Unlabeled seed questions, split into `shards` slices at launch.

    One source is described by the keys path ... limit here; several (one per domain, say) by
    `sources`, each entry with those keys.
    """

    limit: int | None = None
    """Keep the first `limit` questions; null: all.

    With `sources`: the first `limit` of the combined, interleaved order, so each domain keeps its
    share (each source's own `limit` applies first).
    """
    sources: list[SeedSource] = field(default_factory=list)
    """Several seed sources read as one set, e.g. one per domain; empty: the keys above are the one source.

    A question found in two sources is kept once (the first source's copy); ids must not repeat
    across sources.
    """
    mix_domains: bool = True
    """Interleave domains so every shard holds each domain in its share of the questions; false: single-domain shards.

    true (default): shards of like composition take alike time (code and math answers run longer
    than science ones), which the status ETA and the pilot projection assume, and a lost or late
    shard costs every domain a little rather than one domain a lot. false: each domain gets its
    share of the shards (at least one, so seeds.shards must be at least the number of domains).
    """
    shards: int = 1
    """Slices the questions are split into: one generate and one verify array task each."""
    answer_grader: Literal["math", "math_last_number"] = "math"
    """How candidates are graded against the seeds' answer_field (every source), as the eval graders of these names.

    math: the last \\boxed{} of the candidate's final answer, by equivalence; math_last_number: the
    same, but an answer without \\boxed{} is read as its last number (for models that seldom box).
    """
    dedup: Literal["normalised", "exact"] = "normalised"
    """Which seed questions count as one: equal up to case and whitespace, or equal text only (the authors':
    one row per md5 of the seed text)."""

    def source_list(self) -> list[SeedSource]:
        """The sources to read: `sources`, else this section itself."""
        return list(self.sources) or [self]

    def check(self, source: str) -> None:
        check_at_least_one(source, "seeds", self, "shards")
        for i, entry in enumerate(self.source_list()):
            key = f"seeds.sources[{i}]" if self.sources else "seeds"
            if (entry.filter_field is None) != (entry.filter_value is None):
                raise ConfigError(
                    f"{source}: {key}.filter_field and {key}.filter_value go together; set both "
                    "(keep the rows whose field equals the value) or neither."
                )
        if not self.sources:
            return
        defaults = SeedSource()
        for f in dataclasses.fields(SeedSource):
            if f.name != "limit" and getattr(self, f.name) != getattr(defaults, f.name):
                raise ConfigError(
                    f"{source}: seeds.{f.name} is set beside seeds.sources, which replaces it; "
                    f"move it into each entry of seeds.sources (or drop seeds.sources)."
                )


PromptStyle = Literal["ours", "authors"]


@dataclass
class PromptsConfig:
    """The wording of the generation and judge prompts."""

    style: PromptStyle = "ours"
    """ours (the project's words) or authors (their published text, verbatim, where it is public).

    authors covers the four judge prompts and the math generation prompt; science and code
    generation keep ours, as the authors' are not public (docs/PROTOCOL.md).
    """


@dataclass
class GenerateConfig:
    """Stage 1: sample candidate solutions to every seed question."""

    n: int = 8
    """Candidate solutions sampled per question."""
    temperature: float | None = 0.8
    """Sampling temperature; null leaves it to the model's generation_config (see model.generation_config)."""
    top_p: float | None = 0.95
    """Nucleus sampling; null: as temperature."""
    top_k: int | None = None
    """Top-k sampling; null: as temperature."""
    min_p: float | None = None
    """Min-p sampling; null: as temperature."""
    repetition_penalty: float | None = None
    """Repetition penalty; null: as temperature."""
    max_tokens: int = 32768
    """Longest reply, in tokens."""
    stop: list[str] = field(default_factory=list)
    """Stop strings."""
    require_think: Literal["auto", "on", "off"] = "auto"
    """Demand a closed think block; auto follows the model."""
    format_filter: bool = True
    """Demand the domain's answer format (\\boxed{}, a code block) before judging.

    Small instruct models that ignore the format instruction need it off.
    """
    chunk_size: int = 64
    """Questions per checkpointed chunk within a shard; eval tasks use it too (they have no own key).

    An eval task saves its answers every generate.chunk_size questions, so a killed task redoes at
    most one chunk.
    """

    def check(self, source: str) -> None:
        check_at_least_one(source, "generate", self, "n", "max_tokens", "chunk_size")


@dataclass
class VerifyConfig:
    """Stage 2: the self-judging cascade; a candidate rejected at a stage goes no further."""

    stages: list[str] = field(default_factory=lambda: list(VERIFY_STAGES))
    """Judge stages in the order they run: cycle, factuality, correctness."""
    votes: int = 5
    """Judge votes per candidate and stage."""
    temperature: float | None = 0.6
    """Judges' sampling temperature; null: the model's generation_config."""
    top_p: float | None = 0.95
    """Judges' nucleus sampling; null: as temperature."""
    top_k: int | None = None
    """Judges' top-k sampling; null: as temperature."""
    min_p: float | None = None
    """Judges' min-p sampling; null: as temperature."""
    repetition_penalty: float | None = None
    """Judges' repetition penalty; null: as temperature."""
    max_tokens: int = 32768
    """Longest judge reply, in tokens."""
    cycle_inferences: int = 1
    """Questions inferred back from each candidate in the cycle stage; the cycle votes are spread over them.

    1: all votes compare the one inferred question (the authors' code); `votes`: one vote each (the paper).
    """
    aggregation: Literal["unanimous", "majority", "k_of_v"] = "unanimous"
    """Votes a candidate needs at a stage to reach the next judge stage: all, more than half, or k.

    It only decides who is judged further (a rejected candidate's later stages stay unjudged, and
    merge counts an unjudged enabled stage as failed); merge.aggregation decides who is kept.
    """
    k: int | None = None
    """Yes votes needed with k_of_v, between 1 and `votes`."""
    keep_judge_text: bool = False
    """Store the judges' raw replies in the verify shards (large)."""
    verdict_prefix: str = ""
    """Text that opens every judge reply, e.g. "[[": the judge's first tokens are then its verdict.

    For small models that never reach the verdict format on their own; it skips their reasoning.
    """
    judge_stop: list[str] = field(default_factory=list)
    """Stop strings of judge replies (not of inferred questions), kept in the text.

    With verdict_prefix "[[", judge_stop ["]]"] ends each reply once its verdict is out.
    """
    verdict_rule: Literal["authors", "strict"] = "authors"
    """How a vote is read: authors (the whole reply, thinking included, any case) or strict.

    authors follows evalchemy ttc_utils; strict reads only after the judge's thinking, capital Y/N
    as bare letters.
    """
    inferred_question: Literal["first_line", "full"] = "first_line"
    """The inferred question kept from a cycle reply: its first line after the thinking (the authors') or all of it."""
    chunk_size: int = 256
    """Judge requests (one candidate's votes of one stage) per checkpointed chunk."""

    def check(self, source: str) -> None:
        check_at_least_one(source, "verify", self, "votes", "cycle_inferences", "chunk_size")
        check_verify_stages(self.stages, "verify.stages", source)
        check_vote_rule("verify", self.aggregation, self.k, self.votes, source)


@dataclass
class MergeConfig:
    """Stage 3: select the verified candidates into one SFT set."""

    selection: Literal["first-valid", "all-valid"] = "first-valid"
    """Per question: the first passing candidate, or every passing one."""
    max_per_question: int | None = None
    """At most this many candidates per question; null: 1 for first-valid, all for all-valid."""
    aggregation: Literal["unanimous", "majority", "k_of_v"] = "unanimous"
    """Votes a candidate needs in every enabled stage to be kept: all, more than half, or k.

    Applied to the votes verify recorded; this, not verify.aggregation, keeps or drops a candidate.
    A stage verify never reached (its rule rejected the candidate earlier) counts as failed.
    """
    k: int | None = None
    """Yes votes needed with k_of_v, between 1 and verify.votes."""
    disabled_stages: list[str] = field(default_factory=list)
    """Ablations: stages whose votes are ignored at merge."""
    validation_fraction: float = 0.0
    """Fraction of questions held out as a validation set (by question id hash), in [0, 1); the authors: none."""
    group_questions: bool = True
    """Seed questions equal up to case and whitespace form one group that supplies one pick; false: every
    question id picks on its own (the authors')."""
    dedup_solutions: bool = True
    """Among the picks, a solution equal to another up to whitespace is kept once; false: every pick stays
    (the authors')."""
    allow_missing: bool = False
    """Proceed without missing or corrupt verify shards (recorded in stats.json)."""
    domain_weights: dict[Domain, float] = field(default_factory=dict)
    """Share of each domain's kept rows that enters the SFT set, in [0, 1], e.g. {math: 1.0, code: 0.5}; unnamed: 1.

    A weight w keeps round(w × n) of the domain's n rows left after selection and dedup, chosen by a
    fixed hash of (question_id, candidate_index) (a seeded draw without replacement that no shard
    layout or re-run changes); the rest are counted as `weighted_out` in the funnel. Applied before
    the validation split.
    """

    def check(self, votes: int, source: str) -> None:
        """`votes` is verify.votes, the most a k_of_v rule can ask for."""
        check_vote_rule("merge", self.aggregation, self.k, votes, source)
        check_verify_stages(self.disabled_stages, "merge.disabled_stages", source)
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ConfigError(f"{source}: merge.validation_fraction must be in [0, 1).")
        for domain, weight in self.domain_weights.items():
            if domain not in DOMAINS or not 0.0 <= weight <= 1.0:
                raise ConfigError(
                    f"{source}: merge.domain_weights.{domain} is {weight}; name a domain "
                    f"({', '.join(DOMAINS)}) with a weight in [0, 1]."
                )


@dataclass
class TrainConfig:
    """Stage 4: supervised fine-tuning on the merged set (FSDP over every process)."""

    enabled: bool = True
    """Run train and eval_trained; false stops the chain after merge (and eval_base)."""
    model: str | None = None
    """Model to fine-tune; null: the run's base model (model.path)."""
    model_revision: str | None = None
    """train.model on the hub: branch, tag or commit; pinned at launch."""
    steps: int = 2000
    """Optimiser steps."""
    global_batch: int = 64
    """Sequences per optimiser step; a multiple of world size × micro_batch."""
    micro_batch: int = 1
    """Packed sequences per process per forward pass."""
    lr: float = 3e-5
    """Peak learning rate."""
    warmup_ratio: float = 0.05
    """Fraction of the steps with linear warmup, in [0, 1)."""
    min_lr_ratio: float = 0.1
    """Final learning rate as a fraction of lr, in [0, 1]."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    grad_clip: float = 1.0
    """Gradient norm clip."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    """AdamW betas, two numbers."""
    decay_ratio: float | None = 0.9
    """Fraction of the steps with cosine decay, after warmup and a held peak (Levanter's schedule, the authors').

    null: cosine over every step after warmup. warmup_ratio + decay_ratio must not exceed 1.
    """
    decay_embeddings: bool = False
    """Weight decay on embedding tables too (false, as Levanter: only on weight matrices of layers)."""
    max_seq_len: int = 32768
    """Longest packed sequence, in tokens."""
    overlong: Literal["truncate", "drop"] = "drop"
    """What happens to a conversation longer than max_seq_len."""
    seed: int = 42
    """Seed of the data packing order and of torch."""
    checkpoint_every: int = 200
    """Save a resumable checkpoint every this many steps (and on the preemption signal)."""
    activation_checkpointing: bool | None = None
    """Recompute each decoder layer in backward; null: on from ACTIVATION_CHECKPOINTING_FROM tokens of max_seq_len.

    svd_hpc/stages/train.py says why; true or false wins over the default.
    """
    shard: Literal["all", "node"] = "all"
    """Shard parameters, gradients and AdamW state over every process (all), or within each node only (node).

    node is hybrid sharding (HSDP): each node holds a full replica split over its GPUs, so the
    per-layer all-gathers and reduce-scatters stay on the node's links and one gradient all-reduce
    per step crosses nodes. Each GPU then holds 1/(GPUs per node) of that state instead of
    1/(all GPUs); the launch's memory check shows whether it fits.
    """
    procs_per_node: int = 1
    """Training processes per node (torchrun --nproc_per_node) where nothing else sets it.

    Precedence: resources.train.tasks_per_node, else one process per GPU (resources.train.gpus,
    else the profile's gpus_per_node), else train.procs_per_node. So it counts only without GPUs
    (the local scheduler, CPU clusters).
    """
    report_to: list[Literal["tensorboard", "wandb"]] = field(default_factory=list)
    """Experiment trackers of loss, lr, grad norm, tokens/s and padding efficiency per step, and eval pass@1.

    As transformers' Trainer: tensorboard writes to train/tensorboard (pip install tensorboard), wandb
    to a W&B run named after the run (pip install wandb). Empty: only train/metrics.jsonl.
    """
    wandb_project: str = "svd_hpc"
    """W&B project of the run."""
    wandb_mode: Literal["offline", "online"] = "offline"
    """offline (compute nodes often have no internet): `wandb sync` uploads it later; online needs `wandb login`."""
    select: SelectConfig = field(default_factory=SelectConfig)
    """Checkpoint selection on a held-out selection set (see train.select); off by default."""

    def check(self, source: str) -> None:
        positive = ("steps", "global_batch", "micro_batch", "max_seq_len", "procs_per_node")
        check_at_least_one(source, "train", self, *positive)
        if not 0.0 <= self.warmup_ratio < 1.0 or not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"{source}: train.warmup_ratio must be in [0, 1) and train.min_lr_ratio in [0, 1].")
        decay = self.decay_ratio
        if decay is not None and not (0.0 < decay <= 1.0 and self.warmup_ratio + decay <= 1.0):
            raise ConfigError(
                f"{source}: train.decay_ratio must be in (0, 1] with train.warmup_ratio + train.decay_ratio <= 1, "
                f"got {decay} (warmup_ratio {self.warmup_ratio}); or null to decay over every step after warmup."
            )
        if len(self.betas) != 2:
            raise ConfigError(f"{source}: train.betas must be two numbers, e.g. [0.9, 0.999].")
        for tracker in self.report_to:  # the package and the tracker share a name
            if importlib.util.find_spec(tracker) is None:
                raise ConfigError(
                    f"{source}: train.report_to lists {tracker}, which is not installed: pip install {tracker} "
                    "(or pip install 'svd_hpc[tracking]'), or drop it from train.report_to."
                )
