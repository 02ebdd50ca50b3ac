"""``journey up`` / ``journey down`` / ``journey chat``: the whole serving stack on this machine.

    journey up                          # Redis, Ray, the Serve app (gateway, generator, retriever, tools), web chat
    journey up run=tiny6 model=tiny6/dpo port=8000 ui_port=7860
    journey chat                        # a terminal client of the same gateway, over the bus
    journey down                        # stop what `journey up` started

``up`` starts, in order: Redis (``redis_url=`` / ``$REDIS_URL`` if given and reachable, else a
``redis-server`` from PATH with its AOF under ``<runs>/_stack/redis``; a clear error when neither
exists), a Ray head (``ray start --head``, unless ``$RAY_ADDRESS`` points at a cluster), the Serve
application of ``services.app`` (HTTP on ``port``: the OpenAI-compatible API at ``/v1``), and the
Gradio frontend on ``ui_port`` as a background process. What it started is written to
``<runs>/_stack/state.json`` so ``down`` stops exactly that (and nothing it found already running).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from shared.bus import Bus, BusError, RedisServer
from shared.bus.chat_client import make_request, stream_chat
from shared.config import help_field, load_config, parse_overrides
from shared.registry import Registry

APP_NAME = "journey"


@dataclass
class UpConfig:
    run: Optional[str] = help_field(None, "run whose final model (and index) to serve; default: the newest run")
    model: Optional[str] = help_field(None, "artifact to serve by default, e.g. tiny6/dpo; default: the run's final model")
    runs_dir: Optional[str] = help_field(None, "artifact root (default $JOURNEY_RUNS or ./runs)")
    redis_url: Optional[str] = help_field(None, "use this Redis instead of starting one (default $REDIS_URL)")
    redis_port: int = help_field(6379, "port of the redis-server `up` starts")
    ray_port: int = help_field(6380, "GCS port of the Ray head `up` starts (Ray's default, 6379, is Redis's)")
    host: str = help_field("127.0.0.1", "interface the gateway and the web chat listen on (0.0.0.0: all)")
    port: int = help_field(8000, "gateway HTTP port (OpenAI-compatible API under /v1)")
    ui_port: int = help_field(7860, "web chat port")
    ui: bool = help_field(True, "start the Gradio web chat")
    rag: str = help_field("auto", "retrieval: auto (when the run has an index), true, false")
    num_cpus: Optional[int] = help_field(None, "CPUs for the Ray head it starts (default: all)")
    api_key: Optional[str] = help_field(None, "require this bearer key on the API (default $JOURNEY_API_KEY; none: open)")
    timeout_s: float = help_field(180.0, "how long to wait for each part to come up")


def _state_path(runs_root: Path) -> Path:
    return runs_root / "_stack" / "state.json"


def _wait_http(url: str, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status < 500:
                    return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"{what} did not answer at {url} within {timeout_s:.0f} s; see the logs under runs/_stack")


def _start_redis(cfg: UpConfig, stack_dir: Path, state: dict) -> str:
    url = cfg.redis_url or os.environ.get("REDIS_URL")
    if url:
        Bus(url).ping()  # BusError names the URL and the fix
        return url
    try:
        Bus(f"redis://127.0.0.1:{cfg.redis_port}/0").ping()
        print(f"using the Redis already running on port {cfg.redis_port}")
        return f"redis://127.0.0.1:{cfg.redis_port}/0"
    except BusError:
        pass
    server = RedisServer(stack_dir / "redis", cfg.redis_port).start()
    state["redis_pid"] = server.process.pid
    print(f"started redis-server (pid {server.process.pid}, AOF in {stack_dir / 'redis'})")
    return server.url


def _start_ray(cfg: UpConfig, state: dict) -> None:
    import ray
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], logging_level="WARNING")
        return
    try:
        ray.init(address="auto", logging_level="WARNING")
        print("using the Ray cluster already running on this machine")
        return
    except (ConnectionError, RuntimeError):
        pass
    cmd = [str(Path(sys.executable).parent / "ray"), "start", "--head", "--disable-usage-stats",
           "--port", str(cfg.ray_port)]
    if cfg.num_cpus:
        cmd += ["--num-cpus", str(cfg.num_cpus)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    state["ray_started"], state["ray_port"] = True, cfg.ray_port
    ray.init(address="auto", logging_level="WARNING")
    print("started a Ray head (`ray status` to inspect)")


def _start_frontend(cfg: UpConfig, redis_url: str, runs_root: Path, stack_dir: Path, state: dict) -> None:
    log = open(stack_dir / "frontend.log", "ab")
    cmd = [sys.executable, "-m", "services.frontend.main", "--host", cfg.host, "--port", str(cfg.ui_port),
           f"redis_url={redis_url}", f"runs_dir={runs_root}"]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            cwd=Path(__file__).resolve().parents[1])
    state["frontend_pid"] = proc.pid
    _wait_http(f"http://127.0.0.1:{cfg.ui_port}/", cfg.timeout_s, "the web chat")


def up(cfg: UpConfig) -> dict:
    """Start the stack (see the module docstring); returns the state written for ``down``."""
    from ray import serve

    from services.app import build_app  # the Serve graph pulls in every deployment (torch, the engine): only for `up`
    runs_root = Registry(cfg.runs_dir).root.resolve()
    stack_dir = runs_root / "_stack"
    stack_dir.mkdir(parents=True, exist_ok=True)
    state: dict = {"started_at": time.time(), "runs_dir": str(runs_root)}
    try:
        state["redis_url"] = redis_url = _start_redis(cfg, stack_dir, state)
        _start_ray(cfg, state)
        serve.start(http_options={"host": cfg.host, "port": cfg.port})
        gateway = {"api_key": cfg.api_key} if cfg.api_key else {}
        app = build_app({"model": cfg.model, "run": cfg.run, "runs_dir": str(runs_root), "redis_url": redis_url,
                         "rag": cfg.rag, "gateway": gateway})
        serve.run(app, name=APP_NAME, route_prefix="/")
        state["gateway_url"] = f"http://{cfg.host}:{cfg.port}/v1"
        _wait_http(f"http://127.0.0.1:{cfg.port}/healthz", cfg.timeout_s, "the gateway")
        if cfg.ui:
            _start_frontend(cfg, redis_url, runs_root, stack_dir, state)
            state["ui_url"] = f"http://{cfg.host}:{cfg.ui_port}"
    finally:
        _state_path(runs_root).write_text(json.dumps(state, indent=2))
    return state


def ray_head_pids(port: int) -> list[int]:
    """PIDs of the Ray head whose GCS listens on ``port``: the GCS server, the raylet, the dashboard and
    the monitors, each of which names the port on its command line (``--gcs_server_port=P`` or
    ``--gcs-address=HOST:P``). Workers are the raylet's children and exit with it."""
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            args = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if any(a == f"--gcs_server_port={port}" or (a.startswith("--gcs-address=") and a.endswith(f":{port}"))
               for a in args):
            pids.append(int(proc.name))
    return pids


