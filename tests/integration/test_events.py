"""Server-sent events over real HTTP (the session's Serve app, graph and Redis): the multiplexed feed of every
stream (GET /v1/events) and the per-stream one resume from Last-Event-ID and lose nothing; status events carry
the failure's reason and error."""

from __future__ import annotations

import json
import queue
import threading
import time

import pytest

from actors.sink import entry_id
from bench import wait_for
from bench.sources import StatusServer, UdpSender
from tests.integration.test_api import heldout, wait_status

pytestmark = pytest.mark.slow


class SseReader:
    """A real SSE client (requests, stream=True) reading events in a thread: `next(timeout)` gives the next one as
    {"event", "data", "id"} ("id": the event's id field, None without one).

    It has a connection pool of its own: a feed hung up mid-response must never go back to the pool the test's other
    requests use (the next GET on that socket failed with ResponseNotReady)."""

    def __init__(self, service, path: str, last_event_id: str | None = None):
        import requests

        headers = dict(service.auth, **({"Last-Event-ID": last_event_id} if last_event_id else {}))
        self.http = requests.Session()
        self.r = self.http.get(service.url(path), headers=headers, stream=True, timeout=60)
        assert self.r.status_code == 200, self.r.text
        assert self.r.headers["content-type"].startswith("text/event-stream")
        self.events: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        cur: dict = {}
        try:
            for line in self.r.iter_lines(decode_unicode=True):
                if line.startswith("id:"):
                    cur["id"] = line[3:].strip()
                elif line.startswith("event:"):
                    cur["event"] = line[6:].strip()
                elif line.startswith("data:"):
                    cur["data"] = json.loads(line[5:])
                elif line == "" and "event" in cur:
                    self.events.put({"id": None, **cur})
                    cur = {}
        except Exception:  # noqa: BLE001 - closed by the test
            pass

    def next(self, timeout: float = 30) -> dict:
        return self.events.get(timeout=timeout)

    def until(self, pred, timeout: float = 60) -> list[dict]:
        """Events read until one satisfies `pred` (that one included)."""
        out, deadline = [], time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no such event within {timeout} s; read {[e['event'] for e in out][-20:]}")
            try:
                ev = self.next(left)
            except queue.Empty:
                continue
            out.append(ev)
            if pred(ev):
                return out

    def close(self) -> None:
        """Hang up at once (a close alone waits for the reading thread's recv: up to the next keep-alive)."""
        import socket

        try:
            self.r.raw.connection.sock.shutdown(socket.SHUT_RDWR)
        except (AttributeError, OSError):
            pass
        self.r.close()
        self.http.close()


def of(events: list[dict], sid: str, kind: str = "tag") -> list[dict]:
    return [e for e in events if e["event"] == kind and e["data"].get("stream_id") == sid]


@pytest.fixture(scope="module")
def live_stream(service):
    """A live UDP stream tagging through the session's graph; stopped at the end."""
    with UdpSender(heldout(service)[4], loop=True, reencode=True) as udp:
        assert service.post("/v1/streams", json={"url": udp.url, "stream_id": "ev-live"}).status_code == 202
        wait_status(service, "ev-live", {"running"}, timeout=60)
        yield "ev-live"
        service.delete("/v1/streams/ev-live")
        wait_status(service, "ev-live", {"stopped", "failed"}, timeout=30)


def tags_after(service, sid: str, t0: float) -> list[float]:
    return [t["t0"] for t in service.get(f"/v1/streams/{sid}/tags?since={t0}&limit=1000").json()["tags"]]


