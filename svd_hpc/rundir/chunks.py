"""Chunk checkpoints: the finished results of a task's long engine run, saved a chunk at a time.

A task queues all its requests in one engine run (a full batch) and hands every result to a
`Checkpoint` as it finishes. Every `size` results become one chunk file, written atomically, so a
task killed or preempted at any moment loses at most one unwritten chunk (plus the requests still
in flight); the next attempt loads the chunks and asks the engine only for the rest. Requests
carry their own seeds, so the resumed results equal an uninterrupted run's.

Chunks hold results in the order they finished, not by position: which requests share a chunk
does not matter, so a changed chunk size keeps them. The folder's fingerprint (the settings and
inputs that decide the results) does: when it differs, the old chunks are stale and dropped.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from .atomic import atomic_write_text

log = logging.getLogger("svd_hpc")


class Checkpoint:
    """Results by request key, loaded from and saved to `folder` (None: kept in memory only)."""

    def __init__(self, folder: Path | None, size: int, fingerprint: str):
        if size < 1:
            raise ValueError(f"a chunk holds at least one result, got chunk size {size}.")
        self.folder, self.size, self.fingerprint = folder, size, fingerprint
        self.saved: dict[str, object] = {}
        self.pending: dict[str, object] = {}
        self.next_chunk = 0
        if folder is not None:
            self._load()
        self.resumed = len(self.saved)  # results found from earlier attempts

    def _load(self) -> None:
        stamp = self.folder / "fingerprint"
        if not stamp.is_file() or stamp.read_text() != self.fingerprint:
            if self.folder.exists():
                log.info(f"checkpoint: {self.folder} holds results of other settings or inputs; starting over")
            shutil.rmtree(self.folder, ignore_errors=True)
            atomic_write_text(stamp, self.fingerprint)
            return
        for path in sorted(self.folder.glob("chunk-*.json")):
            self.next_chunk = max(self.next_chunk, int(path.stem.split("-")[1]) + 1)
            try:
                self.saved.update(json.loads(path.read_text()))
            except (ValueError, OSError):  # written atomically, so only a damaged disk gets here
                log.warning(f"checkpoint: {path} is unreadable; its results are computed again")

    def __contains__(self, key: str) -> bool:
        return key in self.saved or key in self.pending

    def __getitem__(self, key: str):
        return self.pending[key] if key in self.pending else self.saved[key]

    def add(self, key: str, result) -> None:
        """Keep one finished result (JSON-serialisable); a full chunk is written at once."""
        self.pending[key] = result
        if len(self.pending) >= self.size:
            self.flush()

    def flush(self) -> None:
        """Write the results not yet saved as one chunk (call it when a run ends)."""
        if not self.pending:
            return
        if self.folder is not None:
            path = self.folder / f"chunk-{self.next_chunk:05d}.json"
            atomic_write_text(path, json.dumps(self.pending, ensure_ascii=False))
            self.next_chunk += 1
            log.info(f"checkpoint: {path} written, {len(self.saved) + len(self.pending)} results saved")
        self.saved.update(self.pending)
        self.pending = {}

    def remove(self) -> None:
        """Drop the chunks once the task's output holds them (fewer files matter on Lustre/NFS)."""
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
