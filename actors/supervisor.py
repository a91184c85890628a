"""The supervisor: reads stream jobs from the ingest stream (a consumer group, so a job stays pending until
its stream is over), validates them, applies the URL policy, hands streams to decoders and takes them back
when a decoder dies or a stream's heartbeat stops.

Guarantees: a job is acked only when its stream has ended (finished, failed for good, stopped) or was
refused; a malformed job goes to the dead-letter stream with the reason and is acked; a stream whose
decoder is gone is reassigned with a fresh ownership token (the old owner can no longer write) and
resumes from its checkpoint; a supervisor that restarts picks its pending jobs up again."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass

from actors.assignment import Assignment
from actors.keys import Keys, redis_client
from actors.sink import Fenced, Sink
from actors.url_policy import UrlRefused, check_url, redact
from schemas.config import Settings
from schemas.state import StreamState
from schemas.streams import FailureReason, IngestJob, JobError, StreamStatus

log = logging.getLogger(__name__)

CONSUMER = "supervisor"


@dataclass
class Held:
    """A stream this supervisor is responsible for (its job is pending in the ingest group)."""

    a: Assignment  # its token is the current owner's ("" while no decoder has it)
    decoder: str | None = None
    since: float = 0.0
    attempts: int = 0


class Supervisor:
    """`decoders`: name -> handle with `start_stream(assignment)` and `active()` (Ray actor handles: calls go
    through `call`, which Ray-specific code supplies)."""

    def __init__(self, settings: Settings, decoders: dict, call=None):
        self.settings, self.decoders = settings, decoders
        self.keys = Keys(settings.redis.prefix)
        self.redis = redis_client(settings.redis.url)
        self.call = call or _ray_call
        self.sink = Sink(self.redis, self.keys, settings.redis.tags_maxlen, settings.redis.dead_maxlen)
        self.held: dict[str, Held] = {}
        self.ingested = 0
        self._beat = 0.0
        self._ensure_group()
        self._adopt_pending()

    def _ensure_group(self) -> None:
        import redis

        try:
            self.redis.xgroup_create(self.keys.ingest, self.keys.group, id="0", mkstream=True)
        except redis.ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise

    # -- intake ------------------------------------------------------------------------------------------
    def _admit(self, sid: str, entry: str, job: IngestJob, safe: str) -> Assignment | None:
        """What to open for a job (`safe`: its URL redacted), checked against the URL policy, its label sets
        checked once; None (and the stream ended as failed, its job acked) when either is refused."""
        from videobert.labels import check

        try:
            check(job.options.label_set)
        except ValueError as e:
            log.warning("stream %s: bad options: %s", sid, e)
            self._fail(sid, entry, FailureReason.bad_options, str(e), safe)
            return None
        try:
            url = check_url(job.url, self.settings.url_policy)
            subs = check_url(job.subtitles_url, self.settings.url_policy) if job.subtitles_url else ""
        except UrlRefused as e:
            log.warning("stream %s: refused: %s", sid, e.reason)
            self._fail(sid, entry, e.failure, e.reason, safe)
            return None
        return Assignment(sid, job, entry, url, subs, safe_url=safe)

    def _adopt_pending(self) -> None:
        """After a (re)start: every job still pending for us is either over (ack it) or held again."""
        resp = self.redis.xreadgroup(self.keys.group, CONSUMER, {self.keys.ingest: "0"}, count=10_000)
        for _, entries in resp or []:
            for entry, fields in entries:
                if fields is None:  # trimmed away
                    self.redis.xack(self.keys.ingest, self.keys.group, entry)
                    continue
                try:
                    job = IngestJob.from_fields(fields)
                except JobError:
                    self.redis.xack(self.keys.ingest, self.keys.group, entry)
                    continue
                sid = job.stream_id_for(entry)
                st = StreamState.from_hash(sid, self.redis.hgetall(self.keys.stream(sid)))
                if st.entry != entry or st.status.terminal:
                    self.redis.xack(self.keys.ingest, self.keys.group, entry)
                    continue
                a = self._admit(sid, entry, job, st.url or redact(job.url))
                if a is None:
                    continue
                self.held[sid] = Held(a.handed(st.token), decoder=st.owner or None, since=time.time(),
                                      attempts=st.attempts)
                log.info("stream %s: adopted after a restart (owner %s)", sid, st.owner)

    def _read_new(self) -> None:
        room = len(self.decoders) * self.settings.decoder.max_streams - len(self.held)
        if room <= 0:
            time.sleep(self.settings.supervisor.poll_ms / 1000)
            return
        resp = self.redis.xreadgroup(self.keys.group, CONSUMER, {self.keys.ingest: ">"}, count=min(room, 32),
                                     block=self.settings.supervisor.poll_ms)
        for _, entries in resp or []:
            for entry, fields in entries:
                self.ingested += 1
                self._take(entry, fields)

    def _take(self, entry: str, fields: dict) -> None:
        try:
            job = IngestJob.from_fields(fields)
        except JobError as e:
            log.warning("ingest %s: malformed job: %s", entry, e.reason)
            self._dead_and_ack(entry, FailureReason.malformed_job, e.reason, url=redact(fields.get("url", ""))[:500])
            return
        sid, safe = job.stream_id_for(entry), redact(job.url)
        if sid in self.held:
            self._dead_and_ack(entry, FailureReason.duplicate_stream, f"stream {sid} is already running",
                               url=safe, stream_id=sid)
            return
        now = time.time()
        state = StreamState(stream_id=sid, url=safe, entry=entry, created_at=now, updated_at=now,
                            options=job.options.model_dump(mode="json", exclude_none=True))
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(self.keys.stream(sid), self.keys.tags(sid))  # a stream id used again starts afresh
        pipe.hset(self.keys.stream(sid), mapping=state.to_hash())
        pipe.zadd(self.keys.streams, {sid: now})
        pipe.execute()
        a = self._admit(sid, entry, job, safe)
        if a is None:
            return
        self.held[sid] = Held(a)
        self._assign(sid)

    # -- assignment ------------------------------------------------------------------------------------
    def _load(self) -> dict[str, int]:
        load = {name: 0 for name in self.decoders}
        for h in self.held.values():
            if h.decoder in load:
                load[h.decoder] += 1
        return load

    def _assign(self, sid: str, avoid: str | None = None) -> bool:
        h = self.held[sid]
        load = self._load()
        order = sorted(load, key=lambda n: (n == avoid and len(load) > 1, load[n]))
        for name in order:
            if load[name] >= self.settings.decoder.max_streams:
                continue
            a = h.a.handed(uuid.uuid4().hex)
            self.redis.hset(self.keys.stream(sid), mapping=StreamState.encode(
                token=a.token, owner=name, attempts=h.attempts, status=StreamStatus.starting, heartbeat=time.time()))
            try:
                ok = self.call(self.decoders[name], "start_stream", a)
            except Exception as e:  # noqa: BLE001 - a dead decoder: try the next one
                log.warning("decoder %s did not take stream %s: %s", name, sid, e)
                ok = False
            if ok:
                h.a, h.decoder, h.since = a, name, time.time()
                log.info("stream %s: assigned to %s (attempt %d)", sid, name, h.attempts)
                return True
        self.redis.hset(self.keys.stream(sid), mapping=StreamState.encode(status=StreamStatus.queued, token="", owner=""))
        h.a, h.decoder, h.since = h.a.handed(""), None, time.time()
        return False

    def _check(self) -> None:
        """Reap ended streams, honour stop requests of queued ones, reclaim streams whose owner is gone."""
        if not self.held:
            return
        actives: dict[str, dict | None] = {}
        for name, d in self.decoders.items():
            try:
                actives[name] = self.call(d, "active", timeout=5)
            except Exception as e:  # noqa: BLE001 - dead or unresponsive decoder
                log.warning("decoder %s is not answering: %s", name, e)
                actives[name] = None
        sids = list(self.held)
        fields = ("status", "heartbeat", "token", "stop")
        pipe = self.redis.pipeline(transaction=False)
        for sid in sids:
            pipe.hmget(self.keys.stream(sid), *fields)
        now = time.time()
        lease = self.settings.supervisor.lease_s
        for sid, values in zip(sids, pipe.execute()):
            h = self.held[sid]
            if values[0] is None:
                del self.held[sid]
                continue
            st = StreamState.from_hash(sid, {k: v for k, v in zip(fields, values) if v is not None})
            if st.status.terminal:
                del self.held[sid]
                continue
            if h.decoder is None:
                if st.stop:
                    self._fail(sid, h.a.entry, FailureReason.stopped, "stopped on request", h.a.safe_url,
                               StreamStatus.stopped)
                else:
                    self._assign(sid)
                continue
            active = actives.get(h.decoder)
            gone = active is not None and active.get(sid) != h.a.token and now - h.since > 3.0
            silent = now - (st.heartbeat or 0.0) > lease and now - h.since > lease
            if gone or silent:
                why = "its decoder no longer runs it" if gone else f"no heartbeat for {lease:.0f} s"
                self._reclaim(sid, why)

    def _reclaim(self, sid: str, why: str) -> None:
        h = self.held[sid]
        h.attempts += 1
        if h.attempts > self.settings.supervisor.max_attempts:
            self._fail(sid, h.a.entry, FailureReason.reclaimed_too_often,
                       f"{why}; gave up after {h.attempts - 1} reassignments", h.a.safe_url)
            return
        log.warning("stream %s: reclaimed from %s (%s); resuming from its checkpoint", sid, h.decoder, why)
        self.redis.hincrby(self.keys.counters, "reclaims", 1)
        self._assign(sid, avoid=h.decoder)

    # -- endings the supervisor writes itself --------------------------------------------------------
    def _fail(self, sid: str, entry: str, reason: FailureReason, error: str, url: str,
              status: StreamStatus = StreamStatus.failed) -> None:
        """End a stream no decoder is running, through the sink's own ending (status, dead letter, counters,
        ack, event in one script), under the stream's current token: a decoder still holding it is fenced."""
        token = self.redis.hget(self.keys.stream(sid), "token") or ""
        try:
            self.sink.finish(sid, token, status, entry=entry, error=error, reason=reason, url=url)
        except Fenced:  # the token changed between the read and the script: the next tick looks again
            log.info("stream %s: changed hands while ending it; retrying on the next tick", sid)
            return
        self.held.pop(sid, None)

    def _dead_and_ack(self, entry: str, reason: FailureReason, error: str, url: str = "", stream_id: str = "") -> None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.xadd(self.keys.dead, {"entry": entry, "stream_id": stream_id, "url": url, "reason": reason.value,
                                   "error": error}, maxlen=self.settings.redis.dead_maxlen, approximate=True)
        pipe.hincrby(self.keys.counters, f"failures:{reason.value}", 1)
        pipe.xack(self.keys.ingest, self.keys.group, entry)
        pipe.execute()

    # -- loop ------------------------------------------------------------------------------------------
    def tick(self) -> None:
        now = time.time()
        if now - self._beat > 1.0:
            self._beat = now
            self.redis.set(self.keys.supervisor, f"{now:.3f}", ex=max(5, int(3 * self.settings.supervisor.lease_s)))
        self._check()
        self._read_new()

    def stats(self) -> dict:
        return {"held": len(self.held), "ingested": self.ingested,
                "by_decoder": self._load()}


