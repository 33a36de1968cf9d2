"""Publishing a run to the Hugging Face hub: the SFT set, the trained model, its eval table.

Run as:  python -m svd_hpc.hub RUN_DIR   (push again what failed, e.g. from a login node with internet)

Each push happens once, in one job, as one commit: the merge job pushes the SFT set with its
dataset card, train's rank 0 the final model with its model card, and the report job the model
card again with the eval table (the hub rate-limits many parallel commits, so no array task pushes).
A push that fails with a rate limit, a concurrent commit (412), a server error or the network is
retried with doubling waits; then, as without a token, its outcome is recorded in
RUN_DIR/hub/<what>.json, which `status` and the report show, and the run goes on.

The token: tasks drop HF_TOKEN and every other secret from their environment (rundir/env.py), so it
never reaches sbatch scripts, job environments, logs or the run directory. A task reads the token
as huggingface_hub does when the variable is absent: from its token file (`hf auth login` writes
it to HF_HOME/token, or HF_TOKEN_PATH), on the home directory compute nodes share. Tasks also run
with the hub offline for every loader (staging.go_offline); a push lifts that for its own requests.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from .. import config as config_mod
from ..rundir.atomic import atomic_write_json
from ..rundir.layout import RunDir, trained_model_dir
from . import cards as hub_cards

log = logging.getLogger("svd_hpc")

RETRY_STATUS = {408, 409, 412, 429, 500, 502, 503, 504}  # 409/412: another commit landed first
NO_TOKEN = (
    "no hub token: tasks do not see HF_TOKEN (it is kept out of jobs); run `hf auth login` once on a machine "
    "sharing this home (it writes huggingface_hub's token file), or push from there with `python -m svd_hpc.hub {run}`"
)


def record_path(run: RunDir, what: str) -> Path:
    """RUN_DIR/hub/<what>.json: the outcome of one push (what: dataset, model, model_card)."""
    return run.root / "hub" / f"{what}.json"


def jobs_token_warning(cfg: config_mod.RunConfig) -> str | None:
    """At launch: a sentence when the config publishes but the jobs will find no token, else None.

    Jobs never see HF_TOKEN, so what counts is huggingface_hub's token file (read when the jobs run).
    """
    if not (cfg.hub.dataset or cfg.hub.model):
        return None
    from huggingface_hub import constants

    path = Path(constants.HF_TOKEN_PATH)
    if path.is_file() and path.read_text().strip():
        return None
    where = "HF_TOKEN is set here, but jobs never see it" if os.environ.get("HF_TOKEN") else "there is no hub token"
    return (
        f"hub.{'dataset' if cfg.hub.dataset else 'model'} is set, but {where} and {path} does not exist: "
        "run `hf auth login` (it writes that file) before the merge job runs, or the pushes will be recorded as "
        "failed and can be repeated with `python -m svd_hpc.hub RUN_DIR`."
    )


def wait_between_tries(seconds: float) -> None:
    """The pause before a push is tried again (its own function: replacing time.sleep would pause
    every thread of the process, an engine's watchdog included)."""
    time.sleep(seconds)


def _token() -> str | None:
    from huggingface_hub import get_token

    return get_token()


@contextlib.contextmanager
def online() -> Iterator[None]:
    """Let huggingface_hub make requests in a task that set the hub offline for its loaders."""
    from huggingface_hub import constants

    was = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = False  # read per request (utils/_http.py hf_request_event_hook)
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = was


def retryable(err: Exception) -> bool:
    """Rate limits, concurrent commits, server errors and the network; not auth, not a missing repo."""
    from huggingface_hub.errors import HfHubHTTPError

    if isinstance(err, HfHubHTTPError):
        return getattr(err.response, "status_code", None) in RETRY_STATUS
    return isinstance(err, (ConnectionError, TimeoutError)) or type(err).__module__.startswith("httpx")


def _scrub(text: str, token: str | None) -> str:
    return text.replace(token, "***") if token else text


def push(
    run: RunDir,
    what: str,
    repo_id: str,
    repo_type: str,
    files: Callable[[], dict[str, Path | bytes]],
    message: str,
    hub: config_mod.HubConfig,
    digest: str = "",
) -> dict:
    """Create the repo if needed and commit `files()` (path in repo -> local file or bytes) as one commit.

    Never raises: returns and records the outcome. `digest` identifies the content; a record with
    the same digest that says pushed makes this a no-op (a re-run job pushes nothing twice).
    """
    path = record_path(run, what)
    previous = run.load_json(path, default={}) or {}
    if previous.get("status") == "pushed" and previous.get("digest") == digest and previous.get("repo") == repo_id:
        return previous
    record = {"repo": repo_id, "repo_type": repo_type, "digest": digest, "attempts": 0}
    token = _token()
    try:
        if not token:
            raise PermissionError(NO_TOKEN.format(run=run.root))
        record.update(_commit_with_retries(repo_id, repo_type, files, message, hub, token, record))
    except Exception as err:  # a push must never fail the run: every failure is recorded and shown
        error = f"{type(err).__name__}: {_scrub(str(err), token).strip().splitlines()[0] if str(err) else ''}"
        record.update(status="failed", error=error[:500])
        log.warning(f"hub: pushing {what} to {repo_id} failed after {record['attempts']} tries: {error}")
    record["at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    atomic_write_json(path, record)
    return record


def _commit_with_retries(repo_id, repo_type, files, message, hub, token, record) -> dict:
    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi(token=token)
    for attempt in range(1, hub.attempts + 1):
        record["attempts"] = attempt
        try:
            with online():
                api.create_repo(repo_id, repo_type=repo_type, private=hub.private, exist_ok=True)
                # operations are rebuilt per try: create_commit mutates them
                operations = [CommitOperationAdd(path_in_repo=p, path_or_fileobj=f) for p, f in files().items()]
                info = api.create_commit(repo_id, operations, commit_message=message, repo_type=repo_type)
            log.info(f"hub: pushed {repo_type} {repo_id} ({info.commit_url})")
            return {"status": "pushed", "commit": info.oid, "url": info.commit_url}
        except Exception as err:
            if attempt == hub.attempts or not retryable(err):
                raise
            wait = hub.backoff_s * 2 ** (attempt - 1)
            log.warning(f"hub: {repo_type} {repo_id} try {attempt} failed ({type(err).__name__}); again in {wait:.0f}s")
            wait_between_tries(wait)
    raise AssertionError("unreachable")


def _digest(paths: list[Path]) -> str:
    h = hashlib.blake2b(digest_size=16)
    for p in sorted(paths):
        h.update(p.name.encode())
        h.update(str(p.stat().st_size).encode())
        with open(p, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
    return h.hexdigest()


def publish_dataset(run: RunDir, cfg: config_mod.RunConfig) -> dict | None:
    """The merge job's push: merge/sft/*.parquet as data/<split>.parquet, with the dataset card."""
    if not cfg.hub.dataset:
        return None
    sft = run.stage_dir("merge") / "sft"
    parquet = sorted(sft.glob("*.parquet"))
    splits = [p.stem for p in parquet]

    def files() -> dict[str, Path | bytes]:
        card = hub_cards.dataset_card(run, cfg, splits).encode()
        return {"README.md": card} | {f"data/{p.name}": p for p in parquet}

    return push(
        run, "dataset", cfg.hub.dataset, "dataset", files, f"SFT set of run {cfg.name}", cfg.hub, _digest(parquet)
    )


def _final_files(run: RunDir) -> list[Path]:
    final = trained_model_dir(run)
    return sorted(p for p in final.rglob("*") if p.is_file())


def publish_model(run: RunDir, cfg: config_mod.RunConfig) -> dict | None:
    """Train's push (rank 0), or select's: the trained model (train/final, or the checkpoint chosen by
    train.select) with the model card (with the eval table if the report has one)."""
    if not cfg.hub.model:
        return None
    final = trained_model_dir(run)
    weights = _final_files(run)

    def files() -> dict[str, Path | bytes]:
        return {"README.md": hub_cards.model_card(run, cfg).encode()} | {str(p.relative_to(final)): p for p in weights}

    return push(
        run, "model", cfg.hub.model, "model", files, f"Model trained by run {cfg.name}", cfg.hub, _digest(weights)
    )


def publish_eval(run: RunDir, cfg: config_mod.RunConfig) -> dict | None:
    """The report job's push: the model card with the eval table; the whole model if train's push failed."""
    if not cfg.hub.model or not trained_model_dir(run).is_dir():
        return None
    model = run.load_json(record_path(run, "model"), default={}) or {}
    if model.get("status") != "pushed":
        return publish_model(run, cfg)
    card = hub_cards.model_card(run, cfg).encode()
    digest = hashlib.blake2b(card, digest_size=16).hexdigest()
    return push(run, "model_card", cfg.hub.model, "model", lambda: {"README.md": card}, "Eval table", cfg.hub, digest)


def status_lines(run: RunDir) -> list[str]:
    """One line per push this run made or tried: where to, and pushed or why not."""
    lines = []
    for what in ("dataset", "model", "model_card"):
        rec = run.load_json(record_path(run, what), default=None)
        if not rec:
            continue
        name = what.replace("_", " ")
        if rec.get("status") == "pushed":
            lines.append(
                f"hub {name} {rec['repo']}: pushed, commit {str(rec.get('commit', ''))[:10]} ({rec.get('at')})"
            )
        else:
            lines.append(
                f"hub {name} {rec['repo']}: FAILED after {rec.get('attempts', 0)} tries ({rec.get('error')}); "
                f"push again with `python -m svd_hpc.hub {run.root}`"
            )
    return lines


def report_lines(run: RunDir) -> list[str]:
    """The report's "Hub" paragraph: each push and its outcome (nothing when the run publishes nothing)."""
    lines = status_lines(run)
    return ["## Hub", "", *[f"- {line}" for line in lines], ""] if lines else []


def main(argv: list[str] | None = None) -> int:
    """Push again whatever the run has and the hub lacks: the SFT set, the model, the model card."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m svd_hpc.hub RUN_DIR", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    run = RunDir(argv[0])
    try:
        cfg = run.load_config()
    except config_mod.ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not (cfg.hub.dataset or cfg.hub.model):
        print(f"{run.config_path} publishes nothing: set hub.dataset or hub.model.", file=sys.stderr)
        return 2
    if run.is_done("merge", 0):
        publish_dataset(run, cfg)
    # with train.select the model to push is the chosen checkpoint, known once select has run
    if run.is_done("select" if cfg.train.select.enabled else "train", 0):
        publish_eval(run, cfg) if hub_cards.summary_of(run) else publish_model(run, cfg)
    for line in status_lines(run):
        print(line)
    return 0 if all("FAILED" not in line for line in status_lines(run)) else 1


if __name__ == "__main__":
    sys.exit(main())
