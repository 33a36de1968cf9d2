"""The environment tasks run in: the launcher's, without its secrets.

Tasks read only the run directory and the HF cache the launch staged (the hub is offline for
them), so no task needs a token, key or password. Keeping them out of what the scheduler gets
keeps them out of everything after it: the job environment slurmctld saves (and `sacct
--env-vars` shows where AccountingStoreFlags=job_env), a task's logs and crash output, and the
programs a task starts.
"""

from __future__ import annotations

import os
from collections.abc import Mapping


def is_secret(name: str) -> bool:
    """HF_TOKEN and any *_TOKEN, *_KEY, *PASSWORD* or *SECRET* variable."""
    name = name.upper()
    return name.endswith(("_TOKEN", "_KEY")) or name in ("TOKEN", "KEY") or "PASSWORD" in name or "SECRET" in name


def without_secrets(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """A copy of `environ` (default: this process's) with every secret variable left out."""
    environ = os.environ if environ is None else environ
    return {name: value for name, value in environ.items() if not is_secret(name)}


def drop_secrets() -> list[str]:
    """Remove secret variables from this process's environment; returns their names."""
    names = [name for name in os.environ if is_secret(name)]
    for name in names:
        del os.environ[name]
    return names
