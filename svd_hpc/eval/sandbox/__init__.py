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

Where each concern lives: `detect.py` finds the isolation this machine gives and runs a program
under it (`run_program`); `backends.py` holds the modes, who we are, and each mode's command line
and view of the host; `limits.py` the rlimits and the cgroup per program; `run.py` starts, watches
and reaps the child; `child.py` is the child's own setup between fork and exec (namespaces, ids,
the private filesystem).

Run as: ``python -c "from svd_hpc.eval.sandbox import run_program; print(run_program('print(1)'))"``
"""

from .backends import IMAGE_VAR, ISOLATING, MODES, UNAVAILABLE, fake_root, real_root
from .detect import (
    IsolationMissing,
    detect_isolation,
    isolation_record,
    machine_isolation,
    require_isolation,
    run_program,
    sandbox_isolation,
)
from .limits import SandboxLimits, memory_bound, user_tasks
from .run import SandboxResult, Status, run_isolated

__all__ = [
    "IMAGE_VAR",
    "ISOLATING",
    "MODES",
    "UNAVAILABLE",
    "IsolationMissing",
    "SandboxLimits",
    "SandboxResult",
    "Status",
    "fake_root",
    "isolation_record",
    "memory_bound",
    "real_root",
    "require_isolation",
    "run_program",
    "sandbox_isolation",
    "user_tasks",
    # for benchmarks/bench_sandbox.py, which times each mode directly
    "detect_isolation",
    "machine_isolation",
    "run_isolated",
]
