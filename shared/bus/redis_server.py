"""Run a real ``redis-server`` as a child process: for tests, chaos tests and ``journey up``.

``RedisServer(data_dir, port)`` starts one bound to 127.0.0.1 with its data (AOF, log) in ``data_dir``,
append-only persistence on (``appendfsync`` configurable: ``always`` makes every acked write durable,
``everysec`` risks the last second) and RDB snapshots off. ``start`` returns once the server answers
PING; ``kill`` is a SIGKILL (a crash), ``stop`` a clean shutdown; ``start`` again on the same directory
replays the AOF. It does not daemonize or manage a server it did not start.

``supervise(server, stop)`` keeps one running until ``stop`` is set: a server that dies (a crash, the
OOM killer, a stray ``kill``) is started again on the same directory, replaying its AOF, so what it
had acknowledged (up to the ``appendfsync`` window) is back. ``journey up`` runs it as a background
process (``--supervise``); SIGTERM or Ctrl-C stops the server cleanly, then the supervisor.

    python -m shared.bus.redis_server [--port 6379] [--dir runs/redis] [--appendfsync everysec] [--supervise]
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Literal

import redis

from shared.bus.streams import BusError

Fsync = Literal["always", "everysec", "no"]
log = logging.getLogger(__name__)
INSTALL_HINT = ("install it with `scripts/system_deps.sh redis-server:redis-server` (as root) or `sudo apt-get install "
                "redis-server` (macOS: `brew install redis`), or point REDIS_URL at a running Redis")


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def redis_server_binary() -> str:
    """The path of ``redis-server``; ``BusError`` saying how to get one when it is not on PATH."""
    path = shutil.which("redis-server")
    if path is None:
        raise BusError(f"redis-server is not on PATH: {INSTALL_HINT}")
    return path


class RedisServer:
    """A ``redis-server`` child process on ``127.0.0.1:port`` keeping its data in ``data_dir``."""

    def __init__(self, data_dir: str | Path, port: int | None = None, *, appendfsync: Fsync = "everysec",
                 appendonly: bool = True, extra_args: tuple[str, ...] = ()):
        if appendfsync not in ("always", "everysec", "no"):
            raise ValueError(f"appendfsync must be always, everysec or no; got {appendfsync!r}")
        self.data_dir = Path(data_dir).resolve()
        self.port = port or free_port()
        self.appendfsync, self.appendonly, self.extra_args = appendfsync, appendonly, tuple(extra_args)
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "redis.log"

    def command(self) -> list[str]:
        return [redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.data_dir),
                "--appendonly", "yes" if self.appendonly else "no", "--appendfsync", self.appendfsync,
                "--save", "", "--daemonize", "no", "--logfile", str(self.log_path), *self.extra_args]

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout_s: float = 10.0) -> RedisServer:
        """Start the server and wait until it answers PING (replaying the AOF of ``data_dir`` if any)."""
        if self.running():
            return self
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                        start_new_session=True)  # a Ctrl-C on the parent does not hit it first
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        deadline = time.monotonic() + timeout_s
        try:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise BusError(f"redis-server exited with code {self.process.returncode} on port {self.port}: "
                                   f"{self._tail()} (port taken? pick another, or stop what holds it)")
                # ours (another server on this port would answer too) and done loading the AOF (INFO
                # answers while loading, PING raises BusyLoadingError)
                try:
                    if client.info("server")["process_id"] == self.process.pid and client.ping():
                        return self
                except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
                    time.sleep(0.02)
        finally:
            client.close()
        self.kill()
        raise BusError(f"redis-server on port {self.port} did not answer PING within {timeout_s} s: {self._tail()}")

    def _tail(self, lines: int = 5) -> str:
        stderr = ""
        if self.process is not None and self.process.poll() is not None and self.process.stderr:
            stderr = self.process.stderr.read().decode(errors="replace").strip()
        log = self.log_path.read_text(errors="replace").splitlines()[-lines:] if self.log_path.exists() else []
        return " | ".join([stderr, *log]).strip(" |") or "no output"

    def kill(self) -> None:
        """SIGKILL: a crash, no shutdown work (what the AOF holds is what survives)."""
        self._end(signal.SIGKILL, timeout_s=10)

    def stop(self, timeout_s: float = 10.0) -> None:
        """A clean shutdown (SIGTERM, which flushes the AOF); SIGKILL if it takes longer than ``timeout_s``."""
        self._end(signal.SIGTERM, timeout_s)

    def _end(self, sig: int, timeout_s: float) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stderr:
            self.process.stderr.close()
        self.process = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def supervise(server: RedisServer, stop: threading.Event, *, poll_s: float = 0.2,
              on_start=None) -> int:
    """Run ``server`` until ``stop`` is set, starting it again whenever it dies; then stop it cleanly.

    Returns how many times it was restarted. A restart that fails (the port taken meanwhile, a broken
    AOF) is retried with backoff (up to 10 s apart) and logged with redis-server's own output.
    ``on_start(server)`` runs after each (re)start (``journey up`` records the pid).
    """
    restarts, delay = 0, 0.5
    while not stop.is_set():
        if not server.running():
            if server.process is not None:
                code = server.process.returncode
                server.stop()  # reaps it and closes its pipe
                restarts += 1
                log.warning("redis-server on port %d exited (code %s); restarting it on %s (replaying the AOF)",
                            server.port, code, server.data_dir)
            try:
                server.start()
            except BusError as exc:
                log.error("restarting redis-server failed: %s; next try in %.1f s", exc, delay)
                stop.wait(delay)
                delay = min(delay * 2, 10.0)
                continue
            delay = 0.5
            if on_start is not None:
                on_start(server)
        stop.wait(poll_s)
    server.stop()
    return restarts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run redis-server in the foreground for the GPT Journey bus.")
    parser.add_argument("--port", type=int, default=6379)
    parser.add_argument("--dir", default=os.path.join("runs", "redis"), help="data directory (AOF, log)")
    parser.add_argument("--appendfsync", default="everysec", choices=["always", "everysec", "no"])
    parser.add_argument("--supervise", action="store_true", help="restart redis-server whenever it dies")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        server = RedisServer(args.dir, args.port, appendfsync=args.appendfsync)
        server.command()  # redis-server missing: one line saying how to get it, no traceback
    except BusError as exc:
        raise SystemExit(f"error: {exc}") from None
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print(f"redis-server at {server.url} (data in {server.data_dir}); Ctrl-C stops it", flush=True)
    try:
        if args.supervise:
            supervise(server, stop)
        else:
            server.start()
            while server.running() and not stop.is_set():
                stop.wait(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    main()
