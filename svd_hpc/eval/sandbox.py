"""Run untrusted, model-written programs in a child process that cannot hurt the grader or the host.

The program never runs in our process. It gets a child with resource limits, a cleared
environment, a fresh working directory and, where the machine allows it, its own mount,
network, IPC, UTS and PID namespaces. Which isolation is available is detected once per process,
strongest first; a mode that cannot start here is skipped (its reason in the debug log):

- ``root-namespaces`` (we are the host's root): the program runs as a fresh unprivileged uid that
  owns no file, so RLIMIT_NPROC (counted per uid, ignored for root) bounds a fork bomb, and it can
  write nowhere but its own directory; /tmp, /var/tmp and /run/lock are empty read-only tmpfs.
- ``user-namespaces`` (not root, or a fake root, with unprivileged user namespaces allowed: the
  usual SLURM node): the same namespaces; the program keeps our uid, so every host mount is made
  read-only, and a second user namespace locks that (its namespace root cannot remount them
  writable); our home (tokens, keys) is hidden, all but the interpreter's installation if it lives
  there. RLIMIT_NPROC is counted per user namespace there, so it bounds this program alone.
- ``bubblewrap`` (``bwrap``, often installed setuid where user namespaces are off): --unshare-all,
  the host read-only, empty read-only /tmp-likes and home, a size-limited tmpfs cwd, no capabilities.
- ``apptainer`` (or singularity, with the image in $SVD_SANDBOX_IMAGE): --containall with
  ``--net --network none``; where the site does not allow that, the mode is skipped.
- ``process-group`` (nothing above works): rlimits, its own session, and a /proc scan for a per-run
  token in the environment to kill escaped descendants. No network or filesystem isolation:
  ``require_isolation`` refuses it unless the caller allows unisolated code explicitly.

A fake root (uid 0 inside a user namespace: apptainer --fakeroot, rootless podman, ``unshare
--user --map-root-user``) is not the host's root: it has no second uid to give the program, so it
gets the user-namespace mode, else bubblewrap (which works there even with nested user namespaces
blocked), else the refusal.

In every mode but process-group the program's PID namespace dies with it: the kernel kills every
process it left behind, double-forked daemons included; its network namespace has only a loopback
device, so nothing outside, not even the grader's 127.0.0.1, is reachable.

Total memory: where a cgroup v2 with the memory and pids controllers is delegated to us (writable),
each program gets its own child cgroup with memory.max and pids.max. Otherwise only per-process
limits bound it: RLIMIT_AS x RLIMIT_NPROC (`memory_bound` says which applies). Not contained:
reading world-readable host files, and kernel exploits (no seccomp filter).

The child's own setup between fork and exec (namespaces, ids, the private filesystem) lives in
`svd_hpc.eval.sandbox_child`; this module detects the isolation, starts, watches and reaps the child.

Run as: ``python -c "from svd_hpc.eval.sandbox import run_program; print(run_program('print(1)'))"``
"""

from __future__ import annotations

import logging
import math
import os
import random
import re
import resource
import select
import shutil
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
MODES = ("root-namespaces", "user-namespaces", "bubblewrap", "apptainer", "process-group")
ISOLATING = MODES[:-1]  # each hides our files and network from the program
UNAVAILABLE = "unavailable"  # not even process-group could run a program

_TOKEN_VAR = "SVD_SANDBOX_TOKEN"
IMAGE_VAR = "SVD_SANDBOX_IMAGE"  # the apptainer image (.sif or sandbox directory) with python3
_HOST_UID_MAP = ["0", "0", "4294967295"]  # /proc/self/uid_map of the host's user namespace
# A fresh uid per run as root, unused by real accounts; below 2**31 because bwrap parses ids as int.
_FRESH_UIDS = (2**31 - 2**28, 2**31 - 2)


