"""A bus consumer process for the chaos tests: applies each ToolRequest exactly once and can freeze on one.

    python tests/chaos/bus_worker.py URL NAME --trap N --claim-idle-ms MS

Its effect, in one transaction through ``Consumer.once``: ``HINCRBY chaos:applied <n> 1`` and
``INCR chaos:total``. With ``--trap N`` it freezes right after applying message ``n == N``, before
the ack, and sets ``chaos:trapped`` in the same transaction, so the test knows when to SIGKILL it.
SIGTERM stops it cleanly.
"""
from __future__ import annotations

import argparse
import signal
import threading
import time

from shared.bus import TOOL_REQUESTS, Bus, Consumer

GROUP = "chaos"


def effect_keys(bus: Bus) -> tuple[str, str, str]:
    return bus.key("chaos:applied"), bus.key("chaos:total"), bus.key("chaos:trapped")


def make_consumer(bus: Bus, name: str, trap: int = -1, claim_idle_ms: int = 60_000) -> Consumer:
    applied, total, trapped = effect_keys(bus)

    def handler(message):
        n = message.arguments["n"]

        def effect(pipe):
            pipe.hincrby(applied, str(n), 1)
            pipe.incr(total)
            if n == trap:
                pipe.set(trapped, message.message_id)

        consumer.once(message, effect)
        if n == trap:
            time.sleep(3600)  # frozen between the effect and the ack, until the SIGKILL

    consumer = Consumer(bus, TOOL_REQUESTS, GROUP, name, handler, claim_idle_ms=claim_idle_ms, block_ms=100)
    return consumer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("name")
    parser.add_argument("--trap", type=int, default=-1)
    parser.add_argument("--claim-idle-ms", type=int, default=60_000)
    args = parser.parse_args()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    make_consumer(Bus(args.url), args.name, args.trap, args.claim_idle_ms).run(stop)


if __name__ == "__main__":
    main()
