"""Run an untrusted Python snippet in a sandbox: ``run_python(code, limits) -> SandboxResult``.

Each run gets a fresh temp dir, a separate interpreter (``python -I -S -B -u``: no site-packages,
no ``PYTHON*`` variables, no script dir on ``sys.path``), a scrubbed environment (``PATH``,
``LANG``, ``HOME`` and ``TMPDIR`` only: no API keys, ``REDIS_URL``, ``AWS_*``...), its own process
group, a wall-clock deadline that kills the whole tree, and stdout/stderr each cut at
``max_output_bytes`` (a snippet printing more is stopped; the result says so). Defense in depth,
each layer holding on its own where the host provides it (``isolation_layers()`` says which):

=============  ===================================================================  ==========================
layer          what it is                                                           blocks
=============  ===================================================================  ==========================
``fs-jail``    new mount namespace + chroot into a 1 MB read-only tmpfs holding     reading/writing outside
               only ``expose_paths`` (``/usr``, ``/lib``...; read-only), the        the work dir (``/etc``,
               interpreter's prefix (read-only), ``/dev/{null,zero,...}``,          ``/root``, ``/tmp``, the
               a fresh ``/proc`` and the work dir at ``/sandbox`` (a tmpfs of      repo, secrets files),
               ``max_disk_mb``)                                                     filling the disk
``netns``      new network namespace: only a down loopback                         all network access
``pidns``      new PID namespace: the snippet sees only its own processes, and     killing/reading other
               everything in it dies with its init                                 processes, orphans
``uid``        (root only) ``setpriv`` to a per-run uid from ``uid_base`` with      privileged syscalls,
               no groups, no capabilities and ``no_new_privs``                     setuid binaries, writes
``userns``     (not root) the jail inside a user namespace, capabilities dropped   the same, weaker: shares
                                                                                    the service user's uid
``rlimits``    CPU, address space, processes, file size, open files, no core       loops, memory and fork
                                                                                    bombs, disk filling
``audit-hook`` ``sys.addaudithook`` before the snippet (``sandbox_runner``)         ``import ctypes``, fork,
                                                                                    exec, sockets, open()
                                                                                    outside: clear errors
=============  ===================================================================  ==========================

What is NOT guaranteed: the audit hook alone is not a security boundary (code in the same
interpreter can subvert it); without ``fs-jail`` world-readable host files are readable and
world-writable dirs writable at OS level; without ``netns`` only the hook stops sockets; without
``pidns`` a child that calls ``setsid`` escapes the process-group kill (the hook refuses ``fork``);
``RLIMIT_NPROC`` counts per uid, so in ``userns``/bare mode it counts the service user's processes
too; ``RLIMIT_AS`` is per process (a cgroup would bound the tree's total memory); kernel exploits are out of scope (use gVisor or a VM for hostile multi-tenant loads).
The host's isolation is probed once per interpreter (strongest mode that runs ``print('ok')``)
and cached; ``required_layers`` makes a missing layer an error instead of a logged warning.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import random
import selectors
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from shared.tools.sandbox_config import SandboxConfig

log = logging.getLogger(__name__)

JAIL_WORKDIR = "/sandbox"
_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
_NAMESPACES = ("--mount", "--net", "--pid", "--fork", "--kill-child")
_DEVICES = ("null", "zero", "full", "random", "urandom")
_PROBE = "print('ok')"
_WITHOUT = {  # what a missing layer leaves to the audit hook alone
    "fs-jail": "only the audit hook keeps snippets from reading world-readable host files",
    "netns": "only the audit hook blocks sockets",
    "pidns": "a snippet's orphaned processes may outlive the run",
}


@dataclass(frozen=True)
class SandboxResult:
    """What a snippet did. ``ok``: it exited 0 and was not stopped (a limit or the output cap)."""
    ok: bool
    stdout: str
    stderr: str
    exit_code: int  # negative: killed by that signal
    timed_out: bool
    truncated: bool
    killed_reason: str | None
    duration_s: float
    layers: tuple[str, ...] = ()  # the isolation layers this run had

    def text(self) -> str:
        """The result as the ``python`` tool returns it to the model: output, then what went wrong."""
        parts = [self.stdout.rstrip("\n")] if self.stdout.strip() else []
        if self.stderr.strip():
            parts.append("stderr:\n" + self.stderr.rstrip("\n"))
        if self.truncated:
            parts.append("[output truncated: the snippet printed more than the limit and was stopped]")
        if self.killed_reason:
            parts.append(f"[stopped: {self.killed_reason}]")
        elif self.exit_code:
            parts.append(f"[exit code {self.exit_code}]")
        return "\n".join(parts) if parts else "(no output)"


class SandboxUnavailable(RuntimeError):
    """The host cannot provide the isolation the config requires. The message names the fix."""


@dataclass(frozen=True)
class _Mode:
    name: str
    layers: tuple[str, ...]  # without audit-hook, which the config switches
    unshare: tuple[str, ...] | None  # unshare(1) flags of the jail; None: no namespaces, no jail
    drop_uid: bool  # setpriv to a per-run uid (needs root)


def run_python(code: str, limits: SandboxConfig | None = None) -> SandboxResult:
    """Run ``code`` in the strongest sandbox this host allows; :class:`SandboxUnavailable` if below
    ``limits.required_layers``."""
    config = limits or SandboxConfig()
    config.validate()
    return _run(code, config, _host_mode(config))


def isolation_layers(limits: SandboxConfig | None = None) -> tuple[str, ...]:
    """The layers a run with ``limits`` gets on this host (probed once, then cached)."""
    config = limits or SandboxConfig()
    return _layers(_host_mode(config), config)


def _layers(mode: _Mode, config: SandboxConfig) -> tuple[str, ...]:
    return mode.layers + (("audit-hook",) if config.audit_hook else ())


def _host_mode(config: SandboxConfig) -> _Mode:
    mode = _probe(_python(config), tuple(config.expose_paths))
    missing = [layer for layer in config.required_layers if layer not in _layers(mode, config)]
    if missing:
        raise SandboxUnavailable(
            f"this host's sandbox ({mode.name}: {list(_layers(mode, config))}) lacks required layers {missing}; "
            "run the tool executor as root (or allow unprivileged user namespaces: sysctl "
            "kernel.unprivileged_userns_clone=1) with util-linux installed, or drop them from required_layers")
    return mode


@functools.lru_cache(maxsize=8)
def _probe(python: str, expose: tuple[str, ...]) -> _Mode:
    """The strongest mode in which ``python`` runs a trivial snippet here."""
    config = SandboxConfig(python=python, expose_paths=list(expose))
    for mode in candidate_modes():
        result = _run(_PROBE, config, mode)
        if result.ok and result.stdout.strip() == "ok":
            log.info("python sandbox: %s mode, layers %s", mode.name, list(_layers(mode, config)))
            for layer, consequence in _WITHOUT.items():
                if layer not in mode.layers:
                    log.warning("python sandbox: no %s on this host: %s (see shared.tools.sandbox; set "
                                "required_layers to refuse to run instead)", layer, consequence)
            return mode
        log.info("python sandbox: %s mode unavailable here (exit %s): %s", mode.name, result.exit_code,
                 result.stderr.strip()[-300:])
    raise SandboxUnavailable(f"{python} cannot run even an unisolated snippet ({result.stderr.strip()[-300:]}); "
                             "set the sandbox's python to a working interpreter")


def candidate_modes() -> list[_Mode]:
    """The sandbox modes worth trying on this host, strongest first (the last always applies)."""
    have = {tool: shutil.which(tool, path=_PATH) for tool in ("unshare", "mount", "chroot", "setpriv", "sh")}
    root = os.geteuid() == 0
    modes = []
    if all(have.values()):
        if root:
            modes.append(_Mode("jail", ("fs-jail", "netns", "pidns", "uid", "rlimits"), _NAMESPACES, True))
        modes.append(_Mode("userns-jail", ("fs-jail", "netns", "pidns", "userns", "rlimits"),
                           ("--user", "--map-root-user") + _NAMESPACES, False))
    if root and have["setpriv"]:
        modes.append(_Mode("uid", ("uid", "rlimits"), None, True))
    modes.append(_Mode("bare", ("rlimits",), None, False))
    return modes


def _python(config: SandboxConfig) -> str:
    return os.path.realpath(config.python or getattr(sys, "_base_executable", None) or sys.executable)


def _python_prefix(python: str) -> str:
    """The install prefix the jail must show for ``python`` to start (``<prefix>/bin/python``)."""
    if python == os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable):
        return os.path.realpath(sys.base_prefix)
    return str(Path(python).parent.parent)


@functools.lru_cache(maxsize=1)
def _runner_source() -> str:
    return (Path(__file__).with_name("sandbox_runner.py")).read_text()


def _run(code: str, config: SandboxConfig, mode: _Mode) -> SandboxResult:
    """One run in ``mode``: set up the temp dirs, start the process, collect, clean up."""
    base = Path(tempfile.mkdtemp(prefix="journey-sandbox-"))
    try:
        uid = random.SystemRandom().randrange(config.uid_base, config.uid_base + config.uid_count) \
            if mode.drop_uid else None
        work = base / "work"  # the jail's work dir is a tmpfs of its own instead
        if mode.unshare is None:
            work.mkdir(mode=0o700)
            if uid is not None:
                os.chown(work, uid, uid)
                os.chmod(base, 0o711)  # the uid must reach work/ through base/ (it still cannot list it)
        snippet = base / "snippet.py"  # the runner's stdin: outside the jail and the work dir
        snippet.write_text(code, encoding="utf-8")
        inside = JAIL_WORKDIR if mode.unshare else str(work)
        argv = _command(mode, config, base, uid, inside)
        env = {"PATH": _PATH, "LANG": "C.UTF-8", "HOME": inside, "TMPDIR": inside}
        start = time.monotonic()
        with open(snippet, "rb") as stdin:
            # cwd "/" in the jail: the shell exports $PWD, which must not name the host path
            proc = subprocess.Popen(argv, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                                    cwd="/" if mode.unshare else work, start_new_session=True, close_fds=True)
        stdout, stderr, timed_out, overflow = _collect(proc, start + config.wall_s, config.max_output_bytes,
                                                       jailed=mode.unshare is not None)
        duration = time.monotonic() - start
        return _result(proc.returncode, stdout, stderr, timed_out, overflow, duration, config, mode)
    finally:
        shutil.rmtree(base, onerror=_cleanup_failed)


def _command(mode: _Mode, config: SandboxConfig, base: Path, uid: int | None, inside: str) -> list[str]:
    python = _python(config)
    params = {"workdir": inside, "cpu_s": config.cpu_s, "memory_mb": config.memory_mb,
              "max_processes": config.max_processes, "max_file_mb": config.max_file_mb,
              "max_open_files": config.max_open_files, "audit_hook": config.audit_hook}
    runner = [python, "-I", "-S", "-B", "-u", "-c", _runner_source(), json.dumps(params)]
    setpriv = shutil.which("setpriv", path=_PATH)
    if uid is not None:
        drop = [setpriv, f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--no-new-privs", "--"]
    elif mode.unshare is not None:  # root of a user namespace: keep the uid, lose every capability
        drop = [setpriv, "--no-new-privs", "--bounding-set=-all", "--inh-caps=-all", "--"]
    else:
        drop = []
    if mode.unshare is None:
        return drop + runner
    root = base / "root"
    root.mkdir()
    script = _jail_script(root, config, uid, _python_prefix(python))
    return [shutil.which("unshare", path=_PATH), *mode.unshare, "--", shutil.which("sh", path=_PATH), "-c", script,
            "sandbox-jail", shutil.which("chroot", path=_PATH), str(root), *drop, *runner]


def _jail_script(root: Path, config: SandboxConfig, uid: int | None, prefix: str) -> str:
    """The shell script (run as root of the new namespaces) that builds the jail, then runs "$@" in it.

    It stays the namespace's init (no ``exec``) so that a snippet killed by a signal shows as
    exit 128+signal, and everything left in the namespace dies when it exits.
    """
    r = str(root)
    binds: list[str] = []  # host paths shown read-only at the same path in the jail
    links: list[tuple[str, str]] = []  # /bin -> usr/bin on merged-/usr systems: the same link in the jail
    for path in config.expose_paths:
        if os.path.islink(path):
            links.append((os.readlink(path), path))
        elif os.path.isdir(path):
            binds.append(path)
    if not any(_under(prefix, os.path.realpath(path)) for path in config.expose_paths if os.path.exists(path)):
        binds.append(prefix)
    dirs = [r + path for path in binds] + [r + os.path.dirname(p) for _, p in links] + \
        [r + d for d in ("/dev", "/proc", JAIL_WORKDIR)]
    owner = f",uid={uid},gid={uid}" if uid is not None else ""
    work = f"mount -t tmpfs -o size={config.max_disk_mb}m,mode=700{owner},nosuid,nodev tmpfs {_q(r + JAIL_WORKDIR)}"
    # one process per mount or link; mkdir once and ': >' (a shell builtin) instead of touch keep the start fast
    lines = ["set -e", "mount --make-rprivate /", f"mount -t tmpfs -o size=1m,mode=755,nosuid,nodev tmpfs {_q(r)}",
             "mkdir -p " + " ".join(_q(d) for d in sorted(set(dirs)))]
    lines += [f"ln -s {_q(target)} {_q(r + path)}" for target, path in links]
    for path in binds:
        lines += [f"mount --rbind {_q(path)} {_q(r + path)}", f"mount -o remount,bind,ro {_q(r + path)}"]
    lines.append(work)  # a tmpfs: what the snippet writes costs no host disk and vanishes with the namespace
    for name in _DEVICES:
        device = _q(f"{r}/dev/{name}")
        lines += [f": > {device}", f"mount --bind /dev/{name} {device}"]
    lines += [f"mount -t proc -o nosuid,nodev,noexec proc {_q(r + '/proc')}", f"mount -o remount,bind,ro {_q(r)}",
              "set +e", '"$@"', "exit $?"]
    return "\n".join(lines)


def _q(text: str) -> str:
    return shlex.quote(text)


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _collect(proc: subprocess.Popen, deadline: float, cap: int, jailed: bool) -> tuple[bytes, bytes, bool, bool]:
    """Read stdout and stderr until both close, the deadline passes or one exceeds ``cap`` bytes.

    Returns (stdout, stderr, timed_out, overflow); on a timeout or an overflow the process tree
    has been killed (``_stop``), and in every case the process has been reaped.
    """
    buffers = {proc.stdout.fileno(): bytearray(), proc.stderr.fileno(): bytearray()}
    timed_out = overflow = False
    with selectors.DefaultSelector() as selector:
        for stream in (proc.stdout, proc.stderr):
            selector.register(stream, selectors.EVENT_READ)
        while selector.get_map() and not overflow:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = True
                break
            for key, _ in selector.select(remaining):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    selector.unregister(key.fileobj)
                    continue
                buffers[key.fd] += chunk
                overflow = overflow or len(buffers[key.fd]) > cap
    if not (timed_out or overflow):
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:  # closed its pipes but kept running
            timed_out = True
    if timed_out or overflow:
        _stop(proc, jailed)
    proc.wait()
    proc.stdout.close()
    proc.stderr.close()
    out, err = buffers.values()
    return bytes(out[:cap]), bytes(err[:cap]), timed_out, overflow


def _stop(proc: subprocess.Popen, jailed: bool) -> None:
    """Kill the run's whole process tree; return once it is gone.

    In the jail, killing the namespace's init (unshare's child) makes the kernel kill everything in
    the namespace and reap it before init's exit completes, and only then does ``unshare`` exit:
    waiting for ``unshare`` is waiting for the tree. Killing ``unshare`` itself would return early.
    """
    if jailed:
        for child in _children(proc.pid):
            _kill(child, os.kill)
        try:
            proc.wait(timeout=5)
            return
        except subprocess.TimeoutExpired:  # init not found (not forked yet?) or stuck: the blunt way
            pass
    _kill(proc.pid, os.killpg)  # start_new_session: the group id is the leader's pid


def _kill(pid: int, kill) -> None:
    try:
        kill(pid, signal.SIGKILL)
    except ProcessLookupError:  # already exited
        pass


def _children(pid: int) -> list[int]:
    try:
        return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:  # kernel without CONFIG_PROC_CHILDREN: scan every process's parent
        children = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                if int(stat.read_text().rpartition(")")[2].split()[1]) == pid:
                    children.append(int(stat.parent.name))
            except (OSError, ValueError, IndexError):  # exited while we looked
                continue
        return children


def _result(returncode: int, stdout: bytes, stderr: bytes, timed_out: bool, overflow: bool, duration: float,
            config: SandboxConfig, mode: _Mode) -> SandboxResult:
    err = stderr.decode("utf-8", "replace")
    signum = -returncode if returncode < 0 else None
    if mode.unshare is not None and returncode > 128:  # the jail's shell reports a killed child as 128+signal
        signum = returncode - 128
    if timed_out:
        reason = f"wall-clock limit of {config.wall_s:g} s"
    elif overflow:
        reason = f"output limit of {config.max_output_bytes} bytes"
    elif signum == signal.SIGXCPU:
        reason = f"CPU time limit of {config.cpu_s} s"
    elif signum == signal.SIGKILL:
        reason = "killed by SIGKILL (the CPU hard limit or out of memory)"
    elif signum is not None:
        reason = f"killed by {_signal_name(signum)}"
    elif returncode and err.rstrip().rpartition("\n")[2].startswith("MemoryError"):
        reason = f"memory limit of {config.memory_mb} MB"
    else:
        reason = None
    return SandboxResult(ok=returncode == 0 and reason is None, stdout=stdout.decode("utf-8", "replace"), stderr=err,
                         exit_code=-signum if signum else returncode,  # Popen's convention: -N for signal N
                         timed_out=timed_out, truncated=overflow, killed_reason=reason, duration_s=duration,
                         layers=_layers(mode, config))


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _cleanup_failed(function, path, exc_info) -> None:
    log.warning("python sandbox: could not remove %s (%s: %s); delete it by hand", path, function.__name__,
                exc_info[1])
