"""Resource limits of a sandboxed program: per-process rlimits, and a cgroup v2 per program where one is delegated.

Total memory: where a cgroup v2 with the memory and pids controllers is delegated to us (writable),
each program gets its own child cgroup with memory.max and pids.max. Otherwise only per-process
limits bound it: RLIMIT_AS x RLIMIT_NPROC (`memory_bound` says which applies).
"""

from __future__ import annotations

import logging
import math
import os
import resource
import threading
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("svd_hpc")


@dataclass(frozen=True)
class SandboxLimits:
    # RLIMIT_AS per process: a balloon gets MemoryError, not the OOM killer; None sets none (the
    # authors' LiveCodeBench harness), and then no memory.max either
    memory_bytes: int | None = 1 << 30
    max_processes: int = 64  # RLIMIT_NPROC and the cgroup's pids.max (threads count too)
    max_file_bytes: int = 64 << 20  # RLIMIT_FSIZE: any one file the program writes, stdout included
    max_open_files: int = 128
    workdir_bytes: int = 64 << 20  # size of the private tmpfs cwd (namespace modes): bounds disk use
    stderr_bytes: int = 64 << 10  # stderr kept in the result: head and tail, the middle elided
    cpu_grace_s: float = 1.0  # RLIMIT_CPU = timeout + this; the wall clock normally fires first
    total_memory_bytes: int | None = 2 << 30  # memory.max of the program's cgroup, all its processes together


def rlimit_table(
    limits: SandboxLimits, timeout_s: float, nproc_offset: int = 0
) -> tuple[tuple[int, tuple[int, int]], ...]:
    cpu = math.ceil(timeout_s + limits.cpu_grace_s)
    nproc = limits.max_processes + nproc_offset
    memory = () if limits.memory_bytes is None else ((resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes)),)
    return (
        (resource.RLIMIT_CPU, (cpu, cpu + 1)),
        *memory,
        (resource.RLIMIT_NPROC, (nproc, nproc)),
        (resource.RLIMIT_FSIZE, (limits.max_file_bytes, limits.max_file_bytes)),
        (resource.RLIMIT_NOFILE, (limits.max_open_files, limits.max_open_files)),
        (resource.RLIMIT_CORE, (0, 0)),
    )


def _nproc_offset(mode: str, uid: int | None) -> int:
    """Tasks the kernel already counts against the program's RLIMIT_NPROC before it starts.

    The count is per user (per user namespace), and the kernel counts tasks, i.e. threads: a
    grader with a loaded engine has hundreds. Our own namespace modes and a fresh uid start from
    zero; elsewhere the program may share our uid's count, so leave room for all of it.
    """
    if uid is not None or mode in ("root-namespaces", "user-namespaces"):
        return 0
    return user_tasks(os.getuid())


def user_tasks(uid: int) -> int:
    """Threads of every process whose real uid is `uid` (what RLIMIT_NPROC counts), from /proc."""
    total = 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                status = Path(entry.path, "status").read_text()
            except OSError:
                continue  # gone meanwhile
            fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
            if int(fields["Uid"].split()[0]) == uid:
                total += int(fields["Threads"])
    return total


# ----------------------------------------------------------------------------- total memory


@dataclass(frozen=True)
class Delegation:
    parent: str | None  # a cgroup v2 directory of ours, with memory and pids enabled for children
    reason: str  # why there is none


_cgroup_lock = threading.Lock()
_cgroup: Delegation | None = None
_LEAF = "svd-grader"  # where our own processes move, so our cgroup may enable controllers for children


def memory_bound(limits: SandboxLimits) -> str:
    """One sentence: what bounds the memory of all of a program's processes together."""
    d = _delegation()
    if limits.memory_bytes is None:
        return "no memory limit per process or per program (eval.code_memory_mb: null)"
    if d.parent:
        return (
            f"cgroup v2 {d.parent}: memory.max {limits.total_memory_bytes >> 20} MiB and pids.max "
            f"{limits.max_processes} per program"
        )
    return (
        f"no delegated cgroup v2 ({d.reason}): only per process RLIMIT_AS {limits.memory_bytes >> 20} MiB "
        f"x RLIMIT_NPROC {limits.max_processes} processes, i.e. up to "
        f"{limits.memory_bytes * limits.max_processes >> 30} GiB per program"
    )


