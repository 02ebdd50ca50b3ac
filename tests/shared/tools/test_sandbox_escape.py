"""Adversarial suite: each escape attempt fails, and the executor keeps serving ``print(2+2)`` afterwards.

Every escape attack runs twice where the host allows it: with every layer (``hook``), and with
the audit hook off (``os-only``) to show the OS layers (jail, namespaces, uid, rlimits) hold on
their own; an ``os-only`` case is skipped where the host lacks the layer that attack needs.
Resource attacks (memory, CPU, output) run once, hook off: the hook plays no part in stopping
them. Each attack prints ``ESCAPED`` (or a secret) only if it succeeded; the asserts look for those.
"""
from __future__ import annotations

import dataclasses
import os
import secrets
import shutil
import socket
import tempfile
from pathlib import Path

import pytest

from shared.tools.executor import execute
from shared.tools.sandbox import isolation_layers, run_python
from shared.tools.sandbox_config import SandboxConfig

UID_BASE, UID_COUNT = 64100, 50  # a range of its own, so leftover processes are this suite's


def make_limits(audit_hook: bool) -> SandboxConfig:
    """Tight limits, but a generous wall clock: a loaded CI machine must not turn an attack into a timeout."""
    return SandboxConfig(wall_s=10, cpu_s=1, memory_mb=128, max_processes=8, max_output_bytes=2000,
                         audit_hook=audit_hook, uid_base=UID_BASE, uid_count=UID_COUNT)


OS_ONLY = make_limits(audit_hook=False)


@pytest.fixture(params=["hook", "os-only"])
def limits(request) -> SandboxConfig:
    return make_limits(audit_hook=request.param == "hook")


def needs(limits: SandboxConfig, *layers: str) -> None:
    """Skip an ``os-only`` case when the host lacks the OS layer that must stop the attack."""
    missing = [layer for layer in layers if layer not in isolation_layers(limits)]
    if not limits.audit_hook and missing:
        pytest.skip(f"without the audit hook this attack needs {missing}, which this host lacks")


def assert_still_serving() -> None:
    assert execute({"name": "python", "arguments": {"code": "print(2+2)"}}) == "4"


def leftover_processes() -> list[int]:
    """Host pids running as one of this suite's sandbox uids."""
    pids = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            uid_line = next(line for line in status.read_text().splitlines() if line.startswith("Uid:"))
        except (OSError, StopIteration):  # the process exited while we looked
            continue
        if UID_BASE <= int(uid_line.split()[1]) < UID_BASE + UID_COUNT:
            pids.append(int(status.parent.name))
    return pids


@pytest.fixture
def outside():
    """A world-readable, world-writable dir outside the sandbox holding a secret file."""
    path = Path(tempfile.mkdtemp(prefix="sandbox-outside-"))
    path.chmod(0o777)  # file permissions alone would not stop the sandbox user: the jail/hook must
    token = secrets.token_hex(16)
    (path / "secret.txt").write_text(f"TOKEN={token}\n")
    (path / "secret.txt").chmod(0o644)
    yield path, token
    shutil.rmtree(path)


def test_reading_files_outside_the_work_dir(limits, outside):
    needs(limits, "fs-jail")
    folder, token = outside
    targets = [folder / "secret.txt", "/etc/shadow", "/etc/passwd", Path("~/.ssh/id_rsa").expanduser(),
               Path(__file__).resolve(), "../secret.txt", "/proc/1/environ"]
    code = f"""
import os
for path in {[str(t) for t in targets]!r}:
    try:
        print('ESCAPED', path, open(path).read()[:200])
    except (OSError, PermissionError) as exc:
        print('blocked', path, type(exc).__name__)
try:
    print('ESCAPED listing', os.listdir({str(folder)!r}))
except OSError as exc:
    print('blocked listing', type(exc).__name__)
"""
    result = run_python(code, limits)
    assert result.stdout.count("blocked") == len(targets) + 1, result.stdout + result.stderr
    assert "ESCAPED" not in result.stdout and token not in result.stdout + result.stderr
    assert_still_serving()


