"""The Redis Streams bus (docs/architecture.md, Bus): publish, plain reads, broadcasts, request/reply.

``Bus`` wraps one ``redis.Redis`` client (``decode_responses=False``; entry ids come back as ``str``).
Stream names in this API are unprefixed (``"chat.requests"``); ``Bus.key`` adds the bus prefix
(default ``"journey:"``) so several stacks, or tests, can share one Redis. Every ``XADD`` trims the
stream to about ``maxlen`` entries (approximate ``MAXLEN ~``: cheap, may keep up to one radix-tree
node, 100 entries by default, more).

Work queues (``chat.requests``, ``tools.requests``) are read by consumer groups through ``Consumer``
(below, with its delivery and dedupe guarantees). ``Bus`` covers everything else: reply
streams (one per request, short-lived), the ``models.events`` broadcast (``listen``), and ``request``
for a blocking call that waits for its first reply. Connection failures surface as ``BusUnreachable``
(a ``BusError``) naming the URL and the fix; ``Bus`` never retries a publish on its own (a retried
``XADD`` can duplicate an entry, which consumers absorb by deduplicating on ``message_id``).

Timeouts: commands that answer at once run on a client with redis-py's socket timeout (5 s), so a
hung Redis is reported within seconds. A blocking read (``XREAD``/``XREADGROUP`` with ``BLOCK``)
gets, for that call only, a socket timeout of its block time plus ``BLOCK_MARGIN_S``: a 30 s wait
for a tool's result is a wait, not a false "unreachable", and a Redis that stops answering during
it is still reported, ``BLOCK_MARGIN_S`` after the block should have ended.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import redis

from shared.bus.messages import MalformedMessage, Message, decode, encode

log = logging.getLogger(__name__)

CHAT_REQUESTS = "chat.requests"
TOOL_REQUESTS = "tools.requests"
MODEL_EVENTS = "models.events"
STREAMS = (CHAT_REQUESTS, TOOL_REQUESTS, MODEL_EVENTS)
# reply stream kinds: reply_stream(CHAT_EVENTS, request_id) -> "chat.events.<request_id>"
CHAT_EVENTS = "chat.events"
TOOL_RESULTS = "tools.results"

DEFAULT_URL = "redis://localhost:6379/0"
DEFAULT_PREFIX = "journey:"
DEFAULT_MAXLEN = 100_000
REPLY_TTL_S = 3600  # a reply stream nobody reads is garbage after an hour
# How long past its BLOCK time a blocking read waits for Redis's answer before calling Redis unreachable:
# a server that is up answers a timed-out BLOCK at once, so seconds of slack only absorb load.
BLOCK_MARGIN_S = 5.0


class BusError(RuntimeError):
    """The bus cannot do what was asked (Redis unreachable, no reply in time, bad stream name)."""


class BusUnreachable(BusError):
    """Redis does not answer: an outage to wait out, not a reason to give up on a message."""


def unreachable(url: str, exc: Exception) -> BusUnreachable:
    """The error for a Redis that does not answer: names the URL and both ways to fix it."""
    return BusUnreachable(f"Redis at {url} is unreachable ({type(exc).__name__}: {exc}); start it "
                    f"(`redis-server`, `python -m shared.bus.redis_server`, or `apt-get install redis-server`) "
                    f"or point REDIS_URL at a running one")


def entry_id(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class Bus:
    """A handle on the bus at ``url`` (``None``: ``$REDIS_URL``, else ``redis://localhost:6379/0``).

    Creating it does not connect; ``ping`` checks the connection. Thread-safe (redis-py pools
    connections), so one ``Bus`` can serve a whole process.
    """

    def __init__(self, url: str | None = None, *, prefix: str = DEFAULT_PREFIX, maxlen: int = DEFAULT_MAXLEN):
        if maxlen < 1:
            raise ValueError(f"maxlen must be >= 1, got {maxlen}")
        self.url = url or os.environ.get("REDIS_URL") or DEFAULT_URL
        self.prefix = prefix
        self.maxlen = maxlen
        try:
            # health_check_interval: a connection idle in the pool is checked before reuse, so a Redis
            # restart costs one transparent reconnect instead of an error on the next command
            self.redis: redis.Redis = redis.Redis.from_url(self.url, decode_responses=False,
                                                           socket_connect_timeout=5, health_check_interval=30)
            # blocking reads take a connection of their own pool and set its socket timeout per call
            # (``_blocking``), so a long timeout never leaks into the commands of the shared pool above
            self._blocking_pool = redis.ConnectionPool.from_url(self.url, socket_connect_timeout=5,
                                                                health_check_interval=30)
        except ValueError as exc:
            raise BusError(f"bad Redis URL {self.url!r} ({exc}); use redis://host:port/db") from None

    def __repr__(self) -> str:
        return f"Bus({self.url!r}, prefix={self.prefix!r})"

    @contextmanager
    def _errors(self):
        """Turn redis-py connection failures into a ``BusError`` that says what to do."""
        try:
            yield
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise unreachable(self.url, exc) from exc

    @contextmanager
    def _blocking(self, block_ms: int | None) -> Iterator[redis.Redis]:
        """The client for one read that may wait ``block_ms`` (None or 0 here: no wait, the shared client).

        Otherwise a client pinned to one connection of the blocking pool, its socket timeout set to the
        block time plus ``BLOCK_MARGIN_S`` for this call (the pool's default, redis-py's 5 s, would cut a
        longer ``BLOCK`` short); the connection goes back to the pool afterwards."""
        if not block_ms:
            yield self.redis
            return
        timeout = block_ms / 1000 + BLOCK_MARGIN_S
        with self._errors():
            client = redis.Redis(connection_pool=self._blocking_pool, single_connection_client=True)
        try:
            conn = client.connection
            conn.socket_timeout = timeout               # what a reconnect during the call arms
            conn.update_current_socket_timeout(timeout)  # the socket it already has (no-op when not connected)
            yield client
        finally:
            client.close()

    def ping(self) -> None:
        """Raise ``BusError`` unless Redis answers."""
        with self._errors():
            self.redis.ping()

    def key(self, stream: str) -> str:
        """The Redis key of ``stream`` (the bus prefix + the name)."""
        if not stream or any(c.isspace() for c in stream):
            raise BusError(f"bad stream name {stream!r}: use a non-empty name without spaces, e.g. {CHAT_REQUESTS!r}")
        return self.prefix + stream

    def reply_stream(self, kind: str, request_id: str) -> str:
        """The reply stream of one request: ``"<kind>.<request_id>"`` (kind: ``CHAT_EVENTS`` or ``TOOL_RESULTS``)."""
        return f"{kind}.{request_id}"

    def publish(self, stream: str, message: Message, *, maxlen: int | None = None) -> str:
        """Append ``message`` to ``stream`` (trimmed to about ``maxlen``, default the bus's); returns the entry id."""
        with self._errors():
            return entry_id(self.redis.xadd(self.key(stream), encode(message), maxlen=maxlen or self.maxlen,
                                            approximate=True))

    def reply(self, stream: str, message: Message, *, ttl_s: int = REPLY_TTL_S) -> str:
        """Publish ``message`` on a reply stream and (re)arm its expiry, in one transaction; returns the entry id."""
        key = self.key(stream)
        with self._errors(), self.redis.pipeline(transaction=True) as pipe:
            pipe.xadd(key, encode(message), maxlen=self.maxlen, approximate=True)
            pipe.expire(key, ttl_s)
            return entry_id(pipe.execute()[0])

    def expire(self, stream: str, seconds: int) -> None:
        """Delete ``stream`` ``seconds`` from now (reply streams are short-lived)."""
        with self._errors():
            self.redis.expire(self.key(stream), seconds)

    def read(self, stream: str, last_id: str = "0-0", *, block_ms: int | None = None,
             count: int = 100) -> list[tuple[str, Message]]:
        """Up to ``count`` messages after ``last_id`` (plain ``XREAD``, no group), waiting up to ``block_ms``
        for the first one (``None``: do not wait). Malformed entries are skipped with a logged warning."""
        with self._errors(), self._blocking(block_ms) as client:
            reply = client.xread({self.key(stream): last_id}, count=count, block=block_ms)
        out = []
        for _, entries in reply or []:
            for raw_id, fields in entries:
                try:
                    out.append((entry_id(raw_id), decode(fields)))
                except MalformedMessage as exc:
                    log.warning("skipping malformed entry %s on %s: %s", entry_id(raw_id), stream, exc)
        return out

    def last_id(self, stream: str) -> str:
        """The id of the newest entry of ``stream`` (``"0-0"`` when it is empty or missing)."""
        with self._errors():
            newest = self.redis.xrevrange(self.key(stream), count=1)
        return entry_id(newest[0][0]) if newest else "0-0"

    def listen(self, stream: str, *, last_id: str = "$", block_ms: int = 1000,
               stop: threading.Event | None = None) -> Iterator[tuple[str, Message]]:
        """Yield ``(entry_id, message)`` for every message on ``stream`` after ``last_id`` until ``stop`` is set.

        ``"$"`` means messages published from now on: it is resolved once, up front, to the newest id, so
        nothing published between two reads is missed. A broadcast subscription is long-lived, so a Redis
        outage is logged and retried (with backoff) instead of ending the iteration.
        """
        stop = stop or threading.Event()
        cursor = self.last_id(stream) if last_id == "$" else last_id
        backoff = Backoff()
        while not stop.is_set():
            try:
                batch = self.read(stream, cursor, block_ms=block_ms)
            except BusUnreachable as exc:
                log.warning("listen(%s): %s; retrying in %.1f s", stream, exc, backoff.delay)
                stop.wait(backoff.next())
                continue
            backoff.reset()
            for item in batch:
                cursor = item[0]
                yield item

    def request(self, stream: str, message: Message, reply_to: str, *, timeout_s: float) -> Message:
        """Publish ``message`` on ``stream`` and return the first message on ``reply_to`` (``BusError`` after
        ``timeout_s``). The reply stream is set to expire a minute after the reply arrives."""
        self.publish(stream, message)
        deadline = time.monotonic() + timeout_s
        while (left_ms := int((deadline - time.monotonic()) * 1000)) > 0:
            replies = self.read(reply_to, "0-0", block_ms=left_ms, count=1)
            if replies:
                self.expire(reply_to, 60)
                return replies[0][1]
        raise BusError(f"no reply on {reply_to!r} within {timeout_s} s to {type(message).__name__} "
                       f"{message.message_id} on {stream!r}: is a consumer of {stream!r} running on {self.url}?")

    def close(self) -> None:
        """Close the client's connections (the ``Bus`` reconnects if used again)."""
        self.redis.close()
        self._blocking_pool.disconnect()


class Backoff:
    """Exponential backoff for reconnect loops: 0.1 s doubling up to ``cap`` seconds."""

    def __init__(self, first: float = 0.1, cap: float = 2.0):
        self.first, self.cap, self.delay = first, cap, first

    def next(self) -> float:
        delay, self.delay = self.delay, min(self.delay * 2, self.cap)
        return delay

    def reset(self) -> None:
        self.delay = self.first


Handler = Callable[[Message], None]
# Look at our own PEL at least this often even when we believe it empty: a read whose reply was lost
# (and retried by redis-py, which hides the failure) leaves entries there that we never saw.
OWN_SCAN_INTERVAL_S = 1.0


class Consumer:
    """One member ``name`` of consumer group ``group`` on ``stream``; ``handler(message)`` does the work.

    Delivery is at least once. An entry is acked only after ``handler`` returns; an exception leaves it
    pending, and it is delivered again (to this consumer after ``retry_idle_ms``, or to any member of
    the group once it has been idle ``claim_idle_ms``: XAUTOCLAIM takes over the entries of dead
    consumers). A restarted consumer with the same ``name`` takes its own pending entries first. After
    ``max_deliveries`` deliveries without an ack (counted by Redis, so crashes count too) the entry goes
    to the dead-letter stream ``dead_letter`` (``"<stream>.dead"``, unprefixed like every stream name
    here) and is acked; so does a malformed entry, at once, with the ``MalformedMessage`` text as reason.

    What is guaranteed about duplicates (dedupe is per group, on ``message_id``, for ``dedupe_ttl_s``):
    - once the handler of a message has returned and the consumer has marked it done (one transaction
      that sets the done key and acks), that message is never handled again by this group, even if it
      is redelivered or published again with the same ``message_id``;
    - the handler can still run twice if a consumer dies (or stalls past ``claim_idle_ms`` and its entry
      is claimed) after the handler's side effect and before the done mark. For a side effect in this
      Redis, ``once(message, effect)`` closes that window: it applies ``effect`` and the done mark in one
      ``MULTI``/``EXEC`` guarded by ``WATCH``, so the effect is applied exactly once per ``message_id``
      and group even with two consumers racing. Make ``once`` the handler's last step: a failure after
      it is not retried, since the message already counts as done. Side effects elsewhere (HTTP, files)
      must be idempotent on ``message_id`` themselves.
    Both hold as long as Redis keeps what it acknowledged: AOF with ``appendfsync always`` survives any
    crash; ``everysec`` can lose the last second on a machine crash, and with it done marks (a redo).
    A Redis outage (the handler raising ``BusUnreachable`` or a redis-py connection error) spends no
    delivery: the entry stays pending and ``run`` waits the outage out with backoff.
    ``block_ms=0`` makes ``run_once`` read without waiting.

    Concurrent handling (``lanes``; default off: one handler call at a time, in the read loop): each
    message goes to the lane ``lane_of(message)`` names, a thread pool of ``lanes[name]`` workers
    (names not listed share the lane ``"*"``: ``lanes["*"]`` workers, 1 if unset), so a slow lane never
    holds up another and the read loop keeps reading while handlers run. Everything above still holds
    per entry: the ack (with the done mark) comes only after that entry's handler returned, a failure
    leaves it pending for a retry, dead-lettering counts the same deliveries. What changes: at most ``max_backlog``
    entries are held at once (running or queued in a lane; the loop stops reading at the cap, so a
    flood stays in the stream for other consumers); entries held here are never claimed again by this
    consumer while held, and their idle time is reset every ``claim_idle_ms / 3`` (``XCLAIM JUSTID``,
    which spends no delivery) so other consumers do not take over an entry that is merely queued or
    slow; a second entry with the ``message_id`` of one being handled waits for that one (acked if it
    succeeds, left pending if it fails). ``stop`` leaves queued entries pending, for a restart.
    """

    def __init__(self, bus: Bus, stream: str, group: str, name: str, handler: Handler, *,
                 max_deliveries: int = 5, claim_idle_ms: int = 30_000, block_ms: int = 1000, batch: int = 16,
                 dedupe_ttl_s: int = 86_400, retry_idle_ms: int = 1000, lanes: Mapping[str, int] | None = None,
                 lane_of: Callable[[Message], str] | None = None, max_backlog: int = 64):
        if lanes is not None and (not lanes or min(lanes.values()) < 1 or max_backlog < 1):
            raise ValueError(f"lanes need at least one entry, each >= 1 worker, and max_backlog >= 1; got {dict(lanes)}, "
                             f"max_backlog={max_backlog}")
        if max_deliveries < 1 or batch < 1 or dedupe_ttl_s < 1 or min(claim_idle_ms, block_ms, retry_idle_ms) < 0:
            raise ValueError("Consumer needs max_deliveries, batch, dedupe_ttl_s >= 1 and claim_idle_ms, block_ms, "
                             f"retry_idle_ms >= 0; got {max_deliveries}, {batch}, {dedupe_ttl_s}, {claim_idle_ms}, "
                             f"{block_ms}, {retry_idle_ms}")
        self.bus, self.stream, self.group, self.name, self.handler = bus, stream, group, name, handler
        self.max_deliveries, self.claim_idle_ms, self.block_ms = max_deliveries, claim_idle_ms, block_ms
        self.batch, self.dedupe_ttl_s, self.retry_idle_ms = batch, dedupe_ttl_s, retry_idle_ms
        self.key = bus.key(stream)
        self.dead_letter = f"{stream}.dead"
        # after a (re)start our PEL may hold entries of our previous life: take them all, idle or not
        self._fresh, self._own_pending, self._next_own_scan = True, True, 0.0
        self._claim_cursor, self._last_claim = "0-0", float("-inf")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # concurrent mode (None: sequential): held entries (entry id -> message_id), message_ids being handled
        # (-> the entry ids of their duplicates, waiting), the lanes' pools, a wake-up when an entry finishes
        self.lanes, self.lane_of, self.max_backlog = (dict(lanes) if lanes else None), lane_of, max_backlog
        self._held: dict[str, str] = {}
        self._handling: dict[str, list[str]] = {}
        self._pools: dict[str, ThreadPoolExecutor] = {}
        self._lock = threading.Lock()
        self._finished = threading.Event()
        self._next_heartbeat = 0.0
        self.ensure_group()

    def __repr__(self) -> str:
        return f"Consumer({self.stream!r}, group={self.group!r}, name={self.name!r})"

    def ensure_group(self) -> None:
        """Create the group (and the stream) if missing; the group starts at the beginning of the stream."""
        try:
            with self.bus._errors():
                self.bus.redis.xgroup_create(self.key, self.group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def done_key(self, message_id: str) -> str:
        return self.bus.key(f"done:{self.stream}:{self.group}:{message_id}")

    # -- reading ---------------------------------------------------------------------------------------

    def _pending_retries(self) -> list[tuple[str, dict, int]]:
        """Our own unacked entries that are due again: all of them after a restart, else those idle
        ``retry_idle_ms``; claimed back to us (which bumps their delivery count)."""
        held = self._held_ids()
        rows = self.bus.redis.xpending_range(self.key, self.group, min="-", max="+", count=self.batch + len(held),
                                             consumername=self.name)
        rows = [r for r in rows if entry_id(r["message_id"]) not in held]  # being handled here: not due
        min_idle = 0 if self._fresh else self.retry_idle_ms
        self._fresh, self._own_pending = False, bool(rows)
        self._next_own_scan = time.monotonic() + OWN_SCAN_INTERVAL_S
        due = {entry_id(r["message_id"]): r["times_delivered"] + 1 for r in rows
               if r["time_since_delivered"] >= min_idle}
        if not due:
            return []
        claimed = self.bus.redis.xclaim(self.key, self.group, self.name, min_idle, list(due))
        return [(entry_id(i), fields, due[entry_id(i)]) for i, fields in claimed if entry_id(i) in due]

    def _claim_stale(self) -> list[tuple[str, dict, int]]:
        """Entries other consumers left unacked for ``claim_idle_ms`` (XAUTOCLAIM), with delivery counts."""
        if self._claim_cursor == "0-0" and time.monotonic() - self._last_claim < self.claim_idle_ms / 2000:
            return []  # an entry needs claim_idle_ms to go stale: scanning much more often finds nothing new
        self._last_claim = time.monotonic()
        cursor, claimed, deleted = self.bus.redis.xautoclaim(self.key, self.group, self.name, self.claim_idle_ms,
                                                             start_id=self._claim_cursor, count=self.batch)
        self._claim_cursor = entry_id(cursor)
        held = self._held_ids()
        claimed = [(i, fields) for i, fields in claimed if entry_id(i) not in held]  # ours, handled right now
        if deleted:
            log.warning("%r: %d pending entries were trimmed from %s before anyone acked them (raise maxlen?)",
                        self, len(deleted), self.stream)
        if not claimed:
            return []
        with self.bus.redis.pipeline(transaction=False) as pipe:
            for raw_id, _ in claimed:
                pipe.xpending_range(self.key, self.group, min=raw_id, max=raw_id, count=1)
            counts = [rows[0]["times_delivered"] if rows else 1 for rows in pipe.execute()]
        return [(entry_id(i), fields, n) for (i, fields), n in zip(claimed, counts)]

    def _read_new(self, block_ms: int | None) -> list[tuple[str, dict, int]]:
        count = self.batch if self.lanes is None else min(self.batch, self.max_backlog - len(self._held))
        with self.bus._blocking(block_ms) as client:
            reply = client.xreadgroup(self.group, self.name, {self.key: ">"}, count=max(count, 1),
                                      block=block_ms or None)
        return [(entry_id(i), fields, 1) for _, entries in reply or [] for i, fields in entries]

    # -- handling --------------------------------------------------------------------------------------

    def run_once(self) -> int:
        """Own due pending entries first, then stale entries of other consumers, then new ones (waiting up
        to ``block_ms`` only when there was nothing else; 0: not at all). Returns how many entries it finished (handled,
        skipped as already done, or dead-lettered; in concurrent mode also handed to a lane); entries whose
        handler failed stay pending. In concurrent mode with ``max_backlog`` entries held it reads nothing
        and waits (up to ``block_ms``) for one to finish."""
        try:
            with self.bus._errors():
                if self.lanes is not None:
                    self._heartbeat()
                    if len(self._held) >= self.max_backlog:
                        self._finished.clear()
                        if len(self._held) >= self.max_backlog:
                            self._finished.wait(max(self.block_ms, 10) / 1000)
                        return 0
                due = self._own_pending or time.monotonic() >= self._next_own_scan
                entries = self._pending_retries() if due else []
                entries = entries or self._claim_stale()
                entries = entries or self._read_new(self.block_ms)
                return self._process(entries)
        except BaseException:
            self._own_pending = True  # whatever we read and did not finish is in our PEL now
            raise

    def _process(self, entries: list[tuple[str, dict, int]]) -> int:
        decoded: list[tuple[str, dict, int, Message | MalformedMessage]] = []
        for eid, fields, deliveries in entries:
            try:
                decoded.append((eid, fields, deliveries, decode(fields or {})))
            except MalformedMessage as exc:
                decoded.append((eid, fields, deliveries, exc))
        ids = [m.message_id for *_, m in decoded if isinstance(m, Message)]
        with self.bus.redis.pipeline(transaction=False) as pipe:
            for message_id in ids:
                pipe.exists(self.done_key(message_id))
            done = {mid for mid, hit in zip(ids, pipe.execute()) if hit}
        finished = 0
        for eid, fields, deliveries, message in decoded:
            if fields is None:  # trimmed away while pending (XCLAIM of a deleted entry): nothing to do
                self.bus.redis.xack(self.key, self.group, eid)
                finished += 1
            elif isinstance(message, MalformedMessage):
                finished += self._dead(eid, fields, deliveries, f"malformed: {message}")
            elif message.message_id in done:
                self.bus.redis.xack(self.key, self.group, eid)
                finished += 1
            elif deliveries > self.max_deliveries:
                finished += self._dead(eid, fields, deliveries, f"delivered {deliveries} times without an ack "
                                       f"(max_deliveries={self.max_deliveries}); did its handler kill the consumer?")
            elif self.lanes is not None:
                finished += self._dispatch(eid, fields, deliveries, message)
            elif self._handle(eid, fields, deliveries, message):
                done.add(message.message_id)
                finished += 1
        return finished

    # -- concurrent mode -------------------------------------------------------------------------------

    def _held_ids(self) -> set[str]:
        with self._lock:
            return set(self._held)

    def _dispatch(self, eid: str, fields: dict, deliveries: int, message: Message) -> int:
        """Hand the entry to its lane (or park it behind the entry handling the same ``message_id``)."""
        with self._lock:
            if eid in self._held:
                return 0
            self._held[eid] = message.message_id
            if message.message_id in self._handling:
                self._handling[message.message_id].append(eid)
                return 1
            self._handling[message.message_id] = []
            lane = self.lane_of(message) if self.lane_of else "*"
            lane = lane if lane in self.lanes else "*"  # unlisted names share one lane: a bounded set of pools
            pool = self._pools.get(lane)
            if pool is None:
                workers = self.lanes.get(lane, 1)
                pool = self._pools[lane] = ThreadPoolExecutor(workers, thread_name_prefix=f"{self.name}-{lane}")
        try:
            future = pool.submit(self._work, eid, fields, deliveries, message)
        except RuntimeError:  # the pool was shut down by stop() meanwhile: leave the entry pending
            self._release(eid, message.message_id, False)
            return 0
        # cancelled by stop() before it ran: no longer held, so a restarted loop retries it
        future.add_done_callback(lambda f: f.cancelled() and self._release(eid, message.message_id, False))
        return 1

    def _work(self, eid: str, fields: dict, deliveries: int, message: Message) -> None:
        """A lane worker: the handler, then the ack of the entry and of any duplicates parked behind it."""
        ok = False
        try:
            if not self._stop.is_set():  # stopping: leave queued entries pending for the next life
                ok = self._handle(eid, fields, deliveries, message)
        except (BusUnreachable, redis.ConnectionError, redis.TimeoutError) as exc:
            log.warning("%r: Redis failed while handling %s (%s); it stays pending and is retried", self, eid, exc)
        except Exception:  # noqa: BLE001 -- a worker must never die with the entry still marked held
            log.exception("%r: unexpected error handling %s; it stays pending", self, eid)
        finally:
            self._release(eid, message.message_id, ok)

    def _release(self, eid: str, message_id: str, ok: bool) -> None:
        """The entry is no longer held; on success its parked duplicates are acked, else all stay pending."""
        with self._lock:
            self._held.pop(eid, None)
            duplicates = self._handling.pop(message_id, [])
            for dup in duplicates:
                self._held.pop(dup, None)
        if not ok:
            self._own_pending = True
        elif duplicates:  # the message is done: its other entries need only their ack
            self._swallow(lambda: self.bus.redis.xack(self.key, self.group, *duplicates))
        self._finished.set()

    def _heartbeat(self) -> None:
        """Reset the idle time of the entries held here (no delivery spent), so no one claims them."""
        if time.monotonic() < self._next_heartbeat:
            return
        self._next_heartbeat = time.monotonic() + max(self.claim_idle_ms / 3000, 0.1)
        held = list(self._held_ids())
        if held:
            self.bus.redis.xclaim(self.key, self.group, self.name, 0, held, justid=True)

    def _handle(self, eid: str, fields: dict, deliveries: int, message: Message) -> bool:
        """Run the handler; on success mark done and ack atomically. True when the entry is finished."""
        try:
            self.handler(message)
        except (BusUnreachable, redis.ConnectionError, redis.TimeoutError):
            self._own_pending = True
            raise  # Redis is down: not the message's fault, so no delivery is spent; run() backs off
        except Exception as exc:  # noqa: BLE001 -- any handler failure is a retry, never the consumer's death
            self._own_pending = True
            if deliveries >= self.max_deliveries:
                log.error("%r: %s %s failed on delivery %d, dead-lettering: %r", self, type(message).__name__,
                          message.message_id, deliveries, exc)
                return bool(self._dead(eid, fields, deliveries, f"handler failed {deliveries} times; last: "
                                       f"{type(exc).__name__}: {exc}"))
            log.warning("%r: %s %s failed on delivery %d of %d, will retry", self, type(message).__name__,
                        message.message_id, deliveries, self.max_deliveries, exc_info=True)
            return False
        with self.bus.redis.pipeline(transaction=True) as pipe:
            pipe.set(self.done_key(message.message_id), b"1", ex=self.dedupe_ttl_s)
            pipe.xack(self.key, self.group, eid)
            pipe.execute()
        return True

    def _dead(self, eid: str, fields: dict, deliveries: int, reason: str) -> int:
        """Copy the entry to the dead-letter stream with why, and ack it, in one transaction."""
        ours = {"reason": reason, "stream": self.stream, "entry_id": eid, "deliveries": str(deliveries),
                "group": self.group, "consumer": self.name}
        original = {entry_id(k): v for k, v in fields.items()}
        record = {(f"original.{k}" if k in ours else k): v for k, v in original.items()} | ours
        with self.bus.redis.pipeline(transaction=True) as pipe:
            pipe.xadd(self.bus.key(self.dead_letter), record, maxlen=self.bus.maxlen, approximate=True)
            pipe.xack(self.key, self.group, eid)
            pipe.execute()
        log.warning("%r: entry %s dead-lettered to %s: %s", self, eid, self.dead_letter, reason)
        return 1

    def once(self, message: Message, effect: Callable[[redis.client.Pipeline], object]) -> bool:
        """Apply ``effect(pipe)`` (Redis commands queued on a ``MULTI`` pipeline) and mark ``message`` done, in
        one transaction; False, without applying it, when the message was already done."""
        key = self.done_key(message.message_id)
        with self.bus.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(key)
                    if pipe.exists(key):
                        return False
                    pipe.multi()
                    effect(pipe)
                    pipe.set(key, b"1", ex=self.dedupe_ttl_s)
                    pipe.execute()
                    return True
                except redis.WatchError:
                    continue  # another consumer touched the key between WATCH and EXEC: look again

    # -- running ---------------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """``run_once`` until ``stop`` is set. Never dies: a Redis outage is retried with backoff, a lost
        group (Redis restarted without persistence) is recreated, anything else is logged."""
        backoff = Backoff()
        while not stop.is_set():
            try:
                if not self.run_once() and not self.block_ms:
                    stop.wait(0.01)  # block_ms=0 reads without waiting: do not spin on an idle stream
                backoff.reset()
            except BusUnreachable as exc:
                log.warning("%r: %s; retrying in %.1f s", self, exc, backoff.delay)
                stop.wait(backoff.next())
            except redis.ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    log.exception("%r: Redis refused a command; retrying in %.1f s", self, backoff.delay)
                    stop.wait(backoff.next())
                    continue
                log.warning("%r: group %s is gone (Redis lost its data?); recreating it", self, self.group)
                self._swallow(self.ensure_group)
            except Exception:  # noqa: BLE001 -- the loop must outlive any bug in one batch
                log.exception("%r: unexpected error; retrying in %.1f s", self, backoff.delay)
                stop.wait(backoff.next())

    @staticmethod
    def _swallow(fn: Callable[[], None]) -> None:
        try:
            fn()
        except (BusError, redis.RedisError) as exc:
            log.warning("%s failed (%s); the run loop tries again", getattr(fn, "__name__", fn), exc)

    def start(self) -> threading.Thread:
        """``run`` in a daemon thread; ``stop`` ends it."""
        if self._thread and self._thread.is_alive():
            raise BusError(f"{self!r} is already running; stop() it first")
        self._stop.clear()
        self._thread = threading.Thread(target=self.run, args=(self._stop,), name=f"bus-{self.name}", daemon=True)
        self._thread.start()
        return self._thread

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the loop to end and wait up to ``timeout`` seconds (a read in progress lasts <= ``block_ms``)."""
        self._stop.set()
        if self._thread:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("%r did not stop within %.1f s (a handler still running?)", self, timeout)
        pools, self._pools = list(self._pools.values()), {}
        for pool in pools:  # queued entries are dropped unhandled: they stay pending
            pool.shutdown(wait=False, cancel_futures=True)
