"""Run untrusted, model-written programs in a child process that cannot hurt the grader or the host.

The program never runs in our process. It gets a child with resource limits, a cleared
environment, a fresh working directory and, where the machine allows it, its own mount,
network, IPC, UTS and PID namespaces. Which isolation is available is detected once per process:

- ``root-namespaces`` (we are root): the program runs as a fresh unprivileged uid that owns no
  file, so RLIMIT_NPROC (counted per uid, ignored for root) bounds a fork bomb, and it can
  write nowhere but its own directory; /tmp, /var/tmp and /run/lock are empty read-only tmpfs.
- ``user-namespaces`` (not root, unprivileged user namespaces allowed: the usual SLURM node):
  the same namespaces; the program keeps our uid, so every host mount is made read-only, and a
  second user namespace locks that (its namespace root cannot remount them writable); our home
  (tokens, keys) is hidden, all but the interpreter's installation if it lives there.
  RLIMIT_NPROC is counted per user namespace there, so it bounds this program alone.
- ``process-group`` (neither works): rlimits, its own session, and a /proc scan for a per-run
  token in the environment to kill escaped descendants. No network or filesystem isolation;
  ``SandboxResult.network_isolated`` is False.

In both namespace modes the program is PID 1 of its PID namespace: when it exits or is killed,
the kernel kills every process it left behind, double-forked daemons included; its network
namespace has only a loopback device that is down, so nothing, not even 127.0.0.1, is reachable.

Not contained: total memory and CPU across the program's processes (limits are per process and
there is no cgroup: max_processes x memory_bytes can exceed the node), reading world-readable
host files, and kernel exploits (no seccomp filter).

The child's own setup between fork and exec (namespaces, ids, the private filesystem) lives in
`svd_hpc.sandbox_child`; this module detects the isolation, starts, watches and reaps the child.

Run as: ``python -c "from svd_hpc.sandbox import run_program; print(run_program('print(1)'))"``
"""

from __future__ import annotations

import logging
import math
import os
import random
import re
import resource
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .sandbox_child import (
    COVERED_DIRS,
    MOUNT_OPTION_FLAGS,
    SANDBOX_WORKDIR,
    SETUP_FAILED,
    ChildPlan,
    in_child,
)

log = logging.getLogger("svd_hpc")

Status = Literal["ok", "runtime_error", "timeout", "memory", "killed", "sandbox_error"]
MODES = ("root-namespaces", "user-namespaces", "process-group")

_TOKEN_VAR = "SVD_SANDBOX_TOKEN"


@dataclass(frozen=True)
class SandboxLimits:
    memory_bytes: int = 1 << 30  # RLIMIT_AS per process: a balloon gets MemoryError, not the OOM killer
    max_processes: int = 64  # RLIMIT_NPROC (threads count too)
    max_file_bytes: int = 64 << 20  # RLIMIT_FSIZE: any one file the program writes, stdout included
    max_open_files: int = 128
    workdir_bytes: int = 64 << 20  # size of the private tmpfs cwd (namespace modes): bounds disk use
    stderr_bytes: int = 64 << 10  # stderr kept in the result: head and tail, the middle elided
    cpu_grace_s: float = 1.0  # RLIMIT_CPU = timeout + this; the wall clock normally fires first


@dataclass(frozen=True)
class SandboxResult:
    status: Status
    returncode: int | None  # negative: killed by that signal; None: never started
    stdout: str
    stderr: str
    wall_s: float
    network_isolated: bool
    isolation: str = ""  # one of MODES


# ----------------------------------------------------------------------------- detection


@dataclass(frozen=True)
class _Isolation:
    mode: str
    interpreter: str


_detect_lock = threading.Lock()
_detected: _Isolation | None = None


def sandbox_isolation() -> str:
    """The isolation mode of this process (one of MODES), detected on first use by probing."""
    return _isolation().mode


def _isolation() -> _Isolation:
    global _detected
    with _detect_lock:
        if _detected is None:
            _detected = _detect()
        return _detected


def _detect(modes: tuple[str, ...] = MODES) -> _Isolation:
    # The sandboxed uid may not reach our interpreter (a pyenv under /root), so the system
    # ones are candidates too; graders need only the standard library.
    candidates = [sys.executable, getattr(sys, "_base_executable", ""), "/usr/bin/python3", "/usr/local/bin/python3"]
    interpreters = list(dict.fromkeys(p for p in candidates if p and os.path.exists(p)))
    # The program must also be able to start its interpreter again (multiprocessing, subprocess).
    probe = ("import json, heapq, bisect, collections, math, itertools, functools, fractions, os, sys\n"
             "print('ok' if os.access(sys.executable, os.X_OK) else 'interpreter not reachable')")
    for mode in modes:
        if mode == "root-namespaces" and os.geteuid() != 0:
            continue
        if mode == "user-namespaces" and os.geteuid() == 0:
            continue
        for interpreter in interpreters:
            iso = _Isolation(mode, interpreter)
            result = _run(iso, probe, stdin="", timeout_s=20.0, limits=SandboxLimits())
            if result.status == "ok" and result.stdout.strip() == "ok":
                log.info(f"sandbox isolation: {mode=} {interpreter=}")
                if mode == "process-group":
                    log.warning("sandbox: no namespaces here; untrusted code has network and can write where we can")
                return iso
            log.debug(f"sandbox probe failed: {mode=} {interpreter=} {result.status=} {result.stderr[-500:]!r}")
    raise RuntimeError("no way to run a sandboxed Python program on this machine (see the debug log)")


