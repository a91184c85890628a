"""The decoder: runs streams. Per stream, a reader thread (actors/source.py) cuts clips into a bounded
buffer, and the runner sends each clip through the model stages and commits the results in order to the
sink. Back-pressure: a live source drops its oldest buffered clip when the model falls behind (counted);
a file waits. A live source that fails reconnects with backoff; a stalled reader (no packet and no error
for `watchdog_s`: PyAV can hang on a source that accepts and sends nothing) is abandoned and treated as a
failed connection.

`StreamRunner` needs a `Pipeline`: `RayPipeline` (the model actors) or `LocalPipeline` (the stage classes
in this process: tests, benchmarks and GPU checks without Ray). `DecoderActor` hosts many runners and
beats their hearts in Redis."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol

from actors.sink import Fenced, Sink
from actors.source import SourceError, SourceReader, StreamClip
from actors.stages import FusionItem
from actors.url_policy import redact, scheme_of
from schemas.config import DecoderSettings
from schemas.streams import IngestJob, StreamStatus
from videobert.reader import ClipSpec

log = logging.getLogger(__name__)


class Pipeline(Protocol):
    def check_labels(self, template: str | None, labels: dict | None) -> str | None: ...

    def submit(self, clip: StreamClip, context: list[Any], item: FusionItem) -> tuple[Any, Any]:
        """Start a clip through the stages: returns (handle of its visual word, handle of its result)."""

    def result(self, handle: Any, timeout: float) -> dict | None:
        """The result if it is ready within `timeout` seconds, else None. Raises the stage's error."""


class LocalPipeline:
    """The stages called in this process, one clip at a time (no batching across streams)."""

    def __init__(self, video_encoder, language, fusion):
        self.video_encoder, self.language, self.fusion = video_encoder, language, fusion

    def check_labels(self, template, labels):
        try:
            self.fusion.label_slots(template, labels)
        except ValueError as e:
            return str(e)
        return None

    def submit(self, clip, context, item):
        word = self.video_encoder([clip.frames])[0]
        text = self.language([clip.text])[0] if clip.text else None
        from dataclasses import replace

        item = replace(item, words=tuple(context) + (word,), text_ids=tuple(text) if text else None)
        return word, self.fusion([item])[0]

    def result(self, handle, timeout):
        return handle


class RayPipeline:
    """Clips through the model actors as a chain of object refs: the decoder never waits between stages,
    and each stage batches across every stream. A stream sticks to one replica of each stage."""

    def __init__(self, video_encoders: list, languages: list, fusions: list, key: int = 0):
        self.v = video_encoders[key % len(video_encoders)]
        self.l = languages[key % len(languages)]
        self.f = fusions[key % len(fusions)]

    def check_labels(self, template, labels):
        import ray

        return ray.get(self.f.check_labels.remote(template, labels), timeout=60)

    def submit(self, clip, context, item):
        word = self.v.encode.remote(clip.frames)
        text = self.l.encode.remote(clip.text) if clip.text else None
        return word, self.f.tag.remote(item, text, *context, word)

    def result(self, handle, timeout):
        import ray

        ready, _ = ray.wait([handle], timeout=timeout)
        return ray.get(ready[0]) if ready else None


@dataclass
class Assignment:
    """A stream handed to a decoder by the supervisor."""

    stream_id: str
    token: str
    job: IngestJob
    entry: str = ""  # ingest entry id, acked when the stream ends
    url: str = ""  # what to open (the policy's answer: an absolute path for files)
    subtitles: str = ""  # the job's subtitles_url as the policy answered it, or ""


@dataclass
class Counters:
    frames: int = 0
    clips: int = 0
    dropped: int = 0
    reconnects: int = 0
    replayed: int = 0
    latencies: list[float] = field(default_factory=list)  # live end-to-end, recent