def stop_ray_head(port: int, timeout_s: float = 20.0) -> int:
    """Stop the Ray head on ``port`` and nothing else; returns how many processes were signalled.

    Why not ``ray stop``: it stops every Ray cluster started on this machine, including ones the user
    runs beside the stack. SIGTERM first (the raylet then ends its workers), SIGKILL what is left.
    """
    pids = ray_head_pids(port)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() and not _zombie(pid) for pid in pids):
            time.sleep(0.2)
    # `ray start` recorded this head as the machine's current cluster, where a later plain ray.init()
    # looks first: left behind, it would send that call to a dead address (`ray stop` clears it too).
    from ray._private.utils import read_ray_address
    from ray._common.utils import reset_ray_address
    if (read_ray_address() or "").endswith(f":{port}"):
        reset_ray_address()
    return len(pids)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


def _kill(pid: int | None, what: str) -> None:
    if not pid:
        return
    try:
        os.killpg(pid, signal.SIGTERM)  # its own session: the process and anything it started
        print(f"stopped {what} (pid {pid})")
    except ProcessLookupError:
        pass


def down(runs_dir: str | None = None) -> None:
    """Stop what ``up`` started, newest first; a stack that is not up is not an error."""
    path = _state_path(Registry(runs_dir).root.resolve())
    if not path.exists():
        print(f"no stack state at {path}: nothing to stop")
        return
    state = json.loads(path.read_text())
    _kill(state.get("frontend_pid"), "the web chat")
    try:
        import ray
        from ray import serve
        ray.init(address="auto", logging_level="ERROR")
        serve.delete(APP_NAME)
        serve.shutdown()
        ray.shutdown()
    except Exception as exc:  # noqa: BLE001 - Ray may be gone already; say so and go on
        print(f"Serve app not removed ({type(exc).__name__}: {exc})")
    if state.get("ray_started"):
        port = state.get("ray_port", UpConfig.ray_port)
        print(f"stopped the Ray head on port {port} ({stop_ray_head(port)} processes)")
    _kill(state.get("redis_pid"), "redis-server")
    path.unlink()


def chat(argv: list[str]) -> int:
    """A terminal chat over the bus; ``redis_url=`` and ``model=`` as overrides, ``/quit`` to leave."""
    opts = parse_overrides(argv)
    bus = Bus(opts.get("redis_url"))
    bus.ping()
    conversation = uuid.uuid4().hex
    print("GPT Journey chat: type a message, /quit to leave")
    while True:
        try:
            text = input("you> ").strip()
        except EOFError:
            return 0
        if text in ("/quit", "/exit"):
            return 0
        if not text:
            continue
        request = make_request(bus, text, conversation_id=conversation, model=opts.get("model"))
        print("model> ", end="", flush=True)
        for event in stream_chat(bus, request, timeout_s=float(opts.get("timeout_s", 120))):
            if event.kind == "token":
                print(event.text, end="", flush=True)
            elif event.kind == "sources":
                print(f"[{len(event.data.get('sources', []))} sources] ", end="", flush=True)
            elif event.kind == "tool_call":
                print(f"[{event.data.get('name')}({json.dumps(event.data.get('arguments'))})", end="", flush=True)
            elif event.kind == "tool_result":
                print(f" -> {event.data.get('output') or event.data.get('error')}] ", end="", flush=True)
            elif event.kind == "error":
                print(f"\nerror: {event.text}")
        print()


def main(argv: list[str]) -> int:
    command, rest = argv[0], argv[1:]
    if rest and rest[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    if command == "chat":
        return chat(rest)
    if command == "down":
        down(parse_overrides(rest).get("runs_dir"))
        return 0
    cfg = load_config(UpConfig, "up", None, base=parse_overrides(rest))
    state = up(cfg)
    print(f"gateway (OpenAI API): {state['gateway_url']}")
    if "ui_url" in state:
        print(f"web chat:             {state['ui_url']}")
    print("stop with `journey down`")
    return 0


__all__ = ["UpConfig", "up", "down", "chat", "main"]
