"""The first Python that runs inside the sandbox: limits, the audit hook, then the snippet.

``shared.tools.sandbox`` passes this file's source to ``python -I -S -B -u -c`` with one JSON
argument (``workdir``, the limits, ``audit_hook``) and the snippet on stdin; it is never imported
by the service. Stdlib only, and nothing here may be needed after the snippet starts.

Order matters: read the snippet and close stdin, lower the rlimits (an unprivileged process can
lower but never raise them), enter the work dir, install the audit hook, then ``exec`` the snippet
as ``__main__`` (its traceback, if any, shows its own lines only).

The audit hook is a tripwire, not a boundary: it turns the obvious attacks (``open`` outside the
work dir, ``subprocess``, ``os.fork``/``os.system``, sockets, ``import ctypes``) into a clear
``PermissionError``, but code in the same interpreter can subvert what the hook relies on (e.g.
monkeypatching ``os.path``), so the OS layers (jail, namespaces, uid, rlimits) must hold on their own.
"""
from __future__ import annotations

import json
import linecache
import os
import resource
import sys
import traceback
import types

_MB = 1024 * 1024
DENIED_EVENTS = frozenset({
    "os.system", "os.fork", "os.forkpty", "os.exec", "os.posix_spawn", "os.spawn", "os.kill", "os.killpg",
    "subprocess.Popen", "pty.spawn", "os.symlink", "os.link", "os.startfile",
    "gc.get_objects", "gc.get_referrers", "gc.get_referents",  # ways to reach the hook's own state
})
DENIED_PREFIXES = ("socket.", "ctypes.", "_posixsubprocess")
DENIED_MODULES = frozenset({"ctypes", "_ctypes", "_posixsubprocess", "_testcapi", "_testinternalcapi",
                            "_xxsubinterpreters", "cffi"})
# events that change the file system: every path argument must lie in the work dir
WRITE_EVENTS = frozenset({
    "os.mkdir", "os.remove", "os.rmdir", "os.rename", "os.truncate", "os.chmod", "os.chown", "os.utime",
    "os.mkfifo", "os.mknod", "os.setxattr", "os.removexattr", "shutil.copyfile", "shutil.copymode",
    "shutil.copystat", "shutil.copytree", "shutil.move", "shutil.rmtree", "shutil.chown",
})
READ_EVENTS = frozenset({"os.listdir", "os.scandir", "os.chdir", "os.listxattr", "os.getxattr"})
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC


def main() -> None:
    params = json.loads(sys.argv[1])
    code = sys.stdin.buffer.read().decode("utf-8", "replace")
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)  # the snippet gets an empty stdin, not the pipe or file its source came from
    os.close(devnull)
    set_limits(params)
    os.chdir(params["workdir"])
    if params["audit_hook"]:
        roots = tuple(os.path.realpath(p) for p in sys.path if os.path.isdir(p))
        sys.addaudithook(make_hook(os.path.realpath(params["workdir"]), roots))
    run_snippet(code)


def set_limits(params: dict) -> None:
    """Lower this process's rlimits; children inherit them."""
    limits = {
        resource.RLIMIT_CPU: (params["cpu_s"], params["cpu_s"] + 1),  # soft: SIGXCPU; hard: SIGKILL
        resource.RLIMIT_AS: (params["memory_mb"] * _MB,) * 2,
        resource.RLIMIT_NPROC: (params["max_processes"],) * 2,
        resource.RLIMIT_FSIZE: (params["max_file_mb"] * _MB,) * 2,
        resource.RLIMIT_NOFILE: (params["max_open_files"],) * 2,
        resource.RLIMIT_CORE: (0, 0),
    }
    for which, (soft, hard) in limits.items():
        current_hard = resource.getrlimit(which)[1]
        if current_hard != resource.RLIM_INFINITY:  # never ask for more than we have (that fails)
            soft, hard = min(soft, current_hard), min(hard, current_hard)
        resource.setrlimit(which, (soft, hard))


def make_hook(workdir: str, read_roots: tuple[str, ...]):
    """The audit hook: reads in ``workdir`` or ``read_roots`` (the stdlib), writes in ``workdir`` only."""
    realpath, fsdecode, readable = os.path.realpath, os.fsdecode, (workdir, *read_roots)

    def inside(path, roots) -> bool:
        if path is None or isinstance(path, int):  # an fd: it was opened through this hook
            return True
        resolved = realpath(fsdecode(path))  # symlinks and .. resolved before the check
        return any(resolved == root or resolved.startswith(root.rstrip("/") + "/") for root in roots)

    def hook(event: str, args: tuple) -> None:
        if event in DENIED_EVENTS or event.startswith(DENIED_PREFIXES):
            raise PermissionError(f"sandbox: {event} is not allowed (no processes, signals or network)")
        if event == "import" and args[0].partition(".")[0] in DENIED_MODULES:
            raise PermissionError(f"sandbox: importing {args[0]} is not allowed")
        if event == "open":
            path, mode, flags = args
            writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or bool((flags or 0) & _WRITE_FLAGS)
            if not inside(path, (workdir,) if writes else readable):
                raise PermissionError(f"sandbox: {'writing' if writes else 'reading'} {path!r} is not allowed; "
                                      f"only files in the work dir {workdir}")
        elif event in WRITE_EVENTS or event in READ_EVENTS:
            roots = (workdir,) if event in WRITE_EVENTS else readable
            for arg in args:
                if isinstance(arg, (str, bytes, os.PathLike)) and not inside(arg, roots):
                    raise PermissionError(f"sandbox: {event} on {arg!r} is not allowed outside the work dir {workdir}")

    return hook


def run_snippet(code: str) -> None:
    """Run ``code`` as ``__main__``; an uncaught exception prints the snippet's own traceback and exits 1."""
    linecache.cache["<snippet>"] = (len(code), None, code.splitlines(True), "<snippet>")
    module = types.ModuleType("__main__")
    sys.modules["__main__"] = module
    try:
        exec(compile(code, "<snippet>", "exec"), module.__dict__)
    except SystemExit:
        raise
    except BaseException as exc:  # noqa: BLE001 -- reported to the caller as the snippet's traceback
        skip_runner = exc.__traceback__.tb_next if exc.__traceback__ is not None else None
        traceback.print_exception(type(exc), exc, skip_runner)
        sys.exit(1)


if __name__ == "__main__":
    main()
