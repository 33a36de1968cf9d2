"""The engine's stall watchdog: a task whose engine step hangs, or whose engine process died, ends
with one log line and exit EXIT_ENGINE_FAILED instead of idling until the time limit."""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from ..rundir import failures
from ..rundir.contract import EXIT_ENGINE_FAILED

log = logging.getLogger("svd_hpc")


def log_engine_failed(why: str) -> None:
    """The task's one line on why it ends with EXIT_ENGINE_FAILED, and the cause its batch shell retries."""
    failures.record(failures.ENGINE, why)
    log.error(f"engine failed: {why}; ending the task (exit {EXIT_ENGINE_FAILED}) so it can be run again")


class Watchdog:
    """Ends the process when one engine step runs for `timeout_s` seconds, or the engine's
    background process dies during a step: one log line, exit EXIT_ENGINE_FAILED.

    A thread, and a hard exit, because a hung engine holds the main thread inside step(). The
    thread holds the engine weakly (background_died is one of its methods) and ends with it, so an
    engine that is let go is freed with its model and KV cache.
    """

    def __init__(self, background_died: Callable[[], bool], timeout_s: float):
        self.timeout_s = timeout_s
        self.last_step = time.monotonic()
        self.watching = False
        self.thread = threading.Thread(
            target=_watch, args=(weakref.ref(self), weakref.WeakMethod(background_died)),
            name="svd_hpc-engine-watchdog", daemon=True,
        )  # fmt: skip
        self.thread.start()

    @contextmanager
    def step(self) -> Iterator[None]:
        """Watch one engine step: only time inside step() counts, the caller may save or grade between steps."""
        self.last_step = time.monotonic()
        self.watching = True
        try:
            yield
        finally:
            self.watching = False


def _watch(watchdog_ref: weakref.ref, background_died_ref: weakref.WeakMethod) -> None:
    """The watchdog's thread: looks every quarter of the timeout (at most 10 s) until its engine is gone."""
    while True:
        watchdog = watchdog_ref()
        if watchdog is None:
            return
        pause = min(10.0, watchdog.timeout_s / 4)
        del watchdog  # no strong reference while asleep
        time.sleep(pause)
        watchdog, background_died = watchdog_ref(), background_died_ref()
        if watchdog is None or background_died is None:
            return
        if not watchdog.watching:
            continue
        quiet = time.monotonic() - watchdog.last_step
        if background_died():
            _end("vLLM's engine process died")
        elif quiet > watchdog.timeout_s:
            _end(f"the engine finished no step for {quiet:.0f}s (model.stall_timeout_s={watchdog.timeout_s:g})")
        del watchdog, background_died


def _end(why: str) -> None:
    log_engine_failed(why)
    for handler in logging.getLogger().handlers + log.handlers:
        handler.flush()
    os._exit(EXIT_ENGINE_FAILED)
