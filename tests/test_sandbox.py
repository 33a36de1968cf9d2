"""Hostile programs against the sandbox, over every backend that runs on this machine and under a
fake root (uid 0 in a user namespace) with nested user namespaces allowed and blocked: each must be
contained, reported as that sample's failure, and leave nothing behind (no process, no file)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pytest

from svd_hpc.eval import sandbox
from svd_hpc.eval.sandbox import SandboxLimits, run_program
from tests.conftest import run_eval

REPO = Path(__file__).resolve().parent.parent
# Each isolating backend, probed once: those that cannot run here are skipped with the reason.
BACKENDS = {mode: sandbox.detect_isolation((mode,)) for mode in sandbox.ISOLATING}
# CI (.ci/run, which sets CI) runs as the host's root with bubblewrap installed: there a backend or
# a user namespace that cannot run is a broken sandbox, and a skip would hide it.
ON_CI = bool(os.environ.get("CI"))
HOST_ROOT = os.geteuid() == 0 and not sandbox.fake_root()


def must_run(mode: str) -> bool:
    """Whether `mode` failing to run here is a failure rather than a skip."""
    return HOST_ROOT and (mode == "root-namespaces" or (ON_CI and mode == "bubblewrap"))


def unavailable(reason: str, required: bool) -> None:
    """Fail when what is missing is required here, else skip with the reason."""
    if required:
        pytest.fail(f"{reason} (required here: {'CI, ' if ON_CI else ''}uid {os.geteuid()})", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(params=sandbox.ISOLATING)
def backend(request, monkeypatch):
    """run_program uses this backend for the test."""
    iso = BACKENDS[request.param]
    if iso.mode == sandbox.UNAVAILABLE:
        unavailable(f"{request.param} cannot run here: {dict(iso.missing)[request.param]}", must_run(request.param))
    monkeypatch.setattr(sandbox.detect, "_detected", iso)
    return request.param


def processes_with(marker: str) -> list[int]:
    """Host pids whose command line carries `marker`."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if marker.encode() in Path(entry.path, "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


@pytest.fixture
def marker(request):
    """A unique command-line marker; any process still carrying it at teardown is killed."""
    tag = f"svd{request.node.name.split('[')[0][5:15]}{uuid.uuid4().hex}"
    yield tag
    for pid in processes_with(tag):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture
