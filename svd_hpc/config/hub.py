"""The hub section: where a run publishes its SFT set and its trained model (off by default)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .checks import ConfigError

_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


@dataclass
class HubConfig:
    """Publishing to the Hugging Face hub: the merge job pushes the SFT set, train (rank 0) the final model.

    Tasks read the token from huggingface_hub's token file (`hf auth login`), never from the
    environment (README, "Publishing to the hub"). A push that fails is retried, then reported by
    `status` and the report; the run goes on.
    """

    dataset: str | None = None
    """Dataset repo (org/name) the merge job pushes the SFT set to, with a dataset card; null: no push."""
    model: str | None = None
    """Model repo (org/name) the train job pushes train/final to, with a model card; null: no push.

    The report job adds the eval table to the model card.
    """
    private: bool = True
    """Create the repos private (an existing repo keeps its visibility)."""
    attempts: int = 5
    """Tries per push (rate limits, concurrent commits, network) before it is reported as failed."""
    backoff_s: float = 10.0
    """Seconds before the second try, doubling for each further one."""

    def check(self, source: str) -> None:
        for key in ("dataset", "model"):
            repo = getattr(self, key)
            if repo is not None and not _REPO_ID.fullmatch(repo):
                raise ConfigError(f"{source}: hub.{key} is {repo!r}; write a hub repo id as org/name.")
        if self.attempts < 1 or self.backoff_s < 0:
            raise ConfigError(f"{source}: hub.attempts must be at least 1 and hub.backoff_s at least 0.")