def _delegation() -> Delegation:
    global _cgroup
    with _cgroup_lock:
        if _cgroup is None:
            _cgroup = delegate_cgroup()
            log.info(f"sandbox total memory: {_cgroup.parent or _cgroup.reason}")
        return _cgroup


def delegate_cgroup(mountinfo: str = "/proc/self/mountinfo", membership: str = "/proc/self/cgroup") -> Delegation:
    """Our cgroup v2 directory, made ready for a child cgroup per program, if it is delegated to us.

    A cgroup with processes cannot give controllers to children ("no internal processes"), so our
    cgroup's processes (the job's) move into a leaf below it first, as systemd's delegation
    rules ask; limits set on our cgroup by the site still bound them all.
    """
    try:
        mounts = [line.split() for line in Path(mountinfo).read_text().splitlines()]
        roots = [f[4] for f in mounts if f[f.index("-") + 1] == "cgroup2"]
        ours = [line.split(":", 2)[2] for line in Path(membership).read_text().splitlines() if line.startswith("0::")]
    except (OSError, ValueError, IndexError) as exc:
        return Delegation(None, f"cannot read the cgroup setup: {exc}")
    if not roots or not ours:
        return Delegation(None, "no cgroup v2 hierarchy")
    here = Path(roots[0] + ours[0].rstrip("/")) if ours[0] != "/" else Path(roots[0])
    if here.name == _LEAF:  # another grader of this job got there first
        here = here.parent
    try:
        controllers = set((here / "cgroup.controllers").read_text().split())
        if not {"memory", "pids"} <= controllers:
            return Delegation(
                None,
                f"cgroup v2 {here} has no memory and pids controllers (only: "
                f"{' '.join(sorted(controllers)) or 'none'})",
            )
        if not all(os.access(here / f, os.W_OK) for f in ("cgroup.procs", "cgroup.subtree_control")):
            return Delegation(None, f"cgroup v2 {here} is not delegated to us (not writable)")
        enabled = set((here / "cgroup.subtree_control").read_text().split())
        if not {"memory", "pids"} <= enabled:
            (here / _LEAF).mkdir(exist_ok=True)
            for pid in (here / "cgroup.procs").read_text().split():
                try:
                    (here / _LEAF / "cgroup.procs").write_text(pid)
                except ProcessLookupError:
                    pass  # exited meanwhile
            (here / "cgroup.subtree_control").write_text("+memory +pids")
    except OSError as exc:
        return Delegation(None, f"cgroup v2 {here} cannot hold a cgroup per program: {exc}")
    return Delegation(str(here), "")


class _ProgramCgroup:
    """One program's own cgroup (if delegated): memory.max and pids.max for all its processes."""

    def __init__(self, token: str, limits: SandboxLimits):
        parent = _delegation().parent
        self.path = Path(parent, f"sandbox-{token}") if parent else None
        self.limits = limits
        self.procs: str | None = None

    def __enter__(self) -> _ProgramCgroup:
        if self.path:
            self.path.mkdir()
            if self.limits.total_memory_bytes is not None:
                (self.path / "memory.max").write_text(str(self.limits.total_memory_bytes))
            (self.path / "pids.max").write_text(str(self.limits.max_processes))
            if (self.path / "memory.swap.max").exists():
                (self.path / "memory.swap.max").write_text("0")  # else swap would stretch memory.max
            self.procs = str(self.path / "cgroup.procs")
        return self

    def kill(self) -> None:
        if self.path and (self.path / "cgroup.kill").exists():
            (self.path / "cgroup.kill").write_text("1")

    def oom_killed(self) -> bool:
        if not self.path:
            return False
        events = dict(line.split() for line in (self.path / "memory.events").read_text().splitlines())
        return int(events.get("oom_kill", 0)) > 0

    def __exit__(self, *exc) -> None:
        if self.path:
            self.kill()
            for _ in range(100):  # the kernel frees the cgroup once its last process is reaped
                try:
                    self.path.rmdir()
                    return
                except FileNotFoundError:
                    return
                except OSError:
                    time.sleep(0.01)
            log.warning(f"sandbox: could not remove cgroup {self.path}")