def test_the_feed_of_every_stream_resumes_from_last_event_id_and_loses_nothing(service, live_stream):
    """Events carried no id: a reconnecting EventSource lost every tag sent meanwhile."""
    sid = live_stream
    # given a client of the one feed that saw two tags of the stream, then went away
    feed = SseReader(service, "/v1/events")
    seen = feed.until(lambda e: e["event"] == "ready", 30)
    assert seen[-1]["id"] and seen[-1]["data"] == {"resumed": False}, seen[-1]
    while len([e for e in of(seen, sid) if e["id"]]) < 2:
        seen.append(feed.next(60))
    feed.close()
    tags = [e for e in of(seen, sid) if e["id"]]  # live ones (the state sent at first has no id)
    for e in tags:
        assert e["data"]["id"] == entry_id(e["data"]["t0"]) and {"labels", "t1", "subtitle"} <= set(e["data"])
    last = [e for e in seen if e["id"]][-1]
    last_t0 = tags[-1]["data"]["t0"]
    # when three more tags are written while it is away
    wait_for(lambda: len(tags_after(service, sid, last_t0)) >= 3, 60, "three tags written meanwhile")
    missed = tags_after(service, sid, last_t0)
    # then reconnecting with Last-Event-ID gets exactly those first, in order, and then the live ones
    again = SseReader(service, "/v1/events", last_event_id=last["id"])
    got = again.until(lambda e: e["event"] == "tag" and e["data"]["stream_id"] == sid
                      and e["data"]["t0"] >= missed[-1] + 3.0, 60)
    again.close()
    assert got[0]["event"] == "ready" and got[0]["data"] == {"resumed": True}
    assert all(e["id"] for e in got[1:]), "every event after a resume has an id: no state is sent again"
    resumed = [e["data"]["t0"] for e in of(got, sid)]
    assert resumed[:len(missed)] == missed, (resumed, missed)
    assert resumed == tags_after(service, sid, last_t0)[:len(resumed)], "nothing lost, nothing twice"
    ids = [tuple(map(int, e["id"].split("-"))) for e in got[1:]]
    assert ids == sorted(set(ids)), "ids grow"


def test_the_feed_of_one_stream_resumes_from_last_event_id(service, live_stream):
    sid = live_stream
    feed = SseReader(service, f"/v1/streams/{sid}/events")
    seen = feed.until(lambda e: e["event"] == "tag", 60)  # the latest tag, sent at once
    seen += feed.until(lambda e: e["event"] == "tag", 60)  # and a live one
    feed.close()
    assert seen[0]["event"] == "status" and seen[0]["data"]["status"] == "running" and seen[0]["data"]["reason"] == ""
    last = seen[-1]
    assert last["id"] == entry_id(last["data"]["t0"]) == last["data"]["id"], "the id is the tag's entry id"
    wait_for(lambda: len(tags_after(service, sid, last["data"]["t0"])) >= 2, 60, "two tags written meanwhile")
    missed = tags_after(service, sid, last["data"]["t0"])
    again = SseReader(service, f"/v1/streams/{sid}/events", last_event_id=last["id"])
    got = again.until(lambda e: e["event"] == "tag" and e["data"]["t0"] >= missed[-1], 60)
    again.close()
    resumed = [e["data"]["t0"] for e in got if e["event"] == "tag"]
    assert resumed[:len(missed)] == missed, (resumed, missed)


def test_status_events_carry_the_reason_on_both_feeds(service):
    """Status events said "failed" and nothing more: no reason, no error."""
    feed = SseReader(service, "/v1/events")
    feed.until(lambda e: e["event"] == "ready", 30)
    with StatusServer(404) as url:
        assert service.post("/v1/streams", json={"url": url, "stream_id": "ev-fail"}).status_code == 202
        wait_status(service, "ev-fail", {"failed"}, timeout=60)
    ev = of(feed.until(lambda e: e["event"] == "status" and e["data"]["stream_id"] == "ev-fail"
                       and e["data"]["status"] == "failed", 60), "ev-fail", "status")[-1]
    feed.close()
    assert ev["id"] and ev["data"]["reason"] == "not_found" and "404" in ev["data"]["error"], ev
    one = SseReader(service, "/v1/streams/ev-fail/events")
    first = one.next(30)
    one.close()
    assert first["event"] == "status" and first["data"]["status"] == "failed"
    assert first["data"]["reason"] == "not_found" and first["data"]["error"] == ev["data"]["error"]
    # a new client of the one feed is told every recent stream's state, the reason with it
    fresh = SseReader(service, "/v1/events")
    state = fresh.until(lambda e: e["event"] == "status" and e["data"]["stream_id"] == "ev-fail", 30)
    fresh.close()
    assert state[-1]["data"]["reason"] == "not_found" and state[-1]["id"] is None


