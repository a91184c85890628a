"""Rules and webhooks: tell someone when a stream shows something. Plain classes over Redis (no Ray); the rules
deployment (deployments/rules.py) runs one `RuleWatcher` and one `WebhookSender`.

- `RuleWatcher` reads every tag event of `vbs:events` through a consumer group of its own (so a restart goes on
  where it stopped), tests each clip against the config's rules and its stream's (`options.rules`, read from the
  stream's ingest job: the state keeps only a masked webhook), and counts clips that pass in a row. When a rule's
  count reaches its `clips`, one event fires, in one script: a dedupe key (a clip re-read after a crash fires
  nothing twice), an entry in `vbs:events` (`rule` beside `stream`: GET /v1/events sends it as a `rule` event) and,
  with a webhook, a delivery in `vbs:webhooks`. A rule fires again only after a clip that fails it.
- `WebhookSender` POSTs each delivery as JSON under the URL policy, at the address it checked, and acks it on a 2xx
  answer. A failed try is tried again with doubling waits; after `max_attempts` the delivery goes to `vbs:dead`
  (reason webhook_failed, the URL masked). A delivery holds its URL only until then. Each POST carries the event's
  id (`X-Vbs-Event`), so a receiver can drop the one duplicate a crash between its answer and the ack can cause."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field

import numpy as np

from actors.keys import Keys
from actors.url_policy import redact
from schemas.config import RulesSettings, UrlPolicy
from schemas.state import TagResult
from schemas.streams import FailureReason, IngestJob, JobError, Rule

log = logging.getLogger(__name__)

FIRED_TTL_S = 7 * 24 * 3600  # how long a fired event's dedupe key lives
PAGE = 500

# KEYS: dedupe key, events stream, webhooks stream. ARGV: ttl, stream id, rule name, event JSON, events maxlen,
# webhook URL ("" for none), webhooks maxlen. Returns the event's id in vbs:events, or false if it had fired.
_FIRE = """
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then return false end
local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '*', 'stream', ARGV[2], 'rule', ARGV[3],
                      'event', ARGV[4])
if ARGV[6] ~= '' then
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[7], '*', 'url', ARGV[6], 'event', ARGV[4], 'id', id,
             'rule', ARGV[3], 'stream', ARGV[2])
end
return id
"""


def masked(url: str) -> str:
    """A webhook as statuses and dead letters show it: scheme, host and port; its path and query may be its secret."""
    from urllib.parse import urlsplit

    try:
        p = urlsplit(url)
        return f"{p.scheme}://{p.hostname or ''}{f':{p.port}' if p.port else ''}/***"
    except ValueError:
        return "***"


def passes(rule: Rule, tag: TagResult, vector: np.ndarray | None, query: np.ndarray | None) -> tuple[bool, float]:
    """Whether one clip passes a rule's test, and its score for it: the lowest over the named slots of the best score
    among each slot's labels, or the cosine of the clip's embedding with the query's."""
    if rule.labels is not None:
        scores = []
        for slot, wanted in rule.labels.items():
            ranked = tag.labels.get(slot, [])
            scores.append(max((r.score for r in ranked if r.label in wanted), default=0.0))
        score = min(scores)
    else:
        if vector is None or query is None:
            return False, 0.0
        score = float(vector.astype(np.float32) @ query / 127)
    return score >= rule.min_score, round(score, 4)


@dataclass
class _Run:
    clips: int = 0  # clips in a row that passed
    t0: float = 0.0  # the first of them
    fired: bool = False


