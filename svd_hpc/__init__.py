"""svd_hpc: Self-Verified Distillation of language models on SLURM clusters."""

import logging

__version__ = "0.1.0"

logging.getLogger("svd_hpc").addHandler(logging.NullHandler())
