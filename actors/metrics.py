"""Pipeline-wide Prometheus metrics, with Redis as the shared store.

The actors of the graph run in many processes on many nodes, and each of them restarts on its own; a
Prometheus endpoint per actor would mean discovering and scraping all of them. Instead every actor keeps
a `Metrics` recorder that adds its deltas up in memory and flushes them, about once a second, into one
Redis hash (`{prefix}:metrics`, HINCRBY/HINCRBYFLOAT in one MULTI/EXEC), so they add up across actors
and survive restarts. `render()` turns that hash, the counters the sink's and the supervisor's scripts
already keep (`{prefix}:counters`) and a few gauges read from Redis at scrape time (streams by status,
ingest backlog) into the Prometheus text format: ONE scrape target (the Serve HTTP app's /metrics)
covers the whole pipeline. Every series is declared once in `METRICS`; labels are small closed or
code-valued sets (stage, status, failure reason), never a stream id, so the series count stays bounded
however many streams run (per-stream numbers live in the stream hashes and the API instead).

Field encoding in the metrics hash (label values percent-encoded, in declaration order):
    counter            `<name>|k=v,k2=v2`           (`<name>|` without labels)
    histogram bucket   `<name>_bucket|k=v,le=<b>`   per-bucket count, NOT cumulative (`le=+Inf`: overflow);
                                                    made cumulative, and `_count` derived, at render
    histogram sum      `<name>_sum|k=v`
"""

from __future__ import annotations

import bisect
import json
import logging
import math
import re
import threading
import time
from collections.abc import Iterator, Mapping
import dataclasses
from dataclasses import dataclass
from urllib.parse import quote, unquote

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

from actors.keys import Keys
from schemas import VERSION
from schemas.streams import FailureReason, StreamStatus

log = logging.getLogger(__name__)

CONTENT_TYPE = CONTENT_TYPE_LATEST

STAGES = ("video_encoder", "language", "fusion", "speech")
POOLS = ("decoder", *STAGES)  # the graph's pools (actors/scaling.py)
STATUSES = tuple(s.value for s in StreamStatus)
FINAL_STATUSES = tuple(s.value for s in StreamStatus if s.terminal)
FAILURE_REASONS = tuple(r.value for r in FailureReason if r is not FailureReason.stopped)
MAX_STREAMS_SCANNED = 10_000  # vbs_streams looks at the most recent ids only