@dataclass(frozen=True)
class SandboxLimits:
    memory_bytes: int = 1 << 30  # RLIMIT_AS per process: a balloon gets MemoryError, not the OOM killer
    max_processes: int = 64  # RLIMIT_NPROC and the cgroup's pids.max (threads count too)
    max_file_bytes: int = 64 << 20  # RLIMIT_FSIZE: any one file the program writes, stdout included
    max_open_files: int = 128
    workdir_bytes: int = 64 << 20  # size of the private tmpfs cwd (namespace modes): bounds disk use
    stderr_bytes: int = 64 << 10  # stderr kept in the result: head and tail, the middle elided
    cpu_grace_s: float = 1.0  # RLIMIT_CPU = timeout + this; the wall clock normally fires first
    total_memory_bytes: int = 2 << 30  # memory.max of the program's cgroup, all its processes together


@dataclass(frozen=True)
class SandboxResult:
    status: Status
    returncode: int | None  # negative: killed by that signal; None: never started
    stdout: str
    stderr: str
    wall_s: float
    network_isolated: bool
    isolation: str = ""  # one of MODES


class IsolationMissing(ValueError):
    """Model-written code would run unisolated, and the configuration does not allow that."""


# ----------------------------------------------------------------------------- who we are


def uid_map() -> str:
    try:
        return " ".join(Path("/proc/self/uid_map").read_text().split())
    except OSError:
        return " ".join(_HOST_UID_MAP)  # no /proc: nothing says we are in a user namespace


def fake_root() -> bool:
    """uid 0 inside a user namespace that is not the host's: root there, an ordinary user outside."""
    return os.geteuid() == 0 and uid_map().split() != _HOST_UID_MAP


def real_root() -> bool:
    return os.geteuid() == 0 and not fake_root()


# ----------------------------------------------------------------------------- detection


@dataclass(frozen=True)
class _Isolation:
    mode: str
    interpreter: str
    tool: str = ""  # the bwrap or apptainer executable
    # Why each stronger mode is not used here (for the refusal and the record).
    missing: tuple[tuple[str, str], ...] = ()


_detect_lock = threading.Lock()
_detected: _Isolation | None = None


def sandbox_isolation() -> str:
    """The isolation mode of this process (one of MODES, or UNAVAILABLE), detected on first use by probing."""
    return _isolation().mode


def isolation_record(limits: SandboxLimits | None = None) -> dict:
    """What the report and the task summary state about the sandbox used here."""
    iso = _isolation()
    return {
        "isolation": iso.mode,
        "network_isolated": iso.mode in ISOLATING,
        "total_memory": memory_bound(limits or SandboxLimits()),
        "missing": dict(iso.missing),
    }


def require_isolation(allow_unisolated: bool, what: str = "model-written code") -> str:
    """The isolation mode, or IsolationMissing when none isolates and that is not allowed."""
    iso = _isolation()
    if iso.mode in ISOLATING:
        return iso.mode
    if iso.mode == "process-group" and allow_unisolated:
        log.warning(f"sandbox: {what} runs UNISOLATED (process-group: network, our files) as the config allows")
        return iso.mode
    missing = "; ".join(f"{mode}: {reason}" for mode, reason in iso.missing)
    raise IsolationMissing(
        f"{what} cannot be isolated on this machine ({missing}); install bubblewrap or enable unprivileged "
        f"user namespaces on the compute nodes, or set eval.allow_unisolated_code: true to run it with "
        f"network access and our file permissions."
        if iso.mode == "process-group"
        else f"{what} cannot run in any sandbox on this machine ({missing})."
    )


def _isolation() -> _Isolation:
    global _detected
    with _detect_lock:
        if _detected is None:
            _detected = _detect()
        return _detected


