"""The sink's Redis scripts against a real Redis: idempotent results, fencing by ownership token, endings
that ack the job and dead-letter failures in one step."""

from __future__ import annotations

import json
import uuid

import pytest

from actors.keys import Keys, redis_client
from actors.sink import SCRIPTS, Fenced, Sink, entry_id
from schemas.state import StreamState, TagResult
from schemas.streams import FailureReason, StreamStatus

REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture
def sink():
    keys = Keys(f"vbsunit{uuid.uuid4().hex[:8]}")
    r = redis_client(REDIS_URL)
    r.xgroup_create(keys.ingest, keys.group, id="0", mkstream=True)
    yield Sink(r, keys, tags_maxlen=100, dead_maxlen=100)
    for k in r.scan_iter(f"{keys.prefix}:*"):
        r.delete(k)


def row(t0: float) -> TagResult:
    return TagResult(t0=t0, t1=t0 + 1.5, labels={"verb": [{"label": "grow", "score": 0.9}]}, alignment=None,
                     subtitle="")


def own(sink: Sink, sid: str) -> str:
    token = uuid.uuid4().hex
    sink.redis.hset(sink.keys.stream(sid), mapping={"token": token, "status": "running"})
    return token


def test_a_replayed_clip_is_never_written_twice(sink):
    token = own(sink, "a")
    assert [sink.commit("a", token, row(t)) for t in (0.0, 1.5, 3.0)] == [True, True, True]
    # a resumed owner replays 1.5 and 3.0, then goes on
    assert [sink.commit("a", token, row(t)) for t in (1.5, 3.0, 4.5)] == [False, False, True]
    ids = [eid for eid, _ in sink.redis.xrange(sink.keys.tags("a"))]
    assert ids == [entry_id(t) for t in (0.0, 1.5, 3.0, 4.5)] and ids[0] == "0-1"
    h = sink.redis.hgetall(sink.keys.stream("a"))
    assert h["clips_tagged"] == "4" and h["last_t0"] == "4.5" and json.loads(h["latest"])["t0"] == 4.5


def test_a_fenced_owner_can_write_nothing(sink):
    old = own(sink, "b")
    sink.commit("b", old, row(0.0))
    new = own(sink, "b")  # the supervisor handed the stream to someone else
    with pytest.raises(Fenced):
        sink.commit("b", old, row(1.5))
    with pytest.raises(Fenced):
        sink.heartbeat("b", old)
    with pytest.raises(Fenced):
        sink.finish("b", old, StreamStatus.failed, reason=FailureReason.internal, error="y")
    assert sink.commit("b", new, row(1.5))
    assert sink.redis.xlen(sink.keys.tags("b")) == 2


def test_finishing_acks_the_job_and_dead_letters_a_failure(sink):
    entry = sink.redis.xadd(sink.keys.ingest, {"url": "udp://127.0.0.1:5000"})
    sink.redis.xreadgroup(sink.keys.group, "t", {sink.keys.ingest: ">"})
    token = own(sink, "c")
    with sink.redis.pubsub() as ps:
        ps.subscribe(sink.keys.live("c"))
        ps.get_message(timeout=1)
        sink.finish("c", token, StreamStatus.failed, entry=entry, reason=FailureReason.not_found, error="404",
                    url="udp://x")
        msg = ps.get_message(timeout=2)
    # the live status event carries its reason (it carried the status alone), and so does vbs:events
    assert json.loads(msg["data"]) == {"event": "status", "status": "failed", "reason": "not_found", "error": "404"}
    assert [f for _, f in sink.redis.xrange(sink.keys.events)][-1] == \
        {"stream": "c", "status": "failed", "reason": "not_found", "error": "404"}
    assert sink.redis.xpending(sink.keys.ingest, sink.keys.group)["pending"] == 0
    (_, dead), = sink.redis.xrange(sink.keys.dead)
    assert dead["reason"] == "not_found" and dead["stream_id"] == "c"
    h = sink.redis.hgetall(sink.keys.stream("c"))
    assert h["status"] == "failed" and h["token"] == ""
    assert sink.redis.hget(sink.keys.counters, "failures:not_found") == "1"
    with pytest.raises(ValueError, match="final status"):
        sink.finish("c", token, StreamStatus.running)