def private_tempdir(tmp_path, monkeypatch):
    """Point the sandbox's host-side temporary directories at a folder we can inspect."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


# ----------------------------------------------------------------------------- ordinary programs


def test_echoes_stdin_and_leaves_no_directory(backend, private_tempdir):
    result = run_program("import sys\nprint(sys.stdin.read().upper(), end='')", stdin="hello\nworld\n")
    assert result.status == "ok", result
    assert result.stdout == "HELLO\nWORLD\n"
    assert list(private_tempdir.iterdir()) == []


def test_exception_is_runtime_error_with_traceback():
    result = run_program("def f():\n    raise KeyError('boom')\nf()")
    assert result.status == "runtime_error"
    assert result.returncode == 1
    assert "KeyError: 'boom'" in result.stderr


def test_exit_builtin_and_stdlib_work(backend):
    # exit() comes from `site`; competitive programs use it.
    result = run_program("import heapq, bisect, collections\nprint(heapq.nsmallest(2, [5, 1, 3]))\nexit(0)")
    assert (result.status, result.stdout) == ("ok", "[1, 3]\n")


def test_large_stdin_and_stdout_pass_through():
    data = "x" * 3_000_000 + "\n"
    result = run_program("import sys\ns = sys.stdin.read()\nsys.stdout.write(s * 2)", stdin=data)
    assert result.status == "ok"
    assert result.stdout == data * 2


def test_stderr_is_capped_keeping_the_tail():
    limits = SandboxLimits(stderr_bytes=4096)
    program = "import sys\nsys.stderr.write('a' * 100000)\nraise SystemExit('the-last-words')"
    result = run_program(program, limits=limits)
    assert result.status == "runtime_error"
    assert len(result.stderr) < 4096 + 100
    assert result.stderr.rstrip().endswith("the-last-words")


def test_unsupported_language_is_a_caller_error():
    with pytest.raises(ValueError, match="only 'python'"):
        run_program("int main(){}", language="cpp")


# ----------------------------------------------------------------------------- hostile programs


def slack_s() -> float:
    """What this machine's load adds to a sandboxed run now: 5 x the slowest of 3 empty programs
    in the backend under test, at least 1 s. Bounds on wall time are the expected time plus this,
    so a shared 2-core machine passes and a kill that comes seconds late does not."""
    return max(1.0, 5 * max(run_program("pass").wall_s for _ in range(3)))


def test_infinite_loop_is_killed_at_the_timeout(backend):
    slack = slack_s()
    result = run_program("while True:\n    pass", timeout_s=1.0)
    assert result.status == "timeout"
    assert 1.0 <= result.wall_s < 1.0 + slack


def test_sleeping_program_is_killed_at_the_timeout(backend):
    # Wall clock, not CPU time: a program blocked on sleep or input must not hang the grader.
    slack = slack_s()
    result = run_program("import time\ntime.sleep(60)", timeout_s=0.5)
    assert result.status == "timeout"
    assert result.wall_s < 0.5 + slack


def test_memory_balloon_fails_the_sample_not_us(backend):
    program = "chunks = []\nwhile True:\n    chunks.append(bytearray(50 * 2**20))"
    slack = slack_s()
    result = run_program(program, timeout_s=10.0, limits=SandboxLimits(memory_bytes=512 << 20))
    assert result.status == "memory", result
    assert result.wall_s < 1.0 + 2 * slack  # ten 50 MiB allocations, not the 10 s timeout


def test_fork_bomb_is_contained(backend, private_tempdir, marker):
    # Re-exec once so every process of the bomb carries a marker we can find from the host.
    program = textwrap.dedent(f"""
        import os, sys
        if len(sys.argv) == 1:
            os.execv(sys.executable, [sys.executable, "-I", "main.py", "{marker}"])
        refused = False
        while True:
            try:
                os.fork()
            except OSError:
                if not refused:
                    print("fork refused", flush=True)
                    refused = True
    """)
    limits = SandboxLimits(max_processes=32)
    holder: dict = {}
    started = time.perf_counter()
    subprocess.run(["true"], check=True)
    spawn_idle_s = time.perf_counter() - started  # the same start with no bomb running: the load's share
    runner = threading.Thread(target=lambda: holder.update(result=run_program(program, timeout_s=3.0, limits=limits)))
    runner.start()
    peak, spawn_s = 0, None
    while runner.is_alive():
        time.sleep(0.2)
        peak = max(peak, len(processes_with(marker)))
        if peak > 1 and spawn_s is None:
            started = time.perf_counter()
            subprocess.run(["true"], check=True)  # the host can still start processes
            spawn_s = time.perf_counter() - started
    runner.join()
    result = holder["result"]
    assert peak > 1, "the bomb never forked: this test proves nothing"
    assert peak <= limits.max_processes
    assert "fork refused" in result.stdout  # contained by the limit, not by chance
    assert spawn_s < 1.0 + 20 * spawn_idle_s  # slowed by the bomb's share of the CPUs, not starved
    assert result.status == "timeout"
    assert processes_with(marker) == []
    assert list(private_tempdir.iterdir()) == []


def daemon_program(marker: str, then: str) -> str:
    """Double fork + setsid: the classic daemon that escapes its parent's process group."""
    return textwrap.dedent(f"""
        import os, sys, time
        r, w = os.pipe()
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                print("daemon-up", flush=True)
                os.write(w, b"x")
                os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(60)", "{marker}"])
            os._exit(0)
        os.read(r, 1)
        time.sleep(0.2)
        {then}
    """)


@pytest.mark.parametrize("then", ["pass", "time.sleep(60)"], ids=["exits", "times-out"])
def test_daemon_does_not_outlive_the_run(backend, then, marker):
    result = run_program(daemon_program(marker, then), timeout_s=4.0)
    assert "daemon-up" in result.stdout, result
    assert result.status == ("ok" if then == "pass" else "timeout")
    assert processes_with(marker) == []