def test_writing_outside_the_work_dir(limits, outside):
    needs(limits, "fs-jail")
    folder, _ = outside
    targets = [folder / "planted.txt", f"/tmp/planted-{secrets.token_hex(4)}", "/usr/planted.txt", "../planted"]
    code = f"""
for path in {[str(t) for t in targets]!r}:
    try:
        open(path, 'w').write('pwned')
        print('ESCAPED', path)
    except OSError as exc:
        print('blocked', path, type(exc).__name__)
"""
    try:
        result = run_python(code, limits)
        assert result.stdout.count("blocked") == len(targets), result.stdout + result.stderr
        assert not any(Path(t).exists() for t in targets[:3])
        assert (folder / "secret.txt").read_text().startswith("TOKEN=")
    finally:
        for target in targets[1:3]:  # if the sandbox failed, do not leave its files behind
            Path(target).unlink(missing_ok=True)
    assert_still_serving()


def test_network_access(limits):
    needs(limits, "netns")
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.setblocking(False)
        port = server.getsockname()[1]
        code = f"""
import socket, urllib.request
for address in [('127.0.0.1', {port}), ('1.1.1.1', 53)]:
    try:
        socket.create_connection(address, timeout=1); print('ESCAPED', address)
    except OSError as exc:
        print('blocked', address, type(exc).__name__)
try:
    urllib.request.urlopen('http://example.com', timeout=1); print('ESCAPED http')
except Exception as exc:
    print('blocked http', type(exc).__name__)
"""
        result = run_python(code, limits)
        with pytest.raises(BlockingIOError):  # nothing ever connected to the host's listener
            server.accept()
    assert result.stdout.count("blocked") == 3 and "ESCAPED" not in result.stdout, result.stdout + result.stderr
    assert_still_serving()


def test_fork_bomb(limits):
    needs(limits, "pidns")
    result = run_python("import os\nwhile True:\n    os.fork()", limits)
    assert not result.ok
    if limits.audit_hook:
        assert "os.fork is not allowed" in result.stderr
    assert leftover_processes() == []
    assert_still_serving()


def test_fork_bomb_that_ignores_errors_is_contained_by_the_os_layers():
    needs(OS_ONLY, "pidns")
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
    result = run_python(bomb, dataclasses.replace(OS_ONLY, wall_s=2))  # replaced children could fork on to the end
    assert result.killed_reason in ("CPU time limit of 1 s", "wall-clock limit of 2 s"), result
    assert leftover_processes() == []  # RLIMIT_NPROC kept it small; the pid namespace took every child with it
    assert_still_serving()


@pytest.mark.parametrize("bomb", ["x = bytearray(10 ** 10)", "x = []\nwhile True:\n    x.append(' ' * 10 ** 7)"])
def test_memory_bomb(bomb):
    result = run_python(bomb, OS_ONLY)
    assert not result.ok and result.killed_reason == f"memory limit of {OS_ONLY.memory_mb} MB", result.stderr
    assert_still_serving()


def test_infinite_loop_hits_the_cpu_limit():
    result = run_python("while True:\n    pass", OS_ONLY)
    assert not result.ok and result.killed_reason == "CPU time limit of 1 s", result
    assert_still_serving()


def test_sleeping_forever_hits_the_wall_clock():
    result = run_python("import time\nprint('start')\ntime.sleep(60)", SandboxConfig(wall_s=2))
    assert result.timed_out and result.killed_reason == "wall-clock limit of 2 s" and result.stdout == "start\n"
    assert_still_serving()


