"""`python -m svd_hpc.task STAGE --run-dir DIR`: every rendered sbatch script, queued job and prepared
script calls this command; the task runner itself is runner/task.py."""

import sys

from .runner.task import main

if __name__ == "__main__":
    sys.exit(main(exit_when_done=True))
