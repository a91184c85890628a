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
from actors.keys import Keys, redis_client, redis_down
from actors.sink import Fenced, Sink
from actors.control import Refused, admit
from actors.url_policy import redact
from schemas.config import Settings
from schemas.state import StreamState
from schemas.streams import FailureReason, IngestJob, JobError, StreamStatus

log = logging.getLogger(__name__)


@dataclass
class Held:
    """A stream this supervisor is responsible for (its job is pending in the ingest group)."""

    a: Assignment  # its token is the current owner's ("" while no decoder has it)
    decoder: str | None = None
    since: float = 0.0
    attempts: int = 0


class Supervisor:
    """`decoders`: name -> handle with `start_stream(assignment)` and `active()` (Ray actor handles: calls go
    through `call`, which Ray-specific code supplies).

    Intake rests on Redis Streams' own semantics: each incarnation reads the group under a consumer name of
    its own, and on start takes over every pending entry (XAUTOCLAIM), whoever held it; the delivery count
    (XPENDING) tells a job that was handed over and over without ever being taken, a poison pill, which is
    dead-lettered. The ingest stream is read as bytes and each entry parsed on its own, so no entry, whatever
    its bytes, can stop the intake: a malformed one is dead-lettered, one whose handling fails is retried on
    the next tick and given up after `max_deliveries` tries."""

    def __init__(self, settings: Settings, decoders: dict, call=None):
        self.settings, self.decoders = settings, decoders
        self.keys = Keys(settings.redis.prefix)
        self.redis = redis_client(settings.redis.url)
        self.raw = redis_client(settings.redis.url, decode=False)  # the ingest stream, as clients wrote it
        self.consumer = f"supervisor-{uuid.uuid4().hex[:12]}"
        self.call = call or _ray_call
        self.sink = Sink.of(self.redis, self.keys, settings.redis)
        self.held: dict[str, Held] = {}
        self.draining: set[str] = set()  # decoders being retired: they get no new stream
        self.retired: set[str] = set()  # decoders retired (names are never reused): never taken back
        self.retry: dict[str, tuple] = {}  # entry -> (fields, handler, failed tries): handled again next tick
        self.ingested = 0
        self._beat = self._pruned = 0.0
        self._redis_back_at: float | None = time.time()  # since when Redis has answered (None: it does not now)
        self._ensure_group()
        self._recover()

    def _ensure_group(self) -> None:
        import redis

        try:
            self.redis.xgroup_create(self.keys.ingest, self.keys.group, id="0", mkstream=True)
        except redis.ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise

    # -- intake ------------------------------------------------------------------------------------------
    def _admit(self, sid: str, entry: str, job: IngestJob, safe: str) -> Assignment | None:
        """What to open for a job (`safe`: its URL redacted), as actors.control.admit checks it; None (and the
        stream ended as failed, its job acked) when it is refused."""
        try:
            url, subs = admit(job, self.settings.url_policy)
        except Refused as e:
            log.warning("stream %s: refused (%s): %s", sid, e.reason.value, e)
            self._fail(sid, entry, e.reason, str(e), safe)
            return None
        return Assignment(sid, job, entry, url, subs, safe_url=safe)

    def _recover(self) -> None:
        """After a (re)start: take over every pending entry of the group (an earlier incarnation's, or any
        consumer's that is gone) and adopt each; then forget the consumers that hold nothing any more."""
        start = "0-0"
        while True:
            nxt, claimed, *_ = self.raw.xautoclaim(self.keys.ingest, self.keys.group, self.consumer, min_idle_time=0,
                                                   start_id=start, count=500)
            for entry, fields in claimed:
                self._safely(_text(entry), fields, self._adopt)
            start = _text(nxt)
            if start == "0-0":
                break
        for c in self.redis.xinfo_consumers(self.keys.ingest, self.keys.group):
            if c["name"] != self.consumer and not c["pending"]:
                self.redis.xgroup_delconsumer(self.keys.ingest, self.keys.group, c["name"])

    def _deliveries(self, entry: str) -> int:
        p = self.redis.xpending_range(self.keys.ingest, self.keys.group, min=entry, max=entry, count=1)
        return int(p[0]["times_delivered"]) if p else 1

    def _adopt(self, entry: str, fields: dict) -> None:
        """A pending entry found at start: the stream it started is adopted again if it runs, its job acked if
        it has ended, and a job that was never taken (the supervisor stopped between reading and recording
        it) is taken now, unless it keeps coming back (a poison pill)."""
        job = self._parse(entry, fields)
        if job is None:
            return
        sid = job.stream_id_for(entry)
        st = StreamState.from_hash(sid, self.redis.hgetall(self.keys.stream(sid)))
        if st.entry == entry:
            if st.status.terminal:
                self.redis.xack(self.keys.ingest, self.keys.group, entry)
                return
            a = self._admit(sid, entry, job, st.url or redact(job.url))
            if a is not None:
                self.held[sid] = Held(a.handed(st.token), decoder=st.owner or None, since=time.time(),
                                      attempts=st.attempts)
                log.info("stream %s: adopted after a restart (owner %s)", sid, st.owner)
            return
        if st.entry and (not st.status.terminal or _entry_key(entry) < _entry_key(st.entry)):
            self._dead_and_ack(entry, FailureReason.duplicate_stream,
                               f"stream {sid} belongs to a later job ({st.entry})", url=redact(job.url), stream_id=sid)
            return
        deliveries = self._deliveries(entry)
        if deliveries > self.settings.supervisor.max_deliveries:
            self._poison(entry, fields, f"delivered {deliveries} times without ever being taken")
            return
        log.info("ingest %s: pending but never taken (delivery %d); taking it now", entry, deliveries)
        self._take_job(entry, job)

    def _read_new(self) -> None:
        for entry, (fields, handle, tries) in list(self.retry.items()):  # what failed last time, first
            del self.retry[entry]
            self._safely(entry, fields, handle, tries)
        # streams are taken up to what the largest decoder pool could run: those without a decoder yet wait as
        # queued, and their number is what makes the pool grow
        pool = max(len(self.decoders), self.settings.decoder.max_replicas or 0)
        room = pool * self.settings.decoder.max_streams - len(self.held)
        if room <= 0:
            time.sleep(self.settings.supervisor.poll_ms / 1000)
            return
        resp = self.raw.xreadgroup(self.keys.group, self.consumer, {self.keys.ingest: ">"}, count=min(room, 32),
                                   block=self.settings.supervisor.poll_ms)
        for _, entries in resp or []:
            for entry, fields in entries:
                self.ingested += 1
                self._safely(_text(entry), fields, self._take)

    def _safely(self, entry: str, fields: dict, handle, tries: int = 0) -> None:
        """`handle(entry, fields)`, and when it raises (a bug, Redis gone for a moment) the entry is kept to be
        handled again on the next tick; after `max_deliveries` tries it is dead-lettered."""
        try:
            handle(entry, fields)
        except Exception as e:  # noqa: BLE001 - one entry must never stop the intake
            tries += 1
            log.exception("ingest %s: handling failed (try %d)", entry, tries)
            if tries >= self.settings.supervisor.max_deliveries:
                try:
                    self._poison(entry, fields, f"handling failed {tries} times: {type(e).__name__}: {e}"[:500])
                    return
                except Exception:  # noqa: BLE001 - Redis still gone: keep it for later
                    log.exception("ingest %s: could not dead-letter it either", entry)
            self.retry[entry] = (fields, handle, tries)

    def _parse(self, entry: str, fields: dict) -> IngestJob | None:
        """The job of an entry, or None when it is malformed (then dead-lettered and acked)."""
        try:
            return IngestJob.from_raw(fields)
        except JobError as e:
            log.warning("ingest %s: malformed job: %s", entry, e.reason)
            self._dead_and_ack(entry, FailureReason.malformed_job, e.reason, url=_safe_url(fields))
            return None

    def _poison(self, entry: str, fields: dict, why: str) -> None:
        log.error("ingest %s: a poison pill (%s); dead-lettered", entry, why)
        self._dead_and_ack(entry, FailureReason.poison_job, why, url=_safe_url(fields))

    def _take(self, entry: str, fields: dict) -> None:
        job = self._parse(entry, fields)
        if job is not None:
            self._take_job(entry, job)

    def _take_job(self, entry: str, job: IngestJob) -> None:
        sid, safe = job.stream_id_for(entry), redact(job.url)
        if sid in self.held:
            self._dead_and_ack(entry, FailureReason.duplicate_stream, f"stream {sid} is already running",
                               url=safe, stream_id=sid)
            return
        now = time.time()
        state = StreamState(stream_id=sid, url=safe, entry=entry, created_at=now, updated_at=now, client=job.client or "",
                            options=shown_options(job))
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
        load = {name: 0 for name in list(self.decoders)}
        for h in list(self.held.values()):  # a copy: stats() reads it from another thread
            if h.decoder in load:
                load[h.decoder] += 1
        return load

    def _assign(self, sid: str, avoid: str | None = None, prefer: str | None = None) -> bool:
        h = self.held[sid]
        load = self._load()
        order = sorted(load, key=lambda n: (n != prefer, n == avoid and len(load) > 1, load[n]))
        for name in order:
            if load[name] >= self.settings.decoder.max_streams or name in self.draining:
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
            gone = h.decoder not in self.decoders or (active is not None and active.get(sid) != h.a.token
                                                      and now - h.since > 3.0)
            silent = (now - (st.heartbeat or 0.0) > lease and now - h.since > lease
                      and now - self._redis_back_at > lease)
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

    def _rebalance(self, moves: int = 2) -> int:
        """Spread the streams when decoders join: while one decoder runs more than `streams_per_replica` and
        another fewer (by two or more), move a stream from the first to the second, as a retiring decoder's
        move (fenced release, resumed from its checkpoint; no attempt counted). At most `moves` a tick."""
        target, moved = self.settings.decoder.streams_per_replica, 0
        for _ in range(moves):
            load = {n: c for n, c in self._load().items() if n not in self.draining}
            if len(load) < 2:
                break
            busiest, idlest = max(load, key=load.get), min(load, key=load.get)
            if load[busiest] <= target or load[idlest] >= target or load[busiest] - load[idlest] < 2:
                break
            sid = next(s for s, h in self.held.items() if h.decoder == busiest)
            try:
                self.call(self.decoders[busiest], "let_go", sid, timeout=15)
            except Exception as e:  # noqa: BLE001 - its liveness check decides what becomes of it
                log.warning("decoder %s did not let stream %s go: %s", busiest, sid, e)
                break
            h = self.held[sid]
            h.decoder, h.a = None, h.a.handed("")
            self._assign(sid, avoid=busiest, prefer=idlest)
            log.info("stream %s: moved from %s to %s (%d and %d streams)", sid, busiest, h.decoder, load[busiest],
                     load[idlest])
            moved += 1
        return moved

    # -- the decoder pool (actors/graph.py's autoscaler) -------------------------------------------------
    def set_decoders(self, decoders: dict, draining: set[str] = frozenset()) -> None:
        """The decoder pool: name -> handle, `draining` those being retired (they keep their streams until
        `retire` moves them, and get no new one). A new decoder is used at once; the streams of one that left
        are reclaimed on the next check (their owner is gone). A decoder already retired is left out: the pool
        may still list it as draining until it is killed, and asking a killed decoder for its streams would only
        log that it is not answering."""
        self.decoders = {n: h for n, h in decoders.items() if n not in self.retired}
        self.draining = set(draining) & set(self.decoders)

    def retire(self, name: str, handle=None, timeout: float = 30.0) -> int:
        """Drain a decoder the pool no longer wants: it is handed no new stream, it lets go of its streams
        without ending them (the fenced release: whatever it still writes is refused), and each is handed to
        another decoder at once, resuming from its checkpoint. A move, not a reclaim: it counts as no attempt.
        Returns how many streams moved."""
        d = self.decoders.get(name, handle)
        if d is None:
            return 0
        self.draining.add(name)
        try:
            self.call(d, "close", timeout=timeout)
        except Exception as e:  # noqa: BLE001 - dead already: its streams move all the same
            log.warning("decoder %s did not close cleanly while retiring: %s", name, e)
        self.decoders.pop(name, None)
        self.draining.discard(name)
        self.retired.add(name)
        moved = [sid for sid, h in self.held.items() if h.decoder == name]
        for sid in moved:
            h = self.held[sid]
            h.decoder, h.a = None, h.a.handed("")
            self._assign(sid, avoid=name)
        log.info("decoder %s retired; %d stream(s) moved", name, len(moved))
        return len(moved)

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
        pipe.xdel(self.keys.ingest, entry)  # the raw job, credentials and all, is not kept once it is done with
        pipe.execute()

    # -- loop ------------------------------------------------------------------------------------------
    def tick(self) -> None:
        """One round: heartbeat, prune the listing, check the held streams, read new jobs. A Redis outage makes
        it raise (the actor's loop retries with back-off); the first streams' silence after Redis is back is
        the outage's, not theirs, so none is reclaimed for silence until a lease has passed since then."""
        if self._redis_back_at is None:
            self._redis_back_at = time.time()
        try:
            self._tick()
        except Exception as e:
            if redis_down(e):
                self._redis_back_at = None
            raise

    def _tick(self) -> None:
        now = time.time()
        if now - self._beat > 1.0:
            self._beat = now
            self.redis.set(self.keys.supervisor, f"{now:.3f}", ex=max(5, int(3 * self.settings.supervisor.lease_s)))
        if now - self._pruned > 60:
            self._pruned = now
            self._prune_listing(now)
        self._check()
        self._rebalance()
        self._read_new()

    def _prune_listing(self, now: float) -> int:
        """Drop from the listing the streams whose state has expired (ended longer than `ended_ttl_s` ago)."""
        old = self.redis.zrangebyscore(self.keys.streams, "-inf", now - self.settings.redis.ended_ttl_s, start=0,
                                       num=1000)
        if not old:
            return 0
        pipe = self.redis.pipeline(transaction=False)
        for sid in old:
            pipe.exists(self.keys.stream(sid))
        gone = [sid for sid, alive in zip(old, pipe.execute()) if not alive]
        if gone:
            self.redis.zrem(self.keys.streams, *gone)
        return len(gone)

    def stats(self) -> dict:
        return {"held": len(self.held), "ingested": self.ingested, "by_decoder": self._load(),
                "unassigned": sum(1 for h in list(self.held.values()) if h.decoder is None)}


