"""``journey up`` / ``journey down`` / ``journey chat``: the whole serving stack on this machine.

    journey up                          # Redis, Ray, the Serve app (gateway, generator, retriever, tools), web chat
    journey up run=tiny6 model=tiny6/dpo port=8000 ui_port=7860 tools=[calculator,search_docs,python]
    journey up --help                   # every setting, its default and what it means
    journey chat                        # a terminal client of the same gateway, over the bus
    journey down                        # stop what `journey up` started; returns when all of it is gone

``up`` starts, in order: Redis (``redis_url=`` / ``$REDIS_URL`` if given and reachable, else a
``redis-server`` from PATH with its AOF under ``<runs>/_stack/redis``, run by a supervisor process
that restarts it whenever it dies, AOF replayed; a one-line error naming the install command when
neither exists), a Ray head (``ray start --head``, unless ``$RAY_ADDRESS`` points at a cluster), the
Serve application of ``services.app`` (HTTP on ``port``: the OpenAI-compatible API at ``/v1``), and the
Gradio frontend on ``ui_port`` as a background process. What it started is written to
``<runs>/_stack/state.json`` so ``down`` stops exactly that (and nothing it found already running):
each process and everything it started (the Ray head's agents and workers included), SIGKILL for
what ignores SIGTERM for ``timeout_s``, and it returns only when they are gone. Errors a user can fix
are one line (exit 1), Ctrl-C is exit 130, never a traceback.
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

from shared.bus import Bus, BusError
from shared.bus.redis_server import redis_server_binary
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
    tools: list = help_field(["calculator", "search_docs"], "server-side tools chat and /v1/tools/call may run; "
                             "tools=[calculator,search_docs,python] enables the sandboxed python tool")
    tool_timeout_s: float = help_field(30.0, "how long a tool call may take before the model is told it timed out")
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
    return _start_supervised_redis(cfg, stack_dir, state)


SUPERVISOR = "import sys; from shared.bus.redis_server import main; main(sys.argv[1:])"


def _start_supervised_redis(cfg: UpConfig, stack_dir: Path, state: dict) -> str:
    """redis-server under ``shared.bus.redis_server --supervise`` (a background process of its own): restarted,
    AOF replayed, whenever it dies, until ``down``."""
    redis_server_binary()  # not on PATH: a BusError naming the install command, before anything starts
    data_dir, url = stack_dir / "redis", f"redis://127.0.0.1:{cfg.redis_port}/0"
    log_path = stack_dir / "redis-supervisor.log"
    with open(log_path, "ab") as log:
        # -c, not -m: runpy warns that shared.bus already imported the module (a RuntimeWarning in the log)
        proc = subprocess.Popen([sys.executable, "-c", SUPERVISOR, "--supervise", "--port",
                                 str(cfg.redis_port), "--dir", str(data_dir)], stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=Path(__file__).resolve().parents[1])
    state["redis_supervisor_pid"] = proc.pid
    deadline = time.monotonic() + min(cfg.timeout_s, 60)
    while True:
        if proc.poll() is not None:
            tail = " | ".join(log_path.read_text(errors="replace").strip().splitlines()[-3:])
            raise BusError(f"redis-server did not start on port {cfg.redis_port} (supervisor exited with code "
                           f"{proc.returncode}): {tail}")
        try:
            Bus(url).ping()
            break
        except BusError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    print(f"started redis-server, supervised: restarted if it dies (port {cfg.redis_port}, AOF in {data_dir}, "
          f"log {log_path})")
    return url


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
    # The web chat reads its key from the environment: a key given as `api_key=` locks it too (one door, one key).
    env = {**os.environ, **({"JOURNEY_API_KEY": cfg.api_key} if cfg.api_key else {})}
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            cwd=Path(__file__).resolve().parents[1], env=env)
    state["frontend_pid"] = proc.pid
    _wait_http(f"http://127.0.0.1:{cfg.ui_port}/", cfg.timeout_s, "the web chat")


def exposure_warning(host: str, api_key: str | None) -> str | None:
    """The warning ``up`` prints when it listens beyond this machine with no key (anyone who can reach it may use
    the model, the tools and the web chat); None when the bind is loopback-only or a key is set."""
    import ipaddress
    if api_key or host == "localhost":
        return None
    try:
        if ipaddress.ip_address(host).is_loopback:
            return None
    except ValueError:  # a host name: it may resolve to anything, so it is not assumed local
        pass
    return (f"warning: listening on {host} without an API key: anyone who can reach this machine can use the API, "
            f"its tools and the web chat. Set JOURNEY_API_KEY (or api_key=...), or use host=127.0.0.1")


def up(cfg: UpConfig) -> dict:
    """Start the stack (see the module docstring); returns the state written for ``down``."""
    from ray import serve

    from services.app import build_app  # the Serve graph pulls in every deployment (torch, the engine): only for `up`
    runs_root = Registry(cfg.runs_dir).root.resolve()
    stack_dir = runs_root / "_stack"
    stack_dir.mkdir(parents=True, exist_ok=True)
    state: dict = {"started_at": time.time(), "runs_dir": str(runs_root)}
    warning = exposure_warning(cfg.host, cfg.api_key or os.environ.get("JOURNEY_API_KEY"))
    if warning:
        print(warning, file=sys.stderr)
    try:
        state["redis_url"] = redis_url = _start_redis(cfg, stack_dir, state)
        _start_ray(cfg, state)
        import ray
        state["ray_address"] = ray.get_runtime_context().gcs_address  # where `down` removes the Serve app
        serve.start(http_options={"host": cfg.host, "port": cfg.port})
        gateway = {"default_tools": list(cfg.tools), "tool_timeout_s": cfg.tool_timeout_s}
        if cfg.api_key:
            gateway["api_key"] = cfg.api_key
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


def _proc_table() -> dict[int, tuple[int, list[str]]]:
    """pid -> (parent pid, command line) of every process we can read."""
    table = {}
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            args = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):  # gone meanwhile, or not ours to read
            continue
        table[int(proc.name)] = (ppid, args)
    return table


def descendants(roots: list[int], table: dict[int, tuple[int, list[str]]] | None = None) -> list[int]:
    """Every process below ``roots`` (children, their children, ...), ``roots`` excluded."""
    table = _proc_table() if table is None else table
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    out, todo = [], list(roots)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in out and child not in roots:
                out.append(child)
                todo.append(child)
    return out


def ray_head_pids(port: int) -> list[int]:
    """PIDs of the Ray head whose GCS listens on ``port`` and of everything it runs.

    The head's own processes name the port on their command line (the GCS server ``--gcs_server_port=P``;
    the raylet, dashboard and monitors ``--gcs-address=HOST:P``; the Ray client server ``--address=HOST:P``).
    The raylet's children (the dashboard and runtime-env agents, which rename themselves ``ray::...``,
    and the workers) are found as its descendants: left out, the agents outlived ``journey down`` by a
    minute or two."""
    table = _proc_table()

    def names_port(args: list[str]) -> bool:
        client_server = "ray.util.client.server" in args
        return any(a == f"--gcs_server_port={port}" or (a.startswith("--gcs-address=") and a.endswith(f":{port}"))
                   or (client_server and a.startswith("--address=") and a.endswith(f":{port}")) for a in args)

    head = [pid for pid, (_, args) in table.items() if names_port(args)]
    return head + descendants(head, table)


def terminate(pids: list[int], what: str, timeout_s: float = 20.0, first: list[int] | None = None) -> list[int]:
    """SIGTERM ``pids`` (only ``first`` of them when given: a supervisor that stops its children itself),
    wait up to ``timeout_s`` for every one to be gone, SIGKILL the rest and wait for those too (10 s more
    at most); returns the ones still alive after that, having said so."""
    for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 10.0)):
        for pid in alive(first if first is not None and sig == signal.SIGTERM else pids):
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + wait_s
        while alive(pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        if not alive(pids):
            return []
        if sig == signal.SIGTERM:
            print(f"{what}: {len(alive(pids))} process(es) still running {timeout_s:g} s after SIGTERM; sending SIGKILL")
    left = alive(pids)
    print(f"{what}: process(es) {left} still running after SIGKILL (not ours to kill? check `ps -p "
          f"{','.join(map(str, left))}`)")
    return left


def alive(pids: list[int]) -> list[int]:
    """Those of ``pids`` that still run (a zombie waiting for its parent to reap it counts as gone)."""
    return [pid for pid in pids if Path(f"/proc/{pid}").exists() and not _zombie(pid)]


def stop_ray_head(port: int, timeout_s: float = 10.0) -> int:
    """Stop the Ray head on ``port`` and nothing else, returning once all its processes are gone (SIGKILL
    after ``timeout_s``); returns how many processes that was.

    Why not ``ray stop``: it stops every Ray cluster started on this machine, including ones the user
    runs beside the stack. The whole head is signalled at once (raylet, agents, workers): agents and
    workers left to notice their raylet is gone took a minute or two.
    """
    pids = ray_head_pids(port)
    terminate(pids, f"the Ray head on port {port}", timeout_s)
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


def _stop_session(pid: int | None, what: str, timeout_s: float = 20.0, root_only: bool = False) -> None:
    """Stop a process ``up`` started in a session of its own and everything it started (SIGTERM to all,
    or to ``pid`` alone with ``root_only``), and wait until every one of them is gone."""
    if not pid or not alive([pid]):
        return
    table = _proc_table()
    family = [pid] + descendants([pid], table)
    family += [p for p in table if p not in family and _pgid(p) == pid]  # its group, reparented or not
    left = terminate(family, what, timeout_s, first=[pid] if root_only else None)
    print(f"stopped {what} (pid {pid})" if not left else f"{what} (pid {pid}) did not stop completely")


def _pgid(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[2])
    except (OSError, ValueError, IndexError):
        return None


def down(runs_dir: str | None = None, timeout_s: float = 20.0) -> None:
    """Stop what ``up`` started, newest first, and return once every process of it is gone (each part gets
    ``timeout_s`` after SIGTERM, then SIGKILL); a stack that is not up is not an error."""
    path = _state_path(Registry(runs_dir).root.resolve())
    if not path.exists():
        print(f"no stack state at {path}: nothing to stop")
        return
    state = json.loads(path.read_text())
    _stop_session(state.get("frontend_pid"), "the web chat", timeout_s)
    if state.get("ray_address") or state.get("gateway_url"):  # Serve was (maybe) deployed: remove it
        try:
            import ray
            from ray import serve
            # "auto", not the recorded address: `ray start` left this machine's pointer (and its auth token) to
            # the head it started; the recorded address makes sure it is still the one `up` deployed to
            ray.init(address="auto", logging_level="ERROR")
            found = ray.get_runtime_context().gcs_address
            if state.get("ray_address") not in (None, found):
                print(f"Serve app not removed: the Ray cluster here is {found}, not {state['ray_address']} "
                      "where `up` deployed it (gone already?)")
            else:
                serve.delete(APP_NAME)
                serve.shutdown()
            ray.shutdown()
        except Exception as exc:  # noqa: BLE001 - Ray may be gone already; say so and go on
            print(f"Serve app not removed ({type(exc).__name__}: {exc})")
    if state.get("ray_started"):
        port = state.get("ray_port", UpConfig.ray_port)
        print(f"stopped the Ray head on port {port} ({stop_ray_head(port, min(timeout_s, 10.0))} processes)")
    # the supervisor stops its redis-server cleanly (SIGTERM: the AOF is flushed) before it exits itself;
    # redis_pid: a state file of an older `up`, which ran redis-server unsupervised
    _stop_session(state.get("redis_supervisor_pid"), "redis-server and its supervisor", timeout_s, root_only=True)
    _stop_session(state.get("redis_pid"), "redis-server", timeout_s)
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


HELP = {
    "up": "journey up [key=value ...]: start Redis (supervised), Ray, the Serve app and the web chat.\n\n"
          "Settings (key=value; lists as [a,b]):",
    "down": "journey down [runs_dir=DIR] [timeout_s=20]: stop what `journey up` started and wait until every "
            "process is gone (SIGKILL for what ignores SIGTERM for timeout_s).",
    "chat": "journey chat [redis_url=URL] [model=ARTIFACT] [timeout_s=120]: a terminal chat with the running "
            "gateway over the bus; /quit, Ctrl-D or Ctrl-C to leave.",
}


def usage(command: str) -> str:
    """``journey <command> --help``: what it does and, for ``up``, every setting with its default and meaning."""
    from shared.config import describe
    text = HELP.get(command, __doc__)
    return text + ("\n" + describe(UpConfig) if command == "up" else "")


def main(argv: list[str]) -> int:
    """``journey up|down|chat``: an error a user can fix is one line (exit 1), Ctrl-C exits 130, no traceback."""
    from shared.config import ConfigError
    command, rest = argv[0], argv[1:]
    if any(a in ("-h", "--help") for a in rest):
        print(usage(command))
        return 0
    try:
        return _run(command, rest)
    except KeyboardInterrupt:
        print("\ninterrupted" + ("; `journey down` stops what was started" if command == "up" else ""),
              file=sys.stderr)
        return 130
    except (BusError, ConfigError) as exc:  # what the user can fix, and the message says how
        print(f"journey {command}: {exc}", file=sys.stderr)
        return 1
    except (RuntimeError, subprocess.CalledProcessError) as exc:  # a part did not come up: its log says why
        hint = "; `journey down` stops what was started (logs under <runs>/_stack)" if command == "up" else ""
        print(f"journey {command}: {exc}{hint}", file=sys.stderr)
        return 1


def _run(command: str, rest: list[str]) -> int:
    if command == "chat":
        return chat(rest)
    if command == "down":
        opts = parse_overrides(rest)
        down(opts.get("runs_dir"), float(opts.get("timeout_s", 20.0)))
        return 0
    overrides = parse_overrides(rest)
    if isinstance(overrides.get("rag"), bool):  # YAML reads rag=false as a bool; the setting is auto|true|false
        overrides["rag"] = str(overrides["rag"]).lower()
    cfg = load_config(UpConfig, "up", None, base=overrides)
    state = up(cfg)
    print(f"gateway (OpenAI API): {state['gateway_url']}")
    if "ui_url" in state:
        print(f"web chat:             {state['ui_url']}")
    print("stop with `journey down`")
    return 0


__all__ = ["UpConfig", "up", "down", "chat", "main"]