def _detect(modes: tuple[str, ...] = MODES) -> _Isolation:
    """The first of `modes` that runs a probe program; never raises for a property of the machine."""
    missing: list[tuple[str, str]] = []
    for mode in modes:
        reason = _precondition(mode)
        if reason is None:
            iso, reason = _probe(mode, tuple(missing))
            if iso is not None:
                log.info(
                    f"sandbox isolation: {mode} (interpreter {iso.interpreter}{', ' + iso.tool if iso.tool else ''})"
                )
                if mode not in ISOLATING:
                    log.warning(
                        f"sandbox: no isolation works here; untrusted code would have network access "
                        f"and our file permissions ({'; '.join(f'{m}: {r}' for m, r in missing)})"
                    )
                return iso
        log.debug(f"sandbox: mode {mode} unavailable: {reason}")
        missing.append((mode, reason))
    log.warning(f"sandbox: no way to run a program here ({'; '.join(f'{m}: {r}' for m, r in missing)})")
    return _Isolation(UNAVAILABLE, "", missing=tuple(missing))


def _precondition(mode: str) -> str | None:
    """Why `mode` cannot work here without trying it, or None."""
    if mode == "root-namespaces":
        if fake_root():
            return f"uid 0 is a fake root here (uid_map {uid_map()!r}): no second uid to run the program as"
        return None if os.geteuid() == 0 else "not root"
    if mode == "user-namespaces" and real_root():
        return "root gets root-namespaces (a fresh uid bounds a fork bomb; root's own processes are not counted)"
    if mode == "bubblewrap" and not shutil.which("bwrap"):
        return "bwrap is not installed (Debian/Ubuntu: apt-get install bubblewrap)"
    if mode == "apptainer":
        if not _apptainer():
            return "neither apptainer nor singularity is installed"
        if not os.environ.get(IMAGE_VAR):
            return f"no image: set {IMAGE_VAR} to a container image (.sif) that has python3"
    return None


def _apptainer() -> str:
    return shutil.which("apptainer") or shutil.which("singularity") or ""


def _probe(mode: str, missing: tuple[tuple[str, str], ...]) -> tuple[_Isolation | None, str]:
    # The sandboxed uid may not reach our interpreter (a pyenv under /root), so the system
    # ones are candidates too; graders need only the standard library.
    candidates = [sys.executable, getattr(sys, "_base_executable", ""), "/usr/bin/python3", "/usr/local/bin/python3"]
    interpreters = list(dict.fromkeys(p for p in candidates if p and os.path.exists(p)))
    tool = {"bubblewrap": shutil.which("bwrap") or "", "apptainer": _apptainer()}.get(mode, "")
    if mode == "apptainer":
        interpreters = ["python3"]  # the image's own
    # The program must also be able to start its interpreter again (multiprocessing, subprocess).
    probe = (
        "import json, heapq, bisect, collections, math, itertools, functools, fractions, os, sys\n"
        "print('ok' if os.access(sys.executable, os.X_OK) else 'interpreter not reachable')"
    )
    reasons = []
    for interpreter in interpreters:
        iso = _Isolation(mode, interpreter, tool, missing)
        try:
            result = _run(iso, probe, stdin="", timeout_s=20.0, limits=SandboxLimits())
        except Exception as exc:  # noqa: BLE001 -- whatever this machine refuses skips the mode, never the grader
            reasons.append(f"{interpreter}: {exc!r}")
            continue
        if result.status == "ok" and result.stdout.strip() == "ok":
            return iso, ""
        reasons.append(f"{interpreter}: {result.status} {(result.stdout + result.stderr).strip()[-300:]!r}")
    return None, "probe failed: " + " | ".join(reasons)


# ----------------------------------------------------------------------------- total memory


@dataclass(frozen=True)
class _Delegation:
    parent: str | None  # a cgroup v2 directory of ours, with memory and pids enabled for children
    reason: str  # why there is none


_cgroup_lock = threading.Lock()
_cgroup: _Delegation | None = None
_LEAF = "svd-grader"  # where our own processes move, so our cgroup may enable controllers for children


def memory_bound(limits: SandboxLimits) -> str:
    """One sentence: what bounds the memory of all of a program's processes together."""
    d = _delegation()
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


def _delegation() -> _Delegation:
    global _cgroup
    with _cgroup_lock:
        if _cgroup is None:
            _cgroup = _delegate()
            log.info(f"sandbox total memory: {_cgroup.parent or _cgroup.reason}")
        return _cgroup


