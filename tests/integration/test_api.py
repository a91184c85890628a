"""The HTTP API over real HTTP against the session's running app (Ray Serve, real Redis, the graph)."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.integration.conftest import API_KEY
from bench.sources import UdpSender

pytestmark = pytest.mark.slow


def heldout(service):
    from pathlib import Path

    return sorted((Path(service.settings.model_dir) / "data" / "heldout").glob("shapes_*.mp4"))


def wait_status(service, sid, statuses, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = service.get(f"/v1/streams/{sid}")
        if r.status_code == 200 and r.json()["status"] in statuses:
            return r.json()
        time.sleep(0.2)
    raise AssertionError(f"{sid}: {service.get(f'/v1/streams/{sid}').text}")


def sse_events(service, path, stop_after, timeout=60):
    """Read server-sent events until `stop_after(events)` is true."""
    events, cur = [], {}
    with service.http.get(service.url(path), headers=service.auth, stream=True, timeout=timeout) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        deadline = time.monotonic() + timeout
        for line in r.iter_lines(decode_unicode=True):
            if line.startswith("event:"):
                cur["event"] = line[6:].strip()
            elif line.startswith("data:"):
                cur["data"] = json.loads(line[5:])
            elif line == "" and cur:
                events.append(cur)
                cur = {}
                if stop_after(events):
                    break
            if time.monotonic() > deadline:
                break
    return events


def test_a_file_stream_through_the_api(service):
    video = heldout(service)[0]
    r = service.post("/v1/streams", json={"url": str(video), "stream_id": "api-file"})
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["stream_id"] == "api-file" and body["links"]["tags"] == "/v1/streams/api-file/tags"
    s = wait_status(service, "api-file", {"finished", "failed"})
    assert s["status"] == "finished" and s["clips_tagged"] > 3 and "token" not in s
    tags = service.get("/v1/streams/api-file/tags?limit=3").json()
    assert [t["t0"] for t in tags["tags"]] == [0.0, 1.5, 3.0] and tags["next_since"] == 3.0
    more = service.get("/v1/streams/api-file/tags?since=3.0&limit=1000").json()["tags"]
    assert more[0]["t0"] == 4.5 and len(more) + 3 == s["clips_tagged"]
    assert set(tags["tags"][0]) >= {"id", "t0", "t1", "labels", "alignment", "subtitle"}
    listing = service.get("/v1/streams?limit=500").json()
    assert any(x["stream_id"] == "api-file" and x["status"] == "finished" for x in listing["streams"])
    assert service.get("/v1/streams?status=finished&limit=500").json()["total"] >= 1
    page = service.get("/v1/streams?limit=1&offset=0").json()
    assert len(page["streams"]) == 1 and page["total"] >= 1
    # the same stream id again while it is finished: accepted, starts afresh
    assert service.post("/v1/streams", json={"url": str(video), "stream_id": "api-file"}).status_code == 202


def test_live_stream_events_deliver_a_tag_and_delete_stops_it(service):
    video = heldout(service)[1]
    with UdpSender(video, loop=True, reencode=True) as udp:
        assert service.post("/v1/streams", json={"url": udp.url, "stream_id": "api-live"}).status_code == 202
        wait_status(service, "api-live", {"running"}, timeout=60)
        connected = time.time()
        events = sse_events(service, "/v1/streams/api-live/events",
                            lambda ev: sum(e["event"] == "tag" for e in ev) >= 3, timeout=60)
        assert events[0]["event"] == "status" and events[0]["data"]["status"] == "running"
        tags = [e["data"] for e in events if e["event"] == "tag"]
        assert len(tags) >= 3 and tags[-1]["t0"] > tags[0]["t0"], "new tags arrived live"
        assert time.time() - connected < 60
        r = service.delete("/v1/streams/api-live")
        assert r.status_code == 202 and r.json()["status"] == "stopping"
        assert wait_status(service, "api-live", {"stopped"}, timeout=30)["status"] == "stopped"
        assert service.delete("/v1/streams/api-live").json()["status"] == "stopped"


def test_tag_an_uploaded_clip_batched_and_as_vbs_tag_does(service):
    from videobert.tagging import Tagger

    video = heldout(service)[2]
    data = video.read_bytes()
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: service.post("/v1/tag", data=data,
                                                       headers={"Content-Type": "video/mp4"}), range(4)))
    assert all(a.status_code == 200 for a in answers), answers[0].text
    rows = answers[0].json()["clips"]
    expected = Tagger(service.settings.model_dir, context=service.settings.decoder.context_clips).tag_video(video)
    assert [(r["t0"], r["labels"]["verb"][0]["label"], r["labels"]["noun"][0]["label"]) for r in rows] == \
           [(e.t0, e.top("verb"), e.top("noun")) for e in expected]
    assert all(a.json()["clips"] == rows for a in answers)
    from ray import serve

    sizes = serve.get_deployment_handle("tagger", app_name="vbs").stats.remote().result()["batch_sizes"]
    assert max(sizes) > 1, f"concurrent uploads were batched together: {sizes}"
    custom = service.post("/v1/tag", data=data, params={"template": "watch me [MASK] it",
                                                        "labels": json.dumps({"action": ["grow", "shrink"]})})
    assert custom.status_code == 200 and set(custom.json()["clips"][0]["labels"]) == {"action"}


@pytest.mark.parametrize("body, where", [
    ({}, "url: Field required"),
    ({"url": "x", "options": {"clip_rate": 99}}, "options.clip_rate"),
    ({"url": "x", "stream_id": "no spaces"}, "stream_id"),
    ({"url": "x", "surprise": 1}, "surprise: Extra inputs are not permitted"),
])
def test_bad_bodies_are_422_with_a_message(service, body, where):
    r = service.post("/v1/streams", json=body)
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"
    assert where in r.json()["error"]["message"]


def test_errors_are_json(service):
    r = service.get("/v1/streams/nope")
    assert r.status_code == 404 and r.json() == {"error": {"code": "not_found", "message": "no stream 'nope'"}}
    assert service.get("/v1/streams/nope/tags").status_code == 404
    assert service.delete("/v1/streams/nope").status_code == 404
    assert service.get("/no/such/route").json()["error"]["code"] == "not_found"
    big = service.post("/v1/tag", data=b"\0" * (service.settings.api.max_upload_bytes + 1))
    assert big.status_code == 413 and big.json()["error"]["code"] == "too_large"
    junk = service.post("/v1/tag", data=b"this is not a video at all")
    assert junk.status_code == 422 and junk.json()["error"]["code"] == "unreadable_video"
    bad = service.post("/v1/tag", data=b"x", params={"labels": "{oops"})
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "bad_labels"


def test_auth_on_and_off(service):
    for path in ("/v1/streams", "/v1/streams/x", "/v1/streams/x/tags", "/v1/streams/x/events"):
        r = service.get(path, key=False)
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized", path
        assert r.headers["www-authenticate"] == "Bearer"
    assert service.post("/v1/streams", key=False, json={"url": "x"}).status_code == 401
    assert service.post("/v1/tag", key=False, data=b"x").status_code == 401
    assert service.delete("/v1/streams/x", key=False).status_code == 401
    wrong = service.http.get(service.url("/v1/streams"), headers={"Authorization": "Bearer nope"}, timeout=30)
    assert wrong.status_code == 401
    assert service.get(f"/v1/streams?access_token={API_KEY}", key=False).status_code == 200
    assert service.get("/healthz", key=False).status_code == 200
    assert service.get("/metrics", key=False).status_code == 200
    try:
        service.configure(keys=[API_KEY], auth_metrics=True, auth_health=True)
        assert service.get("/metrics", key=False).status_code == 401
        assert service.get("/healthz", key=False).status_code == 401
        assert service.get("/metrics").status_code == 200
        spec = service.get("/openapi.json", key=False).json()["paths"]  # the document says what the keys guard
        assert spec["/metrics"]["get"]["security"] and "401" in spec["/healthz"]["get"]["responses"]
        service.configure(keys=[])
        assert service.get("/v1/streams", key=False).status_code == 200
        assert service.get("/metrics", key=False).status_code == 200
        spec = service.get("/openapi.json", key=False).json()["paths"]
        assert "security" not in spec["/v1/streams"]["get"] and "401" not in spec["/v1/streams"]["get"]["responses"]
    finally:
        service.configure(keys=[API_KEY])
    assert service.get("/v1/streams", key=False).status_code == 401


def test_health_readiness_openapi_and_page(service):
    assert service.get("/healthz").json() == {"ok": True}
    ready = service.get("/readyz").json()
    assert ready["ready"] and ready["checks"] == {"redis": True, "model": True, "graph": True}
    spec = service.get("/openapi.json").json()
    assert {"/v1/streams", "/v1/streams/{stream_id}", "/v1/streams/{stream_id}/tags", "/v1/streams/{stream_id}/events",
            "/v1/tag", "/healthz", "/readyz", "/metrics"} <= set(spec["paths"])
    page = service.get("/", key=False)
    assert page.status_code == 200 and "EventSource" in page.text


def test_metrics_cover_the_pipeline(service, tmp_path):
    import subprocess

    text = service.get("/metrics").text
    for name in ("vbs_decoder_frames_decoded_total", "vbs_pipeline_clips_tagged_total", "vbs_tag_latency_seconds_bucket",
                 "vbs_stage_latency_seconds_bucket", "vbs_stage_batch_size_bucket", "vbs_ingest_backlog",
                 'vbs_streams{status="finished"}', "vbs_failures_total"):
        assert name in text, name
    assert "stream_id" not in text
    (tmp_path / "m.txt").write_text(text)
    r = subprocess.run(["promtool", "check", "metrics"], stdin=open(tmp_path / "m.txt"), capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_real_prometheus_scrapes_the_service(service, tmp_path):
    """Prometheus (Debian's) scrapes GET /metrics on the Serve port; a value comes back through its query API."""
    from tests.integration.test_metrics import run_prometheus

    text = service.get("/metrics").text
    tagged = [line for line in text.splitlines() if line.startswith("vbs_pipeline_clips_tagged_total ")]
    assert tagged and float(tagged[0].split()[1]) > 0, "the streams of earlier tests were counted"
    with run_prometheus(service.base.removeprefix("http://"), tmp_path) as query:
        deadline = time.monotonic() + 60
        result = []
        while time.monotonic() < deadline and not result:
            result = query("vbs_pipeline_clips_tagged_total")
            time.sleep(0.5)
        assert result, "Prometheus read nothing back"
        assert float(result[0]["value"][1]) >= float(tagged[0].split()[1])
        up = query('up{job="vbs"}')
        assert up and up[0]["value"][1] == "1"


def test_odd_but_valid_requests_are_answered_not_500(service):
    """?since=inf and a stream hash without a status answered 500."""
    from actors.keys import redis_client

    video = heldout(service)[0]
    assert service.post("/v1/streams", json={"url": str(video), "stream_id": "api-odd"}).status_code == 202
    wait_status(service, "api-odd", {"finished", "failed"})
    for since in ("inf", "nan", "2.78e16", "-1"):
        r = service.get(f"/v1/streams/api-odd/tags?since={since}")
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request", (since, r.text)
    r = redis_client(service.settings.redis.url)
    key = f"{service.settings.redis.prefix}:stream:bare-1"
    r.hset(key, mapping={"url": "udp://127.0.0.1:5000"})  # a hash without status (written by hand, or half-made)
    try:
        got = service.get("/v1/streams/bare-1")
        assert got.status_code == 200 and got.json()["status"] == "queued"
        stop = service.delete("/v1/streams/bare-1")
        assert stop.status_code == 202 and stop.json()["status"] == "stopping"
    finally:
        r.delete(key)


@pytest.mark.parametrize("body, code", [
    ({"url": "http://metadata.google.internal/computeMetadata/v1/"}, "refused_blocked_address"),
    ({"url": "/etc/passwd"}, "refused_file_outside_root"),
    ({"url": "gopher://127.0.0.1/x"}, "refused_scheme"),
    ({"url": "udp://127.0.0.1:5000", "options": {"template": "watch me [MASK] it",
                                                 "labels": {"verb": ["photosynthesize"]}}}, "bad_options"),
])
def test_a_job_that_cannot_run_is_refused_at_once(service, body, code):
    """A refused URL got 202 and failed later; now the API makes the supervisor's checks and answers 422."""
    before = service.get("/v1/streams?limit=500").json()["total"]
    r = service.post("/v1/streams", json=body)
    assert r.status_code == 422 and r.json()["error"]["code"] == code, r.text
    assert service.get("/v1/streams?limit=500").json()["total"] == before, "nothing was queued"


def test_the_key_is_checked_before_the_body_is_read(service):
    """Request bodies were validated before the API key was checked."""
    for body in (b"{not json", b'{"url": 5, "surprise": 1}'):
        r = service.post("/v1/streams", key=False, data=body, headers={"Content-Type": "application/json"})
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized", r.text
    assert service.post("/v1/streams", data=b"{not json", headers={"Content-Type": "application/json"}).status_code == 422


def test_live_clients_share_one_redis_connection_and_are_bounded(service):
    """Every SSE client held a pooled Redis connection of its own: past about 100, every route of the replica
    failed. Now they share one pub/sub connection, and past max_sse_clients the answer is 503 + Retry-After."""
    import socket

    from actors.keys import redis_client

    video = heldout(service)[0]
    assert service.post("/v1/streams", json={"url": str(video), "stream_id": "api-sse"}).status_code == 202
    wait_status(service, "api-sse", {"finished", "failed"})
    r = redis_client(service.settings.redis.url)
    limit = service.settings.api.max_sse_clients
    host, port = service.base.removeprefix("http://").split(":")

    def connect() -> tuple[socket.socket, bytes]:  # a client that stays connected, as a browser's EventSource does
        c = socket.create_connection((host, int(port)), timeout=30)
        c.sendall(f"GET /v1/streams/api-sse/events HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {API_KEY}"
                  "\r\n\r\n".encode())
        head = c.recv(65536)
        return c, head

    opened, refused = [], None
    try:
        for _ in range(limit + 1):
            c, head = connect()
            if head.startswith(b"HTTP/1.1 503"):
                refused = head if b"too_many_clients" in head else head + c.recv(65536)  # the body, if apart
                c.close()
                break
            assert head.startswith(b"HTTP/1.1 200"), head[:200]
            opened.append(c)
        assert refused is not None and len(opened) <= limit, len(opened)
        assert b"too_many_clients" in refused and b"retry-after: 5" in refused.lower()
        pubsub = r.client_list(_type="pubsub")
        assert len(pubsub) == 1, f"{len(opened)} live clients on {len(pubsub)} pub/sub connections"
        assert service.get("/v1/streams?limit=5").status_code == 200, "the other routes still answer"
    finally:
        for c in opened:
            c.close()
    deadline = time.monotonic() + 30
    while True:  # clients that went away free their places
        c, head = connect()
        c.close()
        if head.startswith(b"HTTP/1.1 200") or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert head.startswith(b"HTTP/1.1 200")


def test_an_api_key_runs_a_bounded_number_of_streams(service):
    """The design promised a per-key stream limit; there was none."""
    video = heldout(service)[1]
    limit = service.settings.api.max_streams_per_key
    from bench.sources import paced_udp_streams

    with paced_udp_streams(video, limit + 1, reencode=True) as senders:
        urls = [s.url for s in senders]
        ids = [f"api-quota-{i}" for i in range(limit)]
        for sid, url in zip(ids, urls):
            assert service.post("/v1/streams", json={"url": url, "stream_id": sid}).status_code == 202
        for sid in ids:
            wait_status(service, sid, {"starting", "running"}, timeout=60)
        over = service.post("/v1/streams", json={"url": urls[-1], "stream_id": "api-quota-x"})
        assert over.status_code == 429 and over.json()["error"]["code"] == "too_many_streams"
        assert over.headers["Retry-After"] == "30"
        assert service.get(f"/v1/streams/{ids[0]}").json()["client"], "the stream records its key's opaque id"
        assert API_KEY not in json.dumps(service.get(f"/v1/streams/{ids[0]}").json())
        service.delete(f"/v1/streams/{ids[0]}")
        wait_status(service, ids[0], {"stopped", "failed"}, timeout=30)
        assert service.post("/v1/streams", json={"url": urls[-1], "stream_id": "api-quota-x"}).status_code == 202
        for sid in ids[1:] + ["api-quota-x"]:
            service.delete(f"/v1/streams/{sid}")
        for sid in ids[1:] + ["api-quota-x"]:
            wait_status(service, sid, {"stopped", "failed"}, timeout=30)