def test_a_stop_is_a_status_event_with_its_reason(service, live_stream):
    sid = live_stream  # (the module's last test: the stream ends here)
    one, every = SseReader(service, f"/v1/streams/{sid}/events"), SseReader(service, "/v1/events")
    one.next(30)
    every.until(lambda e: e["event"] == "ready", 30)
    assert service.delete(f"/v1/streams/{sid}").status_code == 202
    ev = one.until(lambda e: e["event"] == "status" and e["data"]["status"] == "stopped", 30)[-1]
    ev2 = every.until(lambda e: e["event"] == "status" and e["data"]["stream_id"] == sid
                      and e["data"]["status"] == "stopped", 30)[-1]
    one.close()
    every.close()
    assert ev["data"]["reason"] == ev2["data"]["reason"] == "stopped"
    assert ev["data"]["error"] == ev2["data"]["error"] == "stopped on request"


def test_a_last_event_id_no_longer_kept_or_not_of_this_feed_starts_afresh(service):
    with StatusServer(404) as url:  # something in the feed, whatever ran before
        assert service.post("/v1/streams", json={"url": url, "stream_id": "ev-fresh"}).status_code == 202
        wait_status(service, "ev-fresh", {"failed"}, timeout=60)
    for given, reset in (("1-1", True), ("not-an-id", False), ("99999999999999-0", False)):
        feed = SseReader(service, "/v1/events", last_event_id=given)
        got = feed.until(lambda e: e["event"] == "ready", 30)
        feed.close()
        assert [e["event"] for e in got] == (["reset", "ready"] if reset else ["ready"]), (given, got)
        assert got[-1]["data"] == {"resumed": False} and got[-1]["id"], "a fresh position, and the state again"


def test_a_client_that_falls_behind_catches_up_from_redis_and_loses_nothing():
    """A client a whole queue behind is neither cut off nor thinned: it reads what it missed from vbs:events."""
    import asyncio
    import uuid

    from actors.keys import Keys, redis_client
    from deployments.live import QUEUE_SIZE, EventHub, Seats
    from tests.integration.conftest import REDIS_URL

    keys, sync = Keys(f"vbsev{uuid.uuid4().hex[:8]}"), redis_client(REDIS_URL)
    n = QUEUE_SIZE * 2 + 10

    async def main() -> list[dict]:
        r = redis_client(REDIS_URL, asyncio=True)
        hub = EventHub(r, keys, Seats(4))
        client = hub.join()

        async def connected() -> bool:
            return False

        feed = hub.feed(client, None, connected)
        while "event: ready" not in await feed.__anext__():
            pass
        sync.xadd(keys.events, {"stream": "s", "status": "running", "reason": "", "error": "0"})
        for _ in range(300):  # the hub's reader has started (and offered the first)
            if client.queue.qsize():
                break
            await asyncio.sleep(0.1)
        for i in range(1, n):  # written while the client reads nothing: more than its queue holds
            sync.xadd(keys.events, {"stream": "s", "status": "running", "reason": "", "error": str(i)})
        for _ in range(300):  # the hub offers them meanwhile, more than the queue holds
            if client.lagging:
                break
            await asyncio.sleep(0.1)
        assert client.lagging, "the queue overflowed"
        got = []
        while len(got) < n:
            text = await asyncio.wait_for(feed.__anext__(), 10)
            if text.startswith("id:"):
                got.append(json.loads(text.split("data: ", 1)[1]))
        await feed.aclose()
        hub.leave(client)
        for _ in range(300):  # the pump ends with its last client
            if hub._task.done():
                break
            await asyncio.sleep(0.1)
        assert hub._task.done() and hub.seats.taken == 0
        return got

    try:
        got = asyncio.run(main())
    finally:
        sync.delete(keys.events)
    assert [e["error"] for e in got] == [str(i) for i in range(n)]
