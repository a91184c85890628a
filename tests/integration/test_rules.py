"""Rules and webhooks against real Redis and a real HTTP receiver on loopback (no Ray): a rule fires once for each
run of clips that pass it, a restarted watcher fires nothing twice, a receiver that fails and recovers gets the
event once, one that never recovers puts it in vbs:dead."""

from __future__ import annotations

import json
import time
import uuid

import numpy as np
import pytest

from actors.keys import Keys, redis_client
from actors.rules import RuleWatcher, WebhookSender, masked, passes
from actors.sink import Sink, entry_id
from bench.sources import WebhookReceiver
from schemas.config import RulesSettings, UrlPolicy
from schemas.state import TagResult
from schemas.streams import IngestJob, Rule
from videobert.retrieval import quantise

REDIS_URL = "redis://127.0.0.1:6379/0"
LOOPBACK = UrlPolicy(allow_loopback=True)
FAST = RulesSettings(max_attempts=4, retry_initial_s=0.05, retry_max_s=0.2, timeout_s=2)
DROP_STAR = Rule(name="drop-star", labels={"verb": ("drop",), "noun": ("star",)}, min_score=0.5, clips=2)


@pytest.fixture
def r():
    keys = Keys(f"vbsrule{uuid.uuid4().hex[:8]}")
    client = redis_client(REDIS_URL)
    client.keys_ = keys
    yield client
    for k in client.scan_iter(f"{keys.prefix}:*"):
        client.delete(k)


def tag(t0: float, verb: str, noun: str, score: float = 0.8) -> TagResult:
    return TagResult(t0=t0, t1=t0 + 1.5, alignment=None, subtitle=f"{verb} the {noun}",
                     labels={"verb": [{"label": verb, "score": score}, {"label": "other", "score": 1 - score}],
                             "noun": [{"label": noun, "score": score}, {"label": "other", "score": 1 - score}]})


def stream(r, sid: str, rules=()) -> tuple[Sink, str]:
    """A running stream as the supervisor leaves it: its job in vbs:ingest (its rules), its state naming the job."""
    keys = r.keys_
    job = IngestJob.model_validate({"url": "/x.mp4", "stream_id": sid,
                                    "options": {"rules": [x.model_dump(mode="json") for x in rules]}})
    entry = r.xadd(keys.ingest, job.to_fields())
    token = uuid.uuid4().hex
    r.hset(keys.stream(sid), mapping={"token": token, "status": "running", "entry": entry})
    return Sink(r, keys), token


def test_a_rule_fires_once_per_run_of_clips_that_pass_it(r):
    watcher = RuleWatcher(r, r.keys_, rules=(DROP_STAR,))
    watcher.step(block_ms=10)  # its group starts at the end: nothing before it fires
    sink, token = stream(r, "cam-1")
    seq = [("drop", "star"), ("drop", "star"), ("drop", "star"), ("grow", "star"), ("drop", "star"),
           ("drop", "star"), ("drop", "ring")]
    for i, (v, n) in enumerate(seq):
        sink.commit("cam-1", token, tag(1.5 * i, v, n))
    assert watcher.step(block_ms=100) == 2  # clips 0-1 (then 2 goes on the same run), and 4-5 after the break
    events = [json.loads(f["event"]) for _, f in r.xrange(r.keys_.events) if f.get("rule")]
    assert [(e["rule"], e["t0"], e["t1"], e["clips"]) for e in events] == [("drop-star", 0.0, 3.0, 2),
                                                                          ("drop-star", 6.0, 9.0, 2)]
    assert events[0]["labels"] == {"verb": "drop", "noun": "star"} and events[0]["entry"] == entry_id(1.5)
    assert watcher.step(block_ms=10) == 0


def test_a_restarted_watcher_fires_nothing_twice_and_a_stream_brings_its_own_rules(r):
    own = Rule(name="any-ring", labels={"noun": ("ring",)}, clips=1)
    sink, token = stream(r, "cam-2", rules=(own,))
    first = RuleWatcher(r, r.keys_, rules=(DROP_STAR,))
    first.step(block_ms=10)
    for i in range(3):
        sink.commit("cam-2", token, tag(1.5 * i, "drop", "ring"))
    # read but not acked (it died before the ack): the events stay pending for its consumer name
    r.xreadgroup(r.keys_.rules_group, first.consumer, {r.keys_.events: ">"}, count=100)
    again = RuleWatcher(r, r.keys_, rules=(DROP_STAR,))
    assert again.step(block_ms=10) == 1  # the pending events, tested again: the stream's own rule fires once
    assert not r.xpending(r.keys_.events, r.keys_.rules_group)["pending"]
    # a watcher that fired and died before its ack gets the same events again: the fired key stops a second event
    from videobert.retrieval import from_text

    replay = RuleWatcher(r, r.keys_, rules=(DROP_STAR,))
    tags = [(eid, f) for eid, f in r.xrange(r.keys_.events) if f.get("tag")]
    assert replay._handle(tags, from_text) == 0 and replay.fired == 0
    fired = [json.loads(f["event"])["rule"] for _, f in r.xrange(r.keys_.events) if f.get("rule")]
    assert fired == ["any-ring"]


