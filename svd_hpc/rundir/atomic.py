"""Atomic writes: a file or folder appears under its name complete, or not at all.

A task writes its output under a temporary name and renames it into place; a full, read-only or
foreign filesystem raises StorageError, one sentence that names the path and what to do. Imports
nothing of svd_hpc, so the training checkpoints and the model cache write through it too.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path


class StorageError(OSError):
    """The run directory cannot take a write (full, over quota, read-only, not ours)."""

    def __str__(self) -> str:
        return self.strerror


# what the user can do about each: the task's output was not written, so resuming redoes it
_STORAGE_FAULTS = {
    errno.ENOSPC: "the filesystem is full; free space there (or move the run directory) and resume the run",
    errno.EDQUOT: "the disk quota is used up; free space or raise the quota, then resume the run",
    errno.EROFS: "the filesystem is read-only; make it writable (or move the run directory) and resume the run",
    errno.EACCES: "permission denied; make the run directory writable for this user and resume the run",
}


def storage_error(err: OSError, path: Path) -> OSError:
    """`err` as one sentence naming `path` and what to do, when it is a storage fault; else `err`."""
    what = _STORAGE_FAULTS.get(err.errno)
    if what is None:
        return err
    return StorageError(err.errno, f"cannot write {path}: {what}.")


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling of `path`; rename it onto `path` only if the block succeeds.

    A full, read-only or foreign filesystem raises StorageError naming `path`; the temporary
    file is gone and `path` keeps what it held before.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        if tmp.is_dir() and path.exists():
            # os.replace cannot put a directory over a non-empty one; a re-run replaces it whole
            shutil.rmtree(path)
        os.replace(tmp, path)
    except StorageError:
        raise
    except OSError as err:
        fault = storage_error(err, path)
        if fault is err:
            raise
        raise fault from err
    finally:
        # best effort: on a filesystem gone read-only even this fails, and the error above matters
        with contextlib.suppress(OSError):
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            elif tmp.exists():
                tmp.unlink()


def atomic_write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_json(path: Path, data) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
