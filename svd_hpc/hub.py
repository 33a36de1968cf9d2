"""`python -m svd_hpc.hub RUN_DIR`: push again what a run failed to publish (the command README and the
run's messages name); the pushing itself is publish/hub.py."""

import sys

from .publish.hub import main

if __name__ == "__main__":
    sys.exit(main())
