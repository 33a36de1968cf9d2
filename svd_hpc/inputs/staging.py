"""Staging: the launcher fetches every hub input of a run into the HF cache and pins it to a
commit; tasks then read that cache with the hub offline.

Hub inputs are model.path, train.model, seeds.path and the eval benchmarks whose rows live on
the hub (presets, hub ids). At launch, on the login node, `stage` downloads each one with
huggingface_hub's snapshot_download, through `snapshot`: the call, repo type and file patterns
the tasks' loaders make, so the cache holds exactly what they read. It writes the commit into
the input's revision key (model.revision, train.model_revision, seeds.revision,
eval.benchmarks[].revision), so config.yaml pins every task to it even if the hub repo moves
overnight, and records what was asked and what it resolved to in <run>/staged.json. Launching
the same config again takes the commits from there and asks the hub nothing when the cache
holds them (resume works offline).

Tasks call `go_offline` before anything imports a hub client (they read the offline switches
once, at import): HF_HUB_OFFLINE, HF_DATASETS_OFFLINE and TRANSFORMERS_OFFLINE, and
HF_HUB_CACHE set to the cache the launcher filled. Local folders and built-in models are not
hub inputs: they pass through untouched. HF_TOKEN is read from the environment by
huggingface_hub and never written anywhere.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from ..config import ConfigError
from ..rundir.atomic import atomic_write_json
from ..rundir.layout import RunDir

log = logging.getLogger("svd_hpc")

STAGED_FILE = "staged.json"
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
_COMMIT = re.compile(r"[0-9a-f]{40}")
_SHARED_CACHE = (
    "export HF_HOME to a folder on a filesystem the login and compute nodes share before launching "
    "(and bind it into the container under command_prefix)"
)


class NotStaged(ValueError):
    """A task asked for hub files its node's HF cache does not hold."""


def is_commit(revision: str | None) -> bool:
    return bool(revision) and _COMMIT.fullmatch(revision) is not None


def hub_cache() -> Path:
    """The HF hub cache this process reads and writes (HF_HUB_CACHE, else HF_HOME/hub)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE).expanduser().resolve()  # as snapshot_download resolves it


def offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def hub_unreachable() -> str | None:
    """Why the hub cannot be reached from here, or None when it may be (then just try).

    Offline mode is left to the hub client (it reads its cache); behind a proxy a direct probe
    means nothing, so it is skipped. Otherwise one TCP connect saves minutes of client retries.
    """
    if os.environ.get("HF_HUB_OFFLINE") or os.environ.get("HF_DATASETS_OFFLINE"):
        return None
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host, port = url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=5).close()
    except OSError as err:
        return f"{host} is unreachable ({err.strerror or err})"
    return None


def snapshot(
    repo_id: str,
    repo_type: str,
    revision: str | None,
    allow_patterns: list[str] | None = None,
    local_only: bool = False,
) -> Path:
    """The folder of a hub repo at `revision` in the HF cache: what every loader of a hub input reads.

    Online it downloads what the cache lacks; offline (every task) it reads the cache alone and
    raises NotStaged, saying what to do, when the files are not there.
    """
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(
            huggingface_hub.snapshot_download(
                repo_id,
                repo_type=repo_type,
                revision=revision,
                allow_patterns=allow_patterns,
                local_files_only=local_only,
            )
        )
    except LocalEntryNotFoundError as err:
        if not (local_only or offline()):
            raise
        cache = hub_cache()
        where = "does not exist on this node" if not cache.is_dir() else "does not hold it"
        raise NotStaged(
            f"{repo_type} {repo_id} at revision {revision or 'main'} is not in the HF cache here: {cache} {where} "
            f"({type(err).__name__}). The launcher stages hub inputs into its own cache, so that cache must be "
            f"visible on compute nodes: {_SHARED_CACHE}, then launch again."
        ) from None


def go_offline(run_dir: str | Path) -> None:
    """Task start: hub clients read only the cache the launcher staged into. Call before any HF import."""
    os.environ.update(OFFLINE_ENV)
    staged = Path(run_dir) / STAGED_FILE
    if staged.is_file():
        cache = json.loads(staged.read_text()).get("cache")
        if cache:
            os.environ["HF_HUB_CACHE"] = cache


# ----------------------------------------------------------------------------- launch side


@dataclass
class HubInput:
    """One hub input of a run, and the config field that pins its revision."""

    key: str  # in staged.json: model.path, train.model, seeds.path, eval.benchmarks.<name>
    label: str  # in messages: the config key a user edits
    repo_id: str
    repo_type: str  # model | dataset
    holder: object  # the config section holding the revision
    field: str  # its revision field
    revision_key: str  # in messages: where a user sets the revision
    allow_patterns: list[str] | None = None
    local_copy: str | None = None  # benchmarks: read instead when the hub has no copy for us

    @property
    def requested(self) -> str | None:
        return getattr(self.holder, self.field)


@dataclass
class Staged:
    """What `stage` resolved: staged.json's entries, written into the run directory by `save`."""

    entries: dict = field(default_factory=dict)

    def save(self, run: RunDir) -> None:
        if self.entries:
            atomic_write_json(run.root / STAGED_FILE, {"cache": str(hub_cache()), "inputs": self.entries})


