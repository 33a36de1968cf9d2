"""Hand-offs between training ranks through files on the shared run directory, with no timeout.

A collective waits under the process group's timeout (30 min; NCCL's watchdog then aborts the
job), so work that can take longer (tokenising a large SFT set, fetching a model) hands its
result over through files instead: a rank writes `NAME.rank-RRRRR.json` atomically, the others
poll the folder for it. A rank that fails writes `failed.rank-RRRRR.json`; every rank, waiting or
working, sees it within POLL_SECONDS and raises the same error, so no rank waits for ever on a
rank that raised. A rank killed outright (OOM killer) writes nothing: the launcher stops the
others (srun --kill-on-bad-exit, torchrun's worker group).

The folder belongs to one attempt of the job (its name is agreed on at start), so markers of an
earlier, failed attempt are never mistaken for this one's.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

from ..rundir.atomic import atomic_write_json

log = logging.getLogger("svd_hpc")

POLL_SECONDS = 1.0  # how soon a result or a failure of another rank is seen
PROGRESS_SECONDS = 30.0  # how often a working rank records how far it is
LOG_SECONDS = 60.0  # how often rank 0 logs the progress of a long wait


class RankFiles:
    """One rank's view of the shared hand-off folder of a job attempt."""

    def __init__(self, folder: Path, rank: int, world_size: int):
        self.folder, self.rank, self.world_size = Path(folder), rank, world_size
        self.folder.mkdir(parents=True, exist_ok=True)
        self._looked = self._logged = time.monotonic()
        self._recorded = -PROGRESS_SECONDS  # the first progress call is recorded at once

    def path(self, name: str, rank: int) -> Path:
        return self.folder / f"{name}.rank-{rank:05d}.json"

    def publish(self, name: str, value) -> None:
        atomic_write_json(self.path(name, self.rank), value)

    @contextlib.contextmanager
    def reporting(self) -> Iterator[None]:
        """Any exception in the block is recorded for the other ranks, then re-raised here."""
        try:
            yield
        except BaseException as err:
            if isinstance(err, Exception):  # not KeyboardInterrupt / SystemExit: those stop every rank anyway
                self.publish("failed", {"type": type(err).__name__, "message": str(err)})
            raise

    def check(self) -> None:
        """Raise the failure another rank recorded, if any."""
        # listdir rather than stat: on NFS a directory read sees files other nodes created
        for name in sorted(os.listdir(self.folder)):
            if name.startswith("failed.rank-") and name != self.path("failed", self.rank).name:
                failure = json.loads((self.folder / name).read_text())
                if failure["type"] == "ValueError":  # bad input: the same one sentence on every rank
                    raise ValueError(failure["message"])
                rank = int(name.split("-")[1].split(".")[0])
                raise RuntimeError(f"rank {rank} failed: {failure['type']}: {failure['message']}")

    def progress(self, done: int, total: int, what: str = "items done") -> None:
        """Called often by a working rank: records how far it is and stops if another rank failed."""
        now = time.monotonic()
        if now - self._looked >= POLL_SECONDS:
            self._looked = now
            self.check()
        if now - self._recorded >= PROGRESS_SECONDS or done == total:
            self._recorded = now
            self.publish("progress", {"done": done, "total": total, "what": what})
        if self.rank == 0 and now - self._logged >= LOG_SECONDS:
            self._logged = now
            log.info(self.summary())

    def wait(self, name: str, ranks) -> list:
        """The values `ranks` published under `name`, once all of them have (polls; no timeout)."""
        ranks = list(ranks)
        began = time.monotonic()
        while True:
            self.check()
            present = set(os.listdir(self.folder))
            missing = [r for r in ranks if self.path(name, r).name not in present]
            if not missing:
                return [json.loads(self.path(name, r).read_text()) for r in ranks]
            now = time.monotonic()
            if self.rank == 0 and now - self._logged >= LOG_SECONDS:
                self._logged = now
                log.info(f"waiting {now - began:.0f}s for {name} of rank(s) {missing[:8]}; {self.summary()}")
            time.sleep(POLL_SECONDS)

    def summary(self) -> str:
        """Work done over all ranks, from their progress records."""
        done = total = reporting = 0
        what = "items done"
        for r in range(self.world_size):
            with contextlib.suppress(FileNotFoundError):
                record = json.loads(self.path("progress", r).read_text())
                done, total, reporting, what = (
                    done + record["done"],
                    total + record["total"],
                    reporting + 1,
                    record["what"],
                )
        return f"{done} of {total} {what} on the {reporting} of {self.world_size} rank(s) that reported"
