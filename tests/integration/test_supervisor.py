"""The supervisor as a plain class against a real Redis, with decoders stubbed to record what they are handed:
what is checked at intake (once, before any decoder sees the stream) and what an assignment carries."""

from __future__ import annotations

import json
import uuid

import pytest

from actors.keys import redis_client
from actors.supervisor import Supervisor
from schemas.config import Settings
from schemas.state import StreamState
from schemas.streams import FailureReason, LabelSet, StreamStatus
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
