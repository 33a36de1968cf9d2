"""One run of a program under a given isolation: start the child, wait, kill what it left, classify.

The child's own setup between fork and exec (namespaces, ids, the private filesystem) lives in
`child.py`; the command lines and host views of each mode in `backends.py`.
"""

from __future__ import annotations

import functools
import os
import random
import select
import signal
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .backends import ISOLATING, _host_view, _Isolation, apptainer_argv, bwrap_argv, real_root
from .child import SANDBOX_WORKDIR, SETUP_FAILED, ChildPlan, in_child
from .limits import SandboxLimits, _nproc_offset, _ProgramCgroup, rlimit_table

Status = Literal["ok", "runtime_error", "timeout", "memory", "killed", "sandbox_error"]

_TOKEN_VAR = "SVD_SANDBOX_TOKEN"
# A fresh uid per run as root, unused by real accounts; below 2**31 because bwrap parses ids as int.
_FRESH_UIDS = (2**31 - 2**28, 2**31 - 2)


@dataclass(frozen=True)
class SandboxResult:
    status: Status
    returncode: int | None  # negative: killed by that signal; None: never started
    stdout: str
    stderr: str
    wall_s: float
    network_isolated: bool
    isolation: str = ""  # one of MODES


def run_isolated(iso: _Isolation, source: str, *, stdin: str, timeout_s: float, limits: SandboxLimits) -> SandboxResult:
    """Run `source` under the isolation `iso` (detect.detect_isolation), with `limits`; the one runner of every mode."""
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
        rlimits = rlimit_table(limits, timeout_s, _nproc_offset(iso.mode, uid))
        pass_fds: tuple[int, ...] = ()
        child_plan = functools.partial(ChildPlan, grader_pid=os.getpid(), uid=uid, cgroup_procs=cgroup.procs)
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1"}
        # -I: ignore PYTHON* variables and the user site; -B: no .pyc. Not -S: `exit()` comes
        # from site, and competitive programs call it.
        program = [iso.interpreter, "-I", "-B", "main.py"]
        if own_namespaces:
            userns = iso.mode == "user-namespaces"
            plan = child_plan(
                namespaces=True,
                rlimits=rlimits,
                source=source.encode(),
                user_namespaces=userns,
                workdir_bytes=limits.workdir_bytes,
                host_view=_host_view(iso.interpreter, readonly_host=userns),
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
                argv, workdir = bwrap_argv(iso, source_fd, limits) + program, SANDBOX_WORKDIR
                plan = child_plan(namespaces=False, rlimits=rlimits, no_new_privs=False)
            elif iso.mode == "apptainer":
                # The launcher may be setuid and is a Go program (RLIMIT_AS would break it): the
                # limits are set inside, by the container's Python, just before the program.
                argv, workdir = apptainer_argv(iso, host_workdir, rlimits), SANDBOX_WORKDIR
                plan = child_plan(namespaces=False, rlimits=(), no_new_privs=False)
            else:
                argv, workdir = program, host_workdir
                plan = child_plan(namespaces=False, rlimits=rlimits)
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
