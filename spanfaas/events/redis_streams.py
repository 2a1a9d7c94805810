"""Redis Streams through a consumer group (``[[events.redis]]``).

Each entry becomes one CloudEvent.  An entry whose fields are CloudEvent
attributes (``specversion``, ``id``, ``source``, ``type``, … and ``data``, or
``data_base64`` for bytes) is taken as that event; an entry with a
``cloudevent`` field holds a structured-mode event; any other entry is
wrapped: ``source`` ``redis/<stream>``, ``id`` the entry id, ``data`` the fields.

An entry that is no event (``InvalidEvent``) is not delivered: it is kept in
the dead-letter store (function none, error ``InvalidEvent`` with the reason,
payload its raw fields) and acknowledged; it cannot be replayed, only read
(``events dlq ls --json``).  One whose event the store refuses (a value it cannot
hold: it always will) is acknowledged and logged, its invocations kept in the
dead-letter store (``events dlq ls``, ``replay`` once the cause is fixed).
A dead letter the store refuses too is kept without its data (``delivery.keep``):
listed with why, never replayed.  The others of its read are queued.  A dead letter the store cannot take for
now (down, locked, failing) leaves its read unacknowledged: it is read again.

Entries are acknowledged (XACK) only after ``Sink.publish`` returned, that
is after their invocations are committed to the store.  A crash in between
leaves them in the group's pending list: on start the reader reads its own
pending entries first (and takes over entries other consumers left pending
for ``claim_idle`` seconds: every ``claim_idle / 2``, a scan of the whole
pending list, page after page of XAUTOCLAIM), and the store's (source, id)
window drops the copies that had already been queued — one invocation per event.  A group that
disappears (Redis restarted without its data) is made again from the start of
the stream, not from its end: entries written since the restart are read.  The
store remembers the groups the readers have had, so this holds when the group
went while the gateway was down too; ``start`` applies to a group never had.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import socket
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from spanfaas.config import RedisStreamConfig
from spanfaas.errors import plural
from spanfaas.events.base import CloudEvent, InvalidEvent, Sink, decode_json, make_event
from spanfaas.events.cloudevents_http import event_from_fields, parse_structured
from spanfaas.events.delivery import keep
from spanfaas.events.metrics import EventMetrics
from spanfaas.model import ErrorInfo, Event
from spanfaas.store import DeadLetter, RecordRefused, Store

__all__ = ["RedisStreamSource"]

log = logging.getLogger("spanfaas.events")

Entry = tuple[str, dict[Any, Any] | None]


class RedisStreamSource:
    kind = "redis"

    def __init__(self, config: RedisStreamConfig, metrics: EventMetrics, store: Store, *, stall_at: str = "") -> None:
        self.config = config
        self.metrics = metrics
        self.store = store
        self.name = config.name
        self.consumer = config.consumer or socket.gethostname()
        self.source = config.source or f"redis/{config.stream}"
        self.stall_at = stall_at
        """Test hook (``SPANFAAS_TEST_STALL``): ``redis.before-admit`` or ``redis.before-ack``
        stops the reader there for good, so a test can kill the gateway at that point."""
        self.connected = asyncio.Event()
        self._stopping = False
        self._had_group = False
        """The group was there (found or made) once: made again, it starts at the stream's start."""
        self.group_key = f"{_server(config.url)}|{config.stream}|{config.group}"
        """The group in the store, which remembers it for the next start."""

    def stop(self) -> None:
        """Finish the current read (at most ``block`` seconds), then return from ``run``.

        Preferred over cancelling: a blocking XREADGROUP cancelled at the wrong
        moment can swallow the cancellation (redis-py on Python 3.11)."""
        self._stopping = True

    # -- translation -------------------------------------------------------------------

    def translate(self, entry_id: str, raw: dict[Any, Any]) -> CloudEvent:
        fields = _text(entry_id, raw)
        if "cloudevent" in fields:
            try:
                doc = decode_json(fields["cloudevent"])
            except msgspec.DecodeError as exc:
                raise InvalidEvent(f"entry {entry_id}: the 'cloudevent' field is not valid JSON: {exc}") from None
            return parse_structured(doc, f"entry {entry_id}")
        if "specversion" in fields:
            return event_from_fields(fields)
        ms = int(entry_id.partition("-")[0]) if entry_id.partition("-")[0].isdigit() else int(time.time() * 1000)
        attrs: dict[str, Any] = {
            "specversion": "1.0",
            "id": entry_id,
            "source": self.source,
            "type": self.config.type,
            "time": datetime.fromtimestamp(ms / 1000, UTC),
            "datacontenttype": "application/json",
        }
        return make_event(attrs, dict(fields))

    # -- the loop ------------------------------------------------------------------------

    async def run(self, sink: Sink) -> None:
        delay = 0.1
        while not self._stopping:
            try:
                await self._consume(sink)
            except (RedisError, OSError) as exc:
                log.warning("redis source '%s' (%s): %s; reconnecting in %.1fs", self.name, self.config.stream, exc, delay)
            except Exception as exc:  # the store refused the events: read the pending entries again
                log.error("redis source '%s': could not queue events (%s: %s); retrying in %.1fs",
                          self.name, type(exc).__name__, exc, delay)  # fmt: skip
            if self.connected.is_set():  # it had worked: start the backoff over
                delay = 0.1
                self.connected.clear()
            if self._stopping:
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def _consume(self, sink: Sink) -> None:
        cfg = self.config
        client = aioredis.Redis.from_url(cfg.url, decode_responses=False, health_check_interval=30, protocol=2)
        try:
            # A group that was there before and is gone (Redis restarted without its data, maybe while
            # the gateway was down) is made from the stream's start: whatever the stream holds now came
            # after what was read.
            had = self._had_group or await asyncio.to_thread(self.store.stream_group_known, self.group_key)
            start = "0" if cfg.start == "all" or had else "$"
            try:
                await client.xgroup_create(cfg.stream, cfg.group, id=start, mkstream=True)
                if had:
                    log.warning("redis source '%s': the group %s of stream %s was gone (Redis restarted without its "
                                "data?); made it again, reading the stream from its start", self.name, cfg.group, cfg.stream)  # fmt: skip
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
            if not had:
                await asyncio.to_thread(self.store.remember_stream_group, self.group_key, time.time())
            self._had_group = True
            self.connected.set()
            log.info("redis source '%s': reading stream %s as %s/%s", self.name, cfg.stream, cfg.group, self.consumer)
            pending: str | None = "0"  # first the entries this consumer read but never acknowledged
            claiming: str | None = None  # the cursor of a takeover scan under way, page after page
            next_claim = time.monotonic()
            while not self._stopping:
                if pending is not None:
                    entries = _entries(await client.xreadgroup(cfg.group, self.consumer, {cfg.stream: pending}, count=cfg.batch))
                    if not entries:
                        pending = None
                        continue
                    pending = entries[-1][0]
                elif claiming is not None or time.monotonic() >= next_claim:
                    reply = await client.xautoclaim(
                        cfg.stream, cfg.group, self.consumer, int(cfg.claim_idle * 1000), claiming or "0-0", count=cfg.batch
                    )
                    claiming = _cursor(reply[0])
                    if claiming is None:  # the whole pending list was scanned
                        next_claim = time.monotonic() + cfg.claim_idle / 2
                    entries = _entries([[cfg.stream, reply[1]]])
                    if not entries:
                        continue
                    log.info("redis source '%s': took over %s left pending by other consumers", self.name, plural(len(entries), "entry", "entries"))
                else:
                    block = int(cfg.block * 1000)
                    entries = _entries(
                        await client.xreadgroup(cfg.group, self.consumer, {cfg.stream: ">"}, count=cfg.batch, block=block)
                    )
                    if not entries:
                        continue
                await self._handle(client, sink, entries)
        finally:
            await client.aclose()

    async def _handle(self, client: aioredis.Redis, sink: Sink, entries: list[Entry]) -> None:
        events: list[CloudEvent] = []
        read: list[str] = []  # the entry of each event
        invalid: list[DeadLetter] = []
        for entry_id, fields in entries:
            if fields is None:  # deleted from the stream while pending
                continue
            self.metrics.received.labels(self.kind).inc()
            try:
                events.append(self.translate(entry_id, fields))
                read.append(entry_id)
            except InvalidEvent as exc:
                self.metrics.rejected.labels(self.kind).inc()
                invalid.append(self.invalid_letter(entry_id, fields, str(exc)))
        await self._stall("redis.before-admit", len(entries))
        for letter in invalid:  # a store that fails raises: the read stays pending, and is read again
            await self._keep_invalid(letter)
        if events:
            for entry_id, published in zip(read, await sink.publish(self.kind, events, keep_refused=True)):
                if published.error is None:
                    continue
                # The store refused a value of it (it always will): its invocations are dead letters to replay.
                kept = published.error.get("dead_letters")
                if kept:
                    log.error("redis source '%s': entry %s refused by the store (acknowledged, kept as dead letter %s: "
                              "`spanfaas events dlq ls`): %s", self.name, entry_id, ", ".join(kept),
                              published.error["detail"])  # fmt: skip
                else:
                    log.error("redis source '%s': entry %s refused by the store (acknowledged, not delivered): %s",
                              self.name, entry_id, published.error["detail"])  # fmt: skip
        await self._stall("redis.before-ack", len(entries))
        await client.xack(self.config.stream, self.config.group, *[e[0] for e in entries])

    def invalid_letter(self, entry_id: str, fields: dict[Any, Any], reason: str) -> DeadLetter:
        """The dead letter of an entry that is no event: its raw fields (in its "event", which
        ``dlq ls`` shows, and its payload; a value that is not UTF-8 as ``{"base64": …}``) and
        why.  Its id is the entry's in this group, so a read taken again stores it once."""
        now = time.time()
        ms = entry_id.partition("-")[0]
        raw = {_raw_key(k): _raw_value(v) for k, v in fields.items()}
        payload = msgspec.json.encode({"stream": self.config.stream, "entry": entry_id, "fields": raw})
        message = (f"entry {entry_id} of Redis stream {self.config.stream} is no event, and was not delivered: "
                   f"{reason}; fix its producer and add the entry again (this dead letter cannot be replayed)")  # fmt: skip
        return DeadLetter(
            id="redis-" + hashlib.sha256(f"{self.group_key}|{entry_id}".encode()).hexdigest()[:32],
            function="", event=Event(attributes={"id": entry_id, "source": self.source, "stream": self.config.stream,
                                                  "fields": raw}, proxy=self.kind),
            content_type="application/json", payload=payload,
            error=ErrorInfo(kind="infra", type="InvalidEvent", message=message.replace("\x00", "\\x00")),
            created_at=int(ms) / 1000 if ms.isdigit() else now, failed_at=now,
        )  # fmt: skip

    async def _keep_invalid(self, letter: DeadLetter) -> None:
        entry = letter.event.attributes["id"]
        said = letter.error.message if letter.error else ""

        def why(exc: RecordRefused) -> str:
            return f"{said}; the store refused its dead letter ({exc}): kept without its data (the entry's fields)"

        # The store refuses it (it always will): kept bare; held back, the stream would stop here for good.
        kept = await keep(self.store, letter, why)
        if kept is None:
            log.error("redis source '%s': entry %s is no event, and the store refused its dead letter (acknowledged, "
                      "lost); %s", self.name, entry, said)  # fmt: skip
            return
        self.metrics.dead_lettered.labels(self.kind).inc()
        if kept is letter:
            log.warning("redis source '%s': entry %s rejected (acknowledged, kept as dead letter %s: `spanfaas events dlq ls`): %s",
                        self.name, entry, letter.id, said)  # fmt: skip

    async def _stall(self, point: str, n: int) -> None:
        if self.stall_at == point:
            log.warning("test hook SPANFAAS_TEST_STALL: stalled at %s with %d entries", point, n)
            await asyncio.Event().wait()


