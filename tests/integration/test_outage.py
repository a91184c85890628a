"""A Redis outage under running streams (a redis-server of the test's own, append-only so that a restart keeps
its data): streams hold their place and go on when Redis is back; past `redis_outage_s` a stream fails with a
recorded reason; the supervisor reclaims nothing for the silence the outage caused."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from actors.assignment import Assignment
from actors.keys import Keys, redis_client
from actors.pipeline import LocalPipeline
from actors.runner import StreamRunner
from actors.sink import Sink
from actors.stages import FusionStage, LanguageStage, VideoEncoderStage
from schemas.config import DecoderSettings
from schemas.state import StreamState, TagResult
from schemas.streams import FailureReason, IngestJob, StreamStatus
from tests.integration.conftest import RedisServer
from videobert.reader import read_video

pytestmark = pytest.mark.faults

OUTAGE_S = 30.0  # longer than the Redis client's own retries (about 21 s): the runner's ride-out is what holds


@pytest.fixture(scope="module")
def stages(trained_model):
    return VideoEncoderStage(trained_model), LanguageStage(), FusionStage(trained_model)


class PacedPipeline(LocalPipeline):
    """The stages in-process, a little slower than they are, so that the outage falls mid-stream."""

    def result(self, handle, timeout):
        time.sleep(0.3)
        return handle


def start(server_url: str, stages, video, **settings) -> tuple[StreamRunner, threading.Thread]:
    r, keys = redis_client(server_url), Keys(f"vbsout{uuid.uuid4().hex[:6]}")
    sid, token = "outage-1", uuid.uuid4().hex
    r.hset(keys.stream(sid), mapping=StreamState(stream_id=sid, token=token, status="starting").to_hash())
    run = StreamRunner(Assignment(sid, IngestJob(url=str(video)), "", str(video), token=token),
                       PacedPipeline(*stages), Sink(r, keys), stages[0].spec,
                       DecoderSettings(max_in_flight=2, **settings), r, keys)
    t = threading.Thread(target=run.run)
    t.start()
    return run, t


def wait_for(cond, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def video(trained_model):
    return max((trained_model / "data" / "heldout").glob("*.mp4"), key=lambda p: p.stat().st_size)


def test_a_file_stream_rides_out_a_redis_outage_and_loses_no_clip(tmp_path, stages, video):
    """Redis stopped under a running file stream: it ended failed/internal (a commit's ConnectionError was
    taken for a model error, and the status write on the reconnect path raised out of the runner)."""
    server = RedisServer(tmp_path, persist=True)
    url = server.start()
    try:
        run, t = start(url, stages, video)
        wait_for(lambda: run.counters.clips >= 3, 120)
        server.stop()
        time.sleep(OUTAGE_S)
        server.start()
        t.join(300)
        assert not t.is_alive()
        r = redis_client(url)
        st = StreamState.from_hash("outage-1", r.hgetall(run.keys.stream("outage-1")))
        assert st.status == StreamStatus.finished, (st.status, st.reason, st.error)
        t0s = [TagResult.model_validate_json(f["data"]).t0 for _, f in r.xrange(run.keys.tags("outage-1"))]
        expected = [c.t0 for c in read_video(video, stages[0].spec, with_text=False).clips]
        assert t0s == expected, "every clip once, none lost and none twice"
    finally:
        server.stop()


def test_an_outage_past_the_limit_fails_the_stream_with_a_recorded_reason(tmp_path, stages, video):
    server = RedisServer(tmp_path, persist=True)
    url = server.start()
    try:
        run, t = start(url, stages, video, redis_outage_s=1.0)
        wait_for(lambda: run.counters.clips >= 2, 120)
        server.stop()
        time.sleep(OUTAGE_S)
        server.start()  # back: the failure can be written
        t.join(300)
        st = StreamState.from_hash("outage-1", redis_client(url).hgetall(run.keys.stream("outage-1")))
        assert st.status == StreamStatus.failed and st.reason == FailureReason.redis_unavailable, st
        assert "Redis took no write for" in st.error
    finally:
        server.stop()


def test_the_supervisor_reclaims_nothing_for_the_silence_an_outage_caused(tmp_path):
    import redis

    from actors.supervisor import Supervisor
    from schemas.config import Settings
    from tests.integration.test_supervisor import RecordingDecoder

    server = RedisServer(tmp_path, persist=True)
    url = server.start()
    try:
        settings = Settings.model_validate({"redis": {"url": url, "prefix": "vbsgrace"},
                                            "url_policy": {"allow_loopback": True},
                                            "supervisor": {"lease_s": 2.0}})
        dec = RecordingDecoder()
        s = Supervisor(settings, {"dec-0": dec}, call=lambda h, m, *a, timeout=None: getattr(h, m)(*a))
        s.redis.xadd(s.keys.ingest, {"url": "udp://127.0.0.1:5000", "stream_id": "cam-1"})
        s.tick()
        assert [a.stream_id for a in dec.handed] == ["cam-1"]
        s.held["cam-1"].since -= 60  # long assigned, and its last heartbeat a minute old
        s.redis.hset(s.keys.stream("cam-1"), "heartbeat", f"{time.time() - 60:.3f}")
        server.stop()
        with pytest.raises(redis.ConnectionError):
            s.tick()
        server.start()
        s.tick()  # Redis is back: the old heartbeat is the outage's doing
        assert len(dec.handed) == 1 and s.held["cam-1"].attempts == 0
        time.sleep(settings.supervisor.lease_s + 0.5)
        s.tick()  # a lease later, still silent: now it is reclaimed
        assert len(dec.handed) == 2 and s.held["cam-1"].attempts == 1
    finally:
        server.stop()