LATENCY_BUCKETS = (.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
TAG_LATENCY_BUCKETS = (.1, .25, .5, 1, 1.5, 2, 2.5, 3, 5, 10, 30)


@dataclass(frozen=True)
class MetricDef:
    """One declared metric. `source`: "recorder" (actors record it through `Metrics`), "counters" (read
    from the `{prefix}:counters` hash that the Lua scripts and the supervisor increment; `field` is the
    hash field, with `{label}` standing for the label's value) or "scrape" (computed from Redis at render).
    `values`: label -> the closed set of values it may take (checked when recording); a recorder metric
    whose labels are all closed is exposed at zero from the start, so `rate()` sees its first increase."""

    name: str
    type: str  # counter | histogram | gauge
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()
    source: str = "recorder"
    field: str = ""
    values: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    integer: bool = True  # counters: whole increments (HINCRBY); False for fractional ones (HINCRBYFLOAT)


METRICS: tuple[MetricDef, ...] = (
    # -- recorded by the actors ------------------------------------------------------------------------
    MetricDef("vbs_decoder_frames_decoded_total", "counter", "Video frames decoded by the decoders."),
    MetricDef("vbs_pipeline_clips_tagged_total", "counter", "Clips tagged and written to Redis."),
    MetricDef("vbs_decoder_clips_dropped_total", "counter",
              "Clips a live source dropped (oldest first) because the model stages fell behind."),
    MetricDef("vbs_decoder_reconnects_total", "counter", "Reconnections of stream sources after a failure."),
    MetricDef("vbs_decoder_clips_missed_total", "counter",
              "Clips of live streams never read because the source was away (reconnects, restarts, outages)."),
    MetricDef("vbs_decoder_live_gaps_total", "counter", "Gaps in live streams (each a run of missed clips)."),
    MetricDef("vbs_decoder_snapshots_encoded_total", "counter",
              "Stream thumbnails encoded as JPEG (at most one a second per stream, only while one is asked for)."),
    MetricDef("vbs_stage_latency_seconds", "histogram", "Time of one batch call of a model stage.",
              ("stage",), LATENCY_BUCKETS, values={"stage": STAGES}),
    MetricDef("vbs_stage_batch_size", "histogram", "Items in one batch call of a model stage.",
              ("stage",), BATCH_BUCKETS, values={"stage": STAGES}),
    MetricDef("vbs_pool_scale_events_total", "counter",
              "Replicas a pool of the graph added (up) or retired (down) to follow its load.",
              ("stage", "direction"), values={"stage": POOLS, "direction": ("up", "down")}),
    MetricDef("vbs_speech_lines_total", "counter",
              "Lines of text the speech stage recognised in streams' audio (utterances in which words were heard)."),
    MetricDef("vbs_speech_utterances_total", "counter",
              "Utterances the decoders cut from streams' audio and sent to the speech stage, by outcome: heard "
              "(words came back), silent (none), failed (the stage did not answer; the clip has no text).",
              ("outcome",), values={"outcome": ("heard", "silent", "failed")}),
    MetricDef("vbs_speech_latency_seconds", "histogram",
              "Speech stage latency as a stream sees it: an utterance sent (its end heard) to its text back.",
              (), TAG_LATENCY_BUCKETS),
    MetricDef("vbs_tag_latency_seconds", "histogram",
              "End-to-end latency of live streams: end of a clip in stream time to its tag in Redis.",
              (), TAG_LATENCY_BUCKETS),
    MetricDef("vbs_rule_events_total", "counter", "Events the rules fired (a rule passed for its clips in a row).",
              ("rule",)),
    MetricDef("vbs_webhook_deliveries_total", "counter",
              "Tries of rule webhooks: delivered (a 2xx answer), retried (to be tried again), failed (dead-lettered).",
              ("outcome",), values={"outcome": ("delivered", "retried", "failed")}),
    # -- the pipeline's own counters hash (sink Lua scripts, supervisor) -------------------------------
    MetricDef("vbs_failures_total", "counter", "Failures by reason code (failed streams, refused or malformed jobs).",
              ("reason",), source="counters", field="failures:{reason}", values={"reason": FAILURE_REASONS}),
    MetricDef("vbs_streams_ended_total", "counter", "Streams that ended, by final status.",
              ("status",), source="counters", field="streams_{status}", values={"status": FINAL_STATUSES}),
    MetricDef("vbs_supervisor_reclaims_total", "counter",
              "Streams the supervisor took back from a dead or silent decoder and reassigned.",
              source="counters", field="reclaims"),
    # -- computed from Redis at scrape time ------------------------------------------------------------
    MetricDef("vbs_streams", "gauge", f"Streams by current status (the {MAX_STREAMS_SCANNED} most recent).",
              ("status",), source="scrape", values={"status": STATUSES}),
    MetricDef("vbs_ingest_backlog", "gauge", "Jobs in the ingest stream not yet read by the supervisors.",
              source="scrape"),
    MetricDef("vbs_ingest_pending", "gauge",
              "Jobs read but not acked by the supervisors' group (streams being run).", source="scrape"),
    MetricDef("vbs_pool_replicas", "gauge", "Replicas of each pool of the graph that are running (serving).",
              ("stage",), source="scrape", values={"stage": POOLS}),
    MetricDef("vbs_pool_target_replicas", "gauge",
              "Replicas each pool wants for its load (between its min_replicas and max_replicas).",
              ("stage",), source="scrape", values={"stage": POOLS}),
    MetricDef("vbs_build_info", "gauge",
              "Always 1: the service's version and the model its fusion stage serves (\"name@hash\"; \"none\" "
              "before a fusion replica started).", ("version", "model"), source="scrape"),
    MetricDef("vbs_up", "gauge", "Always 1: the metrics endpoint answered and read Redis (a failed read fails the scrape).",
              source="scrape"),
)

BY_NAME: dict[str, MetricDef] = {m.name: m for m in METRICS}


# -- field encoding -----------------------------------------------------------------------------------
def _labels_str(pairs) -> str:
    return ",".join(f"{k}={quote(str(v), safe='')}" for k, v in pairs)


def _field(name: str, pairs=()) -> str:
    return f"{name}|{_labels_str(pairs)}"


def _parse_field(f: str) -> tuple[str, dict[str, str]] | None:
    name, sep, rest = f.partition("|")
    if not sep:
        return None
    labels = {}
    for part in rest.split(",") if rest else ():
        k, eq, v = part.partition("=")
        if not eq:
            return None
        labels[k] = unquote(v)
    return name, labels


def _s(x) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


def _check(name: str, labels: dict, kind: str) -> MetricDef:
    m = BY_NAME.get(name)
    if m is None:
        raise ValueError(f"unknown metric {name!r} (declare it in actors.metrics.METRICS)")
    if m.source != "recorder":
        raise ValueError(f"{name} is not recorded by actors (its source is {m.source})")
    if m.type != kind:
        raise ValueError(f"{name} is a {m.type}, not a {kind}")
    if len(labels) != len(m.labels) or any(k not in labels for k in m.labels):
        raise ValueError(f"{name} takes labels {list(m.labels)}, got {sorted(labels)}")
    for k, allowed in m.values.items():
        if str(labels[k]) not in allowed:
            raise ValueError(f"{name}: {k}={labels[k]!r} is not one of {list(allowed)}")
    return m


class Metrics:
    """A per-process recorder: `inc`/`observe` add up in memory (thread-safe), `flush()` writes the deltas
    to Redis in one transaction, `start()` flushes every `interval_s` in a daemon thread. A flush that fails
    (Redis down) keeps its deltas for the next one: nothing is lost and nothing raises. Recording an
    undeclared metric, the wrong labels or a value outside a closed label set raises ValueError (a bug)."""

    def __init__(self, redis, keys: Keys):
        self.redis, self.keys = redis, keys
        self._lock = threading.Lock()  # guards _pending
        self._flush_lock = threading.Lock()  # one flush at a time
        self._pending: dict[str, int | float] = {}
        self._inflight: dict[str, int | float] = {}  # the batch a flush is writing
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing_since: float | None = None
        self._last_warning = 0.0
        self.flushes = 0
        self.flush_errors = 0

    # -- recording ---------------------------------------------------------------------------------------
    def inc(self, name: str, value: int | float = 1, **labels) -> None:
        m = _check(name, labels, "counter")
        if m.integer:
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"{name} counts whole things: inc by an int, not {value!r}")
        else:
            value = float(value)
        if value < 0 or value != value:
            raise ValueError(f"{name}: a counter only goes up (got {value!r})")
        if not value:
            return
        f = _field(name, ((k, labels[k]) for k in m.labels))
        with self._lock:
            self._pending[f] = self._pending.get(f, 0) + value

    def observe(self, name: str, value: float, **labels) -> None:
        m = _check(name, labels, "histogram")
        value = float(value)
        if math.isnan(value):
            raise ValueError(f"{name}: cannot observe NaN")
        i = bisect.bisect_left(m.buckets, value)  # first bound >= value ("le")
        le = floatToGoString(m.buckets[i]) if i < len(m.buckets) else "+Inf"
        pairs = [(k, labels[k]) for k in m.labels]
        bucket = _field(f"{name}_bucket", pairs + [("le", le)])
        total = _field(f"{name}_sum", pairs)
        with self._lock:
            self._pending[bucket] = self._pending.get(bucket, 0) + 1
            self._pending[total] = self._pending.get(total, 0.0) + value

    def pending(self) -> dict[str, int | float]:
        """The deltas not yet in Redis (field -> amount), a flush's batch on its way included."""
        with self._lock:
            out = dict(self._inflight)
            for f, v in self._pending.items():
                out[f] = out.get(f, 0) + v
            return out

    # -- flushing ----------------------------------------------------------------------------------------
    def flush(self) -> bool:
        """Write the pending deltas to Redis. True when they are all written (or there were none)."""
        with self._flush_lock:
            with self._lock:
                batch, self._pending = self._pending, {}
                self._inflight = batch
            if not batch:
                return True
            try:
                pipe = self.redis.pipeline(transaction=True)
                for f, v in batch.items():
                    if isinstance(v, int):
                        pipe.hincrby(self.keys.metrics, f, v)
                    else:
                        pipe.hincrbyfloat(self.keys.metrics, f, v)
                pipe.execute()
            except Exception as e:  # noqa: BLE001 - Redis down or blipping: keep the deltas for the next try
                with self._lock:
                    for f, v in batch.items():
                        self._pending[f] = self._pending.get(f, 0) + v
                    self._inflight = {}
                self.flush_errors += 1
                now = time.monotonic()
                if self._failing_since is None:
                    self._failing_since = now
                if now - self._last_warning >= 60:
                    self._last_warning = now
                    log.warning("metrics flush failed (%d series kept for the next try): %s: %s", len(batch),
                                type(e).__name__, str(e)[:200])
                return False
            with self._lock:  # in Redis now: no longer pending, and counted, at once
                self._inflight = {}
                self.flushes += 1
            if self._failing_since is not None:
                log.info("metrics flush works again after %.0f s", time.monotonic() - self._failing_since)
                self._failing_since, self._last_warning = None, 0.0
            return True

    def start(self, interval_s: float = 1.0) -> Metrics:
        """Flush every `interval_s` seconds in a daemon thread (idempotent). Returns self."""
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, args=(interval_s,), daemon=True, name="metrics-flush")
            self._thread.start()
        return self

    def _loop(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            try:
                self.flush()
            except Exception:  # noqa: BLE001 - never let the flusher die
                log.exception("metrics flusher")

    def close(self, timeout: float = 5.0) -> bool:
        """Stop the flusher and flush once more. Returns whether everything reached Redis."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        return self.flush()


# -- rendering --------------------------------------------------------------------------------------------
def _field_regex(template: str) -> re.Pattern:
    """'failures:{reason}' -> a regex with a named group per label."""
    out, pos = "", 0
    for mt in re.finditer(r"\{(\w+)\}", template):
        out += re.escape(template[pos:mt.start()]) + f"(?P<{mt.group(1)}>.+)"
        pos = mt.end()
    return re.compile(out + re.escape(template[pos:]) + r"\Z")


_COUNTER_FIELDS = [(m, _field_regex(m.field)) for m in METRICS if m.source == "counters"]


def _closed_combinations(m: MetricDef) -> list[tuple[str, ...]]:
    """Every label-value tuple of a metric whose labels are all closed sets (one empty tuple: no labels)."""
    if any(k not in m.values for k in m.labels):
        return []
    combos: list[tuple[str, ...]] = [()]
    for k in m.labels:
        combos = [c + (v,) for c in combos for v in m.values[k]]
    return combos


def _model(r, keys: Keys) -> str:
    """The id of the model the fusion stage serves ("none" before one started, or when the record is unreadable)."""
    raw = r.get(keys.model)
    try:
        return str(json.loads(_s(raw))["id"]) if raw else "none"
    except (ValueError, KeyError, TypeError):
        return "none"


def _ingest(r, keys: Keys) -> tuple[int, int]:
    """(backlog, pending) of the supervisors' group on the ingest stream."""
    import redis as redis_mod

    try:
        groups = r.xinfo_groups(keys.ingest)
    except redis_mod.ResponseError:  # no stream yet
        return 0, 0
    g = next((g for g in groups if _s(g.get("name")) == keys.group), None)
    if g is None:  # nobody reads it yet: every entry is backlog
        return int(r.xlen(keys.ingest)), 0
    pending = int(g.get("pending") or 0)
    lag = g.get("lag")
    if lag is not None:
        return int(lag), pending
    # No lag (Redis < 7, or Redis could not tell): entries-added - entries-read, which is right only while no
    # entry after the group's position was deleted (XDEL leaves no trace in entries-added); otherwise count
    # the unread entries (bounded: the backlog reads at most MAX_STREAMS_SCANNED then).
    last = _s(g.get("last-delivered-id") or "0-0")
    entries_read = g.get("entries-read")
    if entries_read is not None:
        info = r.xinfo_stream(keys.ingest)
        added, deleted = info.get("entries-added"), _s(info.get("max-deleted-entry-id") or "0-0")
        if added is not None and _id(deleted) <= _id(last):
            return max(0, int(added) - int(entries_read)), pending
    return len(r.xrange(keys.ingest, f"({last}", "+", count=MAX_STREAMS_SCANNED)), pending


def _id(entry: str) -> tuple[int, int]:
    ms, _, seq = entry.partition("-")
    return int(ms), int(seq or 0)


def _stream_statuses(r, keys: Keys) -> dict[str, int]:
    counts = dict.fromkeys(STATUSES, 0)
    ids = r.zrevrange(keys.streams, 0, MAX_STREAMS_SCANNED - 1)
    if ids:
        pipe = r.pipeline(transaction=False)
        for sid in ids:
            pipe.hget(keys.stream(_s(sid)), "status")
        for st in pipe.execute():
            if st is not None and _s(st) in counts:
                counts[_s(st)] += 1
    return counts


def _pools(r, keys: Keys) -> dict:
    """The pools of the graph view the autoscaler writes (nothing while no graph runs)."""
    from actors.placement import read_view

    try:
        return (read_view(r, keys) or {}).get("pools", {})
    except ValueError:  # not JSON: written by something else
        return {}


class _Collector:
    def __init__(self, r, keys: Keys):
        self.r, self.keys = r, keys

    def collect(self) -> Iterator:
        r, keys = self.r, self.keys
        recorded = {_s(k): _s(v) for k, v in (r.hgetall(keys.metrics) or {}).items()}
        counters = {_s(k): _s(v) for k, v in (r.hgetall(keys.counters) or {}).items()}
        backlog, pending = _ingest(r, keys)
        statuses = _stream_statuses(r, keys)

        # recorded series, grouped: name -> label tuple -> value / (per-bucket counts, sum)
        values: dict[str, dict[tuple, float]] = {m.name: {} for m in METRICS}
        hists: dict[str, dict[tuple, list]] = {m.name: {} for m in METRICS if m.type == "histogram"}
        for m in METRICS:
            if m.source == "recorder":
                for combo in _closed_combinations(m):
                    if m.type == "counter":
                        values[m.name][combo] = 0.0
                    else:
                        hists[m.name][combo] = [[0] * (len(m.buckets) + 1), 0.0]
        for f, v in recorded.items():
            parsed = _parse_field(f)
            if parsed is None:
                continue
            fname, labels = parsed
            base = fname
            for suffix in ("_bucket", "_sum"):
                if fname.endswith(suffix) and fname[: -len(suffix)] in hists:
                    base = fname[: -len(suffix)]
            m = BY_NAME.get(base)
            if m is None or m.source != "recorder":
                continue  # a series no longer declared (an older version wrote it)
            le = labels.pop("le", None)
            if set(labels) != set(m.labels):
                continue
            combo = tuple(labels[k] for k in m.labels)
            try:
                num = float(v)
            except ValueError:
                continue
            if m.type == "counter" and fname == m.name:
                values[m.name][combo] = values[m.name].get(combo, 0.0) + num
            elif m.type == "histogram":
                h = hists[m.name].setdefault(combo, [[0] * (len(m.buckets) + 1), 0.0])
                if fname.endswith("_sum"):
                    h[1] += num
                elif le is not None:
                    bound = math.inf if le == "+Inf" else float(le)
                    # a bound no longer declared folds into the next declared one (counts stay right)
                    h[0][bisect.bisect_left(m.buckets, bound)] += int(num)

        for m in METRICS:
            if m.source != "counters":
                continue
            if not m.labels:
                values[m.name][()] = 0.0
            for combo in _closed_combinations(m) if m.labels else ():
                values[m.name][combo] = 0.0
        for f, v in counters.items():
            for m, rx in _COUNTER_FIELDS:
                mt = rx.match(f)
                if mt:
                    try:
                        values[m.name][tuple(mt.group(k) for k in m.labels)] = float(v)
                    except ValueError:
                        pass
                    break

        values["vbs_streams"] = {(s,): float(n) for s, n in statuses.items()}
        values["vbs_ingest_backlog"] = {(): float(backlog)}
        values["vbs_ingest_pending"] = {(): float(pending)}
        values["vbs_up"] = {(): 1.0}
        values["vbs_build_info"] = {(VERSION, _model(r, keys)): 1.0}
        pools = _pools(r, keys)
        values["vbs_pool_replicas"] = {(p,): float(pools.get(p, {}).get("replicas", 0)) for p in POOLS}
        values["vbs_pool_target_replicas"] = {(p,): float(pools.get(p, {}).get("target", 0)) for p in POOLS}

        for m in METRICS:
            if m.type == "counter":
                fam = CounterMetricFamily(m.name, m.help, labels=list(m.labels))
                for combo, v in sorted(values[m.name].items()):
                    fam.add_metric(list(combo), v)
            elif m.type == "gauge":
                fam = GaugeMetricFamily(m.name, m.help, labels=list(m.labels))
                for combo, v in sorted(values[m.name].items()):
                    fam.add_metric(list(combo), v)
            else:
                fam = HistogramMetricFamily(m.name, m.help, labels=list(m.labels))
                for combo, (counts, total) in sorted(hists[m.name].items()):
                    cum, buckets = 0, []
                    for bound, n in zip([*m.buckets, math.inf], counts):
                        cum += n
                        buckets.append((floatToGoString(bound), cum))
                    fam.add_metric(list(combo), buckets, total)
            yield fam


def render(redis, keys: Keys) -> bytes:
    """The whole pipeline's metrics in the Prometheus text format (serve it with `CONTENT_TYPE`).
    Raises when Redis cannot be read: the scrape then fails and Prometheus reports the target down."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(redis, keys))
    return generate_latest(registry)
