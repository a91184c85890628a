"""What a client does through Redis (actors/control.py) and the `vbs` commands built on it, against a real
Redis: submit, read a typed state, request a stop."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from actors import control
from actors.keys import redis_client
from schemas.state import StreamState
from schemas.streams import IngestJob, StreamStatus
from tests.integration.conftest import REDIS_URL


def vbs(*args, prefix: str) -> subprocess.CompletedProcess:
    config = f'[redis]\nprefix = "{prefix}"\n[url_policy]\nallow_loopback = true\n'
    return subprocess.run([sys.executable, "-c", "import sys; from ops.cli import main; sys.exit(main(sys.argv[1:]))",
                           *args, "--config", "/dev/stdin"], input=config, capture_output=True, text=True, timeout=60)


def test_submit_names_the_stream_as_the_supervisor_does(keys):
    r = redis_client(REDIS_URL)
    named = control.submit(r, keys, IngestJob(url="udp://127.0.0.1:5000", stream_id="cam-1"))
    anon = control.submit(r, keys, IngestJob(url="udp://127.0.0.1:5001"))
    assert named.stream_id == "cam-1" and anon.stream_id == f"s{anon.entry}"
    assert [f["url"] for _, f in r.xrange(keys.ingest)] == ["udp://127.0.0.1:5000", "udp://127.0.0.1:5001"]


def test_vbs_status_prints_the_typed_state_and_vbs_stop_requests_a_stop(keys):
    r = redis_client(REDIS_URL)
    r.hset(keys.stream("cam-1"), mapping=StreamState(stream_id="cam-1", status="running", clips_tagged=12, live=True,
                                                     token="tok", heartbeat=1.0).to_hash())
    r.zadd(keys.streams, {"cam-1": 1.0})
    out = vbs("status", "cam-1", prefix=keys.prefix)
    assert out.returncode == 0, out.stderr
    row = json.loads(out.stdout)
    assert row["clips_tagged"] == 12 and row["live"] is True and row["status"] == "running" and "token" not in row
    public = StreamState.from_hash("cam-1", r.hgetall(keys.stream("cam-1"))).public()
    public.pop("latest")  # shown with --latest
    assert row == public
    stop = vbs("stop", "cam-1", prefix=keys.prefix)
    assert stop.returncode == 0 and "stop requested" in stop.stdout
    assert control.state(r, keys, "cam-1").stop is True
    missing = vbs("status", "nope", prefix=keys.prefix)
    assert missing.returncode == 2 and "no stream 'nope'" in missing.stderr


def test_a_stop_leaves_an_ended_stream_as_it_is(keys):
    r = redis_client(REDIS_URL)
    r.hset(keys.stream("old"), mapping=StreamState(stream_id="old", status="finished").to_hash())
    st = control.request_stop(r, keys, "old")
    assert st.status == StreamStatus.finished and control.state(r, keys, "old").stop is False
    assert control.request_stop(r, keys, "nope") is None and control.request_stop(r, keys, "bad id\n") is None


def test_vbs_push_refuses_what_the_service_would_refuse(keys):
    """`vbs push` ran no check: a refused URL was queued and failed later. Now it exits 2 at once."""
    r = redis_client(REDIS_URL)
    out = vbs("push", "http://metadata.google.internal/computeMetadata/v1/", prefix=keys.prefix)
    assert out.returncode == 2 and "refused (refused_blocked_address)" in out.stderr, out.stderr
    bad = vbs("push", "udp://127.0.0.1:5000", "--options", '{"labels": {"verb": ["grow", "photosynthesize"]}, '
              '"template": "watch me [MASK] it"}', prefix=keys.prefix)
    assert bad.returncode == 2 and "bad_options" in bad.stderr and "photosynthesize" in bad.stderr
    ok = vbs("push", "udp://127.0.0.1:5000", "--id", "cam-9", prefix=keys.prefix)
    assert ok.returncode == 0 and json.loads(ok.stdout)["stream_id"] == "cam-9"
    assert r.xlen(keys.ingest) == 1, "only the good job was queued"
