"""The one Redis client factory: the actors' sync client and the API's asyncio client ride out the same Redis
restart (the API's client used to be built apart, without the retry policy, and gave up after a few seconds)."""

from __future__ import annotations

import asyncio
import threading
import time

from actors.keys import redis_client
from tests.integration.conftest import RedisServer

OUTAGE_S = 10.0


def test_sync_and_async_clients_ride_out_a_redis_restart(tmp_path):
    server = RedisServer(tmp_path)
    url = server.start()
    try:
        sync, aio = redis_client(url), redis_client(url, asyncio=True)
        assert sync.set("k", "before")

        async def both_answer():
            assert await aio.get("k") == "before"
            server.stop()
            restart = threading.Timer(OUTAGE_S, server.start)
            restart.start()
            t = time.monotonic()
            try:
                value = await aio.get("k")  # retried with back-off until the server is back
            finally:
                restart.join()
            return value, time.monotonic() - t

        value, waited = asyncio.run(both_answer())
        assert value is None and waited >= OUTAGE_S - 1  # a fresh server (nothing on disk): the key is gone
        assert sync.set("k", "after") and sync.get("k") == "after"
    finally:
        server.stop()
