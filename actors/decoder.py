"""The decoder actor: hosts the streams the supervisor hands it, each a `StreamRunner` (actors/runner.py) in
threads of its own, and beats their hearts in Redis (which also carries stop requests and what each stream
counted). Run as a threaded Ray actor by actors/graph.py; a plain class, so tests can host it without Ray."""

from __future__ import annotations

import logging
import threading
import time

from actors.assignment import Assignment
from actors.pipeline import Pipeline, RayPipeline, StageSet
from actors.placement import here
from actors.runner import StreamRunner
from actors.sink import Fenced, Sink
from actors.snapshot import SnapshotTap
from videobert.reader import ClipSpec

log = logging.getLogger(__name__)



class DecoderActor:
    def __init__(self, name: str, settings, stage_handles: dict | None = None, pipeline_factory=None,
                 spec: dict | None = None):
        from actors.keys import Keys, redis_client
        from actors.metrics import Metrics
        from videobert.text import use_minilm

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        use_minilm(settings.minilm_dir)
        self.name, self.settings = name, settings
        self.keys = Keys(settings.redis.prefix)
        self.redis = redis_client(settings.redis.url)
        self.sink = Sink.of(self.redis, self.keys, settings.redis)
        self.metrics = Metrics(self.redis, self.keys).start()
        self.stages = StageSet(stage_handles or {})
        self._pipeline_factory = pipeline_factory
        self._spec: ClipSpec | None = ClipSpec.from_dict(spec) if spec else None
        self.runners: dict[str, StreamRunner] = {}
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self.finished: dict[str, int] = {}  # final status -> count (stats)
        threading.Thread(target=self._heartbeats, daemon=True, name="heartbeats").start()

    def _clip_spec(self) -> ClipSpec:
        if self._spec is None:
            import ray

            s = ray.get(self.stages.pick("video_encoder", 0).clip_spec.remote(), timeout=120)
            self._spec = ClipSpec.from_dict(s)
        return self._spec

    def _pipeline(self, key: int) -> Pipeline:
        if self._pipeline_factory is not None:
            return self._pipeline_factory(key)
        return RayPipeline(self.stages, key)

    def set_stages(self, version: int, handles: dict[str, list]) -> int:
        """The model replicas to use from now on (the autoscaler's); returns the version this decoder has."""
        self.stages.update(handles, version)
        return self.stages.version

    def where(self) -> dict:
        """Where this replica runs, for `vbs status --graph` and /readyz."""
        return {**here(), "device": "cpu", "streams": len(self.runners), "stages_version": self.stages.version}

    def start_stream(self, a: Assignment) -> bool:
        """Take a stream (returns at once; the stream runs in a thread). False when full or closing."""
        with self._lock:
            if self._closing.is_set() or len(self.runners) >= self.settings.decoder.max_streams:
                return False
            old = self.runners.get(a.stream_id)
            if old is not None:
                old.fenced.set()
        d = self.settings.decoder  # the stream's clips pass a thumbnail tap on their way (made while watched)
        pipeline = SnapshotTap(self._pipeline(hash(a.stream_id)), a.stream_id, self.redis, self.keys,
                               d.snapshot_width, d.snapshot_ttl_s, self.metrics)
        runner = StreamRunner(a, pipeline, self.sink, self._clip_spec(), self.settings.decoder,
                              self.redis, self.keys, self.metrics, owner=self.name, policy=self.settings.url_policy,
                              speech=self.settings.speech)
        with self._lock:
            self.runners[a.stream_id] = runner
        threading.Thread(target=self._run, args=(runner,), daemon=True, name=f"stream-{a.stream_id}").start()
        return True

    def _run(self, runner: StreamRunner) -> None:
        status = runner.run()
        with self._lock:
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
                    if r.report():
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

    def let_go(self, stream_id: str, timeout: float = 10.0) -> bool:
        """Give one stream back without ending it (the fenced release), for the supervisor to move it to another
        decoder, and wait until its runner has stopped (it holds the source: a UDP port, a connection). False if
        it does not run here."""
        with self._lock:
            r = self.runners.get(stream_id)
        if r is None:
            return False
        r.fenced.set()
        try:
            self.sink.release(stream_id, r.a.token)
        except Exception as e:  # noqa: BLE001 - the new owner's token fences it all the same
            log.warning("stream %s: could not release: %s", stream_id, e)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if self.runners.get(stream_id) is not r:
                    break
            time.sleep(0.05)
        return True

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