GRADER = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[1])
    from svd_hpc.eval.sandbox import run_program
    run_program(sys.argv[2], timeout_s=60)
""")


def test_sandbox_dies_with_a_killed_grader(marker, tmp_path):
    """A grader killed mid-run (SLURM preemption, OOM) must not leave its sandboxes running."""
    # The marker is assembled at run time: the grader's own command line holds only its halves.
    head, tail = marker[:8], marker[8:]
    sleeper = (
        "import os, sys\n"
        f"os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(60)', '{head}' + '{tail}'])"
    )
    # A killed grader cannot remove its own scratch folder: keep that in tmp_path.
    grader = subprocess.Popen(
        [sys.executable, "-c", GRADER, str(REPO), sleeper], env={**os.environ, "TMPDIR": str(tmp_path)}
    )
    deadline = time.monotonic() + 20
    while not processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert processes_with(marker), "the sandboxed program never started"
    grader.kill()
    grader.wait()
    deadline = time.monotonic() + 5
    while processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert processes_with(marker) == []


def test_writing_outside_its_directory_fails(backend):
    name = f"svd_escape_{uuid.uuid4().hex}"
    targets = [f"/tmp/{name}", f"/var/tmp/{name}", str(REPO / name), str(Path.home() / name)]
    program = textwrap.dedent(f"""
        import json
        outcome = {{}}
        for path in {targets + ["inside.txt"]!r}:
            try:
                with open(path, "w") as f:
                    f.write("x")
                outcome[path] = "written"
            except OSError as exc:
                outcome[path] = type(exc).__name__
        print(json.dumps(outcome))
    """)
    result = run_program(program)
    assert result.status == "ok", result
    outcome = json.loads(result.stdout)
    assert outcome["inside.txt"] == "written"  # its own directory works: the check can tell
    for path in targets:
        assert outcome[path] != "written", path
        assert not os.path.exists(path), path


SECRET_VARS = ("HF_TOKEN", "GITHUB_TOKEN", "AWS_SECRET_ACCESS_KEY", "WANDB_API_KEY", "DB_PASSWORD", "MY_PASSWORD_FILE")


def test_environment_secrets_are_not_visible(backend, monkeypatch):
    secret = f"secret_{uuid.uuid4().hex}"
    for name in SECRET_VARS:
        monkeypatch.setenv(name, secret)
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    # Besides its own environment, try every other process's environment it can see (/proc/1 too).
    program = textwrap.dedent("""
        import os
        print(dict(os.environ))
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                try:
                    print(pid, open(f"/proc/{pid}/environ", "rb").read())
                except OSError:
                    pass
    """)
    result = run_program(program)
    assert result.status == "ok"
    assert "PATH" in result.stdout and "\n1 b" in result.stdout  # it did read /proc/1/environ: the check can tell
    assert secret not in result.stdout + result.stderr
    for name in (*SECRET_VARS, "SLURM_JOB_ID"):
        assert name not in result.stdout


NOBODY = 65534
# run what follows as the unprivileged user `nobody`, as a SLURM user runs the sandbox
AS_NOBODY = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
needs_setpriv = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("setpriv") or not os.path.exists("/usr/bin/python3"),
    reason="needs root (to become an ordinary user) and /usr/bin/python3",
)


def _home_with_token(request) -> Path:
    """A home (not under /tmp, which every backend covers anyway) holding a world-readable HF token."""
    parent = next(d for d in ("/home", "/srv", "/opt") if os.path.isdir(d))
    home = Path(tempfile.mkdtemp(prefix="svd_home_", dir=parent))
    request.addfinalizer(lambda: shutil.rmtree(home, ignore_errors=True))
    token = home / ".cache" / "huggingface" / "token"
    token.parent.mkdir(parents=True)
    token.write_text("hf_secret")
    for path in (home, home / ".cache", token.parent):
        path.chmod(0o755)
    token.chmod(0o644)
    return token


@pytest.fixture
def home_with_token(monkeypatch, request):
    token = _home_with_token(request)
    monkeypatch.setenv("HOME", str(token.parents[2]))
    return token


@pytest.fixture
def nobody_files(tmp_path, request) -> tuple[Path, Path]:
    """For a sandbox run as `nobody`: a file it must not create in a folder nobody owns, and the token
    in nobody's home, as a cluster user's (~/.cache/huggingface/token)."""
    owned = tmp_path / "nobody_owned"
    owned.mkdir()
    os.chown(owned, NOBODY, NOBODY)
    tmp_path.chmod(0o755)
    token = _home_with_token(request)
    for path in (token.parents[2], token.parents[1], token.parent, token):
        os.chown(path, NOBODY, NOBODY)
    return owned / "escape.txt", token


def test_home_token_is_not_readable(backend, home_with_token, monkeypatch):
    monkeypatch.setattr(sandbox.detect, "_detected", sandbox.detect_isolation((backend,)))  # detected with this home
    result = run_program(f"print(open({str(home_with_token)!r}).read())")
    assert result.status == "runtime_error", result
    assert "hf_secret" not in result.stdout
    assert "FileNotFoundError" in result.stderr  # the home is hidden, not just unreadable


def test_ten_gigabyte_file_is_stopped(backend, private_tempdir):
    program = textwrap.dedent("""
        block = b"x" * (1 << 20)
        with open("big.bin", "wb") as f:
            for _ in range(10 * 1024):
                f.write(block)
        print("wrote 10 GB")
    """)
    slack = slack_s()
    result = run_program(program, timeout_s=10.0)
    assert result.status != "ok" and "wrote 10 GB" not in result.stdout, result
    assert result.wall_s < 1.0 + 2 * slack  # stopped at the 64 MiB file limit, not the 10 s timeout
    assert list(private_tempdir.rglob("big.bin")) == []


def test_network_is_unreachable(backend):
    """Neither the grader's listening socket on 127.0.0.1 nor any outside address."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.setblocking(False)
    port = listener.getsockname()[1]
    program = textwrap.dedent(f"""
        import socket
        for address in [("127.0.0.1", {port}), ("1.1.1.1", 53), ("192.0.2.1", 80)]:
            try:
                socket.create_connection(address, timeout=2).sendall(b"leak")
                print("connected", address)
            except OSError as exc:
                print("blocked", address, exc)
        print("interfaces", sorted(name for _, name in socket.if_nameindex()))
    """)
    result = run_program(program)
    assert result.network_isolated
    assert "connected" not in result.stdout and result.stdout.count("blocked") == 3, result
    assert "interfaces ['lo']" in result.stdout  # no device leads outside: nothing to route to
    with pytest.raises(BlockingIOError):
        listener.accept()
    listener.close()