def _ray_call(handle, method: str, *args, timeout: float = 30):
    import ray

    return ray.get(getattr(handle, method).remote(*args), timeout=timeout)


class SupervisorActor:
    """The supervisor's loop in a thread of its own; every error is logged, counted and retried, never fatal."""

    def __init__(self, settings: Settings, decoder_names: list[str], namespace: str | None = None):
        import ray

        from videobert.text import use_minilm

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        use_minilm(settings.minilm_dir)  # the label check at intake reads the tokenizer
        decoders = {n: ray.get_actor(n, namespace=namespace) for n in decoder_names}
        self.sup = Supervisor(settings, decoders)
        self._closing = threading.Event()
        self.errors = 0
        self._thread = threading.Thread(target=self._loop, daemon=True, name="supervisor")
        self._thread.start()

    def _loop(self) -> None:
        backoff = 0.1
        while not self._closing.is_set():
            try:
                self.sup.tick()
                backoff = 0.1
            except Exception:  # noqa: BLE001 - Redis down, a decoder gone: retry with backoff
                self.errors += 1
                log.exception("supervisor tick failed; retrying in %.1f s", backoff)
                self._closing.wait(backoff)
                backoff = min(backoff * 2, 5.0)

    def stats(self) -> dict:
        return {**self.sup.stats(), "errors": self.errors}

    def ready(self) -> bool:
        return True

    def close(self) -> None:
        self._closing.set()
        self._thread.join(timeout=10)