@dataclass
class RuleWatcher:
    """Tests every tagged clip against the rules (see the module's doc). `embed`: text -> (N, D) unit vectors in the
    encoder's joint space, for query rules (None: query rules never pass)."""

    redis: object  # redis.Redis, decode_responses=True
    keys: Keys
    rules: tuple[Rule, ...] = ()  # the config's, for every stream
    embed: object = None
    consumer: str = "rules-0"
    events_maxlen: int = 100_000
    webhooks_maxlen: int = 100_000
    metrics: object = None  # actors.metrics.Metrics
    runs: dict[tuple[str, int, str], _Run] = field(default_factory=dict)  # (stream, rule's place, name)
    fired: int = 0
    _jobs: dict[str, tuple[str, tuple[Rule, ...]]] = field(default_factory=dict)  # stream -> (entry, its rules)
    _queries: dict[str, np.ndarray] = field(default_factory=dict)
    _started: bool = False

    def __post_init__(self) -> None:
        self._fire = self.redis.register_script(_FIRE)

    def _start(self) -> None:
        import redis

        try:  # new events only: a first start does not fire for what was tagged before it
            self.redis.xgroup_create(self.keys.events, self.keys.rules_group, id="$", mkstream=True)
        except redis.ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise
        self._started = True

    def _stream_rules(self, sids: list[str]) -> dict[str, tuple[Rule, ...]]:
        """Each stream's own rules, from its ingest job (re-read when the stream's job changes)."""
        pipe = self.redis.pipeline(transaction=False)
        for sid in sids:
            pipe.hget(self.keys.stream(sid), "entry")
        out = {}
        for sid, entry in zip(sids, pipe.execute()):
            entry = entry or ""
            known = self._jobs.get(sid)
            if known is None or known[0] != entry:
                rules: tuple[Rule, ...] = ()
                got = self.redis.xrange(self.keys.ingest, min=entry, max=entry, count=1) if entry else []
                if got:
                    try:
                        rules = IngestJob.from_fields(got[0][1]).options.rules
                    except JobError as e:  # admitted once, so this is a job changed by hand since
                        log.warning("stream %s: its job no longer reads (%s): only the config's rules apply", sid, e)
                self._jobs[sid] = known = (entry, rules)
                for key in [k for k in self.runs if k[0] == sid]:
                    del self.runs[key]  # a new job of this id starts every count afresh
            out[sid] = known[1]
        return out

    def _query(self, text: str) -> np.ndarray | None:
        if self.embed is None:
            return None
        if text not in self._queries:
            if len(self._queries) > 4096:
                self._queries.clear()
            self._queries[text] = np.asarray(self.embed([text])[0], np.float32)
        return self._queries[text]

    def step(self, block_ms: int = 1000) -> int:
        """Read and test the tag events that came since the last step (waiting up to `block_ms` for one), fire what
        passes, ack them. Returns the events fired."""
        from videobert.retrieval import from_text

        fired = 0
        if not self._started:
            self._start()
            fired += self._reread_own_pending()
        reply = self.redis.xreadgroup(self.keys.rules_group, self.consumer, {self.keys.events: ">"}, count=PAGE,
                                      block=block_ms) or []
        entries = [(eid, f) for _, batch in reply for eid, f in batch]
        return fired + self._handle(entries, from_text)

    def _reread_own_pending(self) -> int:
        """Events this consumer read but had not acked when it stopped: tested again (the dedupe key keeps a rule
        that fired from firing twice). Returns the events fired."""
        from videobert.retrieval import from_text

        fired = 0
        while True:
            reply = self.redis.xreadgroup(self.keys.rules_group, self.consumer, {self.keys.events: "0"}, count=PAGE)
            entries = [(eid, f) for _, batch in reply or [] for eid, f in batch]
            if not entries:
                return fired
            fired += self._handle(entries, from_text)

    def _handle(self, entries, from_text) -> int:
        if not entries:
            return 0
        tags = [(eid, f["stream"], f["tag"]) for eid, f in entries if f.get("tag") and f.get("stream")]
        fired = 0
        if tags:
            stream_rules = self._stream_rules(sorted({sid for _, sid, _ in tags}))
            tags = [t for t in tags if self.rules or stream_rules.get(t[1])]  # streams with no rule cost one HGET
        if tags:
            pipe = self.redis.pipeline(transaction=False)
            for _, sid, tag in tags:
                pipe.xrange(self.keys.tags(sid), min=tag, max=tag, count=1)
            for (_, sid, tag), found in zip(tags, pipe.execute()):
                rules = self.rules + stream_rules.get(sid, ())
                if not found or not rules:
                    continue  # trimmed already, or nothing to test
                fields = found[0][1]
                try:
                    row = TagResult.model_validate_json(fields["data"])
                except (ValueError, KeyError):
                    continue
                try:
                    vector = from_text(fields["vec"]) if fields.get("vec") else None
                except ValueError:
                    vector = None
                for n, rule in enumerate(rules):  # by place too: two rules may share a name
                    fired += self._test(sid, tag, row, vector, n, rule, float(fields.get("at") or time.time()))
        self.redis.xack(self.keys.events, self.keys.rules_group, *[eid for eid, _ in entries])
        return fired

    def _test(self, sid: str, tag: str, row: TagResult, vector, n: int, rule: Rule, at: float) -> int:
        query = self._query(rule.query) if rule.query is not None else None
        ok, score = passes(rule, row, vector, query)
        run = self.runs.setdefault((sid, n, rule.name), _Run())
        if not ok:
            run.clips, run.fired = 0, False
            return 0
        if run.clips == 0:
            run.t0 = row.t0
        run.clips += 1
        if run.fired or run.clips < rule.clips:
            return 0
        run.fired = True
        event = {"rule": rule.name, "stream_id": sid, "entry": tag, "t0": run.t0, "t1": row.t1, "clips": run.clips,
                 "score": score, "at": at, "labels": {s: r[0].label for s, r in row.labels.items() if r},
                 "subtitle": row.subtitle}
        eid = self._fire(keys=[self.keys.fired(sid, f"{n}.{rule.name}", tag), self.keys.events, self.keys.webhooks],
                         args=[FIRED_TTL_S, sid, rule.name, json.dumps(event, separators=(",", ":")),
                               self.events_maxlen, rule.webhook or "", self.webhooks_maxlen])
        if not eid:
            return 0  # it had fired before a restart
        self.fired += 1
        log.info("stream %s: rule %s fired at %.2f s (%d clips, score %.3f)", sid, rule.name, row.t1, run.clips, score)
        if self.metrics is not None:
            self.metrics.inc("vbs_rule_events_total", rule=rule.name)
        return 1


