"""Toy stage bodies that report progress in chunks, like the real chunked stages (tests/test_status.py).

Tests put them in place of the real bodies: SVD_HPC_TEST_BODIES=tests.progress_stages:BODIES.
"""

from __future__ import annotations

import time

from svd_hpc.rundir import progress
from svd_hpc.rundir.layout import RunDir
from tests import toy_stages


def chunked_generate(run: RunDir, index: int) -> dict:
    """The toy generate, after reporting 3 chunks of 2 questions, 0.6 s apart."""
    tracker = progress.start(run, "generate", index, 6, "questions", every=2)
    for _ in range(3):
        time.sleep(0.6)
        tracker.update(2, 100)
    return toy_stages.generate(run, index)


BODIES = {**toy_stages.BODIES, "generate": chunked_generate}