class StreamRunner:
    """Runs one stream until it ends, fails, is stopped or is taken away (fenced)."""

    def __init__(self, a: Assignment, pipeline: Pipeline, sink: Sink, spec: ClipSpec, settings: DecoderSettings,
                 redis, keys, sidecar_cues=None, metrics=None):
        self.a, self.pipeline, self.sink, self.spec, self.settings = a, pipeline, sink, spec, settings
        self.metrics = metrics  # actors.metrics.Metrics, or None (tests, benchmarks)
        self.redis, self.keys = redis, keys
        self.sidecar_cues = sidecar_cues
        self.stop_requested = threading.Event()
        self.fenced = threading.Event()
        self.counters = Counters()
        self.status = StreamStatus.starting
        self._cond = threading.Condition()
        self._buffer: deque[StreamClip] = deque()
        self._reader_done: SourceError | bool | None = None  # True: clean end; SourceError: failure
        self._generation = 0
        self._reader: SourceReader | None = None
        opts = a.job.options
        self.stride = 1.0 / opts.clip_rate if opts.clip_rate else spec.seconds
        self.item = FusionItem(words=(), template=opts.template,
                               labels=tuple((k, tuple(v)) for k, v in opts.labels.items()) if opts.labels else None)

    # -- the reader thread ---------------------------------------------------------------------------
    def _read(self, generation: int, reader: SourceReader) -> None:
        outcome: SourceError | bool = True
        try:
            for clip in reader.clips():
                with self._cond:
                    if generation != self._generation:
                        return  # abandoned by the watchdog: a newer reader owns the stream
                    if reader.live:
                        if len(self._buffer) >= self.settings.max_in_flight:
                            self._buffer.popleft()
                            self.counters.dropped += 1
                            self._metric("vbs_decoder_clips_dropped_total")
                    else:
                        while (len(self._buffer) >= self.settings.max_in_flight and generation == self._generation
                               and not self._stopping()):
                            self._cond.wait(0.5)
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

    def _metric(self, name: str, value: int = 1) -> None:
        if self.metrics is not None:
            self.metrics.inc(name, value)

    def frames_total(self) -> int:
        return self.counters.frames + (self._reader.frames_decoded if self._reader else 0)

    def _stopping(self) -> bool:
        return self.stop_requested.is_set() or self.fenced.is_set()

    def _start_reader(self, resume_after: float | None, started_at: float) -> SourceReader:
        with self._cond:
            self._generation += 1
            self._reader_done = None
            gen = self._generation
        reader = SourceReader(self.a.url, self.spec, self.settings, stride=self.stride, resume_after=resume_after,
                              live=self.a.job.options.live, started_at=started_at, sidecar_cues=self.sidecar_cues)
        self._reader = reader
        threading.Thread(target=self._read, args=(gen, reader), daemon=True,
                         name=f"read-{self.a.stream_id}-{gen}").start()
        return reader

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
        except Exception as e:  # noqa: BLE001 - never a silently dead stream
            log.exception("stream %s: runner crashed", sid)
            self._finish(StreamStatus.failed, "internal", f"{type(e).__name__}: {e}")
            return StreamStatus.failed
        finally:
            with self._cond:
                self._generation += 1  # any reader still running is now abandoned
                self._cond.notify_all()

    def _checkpoint(self) -> tuple[float | None, float]:
        h = self.redis.hmget(self.keys.stream(self.a.stream_id), "last_t0", "started_at")
        last = float(h[0]) if h[0] not in (None, "") else None
        started = float(h[1]) if h[1] not in (None, "") else time.time()
        return last, started

    def _run(self) -> StreamStatus:
        sid = self.a.stream_id
        problem = self.pipeline.check_labels(self.item.template, dict((k, list(v)) for k, v in self.item.labels)
                                             if self.item.labels else None)
        if problem:
            return self._finish(StreamStatus.failed, "bad_options", problem)
        last_t0, started_at = self._checkpoint()
        self.sink.set_status(sid, self.a.token, StreamStatus.starting, started_at=f"{started_at:.3f}",
                             owner_pid=str(threading.get_native_id()))
        if last_t0 is not None:
            log.info("stream %s: resuming after the clip at %.3f s", sid, last_t0)
        reader = self._start_reader(last_t0, started_at)
        inflight: deque[tuple[StreamClip, Any]] = deque()
        context: deque = deque(maxlen=self.settings.context_clips)
        failures_in_a_row, backoff = 0, self.settings.reconnect_initial_s
        dropped_reported = 0
        clips_before = 0  # clips committed before the last failure
        while True:
            if self.fenced.is_set():
                raise Fenced(sid)
            if self.stop_requested.is_set():
                self._drain(inflight, dropped_reported)
                return self._finish(StreamStatus.stopped, "stopped", "stopped on request")
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
                    dropped_reported = self._complete_one(inflight, dropped_reported)
            except (Fenced, ValueError):
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
                    self.sink.set_status(sid, self.a.token, StreamStatus.running, live=int(reader.live))
                    failures_in_a_row, backoff = 0, self.settings.reconnect_initial_s
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
            self.counters.frames += reader.frames_decoded
            if done is True:
                if reader.live and self.counters.clips == 0:
                    done = SourceError("no_frames", "the live source ended before the first clip", retry=True)
                else:
                    return self._finish(StreamStatus.finished, "", "")
            err: SourceError = done  # type: ignore[assignment]
            may_retry = err.retry and (reader.live or scheme_of(self.a.url) != "file" or err.reason == "stage_error")
            limit = self.settings.max_reconnects if reader.live else min(3, self.settings.max_reconnects)
            if not may_retry or failures_in_a_row >= limit:
                log.warning("stream %s: failed: %s (%s)", sid, err, err.reason)
                return self._finish(StreamStatus.failed, err.reason, str(err))
            failures_in_a_row += 1
            clips_before = self.counters.clips
            self.counters.reconnects += 1
            self._metric("vbs_decoder_reconnects_total")
            log.info("stream %s: %s; reconnecting in %.1f s (attempt %d)", sid, err, backoff, failures_in_a_row)
            self.status = StreamStatus.reconnecting
            self.sink.set_status(sid, self.a.token, StreamStatus.reconnecting, error=str(err)[:500],
                                 reconnects=self.counters.reconnects)
            if self.stop_requested.wait(backoff):
                continue
            backoff = min(backoff * 2, self.settings.reconnect_max_s)
            last_t0, started_at = self._checkpoint()
            reader = self._start_reader(last_t0, started_at)

    def _complete_one(self, inflight: deque, dropped_reported: int) -> int:
        clip, handle = inflight[0]
        result = self.pipeline.result(handle, timeout=0.2)
        if result is None:
            return dropped_reported
        inflight.popleft()
        row = {"t0": clip.t0, "t1": clip.t1, "labels": result["labels"], "alignment": result["alignment"],
               "subtitle": clip.text}
        if "embedding" in result:
            row["embedding"] = result["embedding"]
        if clip.end_wall is not None:
            row["latency_s"] = round(max(0.0, time.time() - clip.end_wall), 3)
        dropped = self.counters.dropped - dropped_reported
        if self.sink.commit(self.a.stream_id, self.a.token, row, dropped=dropped):
            self.counters.clips += 1
            self._metric("vbs_pipeline_clips_tagged_total")
            if "latency_s" in row:
                self.counters.latencies = (self.counters.latencies + [row["latency_s"]])[-2000:]
                if self.metrics is not None:
                    self.metrics.observe("vbs_tag_latency_seconds", row["latency_s"])
        else:
            self.counters.replayed += 1
            log.info("stream %s: clip %d at %.3f s was already written (replay)", self.a.stream_id, clip.index, clip.t0)
        return dropped_reported + dropped

    def _drain(self, inflight: deque, dropped_reported: int) -> None:
        deadline = time.monotonic() + 10
        while inflight and time.monotonic() < deadline:
            dropped_reported = self._complete_one(inflight, dropped_reported)

    def _finish(self, status: StreamStatus, reason: str, error: str) -> StreamStatus:
        self.status = status
        self.sink.finish(self.a.stream_id, self.a.token, status, entry=self.a.entry, error=error, reason=reason,
                         url=redact(self.a.job.url))
        log.info("stream %s: %s %s", self.a.stream_id, status.value, f"({reason}: {error})" if reason else "")
        return status


