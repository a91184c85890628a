"""Live events for server-sent-event clients, bounded per ingress replica: a Redis connection per replica, never
one per client (one connection per client emptied the replica's connection pool past a hundred of them, and every
route of that replica failed), and a bounded queue per client. Both feeds share the replica's `Seats`
(`max_sse_clients`; past it the answer is 503).

`LiveHub`: GET /v1/streams/{id}/events. One pub/sub connection per replica subscribes to the pattern of every
stream's channel while anyone listens and fans each message out to the clients of that stream (a client too slow
to keep up loses its oldest live events; a reconnect with Last-Event-ID gets them back from the tags stream).

`EventHub`: GET /v1/events, every stream in one feed (a page opens one EventSource, not one per stream: browsers
allow about 6 HTTP/1.1 connections per host). Its source is `vbs:events`, a Redis stream the sink writes at every
tag and status change in the same script as the change itself, capped (`redis.events_maxlen`, approximate
trim). An entry is small: the stream id and the tag's entry id in `vbs:tags:{id}` (the tag itself is read from
there), or the status with its reason and the start of its error. Why a stream of its own: a tag's entry id is
stream time in milliseconds of *its* stream, so no single Last-Event-ID could say where a client stands in fifty
streams; an entry id of `vbs:events` does, for all of them at once. So each SSE event's `id:` is its `vbs:events`
entry id (the tag's own entry id is in its data, as `id`), and a client that reconnects with Last-Event-ID
resumes with XREAD from there: nothing written meanwhile is lost, as long as the cap has kept it (older than the
oldest entry kept, the client is told `reset` and gets every stream's current state again).

One task per replica reads `vbs:events` with a blocking XREAD while anyone listens, reads the tags it names
(one pipelined round trip per batch, for every client at once), renders each event once and offers it to every
client's queue. A client that falls a queue behind is not cut off nor silently thinned: it is marked lagging and
catches up from its own last id by XREAD, as a reconnecting one does."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Callable

log = logging.getLogger(__name__)

QUEUE_SIZE = 256  # events waiting for one client
READ_COUNT = 500  # entries per XREAD
KEEPALIVE_S = 15.0
RETRY_MS = 2000  # the reconnect delay an EventSource is told
_ID = re.compile(r"^(\d{1,20})-(\d{1,20})$")


class Full(Exception):
    """This replica has as many live clients as it takes."""


class Seats:
    """The live clients one replica takes, whichever feed they read."""

    def __init__(self, max_clients: int):
        self.max_clients, self.taken = max_clients, 0

    def take(self) -> None:
        if self.taken >= self.max_clients:
            raise Full(f"{self.taken} live clients already")
        self.taken += 1

    def give_back(self) -> None:
        self.taken = max(0, self.taken - 1)


def parse_id(s: str | None) -> tuple[int, int] | None:
    """A Redis stream entry id "ms-seq" as a comparable pair; None for anything else."""
    m = _ID.match((s or "").strip())
    return (int(m[1]), int(m[2])) if m else None


def sse(event: str, data: dict, event_id: str | None = None) -> str:
    """One server-sent event; without `event_id` the client's last event id stays what it was."""
    head = f"id: {event_id}\n" if event_id else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def status_data(stream_id: str, status: str, reason: str = "", error: str = "", **more) -> dict:
    return {"stream_id": stream_id, "status": status, "reason": reason or "", "error": error or "", **more}


def tag_data(stream_id: str, entry: str, tag_json: str) -> dict:
    return {"stream_id": stream_id, "id": entry, **json.loads(tag_json)}


class LiveHub:
    def __init__(self, redis, pattern: str, max_clients: int | Seats):
        self.redis, self.pattern = redis, pattern
        self.seats = max_clients if isinstance(max_clients, Seats) else Seats(max_clients)
        self.clients: dict[str, set[asyncio.Queue]] = {}  # channel -> its clients' queues
        self._task: asyncio.Task | None = None

    @property
    def count(self) -> int:
        return sum(len(qs) for qs in self.clients.values())

    def join(self, channel: str) -> asyncio.Queue:
        """A queue of the messages published on `channel` from now on. Raises Full past max_clients."""
        self.seats.take()
        q: asyncio.Queue = asyncio.Queue(QUEUE_SIZE)
        self.clients.setdefault(channel, set()).add(q)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._pump())
        return q

    def leave(self, channel: str, q: asyncio.Queue) -> None:
        qs = self.clients.get(channel)
        if qs is not None and q in qs:
            qs.discard(q)
            self.seats.give_back()
            if not qs:
                del self.clients[channel]

    async def _pump(self) -> None:
        """Read the shared subscription while anyone listens; reconnect after a Redis error."""
        while self.clients:
            pubsub = self.redis.pubsub()
            try:
                await pubsub.psubscribe(self.pattern)
                while self.clients:
                    msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if msg is not None:
                        self._deliver(msg["channel"], msg["data"])
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - Redis went away: the clients wait, the feed comes back
                log.warning("live feed: %s: %s; resubscribing", type(e).__name__, e)
                await asyncio.sleep(1.0)
            finally:
                try:
                    await pubsub.aclose()
                except Exception:  # noqa: BLE001 - closing a broken connection
                    pass

    def _deliver(self, channel: str, data: str) -> None:
        for q in list(self.clients.get(channel, ())):
            if q.full():
                q.get_nowait()  # the slow client loses its oldest event
            q.put_nowait(data)