def test_the_heartbeat_carries_the_stop_request_and_adds_the_counts(sink):
    token = own(sink, "d")
    assert sink.heartbeat("d", token, {"frames_decoded": 10, "clips_dropped": 1}, owner="dec-0") is False
    assert sink.heartbeat("d", token, {"frames_decoded": 5}) is False
    sink.redis.hset(sink.keys.stream("d"), "stop", 1)
    assert sink.heartbeat("d", token) is True
    st = StreamState.from_hash("d", sink.redis.hgetall(sink.keys.stream("d")))
    assert (st.frames_decoded, st.clips_dropped, st.owner, st.stop) == (15, 1, "dec-0", True)
    with pytest.raises(ValueError, match="not fields of the stream state: colour"):
        sink.heartbeat("d", token, colour="red")
    with pytest.raises(ValueError, match="not counters"):
        sink.heartbeat("d", token, {"attempts": 1})


def test_results_are_published_live(sink):
    token = own(sink, "e")
    with sink.redis.pubsub() as ps:
        ps.subscribe(sink.keys.live("e"))
        ps.get_message(timeout=1)
        sink.commit("e", token, row(0.0))
        msg = ps.get_message(timeout=2)
    assert json.loads(msg["data"])["data"]["t0"] == 0.0


def test_a_stream_released_at_shutdown_is_queued_for_whoever_comes_next(sink):
    token = own(sink, "f")
    sink.commit("f", token, row(0.0))
    assert sink.release("f", token)
    h = sink.redis.hgetall(sink.keys.stream("f"))
    assert h["status"] == "queued" and h["token"] == "" and h["owner"] == "" and h["last_t0"] == "0.0"
    assert not sink.release("f", token)


def test_the_scripts_write_only_stream_state_fields_and_declared_statuses():
    import re

    fields = set(StreamState.model_fields)
    for name, script in SCRIPTS.items():
        for cmd, args in re.findall(r"redis\.call\('(HSET|HINCRBY)', KEYS\[1\], ([^)]*)\)", script):
            tokens = [t.strip() for t in args.replace("\n", " ").split(",")]
            names = tokens[0::2] if cmd == "HSET" else tokens[:1]
            literal = [t.strip("'") for t in names if t.startswith("'")]  # the rest come from ARGV, named in Python
            assert set(literal) <= fields, (name, literal)
        for status in re.findall(r"'status', '([a-z]+)'|\"status\":\"([a-z]+)\"", script):
            assert {s for s in status if s} <= {s.value for s in StreamStatus}, (name, status)
        assert "$" not in script, f"{name}: a status left unsubstituted"


def test_a_commit_that_redis_refuses_is_an_error_not_a_replay(tmp_path):
    """Under OOM the XADD fails inside the commit script; that used to read as "already written" (a clip lost
    silently). Now it raises, like any other failed write."""
    import redis

    from tests.integration.conftest import RedisServer

    with RedisServer(tmp_path, "--maxmemory-policy", "noeviction") as url:
        r = redis_client(url)
        sink = Sink(r, Keys("vbsoom"))
        token = own(sink, "o")
        assert sink.commit("o", token, row(0.0))
        r.config_set("maxmemory", "1")  # the server is now out of memory for every write
        with pytest.raises(redis.ResponseError, match="maxmemory"):
            sink.commit("o", token, row(1.5))
        assert r.xlen(sink.keys.tags("o")) == 1


def test_an_ended_stream_leaves_no_raw_job_and_its_keys_expire(sink):
    """vbs:ingest kept every raw URL, credentials included, after the ack; stream hashes and tags never expired."""
    sink.ended_ttl_s = 3600
    entry = sink.redis.xadd(sink.keys.ingest, {"url": "rtsp://admin:hunter2@127.0.0.1/cam"})
    sink.redis.xreadgroup(sink.keys.group, "t", {sink.keys.ingest: ">"})
    token = own(sink, "g")
    sink.commit("g", token, row(0.0))
    sink.finish("g", token, StreamStatus.finished, entry=entry, url="rtsp://admin:***@127.0.0.1/cam")
    assert sink.redis.xrange(sink.keys.ingest) == [], "the acked job's entry is deleted"
    assert 3590 <= sink.redis.ttl(sink.keys.stream("g")) <= 3600 and 3590 <= sink.redis.ttl(sink.keys.tags("g")) <= 3600
    every = {k: sink.redis.type(k) for k in sink.redis.scan_iter(f"{sink.keys.prefix}:*")}
    dump = " ".join(str(sink.redis.hgetall(k) if t == "hash" else sink.redis.xrange(k) if t == "stream" else "")
                    for k, t in every.items())
    assert "hunter2" not in dump
