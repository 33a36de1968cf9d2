"""Where jobs run: the cluster profile (a site's defaults) and the per-stage `resources` overrides."""

from __future__ import annotations

from dataclasses import dataclass, field

from .checks import ConfigError, check_time

TRAIN_SIGNAL_SECONDS = 600
ENGINE_STAGES = (
    "generate",
    "verify",
    "eval_base",
    "eval_trained",
    "select_eval",
)  # the stages that run vLLM engines  # one optimiser step plus a full sharded save of 8B on a network filesystem


@dataclass
class ClusterProfile:
    """What a site looks like: defaults for every job, overridden per stage in `resources`.

    A profile is its own YAML file (configs/clusters/NAME.yaml), chosen by the run's `cluster` key.
    """

    name: str = "local"
    """Profile name, shown in messages."""
    partition: str | None = None
    """GPU partition for generate, verify, train and eval; null leaves the site default."""
    cpu_partition: str | None = None
    """Partition for merge and report (CPU-only stages); null: `partition`."""
    account: str | None = None
    """sbatch --account."""
    qos: str | None = None
    """sbatch --qos."""
    constraint: str | None = None
    """sbatch --constraint, e.g. a GPU model feature."""
    exclude: str | None = None
    """Nodes never to use, e.g. "node[01-03]"."""
    gpus_per_node: int = 0
    """GPUs per node; 0 on CPU clusters. The default GPUs per task of GPU stages."""
    gpu_memory_gib: float | None = None
    """Memory of one GPU in GiB, e.g. 80 for an A100 80GB; null: the memory check only prints its estimate.

    The launch estimates each GPU's peak in train and the vLLM stages' room from the model's
    config.json, and stops a plan that cannot fit, naming the knob that would make it fit.
    """
    cpus_per_task: int = 1
    """CPU cores per task unless resources.STAGE.cpus says otherwise."""
    mem: str | None = None
    """Memory per node, e.g. "64G"; null leaves the site default."""
    time: str = "01:00:00"
    """Time limit per task (D-HH:MM:SS, HH:MM:SS or minutes) unless resources.STAGE.time says otherwise."""
    setup: list[str] = field(default_factory=list)
    """Shell lines run before each task: module load, conda activate."""
    command_prefix: str | None = None
    """Prefix of each task's command, e.g. "apptainer exec --nv image.sif"."""
    python: str | None = None
    """Interpreter on the compute nodes; null: the launcher's own."""
    mail_user: str | None = None
    """sbatch --mail-user."""
    mail_type: str | None = None
    """sbatch --mail-type, e.g. "END,FAIL"."""
    max_array_size: int | None = None
    """Largest job array the site takes; null: MaxArraySize from `scontrol show config`."""
    requeue_cap: int = 6
    """A task is requeued at most this many times: at the time-limit warning or preemption, and on a
    transient failure (a hung engine, a failed collective or GPU, a node failure). Six fits a 4B
    training of 4-5 jobs of 24 h (what `--pilot` projects on A100s) with two retries to spare."""
    signal_seconds: int = 120
    """Warning signal (USR2) this many seconds before the time limit, so a task can save and requeue.

    Train takes at least TRAIN_SIGNAL_SECONDS (600) unless resources.train.signal_seconds says otherwise:
    its ranks finish a step and save a sharded checkpoint before they stop, and a stop that outlasts the
    warning ends as TIMEOUT, not as a requeue."""
    run_root: str | None = None
    """Where this site's run directories go when the run config names none, e.g. "$SCRATCH/svd_runs";
    $VARIABLES and ~ are expanded at launch. Checkpoints and shards are large and written by every
    node at once: a scratch filesystem, not a quota'd home directory."""

    def check(self) -> None:
        check_time(self.time, "time", f"cluster profile '{self.name}'")


@dataclass
class StageResources:
    """Per-stage overrides of the cluster profile, under resources.STAGE; null keeps the profile's value."""

    partition: str | None = None
    """Partition for this stage; null: the profile's partition (cpu_partition for merge and report)."""
    gpus: int | None = None
    """GPUs per task (the tensor parallel size for vLLM stages); null: the profile's gpus_per_node."""
    cpus: int | None = None
    """CPU cores per task; null: the profile's cpus_per_task."""
    mem: str | None = None
    """Memory per node, e.g. "64G"; null: the profile's mem."""
    time: str | None = None
    """Time limit per task; null: the profile's time."""
    nodes: int = 1
    """Nodes per task; only train may use more than one."""
    tasks_per_node: int | None = None
    """Train only: processes per node; null: one per GPU, else train.procs_per_node.

    Precedence: resources.train.tasks_per_node, else one process per GPU (resources.train.gpus,
    else the profile's gpus_per_node), else train.procs_per_node.
    """
    array_parallelism: int | None = None
    """At most this many array tasks of the stage run at once (sbatch --array=...%N)."""
    preemptible: bool = False
    """Submit with --requeue and the warning signal, for preemptible partitions."""
    signal_seconds: int | None = None
    """Seconds of warning before the time limit; null: the profile's (for train at least 600)."""
    engines_per_task: int = 1
    """vLLM stages only (generate, verify, eval_base, eval_trained): data-parallel engines per task.

    The task asks for engines_per_task × model.tensor_parallel_size GPUs and runs that many engines, each
    on its own GPUs (on CPU, its own share of the cores), dealing the shard's requests among them; the
    records equal one engine's. For sites that allocate whole nodes: 4 engines of TP 2 fill an 8-GPU node.
    """

    def check(self, stage: str, source: str) -> None:
        if self.time:
            check_time(self.time, f"resources.{stage}.time", source)
        if self.nodes < 1 or (self.nodes > 1 and stage != "train"):
            raise ConfigError(f"{source}: resources.{stage}.nodes must be 1 (only train runs on several nodes).")
        if self.engines_per_task < 1:
            raise ConfigError(f"{source}: resources.{stage}.engines_per_task must be at least 1.")
        if self.engines_per_task > 1 and stage not in ENGINE_STAGES:
            raise ConfigError(
                f"{source}: resources.{stage}.engines_per_task applies to the vLLM stages only "
                f"({', '.join(ENGINE_STAGES)}); remove it from resources.{stage}."
            )
        if self.array_parallelism is not None and self.array_parallelism < 1:
            raise ConfigError(f"{source}: resources.{stage}.array_parallelism must be at least 1.")