def _delegate(mountinfo: str = "/proc/self/mountinfo", membership: str = "/proc/self/cgroup") -> _Delegation:
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
        return _Delegation(None, f"cannot read the cgroup setup: {exc}")
    if not roots or not ours:
        return _Delegation(None, "no cgroup v2 hierarchy")
    here = Path(roots[0] + ours[0].rstrip("/")) if ours[0] != "/" else Path(roots[0])
    if here.name == _LEAF:  # another grader of this job got there first
        here = here.parent
    try:
        controllers = set((here / "cgroup.controllers").read_text().split())
        if not {"memory", "pids"} <= controllers:
            return _Delegation(
                None,
                f"cgroup v2 {here} has no memory and pids controllers (only: "
                f"{' '.join(sorted(controllers)) or 'none'})",
            )
        if not all(os.access(here / f, os.W_OK) for f in ("cgroup.procs", "cgroup.subtree_control")):
            return _Delegation(None, f"cgroup v2 {here} is not delegated to us (not writable)")
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
        return _Delegation(None, f"cgroup v2 {here} cannot hold a cgroup per program: {exc}")
    return _Delegation(str(here), "")


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
    iso = _isolation()
    if iso.mode == UNAVAILABLE:
        reason = "; ".join(f"{m}: {r}" for m, r in iso.missing)
        return SandboxResult("sandbox_error", None, "", f"no sandbox works here ({reason})", 0.0, False, iso.mode)
    return _run(iso, source, stdin=stdin, timeout_s=timeout_s, limits=limits or SandboxLimits())