# ----------------------------------------------------------------------------- one run


def run_program(
    source: str,
    *,
    stdin: str = "",
    timeout_s: float = 6.0,
    language: str = "python",
    limits: SandboxLimits | None = None,
) -> SandboxResult:
    """Run `source` in a fresh sandboxed child; never raises for anything the program does."""
    if language != "python":
        raise ValueError(f"sandbox language {language!r} is not supported; only 'python'")
    return _run(_isolation(), source, stdin=stdin, timeout_s=timeout_s, limits=limits or SandboxLimits())


def _run(iso: _Isolation, source: str, *, stdin: str, timeout_s: float, limits: SandboxLimits) -> SandboxResult:
    namespaced = iso.mode != "process-group"
    start = time.perf_counter()
    token = uuid.uuid4().hex
    # As root, a fresh uid per run: it owns no file, shares no process count with another
    # sandbox, and can neither signal nor read any other process.
    uid = random.SystemRandom().randrange(2**31, 2**31 + 2**30) if os.geteuid() == 0 else None
    with tempfile.TemporaryDirectory(prefix="svd_sandbox_", ignore_cleanup_errors=True) as outer:
        # stdin/stdout/stderr are files, not pipes: no deadlock on large inputs, no reader
        # threads, and RLIMIT_FSIZE bounds what the program can print.
        stdin_path, stdout_path, stderr_path = (os.path.join(outer, n) for n in ("stdin", "stdout", "stderr"))
        Path(stdin_path).write_text(stdin, encoding="utf-8")
        if namespaced:
            workdir = SANDBOX_WORKDIR  # a tmpfs, mounted and filled inside the namespace
            userns = iso.mode == "user-namespaces"
            plan = ChildPlan(True, os.getpid(), source.encode(), uid, userns, limits.workdir_bytes,
                             _rlimits(limits, timeout_s), *(_home_plan(iso.interpreter) if userns else ((), None, ())))
        else:
            workdir = os.path.join(outer, "work")
            os.mkdir(workdir)
            Path(workdir, "main.py").write_text(source, encoding="utf-8")
            if uid is not None:
                os.chmod(outer, 0o711)
                os.chown(workdir, uid, uid)
            rlimits = _process_group_rlimits(limits, timeout_s, uid)
            plan = ChildPlan(False, os.getpid(), b"", uid, False, 0, rlimits, (), None, ())
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": workdir, "TMPDIR": workdir,
               "PYTHONDONTWRITEBYTECODE": "1"}  # for Pythons it starts without -B
        if not namespaced:
            env[_TOKEN_VAR] = token
        # -I: ignore PYTHON* variables and the user site; -B: no .pyc. Not -S: `exit()` comes
        # from site, and competitive programs call it.
        argv = [iso.interpreter, "-I", "-B", "main.py"]
        with open(stdin_path, "rb") as fin, open(stdout_path, "wb") as fout, open(stderr_path, "wb") as ferr:
            try:
                proc = subprocess.Popen(argv, stdin=fin, stdout=fout, stderr=ferr, env=env,
                                        cwd=outer if namespaced else workdir, start_new_session=True,
                                        preexec_fn=lambda: in_child(plan), close_fds=True)
            except (OSError, subprocess.SubprocessError) as exc:
                reason = f"{exc}\n{_read_capped(stderr_path, limits.stderr_bytes)}"
                wall = time.perf_counter() - start
                return SandboxResult("sandbox_error", None, "", reason, wall, namespaced, iso.mode)
        timed_out, returncode, cpu_s = _wait(proc, timeout_s, namespaced, token)
        wall = time.perf_counter() - start
        stdout = _read_capped(stdout_path, limits.max_file_bytes)
        stderr = _read_capped(stderr_path, limits.stderr_bytes)
    status = _classify(returncode, stderr, timed_out, cpu_s, timeout_s + limits.cpu_grace_s)
    return SandboxResult(status, returncode, stdout, stderr, wall, namespaced, iso.mode)


def _classify(returncode: int, stderr: str, timed_out: bool, cpu_s: float, cpu_limit_s: float) -> Status:
    if timed_out:
        return "timeout"
    if returncode == 0:
        return "ok"
    if stderr.startswith(SETUP_FAILED):
        return "sandbox_error"
    if "MemoryError" in stderr or "Cannot allocate memory" in stderr:
        return "memory"
    if returncode in (-signal.SIGKILL, -signal.SIGXCPU):
        # RLIMIT_CPU's hard limit kills with SIGKILL; any other SIGKILL is the OOM killer.
        return "timeout" if cpu_s >= cpu_limit_s - 0.5 else "killed"
    return "runtime_error"


