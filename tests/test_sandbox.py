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

from svd_hpc import sandbox
from svd_hpc.sandbox import SandboxLimits, run_program

REPO = Path(__file__).resolve().parent.parent
# Each isolating backend, probed once: those that cannot run here are skipped with the reason.
BACKENDS = {mode: sandbox._detect((mode,)) for mode in sandbox.ISOLATING}


@pytest.fixture(params=sandbox.ISOLATING)
def backend(request, monkeypatch):
    """run_program uses this backend for the test."""
    iso = BACKENDS[request.param]
    if iso.mode == sandbox.UNAVAILABLE:
        pytest.skip(f"{request.param} cannot run here: {dict(iso.missing)[request.param]}")
    monkeypatch.setattr(sandbox, "_detected", iso)
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


def test_infinite_loop_is_killed_at_the_timeout(backend):
    result = run_program("while True:\n    pass", timeout_s=1.0)
    assert result.status == "timeout"
    assert 1.0 <= result.wall_s < 3.0  # generous: a loaded machine delays the kill too


def test_sleeping_program_is_killed_at_the_timeout(backend):
    # Wall clock, not CPU time: a program blocked on sleep or input must not hang the grader.
    result = run_program("import time\ntime.sleep(60)", timeout_s=0.5)
    assert result.status == "timeout"
    assert result.wall_s < 2.5


def test_memory_balloon_fails_the_sample_not_us(backend):
    program = "chunks = []\nwhile True:\n    chunks.append(bytearray(50 * 2**20))"
    result = run_program(program, timeout_s=10.0, limits=SandboxLimits(memory_bytes=512 << 20))
    assert result.status == "memory", result
    assert result.wall_s < 5.0


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
    assert spawn_s < 2.0
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
    from svd_hpc.sandbox import run_program
    run_program(sys.argv[2], timeout_s=60)
""")


def test_sandbox_dies_with_a_killed_grader(marker, tmp_path):
    """A grader killed mid-run (SLURM preemption, OOM) must not leave its sandboxes running."""
    # The marker is assembled at run time: the grader's own command line holds only its halves.
    head, tail = marker[:8], marker[8:]
    sleeper = ("import os, sys\n"
               f"os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(60)', '{head}' + '{tail}'])")
    # A killed grader cannot remove its own scratch folder: keep that in tmp_path.
    grader = subprocess.Popen([sys.executable, "-c", GRADER, str(REPO), sleeper],
                              env={**os.environ, "TMPDIR": str(tmp_path)})
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


@pytest.fixture
def home_with_token(monkeypatch, request):
    """A home (not under /tmp, which every backend covers anyway) holding a world-readable HF token."""
    parent = next(d for d in ("/home", "/srv", "/opt") if os.path.isdir(d))
    home = Path(tempfile.mkdtemp(prefix="svd_home_", dir=parent))
    request.addfinalizer(lambda: shutil.rmtree(home, ignore_errors=True))
    home.chmod(0o755)
    token = home / ".cache" / "huggingface" / "token"
    token.parent.mkdir(parents=True)
    token.write_text("hf_secret")
    for path in (home / ".cache", token.parent):
        path.chmod(0o755)
    token.chmod(0o644)
    monkeypatch.setenv("HOME", str(home))
    return token


def test_home_token_is_not_readable(backend, home_with_token, monkeypatch):
    monkeypatch.setattr(sandbox, "_detected", sandbox._detect((backend,)))  # detected with this home
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
    result = run_program(program, timeout_s=10.0)
    assert result.status != "ok" and "wrote 10 GB" not in result.stdout, result
    assert result.wall_s < 5.0
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
    iso = sandbox._detect(("process-group",))
    result = sandbox._run(iso, daemon_program(marker, "pass"), stdin="", timeout_s=4.0, limits=SandboxLimits())
    assert "daemon-up" in result.stdout
    assert not result.network_isolated
    assert processes_with(marker) == []
    looping = sandbox._run(iso, "while True: pass", stdin="", timeout_s=0.5, limits=SandboxLimits())
    assert looping.status == "timeout"


USERNS_CHECK = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, sys.argv[1])  # the repository: svd_hpc.sandbox needs only the standard library
    from svd_hpc import sandbox
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


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv") or not os.path.exists("/usr/bin/python3"),
                    reason="needs root (to become an ordinary user) and /usr/bin/python3")
def test_unprivileged_user_gets_user_namespaces(tmp_path, request):
    """What a SLURM user gets: run the sandbox itself as `nobody`."""
    owned = tmp_path / "nobody_owned"
    owned.mkdir()
    os.chown(owned, 65534, 65534)
    tmp_path.chmod(0o755)
    target = owned / "escape.txt"
    # Its home holds a token, as a cluster user's does (~/.cache/huggingface/token). Not under
    # /tmp, which the sandbox hides anyway.
    parent = next(d for d in ("/home", "/srv", "/opt") if os.path.isdir(d))
    home = Path(tempfile.mkdtemp(prefix="svd_home_", dir=parent))
    request.addfinalizer(lambda: shutil.rmtree(home, ignore_errors=True))
    home.chmod(0o755)
    token = home / ".cache" / "huggingface" / "token"
    token.parent.mkdir(parents=True)
    token.write_text("hf_secret")
    for path in (home, home / ".cache", token.parent, token):
        os.chown(path, 65534, 65534)
    proc = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3", "-I", "-c", USERNS_CHECK,
         str(REPO), str(target), str(token)],
        capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin", "HOME": str(home)},
    )
    if proc.returncode != 0 and "no way to run" in proc.stderr:
        pytest.skip("unprivileged user namespaces are disabled here")
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