# ----------------------------------------------------------------------------- other modes


def test_process_group_mode_still_kills_daemons_and_loops(marker):
    """The fallback for machines without namespaces: its own session plus the token scan."""
    iso = sandbox.detect_isolation(("process-group",))
    result = sandbox.run_isolated(iso, daemon_program(marker, "pass"), stdin="", timeout_s=4.0, limits=SandboxLimits())
    assert "daemon-up" in result.stdout
    assert not result.network_isolated
    assert processes_with(marker) == []
    looping = sandbox.run_isolated(iso, "while True: pass", stdin="", timeout_s=0.5, limits=SandboxLimits())
    assert looping.status == "timeout"


USERNS_CHECK = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, sys.argv[1])  # the repository: svd_hpc.eval.sandbox needs only the standard library
    from svd_hpc.eval import sandbox
    target, secret = sys.argv[2], sys.argv[3]
    writer = f"open({target!r}, 'w').write('x')"
    out = {
        "mode": sandbox.sandbox_isolation(),
        "echo": sandbox.run_program("print(input())", stdin="hi").stdout,
        "write": sandbox.run_program(writer).status,
        "inside": sandbox.run_program("open('x', 'w').write('1'); print(open('x').read())").stdout,
        "secret": sandbox.run_program(f"print(open({secret!r}).read())").status,
        "net": sandbox.run_program("import socket; socket.create_connection(('127.0.0.1', 9), timeout=1)").stderr,
        "bomb": sandbox.run_program("import os\\nwhile True:\\n  try: os.fork()\\n  except OSError: pass",
                                    timeout_s=1.5,
                                    limits=sandbox.SandboxLimits(max_processes=16)).status,
    }
    print(json.dumps(out))
