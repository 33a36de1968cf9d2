"""Typed run configuration: YAML plus dotted overrides, validated before anything runs.

Every section is a small dataclass whose fields carry their documentation (the string below each
field; `python -m svd_hpc.launch config-help` and docs/CONFIG.md are generated from it) and whose
`check` holds the cross-field checks of that section. Loading rejects unknown keys (naming the valid
ones at that level with their defaults), wrong types and impossible values with one sentence that
names the file and the key, as a ConfigError (exit code 2 at the CLI).
"""

from .checks import STAGE_NAMES, VERIFY_STAGES, ConfigError, check_vote_rule
from .cluster import ClusterProfile, StageResources
from .decontamination import DecontaminateConfig
from .evaluation import BenchmarkSpec, EvalConfig
from .hub import HubConfig
from .iteration import IterationConfig
from .loading import PACKAGE_CONFIGS, apply_override, build, find_profile, from_dict, load, to_dict, validate
from .method import (
    DOMAINS,
    GenerateConfig,
    MergeConfig,
    ModelConfig,
    PromptsConfig,
    SeedsConfig,
    SeedSource,
    TrainConfig,
    VerifyConfig,
)
from .run import RunConfig, train_procs_per_node

__all__ = [
    "DOMAINS",
    "PACKAGE_CONFIGS",
    "STAGE_NAMES",
    "VERIFY_STAGES",
    "BenchmarkSpec",
    "ClusterProfile",
    "ConfigError",
    "DecontaminateConfig",
    "EvalConfig",
    "GenerateConfig",
    "IterationConfig",
    "HubConfig",
    "MergeConfig",
    "ModelConfig",
    "PromptsConfig",
    "RunConfig",
    "SeedSource",
    "SeedsConfig",
    "StageResources",
    "TrainConfig",
    "VerifyConfig",
    "apply_override",
    "build",
    "check_vote_rule",
    "find_profile",
    "from_dict",
    "load",
    "to_dict",
    "train_procs_per_node",
    "validate",
]
