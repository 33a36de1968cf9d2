"""Which isolation this machine gives, detected once per process by probing, strongest first; and
`run_program`, which runs a program under it.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import threading

from .backends import IMAGE_VAR, ISOLATING, MODES, UNAVAILABLE, _Isolation, fake_root, real_root, uid_map
from .limits import SandboxLimits, memory_bound
from .run import SandboxResult, run_isolated

log = logging.getLogger("svd_hpc")


class IsolationMissing(ValueError):
    """Model-written code would run unisolated, and the configuration does not allow that."""


_detect_lock = threading.Lock()
_detected: _Isolation | None = None


def sandbox_isolation() -> str:
    """The isolation mode of this process (one of MODES, or UNAVAILABLE), detected on first use by probing."""
    return machine_isolation().mode


def isolation_record(limits: SandboxLimits | None = None) -> dict:
    """What the report and the task summary state about the sandbox used here."""
    iso = machine_isolation()
    return {
        "isolation": iso.mode,
        "network_isolated": iso.mode in ISOLATING,
        "total_memory": memory_bound(limits or SandboxLimits()),
        "missing": dict(iso.missing),
    }


def require_isolation(allow_unisolated: bool, what: str = "model-written code") -> str:
    """The isolation mode, or IsolationMissing when none isolates and that is not allowed."""
    iso = machine_isolation()
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


def machine_isolation() -> _Isolation:
    global _detected
    with _detect_lock:
        if _detected is None:
            _detected = detect_isolation()
        return _detected


def detect_isolation(modes: tuple[str, ...] = MODES) -> _Isolation:
    """The first of `modes` that runs a probe program; never raises for a property of the machine."""
    missing: list[tuple[str, str]] = []
    for mode in modes:
        reason = precondition(mode)
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


def precondition(mode: str) -> str | None:
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
            result = run_isolated(iso, probe, stdin="", timeout_s=20.0, limits=SandboxLimits())
        except Exception as exc:  # noqa: BLE001 -- whatever this machine refuses skips the mode, never the grader
            reasons.append(f"{interpreter}: {exc!r}")
            continue
        if result.status == "ok" and result.stdout.strip() == "ok":
            return iso, ""
        reasons.append(f"{interpreter}: {result.status} {(result.stdout + result.stderr).strip()[-300:]!r}")
    return None, "probe failed: " + " | ".join(reasons)


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
    iso = machine_isolation()
    if iso.mode == UNAVAILABLE:
        reason = "; ".join(f"{m}: {r}" for m, r in iso.missing)
        return SandboxResult("sandbox_error", None, "", f"no sandbox works here ({reason})", 0.0, False, iso.mode)
    return run_isolated(iso, source, stdin=stdin, timeout_s=timeout_s, limits=limits or SandboxLimits())