def test_environment_and_secret_leaks(limits, monkeypatch, tmp_path):
    tokens = {name: secrets.token_hex(12) for name in
              ("OPENAI_API_KEY", "REDIS_URL", "JOURNEY_API_KEY", "AWS_SECRET_ACCESS_KEY", "HF_TOKEN")}
    for name, token in tokens.items():
        monkeypatch.setenv(name, token)
    (tmp_path / "sitecustomize.py").write_text("print('ESCAPED sitecustomize')\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))  # -I and the scrubbed env must both ignore it
    code = """
import os
print(dict(os.environ))
for path in ['/proc/self/environ', '/proc/1/environ']:
    try:
        print(open(path, 'rb').read())
    except OSError as exc:
        print('blocked', path, type(exc).__name__)
"""
    result = run_python(code, limits)
    output = result.stdout + result.stderr
    assert result.stdout.startswith("{") and "ESCAPED" not in output, result
    assert not any(token in output for token in tokens.values())
    assert not any(name in output for name in tokens) and "PYTHONPATH" not in output
    assert_still_serving()


def test_ctypes_escape(limits, outside):
    needs(limits, "fs-jail")
    folder, token = outside
    code = f"""
import ctypes
libc = ctypes.CDLL(None)
start_uid = libc.getuid()  # 0 already inside a user namespace: root there is not root here
if start_uid != 0 and libc.setuid(0) == 0:
    print('ESCAPED uid 0')
fd = libc.open({str(folder / 'secret.txt').encode()!r}, 0)
if fd >= 0:
    buf = ctypes.create_string_buffer(100)
    libc.read(fd, buf, 100)
    print('ESCAPED', buf.value)
print('blocked open', fd)
"""
    result = run_python(code, limits)
    output = result.stdout + result.stderr
    assert "ESCAPED" not in output and token not in output, output
    if limits.audit_hook:
        assert "importing ctypes is not allowed" in result.stderr
    else:
        assert "blocked open -1" in result.stdout, output
    assert_still_serving()


def test_filling_the_disk():
    needs(OS_ONLY, "fs-jail")
    code = "for i in range(100):\n    open(f'f{i}', 'wb').write(b'x' * 10 ** 7)\n    print(i, flush=True)"
    result = run_python(code, OS_ONLY)
    assert "No space left on device" in result.stderr, result
    assert len(result.stdout.split()) <= OS_ONLY.max_disk_mb // 10  # the jail's tmpfs filled, not the host disk
    assert_still_serving()


@pytest.mark.parametrize("flood", ["print('x' * 10 ** 7)", "while True:\n    print('y' * 1000)",
                                   "import sys\nwhile True:\n    sys.stderr.write('z' * 1000)"])
def test_huge_output_is_truncated_and_stopped(flood):
    result = run_python(flood, OS_ONLY)
    assert result.truncated and not result.ok and result.killed_reason == "output limit of 2000 bytes"
    assert len(result.stdout) <= 2000 and len(result.stderr) <= 2000
    assert "[output truncated" in result.text()
    assert_still_serving()


@pytest.mark.parametrize("attack", [
    "import subprocess\nprint(subprocess.run(['cat', {secret!r}], capture_output=True, text=True))",
    "import os\nos.system('cat {secret} > {planted}')",
    "import os\nos.execv('/bin/cat', ['cat', {secret!r}])",
    "import os\nos.posix_spawn('/bin/cat', ['cat', {secret!r}], {{}})",
    "import os, signal\nos.kill({pid}, signal.SIGKILL)",
], ids=["subprocess", "os.system", "exec", "posix_spawn", "kill"])
def test_processes_and_signals(limits, outside, attack):
    needs(limits, "fs-jail", "pidns")
    folder, token = outside
    planted = folder / "planted.txt"
    result = run_python(attack.format(secret=str(folder / "secret.txt"), planted=planted, pid=os.getpid()), limits)
    output = result.stdout + result.stderr
    assert token not in output and not planted.exists(), output
    if limits.audit_hook:
        assert "is not allowed" in result.stderr
    assert_still_serving()  # and this test process is alive to see it