def _run(iso: _Isolation, source: str, *, stdin: str, timeout_s: float, limits: SandboxLimits) -> SandboxResult:
    own_namespaces = iso.mode in ("root-namespaces", "user-namespaces")
    isolated = iso.mode in ISOLATING
    start = time.perf_counter()
    token = uuid.uuid4().hex
    # As the host's root, a fresh uid per run: it owns no file, shares no process count with
    # another sandbox, and can neither signal nor read any other process. A fake root has no
    # other uid mapped, and apptainer chooses the program's uid itself.
    uid = random.SystemRandom().randrange(*_FRESH_UIDS) if real_root() and iso.mode != "apptainer" else None
    with (
        tempfile.TemporaryDirectory(prefix="svd_sandbox_", ignore_cleanup_errors=True) as outer,
        _ProgramCgroup(token, limits) as cgroup,
    ):
        # stdin/stdout/stderr are files, not pipes: no deadlock on large inputs, no reader
        # threads, and RLIMIT_FSIZE bounds what the program can print.
        stdin_path, stdout_path, stderr_path = (os.path.join(outer, n) for n in ("stdin", "stdout", "stderr"))
        Path(stdin_path).write_text(stdin, encoding="utf-8")
        rlimits = _rlimits(limits, timeout_s, _nproc_offset(iso.mode, uid))
        pass_fds: tuple[int, ...] = ()
        common = {"grader_pid": os.getpid(), "uid": uid, "cgroup_procs": cgroup.procs}
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1"}
        # -I: ignore PYTHON* variables and the user site; -B: no .pyc. Not -S: `exit()` comes
        # from site, and competitive programs call it.
        program = [iso.interpreter, "-I", "-B", "main.py"]
        if own_namespaces:
            userns = iso.mode == "user-namespaces"
            plan = ChildPlan(
                True,
                rlimits=rlimits,
                source=source.encode(),
                user_namespaces=userns,
                workdir_bytes=limits.workdir_bytes,
                **common,
                **(_home_plan(iso.interpreter) if userns else _root_home_plan(iso.interpreter)),
            )
            argv, workdir, cwd = program, SANDBOX_WORKDIR, outer  # the cwd is a tmpfs made inside
        else:
            host_workdir = os.path.join(outer, "work")
            os.mkdir(host_workdir)
            Path(host_workdir, "main.py").write_text(source, encoding="utf-8")
            if uid is not None:  # the fresh uid reads main.py (bwrap binds it) or works there
                os.chmod(outer, 0o711)
                os.chown(host_workdir, uid, uid)
            if iso.mode == "bubblewrap":
                source_fd = os.open(os.path.join(host_workdir, "main.py"), os.O_RDONLY)
                pass_fds = (source_fd,)
                argv, workdir = _bwrap_argv(iso, source_fd, limits) + program, SANDBOX_WORKDIR
                plan = ChildPlan(False, rlimits=rlimits, no_new_privs=False, **common)
            elif iso.mode == "apptainer":
                # The launcher may be setuid and is a Go program (RLIMIT_AS would break it): the
                # limits are set inside, by the container's Python, just before the program.
                argv, workdir = _apptainer_argv(iso, host_workdir, rlimits), SANDBOX_WORKDIR
                plan = ChildPlan(False, rlimits=(), no_new_privs=False, **common)
            else:
                argv, workdir = program, host_workdir
                plan = ChildPlan(False, rlimits=rlimits, **common)
                env[_TOKEN_VAR] = token
            cwd = host_workdir
        env.update(HOME=workdir, TMPDIR=workdir)
        with open(stdin_path, "rb") as fin, open(stdout_path, "wb") as fout, open(stderr_path, "wb") as ferr:
            try:
                proc = subprocess.Popen(
                    argv,
                    stdin=fin,
                    stdout=fout,
                    stderr=ferr,
                    env=env,
                    cwd=cwd,
                    start_new_session=True,
                    preexec_fn=lambda: in_child(plan),
                    close_fds=True,
                    pass_fds=pass_fds,
                )
            except (OSError, subprocess.SubprocessError) as exc:
                reason = f"{exc}\n{_read_capped(stderr_path, limits.stderr_bytes)}"
                wall = time.perf_counter() - start
                return SandboxResult("sandbox_error", None, "", reason, wall, isolated, iso.mode)
            finally:
                for fd in pass_fds:
                    os.close(fd)
        timed_out, returncode, cpu_s = _wait(proc, timeout_s, isolated, token, cgroup)
        wall = time.perf_counter() - start
        stdout = _read_capped(stdout_path, limits.max_file_bytes)
        stderr = _read_capped(stderr_path, limits.stderr_bytes)
        out_of_memory = cgroup.oom_killed()
    status = _classify(returncode, stderr, timed_out, cpu_s, timeout_s + limits.cpu_grace_s)
    if iso.mode == "bubblewrap" and returncode == 1 and stderr.startswith("bwrap: "):
        status = "sandbox_error"  # bwrap itself could not set the sandbox up
    if out_of_memory and status in ("killed", "runtime_error"):
        status = "memory"
    return SandboxResult(status, returncode, stdout, stderr, wall, isolated, iso.mode)


def _bwrap_argv(iso: _Isolation, source_fd: int, limits: SandboxLimits) -> list[str]:
    """bwrap's command line: every namespace, the host read-only, our home and /tmp-likes empty."""
    # --as-pid-1: the program is the PID namespace's init, as in our own modes, so bwrap's wait for
    # it returns only once the kernel has killed everything it left (with bwrap's own init as
    # PID 1, bwrap could exit while a daemon still lived).
    argv = [
        iso.tool,
        "--unshare-all",
        "--as-pid-1",
        "--die-with-parent",
        "--new-session",
        "--cap-drop",
        "ALL",
        "--ro-bind",
        "/",
        "/",
        "--dev",
        "/dev",
        "--proc",
        "/proc",
        "--tmpfs",
        "/dev/shm",
    ]
    covered = [d for d in COVERED_DIRS if os.path.isdir(d) and not os.path.islink(d)]
    for d in covered:
        argv += ["--tmpfs", d]
    home, kept = _hidden_home(iso.interpreter)
    if home:
        argv += ["--tmpfs", home]
        for path in kept:
            argv += ["--ro-bind", path, path]
    # main.py comes through a descriptor we opened: a fresh uid may not reach our temporary folder.
    argv += [
        "--size",
        str(limits.workdir_bytes),
        "--tmpfs",
        SANDBOX_WORKDIR,
        "--file",
        str(source_fd),
        os.path.join(SANDBOX_WORKDIR, "main.py"),
    ]
    for d in covered + ([home] if home else []):
        argv += ["--remount-ro", d]  # the cwd below /tmp is a mount of its own: it stays writable
    return argv + ["--chdir", SANDBOX_WORKDIR, "--"]


