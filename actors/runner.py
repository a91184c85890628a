"""One stream, from its assignment to its end. A reader thread (actors/source.py) cuts clips into a bounded
buffer under the stream's back-pressure policy (drop the oldest clip, or wait); the runner sends each clip
through the model stages (a `Pipeline`) and commits the results in order to the sink. A source that fails
reconnects with back-off (`Reconnects`); a stalled reader (no packet and no error for `watchdog_s`: PyAV can
hang on a source that accepts and sends nothing) is abandoned and treated as a failed connection. What the
stream counts (`Counters`) reaches its state in Redis and the metrics through `report`, once."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from actors.assignment import Assignment
from actors.keys import redis_down
from actors.pipeline import Pipeline
from actors.sink import Fenced, Sink
from actors.source import TRUSTED, SourceError, SourceReader, StreamClip, sidecar_cues
from actors.stages import FusionItem
from actors.url_policy import scheme_of
from schemas.config import DecoderSettings, SpeechSettings, UrlPolicy
from schemas.state import StreamState
from schemas.streams import BackPressure, FailureReason, StreamStatus
from videobert.reader import ClipSpec
from videobert.tagging import tag_result

log = logging.getLogger(__name__)

class RedisUnavailable(Exception):
    """Redis did not take a write for longer than `redis_outage_s` (down, or out of memory)."""


# stream-state counter -> the metric that counts the same thing across every stream
METRIC_OF = {"frames_decoded": "vbs_decoder_frames_decoded_total", "clips_dropped": "vbs_decoder_clips_dropped_total",
             "clips_missed": "vbs_decoder_clips_missed_total", "live_gaps": "vbs_decoder_live_gaps_total",
             "reconnects": "vbs_decoder_reconnects_total"}


@dataclass
class Counters:
    """What this runner counted. `unreported()` gives what the stream's state (and the metrics) have not
    had yet, `reported()` marks it had: each count is kept here once and added there once."""

    frames: int = 0  # decoded by readers that have ended (the running reader counts its own)
    clips: int = 0
    dropped: int = 0
    missed: int = 0  # live clips on the grid never read (the source was away)
    gaps: int = 0  # runs of them
    reconnects: int = 0
    replayed: int = 0
    latencies: list[float] = field(default_factory=list)  # live end-to-end, recent
    _reported: dict[str, int] = field(default_factory=dict)

    def unreported(self, frames_now: int) -> dict[str, int]:
        now = {"frames_decoded": frames_now, "clips_dropped": self.dropped, "clips_missed": self.missed,
               "live_gaps": self.gaps, "reconnects": self.reconnects}
        return {k: v - self._reported.get(k, 0) for k, v in now.items() if v != self._reported.get(k, 0)}

    def reported(self, deltas: dict[str, int]) -> None:
        for k, v in deltas.items():
            self._reported[k] = self._reported.get(k, 0) + v


@dataclass
class Reconnects:
    """The back-off of a source that keeps failing: failures in a row, the next wait (doubling up to
    `max_s`), and whether to give up."""

    initial_s: float
    max_s: float
    in_a_row: int = 0
    wait_s: float = 0.0

    def __post_init__(self) -> None:
        self.wait_s = self.initial_s

    def recovered(self) -> None:
        self.in_a_row, self.wait_s = 0, self.initial_s

    def exhausted(self, limit: int) -> bool:
        return self.in_a_row >= limit

    def next_wait(self) -> float:
        """Count one more failure; the time to wait before trying again."""
        wait = self.wait_s
        self.in_a_row += 1
        self.wait_s = min(self.wait_s * 2, self.max_s)
        return wait


class StreamRunner:
    """Runs one stream until it ends, fails, is stopped or is taken away (fenced)."""

    def __init__(self, a: Assignment, pipeline: Pipeline, sink: Sink, spec: ClipSpec, settings: DecoderSettings,
                 redis, keys, metrics=None, owner: str = "", policy: UrlPolicy = TRUSTED,
                 speech: SpeechSettings | None = None):
        self.a, self.pipeline, self.sink, self.spec, self.settings = a, pipeline, sink, spec, settings
        self.speech = speech or SpeechSettings()  # [speech]: disabled, a stream's audio is never listened to
        self.policy = policy  # every connection the stream makes is held to it (actors.fetch)
        self.metrics = metrics  # actors.metrics.Metrics, or None (tests, benchmarks)
        self.redis, self.keys, self.owner = redis, keys, owner
        self.sidecar_cues = None  # read in the stream's own thread when it starts (never in the actor's call)
        self.stop_requested = threading.Event()
        self.fenced = threading.Event()
        self.counters = Counters()
        self.status = StreamStatus.starting
        self._cond = threading.Condition()
        self._buffer: deque[StreamClip] = deque()
        self._reader_done: SourceError | bool | None = None  # True: clean end; SourceError: failure
        self._generation = 0
        self._reader: SourceReader | None = None
        self._last_index: int | None = None  # the grid index of the last clip read (or committed, at a restart)
        self._report_lock = threading.Lock()
        opts = a.job.options
        self.stride = 1.0 / opts.clip_rate if opts.clip_rate else spec.seconds
        self.item = FusionItem(words=(), labels=opts.label_set)

    # -- the reader thread ---------------------------------------------------------------------------
    def _read(self, generation: int, reader: SourceReader) -> None:
        outcome: SourceError | bool = True
        try:
            for clip in reader.clips():
                with self._cond:
                    if generation != self._generation:
                        return  # abandoned by the watchdog: a newer reader owns the stream
                    self._mind_the_gap(reader, clip)
                    if self.a.job.options.policy(reader.live) == BackPressure.drop_oldest:
                        if len(self._buffer) >= self.settings.max_in_flight:
                            self._buffer.popleft()
                            self.counters.dropped += 1
                    else:
                        while (len(self._buffer) >= self.settings.max_in_flight and generation == self._generation
                               and not self._stopping()):
                            self._cond.wait(0.5)
                            reader.last_progress = time.monotonic()  # waiting on us, not on the source
                        if generation != self._generation:
                            return  # abandoned while it waited: its clip belongs to no one now
                    self._buffer.append(clip)
                    self._cond.notify_all()
                if self._stopping():
                    return
        except SourceError as e:
            outcome = e
        except Exception as e:  # noqa: BLE001 - a bug or an odd source must still end as a recorded failure
            log.exception("stream %s: reader crashed", self.a.stream_id)
            outcome = SourceError("internal", f"reader error: {type(e).__name__}: {e}")
        finally:
            with self._cond:
                if generation == self._generation:
                    self._reader_done = outcome
                    self._cond.notify_all()

    def _mind_the_gap(self, reader: SourceReader, clip: StreamClip) -> None:
        """Count the clips a live stream skipped since the last one read or committed: a reconnect, a resume on
        another decoder, an outage. (A file resumes where it stopped and skips nothing.)"""
        if reader.live and self._last_index is not None and clip.index > self._last_index + 1:
            self.counters.gaps += 1
            self.counters.missed += clip.index - self._last_index - 1
        self._last_index = clip.index if self._last_index is None else max(self._last_index, clip.index)

    def frames_total(self) -> int:
        reader = self._reader
        return self.counters.frames + (reader.frames_decoded if reader is not None else 0)

    def _reader_ended(self, reader: SourceReader) -> None:
        with self._report_lock:  # never counted twice, not even by a report in between
            self.counters.frames += reader.frames_decoded
            self._reader = None

    def _stopping(self) -> bool:
        return self.stop_requested.is_set() or self.fenced.is_set()

    def _start_reader(self, resume_after: float | None, started_at: float) -> SourceReader:
        with self._cond:
            self._generation += 1
            self._reader_done = None
            gen = self._generation
            # the gap is counted from the last clip committed: clips read but never committed are missed too
            self._last_index = None if resume_after is None else round(resume_after / self.stride)
        reader = SourceReader(self.a.url, self.spec, self.settings, stride=self.stride, resume_after=resume_after,
                              live=self.a.job.options.live, started_at=started_at, sidecar_cues=self.sidecar_cues,
                              policy=self.policy, tls_verify=self.a.job.options.tls_verify,
                              speech=self.pipeline if self._listens() else None,
                              text_source=self.a.job.options.text_source or "auto", speech_settings=self.speech,
                              metrics=self.metrics, stream_id=self.a.stream_id)
        self._reader = reader
        threading.Thread(target=self._read, args=(gen, reader), daemon=True,
                         name=f"read-{self.a.stream_id}-{gen}").start()
        return reader

    def _listens(self) -> bool:
        """Whether this stream's audio may be listened to: speech enabled and a speech stage there."""
        return self.speech.enabled and getattr(self.pipeline, "hears", False)

    # -- what the stream counted, to Redis and the metrics ---------------------------------------------
    def report(self, status: StreamStatus | None = None, **fields) -> bool:
        """The heartbeat: refresh the stream's lease and add what it counted since the last report to its state
        (and to the metrics), with a status change when given. Returns whether a stop was requested. Raises
        Fenced when the stream has moved on; on a Redis error the counts wait for the next report."""
        with self._report_lock:
            deltas = self.counters.unreported(self.frames_total())
            try:
                if status is None:
                    owner = {"owner": self.owner} if self.owner else {}
                    stop = self.sink.heartbeat(self.a.stream_id, self.a.token, deltas, **owner, **fields)
                else:
                    stop = self.sink.set_status(self.a.stream_id, self.a.token, status, deltas, **fields)
            except Fenced:
                self._counted_when_fenced(deltas)
                raise
            self._counted(deltas)
            return stop

    def _durable(self, what: str, fn, *args, **kwargs):
        """`fn` (a write to Redis, or a read the stream cannot go on without), ridden through a Redis outage:
        while Redis is down or out of memory, tried again with back-off and jitter for up to `redis_outage_s`
        from the first failed try (the client's own retries count in it), the stream meanwhile holding its
        place (a file's reader waits on the full buffer; a live one drops its oldest clips, recorded as
        clips_dropped). Past that, RedisUnavailable."""
        first, wait = None, 0.5
        while True:
            tried = time.monotonic()
            try:
                result = fn(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 - only an outage is ridden out; anything else goes on up
                if not redis_down(e):
                    raise
                now = time.monotonic()
                if first is None:  # the outage began when the first failed try did (the client retried meanwhile)
                    first = tried
                    log.warning("stream %s: Redis unavailable writing %s (%s); holding the stream's place",
                                self.a.stream_id, what, type(e).__name__)
                if now - first > self.settings.redis_outage_s:
                    raise RedisUnavailable(f"Redis took no write for {now - first:.0f} s ({what}): "
                                           f"{type(e).__name__}: {str(e)[:200]}") from e
                if self.fenced.wait(wait * random.uniform(0.5, 1.5)):
                    raise Fenced(self.a.stream_id) from e
                wait = min(wait * 2, 10.0)
            else:
                if first is not None:
                    log.info("stream %s: Redis is back after %.0f s; going on", self.a.stream_id, time.monotonic() - first)
                return result

    def _counted_when_fenced(self, deltas: dict[str, int]) -> None:
        """What this owner counted and never reported, added to the stream's state all the same (the new owner
        counts only its own: drops and frames of the old one were lost, and a live stream's missing clips with
        them) and to the metrics."""
        try:
            self.sink.count(self.a.stream_id, deltas)
        except Exception as e:  # noqa: BLE001 - Redis down again: these counts are lost, and said so
            log.warning("stream %s: could not add what it counted before it was fenced (%s): %s", self.a.stream_id,
                        type(e).__name__, deltas)
        self._counted(deltas)

    def _counted(self, deltas: dict[str, int]) -> None:
        self.counters.reported(deltas)
        if self.metrics is not None:
            for k, v in deltas.items():
                if v > 0:
                    self.metrics.inc(METRIC_OF[k], v)

    # -- the runner ----------------------------------------------------------------------------------
    def run(self) -> StreamStatus:
        """Blocks until the stream is over; returns its final status (or the last one, when fenced)."""
        sid = self.a.stream_id
        try:
            return self._run()
        except Fenced:
            log.info("stream %s: taken over by another owner; stopping here", sid)
            self.fenced.set()
            return self.status
        except RedisUnavailable as e:
            log.error("stream %s: %s; failing it", sid, e)
            try:
                return self._finish(StreamStatus.failed, FailureReason.redis_unavailable, str(e))
            except (Fenced, RedisUnavailable) as again:  # unrecorded: its lease runs out and the supervisor reclaims it
                log.error("stream %s: could not record its failure (%s)", sid, again)
                return StreamStatus.failed
        except Exception as e:  # noqa: BLE001 - never a silently dead stream
            log.exception("stream %s: runner crashed", sid)
            try:
                return self._finish(StreamStatus.failed, FailureReason.internal, f"{type(e).__name__}: {e}")
            except Fenced:
                self.fenced.set()
                return self.status
            except RedisUnavailable as again:  # unrecorded: its lease runs out and the supervisor reclaims it
                log.error("stream %s: could not record its failure (%s)", sid, again)
                return StreamStatus.failed
        finally:
            with self._cond:
                self._generation += 1  # any reader still running is now abandoned
                self._cond.notify_all()
            if self.fenced.is_set():
                self._counted_when_fenced(self.counters.unreported(self.frames_total()))

    def _checkpoint(self) -> tuple[float | None, float]:
        h = self._durable("checkpoint", self.redis.hmget, self.keys.stream(self.a.stream_id), "last_t0", "started_at")
        st = StreamState.from_hash(self.a.stream_id, dict(zip(("last_t0", "started_at"), h)))
        return st.last_t0, st.started_at if st.started_at is not None else time.time()

    def _run(self) -> StreamStatus:
        sid = self.a.stream_id
        self.sidecar_cues = sidecar_cues(self.a.subtitles, sid, self.settings, self.policy,
                                         self.a.job.options.tls_verify)
        last_t0, started_at = self._checkpoint()
        self._durable("status", self.report, StreamStatus.starting, started_at=started_at,
                      owner_pid=str(threading.get_native_id()))
        if last_t0 is not None:
            log.info("stream %s: resuming after the clip at %.3f s", sid, last_t0)
        reader = self._start_reader(last_t0, started_at)
        inflight: deque[tuple[StreamClip, Any]] = deque()
        context: deque = deque(maxlen=self.settings.context_clips)
        reconnects = Reconnects(self.settings.reconnect_initial_s, self.settings.reconnect_max_s)
        clips_before = 0  # clips committed before the last failure
        while True:
            if self.fenced.is_set():
                raise Fenced(sid)
            if self.stop_requested.is_set():
                self._drain(inflight)
                return self._finish(StreamStatus.stopped, FailureReason.stopped, "stopped on request")
            try:  # start buffered clips through the stages, then commit the oldest when it is ready
                with self._cond:
                    while self._buffer and len(inflight) < self.settings.max_in_flight:
                        clip = self._buffer.popleft()
                        word, handle = self.pipeline.submit(clip, list(context), self.item)
                        context.append(word)
                        inflight.append((clip, handle))
                    self._cond.notify_all()
                    done = self._reader_done
                if inflight:
                    self._complete_one(inflight)
            except (Fenced, RedisUnavailable, ValueError):
                raise
            except Exception as e:  # noqa: BLE001 - a model actor died or failed: retry from the checkpoint
                log.warning("stream %s: model stage failed: %s", sid, e)
                with self._cond:
                    self._generation += 1
                    self._buffer.clear()
                inflight.clear()
                context.clear()
                done = SourceError("stage_error", f"model stage failed: {_short_error(e)}", retry=True)
            else:
                if self.counters.clips > clips_before and self.status != StreamStatus.running:
                    self.status = StreamStatus.running  # a new clip since the last failure: the source is back
                    self._durable("status", self.report, StreamStatus.running, live=reader.live)
                    reconnects.recovered()
                if inflight:
                    continue
            if done is None:
                stalled = time.monotonic() - reader.last_progress > self.settings.watchdog_s
                if stalled:
                    with self._cond:
                        self._generation += 1  # abandon the hung reader
                    done = SourceError("stalled", f"no data for {self.settings.watchdog_s:.0f} s", retry=True)
                else:
                    with self._cond:
                        if not self._buffer and self._reader_done is None:
                            self._cond.wait(0.05)
                    continue
            with self._cond:
                if self._buffer:
                    continue
            self._reader_ended(reader)
            if done is True:
                if reader.live and self.counters.clips == 0:
                    done = SourceError("no_frames", "the live source ended before the first clip", retry=True)
                else:
                    return self._finish(StreamStatus.finished, None, "")
            err: SourceError = done  # type: ignore[assignment]
            may_retry = err.retry and (reader.live or scheme_of(self.a.url) != "file"
                                       or err.reason == FailureReason.stage_error)
            # a file's own errors rarely pass (three tries); a live source's and our model stages' do (a killed model
            # actor is back once Ray has restarted it, which takes many seconds on a busy machine)
            transient = reader.live or err.reason == FailureReason.stage_error
            limit = self.settings.max_reconnects if transient else min(3, self.settings.max_reconnects)
            if not may_retry or reconnects.exhausted(limit):
                log.warning("stream %s: failed: %s (%s)", sid, err, err.reason)
                return self._finish(StreamStatus.failed, err.reason, str(err))
            wait = reconnects.next_wait()
            clips_before = self.counters.clips
            self.counters.reconnects += 1
            log.info("stream %s: %s; reconnecting in %.1f s (attempt %d)", sid, err, wait, reconnects.in_a_row)
            self.status = StreamStatus.reconnecting
            self._durable("status", self.report, StreamStatus.reconnecting, error=str(err)[:500])
            if self.stop_requested.wait(wait):
                continue
            last_t0, started_at = self._checkpoint()
            reader = self._start_reader(last_t0, started_at)

    def _complete_one(self, inflight: deque) -> None:
        clip, handle = inflight[0]
        score = self.pipeline.result(handle, timeout=0.2)
        if score is None:
            return
        inflight.popleft()
        latency = round(max(0.0, time.time() - clip.end_wall), 3) if clip.end_wall is not None else None
        row = tag_result(clip.t0, clip.t1, clip.text, score, latency, clip.text_source)
        if self._durable("a clip", self.sink.commit, self.a.stream_id, self.a.token, row, score.vector):
            self.counters.clips += 1
            if self.metrics is not None:
                self.metrics.inc("vbs_pipeline_clips_tagged_total")
            if latency is not None:
                self.counters.latencies = (self.counters.latencies + [latency])[-2000:]
                if self.metrics is not None:
                    self.metrics.observe("vbs_tag_latency_seconds", latency)
        else:
            self.counters.replayed += 1
            log.info("stream %s: clip %d at %.3f s was already written (replay)", self.a.stream_id, clip.index, clip.t0)

    def _drain(self, inflight: deque) -> None:
        deadline = time.monotonic() + 10
        while inflight and time.monotonic() < deadline:
            self._complete_one(inflight)

    def _finish(self, status: StreamStatus, reason: FailureReason | None, error: str) -> StreamStatus:
        self.status = status
        try:
            self.report()  # the last counts first: the ending clears the token that fences them
        except Fenced:
            raise
        except Exception as e:  # noqa: BLE001 - counts are best effort; the ending is what must be written
            log.warning("stream %s: last report failed: %s", self.a.stream_id, e)
        self._durable("the ending", self.sink.finish, self.a.stream_id, self.a.token, status, entry=self.a.entry,
                      error=error, reason=reason, url=self.a.safe_url)
        log.info("stream %s: %s %s", self.a.stream_id, status.value, f"({reason.value}: {error})" if reason else "")
        return status


def _short_error(e: Exception) -> str:
    """One line for a status: a Ray task error carries the remote exception as its cause."""
    cause = getattr(e, "cause", None) or e
    return f"{type(cause).__name__}: {str(cause).strip().splitlines()[-1] if str(cause).strip() else ''}"[:300]