""")


@needs_setpriv
def test_unprivileged_user_gets_user_namespaces(nobody_files):
    """What a SLURM user gets: run the sandbox itself as `nobody`."""
    target, token = nobody_files
    home = token.parents[2]
    proc = subprocess.run(
        [
            *AS_NOBODY,
            "/usr/bin/python3",
            "-I",
            "-c",
            USERNS_CHECK,
            str(REPO),
            str(target),
            str(token),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "HOME": str(home)},
    )
    if proc.returncode != 0 and "no way to run" in proc.stderr:
        unavailable("unprivileged user namespaces are disabled here", HOST_ROOT and ON_CI)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["mode"] == "user-namespaces"
    assert out["echo"] == "hi\n"
    assert out["write"] == "runtime_error"  # nobody owns the folder, yet the sandbox may not write
    assert not target.exists()
    assert out["inside"] == "1\n"
    assert out["secret"] == "runtime_error"  # readable by its uid, but the home is hidden
    assert "unreachable" in out["net"].lower()
    assert out["bomb"] == "timeout"


# ----------------------------------------------------------------------------- fake root


def test_fake_root_as_the_issue_ran_it_detects_a_mode():
    """issue 17's command: uid 0 in a user namespace made by the host's root; detection used to raise."""
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); from svd_hpc.eval import sandbox\n"
        "print(sandbox.fake_root(), sandbox.sandbox_isolation(), sandbox.run_program('print(6*7)').stdout.strip())"
    )
    proc = subprocess.run(
        ["unshare", "--user", "--map-root-user", sys.executable, "-c", code, str(REPO)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if "unshare failed" in proc.stderr:
        unavailable(f"no user namespaces here: {proc.stderr.strip()}", HOST_ROOT and ON_CI)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", "user-namespaces", "42"]


FAKE_ROOT_SUITE = textwrap.dedent("""
    import json, os, shutil, sys
    sys.path.insert(0, sys.argv[1])  # the repository: svd_hpc.eval.sandbox needs only the standard library
    from svd_hpc.eval import sandbox
    target, token, port, hide_bwrap = sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5] == "1"
    if hide_bwrap:
        which = shutil.which
        sandbox.detect.shutil.which = lambda name: None if name == "bwrap" else which(name)
    run = sandbox.run_program
    out = {"fake_root": sandbox.fake_root(), "mode": sandbox.sandbox_isolation()}
    try:
        sandbox.require_isolation(False)
    except sandbox.IsolationMissing as exc:
        out["refused"] = str(exc)
        print(json.dumps(out))
        sys.exit(0)
    bomb = "import os\\nwhile True:\\n  try: os.fork()\\n  except OSError: print('refused', flush=True); break"
    out.update({
        "echo": run("print(input())", stdin="hi").stdout,
        "write": run(f"open({target!r}, 'w').write('x')").status,
        "inside": run("open('x', 'w').write('1'); print(open('x').read())").stdout,
        "token": run(f"print(open({token!r}).read())").status,
        "environ": run("print(open('/proc/1/environ').read())").stdout,
        "grader": run(f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=1)").status,
        "outside": run("import socket; socket.create_connection(('1.1.1.1', 53), timeout=1)").status,
        "loop": run("while True: pass", timeout_s=0.5).status,
        "balloon": run("a = []\\nwhile True: a.append(bytearray(50 << 20))",
                       limits=sandbox.SandboxLimits(memory_bytes=512 << 20)).status,
        "big_file": run("f = open('big', 'wb')\\nfor _ in range(10240): f.write(b'x' * (1 << 20))").status,
        "bomb": run(bomb, timeout_s=1.5, limits=sandbox.SandboxLimits(max_processes=16)).stdout,
    })
    print(json.dumps(out))
