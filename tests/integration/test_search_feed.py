"""The search index kept from Redis (real Redis, no Ray): the sink keeps each clip's code in its tag entry, a
rebuild reads them all, the feed adds what `vbs:events` announces, and nothing stale is given out."""

from __future__ import annotations

import uuid

import numpy as np
import pytest

from actors.keys import Keys, redis_client
from actors.search import ClipIndex, IndexFeed, shard_of
from actors.sink import Sink, entry_id
from schemas.state import TagResult
from videobert.retrieval import quantise

REDIS_URL = "redis://127.0.0.1:6379/0"
DIM = 32


@pytest.fixture
def sink():
    keys = Keys(f"vbssrch{uuid.uuid4().hex[:8]}")
    r = redis_client(REDIS_URL)
    yield Sink(r, keys, tags_maxlen=1000, events_maxlen=100)
    for k in r.scan_iter(f"{keys.prefix}:*"):
        r.delete(k)


def vec(seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    return x / np.linalg.norm(x)


def row(t0: float, verb: str = "grow") -> TagResult:
    return TagResult(t0=t0, t1=t0 + 1.5, labels={"verb": [{"label": verb, "score": 0.9}]}, alignment=None,
                     subtitle=f"{verb} it")


def start(sink: Sink, sid: str) -> str:
    token = uuid.uuid4().hex
    sink.redis.hset(sink.keys.stream(sid), mapping={"token": token, "status": "running"})
    sink.redis.zadd(sink.keys.streams, {sid: 1})
    return token


def write(sink: Sink, sid: str, token: str, t0: float, seed: int, verb: str = "grow") -> None:
    assert sink.commit(sid, token, row(t0, verb), quantise(vec(seed)).tobytes())


def test_a_rebuild_then_the_live_feed_find_the_nearest_clip_of_any_stream(sink):
    a, b = start(sink, "cam-a"), start(sink, "cam-b")
    for i in range(5):
        write(sink, "cam-a", a, 1.5 * i, seed=i)
    fields = sink.redis.xrange(sink.keys.tags("cam-a"))[0][1]
    assert set(fields) == {"data", "at", "vec"} and len(fields["vec"]) == 44  # 32 int8 in base64
    feed = IndexFeed(sink.redis, sink.keys, ClipIndex(DIM))
    assert feed.rebuild() == 5
    top = feed.hits(feed.index.search(vec(3), 3), 3)
    assert top[0]["stream_id"] == "cam-a" and top[0]["t0"] == 4.5 and top[0]["score"] > 0.98
    assert top[0]["labels"] == {"verb": {"label": "grow", "score": 0.9}} and top[0]["subtitle"] == "grow it"
    # written after the rebuild: the feed reads them from vbs:events
    for i in range(3):
        write(sink, "cam-b", b, 1.5 * i, seed=100 + i, verb="drop")
    assert feed.poll(block_ms=100) == 3 and feed.poll(block_ms=10) == 0
    top = feed.hits(feed.index.search(vec(101), 1), 1)
    assert (top[0]["stream_id"], top[0]["entry"]) == ("cam-b", entry_id(1.5))
    assert {h["stream_id"] for h in feed.hits(feed.index.search(vec(101), 10, stream="cam-a"), 10)} == {"cam-a"}


def test_a_trimmed_entry_is_not_given_out_and_a_reused_stream_id_forgets_its_old_clips(sink):
    a = start(sink, "cam-c")
    for i in range(4):
        write(sink, "cam-c", a, 1.5 * i, seed=10 + i)
    feed = IndexFeed(sink.redis, sink.keys, ClipIndex(DIM))
    feed.rebuild()
    sink.redis.xdel(sink.keys.tags("cam-c"), entry_id(3.0))  # trimmed since it was indexed
    assert entry_id(3.0) not in [h["entry"] for h in feed.hits(feed.index.search(vec(12), 4), 4)]
    # the id is used again: the supervisor deletes its old tags, the new stream starts at 0 s
    sink.redis.delete(sink.keys.tags("cam-c"))
    a2 = start(sink, "cam-c")
    write(sink, "cam-c", a2, 0.0, seed=50)
    assert feed.poll(block_ms=100) == 1
    assert len(feed.index) == 1 and feed.hits(feed.index.search(vec(50), 1), 1)[0]["score"] > 0.98


def test_events_trimmed_before_they_were_read_are_a_gap_that_a_rebuild_mends(sink):
    a = start(sink, "cam-d")
    feed = IndexFeed(sink.redis, sink.keys, ClipIndex(DIM))
    write(sink, "cam-d", a, 0.0, seed=1)
    feed.rebuild()
    assert not feed.gap()
    for i in range(1, 400):  # events_maxlen 100: the cursor's event and many after it are trimmed away
        write(sink, "cam-d", a, 1.5 * i, seed=i)
    sink.redis.xtrim(sink.keys.events, maxlen=100, approximate=False)
    assert feed.gap()
    assert feed.rebuild() == 400 and not feed.gap()


def test_an_unreadable_vector_is_counted_and_skipped_and_entries_without_one_are_ignored(sink):
    a = start(sink, "cam-e")
    write(sink, "cam-e", a, 0.0, seed=1)
    assert sink.commit("cam-e", a, row(1.5))  # no vector (a stage that gave none)
    sink.redis.xadd(sink.keys.tags("cam-e"), {"data": row(3.0).to_json(), "at": "1", "vec": "%%%"}, id=entry_id(3.0))
    feed = IndexFeed(sink.redis, sink.keys, ClipIndex(DIM))
    assert feed.rebuild() == 1 and feed.bad_vectors == 1


def test_shards_split_the_streams_between_them(sink):
    ids = [f"cam-{i}" for i in range(40)]
    for i, sid in enumerate(ids):
        write(sink, sid, start(sink, sid), 0.0, seed=i)
    feeds = [IndexFeed(sink.redis, sink.keys, ClipIndex(DIM), shard=i, shards=3) for i in range(3)]
    sizes = [f.rebuild() for f in feeds]
    assert sum(sizes) == 40 and min(sizes) > 0
    for f in feeds:
        assert {f.index.streams[n] for n in f.index.stream.tolist()} == {s for s in ids if shard_of(s, 3) == f.shard}
