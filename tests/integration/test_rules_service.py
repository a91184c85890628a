"""Rules through the running service (Ray Serve, real Redis, the graph): a stream's own rule fires once for its
run of clips, its webhook on loopback gets the event once, GET /v1/events sends it, /metrics counts it."""

from __future__ import annotations

import json
import time

import pytest

from bench.sources import WebhookReceiver
from tests.integration.test_api import heldout, wait_status

pytestmark = pytest.mark.slow


def test_a_streams_rule_fires_once_and_its_webhook_gets_it_once(service):
    with WebhookReceiver(fail_first=1) as hook:
        rule = {"name": "always-grow", "labels": {"verb": ["grow"]}, "min_score": 0.0, "clips": 2,
                "webhook": hook.url + "/T0KEN"}
        r = service.post("/v1/streams", json={"url": str(heldout(service)[1]), "stream_id": "rules-1",
                                             "options": {"rules": [rule]}})
        assert r.status_code == 202, r.text
        state = wait_status(service, "rules-1", {"finished", "failed"}, timeout=300)
        assert state["status"] == "finished"
        assert state["options"]["rules"][0]["webhook"] == f"http://127.0.0.1:{hook.port}/***", "the path is masked"
        deadline = time.monotonic() + 60
        while not hook.received and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(2)  # nothing more comes
    assert len(hook.received) == 1 and hook.refused == 1
    body = hook.received[0][1]
    assert body["rule"] == "always-grow" and body["stream_id"] == "rules-1" and body["t0"] == 0.0 and body["clips"] == 2
    # the same event on the feed of every stream, with its id: resumed from the event before it
    from actors.keys import Keys, redis_client

    r, keys = redis_client(service.settings.redis.url), Keys(service.settings.redis.prefix)
    event_id = hook.received[0][0]["X-Vbs-Event"]
    before = r.xrevrange(keys.events, max=event_id, count=2)[-1][0]
    seen, event, ids = [], None, []
    with service.http.get(service.url(f"/v1/events?last_event_id={before}"), headers=service.auth, stream=True,
                          timeout=30) as feed:
        for line in feed.iter_lines(decode_unicode=True):
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("id:"):
                ids.append(line[3:].strip())
            elif line.startswith("data:") and event == "rule":
                seen.append(json.loads(line[5:]))
                break
    assert seen == [body] and ids[-1] == event_id
    metrics = service.get("/metrics").text
    assert 'vbs_rule_events_total{rule="always-grow"} 1.0' in metrics, [x for x in metrics.splitlines() if "rule" in x]


def test_a_rule_whose_webhook_the_policy_refuses_is_refused_with_the_stream(service):
    r = service.post("/v1/streams", json={"url": str(heldout(service)[0]), "options": {"rules": [
        {"name": "x", "labels": {"verb": ["grow"]}, "webhook": "http://169.254.169.254/latest"}]}})
    assert r.status_code == 422 and r.json()["error"]["code"].startswith("refused_"), r.text
    bad = service.post("/v1/streams", json={"url": str(heldout(service)[0]), "options": {"rules": [{"name": "x"}]}})
    assert bad.status_code == 422, bad.text