""")


@pytest.mark.parametrize("nested", ["allowed", "blocked", "blocked-no-bwrap"])
@needs_setpriv
def test_hostile_programs_under_a_fake_root(nested, nobody_files):
    """An ordinary user's fake root (what apptainer --fakeroot and rootless podman give), with nested
    user namespaces allowed and blocked (`echo 0 > /proc/sys/user/max_user_namespaces` inside)."""
    target, token = nobody_files
    home = token.parents[2]
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    block = "echo 0 > /proc/sys/user/max_user_namespaces; " if nested != "allowed" else ""
    script = f'{block}exec /usr/bin/python3 -I -c "$0" "$@"'
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "HF_TOKEN": "hf_env_secret", "DB_PASSWORD": "pw_secret"}
    proc = subprocess.run(
        [
            *AS_NOBODY,
            "unshare",
            "--user",
            "--map-root-user",
            "sh",
            "-c",
            script,
            FAKE_ROOT_SUITE,
            str(REPO),
            str(target),
            str(token),
            str(listener.getsockname()[1]),
            "1" if nested == "blocked-no-bwrap" else "0",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    listener.close()
    if "unshare failed" in proc.stderr:
        unavailable(f"no user namespaces here: {proc.stderr.strip()}", HOST_ROOT and ON_CI)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["fake_root"] is True
    expected = {"allowed": "user-namespaces", "blocked": "bubblewrap", "blocked-no-bwrap": "process-group"}[nested]
    if nested == "blocked" and not shutil.which("bwrap"):
        expected = "process-group"
    assert out["mode"] == expected
    if expected == "process-group":  # nothing isolates: the refusal, naming what is missing and the knob
        assert "eval.allow_unisolated_code: true" in out["refused"] and "user-namespaces:" in out["refused"]
        return
    assert out["echo"] == "hi\n"
    assert out["write"] == "runtime_error" and not target.exists()
    assert out["inside"] == "1\n"
    assert out["token"] == "runtime_error"
    assert "secret" not in out["environ"] and "PATH=" in out["environ"]
    assert (out["grader"], out["outside"]) == ("runtime_error", "runtime_error")
    assert out["loop"] == "timeout"
    assert out["balloon"] == "memory"
    assert out["big_file"] == "runtime_error"
    assert "refused" in out["bomb"]  # RLIMIT_NPROC held: the bomb was refused, not just timed out


# ----------------------------------------------------------------------------- process-group


# What a machine without bubblewrap or user namespaces detects.
PROCESS_GROUP_ONLY = sandbox.backends._Isolation(
    "process-group", sys.executable, missing=(("bubblewrap", "bwrap is not installed"),)
)


THREADS_ON_A_BUSY_ACCOUNT = textwrap.dedent("""
    import sys, threading
    sys.path.insert(0, sys.argv[1])
    from svd_hpc.eval import sandbox
    # A busy account, like a grader with a loaded engine: many threads of our uid.
    stop = threading.Event()
    for _ in range(150):
        threading.Thread(target=stop.wait, daemon=True).start()
    iso = sandbox.detect_isolation(("process-group",))
    program = "import threading\\nts = [threading.Thread(target=lambda: None) for _ in range(8)]\\n" \\
              "[t.start() for t in ts]\\n[t.join() for t in ts]\\nprint('threads ok')"
    result = sandbox.run_isolated(iso, program, stdin="", timeout_s=10, limits=sandbox.SandboxLimits(max_processes=16))
    print(result.status, result.stdout.strip(), result.stderr.strip()[-200:])
    stop.set()
