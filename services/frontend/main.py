"""Launch the Gradio chat page on its own process (beside the Ray Serve graph, talking to it over Redis).

    python -m services.frontend.main --port 7860
    python -m services.frontend.main --host 0.0.0.0 redis_url=redis://redis:6379/0 runs_dir=/runs timeout_s=120
    JOURNEY_FRONTEND_USER=me JOURNEY_FRONTEND_PASSWORD=secret python -m services.frontend.main   (with a login page)
    JOURNEY_API_KEY=... python -m services.frontend.main   (the page and its API want the stack's key)

Options are ``FrontendConfig`` fields as ``key=value`` (``--help`` lists them), optionally on top of a
YAML file (``--config frontend.yaml``). The page starts even when Redis is down (each message then
shows the bus error), so the start order of a compose stack does not matter.
"""
from __future__ import annotations

import argparse
import logging
import sys

import gradio as gr

from services.frontend.frontend_config import FrontendConfig, env_defaults
from services.frontend.ui import build_ui
from shared.bus.streams import Bus, BusError
from shared.config import ConfigError, describe, load_config

log = logging.getLogger(__name__)


def parse_args(argv: list[str] | None = None) -> FrontendConfig:
    """``FrontendConfig`` from YAML < environment (login) < ``--host/--port`` < ``key=value``; exits 2 on errors."""
    parser = argparse.ArgumentParser(prog="python -m services.frontend.main", description=__doc__.splitlines()[0],
                                     epilog="config keys:\n" + describe(FrontendConfig),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=None, help="YAML file of FrontendConfig keys")
    parser.add_argument("--host", default=None, help="interface to listen on (same as host=...)")
    parser.add_argument("--port", type=int, default=None, help="HTTP port (same as port=...)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides")
    args = parser.parse_args(argv)
    base = env_defaults() | {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    try:
        return load_config(FrontendConfig, "frontend", args.config, args.overrides, base=base)
    except ConfigError as exc:
        parser.error(str(exc))


def serve(cfg: FrontendConfig, *, block: bool = True) -> gr.Blocks:
    """Build the page for ``cfg`` and launch it; ``block=False`` returns at once (call ``.close()`` later)."""
    bus = Bus(cfg.redis_url, prefix=cfg.bus_prefix)
    try:
        bus.ping()
    except BusError as exc:
        log.warning("%s. The page starts anyway; each message shows this error until Redis is up", exc)
    login = "the API key" if cfg.api_key else "on" if cfg.auth else "off"
    log.info("chat page on http://%s:%d (bus %s, artifacts %s, login %s)", cfg.host, cfg.port, bus.url,
             cfg.runs_dir or "$JOURNEY_RUNS or ./runs", login)
    demo = build_ui(bus, cfg.runs_dir, timeout_s=cfg.timeout_s, max_tokens_limit=cfg.max_tokens_limit,
                    concurrency_limit=cfg.concurrency_limit, title=cfg.title)
    demo.launch(server_name=cfg.host, server_port=cfg.port, auth=cfg.auth, auth_message=cfg.auth_message,
                prevent_thread_lock=not block, show_error=True, quiet=not block)
    return demo


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    serve(parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