def _entries(reply: Any) -> list[Entry]:
    """``[(id, fields)]`` from an XREADGROUP reply in RESP2: ``[[stream, [(id, fields), …]]]``."""
    out: list[Entry] = []
    for _, items in reply or ():
        for entry_id, fields in items:
            out.append((entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id), fields))
    return out


def _server(url: str) -> str:
    """The Redis server of a URL, without its credentials: ``redis://host:port/db``."""
    u = urlsplit(url)
    return f"{u.scheme}://{u.netloc.rpartition('@')[2]}{u.path}"


def _cursor(reply: Any) -> str | None:
    """Where XAUTOCLAIM's next page starts; None once it went through the whole pending list ("0-0")."""
    cursor = reply.decode() if isinstance(reply, bytes) else str(reply)
    return None if cursor == "0-0" else cursor


def _raw_key(key: Any) -> str:
    return key.decode("utf-8", "backslashreplace") if isinstance(key, bytes) else str(key)


def _raw_value(value: Any) -> str | dict[str, str]:
    """A field's value as the dead letter keeps it: its text, or ``{"base64": …}`` of bytes that are not UTF-8."""
    if not isinstance(value, bytes):
        return str(value)
    try:
        return value.decode()
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(value).decode()}


def _text(entry_id: str, fields: dict[Any, Any]) -> dict[str, str]:
    try:
        return {
            (k.decode() if isinstance(k, bytes) else str(k)): (v.decode() if isinstance(v, bytes) else str(v))
            for k, v in fields.items()
        }
    except UnicodeDecodeError:
        raise InvalidEvent(f"entry {entry_id}: fields must be UTF-8 text") from None
