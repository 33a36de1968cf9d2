"""The engine's stall watchdog: a task whose engine step hangs, or whose engine process died, ends
with one log line and exit EXIT_ENGINE_FAILED instead of idling until the time limit."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

log = logging.getLogger("svd_hpc")

EXIT_ENGINE_FAILED = 70  # the engine hung or its process died; running the task again resumes it


def log_engine_failed(why: str) -> None:
    """The task's one line on why it ends with EXIT_ENGINE_FAILED."""
    log.error(f"engine failed: {why}; ending the task (exit {EXIT_ENGINE_FAILED}) so it can be run again")


class Watchdog:
    """Ends the process when one engine step runs for `timeout_s` seconds, or the engine's
    background process dies during a step: one log line, exit EXIT_ENGINE_FAILED.

    A thread, and a hard exit, because a hung engine holds the main thread inside step().
    """

    def __init__(self, background_died: Callable[[], bool], timeout_s: float):
        self.background_died, self.timeout_s = background_died, timeout_s
        self.last_step = time.monotonic()
        self.watching = False
        threading.Thread(target=self._watch, name="svd_hpc-engine-watchdog", daemon=True).start()

    @contextmanager
    def step(self) -> Iterator[None]:
        """Watch one engine step: only time inside step() counts, the caller may save or grade between steps."""
        self.last_step = time.monotonic()
        self.watching = True
        try:
            yield
        finally:
            self.watching = False

    def _watch(self) -> None:
        while True:
            time.sleep(min(10.0, self.timeout_s / 4))
            if not self.watching:
                continue
            quiet = time.monotonic() - self.last_step
            if self.background_died():
                self._end("vLLM's engine process died")
            elif quiet > self.timeout_s:
                self._end(f"the engine finished no step for {quiet:.0f}s (model.stall_timeout_s={self.timeout_s:g})")

    def _end(self, why: str) -> None:
        log_engine_failed(why)
        for handler in logging.getLogger().handlers + log.handlers:
            handler.flush()
        os._exit(EXIT_ENGINE_FAILED)
