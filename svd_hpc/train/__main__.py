"""Run as:  torchrun --nproc_per_node=N -m svd_hpc.train RUN_DIR   (the train stage outside the launcher)."""

import logging
import os
import sys

from ..runner.task import run_once

rank = os.environ.get("RANK", "0")
logging.basicConfig(
    level=logging.INFO if rank == "0" else logging.WARNING, format=f"%(asctime)s [train rank{rank}] %(message)s"
)
if len(sys.argv) != 2:
    sys.exit("usage: torchrun --nproc_per_node=N -m svd_hpc.train RUN_DIR")
run_once(sys.argv[1], "train", 0)