def _wait(proc: subprocess.Popen, timeout_s: float, namespaced: bool, token: str) -> tuple[bool, int, float]:
    """Wait for exit or the wall clock; then make sure nothing the program started lives on."""
    pidfd = os.pidfd_open(proc.pid)
    try:
        timed_out = not select.select([pidfd], [], [], timeout_s)[0]
        if timed_out:
            if namespaced:
                # Kill the namespace's init: the kernel then kills every process in it, and
                # its waiter (our child) exits only after that.
                for init in _children(proc.pid):
                    _signal(init, signal.SIGKILL)
                select.select([pidfd], [], [], 2.0)
            _kill_process_group(proc.pid)
            _signal(proc.pid, signal.SIGKILL)
    finally:
        os.close(pidfd)
    _, status_word, rusage = os.wait4(proc.pid, 0)  # wait4 for the CPU time of the program too
    proc.returncode = os.waitstatus_to_exitcode(status_word)  # Popen must not wait again
    if not namespaced:
        # No PID namespace: descendants that left the process group are found by the token in
        # their environment (one that clears its environment escapes this: documented above).
        _kill_process_group(proc.pid)
        _kill_token_holders(token)
    return timed_out, proc.returncode, rusage.ru_utime + rusage.ru_stime


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _kill_process_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _kill_token_holders(token: str) -> None:
    needle = f"{_TOKEN_VAR}={token}".encode()
    for _ in range(10):  # again: a process may fork while we scan
        found = False
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                try:
                    if needle in Path(entry.path, "environ").read_bytes():
                        found = True
                        _signal(int(entry.name), signal.SIGKILL)
                except OSError:
                    pass
        if not found:
            return
        time.sleep(0.01)


def _read_capped(path: str, cap: int) -> str:
    with open(path, "rb") as f:
        data = f.read(cap + 1)
        if len(data) > cap:
            # Keep head and tail: a traceback's last lines say what went wrong.
            size = os.fstat(f.fileno()).st_size
            head = data[: cap // 8]
            f.seek(size - (cap - len(head)))
            tail = f.read()
            data = head + f"\n[... {size - len(head) - len(tail)} bytes elided ...]\n".encode() + tail
    return data.decode("utf-8", errors="replace")


def _rlimits(limits: SandboxLimits, timeout_s: float) -> tuple[tuple[int, tuple[int, int]], ...]:
    cpu = math.ceil(timeout_s + limits.cpu_grace_s)
    return (
        (resource.RLIMIT_CPU, (cpu, cpu + 1)),
        (resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes)),
        (resource.RLIMIT_NPROC, (limits.max_processes, limits.max_processes)),
        (resource.RLIMIT_FSIZE, (limits.max_file_bytes, limits.max_file_bytes)),
        (resource.RLIMIT_NOFILE, (limits.max_open_files, limits.max_open_files)),
        (resource.RLIMIT_CORE, (0, 0)),
    )


def _process_group_rlimits(limits: SandboxLimits, timeout_s: float, uid: int | None):
    rlimits = _rlimits(limits, timeout_s)
    if uid is not None:
        return rlimits
    # RLIMIT_NPROC counts every process of our uid: leave room for those already running.
    own = sum(1 for e in os.scandir("/proc") if e.name.isdigit() and _owner(e.path) == os.getuid())
    return tuple((r, (v[0] + own, v[1] + own)) if r == resource.RLIMIT_NPROC else (r, v) for r, v in rlimits)


def _owner(path: str) -> int | None:
    try:
        return os.stat(path).st_uid
    except OSError:
        return None


def _home_plan(interpreter: str) -> tuple[tuple[tuple[str, int], ...], str | None, tuple[str, ...]]:
    home = os.path.realpath(os.path.expanduser("~"))
    if home == "/" or not os.path.isdir(home) or any(_is_under(home, d) or _is_under(d, home) for d in COVERED_DIRS):
        return _host_mounts(), None, ()  # no home, or one the /tmp-like covers hide (or would lose) already
    # The interpreter may live in our home (conda, pyenv): keep its installation visible.
    needed = {os.path.dirname(os.path.dirname(os.path.realpath(interpreter)))}
    if os.path.realpath(interpreter) == os.path.realpath(sys.executable):
        needed |= {os.path.realpath(sys.prefix), os.path.realpath(sys.base_prefix)}
    if any(_is_under(home, p) for p in needed):  # the interpreter's installation is the whole home
        return _host_mounts(), None, ()
    return _host_mounts(), home, tuple(sorted(p for p in needed if _is_under(p, home)))


def _host_mounts() -> tuple[tuple[str, int], ...]:
    """Mount points to make read-only, with the per-mount flags a remount must repeat."""
    mounts = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])  # "\040" is a space
        if point.startswith(("/proc", "/sys", "/dev")) or any(_is_under(point, d) for d in COVERED_DIRS):
            continue
        flags = 0
        for option in fields[5].split(","):
            flags |= MOUNT_OPTION_FLAGS.get(option, 0)
        mounts.append((point, flags))
    return tuple(mounts)


def _is_under(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory + "/")
