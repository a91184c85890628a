"""Stream thumbnails (GET /v1/streams/{id}/snapshot.jpg): made from a clip's frame only while someone asks, at most
once a second, kept in Redis with a TTL; a 404 in the error envelope until there is one."""

from __future__ import annotations

import io
import uuid

import av
import numpy as np
import pytest

from actors.keys import Keys, redis_client
from actors.snapshot import CHECK_EVERY_S, WATCH_TTL_S, SnapshotTap
from actors.source import StreamClip
from bench import wait_for
from bench.sources import UdpSender
from bench.streams import NullPipeline
from tests.integration.conftest import REDIS_URL
from tests.integration.test_api import heldout, wait_status


def clip(i: int) -> StreamClip:
    frames = np.zeros((8, 64, 64, 3), np.uint8)
    frames[-1, :, : 8 * (i % 8 + 1)] = 200  # the last frame, whose picture the snapshot is
    return StreamClip(i, 1.5 * i, 1.5 * i + 1.5, frames, "", None)


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_the_tap_encodes_only_while_watched_and_at_most_once_a_second():
    r, keys, clock = redis_client(REDIS_URL), Keys(f"vbssnap{uuid.uuid4().hex[:8]}"), Clock()
    tap = SnapshotTap(NullPipeline(), "s", r, keys, width=320, ttl_s=30, clock=clock)
    try:
        # given nobody watches: clips pass, nothing is encoded
        for i in range(5):
            assert tap.submit(clip(i), [], None)[0] == 0
            clock.t += 0.5
        assert tap.encoded == 0 and not r.exists(keys.snapshot("s"))
        # when someone watches: the next check encodes the clip's last frame, once a second at most
        r.set(keys.watched("s"), 1, ex=WATCH_TTL_S)
        clock.t += CHECK_EVERY_S
        for i in range(5, 10):
            tap.submit(clip(i), [], None)
            clock.t += 0.1
        assert tap.encoded == 1
        jpeg = redis_client(REDIS_URL, decode=False).get(keys.snapshot("s"))
        with av.open(io.BytesIO(jpeg)) as c:
            pic = next(c.decode(video=0)).to_ndarray(format="rgb24")
        assert pic.shape == (64, 64, 3) and pic[:, :40].mean() > 150 and pic[:, 56:].mean() < 50, "clip 5's last frame"
        assert 0 < r.ttl(keys.snapshot("s")) <= 30
        clock.t += CHECK_EVERY_S
        tap.submit(clip(10), [], None)
        assert tap.encoded == 2
        # then once nobody watches any more, no more
        r.delete(keys.watched("s"))
        for i in range(11, 15):
            clock.t += CHECK_EVERY_S
            tap.submit(clip(i), [], None)
        assert tap.encoded == 2
    finally:
        for k in r.scan_iter(f"{keys.prefix}:*"):
            r.delete(k)


def test_a_redis_that_fails_costs_the_thumbnail_not_the_clip():
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    r = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))  # nobody there
    tap = SnapshotTap(NullPipeline(), "s", r, Keys("vbsnone"))
    assert tap.submit(clip(0), [], None)[0] == 0 and tap.encoded == 0


@pytest.mark.slow
def test_a_live_stream_has_a_snapshot_only_once_someone_asks(service):
    raw = redis_client(service.settings.redis.url, decode=False)
    keys = Keys(service.settings.redis.prefix)
    r = service.get("/v1/streams/no-such-stream/snapshot.jpg")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    with UdpSender(heldout(service)[6], loop=True, reencode=True) as udp:
        assert service.post("/v1/streams", json={"url": udp.url, "stream_id": "snap-live"}).status_code == 202
        wait_status(service, "snap-live", {"running"}, timeout=60)
        # given a stream that tagged three clips while nobody looked: no picture was made
        wait_for(lambda: service.get("/v1/streams/snap-live").json()["clips_tagged"] >= 3, 60, "three clips tagged")
        assert not raw.exists(keys.snapshot("snap-live")), "a snapshot was encoded though nobody asked"
        # when someone asks: first a 404 in the error envelope (nothing yet), then the picture
        first = service.get("/v1/streams/snap-live/snapshot.jpg")
        assert first.status_code == 404 and first.json()["error"]["code"] == "no_snapshot", first.text
        assert first.headers["Retry-After"] == "1"
        got = wait_for(lambda: (x := service.get("/v1/streams/snap-live/snapshot.jpg")).status_code == 200 and x,
                       30, "a snapshot")
        assert got.headers["content-type"] == "image/jpeg" and got.headers["cache-control"] == "no-store"
        with av.open(io.BytesIO(got.content)) as c:
            frame = next(c.decode(video=0))
        assert (frame.width, frame.height) == (64, 64) and frame.width <= 320  # the clip's frame, as the model saw it
        assert frame.to_ndarray(format="rgb24").std() > 5, "a picture, not a blank"
        ttl = raw.ttl(keys.snapshot("snap-live"))
        assert 0 < ttl <= service.settings.decoder.snapshot_ttl_s
        assert service.get("/v1/streams/snap-live/snapshot.jpg", key=False).status_code == 401
        service.delete("/v1/streams/snap-live")
        wait_status(service, "snap-live", {"stopped"}, timeout=30)