""")


@needs_setpriv
def test_process_group_counts_threads_for_rlimit_nproc():
    """RLIMIT_NPROC counts tasks: the limit must leave room for all of the user's threads."""
    proc = subprocess.run(
        [
            *AS_NOBODY,
            "/usr/bin/python3",
            "-I",
            "-c",
            THREADS_ON_A_BUSY_ACCOUNT,
            str(REPO),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ok threads ok"), proc.stdout


def test_user_tasks_counts_threads():
    stop = threading.Event()
    before = sandbox.user_tasks(os.getuid())
    threads = [threading.Thread(target=stop.wait) for _ in range(20)]
    for t in threads:
        t.start()
    try:
        assert sandbox.user_tasks(os.getuid()) >= before + 20
    finally:
        stop.set()
        for t in threads:
            t.join()


def test_process_group_reports_what_is_not_contained(monkeypatch):
    """Allowed explicitly, an unisolated run says so: no network isolation in the result and the record."""
    monkeypatch.setattr(sandbox.detect, "_detected", PROCESS_GROUP_ONLY)
    assert not run_program("print(1)").network_isolated
    assert sandbox.require_isolation(True) == "process-group"
    assert sandbox.isolation_record()["network_isolated"] is False
    with pytest.raises(sandbox.IsolationMissing) as err:
        sandbox.require_isolation(False, "code benchmark 'lcb'")
    message = str(err.value)
    assert message.count(". ") == 0 and message.endswith(".")  # one sentence
    assert "code benchmark 'lcb'" in message and "bwrap is not installed" in message
    assert "eval.allow_unisolated_code: true" in message


def test_code_benchmark_task_refuses_before_loading_a_model(tmp_path, monkeypatch):
    """The refusal is a task error (exit 2 through svd_hpc.task), raised before any engine starts."""
    import yaml

    from svd_hpc import config
    from svd_hpc.rundir.atomic import atomic_write_json
    from svd_hpc.rundir.layout import RunDir
    from svd_hpc.rundir.planfile import plan_to_json
    from svd_hpc.runner.plan import build_plan
    from svd_hpc.stages import evaluate

    code = {
        "name": "code",
        "path": str(REPO / "data" / "eval_samples" / "code.jsonl"),
        "id_field": "question_id",
        "question_field": "question_content",
        "grader": "code",
        "domain": "code",
    }
    path = tmp_path / "r.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "r",
                "model": {"path": "builtin:tiny-qwen3"},
                "train": {"enabled": False},
                "eval": {"benchmarks": [code]},
            }
        )
    )
    cfg = config.load(path)
    run = RunDir(tmp_path / "r")
    run.write_config(cfg, meta={})
    atomic_write_json(run.plan_path, plan_to_json(build_plan(cfg)))
    monkeypatch.setattr(sandbox.detect, "_detected", PROCESS_GROUP_ONLY)
    started = []
    monkeypatch.setattr(evaluate, "Engine", lambda *a, **k: started.append(1) or pytest.fail("engine started"))
    with pytest.raises(sandbox.IsolationMissing, match="eval.allow_unisolated_code: true"):
        run_eval(run, "eval_base", 0)
    assert started == []


# ----------------------------------------------------------------------------- apptainer, cgroups, report


def test_apptainer_command_line(monkeypatch):
    """apptainer is not installed here: the exact command line it would get."""
    monkeypatch.setenv(sandbox.IMAGE_VAR, "/images/python.sif")
    iso = sandbox.backends._Isolation("apptainer", "python3", "/usr/bin/apptainer")
    rlimits = sandbox.limits.rlimit_table(SandboxLimits(), 6.0, 5)
    argv = sandbox.backends.apptainer_argv(iso, "/scratch/w", rlimits)
    assert argv[:15] == [
        "/usr/bin/apptainer",
        "exec",
        "--containall",
        "--net",
        "--network",
        "none",
        "--no-privs",
        "--no-home",
        "--bind",
        "/scratch/w:/tmp/sandbox",
        "--pwd",
        "/tmp/sandbox",
        "/images/python.sif",
        "python3",
        "-I",
    ]
    bootstrap = argv[-1]
    assert f"({int(__import__('resource').RLIMIT_NPROC)}, (69, 69))" in bootstrap  # 64 + the 5 already counted
    assert "os.execvp('python3', ['python3', '-I', '-B', 'main.py'])" in bootstrap
    # the bootstrap is valid Python that sets the limits and becomes the program
    compile(bootstrap, "bootstrap", "exec")


