"""The supervisor as a plain class against a real Redis, with decoders stubbed to record what they are handed:
what is checked at intake (once, before any decoder sees the stream) and what an assignment carries."""

from __future__ import annotations

import json
import time
import uuid

import pytest

from actors.keys import redis_client
from actors.supervisor import Supervisor
from schemas.config import Settings
from schemas.state import StreamState
from schemas.streams import FailureReason, LabelSet, StreamStatus
from actors.supervisor import _text
from tests.integration.conftest import REDIS_URL


class RecordingDecoder:
    """Injected stand-in for a decoder actor: takes every stream, runs none."""

    def __init__(self):
        self.handed = []

    def start_stream(self, a):
        self.handed.append(a)
        return True

    def active(self):
        return {a.stream_id: a.token for a in self.handed}


@pytest.fixture
def sup(tmp_path):
    prefix = f"vbssup{uuid.uuid4().hex[:8]}"
    settings = Settings.model_validate({"redis": {"url": REDIS_URL, "prefix": prefix},
                                        "url_policy": {"media_root": str(tmp_path), "allow_loopback": True}})
    dec = RecordingDecoder()
    s = Supervisor(settings, {"dec-0": dec}, call=lambda h, method, *a, timeout=None: getattr(h, method)(*a))
    yield s, dec
    r = redis_client(REDIS_URL)
    for k in r.scan_iter(f"{prefix}:*"):
        r.delete(k)


def push(s: Supervisor, **fields) -> str:
    return s.redis.xadd(s.keys.ingest, {k: json.dumps(v) if k == "options" else v for k, v in fields.items()})


def state(s: Supervisor, sid: str) -> StreamState:
    return StreamState.from_hash(sid, s.redis.hgetall(s.keys.stream(sid)))


def test_label_sets_are_checked_once_at_intake_before_any_decoder_sees_the_stream(sup, tmp_path):
    s, dec = sup
    (tmp_path / "v.mp4").write_bytes(b"")
    push(s, url=str(tmp_path / "v.mp4"), stream_id="bad-labels",
         options={"template": "watch me [MASK] it", "labels": {"verb": ["grow", "photosynthesize"]}})
    push(s, url=str(tmp_path / "v.mp4"), stream_id="good-labels",
         options={"template": "watch me [MASK] it", "labels": {"verb": ["grow", "shrink"]}})
    s.tick()
    bad = state(s, "bad-labels")
    assert bad.status == StreamStatus.failed and bad.reason == FailureReason.bad_options
    assert "'photosynthesize' of slot 'verb' is not a single WordPiece token" in bad.error
    assert [a.stream_id for a in dec.handed] == ["good-labels"], "a refused stream never reaches a decoder"
    (a,) = dec.handed
    assert a.job.options.label_set == LabelSet(template="watch me [MASK] it", slots=(("verb", ("grow", "shrink")),))
    assert a.token and a.token == state(s, "good-labels").token
    dead = [f for _, f in s.redis.xrange(s.keys.dead)]
    assert [d["reason"] for d in dead] == ["bad_options"] and dead[0]["stream_id"] == "bad-labels"


def test_a_template_that_does_not_fit_the_default_label_sets_is_refused(sup, tmp_path):
    s, dec = sup
    (tmp_path / "v.mp4").write_bytes(b"")
    push(s, url=str(tmp_path / "v.mp4"), stream_id="one-mask", options={"template": "watch me [MASK] it"})
    s.tick()
    st = state(s, "one-mask")
    assert st.reason == FailureReason.bad_options and "1 [MASK] slot(s) but 2 label set(s)" in st.error
    assert dec.handed == []


def test_the_url_is_redacted_once_and_carried(sup):
    s, dec = sup
    push(s, url="rtsp://admin:hunter2@127.0.0.1:8554/cam", stream_id="cam-1")
    s.tick()
    (a,) = dec.handed
    assert a.url.endswith("hunter2@127.0.0.1:8554/cam"), "the decoder opens the real URL"
    assert a.safe_url == "rtsp://admin:***@127.0.0.1:8554/cam" == state(s, "cam-1").url
    assert "hunter2" not in json.dumps(s.redis.hgetall(s.keys.stream("cam-1")))


def test_a_stream_id_with_a_trailing_newline_is_malformed(sup):
    s, dec = sup
    entry = push(s, url="udp://127.0.0.1:5000", stream_id="cam-1\n")
    s.tick()
    (dead,) = [f for _, f in s.redis.xrange(s.keys.dead)]
    assert dead["reason"] == "malformed_job" and dead["entry"] == entry and "stream_id" in dead["error"]
    assert dec.handed == []


def restart(s: Supervisor, dec: RecordingDecoder) -> Supervisor:
    """A new incarnation of the supervisor on the same Redis (its predecessor gone without a word)."""
    return Supervisor(s.settings, {"dec-0": dec}, call=s.call)


def dead_letters(s: Supervisor) -> list[dict]:
    return [f for _, f in s.redis.xrange(s.keys.dead)]


