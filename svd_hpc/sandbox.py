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

Run as: ``python -c "from svd_hpc.sandbox import run_program; print(run_program('print(1)'))"``
"""

from __future__ import annotations

import ctypes
import errno
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

log = logging.getLogger("svd_hpc")

Status = Literal["ok", "runtime_error", "timeout", "memory", "killed", "sandbox_error"]
MODES = ("root-namespaces", "user-namespaces", "process-group")

# Inside the namespaces the program always sees the same cwd, so its output cannot depend on
# a random host path.
SANDBOX_WORKDIR = "/tmp/sandbox"
# World-writable directories a program could otherwise drop files into.
_COVERED_DIRS = ("/tmp", "/var/tmp", "/run/lock")
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
            plan = _ChildPlan(True, os.getpid(), source.encode(), uid, userns, limits.workdir_bytes,
                              _rlimits(limits, timeout_s), *(_home_plan(iso.interpreter) if userns else ((), None, ())))
        else:
            workdir = os.path.join(outer, "work")
            os.mkdir(workdir)
            Path(workdir, "main.py").write_text(source, encoding="utf-8")
            if uid is not None:
                os.chmod(outer, 0o711)
                os.chown(workdir, uid, uid)
            rlimits = _process_group_rlimits(limits, timeout_s, uid)
            plan = _ChildPlan(False, os.getpid(), b"", uid, False, 0, rlimits, (), None, ())
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
                                        preexec_fn=lambda: _in_child(plan), close_fds=True)
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
    if stderr.startswith(_SETUP_FAILED):
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
    if home == "/" or not os.path.isdir(home) or any(_is_under(home, d) or _is_under(d, home) for d in _COVERED_DIRS):
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
        if point.startswith(("/proc", "/sys", "/dev")) or any(_is_under(point, d) for d in _COVERED_DIRS):
            continue
        flags = 0
        for option in fields[5].split(","):
            flags |= _MOUNT_OPTION_FLAGS.get(option, 0)
        mounts.append((point, flags))
    return tuple(mounts)


def _is_under(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory + "/")


# ----------------------------------------------------------------------------- in the child
# Everything below runs in the forked child, between fork and exec (Popen's preexec_fn). It
# makes system calls and nothing else: no imports, no logging, no locks another thread of the
# parent might have held at fork.

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
_libc.fork.restype = ctypes.c_int

_CLONE_NEWNS, _CLONE_NEWUTS, _CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
_CLONE_NEWUSER, _CLONE_NEWPID, _CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 1, 2, 4, 8
_MS_REMOUNT, _MS_NOATIME, _MS_NODIRATIME, _MS_BIND = 32, 1024, 2048, 4096
_MS_REC, _MS_PRIVATE, _MS_RELATIME, _MS_STRICTATIME = 16384, 1 << 18, 1 << 21, 1 << 24
_PR_SET_PDEATHSIG, _PR_SET_NO_NEW_PRIVS = 1, 38
# Per-mount options a bind remount must repeat, or the kernel refuses it (EPERM) for mounts
# inherited into a user namespace.
_MOUNT_OPTION_FLAGS = {"nosuid": _MS_NOSUID, "nodev": _MS_NODEV, "noexec": _MS_NOEXEC, "noatime": _MS_NOATIME,
                       "nodiratime": _MS_NODIRATIME, "relatime": _MS_RELATIME, "strictatime": _MS_STRICTATIME}
_SETUP_FAILED = "sandbox setup failed: "


@dataclass(frozen=True)
class _ChildPlan:
    namespaces: bool
    grader_pid: int  # our pid: if we die, the sandbox must die too
    source: bytes  # main.py, written into the tmpfs cwd (namespace modes)
    uid: int | None  # run as this uid (we are root), else keep ours
    user_namespaces: bool
    workdir_bytes: int
    rlimits: tuple
    # user-namespaces mode, where the program has our uid: every host mount becomes read-only,
    # and our home (tokens, keys, caches) is hidden but for the interpreter's own folders in it.
    readonly_mounts: tuple[tuple[str, int], ...]
    hidden_home: str | None
    kept_in_home: tuple[str, ...]


def _in_child(plan: _ChildPlan) -> None:
    # Popen reports only "Exception occurred in preexec_fn"; put the reason on the program's
    # stderr (our stderr file by now) so the sandbox_error says what failed.
    try:
        if plan.namespaces:
            _enter_namespaces(plan)
        else:
            if plan.uid is not None:
                _become(plan.uid)
            if not _die_with(plan.grader_pid):
                os._exit(255)
        _check(_libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(NO_NEW_PRIVS)")  # no setuid binary helps it
        # Last: RLIMIT_AS would also bind the Python code above, in a copy of a possibly huge parent.
        for which, value in plan.rlimits:
            resource.setrlimit(which, value)
    except BaseException as exc:
        os.write(2, f"{_SETUP_FAILED}{exc!r}\n".encode())
        raise


def _enter_namespaces(plan: _ChildPlan) -> None:
    isolate = _CLONE_NEWNS | _CLONE_NEWNET | _CLONE_NEWIPC | _CLONE_NEWUTS
    if plan.user_namespaces:
        uid, gid = os.getuid(), os.getgid()
        _check(_libc.unshare(_CLONE_NEWUSER | isolate), "unshare")
        _map_ids(uid, gid)
        _private_filesystem(plan, owner=0)
        # A second user namespace: mounts inherited into it are locked, so the program (its
        # root) cannot remount the read-only ones writable.
        _check(_libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNS | _CLONE_NEWPID), "unshare")
        _map_ids(0, 0)
    else:
        _check(_libc.unshare(isolate), "unshare")
        _private_filesystem(plan, owner=plan.uid)
        _check(_libc.unshare(_CLONE_NEWPID), "unshare")
    # Only our children enter the new PID namespace: fork, the child goes on to exec the
    # program as the namespace's init, and this process waits for it.
    # libc's fork, not os.fork: this process is single-threaded, so Python's after-fork hooks
    # (reseeding, lock resets, thread bookkeeping) are not needed, and they cost milliseconds.
    init = _libc.fork()
    _check(min(init, 0), "fork")
    if init:
        _wait_for_init(init, plan.grader_pid)
    _check(_libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl(PDEATHSIG)")
    _mount("proc", "/proc", "proc", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC)  # shows only this namespace
    if plan.uid is not None:
        _become(plan.uid)
        # Changing uid clears the parent-death signal: set it again, so the program dies with
        # its waiter even if we are killed before we can kill it.
        _check(_libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl(PDEATHSIG)")
    os.chdir(SANDBOX_WORKDIR)


def _wait_for_init(init: int, grader_pid: int) -> None:
    """Outside the namespace: wait for its init and exit as it did. Never returns."""
    code = 255
    try:
        # Popen learns that exec succeeded when every copy of its error pipe is closed.
        os.closerange(3, 1 << 16)
        # If the grader is killed (SLURM preemption), this waiter dies, and with it the init.
        if not _die_with(grader_pid):
            os.kill(init, signal.SIGKILL)
        _, status = os.waitpid(init, 0)
        if os.WIFSIGNALED(status):
            os.kill(os.getpid(), os.WTERMSIG(status))  # restore_signals left defaults in place
            code = 128 + os.WTERMSIG(status)
        else:
            code = os.waitstatus_to_exitcode(status)
    finally:
        os._exit(code)


def _die_with(parent_pid: int) -> bool:
    """Get SIGKILL when the parent dies; False if it already has."""
    _check(_libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl(PDEATHSIG)")
    return os.getppid() == parent_pid


def _become(uid: int) -> None:
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)


def _map_ids(uid: int, gid: int) -> None:
    for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"), ("gid_map", f"0 {gid} 1")):
        with open(f"/proc/self/{name}", "w") as f:
            f.write(text)


def _private_filesystem(plan: _ChildPlan, owner: int) -> None:
    # Nothing mounted from here on may propagate back to the host.
    _mount(None, "/", None, _MS_REC | _MS_PRIVATE)
    hardened = _MS_NOSUID | _MS_NODEV | _MS_NOEXEC
    covered = [d for d in _COVERED_DIRS if os.path.isdir(d) and not os.path.islink(d)]
    if "/tmp" not in covered:
        raise OSError(errno.ENOTDIR, "/tmp is not a directory: nowhere private to put the working directory")
    for d in covered:
        _mount("tmpfs", d, "tmpfs", hardened, "size=64k,mode=755")
    os.mkdir(SANDBOX_WORKDIR)
    # The cwd is its own size-limited tmpfs: it bounds disk use and vanishes with the namespace.
    _mount("tmpfs", SANDBOX_WORKDIR, "tmpfs", hardened, f"size={plan.workdir_bytes},mode=700,uid={owner},gid={owner}")
    with open(os.path.join(SANDBOX_WORKDIR, "main.py"), "wb") as f:
        f.write(plan.source)
    for d in covered:
        _mount(None, d, None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY | hardened)
    if os.path.isdir("/dev/shm"):
        # Private and writable: multiprocessing needs it; what is written there dies with us.
        _mount("tmpfs", "/dev/shm", "tmpfs", hardened, "size=16m,mode=1777")
    for point, flags in plan.readonly_mounts:
        # MS_BIND: a per-mount change in our namespace, never a remount of the host's filesystem.
        ret = _libc.mount(None, point.encode(), None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY | flags, None)
        tolerable = ctypes.get_errno() in (errno.EACCES, errno.EPERM, errno.EINVAL, errno.ENOENT)
        if ret != 0 and (point == "/" or not tolerable):
            _check(ret, f"read-only remount of {point}")
    if plan.hidden_home:
        kept = [os.open(path, os.O_PATH) for path in plan.kept_in_home]  # reachable once home is covered
        _mount("tmpfs", plan.hidden_home, "tmpfs", hardened, "size=64k,mode=755")
        for path, fd in zip(plan.kept_in_home, kept, strict=True):
            os.makedirs(path)
            # A bind of a read-only mount is read-only: the remounts above already apply.
            _mount(f"/proc/self/fd/{fd}", path, None, _MS_BIND | _MS_REC)
            os.close(fd)
        _mount(None, plan.hidden_home, None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY | hardened)


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    def enc(s: str | None) -> bytes | None:
        return None if s is None else s.encode()

    _check(_libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)), f"mount {target}")