async def stream_feed(redis, keys, stream_id: str, first: dict, queue: asyncio.Queue, last_id: str | None,
                      disconnected: Callable, page: int) -> AsyncIterator[str]:
    """GET /v1/streams/{id}/events: the stream's state as a `status` event, then its tags (`id:` the tag's entry id
    in vbs:tags:{id}) and status changes (with their reason and error) as they come. With `last_id` (the
    Last-Event-ID a reconnecting EventSource sends), the tags written since are sent first, read with XREAD;
    without it, the latest tag is. `queue` is this client's LiveHub queue, joined before the state was read."""
    from actors.sink import entry_id

    last = parse_id(last_id)
    yield f"retry: {RETRY_MS}\n\n"
    yield sse("status", {**status_data(stream_id, first["status"], first.get("reason"), first.get("error")),
                         "stream": first})
    if last is None:
        if first.get("latest"):
            eid = entry_id(first["latest"]["t0"])
            last = parse_id(eid)
            yield sse("tag", {"stream_id": stream_id, "id": eid, **first["latest"]}, eid)
    else:
        cursor = f"{last[0]}-{last[1]}"
        while True:  # the tags written since the client's last one
            reply = await redis.xread({keys.tags(stream_id): cursor}, count=page)
            entries = reply[0][1] if reply else []
            for eid, f in entries:
                cursor = eid
                yield sse("tag", tag_data(stream_id, eid, f["data"]), eid)
            if len(entries) < page:
                break
        last = parse_id(cursor)
    last_beat = time.monotonic()
    while not await disconnected():
        try:
            data = await asyncio.wait_for(queue.get(), timeout=1.0)
        except asyncio.TimeoutError:
            if time.monotonic() - last_beat > KEEPALIVE_S:
                last_beat = time.monotonic()
                yield ": keep-alive\n\n"
            continue
        ev = json.loads(data)
        if ev.get("event") == "tag":
            eid = entry_id(ev["data"]["t0"])
            if last is not None and parse_id(eid) <= last:
                continue  # sent already, while catching up
            last = parse_id(eid)
            yield sse("tag", {"stream_id": stream_id, "id": eid, **ev["data"]}, eid)
        else:
            yield sse("status", status_data(stream_id, ev.get("status", ""), ev.get("reason"), ev.get("error")))


class _Client:
    def __init__(self) -> None:
        self.queue: asyncio.Queue = asyncio.Queue(QUEUE_SIZE)
        self.lagging = False

    def offer(self, item) -> None:
        if self.lagging:
            return
        if self.queue.full():  # behind by a whole queue: it catches up from Redis instead
            self.lagging = True
            while not self.queue.empty():
                self.queue.get_nowait()
            return
        self.queue.put_nowait(item)