def test_a_query_rule_compares_the_clip_embedding_with_the_text():
    q = np.zeros(8, np.float32)
    q[0] = 1.0
    rule = Rule(name="q", query="drop the star", min_score=0.6)
    near, far = quantise(np.array([0.8, 0.6, 0, 0, 0, 0, 0, 0])), quantise(np.array([0.1, 0.99, 0, 0, 0, 0, 0, 0]))
    assert passes(rule, tag(0, "drop", "star"), near, q) == (True, pytest.approx(0.8, abs=0.01))
    assert passes(rule, tag(0, "drop", "star"), far, q)[0] is False
    assert passes(rule, tag(0, "drop", "star"), None, q) == (False, 0.0)  # no embedding kept: it cannot pass


def test_a_receiver_that_fails_then_recovers_gets_the_event_once(r):
    with WebhookReceiver(fail_first=2) as hook:
        rule = Rule(name="to-hook", labels={"verb": ("drop",)}, clips=1, webhook=hook.url)
        watcher = RuleWatcher(r, r.keys_, rules=(rule,))
        watcher.step(block_ms=10)
        sink, token = stream(r, "cam-3")
        sink.commit("cam-3", token, tag(0.0, "drop", "star"))
        assert watcher.step(block_ms=100) == 1
        sender = WebhookSender(r, r.keys_, LOOPBACK, FAST)
        deadline = time.monotonic() + 20
        while not hook.received and time.monotonic() < deadline:
            sender.step(block_ms=50)
        for _ in range(5):
            sender.step(block_ms=20)
    assert hook.refused == 2 and len(hook.received) == 1
    headers, body = hook.received[0]
    assert body["rule"] == "to-hook" and body["stream_id"] == "cam-3" and headers["X-Vbs-Rule"] == "to-hook"
    assert headers["X-Vbs-Event"] == next(eid for eid, f in r.xrange(r.keys_.events) if f.get("rule"))
    assert r.xlen(r.keys_.webhooks) == 0, "a delivered event's entry (and its URL) is gone"


def test_a_receiver_that_never_recovers_is_dead_lettered_with_the_url_masked(r):
    with WebhookReceiver() as hook:
        hook.set_failing(True)
        secret_url = hook.url + "/T0KEN-secret"
        sender = WebhookSender(r, r.keys_, LOOPBACK, FAST)
        r.xadd(r.keys_.webhooks, {"url": secret_url, "event": "{}", "id": "1-1", "rule": "x", "stream": "cam-4"})
        deadline = time.monotonic() + 20
        while not r.xlen(r.keys_.dead) and time.monotonic() < deadline:
            sender.step(block_ms=50)
    dead = [f for _, f in r.xrange(r.keys_.dead)]
    assert len(dead) == 1 and dead[0]["reason"] == "webhook_failed" and dead[0]["attempts"] == "4"
    assert dead[0]["url"] == masked(secret_url) and "T0KEN" not in json.dumps(dead)
    assert hook.refused == 4 and r.xlen(r.keys_.webhooks) == 0
    assert r.hget(r.keys_.counters, "failures:webhook_failed") == "1"


def test_a_webhook_the_policy_refuses_is_dead_lettered_at_once(r):
    sender = WebhookSender(r, r.keys_, UrlPolicy(), FAST)  # loopback not allowed
    r.xadd(r.keys_.webhooks, {"url": "http://127.0.0.1:9/hook", "event": "{}", "id": "1-1", "rule": "x",
                              "stream": "cam-5"})
    sender.step(block_ms=10)
    dead = [f for _, f in r.xrange(r.keys_.dead)]
    assert len(dead) == 1 and dead[0]["attempts"] == "1" and "loopback" in dead[0]["error"]


def test_rules_are_checked_where_a_job_comes_in():
    from actors import control

    with pytest.raises(ValueError, match="exactly one"):
        Rule(name="both", labels={"verb": ("drop",)}, query="x")
    job = IngestJob.model_validate({"url": "http://127.0.0.1:8/v.ts", "options": {"rules": [
        {"name": "a", "labels": {"verb": ["drop"]}, "webhook": "ftp://127.0.0.1/x"}]}})
    with pytest.raises(control.Refused) as e:
        control.admit(job, LOOPBACK)
    assert e.value.reason.value == "refused_scheme"
    job = job.model_copy(update={"options": job.options.model_copy(update={"rules": (
        Rule(name="a", labels={"verb": ("drop",)}, webhook="http://10.1.2.3/x"),)})})
    with pytest.raises(control.Refused) as e:
        control.admit(job, LOOPBACK)
    assert e.value.reason.value == "refused_private_address"