def stage(run: RunDir, inputs: list[HubInput], dry_run: bool = False) -> Staged:
    """Pin every hub input (catalog.hub_inputs) to a commit (written into the config) and, unless dry_run, fetch it.

    A dry run resolves commits (from staged.json, the cache or the hub) without downloading and
    only warns about what it cannot resolve; a launch raises ConfigError naming the input.
    """
    if not inputs:
        return Staged()
    previous = (run.load_json(run.root / STAGED_FILE, default={}) or {}).get("inputs", {})
    resolver = _Resolver(dry_run)
    entries = {}
    for item in inputs:
        requested, before = item.requested, previous.get(item.key) or {}
        commit = resolver.pin(item, before)
        if commit is None:
            continue
        if requested == commit and before.get("commit") == commit:
            requested = before.get("requested")  # a resume replays the pinned config: keep what the user asked
        setattr(item.holder, item.field, commit)
        entries[item.key] = {
            "repo": item.repo_id,
            "type": item.repo_type,
            "requested": requested,
            "commit": commit,
            "files": item.allow_patterns,
        }
        log.info(f"{item.label}: {item.repo_id} pinned at commit {commit}")
    return Staged(entries)


class _Resolver:
    """Resolves hub inputs, each unique repo and revision once per launch, probing the hub at most once."""

    def __init__(self, dry_run: bool):
        self.dry_run = dry_run
        self.commits: dict[tuple, str] = {}
        self._unreachable: list[str | None] = []

    def unreachable(self) -> str | None:
        if not self._unreachable:
            self._unreachable.append(hub_unreachable())
        return self._unreachable[0]

    def pin(self, item: HubInput, previous: dict | None) -> str | None:
        requested = item.requested
        same = (item.repo_type, item.repo_id, requested)
        commit = requested if is_commit(requested) else self.commits.get(same)
        if (
            commit is None
            and previous
            and (previous.get("type"), previous.get("repo"), previous.get("requested")) == same
        ):
            commit = previous.get("commit")
        if commit and self._cached(item, commit):
            self.commits[same] = commit
            return commit
        if self.dry_run and commit:
            return commit  # pinned already; the launch downloads it
        try:
            if self.unreachable():
                # as hub clients do when the hub does not answer: a copy already in the cache serves
                try:
                    commit = snapshot(
                        item.repo_id, item.repo_type, commit or requested, item.allow_patterns, local_only=True
                    ).name
                except NotStaged:
                    raise ConnectionError(self.unreachable()) from None
                log.warning(f"{item.label}: {self.unreachable()}; pinned the copy in the HF cache {hub_cache()}")
            elif self.dry_run:
                import huggingface_hub

                commit = (
                    huggingface_hub.HfApi().repo_info(item.repo_id, repo_type=item.repo_type, revision=requested).sha
                )
            else:
                folder = snapshot(item.repo_id, item.repo_type, commit or requested, item.allow_patterns)
                commit = folder.name
                if item.repo_type == "model" and not (folder / "config.json").is_file():
                    raise ConfigError(
                        f"{item.label} {item.repo_id} has no config.json at commit {commit}; "
                        "point it at a transformers model repository."
                    )
        except ConfigError:
            raise
        except Exception as err:  # noqa: BLE001  the hub client raises many kinds; _explain sorts them
            if item.local_copy:
                log.warning(f"{item.label}: {_reason(err)}; tasks read the local copy {item.local_copy}")
                return None
            message = _explain(item, err, requested)
            if self.dry_run:
                log.warning(f"dry run: {message}")
                return None
            raise ConfigError(message) from None
        self.commits[same] = commit
        return commit

    @staticmethod
    def _cached(item: HubInput, commit: str) -> bool:
        try:
            snapshot(item.repo_id, item.repo_type, commit, item.allow_patterns, local_only=True)
        except NotStaged:
            return False
        return True


def _reason(err: Exception) -> str:
    """The first line of an error, for one-sentence messages (never a token)."""
    if isinstance(err, NotStaged):
        return "HF_HUB_OFFLINE is set here"
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    token = os.environ.get("HF_TOKEN")
    if token:
        text = text.replace(token, "***")
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _explain(item: HubInput, err: Exception, requested: str | None) -> str:
    """One sentence: which input failed, why, and what to do."""
    from huggingface_hub.errors import GatedRepoError, HFValidationError, RepositoryNotFoundError, RevisionNotFoundError

    what = f"{item.label} {item.repo_id}"
    if isinstance(err, GatedRepoError):
        return (
            f"{what} is gated on the hub and this launch has no access ({type(err).__name__}): accept its terms "
            f"on huggingface.co with your account and export HF_TOKEN with a token of that account, then launch again."
        )
    if isinstance(err, RevisionNotFoundError):
        return f"{what} has no revision '{requested}' on the hub; fix {item.revision_key}."
    if isinstance(err, RepositoryNotFoundError):
        return (
            f"{what} is not a {item.repo_type} repository on the hub, or it is private (export HF_TOKEN); "
            f"check the name, or point {item.label} at a local folder."
        )
    if isinstance(err, HFValidationError):
        return f"{what} is neither a local path nor a valid hub id; check the path."
    advice = (
        f"download it where the hub is reachable (`huggingface-cli download --repo-type dataset {item.repo_id} "
        f"--local-dir DIR`) and set path: DIR for this benchmark"
        if item.key.startswith("eval.")
        else "launch where huggingface.co is reachable (the login node), or fill this cache there first"
    )
    return (
        f"{what} cannot be staged: the hub cannot be asked ({_reason(err)}) and the HF cache {hub_cache()} "
        f"does not hold it; {advice}."
    )
