"""The isolation modes, who we are on this machine, and what each mode shows the program of the host.

The modes are described in `svd_hpc.eval.sandbox`. Here: the record of a detected mode, whether we
are the host's root or a fake one, the bubblewrap and apptainer command lines, and the host mounts
and home folder our own namespace modes make read-only or hide.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from .child import COVERED_DIRS, MOUNT_OPTION_FLAGS, SANDBOX_WORKDIR, HostView
from .limits import SandboxLimits

MODES = ("root-namespaces", "user-namespaces", "bubblewrap", "apptainer", "process-group")
ISOLATING = MODES[:-1]  # each hides our files and network from the program
UNAVAILABLE = "unavailable"  # not even process-group could run a program
IMAGE_VAR = "SVD_SANDBOX_IMAGE"  # the apptainer image (.sif or sandbox directory) with python3
_HOST_UID_MAP = ["0", "0", "4294967295"]  # /proc/self/uid_map of the host's user namespace


@dataclass(frozen=True)
class _Isolation:
    mode: str
    interpreter: str
    tool: str = ""  # the bwrap or apptainer executable
    # Why each stronger mode is not used here (for the refusal and the record).
    missing: tuple[tuple[str, str], ...] = ()


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


# ----------------------------------------------------------------------------- command lines


def bwrap_argv(iso: _Isolation, source_fd: int, limits: SandboxLimits) -> list[str]:
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


def apptainer_argv(iso: _Isolation, host_workdir: str, rlimits: tuple) -> list[str]:
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


# ----------------------------------------------------------------------------- what the program sees


def _host_view(interpreter: str, readonly_host: bool) -> HostView:
    """What our own namespace modes hide: our home (tokens, keys) always, and with `readonly_host`
    (the program keeps our uid) write access to every host mount. As root the program's fresh uid
    cannot write our files, but could read a world-readable token."""
    home, kept = _hidden_home(interpreter)
    return HostView(readonly_mounts=_host_mounts() if readonly_host else (), hidden_home=home, kept_in_home=kept)


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
