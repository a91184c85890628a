"""Live events for server-sent-event clients: one Redis pub/sub connection per ingress replica, shared by all
its SSE clients, whatever their number (one connection per client emptied the replica's connection pool past
a hundred of them, and every route of that replica failed). It subscribes to the pattern of every stream's
channel while anyone listens and fans each message out to the clients of that stream, each through a bounded
queue (a client too slow to keep up loses its oldest events, never the others theirs)."""

from __future__ import annotations

import asyncio
import logging

log = logging.getLogger(__name__)

QUEUE_SIZE = 256  # events waiting for one client


class Full(Exception):
    """This replica has as many live clients as it takes."""


class LiveHub:
    def __init__(self, redis, pattern: str, max_clients: int):
        self.redis, self.pattern, self.max_clients = redis, pattern, max_clients
        self.clients: dict[str, set[asyncio.Queue]] = {}  # channel -> its clients' queues
        self._task: asyncio.Task | None = None

    @property
    def count(self) -> int:
        return sum(len(qs) for qs in self.clients.values())

    def join(self, channel: str) -> asyncio.Queue:
        """A queue of the messages published on `channel` from now on. Raises Full past max_clients."""
        if self.count >= self.max_clients:
            raise Full(f"{self.count} live clients already")
        q: asyncio.Queue = asyncio.Queue(QUEUE_SIZE)
        self.clients.setdefault(channel, set()).add(q)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._pump())
        return q

    def leave(self, channel: str, q: asyncio.Queue) -> None:
        qs = self.clients.get(channel)
        if qs is not None:
            qs.discard(q)
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