def _text(b) -> str:
    return b.decode() if isinstance(b, bytes) else b


def _entry_key(entry: str) -> tuple[int, int]:
    ms, _, seq = entry.partition("-")
    return int(ms), int(seq or 0)


def _safe_url(fields: dict) -> str:
    """The URL of raw entry fields, credentials masked, for a dead letter (whatever its bytes)."""
    raw = fields.get(b"url", fields.get("url", b""))
    return redact(raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw))[:500]


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
        decoders = {}
        for n in decoder_names:  # after a restart some may have retired since: the autoscaler sends the pool
            try:
                decoders[n] = ray.get_actor(n, namespace=namespace)
            except ValueError:
                log.info("decoder %s is gone", n)
        self.sup = Supervisor(settings, decoders)
        self._lock = threading.Lock()  # the loop's tick and the pool's changes, one at a time
        self._closing = threading.Event()
        self.errors = 0
        self._thread = threading.Thread(target=self._loop, daemon=True, name="supervisor")
        self._thread.start()

    def _loop(self) -> None:
        backoff = 0.1
        while not self._closing.is_set():
            try:
                with self._lock:
                    self.sup.tick()
                backoff = 0.1
            except Exception:  # noqa: BLE001 - Redis down, a decoder gone: retry with backoff
                self.errors += 1
                log.exception("supervisor tick failed; retrying in %.1f s", backoff)
                self._closing.wait(backoff)
                backoff = min(backoff * 2, 5.0)

    def stats(self) -> dict:
        return {**self.sup.stats(), "errors": self.errors, "decoders": sorted(self.sup.decoders),
                "draining": sorted(self.sup.draining)}

    def set_decoders(self, decoders: dict, draining: list[str] = ()) -> None:
        with self._lock:
            self.sup.set_decoders(decoders, set(draining))

    def retire_decoder(self, name: str, handle=None, timeout: float = 30.0) -> int:
        with self._lock:
            return self.sup.retire(name, handle, timeout)

    def ready(self) -> bool:
        return True

    def close(self) -> None:
        self._closing.set()
        self._thread.join(timeout=10)


def shown_options(job: IngestJob) -> dict:
    """A job's options as the stream's state keeps them: its rules' webhooks masked (a webhook's path may be its
    secret; the rules deployment reads them from the ingest job, which is deleted when the stream ends)."""
    from actors.rules import masked

    options = job.options.model_dump(mode="json", exclude_none=True)
    rules = options.pop("rules", [])
    if rules:
        options["rules"] = [{**r, "webhook": masked(r["webhook"])} if r.get("webhook") else r for r in rules]
    return options