def test_no_entry_whatever_its_bytes_stops_the_intake(sup, tmp_path):
    """100,000 nested [ raised RecursionError and a field that is not UTF-8 raised UnicodeDecodeError inside
    XREADGROUP: the tick died mid-batch, the jobs after it stayed pending, and every restart raised again."""
    s, dec = sup
    (tmp_path / "v.mp4").write_bytes(b"")
    nested = s.redis.xadd(s.keys.ingest, {"url": "x", "options": "[" * 10_000})  # within the size limit
    very = s.redis.xadd(s.keys.ingest, {"url": "x", "options": "[" * 100_000})
    binary = s.raw.xadd(s.keys.ingest, {b"url": b"\xff\xfe not utf-8", b"stream_id": b"bin-1"})
    huge = s.redis.xadd(s.keys.ingest, {"url": "x", "options": '{"template": "' + "a" * 100_000 + '"}'})
    after = push(s, url=str(tmp_path / "v.mp4"), stream_id="after-them")
    s.tick()
    assert [e for e, _ in s.redis.xrange(s.keys.ingest)] == [after], "malformed jobs are not kept"
    reasons = {d["entry"]: (d["reason"], d["error"]) for d in dead_letters(s)}
    assert reasons[nested] == ("malformed_job", "options nests too deeply")
    assert reasons[very] == ("malformed_job", "options is longer than 16384 bytes")
    assert reasons[_text(binary)] == ("malformed_job", "'url' is not UTF-8")
    assert reasons[huge][0] == "malformed_job" and "longer than" in reasons[huge][1]
    assert [a.stream_id for a in dec.handed] == ["after-them"]
    assert s.redis.xpending(s.keys.ingest, s.keys.group)["pending"] == 1  # only the running stream's job
    again = restart(s, dec)  # a restart meets none of them again
    assert set(again.held) == {"after-them"}


def test_a_job_read_but_never_recorded_is_taken_by_the_next_incarnation(sup, tmp_path):
    """The supervisor stopped between XREADGROUP and writing the stream's state: its job stayed pending and the
    next start acked it without running it (a job lost silently)."""
    s, dec = sup
    (tmp_path / "v.mp4").write_bytes(b"")
    entry = push(s, url=str(tmp_path / "v.mp4"), stream_id="orphan")
    s.redis.xreadgroup(s.keys.group, "supervisor-gone", {s.keys.ingest: ">"})  # read, then the process died
    assert s.redis.hgetall(s.keys.stream("orphan")) == {}
    s2 = restart(s, dec)
    assert [a.stream_id for a in dec.handed] == ["orphan"] and "orphan" in s2.held
    assert state(s2, "orphan").entry == entry and entry in {p["message_id"] for p in s2.redis.xpending_range(
        s2.keys.ingest, s2.keys.group, "-", "+", 10)}, "still pending while it runs"
    consumers = {c["name"] for c in s2.redis.xinfo_consumers(s2.keys.ingest, s2.keys.group)}
    assert consumers == {s2.consumer}, "one consumer per incarnation; the dead ones are forgotten"
    assert s2.consumer != s.consumer


def test_a_job_delivered_too_often_without_being_taken_is_a_poison_pill(sup, tmp_path):
    s, dec = sup
    (tmp_path / "v.mp4").write_bytes(b"")
    entry = push(s, url=str(tmp_path / "v.mp4"), stream_id="pill")
    s.redis.xreadgroup(s.keys.group, "supervisor-gone", {s.keys.ingest: ">"})
    # as if it had crashed the supervisor at every start so far
    s.redis.execute_command("XCLAIM", s.keys.ingest, s.keys.group, "supervisor-gone", 0, entry, "RETRYCOUNT",
                            s.settings.supervisor.max_deliveries)
    restart(s, dec)
    (d,) = dead_letters(s)
    assert d["reason"] == FailureReason.poison_job and d["entry"] == entry and "delivered 6 times" in d["error"]
    assert dec.handed == [] and s.redis.xpending(s.keys.ingest, s.keys.group)["pending"] == 0


def test_an_entry_whose_handling_fails_is_retried_then_given_up(sup, tmp_path, monkeypatch):
    s, dec = sup
    (tmp_path / "v.mp4").write_bytes(b"")
    bad = push(s, url=str(tmp_path / "v.mp4"), stream_id="unlucky")
    real = s._take_job

    def flaky(entry, job):  # injected failure: handling this one entry always raises
        if job.stream_id == "unlucky":
            raise ConnectionError("injected")
        return real(entry, job)

    monkeypatch.setattr(s, "_take_job", flaky)
    push(s, url=str(tmp_path / "v.mp4"), stream_id="fine")
    for _ in range(s.settings.supervisor.max_deliveries):
        s.tick()
    assert [a.stream_id for a in dec.handed] == ["fine"]
    (d,) = dead_letters(s)
    assert d["entry"] == bad and d["reason"] == "poison_job" and "handling failed 5 times: ConnectionError" in d["error"]


def test_the_listing_forgets_streams_whose_state_expired(sup):
    s, _ = sup
    now = time.time()
    s.redis.zadd(s.keys.streams, {"expired": now - s.settings.redis.ended_ttl_s - 10,
                                  "old-but-kept": now - s.settings.redis.ended_ttl_s - 10, "recent": now})
    s.redis.hset(s.keys.stream("old-but-kept"), mapping=StreamState(stream_id="old-but-kept", status="running").to_hash())
    assert s._prune_listing(now) == 1
    assert set(s.redis.zrange(s.keys.streams, 0, -1)) == {"old-but-kept", "recent"}


def test_a_retired_decoder_is_not_taken_back_while_its_pool_still_lists_it(sup):
    # given a second decoder the pool retires (its streams moved, the decoder about to be killed)
    s, dec = sup
    other = RecordingDecoder()
    other.close = lambda: None
    s.set_decoders({"dec-0": dec, "dec-1": other})
    s.retire("dec-1")
    # when the pool sends its list while it still shows the retired decoder as draining (until it is killed)
    s.set_decoders({"dec-0": dec, "dec-1": other}, draining={"dec-1"})
    # then the supervisor does not take it back: its checks would ask a killed decoder for its streams
    assert set(s.decoders) == {"dec-0"} and s.draining == set()
