"""The sandboxed child's own setup, between fork and exec: namespaces, ids, a private filesystem.

Everything here runs in the forked child (Popen's preexec_fn) for `svd_hpc.eval.sandbox.run`. It makes
system calls and nothing else: no imports, no logging, no locks another thread of the parent
might have held at fork.
"""

from __future__ import annotations

import ctypes
import errno
import os
import resource
import signal
from dataclasses import dataclass

# Inside the namespaces the program always sees the same cwd, so its output cannot depend on
# a random host path.
SANDBOX_WORKDIR = "/tmp/sandbox"
# World-writable directories a program could otherwise drop files into.
COVERED_DIRS = ("/tmp", "/var/tmp", "/run/lock")

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
MOUNT_OPTION_FLAGS = {
    "nosuid": _MS_NOSUID,
    "nodev": _MS_NODEV,
    "noexec": _MS_NOEXEC,
    "noatime": _MS_NOATIME,
    "nodiratime": _MS_NODIRATIME,
    "relatime": _MS_RELATIME,
    "strictatime": _MS_STRICTATIME,
}
SETUP_FAILED = "sandbox setup failed: "


@dataclass(frozen=True)
class HostView:
    """What of the host our own namespace modes hide from the program."""

    # user-namespaces mode, where the program has our uid: every host mount becomes read-only
    readonly_mounts: tuple[tuple[str, int], ...] = ()  # (mount point, per-mount flags a remount repeats)
    # our home (tokens, keys, caches), hidden but for the interpreter's own folders in it
    hidden_home: str | None = None
    kept_in_home: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class ChildPlan:
    namespaces: bool  # set up our own namespaces here (root-namespaces, user-namespaces)
    grader_pid: int  # our pid: if we die, the sandbox must die too
    rlimits: tuple
    source: bytes = b""  # main.py, written into the tmpfs cwd (namespace modes)
    uid: int | None = None  # run as this uid (we are root), else keep ours
    user_namespaces: bool = False
    workdir_bytes: int = 0
    host_view: HostView = HostView()  # namespace modes
    # False when we exec a possibly setuid launcher (bwrap, apptainer): no_new_privs would stop
    # it from working; it sets no_new_privs for the program itself.
    no_new_privs: bool = True
    cgroup_procs: str | None = None  # join this cgroup (its cgroup.procs file) first


def in_child(plan: ChildPlan) -> None:
    # Popen reports only "Exception occurred in preexec_fn"; put the reason on the program's
    # stderr (our stderr file by now) so the sandbox_error says what failed.
    try:
        if plan.cgroup_procs:
            # First, while we may still write there: every process started from here on is
            # counted against the cgroup's memory.max and pids.max.
            fd = os.open(plan.cgroup_procs, os.O_WRONLY)
            try:
                os.write(fd, b"0")
            finally:
                os.close(fd)
        if plan.namespaces:
            _enter_namespaces(plan)
        else:
            if plan.uid is not None:
                _become(plan.uid)
            if not _die_with(plan.grader_pid):
                os._exit(255)
        if plan.no_new_privs:
            _check(_libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(NO_NEW_PRIVS)")  # no setuid binary helps it
        # Last: RLIMIT_AS would also bind the Python code above, in a copy of a possibly huge parent.
        for which, value in plan.rlimits:
            resource.setrlimit(which, value)
    except BaseException as exc:
        os.write(2, f"{SETUP_FAILED}{exc!r}\n".encode())
        raise


def _enter_namespaces(plan: ChildPlan) -> None:
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


def _private_filesystem(plan: ChildPlan, owner: int) -> None:
    # Nothing mounted from here on may propagate back to the host.
    _mount(None, "/", None, _MS_REC | _MS_PRIVATE)
    hardened = _MS_NOSUID | _MS_NODEV | _MS_NOEXEC
    covered = [d for d in COVERED_DIRS if os.path.isdir(d) and not os.path.islink(d)]
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
    for point, flags in plan.host_view.readonly_mounts:
        # MS_BIND: a per-mount change in our namespace, never a remount of the host's filesystem.
        ret = _libc.mount(None, point.encode(), None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY | flags, None)
        tolerable = ctypes.get_errno() in (errno.EACCES, errno.EPERM, errno.EINVAL, errno.ENOENT)
        if ret != 0 and (point == "/" or not tolerable):
            _check(ret, f"read-only remount of {point}")
    if plan.host_view.hidden_home:
        kept = [os.open(path, os.O_PATH) for path in plan.host_view.kept_in_home]  # reachable once home is covered
        _mount("tmpfs", plan.host_view.hidden_home, "tmpfs", hardened, "size=64k,mode=755")
        for path, fd in zip(plan.host_view.kept_in_home, kept, strict=True):
            os.makedirs(path)
            # A bind of a read-only mount is read-only: the remounts above already apply.
            _mount(f"/proc/self/fd/{fd}", path, None, _MS_BIND | _MS_REC)
            os.close(fd)
        _mount(None, plan.host_view.hidden_home, None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY | hardened)


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    def enc(s: str | None) -> bytes | None:
        return None if s is None else s.encode()

    _check(_libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)), f"mount {target}")