def test_apptainer_is_skipped_with_its_reason(monkeypatch):
    monkeypatch.setattr(sandbox.detect, "_apptainer", lambda: "")
    assert "is installed" in sandbox.detect.precondition("apptainer")
    monkeypatch.setattr(sandbox.detect, "_apptainer", lambda: "/usr/bin/apptainer")
    monkeypatch.delenv(sandbox.IMAGE_VAR, raising=False)
    assert sandbox.IMAGE_VAR in sandbox.detect.precondition("apptainer")


def test_bubblewrap_command_line_hides_home_and_network(monkeypatch, tmp_path):
    home = Path("/srv/someone")
    monkeypatch.setattr(sandbox.backends, "_hidden_home", lambda interpreter: (str(home), ()))
    argv = sandbox.backends.bwrap_argv(
        sandbox.backends._Isolation("bubblewrap", "/usr/bin/python3", "/usr/bin/bwrap"), 7, SandboxLimits()
    )
    joined = " ".join(argv)
    for part in (
        "--unshare-all",
        "--die-with-parent",
        "--cap-drop ALL",
        "--ro-bind / /",
        f"--tmpfs {home}",
        f"--remount-ro {home}",
        "--file 7 /tmp/sandbox/main.py",
        "--remount-ro /tmp",
    ):
        assert part in joined
    assert "--share-net" not in argv and argv[-1] == "--"


def test_cgroup_delegation_here_or_its_reason(monkeypatch):
    """This machine's cgroups, for real: a delegated cgroup v2 is used, else the reason is stated."""
    d = sandbox.limits.delegate_cgroup()
    bound = sandbox.memory_bound(SandboxLimits())
    if d.parent is None:
        assert d.reason and d.reason in bound and "RLIMIT_AS 1024 MiB x RLIMIT_NPROC 64" in bound
        pytest.skip(f"no delegated cgroup v2 here: {d.reason}")
    monkeypatch.setattr(sandbox.limits, "_cgroup", sandbox.limits.Delegation(d.parent, ""))
    result = run_program(
        "a = []\nwhile True: a.append(bytearray(50 << 20))",
        limits=SandboxLimits(memory_bytes=4 << 30, total_memory_bytes=256 << 20),
    )
    assert result.status == "memory"


def test_cgroup_delegation_moves_us_to_a_leaf(tmp_path):
    """The files a delegated cgroup v2 gets written (a tree of plain files stands in for cgroupfs)."""
    root = tmp_path / "cg"
    ours = root / "job_1" / "step_0"
    ours.mkdir(parents=True)
    (ours / "cgroup.controllers").write_text("cpu memory pids\n")
    (ours / "cgroup.subtree_control").write_text("")
    (ours / "cgroup.procs").write_text("111\n222\n")
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(f"30 25 0:26 / {root} rw,nosuid - cgroup2 cgroup2 rw\n")
    membership = tmp_path / "cgroup"
    membership.write_text("0::/job_1/step_0\n")
    d = sandbox.limits.delegate_cgroup(str(mountinfo), str(membership))
    assert d.parent == str(ours)
    assert (ours / "svd-grader" / "cgroup.procs").read_text() == "222"  # each pid written in turn
    assert (ours / "cgroup.subtree_control").read_text() == "+memory +pids"
    (ours / "cgroup.controllers").write_text("cpu\n")
    (ours / "cgroup.subtree_control").write_text("")
    assert "no memory and pids controllers" in sandbox.limits.delegate_cgroup(str(mountinfo), str(membership)).reason


def test_report_states_the_isolation(tmp_path):
    from svd_hpc.rundir.layout import RunDir
    from svd_hpc.stages import report

    run = RunDir(tmp_path / "run")
    for bench, record in (
        ("lcb", {"isolation": "bubblewrap", "network_isolated": True, "total_memory": "cgroup v2 x"}),
        ("humaneval", {"isolation": "process-group", "network_isolated": False}),
    ):
        path = run.stage_dir("eval") / "base" / bench / "seed-0.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({"sandbox": record}))
    text = "\n".join(report.sandbox_notes(run))
    assert "isolation `bubblewrap` for lcb; `process-group` for humaneval" in text
    assert "Total memory: cgroup v2 x." in text
    assert "humaneval was graded without isolation" in text
