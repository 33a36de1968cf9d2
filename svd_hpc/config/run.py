"""The whole run config, and the checks that span its sections (resources against the model and train)."""

from __future__ import annotations

from dataclasses import dataclass, field

from .checks import STAGE_NAMES, ConfigError
from .cluster import ENGINE_STAGES, ClusterProfile, StageResources
from .decontamination import DecontaminateConfig
from .evaluation import EvalConfig
from .hub import HubConfig
from .iteration import IterationConfig
from .method import GenerateConfig, MergeConfig, ModelConfig, PromptsConfig, SeedsConfig, TrainConfig, VerifyConfig

VLLM_STAGES = ENGINE_STAGES


@dataclass
class RunConfig:
    """A run: its name and place, the method's sections, and where each stage runs."""

    name: str = "run"
    """Run name: the run directory is run_root/name."""
    run_root: str = "runs"
    """Folder holding run directories."""
    cluster: str = "local"
    """local (this machine, no SLURM), a profile name in configs/clusters/, or a profile YAML path."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """The base model (see model)."""
    seeds: SeedsConfig = field(default_factory=SeedsConfig)
    """The seed questions (see seeds)."""
    prompts: PromptsConfig = field(default_factory=PromptsConfig)
    """The wording of generation and judge prompts (see prompts)."""
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    """Stage 1 (see generate)."""
    verify: VerifyConfig = field(default_factory=VerifyConfig)
    """Stage 2 (see verify)."""
    merge: MergeConfig = field(default_factory=MergeConfig)
    """Stage 3 (see merge)."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Stage 4 (see train)."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Evaluation of base and trained model (see eval)."""
    decontaminate: DecontaminateConfig = field(default_factory=DecontaminateConfig)
    """Seeds and solutions that overlap an eval benchmark's questions, dropped (see decontaminate)."""
    rounds: int = 1
    """Rounds of the method chained in one launch: round r+1 generates, judges and trains with round r's
    model; each round in RUN_DIR/round-R/ when more than 1 (1: today's single-round layout)."""
    iteration: IterationConfig = field(default_factory=IterationConfig)
    """What changes from round to round, and the stopping rule (see iteration)."""
    resources: dict[str, StageResources] = field(default_factory=dict)
    """Per-stage overrides of the cluster profile, keyed by stage name (see resources.STAGE)."""
    hub: HubConfig = field(default_factory=HubConfig)
    """Publishing the SFT set and the trained model to the Hugging Face hub (see hub); off by default."""
    profile: ClusterProfile = field(default_factory=ClusterProfile)
    """Filled in at load time from `cluster`; not a user key in the run config itself."""

    @property
    def is_local(self) -> bool:
        return self.cluster == "local"

    def stage_resources(self, stage: str) -> StageResources:
        return self.resources.get(stage, StageResources())

    def check(self, source: str) -> None:
        """Every section's own checks, then those that span sections."""
        for stage in self.resources:
            if stage not in STAGE_NAMES:
                raise ConfigError(f"{source}: unknown stage 'resources.{stage}'; stages are: {', '.join(STAGE_NAMES)}.")
        for section in (self.seeds, self.generate, self.verify, self.train, self.model):
            section.check(source)
        self.merge.check(self.verify.votes, source)
        self.eval.check(source)
        self._check_select(source)
        self.decontaminate.check(source)
        self.hub.check(source)
        self.iteration.check(self.rounds, self.train.enabled, bool(self.eval.benchmarks), source)
        for stage, res in self.resources.items():
            res.check(stage, source)
        self.profile.check()
        if not self.is_local:
            for stage in VLLM_STAGES:
                self._check_gpus(stage, source)
        self._check_world_size(source)

    def _check_select(self, source: str) -> None:
        select = self.train.select
        select.check(source, self.eval.benchmarks)
        if select.enabled and (self.rounds > 1 or not self.train.enabled):
            raise ConfigError(
                f"{source}: train.select picks a checkpoint of a single-round run that trains; "
                "set train.select.every: 0, or rounds: 1 with train.enabled: true."
            )

    def _check_gpus(self, stage: str, source: str) -> None:
        """A vLLM task gets at least engines × tensor_parallel_size GPUs, and no more than a node has."""
        res = self.stage_resources(stage)
        tp, engines = self.model.tensor_parallel_size, res.engines_per_task
        gpus = res.gpus if res.gpus is not None else (tp * engines if self.profile.gpus_per_node else 0)
        if gpus and tp * engines > gpus:
            needs = (
                f"resources.{stage}.engines_per_task={engines} engines of model.tensor_parallel_size={tp} "
                f"need {tp * engines} GPUs"
                if engines > 1
                else f"model.tensor_parallel_size={tp} needs that many GPUs"
            )
            raise ConfigError(
                f"{source}: {needs}, but resources.{stage} gets {gpus}; raise resources.{stage}.gpus or lower "
                f"the tensor parallel size{' or the engines per task' if engines > 1 else ''}."
            )
        if self.profile.gpus_per_node and gpus and gpus > self.profile.gpus_per_node:
            asked = (
                f"resources.{stage}.gpus={gpus}"
                if res.gpus is not None
                else f"resources.{stage}.engines_per_task={engines} × model.tensor_parallel_size={tp} GPUs"
            )
            raise ConfigError(
                f"{source}: {asked} exceeds the {self.profile.gpus_per_node} GPUs per node "
                f"of cluster profile '{self.profile.name}'."
            )

    def _check_world_size(self, source: str) -> None:
        total = self.stage_resources("train").nodes * train_procs_per_node(self)
        t = self.train
        if t.global_batch % (total * t.micro_batch):
            raise ConfigError(
                f"{source}: train.global_batch={t.global_batch} is not divisible by world size {total} × "
                f"train.micro_batch {t.micro_batch}; choose a multiple of {total * t.micro_batch}."
            )


def train_procs_per_node(cfg: RunConfig) -> int:
    """Training processes per node: resources.train.tasks_per_node, else one per GPU, else train.procs_per_node."""
    res = cfg.stage_resources("train")
    if res.tasks_per_node:
        return res.tasks_per_node
    gpus = res.gpus if res.gpus is not None else cfg.profile.gpus_per_node
    return gpus if gpus else cfg.train.procs_per_node