class EventHub:
    """GET /v1/events (see the module's docstring)."""

    def __init__(self, redis, keys, seats: Seats, snapshot_streams: int = 200):
        self.redis, self.keys, self.seats = redis, keys, seats
        self.snapshot_streams = snapshot_streams  # the most recent streams whose state a new client is sent
        self.clients: set[_Client] = set()
        self._task: asyncio.Task | None = None

    @property
    def count(self) -> int:
        return len(self.clients)

    def join(self) -> _Client:
        self.seats.take()
        c = _Client()
        self.clients.add(c)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._pump())
        return c

    def leave(self, c: _Client) -> None:
        if c in self.clients:
            self.clients.discard(c)
            self.seats.give_back()

    # -- reading vbs:events ----------------------------------------------------------------------------
    async def _tail(self) -> str:
        """The id of the newest entry written ("0-0" before any)."""
        import redis

        try:
            return (await self.redis.xinfo_stream(self.keys.events))["last-generated-id"]
        except redis.ResponseError as e:
            if "no such key" in str(e).lower():  # nothing written yet
                return "0-0"
            raise

    async def _first(self) -> str | None:
        entries = await self.redis.xrange(self.keys.events, "-", "+", count=1)
        return entries[0][0] if entries else None

    async def _render(self, entries: list) -> list[tuple[tuple[int, int], str]]:
        """Each vbs:events entry as (its id, the SSE text), the tags it names read in one round trip; an entry
        whose tag has gone (trimmed, expired) or that is not one of ours is passed over."""
        pipe = self.redis.pipeline(transaction=False)
        wanted = []
        for gid, f in entries:
            if f.get("tag") and f.get("stream"):
                pipe.xrange(self.keys.tags(f["stream"]), f["tag"], f["tag"], count=1)
                wanted.append(gid)
        found = dict(zip(wanted, await pipe.execute())) if wanted else {}
        out = []
        for gid, f in entries:
            sid, pid = f.get("stream"), parse_id(gid)
            if not sid or pid is None:
                continue
            if f.get("tag"):
                rows = found.get(gid) or []
                if rows:
                    out.append((pid, sse("tag", tag_data(sid, rows[0][0], rows[0][1]["data"]), gid)))
            elif f.get("status"):
                out.append((pid, sse("status", status_data(sid, f["status"], f.get("reason"), f.get("error")), gid)))
            elif f.get("rule"):  # a rule that fired (actors/rules.py): the event as its webhook gets it
                try:
                    out.append((pid, sse("rule", json.loads(f.get("event") or "{}"), gid)))
                except ValueError:
                    continue
        return out

    async def _pump(self) -> None:
        """One blocking XREAD loop for every client of this replica, while there are any."""
        cursor: str | None = None
        while self.clients:
            try:
                if cursor is None:
                    cursor = await self._tail()
                reply = await self.redis.xread({self.keys.events: cursor}, count=READ_COUNT, block=1000)
                entries = reply[0][1] if reply else []
                if not entries:
                    continue
                cursor = entries[-1][0]
                for item in await self._render(entries):
                    for c in list(self.clients):
                        c.offer(item)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - Redis went away: the clients wait (and catch up), the feed returns
                log.warning("events feed: %s: %s; reading again", type(e).__name__, e)
                for c in list(self.clients):
                    c.lagging = True  # what the pump missed, each client reads for itself
                await asyncio.sleep(1.0)

    async def _since(self, last: tuple[int, int]) -> AsyncIterator[tuple[tuple[int, int], str]]:
        cursor = f"{last[0]}-{last[1]}"
        while True:
            reply = await self.redis.xread({self.keys.events: cursor}, count=READ_COUNT)
            entries = reply[0][1] if reply else []
            for item in await self._render(entries):
                yield item
            if len(entries) < READ_COUNT:
                return
            cursor = entries[-1][0]

    async def _state(self) -> AsyncIterator[str]:
        """Every recent stream's state (status with its reason; its latest tag), for a client with no position."""
        from actors.sink import entry_id
        from schemas.state import StreamState

        ids = await self.redis.zrevrange(self.keys.streams, 0, self.snapshot_streams - 1)
        pipe = self.redis.pipeline(transaction=False)
        for sid in ids:
            pipe.hgetall(self.keys.stream(sid))
        for sid, h in zip(reversed(ids), reversed(await pipe.execute())):  # oldest first, as they came
            if not h:
                continue
            try:
                st = StreamState.from_hash(sid, h)
            except ValueError:
                continue
            yield sse("status", status_data(sid, st.status.value, st.reason, st.error, clips_tagged=st.clips_tagged))
            if st.latest is not None:
                yield sse("tag", {"stream_id": sid, "id": entry_id(st.latest.t0), **st.latest.to_dict()})

    async def feed(self, client: _Client, last_event_id: str | None, disconnected: Callable) -> AsyncIterator[str]:
        """One client's events: from its Last-Event-ID if it gave one that is still kept, else every stream's
        state, then the live feed, each event once and in order."""
        yield f"retry: {RETRY_MS}\n\n"
        tail = parse_id(await self._tail())
        last = parse_id(last_event_id)
        if last is not None and last > tail:
            last = None  # not an id of this feed (a future one, or from another Redis): start afresh
        if last is not None and last < tail:
            first = parse_id(await self._first())
            if first is not None and last < first:  # entries after it may have been trimmed: say so, start afresh
                yield sse("reset", {"reason": "trimmed", "message": "events since your last one are no longer kept; "
                                                                    "here is every stream's state"})
                last = None
        if last is None:  # the client's position is now: what it is told next is what came after
            last = tail
            yield sse("ready", {"resumed": False}, f"{tail[0]}-{tail[1]}")
            async for text in self._state():
                yield text
        else:
            yield sse("ready", {"resumed": True})
        client.lagging = True  # first what was written since `last`, read from Redis; then the queue
        last_beat = time.monotonic()
        while not await disconnected():
            if client.lagging:
                client.lagging = False  # offers from now on are queued; what came before is read from Redis
                async for pid, text in self._since(last):
                    last = pid
                    yield text
                continue
            try:
                pid, text = await asyncio.wait_for(client.queue.get(), timeout=1.0)
            except asyncio.TimeoutError:
                if time.monotonic() - last_beat > KEEPALIVE_S:
                    last_beat = time.monotonic()
                    yield ": keep-alive\n\n"
                continue
            if pid <= last:
                continue  # sent already, while catching up
            last = pid
            yield text