def _apptainer_argv(iso: _Isolation, host_workdir: str, rlimits: tuple) -> list[str]:
    """apptainer's command line: contained filesystem, PID, IPC and environment, no network."""
    # The image's python3 sets the limits and then becomes the program, so they bind only it.
    bootstrap = (
        "import os, resource, sys\n"
        f"for which, value in {[(int(w), v) for w, v in rlimits]!r}:\n"
        "    resource.setrlimit(which, value)\n"
        "os.execvp('python3', ['python3', '-I', '-B', 'main.py'])"
    )
    return [
        iso.tool,
        "exec",
        "--containall",
        "--net",
        "--network",
        "none",
        "--no-privs",
        "--no-home",
        "--bind",
        f"{host_workdir}:{SANDBOX_WORKDIR}",
        "--pwd",
        SANDBOX_WORKDIR,
        os.environ.get(IMAGE_VAR, ""),
        iso.interpreter,
        "-I",
        "-B",
        "-c",
        bootstrap,
    ]


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


def _wait(
    proc: subprocess.Popen, timeout_s: float, namespaced: bool, token: str, cgroup: _ProgramCgroup
) -> tuple[bool, int, float]:
    """Wait for exit or the wall clock; then make sure nothing the program started lives on."""
    pidfd = os.pidfd_open(proc.pid)
    try:
        timed_out = not select.select([pidfd], [], [], timeout_s)[0]
        if timed_out:
            cgroup.kill()
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
        # their environment (one that clears its environment escapes this, unless a cgroup holds it).
        cgroup.kill()
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


def _rlimits(limits: SandboxLimits, timeout_s: float, nproc_offset: int = 0) -> tuple[tuple[int, tuple[int, int]], ...]:
    cpu = math.ceil(timeout_s + limits.cpu_grace_s)
    nproc = limits.max_processes + nproc_offset
    return (
        (resource.RLIMIT_CPU, (cpu, cpu + 1)),
        (resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes)),
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


def _home_plan(interpreter: str) -> dict:
    """ChildPlan fields for a program that keeps our uid: read-only host, home hidden."""
    home, kept = _hidden_home(interpreter)
    return {"readonly_mounts": _host_mounts(), "hidden_home": home, "kept_in_home": kept}


def _root_home_plan(interpreter: str) -> dict:
    """As root the program's fresh uid cannot write our files, but could read a world-readable token."""
    home, kept = _hidden_home(interpreter)
    return {"hidden_home": home, "kept_in_home": kept}


def _hidden_home(interpreter: str) -> tuple[str | None, tuple[str, ...]]:
    """Our home to hide (tokens, keys), and the interpreter's folders in it to keep visible."""
    home = os.path.realpath(os.path.expanduser("~"))
    if home == "/" or not os.path.isdir(home) or any(_is_under(home, d) or _is_under(d, home) for d in COVERED_DIRS):
        return None, ()  # no home, or one the /tmp-like covers hide (or would lose) already
    # The interpreter may live in our home (conda, pyenv): keep its installation visible.
    needed = {os.path.dirname(os.path.dirname(os.path.realpath(interpreter)))}
    if os.path.realpath(interpreter) == os.path.realpath(sys.executable):
        needed |= {os.path.realpath(sys.prefix), os.path.realpath(sys.base_prefix)}
    if any(_is_under(home, p) for p in needed):  # the interpreter's installation is the whole home
        return None, ()
    return home, tuple(sorted(p for p in needed if _is_under(p, home)))


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