class DecoderActor:
    """Hosts the streams the supervisor hands it, each in its own threads, and refreshes their heartbeats
    (which also carries stop requests and counters). Run as a threaded Ray actor by actors/graph.py."""

    def __init__(self, name: str, settings, stage_handles: dict | None = None, pipeline_factory=None,
                 spec: dict | None = None):
        import actors.keys as keys_mod

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.name, self.settings = name, settings
        self.keys = keys_mod.Keys(settings.redis.prefix)
        self.redis = keys_mod.redis_client(settings.redis.url)
        self.sink = Sink(self.redis, self.keys, settings.redis.tags_maxlen, settings.redis.dead_maxlen)
        from actors.metrics import Metrics

        self.metrics = Metrics(self.redis, self.keys).start()
        self._frames_reported: dict[int, int] = {}  # id(runner) -> frames already counted
        self.handles = stage_handles or {}
        self._pipeline_factory = pipeline_factory
        self._spec: ClipSpec | None = ClipSpec.from_dict(spec) if spec else None
        self.runners: dict[str, StreamRunner] = {}
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self.finished: dict[str, int] = {}  # final status -> count (metrics)
        threading.Thread(target=self._heartbeats, daemon=True, name="heartbeats").start()

    def _clip_spec(self) -> ClipSpec:
        if self._spec is None:
            import ray

            s = ray.get(self.handles["video_encoder"][0].clip_spec.remote(), timeout=120)
            self._spec = ClipSpec.from_dict(s)
        return self._spec

    def _pipeline(self, key: int) -> Pipeline:
        if self._pipeline_factory is not None:
            return self._pipeline_factory(key)
        return RayPipeline(self.handles["video_encoder"], self.handles["language"], self.handles["fusion"], key)

    def start_stream(self, a: Assignment) -> bool:
        """Take a stream (returns at once; the stream runs in a thread). False when full or closing."""
        with self._lock:
            if self._closing.is_set() or len(self.runners) >= self.settings.decoder.max_streams:
                return False
            old = self.runners.get(a.stream_id)
            if old is not None:
                old.fenced.set()
        cues = self._sidecar(a)
        runner = StreamRunner(a, self._pipeline(hash(a.stream_id)), self.sink, self._clip_spec(), self.settings.decoder,
                              self.redis, self.keys, cues, self.metrics)
        with self._lock:
            self.runners[a.stream_id] = runner
        threading.Thread(target=self._run, args=(runner,), daemon=True, name=f"stream-{a.stream_id}").start()
        return True

    def _sidecar(self, a: Assignment):
        """Sidecar cues: the job's subtitles_url (already checked by the policy), else `<file>.srt/.vtt`."""
        from videobert import subtitles

        try:
            if a.subtitles:
                return subtitles.parse(_fetch_text(a.subtitles))
            if scheme_of(a.url) == "file" and (p := subtitles.find_sidecar(a.url)) is not None:
                return subtitles.read_sidecar(p)
        except Exception as e:  # noqa: BLE001 - subtitles are optional: the stream runs without them
            log.warning("stream %s: ignoring sidecar subtitles: %s", a.stream_id, str(e)[:200])
        return None

    def _count_frames(self, runner: StreamRunner) -> None:
        total = runner.frames_total()
        delta = total - self._frames_reported.get(id(runner), 0)
        if delta > 0:
            self._frames_reported[id(runner)] = total
            self.metrics.inc("vbs_decoder_frames_decoded_total", delta)

    def _run(self, runner: StreamRunner) -> None:
        status = runner.run()
        with self._lock:
            self._count_frames(runner)
            self._frames_reported.pop(id(runner), None)
            if self.runners.get(runner.a.stream_id) is runner:
                del self.runners[runner.a.stream_id]
            self.finished[status.value] = self.finished.get(status.value, 0) + 1

    def _heartbeats(self) -> None:
        every = self.settings.supervisor.heartbeat_s
        while not self._closing.wait(every):
            with self._lock:
                runners = list(self.runners.values())
            for r in runners:
                try:
                    c = r.counters
                    with self._lock:
                        self._count_frames(r)
                    if self.sink.heartbeat(r.a.stream_id, r.a.token, owner=self.name, frames_decoded=r.frames_total(),
                                           clips_dropped_total=c.dropped, reconnects=c.reconnects):
                        r.stop_requested.set()
                except Fenced:
                    r.fenced.set()
                except Exception as e:  # noqa: BLE001 - Redis blips: the next beat tries again
                    log.warning("heartbeat of %s failed: %s", r.a.stream_id, e)

    def active(self) -> dict[str, str]:
        """stream id -> ownership token of every stream running here (the supervisor's liveness check)."""
        with self._lock:
            return {sid: r.a.token for sid, r in self.runners.items()}

    def stats(self) -> dict:
        with self._lock:
            runners = list(self.runners.values())
            finished = dict(self.finished)
        lat = [x for r in runners for x in r.counters.latencies]
        return {"name": self.name, "streams": len(runners), "finished": finished,
                "frames": sum(r.frames_total() for r in runners),
                "clips": sum(r.counters.clips for r in runners), "dropped": sum(r.counters.dropped for r in runners),
                "reconnects": sum(r.counters.reconnects for r in runners), "latencies": lat}

    def close(self, timeout: float = 10.0) -> int:
        """Shutdown: stop taking streams and let go of the running ones *without* ending them, so that
        whoever runs the graph next resumes them from their checkpoints. Returns how many were let go."""
        self._closing.set()
        with self._lock:
            runners = list(self.runners.values())
        for r in runners:
            r.fenced.set()
            try:
                self.sink.release(r.a.stream_id, r.a.token)
            except Exception as e:  # noqa: BLE001 - the lease expires and the stream is reclaimed anyway
                log.warning("stream %s: could not release: %s", r.a.stream_id, e)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if not self.runners:
                    break
            time.sleep(0.05)
        self.metrics.close()
        return len(runners)


def _short_error(e: Exception) -> str:
    """One line for a status: a Ray task error carries the remote exception as its cause."""
    cause = getattr(e, "cause", None) or e
    return f"{type(cause).__name__}: {str(cause).strip().splitlines()[-1] if str(cause).strip() else ''}"[:300]


def _fetch_text(url: str, limit: int = 2_000_000) -> str:
    """A sidecar subtitle file over HTTP(S) or from disk, at most `limit` bytes."""
    if scheme_of(url) == "file":  # an absolute path: check_url resolved it under the media root
        with open(url, "rb") as f:
            data = f.read(limit + 1)
    else:
        import urllib.request

        with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 - checked by the URL policy first
            data = resp.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"subtitle file larger than {limit} bytes")
    return data.decode("utf-8", "replace")