@dataclass
class WebhookSender:
    """POSTs the deliveries of `vbs:webhooks` (see the module's doc)."""

    redis: object
    keys: Keys
    policy: UrlPolicy
    settings: RulesSettings = field(default_factory=RulesSettings)
    consumer: str = "webhooks-0"
    dead_maxlen: int = 10_000
    metrics: object = None
    resolve: object = None  # the policy's name lookup (tests give their own)
    _tries: dict[str, tuple[int, float]] = field(default_factory=dict)  # delivery id -> (tries so far, next try at)
    _started: bool = False

    def _start(self) -> None:
        import redis

        try:
            self.redis.xgroup_create(self.keys.webhooks, self.keys.webhooks_group, id="0", mkstream=True)
        except redis.ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise
        self._started = True

    def _count(self, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.inc("vbs_webhook_deliveries_total", outcome=outcome)

    def step(self, block_ms: int = 1000) -> int:
        """Try every delivery that is due: this consumer's pending ones (and those of a sender that died: claimed
        after a minute idle), then new ones. Returns the deliveries sent."""
        if not self._started:
            self._start()
        now = time.time()
        claimed = self.redis.xautoclaim(self.keys.webhooks, self.keys.webhooks_group, self.consumer, 60_000,
                                        start_id="0-0", count=PAGE)  # a dead sender's, now this one's
        mine = self.redis.xreadgroup(self.keys.webhooks_group, self.consumer, {self.keys.webhooks: "0"}, count=PAGE)
        pending = dict(eid_f for _, batch in mine or [] for eid_f in batch)
        gone = [eid for eid, f in pending.items() if not f]  # deleted while pending
        if gone:
            self.redis.xack(self.keys.webhooks, self.keys.webhooks_group, *gone)
        del claimed
        due = [(eid, f) for eid, f in pending.items() if f and self._tries.get(eid, (0, 0.0))[1] <= now]
        if not due:
            wait = min((t for _, t in self._tries.values()), default=now + block_ms / 1000) - now
            reply = self.redis.xreadgroup(self.keys.webhooks_group, self.consumer, {self.keys.webhooks: ">"},
                                          count=PAGE, block=max(1, int(1000 * min(block_ms / 1000, max(wait, 0.001)))))
            due = [(eid, f) for _, batch in reply or [] for eid, f in batch]
        sent = 0
        for eid, f in due:
            sent += self._send(eid, f)
        return sent

    def _send(self, eid: str, f: dict) -> int:
        from actors.fetch import http_post

        tries = self._tries.get(eid, (0, 0.0))[0] + 1
        url = f.get("url", "")
        try:
            status = http_post(url, self.policy, f.get("event", "{}").encode(), timeout_s=self.settings.timeout_s,
                               headers={"X-Vbs-Event": f.get("id", eid), "X-Vbs-Rule": f.get("rule", "")},
                               resolve=self.resolve)
            error = "" if 200 <= status < 300 else f"HTTP {status}"
            permanent = False
        except ValueError as e:  # the URL policy refused it (UrlRefused): trying again will not help
            status, error, permanent = 0, str(e), True
        except OSError as e:
            status, error, permanent = 0, f"{type(e).__name__}: {e}"[:300], False
        if not error:
            self._done(eid)
            self._count("delivered")
            log.info("webhook %s of rule %s: delivered (HTTP %d, try %d)", masked(url), f.get("rule"), status, tries)
            return 1
        if permanent or tries >= self.settings.max_attempts:
            self._dead(eid, f, url, error, tries)
            return 0
        wait = min(self.settings.retry_max_s, self.settings.retry_initial_s * 2 ** (tries - 1))
        self._tries[eid] = (tries, time.time() + wait)
        self._count("retried")
        log.warning("webhook %s of rule %s: %s (try %d of %d); again in %.1f s", masked(url), f.get("rule"), error,
                    tries, self.settings.max_attempts, wait)
        return 0

    def _done(self, eid: str) -> None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.xack(self.keys.webhooks, self.keys.webhooks_group, eid)
        pipe.xdel(self.keys.webhooks, eid)  # it held the URL, which may be a secret
        pipe.execute()
        self._tries.pop(eid, None)

    def _dead(self, eid: str, f: dict, url: str, error: str, tries: int) -> None:
        reason = FailureReason.webhook_failed.value
        pipe = self.redis.pipeline(transaction=True)
        pipe.xadd(self.keys.dead, {"stream_id": f.get("stream", ""), "rule": f.get("rule", ""), "url": masked(url),
                                   "reason": reason, "error": redact(error)[:1000], "event": f.get("event", "")[:4000],
                                   "attempts": tries}, maxlen=self.dead_maxlen, approximate=True)
        pipe.hincrby(self.keys.counters, f"failures:{reason}", 1)
        pipe.xack(self.keys.webhooks, self.keys.webhooks_group, eid)
        pipe.xdel(self.keys.webhooks, eid)
        pipe.execute()
        self._tries.pop(eid, None)
        self._count("failed")
        log.warning("webhook %s of rule %s: gave up after %d tries (%s); in %s", masked(url), f.get("rule"), tries,
                    error, self.keys.dead)
